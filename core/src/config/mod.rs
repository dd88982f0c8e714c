//! The plugin JSON contract: parsing, validation and defaults. Knows nothing of the ABI.

mod client_abort;
mod idempotency;
pub mod json_text;
pub mod reader;
mod retry;
pub mod route_metadata;
pub mod route_override;
pub mod schema;
mod store;

pub use client_abort::{AbortLogLevel, ClientAbortConfig};
pub use idempotency::{IdempotencyConfig, IdempotencyMode, UnknownOutcome, WhenFull};
pub use reader::{ConfigError, ConfigResult};
pub use retry::{RetryConfig, RetryOn, MAX_RETRIES_LIMIT, RFC9110_IDEMPOTENT};
pub use store::{Backend, OnUnavailable, StoreConfig, ETCD_VALUE_LIMIT_BYTES};

use reader::{error, ObjectReader};
use serde_json::{Map, Value};

/// Upper bound on the plugin JSON: a config this large is a mistake, not a policy.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// The plugin configuration as JSON (route overrides merge onto it): at most `MAX_CONFIG_BYTES`,
/// and empty (or only whitespace) is `{}`.
pub fn parse_json(raw: &[u8]) -> ConfigResult<Value> {
    if raw.len() > MAX_CONFIG_BYTES {
        return Err(error(
            "$",
            format!(
                "at most {MAX_CONFIG_BYTES} bytes of JSON, got {}",
                raw.len()
            ),
        ));
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    json_text::parse_strict(raw)
}

/// The whole configuration; `Serialize` writes it back as plugin JSON with every default spelled
/// out (what `resetguard validate` shows as the effective configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    pub retry: RetryConfig,
    pub client_abort: ClientAbortConfig,
    pub idempotency: IdempotencyConfig,
}

impl Config {
    /// Parses the plugin configuration. Empty (or only whitespace) means all defaults.
    pub fn parse(raw: &[u8]) -> ConfigResult<Config> {
        Config::parse_value(&parse_json(raw)?)
    }

    /// Reads an already-parsed plugin JSON value with the same strict rules as `parse` (used for
    /// route overrides merged onto the plugin JSON, and by tools that load YAML).
    pub fn parse_value(value: &Value) -> ConfigResult<Config> {
        let mut root = ObjectReader::new("$", value)?;
        let retry = RetryConfig::read(root.object("retry")?)?;
        let client_abort = ClientAbortConfig::read(root.object("client_abort")?)?;
        let idempotency = IdempotencyConfig::read(root.object("idempotency")?)?;
        root.finish()?;
        Ok(Config {
            retry,
            client_abort,
            idempotency,
        })
    }

    pub fn warnings(&self) -> Vec<String> {
        self.retry.warnings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_defaults() {
        for raw in ["", "  \n", "{}"] {
            assert_eq!(
                Config::parse(raw.as_bytes()).unwrap(),
                Config::default(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::default();
        assert_eq!(c.retry.max_retries, 2);
        let on: Vec<&str> = c.retry.on.iter().map(|c| c.as_str()).collect();
        assert_eq!(on, ["reset", "connect-failure", "refused-stream"]);
        assert_eq!(c.retry.idempotent_methods, RFC9110_IDEMPOTENT);
        assert!(!c.retry.trust_client_retry_headers);
    }

    #[test]
    fn garbage_is_an_error_at_the_root() {
        for raw in [
            &b"{"[..],
            b"[]",
            b"42",
            b"\xff\xfe",
            b"{\"retry\": 1}",
            b"{\"retyr\": {}}",
        ] {
            let err = Config::parse(raw).unwrap_err();
            assert!(
                err.path == "$" || err.path == "retry" || err.path == "retyr",
                "{err}"
            );
        }
        assert_eq!(Config::parse(b"{\"retyr\": {}}").unwrap_err().path, "retyr");
    }

    #[test]
    fn oversized_config_is_rejected() {
        let raw = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(Config::parse(&raw).is_err());
    }
}
