//! The `idempotency` section: which requests must carry an `Idempotency-Key`, and the bounds of
//! the shared store that dedupes and replays them.

use super::reader::{error, read_string, serialize_by_name, ConfigResult, Named, ObjectReader};
use super::retry::read_method;
use super::store::{Backend, StoreConfig, ETCD_VALUE_LIMIT_BYTES};

/// Bounds that keep a typo from becoming a policy (or an allocation).
pub const MAX_KEY_LENGTH_LIMIT: u64 = 8192;
pub const MAX_REQUEST_BODY_LIMIT: u64 = 64 * 1024 * 1024;
pub const MAX_RESPONSE_BODY_LIMIT: u64 = 16 * 1024 * 1024;
pub const TTL_LIMIT_SECONDS: u64 = 30 * 86_400;
pub const LOCK_TIMEOUT_LIMIT_MS: u64 = 3_600_000;
pub const MAX_ENTRIES_LIMIT: u64 = 10_000_000;
pub const SHARDS_LIMIT: u64 = 4096;
/// Each claim rewrites one shard's index: keep it small enough to copy per request.
pub const ENTRIES_PER_SHARD_LIMIT: u64 = 4096;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// Reject, dedupe and replay.
    Enforce,
    /// Never interfere: log and count what enforce mode would have done.
    Report,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// 503 problem+json with `Retry-After`: a keyed request is never executed unprotected.
    Reject,
    /// Send the request upstream without a claim (no dedupe for it).
    PassThrough,
}

/// What a claim becomes when the request may have reached the upstream but no upstream answer
/// came back (a reset after sending, a timeout, a client abort before the answer).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnknownOutcome {
    /// Release the key so the client's retry runs (opt-in: the upstream sees the request twice
    /// whenever it applied it before the failure).
    Release,
    /// Complete the key without a response (the default): a retry gets 409 `outcome-unknown` or
    /// `client-left`, the request never runs twice. Failures that prove the request was never
    /// sent still release.
    Complete,
}

impl Named for IdempotencyMode {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("enforce", IdempotencyMode::Enforce),
        ("report", IdempotencyMode::Report),
    ];
}

impl Named for WhenFull {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("reject", WhenFull::Reject),
        ("pass_through", WhenFull::PassThrough),
    ];
}

impl Named for UnknownOutcome {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("release", UnknownOutcome::Release),
        ("complete", UnknownOutcome::Complete),
    ];
}

serialize_by_name!(IdempotencyMode, WhenFull, UnknownOutcome);

/// The section as the filter runs it; `Serialize` writes it back as plugin JSON (the effective
/// view `resetguard validate` prints), every key included.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdempotencyConfig {
    pub enabled: bool,
    pub mode: IdempotencyMode,
    pub required_methods: Vec<String>,
    pub path_prefixes: Vec<String>,
    /// Lower-cased, as header maps hold names.
    pub header: String,
    pub max_key_length: usize,
    /// Lower-cased header names whose values scope a key to one client.
    pub scope_headers: Vec<String>,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
    pub ttl_seconds: u64,
    pub lock_timeout_ms: u64,
    pub max_entries: u64,
    pub shards: u32,
    pub when_full: WhenFull,
    pub retry_keyed_requests: bool,
    pub require_store: bool,
    pub unknown_outcome: UnknownOutcome,
    pub store: StoreConfig,
}

impl Default for IdempotencyConfig {
    /// The section's defaults; `enabled` is false only because the section is absent.
    fn default() -> Self {
        IdempotencyConfig {
            enabled: false,
            mode: IdempotencyMode::Enforce,
            required_methods: vec!["POST".to_string()],
            path_prefixes: Vec::new(),
            header: "idempotency-key".to_string(),
            max_key_length: 255,
            scope_headers: vec!["authorization".to_string()],
            max_request_body_bytes: 1024 * 1024,
            max_response_body_bytes: 64 * 1024,
            ttl_seconds: 86_400,
            lock_timeout_ms: 30_000,
            max_entries: 10_000,
            shards: 64,
            when_full: WhenFull::Reject,
            retry_keyed_requests: false,
            require_store: false,
            unknown_outcome: UnknownOutcome::Complete,
            store: StoreConfig::default(),
        }
    }
}

