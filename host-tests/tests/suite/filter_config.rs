//! Plugin configurations: rejected ones name the field in one error line, and Envoy's
//! `on_configure` answer is false.

use host_tests::{Host, LogLevel, Profile};

fn rejected(config: &[u8]) -> (bool, Vec<String>, Option<i64>) {
    let mut host = Host::builder()
        .config_bytes(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    (
        host.configured(),
        host.logs_at(LogLevel::Error),
        host.metric("resetguard.config.rejected"),
    )
}

#[test]
fn bad_configs_are_rejected_with_the_field_path() {
    let cases: &[(&str, &str)] = &[
        (r#"{"retry": {"max_retries": 11}}"#, "retry.max_retries"),
        (r#"{"retry": {"max_retries": "2"}}"#, "retry.max_retries"),
        (r#"{"retry": {"on": ["reset", "bogus"]}}"#, "retry.on[1]"),
        (
            r#"{"retry": {"idempotent_methods": ["get"]}}"#,
            "retry.idempotent_methods[0]",
        ),
        (
            r#"{"retry": {"retriable_status_codes": [99]}}"#,
            "retry.retriable_status_codes[0]",
        ),
        (
            r#"{"retry": {"trust_client_retry_headers": 1}}"#,
            "retry.trust_client_retry_headers",
        ),
        (
            r#"{"retry": {"per_try_timeout_ms": -1}}"#,
            "retry.per_try_timeout_ms",
        ),
        (
            r#"{"client_abort": {"log_level": "warn"}}"#,
            "client_abort.log_level",
        ),
        (r#"{"retyr": {}}"#, "retyr"),
        ("{", "$"),
        ("[1]", "$"),
        ("\u{0}\u{1}", "$"),
    ];
    for (config, path) in cases {
        let (ok, errors, counted) = rejected(config.as_bytes());
        assert!(!ok, "accepted {config}");
        assert_eq!(errors.len(), 1, "{config}: {errors:?}");
        assert!(
            errors[0].contains(&format!("`{path}`")),
            "{config}: {errors:?}"
        );
        assert_eq!(counted, Some(1), "{config}");
    }
}

#[test]
fn empty_and_valid_configs_are_accepted_on_every_profile() {
    for profile in Profile::ALL {
        for config in [
            "",
            "  ",
            "{}",
            r#"{"retry": {"max_retries": 3, "on": ["reset", "5xx"]}}"#,
        ] {
            let host = Host::builder()
                .profile(profile)
                .config(config)
                .start()
                .unwrap();
            assert!(
                host.configured(),
                "{profile:?} {config:?}: {:?}",
                host.logs()
            );
            assert!(host.logs_at(LogLevel::Error).is_empty());
        }
    }
}

#[test]
fn a_rejected_config_is_rejected_on_every_worker() {
    let host = Host::builder()
        .workers(3)
        .config(r#"{"retry": {"max_retries": 99}}"#)
        .start()
        .unwrap();
    assert!(host.vms.iter().all(|vm| !vm.configured));
    assert_eq!(host.logs_at(LogLevel::Error).len(), 3);
}
