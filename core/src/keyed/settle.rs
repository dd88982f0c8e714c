//! What becomes of a claimed key when its stream ends: the one decision that says whether a keyed
//! request may run upstream again. Store the upstream's response (a retry is replayed), complete
//! the key without a replayable copy (a retry gets 409, never a second execution), or release it
//! (a retry runs).

use crate::config::UnknownOutcome;
use crate::counter::Counter;
use crate::idempotency::recorded::RecordedResponse;
use crate::idempotency::store::{Finish, Report, StoreError, Ticket};
use crate::outcome;

/// `response.code_details` of a response the upstream sent (anything else the proxy made up).
pub const VIA_UPSTREAM: &[u8] = b"via_upstream";

/// Upstream answers that ask the client to retry later (429 Too Many Requests, 503 Service
/// Unavailable): the key is released, not completed.
pub const RETRY_LATER: [u16; 2] = [429, 503];

/// The upstream's answer as it passed the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub response: RecordedResponse,
    /// False once the response exceeded what may be stored (or had trailers, or a chunk the host
    /// did not hand over): the key completes unreplayable.
    pub keep: bool,
    /// The response headers came from the upstream, so the request was executed.
    pub from_upstream: bool,
}

/// What the host reports about how the stream ended, read only when the decision needs it.
pub trait StreamFacts {
    /// `response.code_details` (Envoy: `via_upstream`, `upstream_reset_before_response_started…`).
    fn code_details(&mut self) -> Option<Vec<u8>>;
    /// `response.flags` (Envoy's response-flag bits).
    fn flags(&mut self) -> Option<u64>;
    /// Whether an upstream request was made (`upstream.address` is set).
    fn upstream_address(&mut self) -> bool;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Store the response: a retry of the key is answered with it.
    Store {
        ticket: Ticket,
        response: RecordedResponse,
    },
    /// The request ran (or may have): complete the key without a replayable copy.
    CompleteUnreplayable { ticket: Ticket, status: u16 },
    /// The upstream did not act on it, or asked to retry later: a retry runs.
    Release { ticket: Ticket },
}

/// Decides what becomes of the claim (see the module docs). At `on_log` Envoy's code details
/// describe how the stream ended (a client that left after the response passed says
/// `downstream_remote_disconnect`); what the response headers said is in the recording, and when
/// that says "from the upstream" the details cannot change the answer: they are read only when
/// they can.
pub fn settle(
    ticket: Ticket,
    recording: Option<Recorded>,
    response_ended: bool,
    unknown_outcome: UnknownOutcome,
    facts: &mut dyn StreamFacts,
) -> Settlement {
    let via_upstream = recording.as_ref().is_some_and(|r| r.from_upstream)
        || facts.code_details().is_some_and(|d| d == VIA_UPSTREAM);
    match recording {
        // "Try again later" from the upstream: storing it would answer every retry of this key
        // with the same refusal for the whole TTL.
        Some(r) if via_upstream && RETRY_LATER.contains(&r.response.status) => {
            Settlement::Release { ticket }
        }
        Some(r) if via_upstream && response_ended => {
            if r.keep {
                Settlement::Store {
                    ticket,
                    response: r.response,
                }
            } else {
                Settlement::CompleteUnreplayable {
                    ticket,
                    status: r.response.status,
                }
            }
        }
        // The upstream answered but the response was cut: it ran, it must not run again.
        Some(r) if r.from_upstream => Settlement::CompleteUnreplayable {
            ticket,
            status: r.response.status,
        },
        recording if unknown_outcome == UnknownOutcome::Complete && may_have_run(facts) => {
            Settlement::CompleteUnreplayable {
                ticket,
                status: recording.map_or(0, |r| r.response.status),
            }
        }
        _ => Settlement::Release { ticket },
    }
}

/// Whether a request that got no upstream answer may still have been applied: an upstream
/// request was made and no flag proves it was never sent.
fn may_have_run(facts: &mut dyn StreamFacts) -> bool {
    let flags = facts.flags().unwrap_or(0);
    !outcome::proves_request_unsent(flags) && facts.upstream_address()
}

/// The counters for what the store made of a settlement.
pub fn settled_counters(result: &Result<Report<Finish>, StoreError>) -> Vec<(Counter, u32)> {
    match result {
        Ok(report) => {
            let mut counters: Vec<(Counter, u32)> = super::report_counters(report).collect();
            counters.push((
                match report.value {
                    Finish::Stored | Finish::StoredNotReplayable => Counter::IdemStored,
                    Finish::Released => Counter::IdemReleased,
                    Finish::Lost => Counter::IdemLost,
                    Finish::Busy => Counter::IdemStoreContention,
                },
                1,
            ));
            counters
        }
        Err(_) => vec![(Counter::IdemStoreErrors, 1)],
    }
}