impl IdempotencyConfig {
    pub fn read(section: Option<ObjectReader<'_>>) -> ConfigResult<IdempotencyConfig> {
        let defaults = IdempotencyConfig::default();
        let Some(mut r) = section else {
            return Ok(defaults);
        };
        let enabled = r.bool("enabled", true)?;
        let mode = r.one_of("mode", defaults.mode, IdempotencyMode::NAMES)?;
        let required_methods = r
            .array("required_methods", read_method)?
            .unwrap_or(defaults.required_methods);
        let path_prefixes = r
            .array("path_prefixes", read_path_prefix)?
            .unwrap_or_default();
        let header_path = r.child_path("header");
        let header = match r.string("header")? {
            None => defaults.header,
            Some(name) => header_name(&header_path, name)?,
        };
        let max_key_length = r.integer(
            "max_key_length",
            defaults.max_key_length as u64,
            1,
            MAX_KEY_LENGTH_LIMIT,
        )? as usize;
        let scope_headers = r
            .array("scope_headers", |p, v| header_name(p, read_string(p, v)?))?
            .unwrap_or(defaults.scope_headers);
        let max_request_body_bytes = r.integer(
            "max_request_body_bytes",
            defaults.max_request_body_bytes as u64,
            0,
            MAX_REQUEST_BODY_LIMIT,
        )? as usize;
        let max_response_body_bytes = r.integer(
            "max_response_body_bytes",
            defaults.max_response_body_bytes as u64,
            0,
            MAX_RESPONSE_BODY_LIMIT,
        )? as usize;
        let ttl_seconds = r.integer("ttl_seconds", defaults.ttl_seconds, 1, TTL_LIMIT_SECONDS)?;
        let lock_timeout_ms = r.integer(
            "lock_timeout_ms",
            defaults.lock_timeout_ms,
            100,
            LOCK_TIMEOUT_LIMIT_MS,
        )?;
        let max_entries_path = r.child_path("max_entries");
        let max_entries = r.integer("max_entries", defaults.max_entries, 1, MAX_ENTRIES_LIMIT)?;
        let shards = r.integer("shards", u64::from(defaults.shards), 1, SHARDS_LIMIT)? as u32;
        let when_full = r.one_of("when_full", defaults.when_full, WhenFull::NAMES)?;
        let retry_keyed_requests = r.bool("retry_keyed_requests", defaults.retry_keyed_requests)?;
        let require_store = r.bool("require_store", defaults.require_store)?;
        let unknown_outcome = r.one_of(
            "unknown_outcome",
            defaults.unknown_outcome,
            UnknownOutcome::NAMES,
        )?;
        let response_limit_path = r.child_path("max_response_body_bytes");
        let store = StoreConfig::read(r.object("store")?)?;
        r.finish()?;
        if store.backend == Backend::Etcd && max_response_body_bytes > ETCD_VALUE_LIMIT_BYTES {
            return Err(error(
                &response_limit_path,
                format!(
                    "at most {ETCD_VALUE_LIMIT_BYTES} with the etcd store (etcd refuses larger \
                     requests), got {max_response_body_bytes}"
                ),
            ));
        }
        let config = IdempotencyConfig {
            enabled,
            mode,
            required_methods,
            path_prefixes,
            header,
            max_key_length,
            scope_headers,
            max_request_body_bytes,
            max_response_body_bytes,
            ttl_seconds,
            lock_timeout_ms,
            max_entries,
            shards,
            when_full,
            retry_keyed_requests,
            require_store,
            unknown_outcome,
            store,
        };
        if config.entries_per_shard() > ENTRIES_PER_SHARD_LIMIT {
            return Err(error(
                &max_entries_path,
                format!(
                    "at most {ENTRIES_PER_SHARD_LIMIT} entries per shard, got {} / {} shards \
                     (raise idempotency.shards)",
                    config.max_entries, config.shards
                ),
            ));
        }
        Ok(config)
    }

    /// Capacity of one shard: ceil(max_entries / shards).
    pub fn entries_per_shard(&self) -> u64 {
        self.max_entries.div_ceil(u64::from(self.shards.max(1)))
    }
}

fn read_path_prefix(path: &str, value: &serde_json::Value) -> ConfigResult<String> {
    let s = read_string(path, value)?;
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(error(
            path,
            format!("a path prefix starting with \"/\" (visible ASCII), got {s:?}"),
        ))
    }
}

