//! Which retry conditions to arm for a request (RFC 9110 §9.2.2), as the router's request headers.
//!
//! Envoy's router honours `x-envoy-retry-on` / `x-envoy-max-retries` set by a filter and consumes
//! them. The header values are computed once per configuration, so a request costs a lookup.

use crate::config::{RetryConfig, RetryOn};

/// How safe it is to send a request to the upstream twice.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RetrySafety {
    /// The method is idempotent (RFC 9110 §9.2.2, or the operator's list).
    Idempotent,
    /// Not idempotent by method, but made safe by a validated `Idempotency-Key` that the upstream
    /// honours (decided by the idempotency layer).
    KeyedIdempotent,
    /// May have side effects: retry only if the request provably never reached the upstream.
    Unsafe,
}

/// The router headers to add for one class of request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPlan {
    pub headers: Vec<(&'static str, String)>,
}

pub const RETRY_ON: &str = "x-envoy-retry-on";
pub const MAX_RETRIES: &str = "x-envoy-max-retries";
pub const PER_TRY_TIMEOUT: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
pub const RETRIABLE_STATUS_CODES: &str = "x-envoy-retriable-status-codes";

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    idempotent_methods: Vec<Vec<u8>>,
    full: Option<RetryPlan>,
    unsent_only: Option<RetryPlan>,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> RetryPolicy {
        let idempotent_methods = config
            .idempotent_methods
            .iter()
            .map(|m| m.as_bytes().to_vec())
            .collect();
        if config.max_retries == 0 {
            return RetryPolicy {
                idempotent_methods,
                full: None,
                unsent_only: None,
            };
        }
        let max = config.max_retries.to_string();

        let mut full_on: Vec<&str> = config.on.iter().map(|c| c.as_str()).collect();
        let mut full_headers = Vec::new();
        if !config.retriable_status_codes.is_empty() {
            full_on.push("retriable-status-codes");
            let codes: Vec<String> = config
                .retriable_status_codes
                .iter()
                .map(u16::to_string)
                .collect();
            full_headers.push((RETRIABLE_STATUS_CODES, codes.join(",")));
        }
        if config.per_try_timeout_ms > 0 {
            full_headers.push((PER_TRY_TIMEOUT, config.per_try_timeout_ms.to_string()));
        }
        let full = plan(&full_on, &max, full_headers);

        // The safe subset: conditions proving the request was never sent. A configured `reset`
        // narrows to `reset-before-request`, its unsent-only form. Each once, in `RetryOn::ALL`
        // order (walking ALL instead of sorting: std's sort is ~4 KB of .wasm).
        let narrowed = |c: RetryOn| {
            if c == RetryOn::Reset {
                RetryOn::ResetBeforeRequest
            } else {
                c
            }
        };
        let unsent_on: Vec<&str> = RetryOn::ALL
            .into_iter()
            .filter(|c| c.proves_request_unsent() && config.on.iter().any(|o| narrowed(*o) == *c))
            .map(RetryOn::as_str)
            .collect();
        let unsent_only = plan(&unsent_on, &max, Vec::new());

        RetryPolicy {
            idempotent_methods,
            full,
            unsent_only,
        }
    }

    /// Safety judged by the method alone (the idempotency layer may upgrade `Unsafe`).
    pub fn safety_of_method(&self, method: &[u8]) -> RetrySafety {
        if self.idempotent_methods.iter().any(|m| m == method) {
            RetrySafety::Idempotent
        } else {
            RetrySafety::Unsafe
        }
    }

    /// The headers to arm for a request of this safety, or `None` to arm nothing.
    pub fn plan(&self, safety: RetrySafety) -> Option<&RetryPlan> {
        match safety {
            RetrySafety::Idempotent | RetrySafety::KeyedIdempotent => self.full.as_ref(),
            RetrySafety::Unsafe => self.unsent_only.as_ref(),
        }
    }
}

