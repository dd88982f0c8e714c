//! The `retry` section: which upstream failures the router may retry, and for which methods.

use super::reader::{error, read_integer, read_string, ConfigResult, ObjectReader};

pub const MAX_RETRIES_LIMIT: u64 = 10;
/// One hour: a per-try timeout beyond that is a typo, not a policy.
pub const PER_TRY_TIMEOUT_LIMIT_MS: u64 = 3_600_000;

/// Retry conditions the filter may arm, as Envoy's `x-envoy-retry-on` spells them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RetryOn {
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    RefusedStream,
    GatewayError,
    FiveXx,
    Retriable4xx,
    EnvoyRateLimited,
    Http3PostConnectFailure,
}

impl RetryOn {
    pub const ALL: [RetryOn; 9] = [
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::GatewayError,
        RetryOn::FiveXx,
        RetryOn::Retriable4xx,
        RetryOn::EnvoyRateLimited,
        RetryOn::Http3PostConnectFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::FiveXx => "5xx",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::EnvoyRateLimited => "envoy-ratelimited",
            RetryOn::Http3PostConnectFailure => "http3-post-connect-failure",
        }
    }

    fn parse(s: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl serde::Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl RetryOn {
    /// Conditions under which the request provably never reached the upstream application, so
    /// retrying cannot apply it twice (RFC 9110 §9.2.2). Not `http3-post-connect-failure`: Envoy
    /// retries any failure after an HTTP/3 handshake with it, sent request or not.
    pub fn proves_request_unsent(self) -> bool {
        matches!(
            self,
            RetryOn::ConnectFailure | RetryOn::RefusedStream | RetryOn::ResetBeforeRequest
        )
    }
}

/// Methods RFC 9110 §9.2.2 defines as idempotent.
pub const RFC9110_IDEMPOTENT: &[&str] = &["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub on: Vec<RetryOn>,
    pub idempotent_methods: Vec<String>,
    pub per_try_timeout_ms: u64,
    pub retriable_status_codes: Vec<u16>,
    pub trust_client_retry_headers: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            on: vec![
                RetryOn::Reset,
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
            ],
            idempotent_methods: RFC9110_IDEMPOTENT.iter().map(|m| m.to_string()).collect(),
            per_try_timeout_ms: 0,
            retriable_status_codes: Vec::new(),
            trust_client_retry_headers: false,
        }
    }
}

impl RetryConfig {
    /// The `on` conditions by name, for log lines.
    pub fn on_names(&self) -> Vec<&'static str> {
        self.on.iter().map(|c| c.as_str()).collect()
    }

    pub fn read(section: Option<ObjectReader<'_>>) -> ConfigResult<RetryConfig> {
        let defaults = RetryConfig::default();
        let Some(mut r) = section else {
            return Ok(defaults);
        };
        let max_retries = r.integer(
            "max_retries",
            defaults.max_retries.into(),
            0,
            MAX_RETRIES_LIMIT,
        )? as u32;
        let on = r.array("on", read_condition)?.unwrap_or(defaults.on);
        let idempotent_methods = r
            .array("idempotent_methods", read_method)?
            .unwrap_or(defaults.idempotent_methods);
        let per_try_timeout_ms = r.integer(
            "per_try_timeout_ms",
            defaults.per_try_timeout_ms,
            0,
            PER_TRY_TIMEOUT_LIMIT_MS,
        )?;
        let retriable_status_codes = r
            .array("retriable_status_codes", |p, v| {
                read_integer(p, v, 100, 599).map(|n| n as u16)
            })?
            .unwrap_or_default();
        let trust_client_retry_headers = r.bool("trust_client_retry_headers", false)?;
        r.finish()?;
        Ok(RetryConfig {
            max_retries,
            on: dedup(on),
            idempotent_methods: dedup(idempotent_methods),
            per_try_timeout_ms,
            retriable_status_codes: dedup(retriable_status_codes),
            trust_client_retry_headers,
        })
    }

    /// Valid but risky choices, worth one warning line at start-up.
    pub fn warnings(&self) -> Vec<String> {
        self.idempotent_methods
            .iter()
            .filter(|m| !RFC9110_IDEMPOTENT.contains(&m.as_str()))
            .map(|m| {
                format!(
                    "retry.idempotent_methods lists {m}, which RFC 9110 does not define as \
                     idempotent: a reset after the request was sent will replay it upstream"
                )
            })
            .collect()
    }
}