/// A regular header name (RFC 9110 token), lower-cased; pseudo-headers are not keys.
fn header_name(path: &str, name: &str) -> ConfigResult<String> {
    const TOKEN_SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_SYMBOLS.contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(error(
            path,
            format!("an HTTP header name (token characters), got {name:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(json: &str) -> ConfigResult<IdempotencyConfig> {
        Config::parse(json.as_bytes()).map(|c| c.idempotency)
    }

    #[test]
    fn absent_is_disabled_present_is_enabled_with_documented_defaults() {
        assert!(!parse("{}").unwrap().enabled);
        let c = parse(r#"{"idempotency": {}}"#).unwrap();
        assert!(c.enabled);
        assert_eq!(
            c,
            IdempotencyConfig {
                enabled: true,
                ..IdempotencyConfig::default()
            }
        );
        assert_eq!(c.entries_per_shard(), 157);
        assert!(
            !parse(r#"{"idempotency": {"enabled": false}}"#)
                .unwrap()
                .enabled
        );
    }

    #[test]
    fn every_field_is_read() {
        let c = parse(
            r#"{"idempotency": {"enabled": true, "mode": "report", "required_methods": ["POST", "PATCH"],
                "path_prefixes": ["/payments"], "header": "X-Idem-Key", "max_key_length": 64,
                "scope_headers": ["Authorization", "x-tenant"], "max_request_body_bytes": 10,
                "max_response_body_bytes": 20, "ttl_seconds": 60, "lock_timeout_ms": 1000,
                "max_entries": 100, "shards": 4, "when_full": "pass_through",
                "retry_keyed_requests": true, "require_store": true}}"#,
        )
        .unwrap();
        assert_eq!(c.mode, IdempotencyMode::Report);
        assert_eq!(c.required_methods, ["POST", "PATCH"]);
        assert_eq!(c.path_prefixes, ["/payments"]);
        assert_eq!(c.header, "x-idem-key");
        assert_eq!(c.max_key_length, 64);
        assert_eq!(c.scope_headers, ["authorization", "x-tenant"]);
        assert_eq!(
            (c.max_request_body_bytes, c.max_response_body_bytes),
            (10, 20)
        );
        assert_eq!((c.ttl_seconds, c.lock_timeout_ms), (60, 1000));
        assert_eq!(
            (c.max_entries, c.shards, c.entries_per_shard()),
            (100, 4, 25)
        );
        assert_eq!(c.when_full, WhenFull::PassThrough);
        assert!(c.retry_keyed_requests && c.require_store);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (r#"{"mode": "audit"}"#, "idempotency.mode"),
            (
                r#"{"required_methods": ["post"]}"#,
                "idempotency.required_methods[0]",
            ),
            (
                r#"{"path_prefixes": ["payments"]}"#,
                "idempotency.path_prefixes[0]",
            ),
            (r#"{"header": "Idempotency Key"}"#, "idempotency.header"),
            (r#"{"header": ":path"}"#, "idempotency.header"),
            (r#"{"max_key_length": 0}"#, "idempotency.max_key_length"),
            (r#"{"scope_headers": [1]}"#, "idempotency.scope_headers[0]"),
            (r#"{"ttl_seconds": 0}"#, "idempotency.ttl_seconds"),
            (
                r#"{"lock_timeout_ms": "30s"}"#,
                "idempotency.lock_timeout_ms",
            ),
            (r#"{"shards": 0}"#, "idempotency.shards"),
            (
                r#"{"max_entries": 1000000, "shards": 1}"#,
                "idempotency.max_entries",
            ),
            (r#"{"when_full": "drop"}"#, "idempotency.when_full"),
            (
                r#"{"retry_keyed_requests": "yes"}"#,
                "idempotency.retry_keyed_requests",
            ),
            (r#"{"require_store": 1}"#, "idempotency.require_store"),
            (r#"{"ttl": 5}"#, "idempotency.ttl"),
        ];
        for (section, path) in cases {
            let err = parse(&format!(r#"{{"idempotency": {section}}}"#)).unwrap_err();
            assert_eq!(err.path, path, "{section}: {err}");
        }
        assert_eq!(
            parse(r#"{"idempotency": 1}"#).unwrap_err().path,
            "idempotency"
        );
    }
}
