//! A model of Envoy's router and the upstream behind it: consumes the retry headers a filter set,
//! plays the upstream's behaviour per attempt and Envoy's retry decisions
//! (`RetryStateImpl::wouldRetryFromReset` / `wouldRetryFromHeaders`), and produces what reaches
//! the client: the upstream's response, a truncated one, or the router's local reply.

use crate::abi::Pairs;
use crate::callout::{RESET_BODY, TIMEOUT_BODY};

/// Request headers the router consumes (reads and never forwards upstream).
pub const CONSUMED: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Envoy's default retry back-off base interval (jitter left out: time is deterministic here).
pub const BACKOFF_MS: u64 = 25;

pub const REFUSED_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused";
pub const REFUSED_STREAM_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset";

/// Envoy response flags (StreamInfo::CoreResponseFlag bits).
pub mod flags {
    pub const UR: u64 = 0x10;
    pub const UF: u64 = 0x20;
    pub const UC: u64 = 0x40;
    pub const UT: u64 = 0x200;
    pub const DC: u64 = 0x4000;
    pub const URX: u64 = 0x8000;
}

/// What the upstream does on one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamAction {
    Respond {
        status: u16,
        headers: Pairs,
        body: Vec<u8>,
        delay_ms: u64,
    },
    /// Reads the request, then resets the connection without answering.
    ResetBeforeHeaders,
    /// Sends headers and part of the body, then resets.
    ResetMidBody {
        status: u16,
        headers: Pairs,
        body_prefix: Vec<u8>,
    },
    /// Nothing listens: the connection is refused.
    Refuse,
    /// An HTTP/2 upstream answers RST_STREAM(REFUSED_STREAM): it did not process the request.
    RefusedStream,
}

impl UpstreamAction {
    pub fn ok(body: &str) -> UpstreamAction {
        UpstreamAction::Respond {
            status: 200,
            headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
            body: body.as_bytes().to_vec(),
            delay_ms: 0,
        }
    }
}

/// The retry policy the router took from the request headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryArm {
    pub on: Vec<String>,
    pub max_retries: u32,
    pub retriable_status_codes: Vec<u16>,
    pub per_try_timeout_ms: Option<u64>,
}

impl RetryArm {
    fn has(&self, condition: &str) -> bool {
        self.on.iter().any(|c| c == condition)
    }
}

fn value<'a>(headers: &'a Pairs, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
}

