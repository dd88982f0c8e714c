//! Which requests must carry a key, and the scoped identity and payload fingerprint of a keyed
//! request. Scope header values (credentials, typically) only ever enter a keyed hash.

use super::index::{Fingerprint, Identity};
use super::keyed_hash::Keyed;
use sha2::{Digest, Sha256};

/// How identities and fingerprints are hashed. The local store keys them with its secret seed,
/// so clients can neither aim keys at one shard nor predict another client's identity. A store
/// shared by a fleet uses SHA-256: every proxy computes the same identity with no secret to hand
/// out, and the shared store has no shards to aim at (collisions stay out of reach: 128 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Hashing {
    Seeded([u8; 16]),
    Sha256,
}

enum Hasher {
    Seeded(Keyed),
    Sha256(Sha256),
}

impl Hasher {
    fn new(hashing: Hashing) -> Hasher {
        match hashing {
            Hashing::Seeded(seed) => Hasher::Seeded(Keyed::new(&seed)),
            Hashing::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    fn write(&mut self, data: &[u8]) {
        match self {
            Hasher::Seeded(h) => h.write(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// One field, prefixed by its length so that adjacent fields cannot run into each other.
    fn write_field(&mut self, data: &[u8]) {
        self.write(&(data.len() as u64).to_le_bytes());
        self.write(data);
    }

    fn finish(self) -> [u8; 16] {
        match self {
            Hasher::Seeded(h) => h.finish(),
            Hasher::Sha256(h) => {
                let digest = h.finalize();
                digest
                    .as_slice()
                    .first_chunk::<16>()
                    .copied()
                    .unwrap_or_default()
            }
        }
    }
}
use crate::config::IdempotencyConfig;

/// The request fields the idempotency layer reads, all from the one header-map read.
#[derive(Clone, Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub authority: &'a [u8],
    /// Every value of the key header (more than one is malformed).
    pub key_values: Vec<&'a [u8]>,
    /// (scope header index in the config, value), in request order.
    pub scope_values: Vec<(usize, &'a [u8])>,
    /// The declared body size, so an oversized body is refused before the upstream is contacted.
    pub content_length: Option<u64>,
    /// A gRPC call (`content-type: application/grpc…`): keys do not apply (see `applies_to`).
    pub grpc: bool,
}

#[derive(Clone, Debug)]
pub struct KeyScope {
    methods: Vec<Vec<u8>>,
    prefixes: Vec<Vec<u8>>,
    pub header: Vec<u8>,
    pub scope_headers: Vec<Vec<u8>>,
}

impl KeyScope {
    pub fn new(config: &IdempotencyConfig) -> KeyScope {
        KeyScope {
            methods: config
                .required_methods
                .iter()
                .map(|m| m.as_bytes().to_vec())
                .collect(),
            prefixes: config
                .path_prefixes
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
            header: config.header.as_bytes().to_vec(),
            scope_headers: config
                .scope_headers
                .iter()
                .map(|h| h.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Whether a request must carry a key: its method is listed and its path is under a prefix.
    pub fn requires_key(&self, method: &[u8], path: &[u8]) -> bool {
        self.methods.iter().any(|m| m == method)
            && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| path.starts_with(p)))
    }

    /// Whether this request must carry a key. gRPC calls are POSTs too, but a gRPC client cannot
    /// send the header nor read a problem+json answer, and their trailers cannot be replayed.
    pub fn applies_to(&self, head: &RequestHead<'_>) -> bool {
        !head.grpc && self.requires_key(head.method, head.path)
    }

    /// Collects one header of the request if the idempotency layer cares about it.
    pub fn observe<'a>(&self, head: &mut RequestHead<'a>, name: &[u8], value: &'a [u8]) {
        if name == self.header.as_slice() {
            head.key_values.push(value);
        } else if let Some(i) = self.scope_headers.iter().position(|h| h == name) {
            head.scope_values.push((i, value));
        } else if name == b"content-length" {
            head.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name == b"content-type" {
            head.grpc = value.starts_with(b"application/grpc");
        }
    }
}

/// The stored identity: a keyed hash of (scope header values, authority, method, path, key), so a
/// key only ever matches within one client and one resource.
pub fn identity(
    hashing: Hashing,
    head: &RequestHead<'_>,
    key: &[u8],
    scope_headers: usize,
) -> Identity {
    let mut h = Hasher::new(hashing);
    h.write_field(b"resetguard identity v1");
    for i in 0..scope_headers {
        let values = || {
            head.scope_values
                .iter()
                .filter(move |(at, _)| *at == i)
                .map(|(_, v)| *v)
        };
        h.write_field(&(values().count() as u64).to_le_bytes());
        for v in values() {
            h.write_field(v);
        }
    }
    h.write_field(head.authority);
    h.write_field(head.method);
    h.write_field(head.path);
    h.write_field(key);
    h.finish()
}

/// The payload fingerprint: a keyed hash of the request body.
pub fn fingerprint(hashing: Hashing, body: &[u8]) -> Fingerprint {
    let mut h = Hasher::new(hashing);
    h.write_field(b"resetguard fingerprint v1");
    h.write(body);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn scope(json: &str) -> KeyScope {
        KeyScope::new(&Config::parse(json.as_bytes()).unwrap().idempotency)
    }

    #[test]
    fn methods_and_prefixes_select_requests() {
        let all = scope(r#"{"idempotency": {}}"#);
        assert!(all.requires_key(b"POST", b"/anything?x=1"));
        assert!(!all.requires_key(b"GET", b"/anything"));
        assert!(!all.requires_key(b"post", b"/anything"));
        let some = scope(
            r#"{"idempotency": {"required_methods": ["POST", "PATCH"], "path_prefixes": ["/pay", "/orders/"]}}"#,
        );
        assert!(some.requires_key(b"PATCH", b"/orders/1"));
        assert!(some.requires_key(b"POST", b"/payments"));
        assert!(!some.requires_key(b"POST", b"/order"));
        assert!(!some.requires_key(b"POST", b"/"));
    }

    #[test]
    fn grpc_calls_are_exempt() {
        let s = scope(r#"{"idempotency": {}}"#);
        for (ct, applies) in [
            ("application/grpc", false),
            ("application/grpc+proto", false),
            ("application/grpc-web", false),
            ("application/json", true),
        ] {
            assert_eq!(
                s.applies_to(&head(&s, &[("content-type", ct)])),
                applies,
                "{ct}"
            );
        }
        assert!(s.applies_to(&head(&s, &[])));
    }

    fn head<'a>(s: &KeyScope, headers: &[(&'a str, &'a str)]) -> RequestHead<'a> {
        let mut head = RequestHead {
            method: b"POST",
            path: b"/orders",
            authority: b"api.example",
            ..RequestHead::default()
        };
        for (n, v) in headers {
            s.observe(&mut head, n.as_bytes(), v.as_bytes());
        }
        head
    }

    #[test]
    fn identity_is_scoped_to_client_and_resource() {
        let s = scope(r#"{"idempotency": {"scope_headers": ["authorization", "x-tenant"]}}"#);
        let seed = [7u8; 16];
        let alice = head(
            &s,
            &[("authorization", "Bearer alice"), ("idempotency-key", "k")],
        );
        let bob = head(&s, &[("authorization", "Bearer bob")]);
        assert_eq!(alice.key_values, vec![&b"k"[..]]);
        assert_eq!(
            head(&s, &[("content-length", "12")]).content_length,
            Some(12)
        );
        let id = |h: &RequestHead<'_>, key: &[u8]| identity(Hashing::Seeded(seed), h, key, 2);
        assert_eq!(id(&alice, b"k"), id(&alice.clone(), b"k"));
        assert_ne!(id(&alice, b"k"), id(&bob, b"k"));
        assert_ne!(id(&alice, b"k"), id(&alice, b"k2"));
        assert_ne!(
            id(&alice, b"k"),
            identity(Hashing::Seeded([8u8; 16]), &alice, b"k", 2),
            "seeded"
        );
        let other_path = RequestHead {
            path: b"/orders/2",
            ..alice.clone()
        };
        assert_ne!(id(&alice, b"k"), id(&other_path, b"k"));
        let other_host = RequestHead {
            authority: b"evil.example",
            ..alice.clone()
        };
        assert_ne!(id(&alice, b"k"), id(&other_host, b"k"));
        // The same value under another scope header is another client.
        let tenant = head(&s, &[("x-tenant", "Bearer alice")]);
        assert_ne!(id(&alice, b"k"), id(&tenant, b"k"));
        assert_ne!(
            fingerprint(Hashing::Seeded(seed), b"{}"),
            fingerprint(Hashing::Seeded(seed), b"{ }")
        );
        // Fleet-wide hashing: the same on every proxy (no seed), still scoped, and another
        // function than the seeded one.
        let shared = |h: &RequestHead<'_>, key: &[u8]| identity(Hashing::Sha256, h, key, 2);
        assert_eq!(shared(&alice, b"k"), shared(&alice.clone(), b"k"));
        assert_ne!(shared(&alice, b"k"), shared(&bob, b"k"));
        assert_ne!(shared(&alice, b"k"), id(&alice, b"k"));
        assert_ne!(
            fingerprint(Hashing::Sha256, b"{}"),
            fingerprint(Hashing::Sha256, b"{ }")
        );
    }
}
