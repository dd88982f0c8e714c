//! What the filter does with a request, decided from its head alone (no host calls, no store).
//!
//! ```text
//! decide<'p, 'h, H: HeaderPair<'h>>(policy: PolicyRef<'p>, headers: impl IntoIterator<Item = H>,
//!     end_of_stream: bool) -> Decision<'p, 'h>
//!   (H: `&'h (Vec<u8>, Vec<u8>)`, so `&[(Vec<u8>, Vec<u8>)]` works, or `(&'h [u8], &'h [u8])`,
//!   as the filter iterates the host's header buffer without copying it)
//! Policy::new(config: Config) -> Policy
//! Policy::as_ref(&self) -> PolicyRef<'_>
//! Decision::stripped(&self) -> &[&[u8]]
//! Decision::local_reply(&self) -> Option<u32>
//! Decision::binding(&self, policy: PolicyRef<'_>) -> Option<KeyBinding>
//! ```
//!
//! The filter's `on_http_request_headers` runs exactly this on the request's header map, then
//! carries the decision out: it strips [`Decision::stripped`], answers a [`KeyDecision::Refused`]
//! request, hands a [`KeyDecision::Valid`] one to the store (which may still answer 409, 422, a
//! replay, or 503 when full), and sets the router headers of [`Arming::Headers`]. Tools (the
//! `resetguard explain` CLI) call it on a request written by hand to show what the filter does.
//! Header names must be lower-case, as proxies hand them to filters; pseudo-headers
//! (`:method`, `:path`, `:authority`) are part of the list.

use crate::config::Config;
use crate::idempotency::key::{parse_key, KeyError};
use crate::idempotency::scope::RequestHead;
use crate::idempotency::store::IdempotencyStore;
use crate::idempotency::verdict::{Judgement, Verdict};
use crate::idempotency::Idempotency;
use crate::retry_policy::{is_client_retry_control, RetryPlan, RetryPolicy, RetrySafety};

/// An effective policy with everything derived from it, owned (for tools; the filter keeps the
/// same parts in its per-configuration state and passes a [`PolicyRef`]).
pub struct Policy {
    pub config: Config,
    pub retry: RetryPolicy,
    /// `Some` when `idempotency` is enabled; without a store (keys are checked, not deduped).
    pub idempotency: Option<Idempotency>,
}

impl Policy {
    /// Keys are checked, not deduped (no store): what the CLI explains.
    pub fn new(config: Config) -> Policy {
        Policy::with_store(config, None)
    }

    /// With `store`, valid keys are deduped through it (the filter, once the store is open).
    pub fn with_store(config: Config, store: Option<Box<dyn IdempotencyStore>>) -> Policy {
        let retry = RetryPolicy::new(&config.retry);
        let idempotency = config
            .idempotency
            .enabled
            .then(|| Idempotency::new(config.idempotency.clone(), store));
        Policy {
            config,
            retry,
            idempotency,
        }
    }

    pub fn as_ref(&self) -> PolicyRef<'_> {
        PolicyRef {
            config: &self.config,
            retry: &self.retry,
            idempotency: self.idempotency.as_ref(),
        }
    }
}

/// The parts of an effective policy a decision reads.
#[derive(Copy, Clone)]
pub struct PolicyRef<'p> {
    pub config: &'p Config,
    pub retry: &'p RetryPolicy,
    pub idempotency: Option<&'p Idempotency>,
}

/// Everything the filter does at request headers.
pub struct Decision<'p, 'h> {
    /// The fields the idempotency layer reads (method, path, authority, key and scope values).
    pub head: RequestHead<'h>,
    /// Client headers that could steer the router's retries (`x-envoy-retry-on`, …), as sent.
    pub client_retry_headers: Vec<&'h [u8]>,
    /// Whether those headers are trusted (`retry.trust_client_retry_headers`): else stripped.
    pub client_retry_headers_trusted: bool,
    /// How safe a second attempt is, after a valid key may have upgraded it.
    pub safety: RetrySafety,
    pub arming: Arming<'p>,
    pub key: KeyDecision,
}

/// The router retry headers the filter sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arming<'p> {
    /// These headers, consumed by the router (never sent upstream).
    Headers(&'p RetryPlan),
    /// The client's own (trusted) retry headers steer the router; the filter adds nothing.
    ClientSteers,
    /// Nothing to arm: `max_retries` is 0, or no configured condition is safe for this request.
    Nothing,
}