fn plan(on: &[&str], max: &str, mut extra: Vec<(&'static str, String)>) -> Option<RetryPlan> {
    if on.is_empty() {
        return None;
    }
    let mut headers = vec![(RETRY_ON, on.join(",")), (MAX_RETRIES, max.to_string())];
    headers.append(&mut extra);
    Some(RetryPlan { headers })
}

/// Request headers through which a client could steer the router's retries or hedging.
pub fn is_client_retry_control(name: &[u8]) -> bool {
    const EXACT: [&[u8]; 5] = [
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-hedge-on-per-try-timeout",
    ];
    const PREFIX: &[u8] = b"x-envoy-retriable-";
    if name.len() < 16
        || !name
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-envoy-"))
    {
        return false;
    }
    EXACT.iter().any(|e| e.eq_ignore_ascii_case(name))
        || name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(json: &str) -> RetryPolicy {
        RetryPolicy::new(&Config::parse(json.as_bytes()).unwrap().retry)
    }

    fn header<'a>(plan: &'a RetryPlan, name: &str) -> Option<&'a str> {
        plan.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn defaults_arm_resets_for_idempotent_and_unsent_only_for_the_rest() {
        let p = policy("");
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert_eq!(
                p.safety_of_method(m.as_bytes()),
                RetrySafety::Idempotent,
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT", "get", ""] {
            assert_eq!(p.safety_of_method(m.as_bytes()), RetrySafety::Unsafe, "{m}");
        }
        let full = p.plan(RetrySafety::Idempotent).unwrap();
        assert_eq!(
            header(full, RETRY_ON),
            Some("reset,connect-failure,refused-stream")
        );
        assert_eq!(header(full, MAX_RETRIES), Some("2"));
        let unsent = p.plan(RetrySafety::Unsafe).unwrap();
        assert_eq!(
            header(unsent, RETRY_ON),
            Some("reset-before-request,connect-failure,refused-stream")
        );
        assert_eq!(
            p.plan(RetrySafety::KeyedIdempotent),
            p.plan(RetrySafety::Idempotent)
        );
    }

    #[test]
    fn unsafe_methods_never_get_conditions_that_fire_after_sending() {
        let p = policy(
            r#"{"retry": {"on": ["reset", "5xx", "gateway-error", "retriable-4xx", "connect-failure"],
                          "retriable_status_codes": [503], "per_try_timeout_ms": 100}}"#,
        );
        let unsent = p.plan(RetrySafety::Unsafe).unwrap();
        assert_eq!(
            header(unsent, RETRY_ON),
            Some("reset-before-request,connect-failure")
        );
        assert_eq!(header(unsent, RETRIABLE_STATUS_CODES), None);
        assert_eq!(header(unsent, PER_TRY_TIMEOUT), None);
        let full = p.plan(RetrySafety::Idempotent).unwrap();
        assert_eq!(
            header(full, RETRY_ON),
            Some("reset,5xx,gateway-error,retriable-4xx,connect-failure,retriable-status-codes")
        );
        assert_eq!(header(full, RETRIABLE_STATUS_CODES), Some("503"));
        assert_eq!(header(full, PER_TRY_TIMEOUT), Some("100"));
    }

    #[test]
    fn http3_post_connect_failure_is_for_idempotent_methods_only() {
        // Envoy retries any failure after an HTTP/3 handshake under it, sent request or not.
        let p = policy(r#"{"retry": {"on": ["http3-post-connect-failure", "connect-failure"]}}"#);
        let unsent = p.plan(RetrySafety::Unsafe).unwrap();
        assert_eq!(header(unsent, RETRY_ON), Some("connect-failure"));
        let full = p.plan(RetrySafety::Idempotent).unwrap();
        assert_eq!(
            header(full, RETRY_ON),
            Some("http3-post-connect-failure,connect-failure")
        );
    }

    #[test]
    fn nothing_unsent_safe_configured_means_nothing_armed_for_unsafe_methods() {
        let p = policy(r#"{"retry": {"on": ["5xx"]}}"#);
        assert!(p.plan(RetrySafety::Unsafe).is_none());
        assert!(p.plan(RetrySafety::Idempotent).is_some());
    }

    #[test]
    fn zero_retries_arms_nothing() {
        let p = policy(r#"{"retry": {"max_retries": 0}}"#);
        assert!(p.plan(RetrySafety::Idempotent).is_none());
        assert!(p.plan(RetrySafety::Unsafe).is_none());
    }

    #[test]
    fn client_retry_controls_are_recognised() {
        for h in [
            "x-envoy-retry-on",
            "X-Envoy-Max-Retries",
            "x-envoy-retriable-status-codes",
            "x-envoy-retriable-header-names",
            "x-envoy-upstream-rq-per-try-timeout-ms",
            "x-envoy-hedge-on-per-try-timeout",
            "x-envoy-retry-grpc-on",
        ] {
            assert!(is_client_retry_control(h.as_bytes()), "{h}");
        }
        for h in [
            "x-envoy-original-path",
            "x-envoy-retry",
            "retry-on",
            "",
            "x-envoy-",
            "x-request-id",
            "x-envoy-upstream-rq-timeout-ms",
        ] {
            assert!(!is_client_retry_control(h.as_bytes()), "{h}");
        }
    }
}
