//! The plugin JSON parser/validator: any bytes either parse into a config whose invariants hold
//! (the values the rest of the filter indexes and divides by) or give an error naming a path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::config::{Config, MAX_RETRIES_LIMIT};
use resetguard_core::idempotency::{scope::KeyScope, store_limits, Idempotency};
use resetguard_core::retry_policy::{RetryPolicy, RetrySafety, MAX_RETRIES, RETRY_ON};

fuzz_target!(|data: &[u8]| {
    let config = match Config::parse(data) {
        Ok(config) => config,
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("invalid plugin configuration at `"),
                "an error without a path: {message}"
            );
            return;
        }
    };
    let _ = config.warnings();
    assert!(u64::from(config.retry.max_retries) <= MAX_RETRIES_LIMIT);

    // The router headers a config produces: only its own conditions, and the unsafe plan only
    // conditions that prove the request was never sent.
    let policy = RetryPolicy::new(&config.retry);
    for safety in [
        RetrySafety::Idempotent,
        RetrySafety::KeyedIdempotent,
        RetrySafety::Unsafe,
    ] {
        let Some(plan) = policy.plan(safety) else {
            continue;
        };
        for (name, value) in &plan.headers {
            assert!(
                value.bytes().all(|b| b.is_ascii_graphic()),
                "{name}: {value:?}"
            );
        }
        let retry_on = plan.headers.iter().find(|(n, _)| *n == RETRY_ON);
        let max = plan.headers.iter().find(|(n, _)| *n == MAX_RETRIES);
        assert!(retry_on.is_some() && max.is_some(), "{plan:?}");
        if safety == RetrySafety::Unsafe {
            for token in retry_on.map(|(_, v)| v.as_str()).unwrap_or("").split(',') {
                assert!(
                    matches!(
                        token,
                        "connect-failure" | "refused-stream" | "reset-before-request"
                    ),
                    "unsafe plan arms {token}"
                );
            }
        }
    }

    let idem = &config.idempotency;
    let limits = store_limits(idem);
    assert!(
        limits.shards >= 1 && limits.entries_per_shard >= 1,
        "{limits:?}"
    );
    assert!(
        limits.entries_per_shard <= usize::from(u16::MAX),
        "{limits:?}"
    );
    assert!(idem.max_key_length >= 1);
    assert!(!idem.header.is_empty() && idem.header == idem.header.to_ascii_lowercase());
    let scope = KeyScope::new(idem);
    let _ = scope.requires_key(b"POST", b"/");
    let _ = Idempotency::new(idem.clone(), None);
});
