//! The effective configuration, rendered back as plugin JSON (every key, defaults included), and
//! the per-method policy the filter derives from it with its own `RetryPolicy`.

use resetguard_core::config::{Config, IdempotencyMode};
use resetguard_core::retry_policy::{RetryPolicy, RetrySafety};
use serde_json::Value;

/// The configuration as plugin JSON, every default spelled out: the config types' own
/// `Serialize`, whose enum names are the reader's.
pub fn config_json(config: &Config) -> Value {
    serde_json::to_value(config).unwrap_or(Value::Null)
}

/// Methods worth a line of their own: the configured ones, then the common unsafe ones.
pub fn methods_of_interest(config: &Config) -> Vec<String> {
    let mut methods: Vec<String> = config.retry.idempotent_methods.clone();
    let extra = config
        .idempotency
        .required_methods
        .iter()
        .map(String::as_str)
        .chain(["POST", "PATCH"]);
    for m in extra {
        if !methods.iter().any(|x| x == m) {
            methods.push(m.to_string());
        }
    }
    methods
}

fn plan_text(policy: &RetryPolicy, safety: RetrySafety) -> String {
    match policy.plan(safety) {
        None => "no retries armed".to_string(),
        Some(plan) => plan
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// One line per method (and one for every other method): the router headers the filter sets and
/// whether an Idempotency-Key is required. Computed by the filter's own `RetryPolicy`.
pub fn policy_lines(config: &Config) -> Vec<String> {
    let policy = RetryPolicy::new(&config.retry);
    let idem = &config.idempotency;
    let mut lines = Vec::new();
    let key_note = |method: &str| -> String {
        if !idem.enabled || !idem.required_methods.iter().any(|m| m == method) {
            return String::new();
        }
        let paths = if idem.path_prefixes.is_empty() {
            "every path".to_string()
        } else {
            format!("paths {}", idem.path_prefixes.join(", "))
        };
        let mode = match idem.mode {
            IdempotencyMode::Enforce => "required",
            IdempotencyMode::Report => "reported if missing (report mode)",
        };
        let keyed = if idem.retry_keyed_requests {
            format!(
                "; with a valid key: {}",
                plan_text(&policy, RetrySafety::KeyedIdempotent)
            )
        } else {
            String::new()
        };
        format!(
            " | {} {mode} on {paths}, scoped by {}{keyed}",
            idem.header,
            idem.scope_headers.join(", ")
        )
    };
    // Methods that get the same treatment share a line; unlisted methods join the unsafe group.
    let mut groups: Vec<(Vec<String>, String)> = Vec::new();
    let mut add = |label: String, line: String| match groups.iter_mut().find(|(_, l)| *l == line) {
        Some((labels, _)) => labels.push(label),
        None => groups.push((vec![label], line)),
    };
    for method in methods_of_interest(config) {
        let safety = policy.safety_of_method(method.as_bytes());
        let class = match safety {
            RetrySafety::Idempotent => "idempotent",
            _ => "not idempotent",
        };
        let line = format!(
            "({class}): {}{}",
            plan_text(&policy, safety),
            key_note(&method)
        );
        add(method, line);
    }
    let other = format!(
        "(not idempotent): {}",
        plan_text(&policy, RetrySafety::Unsafe)
    );
    add("any other method".to_string(), other);
    for (labels, line) in groups {
        lines.push(format!("{} {line}", labels.join(", ")));
    }
    if config.retry.trust_client_retry_headers {
        lines.push("client router controls (x-envoy-retry-on, ...) are kept; a request carrying one gets nothing armed".to_string());
    } else {
        lines.push("client router controls (x-envoy-retry-on, ...) are stripped".to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_round_trips_through_the_filters_parser() {
        let raw = br#"{"retry": {"max_retries": 3, "on": ["5xx"], "idempotent_methods": ["GET"],
            "per_try_timeout_ms": 9, "retriable_status_codes": [502], "trust_client_retry_headers": true},
            "client_abort": {"log_level": "off", "filter_state": false},
            "idempotency": {"mode": "report", "path_prefixes": ["/p"], "header": "x-k",
            "max_key_length": 9, "scope_headers": ["x-t"], "max_request_body_bytes": 1,
            "max_response_body_bytes": 2, "ttl_seconds": 3, "lock_timeout_ms": 100, "max_entries": 5,
            "shards": 1, "when_full": "pass_through", "retry_keyed_requests": true,
            "require_store": true, "unknown_outcome": "complete", "required_methods": ["PATCH"]}}"#;
        let config = Config::parse(raw).unwrap();
        let rendered = config_json(&config).to_string();
        assert_eq!(Config::parse(rendered.as_bytes()).unwrap(), config);
        let default = config_json(&Config::default()).to_string();
        assert_eq!(
            Config::parse(default.as_bytes()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn default_policy_lines() {
        let lines = policy_lines(&Config::default());
        assert_eq!(
            lines[0],
            "GET, HEAD, OPTIONS, TRACE, PUT, DELETE (idempotent): x-envoy-retry-on: \
             reset,connect-failure,refused-stream; x-envoy-max-retries: 2"
        );
        assert_eq!(
            lines[1],
            "POST, PATCH, any other method (not idempotent): x-envoy-retry-on: \
             reset-before-request,connect-failure,refused-stream; x-envoy-max-retries: 2"
        );
        let keyed = Config::parse(br#"{"idempotency": {}}"#).unwrap();
        let lines = policy_lines(&keyed);
        assert!(lines[1].starts_with("POST (not idempotent)"), "{lines:?}");
        assert!(
            lines[1].contains("idempotency-key required on every path"),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("PATCH, any other method"), "{lines:?}");
    }
}
