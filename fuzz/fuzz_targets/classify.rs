//! Request classification: method safety (which retries a request may get) and outcome
//! classification (how a stream ended) from arbitrary methods, header names, statuses, Envoy
//! response flags and code details.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::config::{Config, RetryConfig, RFC9110_IDEMPOTENT};
use resetguard_core::outcome::{classify, decode_u64, flags, parse_status, Outcome, ResponseSeen};
use resetguard_core::retry_policy::{is_client_retry_control, RetryPolicy, RetrySafety};
use resetguard_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);

    // Method safety with the default (RFC 9110) list.
    let method = input.bytes(16);
    let policy = RetryPolicy::new(&RetryConfig::default());
    let listed = RFC9110_IDEMPOTENT.iter().any(|m| m.as_bytes() == method);
    assert_eq!(
        policy.safety_of_method(method) == RetrySafety::Idempotent,
        listed,
        "{method:?}"
    );
    let _ = Config::default();

    // A client header that could steer the router's retries is recognised in any case.
    let name = input.bytes(48);
    let lower = name.to_ascii_lowercase();
    assert_eq!(
        is_client_retry_control(name),
        is_client_retry_control(&lower)
    );
    if lower == b"x-envoy-retry-on" || lower == b"x-envoy-max-retries" {
        assert!(is_client_retry_control(name));
    }

    // Status and integer properties as the host hands them over.
    let raw_status = input.bytes(5);
    if let Some(s) = parse_status(raw_status) {
        assert!((100..=999).contains(&s) && s.to_string().as_bytes() == raw_status);
    }
    let raw_flags = input.bytes(10);
    assert_eq!(decode_u64(raw_flags).is_some(), raw_flags.len() == 8);

    let seen = ResponseSeen {
        status: input.bool().then(|| input.u16()),
        headers: input.bool(),
        ended: input.bool(),
    };
    let f = input.bool().then(|| input.u64());
    let details = input.bool().then(|| input.rest());
    let outcome = classify(seen, f, details);
    let _ = (seen.needs_flags(), seen.needs_details(f), outcome.as_str());
    if seen.ended && seen.status.is_none_or(|s| s < 500) {
        assert_eq!(outcome, Outcome::Completed, "{seen:?} {f:?}");
    }
    if !seen.ended && f.is_some_and(|f| f & flags::CLIENT_LEFT != 0) {
        assert_eq!(outcome, Outcome::ClientAbort);
    }
    if seen.ended {
        assert_ne!(
            outcome,
            Outcome::ClientAbort,
            "an ended stream is not an abort"
        );
    }
});
