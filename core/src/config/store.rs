//! `idempotency.store`: where keys are remembered. `local` (the default) is the proxy process's
//! shared data; `etcd` is one etcd v3 cluster shared by every proxy of a fleet, reached through
//! an Envoy cluster with the JSON gateway.

use super::reader::{error, serialize_by_name, ConfigResult, Named, ObjectReader};

/// A callout timeout beyond this is a typo: the stream waits for it.
pub const STORE_TIMEOUT_LIMIT_MS: u64 = 60_000;
pub const PREFIX_LIMIT_BYTES: usize = 128;
/// The largest value the filter writes to etcd: etcd refuses requests over 1.5 MiB (its default
/// `--max-request-bytes`), so a stored response stays well below it.
pub const ETCD_VALUE_LIMIT_BYTES: usize = 1024 * 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    Etcd,
}

/// What a keyed request gets while the shared store is down, slow, or answers garbage.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OnUnavailable {
    /// 503 problem+json `store-unavailable` with `Retry-After`: never executed unprotected.
    Reject,
    /// Sent upstream without a claim: a re-send during the outage may run it again.
    Pass,
    /// Deduped in this proxy's own store instead: a re-send through another proxy may run again.
    Local,
}

impl Named for Backend {
    const NAMES: &'static [(&'static str, Self)] =
        &[("local", Backend::Local), ("etcd", Backend::Etcd)];
}

impl Named for OnUnavailable {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("reject", OnUnavailable::Reject),
        ("pass", OnUnavailable::Pass),
        ("local", OnUnavailable::Local),
    ];
}

serialize_by_name!(Backend, OnUnavailable);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreConfig {
    pub backend: Backend,
    /// The Envoy cluster whose members are the etcd endpoints (etcd only; empty otherwise).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// The `:authority` of the callouts (default: the cluster's name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// Every key the filter writes starts with this.
    pub prefix: String,
    /// Each callout's timeout; a stream waits at most this long per store round trip.
    pub timeout_ms: u64,
    pub on_unavailable: OnUnavailable,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Local,
            cluster: String::new(),
            authority: String::new(),
            prefix: "/resetguard/".to_string(),
            timeout_ms: 300,
            on_unavailable: OnUnavailable::Reject,
        }
    }
}

impl StoreConfig {
    pub fn read(section: Option<ObjectReader<'_>>) -> ConfigResult<StoreConfig> {
        let defaults = StoreConfig::default();
        let Some(mut r) = section else {
            return Ok(defaults);
        };
        let backend = r.one_of("backend", defaults.backend, Backend::NAMES)?;
        let cluster_path = r.child_path("cluster");
        let cluster = r.string("cluster")?.map(str::to_string);
        let authority_path = r.child_path("authority");
        let authority = r.string("authority")?.map(str::to_string);
        let prefix_path = r.child_path("prefix");
        let prefix = r.string("prefix")?.map(str::to_string);
        let timeout_ms = r.integer("timeout_ms", defaults.timeout_ms, 1, STORE_TIMEOUT_LIMIT_MS)?;
        let on_unavailable = r.one_of(
            "on_unavailable",
            defaults.on_unavailable,
            OnUnavailable::NAMES,
        )?;
        r.finish()?;
        let cluster = match (backend, cluster) {
            (Backend::Etcd, None) => {
                return Err(error(
                    &cluster_path,
                    "the Envoy cluster of the etcd members (required with backend \"etcd\")",
                ))
            }
            (_, Some(c)) if !is_name(&c) => {
                return Err(error(
                    &cluster_path,
                    format!("an Envoy cluster name (visible ASCII), got {c:?}"),
                ))
            }
            (_, c) => c.unwrap_or_default(),
        };
        let authority = match authority {
            Some(a) if !is_name(&a) => {
                return Err(error(
                    &authority_path,
                    format!("a host name (visible ASCII), got {a:?}"),
                ))
            }
            Some(a) => a,
            None => cluster.clone(),
        };
        let prefix = match prefix {
            None => defaults.prefix,
            Some(p) if valid_prefix(&p) => p,
            Some(p) => {
                return Err(error(
                    &prefix_path,
                    format!(
                        "a key prefix starting with \"/\", visible ASCII, at most \
                         {PREFIX_LIMIT_BYTES} bytes, got {p:?}"
                    ),
                ))
            }
        };
        Ok(StoreConfig {
            backend,
            cluster,
            authority,
            prefix,
            timeout_ms,
            on_unavailable,
        })
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_prefix(p: &str) -> bool {
    p.starts_with('/') && p.len() <= PREFIX_LIMIT_BYTES && p.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn store(json: &str) -> Result<super::StoreConfig, crate::config::ConfigError> {
        Config::parse(json.as_bytes()).map(|c| c.idempotency.store)
    }

    #[test]
    fn local_by_default_and_etcd_with_its_cluster() {
        let s = store(r#"{"idempotency": {}}"#).unwrap();
        assert_eq!(s.backend, super::Backend::Local);
        let s =
            store(r#"{"idempotency": {"store": {"backend": "etcd", "cluster": "etcd"}}}"#).unwrap();
        assert_eq!(
            (s.cluster.as_str(), s.authority.as_str(), s.prefix.as_str()),
            ("etcd", "etcd", "/resetguard/")
        );
        assert_eq!(
            (s.timeout_ms, s.on_unavailable),
            (300, super::OnUnavailable::Reject)
        );
    }

    #[test]
    fn bad_store_settings_name_their_field() {
        for (json, path, says) in [
            (
                r#"{"backend": "etcd"}"#,
                "idempotency.store.cluster",
                "required",
            ),
            (
                r#"{"backend": "redis"}"#,
                "idempotency.store.backend",
                "one of local, etcd",
            ),
            (
                r#"{"backend": "etcd", "cluster": "e", "timeout_ms": 0}"#,
                "idempotency.store.timeout_ms",
                "from 1 to 60000",
            ),
            (
                r#"{"backend": "etcd", "cluster": "e", "prefix": "rg/"}"#,
                "idempotency.store.prefix",
                "starting with",
            ),
            (
                r#"{"backend": "etcd", "cluster": "e", "prefix": "/a b"}"#,
                "idempotency.store.prefix",
                "visible ASCII",
            ),
            (
                r#"{"backend": "etcd", "cluster": "a b"}"#,
                "idempotency.store.cluster",
                "cluster name",
            ),
            (
                r#"{"backend": "etcd", "cluster": "e", "on_unavailable": "retry"}"#,
                "idempotency.store.on_unavailable",
                "reject, pass, local",
            ),
            (
                r#"{"backend": "etcd", "cluster": "e", "ttl": 1}"#,
                "idempotency.store.ttl",
                "no such setting",
            ),
        ] {
            let e = store(&format!(r#"{{"idempotency": {{"store": {json}}}}}"#)).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.expected.contains(says), "{json}: {e}");
        }
    }
}