/// Reads the router's headers and removes every one it consumes, as Envoy does.
pub fn consume(headers: &mut Pairs) -> RetryArm {
    let on: Vec<String> = value(headers, "x-envoy-retry-on")
        .map(|v| {
            v.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Envoy's default when conditions are set but no count: one retry.
    let max_retries = value(headers, "x-envoy-max-retries")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let retriable_status_codes = value(headers, "x-envoy-retriable-status-codes")
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default();
    let per_try_timeout_ms = value(headers, "x-envoy-upstream-rq-per-try-timeout-ms")
        .and_then(|v| v.parse().ok())
        .filter(|ms| *ms > 0);
    headers.retain(|(k, _)| !CONSUMED.iter().any(|c| k.as_slice() == c.as_bytes()));
    RetryArm {
        max_retries: if on.is_empty() { 0 } else { max_retries },
        on,
        retriable_status_codes,
        per_try_timeout_ms,
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Reset {
    ConnectFailure,
    ConnectionTermination,
    RefusedStream,
    PerTryTimeout,
}

/// Envoy's `wouldRetryFromReset`: `started` is whether the request reached the upstream.
fn retriable_reset(arm: &RetryArm, reason: Reset, started: bool) -> bool {
    arm.has("reset")
        || arm.has("5xx")
        || arm.has("gateway-error")
        || (arm.has("reset-before-request") && !started)
        || (arm.has("refused-stream") && reason == Reset::RefusedStream)
        || (arm.has("connect-failure") && reason == Reset::ConnectFailure)
}

/// Envoy's `wouldRetryFromHeaders` for the conditions a filter may arm.
fn retriable_status(arm: &RetryArm, status: u16) -> bool {
    (arm.has("5xx") && status >= 500)
        || (arm.has("gateway-error") && (502..=504).contains(&status))
        || (arm.has("retriable-4xx") && status == 409)
        || (arm.has("retriable-status-codes") && arm.retriable_status_codes.contains(&status))
}

/// One attempt as the router saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub start_ms: u64,
    /// Whether the upstream application received the request (false for refused connects).
    pub reached_upstream: bool,
}

/// What reaches the client (before the filter's response callbacks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
    pub headers: Pairs,
    pub body: Vec<u8>,
    /// False when the upstream reset mid-body: the stream ends without end_of_stream.
    pub complete: bool,
    pub flags: u64,
    pub details: String,
    /// True for the router's own reply (no upstream response).
    pub local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub attempts: Vec<Attempt>,
    /// When the response headers reach the filter, from the request's forwarding.
    pub done_ms: u64,
    pub delivered: Delivered,
}

fn local(status: u16, body: &str, flags: u64, details: &str) -> Delivered {
    Delivered {
        status,
        headers: crate::abi::local_reply_headers(status, body),
        body: body.as_bytes().to_vec(),
        complete: true,
        flags,
        details: details.to_string(),
        local: true,
    }
}

fn upstream_headers(status: u16, headers: &Pairs, service_ms: u64) -> Pairs {
    let mut all = vec![(b":status".to_vec(), status.to_string().into_bytes())];
    all.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
    );
    all.push((
        b"x-envoy-upstream-service-time".to_vec(),
        service_ms.to_string().into_bytes(),
    ));
    all
}

/// Plays the attempts. `plan` entries beyond its end repeat the last one.
pub fn route(arm: &RetryArm, plan: &[UpstreamAction]) -> Routed {
    let mut attempts = Vec::new();
    let mut now = 0u64;
    let mut retries = 0u32;
    loop {
        let action = plan
            .get(attempts.len())
            .or(plan.last())
            .cloned()
            .unwrap_or(UpstreamAction::Refuse);
        let reached = !matches!(action, UpstreamAction::Refuse);
        attempts.push(Attempt {
            start_ms: now,
            reached_upstream: reached,
        });
        let can_retry = retries < arm.max_retries;
        let (reason, started) = match &action {
            UpstreamAction::Refuse => (Reset::ConnectFailure, false),
            UpstreamAction::RefusedStream => (Reset::RefusedStream, true),
            UpstreamAction::ResetBeforeHeaders => (Reset::ConnectionTermination, true),
            UpstreamAction::Respond { delay_ms, .. }
                if arm.per_try_timeout_ms.is_some_and(|t| *delay_ms > t) =>
            {
                now += arm.per_try_timeout_ms.unwrap_or(0);
                (Reset::PerTryTimeout, true)
            }
            UpstreamAction::Respond {
                status,
                headers,
                body,
                delay_ms,
            } => {
                now += delay_ms;
                if retriable_status(arm, *status) && can_retry {
                    retries += 1;
                    now += BACKOFF_MS;
                    continue;
                }
                let exhausted = retriable_status(arm, *status);
                let delivered = Delivered {
                    status: *status,
                    headers: upstream_headers(*status, headers, *delay_ms),
                    body: body.clone(),
                    complete: true,
                    flags: if exhausted { flags::URX } else { 0 },
                    details: "via_upstream".to_string(),
                    local: false,
                };
                return Routed {
                    attempts,
                    done_ms: now,
                    delivered,
                };
            }
            UpstreamAction::ResetMidBody {
                status,
                headers,
                body_prefix,
            } => {
                // Headers already went downstream: nothing can be retried any more.
                let delivered = Delivered {
                    status: *status,
                    headers: upstream_headers(*status, headers, 0),
                    body: body_prefix.clone(),
                    complete: false,
                    flags: flags::UC,
                    details: "upstream_reset_after_response_started{connection_termination}"
                        .to_string(),
                    local: false,
                };
                return Routed {
                    attempts,
                    done_ms: now,
                    delivered,
                };
            }
        };
        let retriable = retriable_reset(arm, reason, started);
        if retriable && can_retry {
            retries += 1;
            now += BACKOFF_MS;
            continue;
        }
        let urx = if retriable { flags::URX } else { 0 };
        let delivered = match reason {
            Reset::ConnectFailure => local(
                503,
                REFUSED_BODY,
                flags::UF | urx,
                "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            ),
            Reset::ConnectionTermination => local(
                503,
                RESET_BODY,
                flags::UC | urx,
                "upstream_reset_before_response_started{connection_termination}",
            ),
            Reset::RefusedStream => local(
                503,
                REFUSED_STREAM_BODY,
                flags::UR | urx,
                "upstream_reset_before_response_started{remote_refused_stream_reset}",
            ),
            Reset::PerTryTimeout => local(504, TIMEOUT_BODY, flags::UT | urx, "upstream_per_try_timeout"),
        };
        return Routed {
            attempts,
            done_ms: now,
            delivered,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(on: &str, max: u32) -> RetryArm {
        RetryArm {
            on: on.split(',').map(String::from).collect(),
            max_retries: max,
            ..RetryArm::default()
        }
    }

    #[test]
    fn reset_before_request_does_not_cover_a_request_that_was_read() {
        let r = route(
            &arm("reset-before-request", 3),
            &[UpstreamAction::ResetBeforeHeaders],
        );
        assert_eq!(r.attempts.len(), 1);
        assert_eq!(r.delivered.status, 503);
        let r = route(
            &arm("reset-before-request", 3),
            &[UpstreamAction::Refuse, UpstreamAction::ok("x")],
        );
        assert_eq!(r.attempts.len(), 2);
        assert_eq!(r.delivered.status, 200);
    }

    #[test]
    fn consume_removes_router_headers() {
        let mut h: Pairs = vec![
            (b"x-envoy-retry-on".to_vec(), b"reset".to_vec()),
            (b"x-envoy-max-retries".to_vec(), b"3".to_vec()),
            (b"x-other".to_vec(), b"1".to_vec()),
        ];
        let a = consume(&mut h);
        assert_eq!(a.max_retries, 3);
        assert_eq!(h.len(), 1);
    }
}