/// Whether the request must carry an `Idempotency-Key`, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyDecision {
    Exempt(Exemption),
    /// Refused before the store. In enforce mode the filter answers the judgement's problem
    /// (400/413); in report mode it counts what it would have done and lets the request pass.
    Refused {
        reason: Refusal,
        judgement: Judgement,
    },
    /// A valid key: deduped through the store when there is one.
    Valid {
        key: Vec<u8>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Exemption {
    /// The `idempotency` section is absent or disabled (on this route).
    Disabled,
    /// The method is not in `idempotency.required_methods`.
    Method,
    /// The path is under none of `idempotency.path_prefixes`.
    Path,
    /// A gRPC call (`content-type: application/grpc…`).
    Grpc,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed(&'static str),
    /// `content-length` declares more than `max_request_body_bytes`, and a body follows.
    BodyTooLarge,
}

/// What a key is bound to: the store identity hashes the values of these headers with the
/// authority, method and path (never shown: they are credentials, typically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBinding {
    /// Each configured scope header (lower-case) and how many values the request carries.
    pub scope_headers: Vec<(String, usize)>,
    pub authority: Vec<u8>,
    pub method: Vec<u8>,
    pub path: Vec<u8>,
}

/// One (name, value) header, borrowed for the decision's lifetime.
pub trait HeaderPair<'h> {
    fn parts(self) -> (&'h [u8], &'h [u8]);
}

impl<'h> HeaderPair<'h> for &'h (Vec<u8>, Vec<u8>) {
    fn parts(self) -> (&'h [u8], &'h [u8]) {
        (&self.0, &self.1)
    }
}

impl<'h> HeaderPair<'h> for (&'h [u8], &'h [u8]) {
    fn parts(self) -> (&'h [u8], &'h [u8]) {
        self
    }
}

/// Decides what the filter does with a request head (see the module docs).
pub fn decide<'p, 'h, H: HeaderPair<'h>>(
    policy: PolicyRef<'p>,
    headers: impl IntoIterator<Item = H>,
    end_of_stream: bool,
) -> Decision<'p, 'h> {
    let idempotency = policy.idempotency;
    let mut head = RequestHead::default();
    let mut client_retry_headers = Vec::new();
    for (name, value) in headers.into_iter().map(HeaderPair::parts) {
        match name {
            b":method" => head.method = value,
            b":path" => head.path = value,
            b":authority" => head.authority = value,
            _ if is_client_retry_control(name) => client_retry_headers.push(name),
            _ => {
                if let Some(idem) = idempotency {
                    idem.scope.observe(&mut head, name, value);
                }
            }
        }
    }
    let key = match idempotency {
        None => KeyDecision::Exempt(Exemption::Disabled),
        Some(idem) => check_key(idem, &head, end_of_stream),
    };
    let mut safety = policy.retry.safety_of_method(head.method);
    let key_is_valid = matches!(
        key,
        KeyDecision::Valid { .. }
            | KeyDecision::Refused {
                reason: Refusal::BodyTooLarge,
                ..
            }
    );
    let upgrade = idempotency.is_some_and(|i| i.config.retry_keyed_requests);
    if key_is_valid && upgrade && safety == RetrySafety::Unsafe {
        safety = RetrySafety::KeyedIdempotent;
    }
    let client_retry_headers_trusted = policy.config.retry.trust_client_retry_headers;
    let arming = if !client_retry_headers.is_empty() && client_retry_headers_trusted {
        Arming::ClientSteers
    } else {
        policy
            .retry
            .plan(safety)
            .map_or(Arming::Nothing, Arming::Headers)
    };
    Decision {
        head,
        client_retry_headers,
        client_retry_headers_trusted,
        safety,
        arming,
        key,
    }
}

fn check_key(idem: &Idempotency, head: &RequestHead<'_>, end_of_stream: bool) -> KeyDecision {
    if head.grpc {
        return KeyDecision::Exempt(Exemption::Grpc);
    }
    if !idem.scope.applies_to(head) {
        let method_listed = idem
            .config
            .required_methods
            .iter()
            .any(|m| m.as_bytes() == head.method);
        return KeyDecision::Exempt(if method_listed {
            Exemption::Path
        } else {
            Exemption::Method
        });
    }
    let config = &idem.config;
    let parsed = match head.key_values.as_slice() {
        [] => parse_key(None, config.max_key_length),
        [one] => parse_key(Some(one), config.max_key_length),
        _ => Err(KeyError::Malformed("more than one key header")),
    };
    let key = match parsed {
        Ok(key) => key,
        Err(error) => {
            let reason = match error {
                KeyError::Missing => Refusal::Missing,
                KeyError::Malformed(why) => Refusal::Malformed(why),
            };
            let judgement = idem
                .rules
                .key_error(error, &config.header, config.max_key_length);
            return KeyDecision::Refused { reason, judgement };
        }
    };
    let declared_too_large = head
        .content_length
        .is_some_and(|n| n > config.max_request_body_bytes as u64);
    if declared_too_large && !end_of_stream {
        return KeyDecision::Refused {
            reason: Refusal::BodyTooLarge,
            judgement: idem.rules.body_too_large(config.max_request_body_bytes),
        };
    }
    KeyDecision::Valid { key }
}

