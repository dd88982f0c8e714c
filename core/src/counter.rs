//! The filter's counters: one name per thing it counts. The glue defines them with the host once
//! per VM; Envoy merges same-named metrics of all workers.

/// The filter's one histogram: each etcd gateway call's round trip in whole milliseconds (claims,
/// read-backs, settlements, lease grants), defined only with the etcd store.
pub const STORE_ROUND_TRIP_MS: &str = "resetguard.store.round_trip_ms";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    RequestsIdempotent,
    RequestsNonIdempotent,
    RequestsKeyed,
    RetryArmedFull,
    RetryArmedUnsentOnly,
    ClientRetryHeadersStripped,
    ConfigRejected,
    OutcomeCompleted,
    OutcomeClientAbort,
    OutcomeUpstreamReset,
    OutcomeTruncated,
    OutcomeIncomplete,
    HostErrors,
    IdemMissing,
    IdemMalformed,
    IdemClaimed,
    IdemInFlightConflicts,
    IdemPayloadMismatches,
    IdemReplays,
    IdemNotReplayable,
    IdemStored,
    IdemReleased,
    IdemExpired,
    IdemLockExpired,
    IdemLost,
    IdemStoreFull,
    IdemStoreContention,
    IdemCasRetries,
    IdemStoreErrors,
    IdemBodyTooLarge,
    IdemReportOnly,
    ClientAbortBeforeRequestComplete,
    ClientAbortAwaitingUpstream,
    ClientAbortDuringResponse,
    RouteOverrideRejected,
    StoreCallOk,
    StoreCallConflict,
    StoreCallTimeout,
    StoreCallUnavailable,
    StoreCallBadAnswer,
    StoreCallLeaseGone,
    StoreCallTooLarge,
    StoreFallbackReject,
    StoreFallbackPass,
    StoreFallbackLocal,
    StoreLeasesGranted,
}

impl Counter {
    pub const ALL: [Counter; 46] = [
        Counter::RequestsIdempotent,
        Counter::RequestsNonIdempotent,
        Counter::RequestsKeyed,
        Counter::RetryArmedFull,
        Counter::RetryArmedUnsentOnly,
        Counter::ClientRetryHeadersStripped,
        Counter::ConfigRejected,
        Counter::OutcomeCompleted,
        Counter::OutcomeClientAbort,
        Counter::OutcomeUpstreamReset,
        Counter::OutcomeTruncated,
        Counter::OutcomeIncomplete,
        Counter::HostErrors,
        Counter::IdemMissing,
        Counter::IdemMalformed,
        Counter::IdemClaimed,
        Counter::IdemInFlightConflicts,
        Counter::IdemPayloadMismatches,
        Counter::IdemReplays,
        Counter::IdemNotReplayable,
        Counter::IdemStored,
        Counter::IdemReleased,
        Counter::IdemExpired,
        Counter::IdemLockExpired,
        Counter::IdemLost,
        Counter::IdemStoreFull,
        Counter::IdemStoreContention,
        Counter::IdemCasRetries,
        Counter::IdemStoreErrors,
        Counter::IdemBodyTooLarge,
        Counter::IdemReportOnly,
        Counter::ClientAbortBeforeRequestComplete,
        Counter::ClientAbortAwaitingUpstream,
        Counter::ClientAbortDuringResponse,
        Counter::RouteOverrideRejected,
        Counter::StoreCallOk,
        Counter::StoreCallConflict,
        Counter::StoreCallTimeout,
        Counter::StoreCallUnavailable,
        Counter::StoreCallBadAnswer,
        Counter::StoreCallLeaseGone,
        Counter::StoreCallTooLarge,
        Counter::StoreFallbackReject,
        Counter::StoreFallbackPass,
        Counter::StoreFallbackLocal,
        Counter::StoreLeasesGranted,
    ];

    /// The metric name as it appears in the proxy's stats.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RequestsIdempotent => "resetguard.requests.idempotent",
            Counter::RequestsNonIdempotent => "resetguard.requests.non_idempotent",
            Counter::RequestsKeyed => "resetguard.requests.keyed",
            Counter::RetryArmedFull => "resetguard.retry.armed_full",
            Counter::RetryArmedUnsentOnly => "resetguard.retry.armed_unsent_only",
            Counter::ClientRetryHeadersStripped => "resetguard.retry.client_headers_stripped",
            Counter::ConfigRejected => "resetguard.config.rejected",
            Counter::OutcomeCompleted => "resetguard.outcome.completed",
            Counter::OutcomeClientAbort => "resetguard.outcome.client_abort",
            Counter::OutcomeUpstreamReset => "resetguard.outcome.upstream_reset",
            Counter::OutcomeTruncated => "resetguard.outcome.truncated",
            Counter::OutcomeIncomplete => "resetguard.outcome.incomplete",
            Counter::HostErrors => "resetguard.host_errors",
            Counter::IdemMissing => "resetguard.idempotency.missing",
            Counter::IdemMalformed => "resetguard.idempotency.malformed",
            Counter::IdemClaimed => "resetguard.idempotency.claimed",
            Counter::IdemInFlightConflicts => "resetguard.idempotency.in_flight_conflicts",
            Counter::IdemPayloadMismatches => "resetguard.idempotency.payload_mismatches",
            Counter::IdemReplays => "resetguard.idempotency.replays",
            Counter::IdemNotReplayable => "resetguard.idempotency.not_replayable",
            Counter::IdemStored => "resetguard.idempotency.stored",
            Counter::IdemReleased => "resetguard.idempotency.released",
            Counter::IdemExpired => "resetguard.idempotency.expired",
            Counter::IdemLockExpired => "resetguard.idempotency.lock_expired",
            Counter::IdemLost => "resetguard.idempotency.lost",
            Counter::IdemStoreFull => "resetguard.idempotency.store_full",
            Counter::IdemStoreContention => "resetguard.idempotency.store_contention",
            Counter::IdemCasRetries => "resetguard.idempotency.cas_retries",
            Counter::IdemStoreErrors => "resetguard.idempotency.store_errors",
            Counter::IdemBodyTooLarge => "resetguard.idempotency.body_too_large",
            Counter::IdemReportOnly => "resetguard.idempotency.report_only",
            Counter::ClientAbortBeforeRequestComplete => {
                "resetguard.client_abort.before_request_complete"
            }
            Counter::ClientAbortAwaitingUpstream => "resetguard.client_abort.awaiting_upstream",
            Counter::ClientAbortDuringResponse => "resetguard.client_abort.during_response",
            Counter::RouteOverrideRejected => "resetguard.config.route_override_rejected",
            Counter::StoreCallOk => "resetguard.store.calls.ok",
            Counter::StoreCallConflict => "resetguard.store.calls.conflict",
            Counter::StoreCallTimeout => "resetguard.store.calls.timeout",
            Counter::StoreCallUnavailable => "resetguard.store.calls.unavailable",
            Counter::StoreCallBadAnswer => "resetguard.store.calls.bad_answer",
            Counter::StoreCallLeaseGone => "resetguard.store.calls.lease_gone",
            Counter::StoreCallTooLarge => "resetguard.store.calls.too_large",
            Counter::StoreFallbackReject => "resetguard.store.fallbacks.reject",
            Counter::StoreFallbackPass => "resetguard.store.fallbacks.pass",
            Counter::StoreFallbackLocal => "resetguard.store.fallbacks.local",
            Counter::StoreLeasesGranted => "resetguard.store.leases_granted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_indexed_in_order() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert!(names.iter().all(|n| n.starts_with("resetguard.")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