/// Drops repeats, keeping the first occurrence (order is what the operator wrote).
fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn read_condition(path: &str, value: &serde_json::Value) -> ConfigResult<RetryOn> {
    let s = read_string(path, value)?;
    RetryOn::parse(s).ok_or_else(|| {
        let hint = match s {
            "retriable-status-codes" => " (list the codes in retry.retriable_status_codes instead)",
            _ => "",
        };
        let known: Vec<&str> = RetryOn::ALL.iter().map(|c| c.as_str()).collect();
        error(
            path,
            format!("one of {}, got {s:?}{hint}", known.join(", ")),
        )
    })
}

pub(super) fn read_method(path: &str, value: &serde_json::Value) -> ConfigResult<String> {
    let s = read_string(path, value)?;
    let registered = super::schema::registered_methods();
    if registered.contains(&s) {
        return Ok(s.to_string());
    }
    let upper = s.to_ascii_uppercase();
    let hint = if registered.contains(&upper.as_str()) {
        format!(" (methods are case-sensitive: write {upper:?})")
    } else {
        String::new()
    };
    Err(error(
        path,
        format!("an HTTP method from the IANA registry, got {s:?}{hint}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: serde_json::Value) -> ConfigResult<RetryConfig> {
        let mut root = serde_json::Map::new();
        root.insert("retry".to_string(), v);
        let root = serde_json::Value::Object(root);
        let mut r = ObjectReader::new("$", &root).unwrap();
        RetryConfig::read(r.object("retry").unwrap())
    }

    #[test]
    fn all_lists_every_condition_once_in_order() {
        // retry_policy relies on it to list the unsent-only conditions sorted without sorting.
        assert!(RetryOn::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn empty_section_is_all_defaults() {
        assert_eq!(read(json!({})).unwrap(), RetryConfig::default());
    }

    #[test]
    fn every_field_is_read() {
        let c = read(json!({
            "max_retries": 3, "on": ["reset", "5xx", "reset"], "idempotent_methods": ["GET", "QUERY"],
            "per_try_timeout_ms": 250, "retriable_status_codes": [503, 502],
            "trust_client_retry_headers": true
        }))
        .unwrap();
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.on, vec![RetryOn::Reset, RetryOn::FiveXx]);
        assert_eq!(c.idempotent_methods, vec!["GET", "QUERY"]);
        assert_eq!(c.per_try_timeout_ms, 250);
        assert_eq!(c.retriable_status_codes, vec![503, 502]);
        assert!(c.trust_client_retry_headers);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                json!({"max_retries": 11}),
                "retry.max_retries",
                "from 0 to 10",
            ),
            (json!({"max_retries": "2"}), "retry.max_retries", "integer"),
            (
                json!({"on": ["reset", "bogus"]}),
                "retry.on[1]",
                "connect-failure",
            ),
            (
                json!({"on": ["retriable-status-codes"]}),
                "retry.on[0]",
                "retriable_status_codes",
            ),
            (json!({"on": "reset"}), "retry.on", "an array"),
            (
                json!({"idempotent_methods": ["get"]}),
                "retry.idempotent_methods[0]",
                "\"GET\"",
            ),
            (
                json!({"idempotent_methods": ["FETCH"]}),
                "retry.idempotent_methods[0]",
                "IANA",
            ),
            (
                json!({"retriable_status_codes": [99]}),
                "retry.retriable_status_codes[0]",
                "100 to 599",
            ),
            (
                json!({"per_try_timeout_ms": -5}),
                "retry.per_try_timeout_ms",
                "integer",
            ),
            (
                json!({"trust_client_retry_headers": 1}),
                "retry.trust_client_retry_headers",
                "boolean",
            ),
            (json!({"maxretries": 1}), "retry.maxretries", "max_retries"),
        ];
        for (value, path, fragment) in cases {
            let err = read(value.clone()).unwrap_err();
            assert_eq!(err.path, path, "{value}");
            assert!(err.expected.contains(fragment), "{value}: {err}");
        }
    }

    #[test]
    fn non_idempotent_methods_draw_a_warning() {
        let c = read(json!({"idempotent_methods": ["GET", "POST"]})).unwrap();
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("POST"));
        assert!(RetryConfig::default().warnings().is_empty());
    }
}