impl Decision<'_, '_> {
    /// The client retry headers the filter removes before the router sees them.
    pub fn stripped(&self) -> &[&[u8]] {
        if self.client_retry_headers_trusted {
            &[]
        } else {
            &self.client_retry_headers
        }
    }

    /// The status the filter answers with itself at request headers (before the store), if any.
    pub fn local_reply(&self) -> Option<u32> {
        match &self.key {
            KeyDecision::Refused {
                judgement:
                    Judgement {
                        verdict: Verdict::Reject { problem, .. },
                        ..
                    },
                ..
            } => Some(problem.status()),
            _ => None,
        }
    }

    /// What a valid key is bound to in the store (for explaining; not needed on the hot path).
    pub fn binding(&self, policy: PolicyRef<'_>) -> Option<KeyBinding> {
        let idem = policy.idempotency?;
        if !matches!(self.key, KeyDecision::Valid { .. }) {
            return None;
        }
        let scope_headers = idem
            .config
            .scope_headers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let n = self
                    .head
                    .scope_values
                    .iter()
                    .filter(|(at, _)| *at == i)
                    .count();
                (name.clone(), n)
            })
            .collect();
        Some(KeyBinding {
            scope_headers,
            authority: self.head.authority.to_vec(),
            method: self.head.method.to_vec(),
            path: self.head.path.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counter::Counter;
    use crate::idempotency::problem::Problem;
    use crate::retry_policy::{MAX_RETRIES, RETRY_ON};

    fn policy(json: &str) -> Policy {
        Policy::new(Config::parse(json.as_bytes()).unwrap())
    }

    fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut h = vec![
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
            (b":authority".to_vec(), b"api.example".to_vec()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        h
    }

    fn armed<'p>(d: &Decision<'p, '_>, name: &str) -> Option<&'p str> {
        match d.arming {
            Arming::Headers(plan) => plan
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    #[test]
    fn methods_decide_the_retry_headers() {
        let p = policy("");
        let get = request("GET", "/", &[]);
        let d = decide(p.as_ref(), &get, true);
        assert_eq!(d.safety, RetrySafety::Idempotent);
        assert_eq!(
            armed(&d, RETRY_ON),
            Some("reset,connect-failure,refused-stream")
        );
        assert_eq!(armed(&d, MAX_RETRIES), Some("2"));
        assert_eq!(d.key, KeyDecision::Exempt(Exemption::Disabled));
        assert_eq!(d.local_reply(), None);
        let post = request("POST", "/", &[]);
        let d = decide(p.as_ref(), &post, false);
        assert_eq!(d.safety, RetrySafety::Unsafe);
        assert_eq!(
            armed(&d, RETRY_ON),
            Some("reset-before-request,connect-failure,refused-stream")
        );
        let zero = policy(r#"{"retry": {"max_retries": 0}}"#);
        assert_eq!(decide(zero.as_ref(), &get, true).arming, Arming::Nothing);
    }

    #[test]
    fn client_retry_headers_are_stripped_unless_trusted() {
        let h = request(
            "GET",
            "/",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "9"),
                ("x-other", "1"),
            ],
        );
        let p = policy("");
        let d = decide(p.as_ref(), &h, true);
        assert_eq!(
            d.stripped(),
            [&b"x-envoy-retry-on"[..], &b"x-envoy-max-retries"[..]]
        );
        assert!(matches!(d.arming, Arming::Headers(_)));
        let trusting = policy(r#"{"retry": {"trust_client_retry_headers": true}}"#);
        let d = decide(trusting.as_ref(), &h, true);
        assert!(d.stripped().is_empty());
        assert_eq!(d.arming, Arming::ClientSteers);
        // Trust without client headers: the filter arms as usual.
        let get = request("GET", "/", &[]);
        assert!(matches!(
            decide(trusting.as_ref(), &get, true).arming,
            Arming::Headers(_)
        ));
    }

    #[test]
    fn keys_required_missing_malformed_and_exempt() {
        let p = policy(r#"{"idempotency": {"path_prefixes": ["/pay"]}}"#);
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], bool);
        let cases: [Case<'_>; 7] = [
            ("GET", "/pay", &[], false),
            ("POST", "/other", &[], false),
            (
                "POST",
                "/pay",
                &[("content-type", "application/grpc")],
                false,
            ),
            ("POST", "/pay", &[], true),
            ("POST", "/pay", &[("idempotency-key", "a b")], true),
            (
                "POST",
                "/pay",
                &[("idempotency-key", "a"), ("idempotency-key", "b")],
                true,
            ),
            ("POST", "/pay", &[("idempotency-key", "\"k-1\"")], false),
        ];
        let expected = [
            KeyDecision::Exempt(Exemption::Method),
            KeyDecision::Exempt(Exemption::Path),
            KeyDecision::Exempt(Exemption::Grpc),
        ];
        for (i, (method, path, extra, refused)) in cases.iter().enumerate() {
            let h = request(method, path, extra);
            let d = decide(p.as_ref(), &h, true);
            if let Some(e) = expected.get(i) {
                assert_eq!(&d.key, e, "{method} {path}");
            }
            assert_eq!(
                d.local_reply(),
                refused.then_some(400),
                "{method} {path} {extra:?}"
            );
        }
        let h = request("POST", "/pay", &[]);
        let KeyDecision::Refused { reason, judgement } = decide(p.as_ref(), &h, true).key else {
            panic!("refused");
        };
        assert_eq!(reason, Refusal::Missing);
        assert_eq!(judgement.counters, [Counter::IdemMissing]);
        let h = request("POST", "/pay", &[("idempotency-key", "\"k-1\"")]);
        assert_eq!(
            decide(p.as_ref(), &h, true).key,
            KeyDecision::Valid {
                key: b"k-1".to_vec()
            }
        );
    }

    #[test]
    fn report_mode_refuses_without_answering() {
        let p = policy(r#"{"idempotency": {"mode": "report"}}"#);
        let h = request("POST", "/", &[]);
        let d = decide(p.as_ref(), &h, true);
        assert!(matches!(
            d.key,
            KeyDecision::Refused {
                reason: Refusal::Missing,
                ..
            }
        ));
        assert_eq!(d.local_reply(), None);
    }

    #[test]
    fn a_declared_oversized_body_is_refused_only_while_it_is_still_coming() {
        let p = policy(r#"{"idempotency": {"max_request_body_bytes": 10}}"#);
        let h = request(
            "POST",
            "/",
            &[("idempotency-key", "k"), ("content-length", "11")],
        );
        let d = decide(p.as_ref(), &h, false);
        assert_eq!(d.local_reply(), Some(Problem::BodyTooLarge.status()));
        assert!(matches!(
            decide(p.as_ref(), &h, true).key,
            KeyDecision::Valid { .. }
        ));
    }

    #[test]
    fn a_valid_key_upgrades_retries_only_when_configured() {
        let h = request("POST", "/", &[("idempotency-key", "k")]);
        let plain = policy(r#"{"idempotency": {}}"#);
        assert_eq!(decide(plain.as_ref(), &h, true).safety, RetrySafety::Unsafe);
        let p = policy(r#"{"idempotency": {"retry_keyed_requests": true}}"#);
        let d = decide(p.as_ref(), &h, true);
        assert_eq!(d.safety, RetrySafety::KeyedIdempotent);
        assert_eq!(
            armed(&d, RETRY_ON),
            Some("reset,connect-failure,refused-stream")
        );
        let missing = request("POST", "/", &[]);
        assert_eq!(
            decide(p.as_ref(), &missing, true).safety,
            RetrySafety::Unsafe
        );
    }

    #[test]
    fn the_binding_names_scope_headers_never_their_values() {
        let p = policy(r#"{"idempotency": {"scope_headers": ["authorization", "x-tenant"]}}"#);
        let h = request(
            "POST",
            "/orders",
            &[("authorization", "Bearer secret"), ("idempotency-key", "k")],
        );
        let d = decide(p.as_ref(), &h, true);
        let b = d.binding(p.as_ref()).unwrap();
        assert_eq!(
            b.scope_headers,
            [
                ("authorization".to_string(), 1),
                ("x-tenant".to_string(), 0)
            ]
        );
        assert_eq!(
            (b.method.as_slice(), b.path.as_slice()),
            (&b"POST"[..], &b"/orders"[..])
        );
        assert!(!format!("{b:?}").contains("secret"));
        let get = request("GET", "/", &[]);
        assert_eq!(decide(p.as_ref(), &get, true).binding(p.as_ref()), None);
    }
}
