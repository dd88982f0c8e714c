//! The `client_abort` section: how a downstream disconnect is reported.

use super::reader::{serialize_by_name, ConfigResult, Named, ObjectReader};

/// The level of the one log line written per client abort. Never warn or error: a client that
/// went away is normal traffic. Debug by default: at Envoy's usual info level an abort costs no
/// log line, and `/logging?wasm=debug` shows them when wanted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AbortLogLevel {
    Off,
    Debug,
    Info,
}

impl Named for AbortLogLevel {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("off", AbortLogLevel::Off),
        ("debug", AbortLogLevel::Debug),
        ("info", AbortLogLevel::Info),
    ];
}

serialize_by_name!(AbortLogLevel);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientAbortConfig {
    pub log_level: AbortLogLevel,
    /// Publish non-completed outcomes as filter state for access logs: `wasm.resetguard_outcome`,
    /// and for client aborts `wasm.resetguard_code` (499) and `wasm.resetguard_abort_phase`.
    pub filter_state: bool,
}

impl Default for ClientAbortConfig {
    fn default() -> Self {
        ClientAbortConfig {
            log_level: AbortLogLevel::Debug,
            filter_state: true,
        }
    }
}

impl ClientAbortConfig {
    pub fn read(section: Option<ObjectReader<'_>>) -> ConfigResult<ClientAbortConfig> {
        let defaults = ClientAbortConfig::default();
        let Some(mut r) = section else {
            return Ok(defaults);
        };
        let log_level = r.one_of("log_level", defaults.log_level, AbortLogLevel::NAMES)?;
        let filter_state = r.bool("filter_state", defaults.filter_state)?;
        r.finish()?;
        Ok(ClientAbortConfig {
            log_level,
            filter_state,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn aborts_log_at_debug_and_publish_filter_state_by_default() {
        let c = Config::parse(b"{}").unwrap();
        assert_eq!(c.client_abort.log_level, super::AbortLogLevel::Debug);
        assert!(c.client_abort.filter_state);
        let c = Config::parse(br#"{"client_abort": {"log_level": "info"}}"#).unwrap();
        assert_eq!(c.client_abort.log_level, super::AbortLogLevel::Info);
    }

    #[test]
    fn reads_and_rejects() {
        let c = Config::parse(br#"{"client_abort": {"log_level": "off", "filter_state": false}}"#)
            .unwrap();
        assert_eq!(c.client_abort.log_level, super::AbortLogLevel::Off);
        assert!(!c.client_abort.filter_state);
        let err = Config::parse(br#"{"client_abort": {"log_level": "warn"}}"#).unwrap_err();
        assert_eq!(err.path, "client_abort.log_level");
    }
}
