//! `resetguard explain`: what the filter does with one request, decided by the filter's own
//! `decision::decide` on the effective policy (plugin config, optionally with a route override).

use crate::discover::{self, FoundRoute};

use crate::validate::parse_all_errors;
use resetguard_core::config::route_override::RouteOverride;
use resetguard_core::config::{Config, IdempotencyMode};
use resetguard_core::counter::Counter;
use resetguard_core::decision::{
    decide, Arming, Decision, Exemption, KeyDecision, Policy, PolicyRef, Refusal,
};
use resetguard_core::idempotency::verdict::Verdict;
use resetguard_core::retry_policy::RetrySafety;
use serde_json::Value;
use std::fmt::Write as _;

pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names, pseudo-headers included, as a proxy hands them to a filter.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The request has no body (no `content-length` above 0, no `transfer-encoding`).
    pub end_of_stream: bool,
}

impl Request {
    /// `host` becomes `:authority` (as HTTP/1.1 requests reach filters); names are lower-cased.
    pub fn new(method: &str, path: &str, headers: &[(String, String)]) -> Request {
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
        ];
        let mut authority = false;
        let mut body = false;
        for (name, value) in headers {
            let mut name = name.to_ascii_lowercase();
            if name == "host" || name == ":authority" {
                name = ":authority".to_string();
                authority = true;
            }
            let has_body = match name.as_str() {
                "content-length" => value.trim() != "0",
                "transfer-encoding" => true,
                _ => false,
            };
            body |= has_body;
            list.push((name.into_bytes(), value.as_bytes().to_vec()));
        }
        if !authority {
            list.push((b":authority".to_vec(), b"example.com".to_vec()));
        }
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: list,
            end_of_stream: !body,
        }
    }
}

/// Parses `-H 'name: value'`.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .strip_prefix(':')
        .map(|rest| rest.split_once(':').map(|(n, v)| (format!(":{n}"), v)))
        .unwrap_or_else(|| arg.split_once(':').map(|(n, v)| (n.to_string(), v)))
        .ok_or_else(|| format!("a header is 'name: value', got {arg:?}"))?;
    if name.trim().is_empty() {
        return Err(format!("a header is 'name: value', got {arg:?}"));
    }
    Ok((name.trim().to_string(), value.trim().to_string()))
}

/// The policy a request is decided by, and where it came from.
pub struct Effective {
    pub source: String,
    /// `None`: the route disables the filter.
    pub config: Option<Config>,
}

/// Loads the plugin config from `file` (a plugin JSON, or a bootstrap/manifest with exactly one
/// resetguard filter), then applies a route override: one given as JSON, or the one of the
/// route named `route` in the same file.
pub fn effective(
    file: &str,
    override_json: Option<&str>,
    route: Option<&str>,
) -> Result<Effective, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: cannot read: {e}"))?;
    let override_json = match override_json.map(|json| (json, json.strip_prefix('@'))) {
        Some((_, Some(path))) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?)
        }
        Some((json, None)) => Some(json.to_string()),
        None => None,
    };
    effective_text(file, &text, override_json.as_deref(), route)
}

/// [`effective`] on the contents of a file named `file` (the name is only used in messages), with
/// the route override, if any, given as JSON text.
pub fn effective_text(
    file: &str,
    text: &str,
    override_json: Option<&str>,
    route: Option<&str>,
) -> Result<Effective, String> {
    let docs = discover::load(text).map_err(|e| format!("{file}: cannot parse: {e}"))?;
    let mut configs = Vec::new();
    let mut routes: Vec<FoundRoute> = Vec::new();
    for doc in &docs {
        let found = discover::find(doc, text.as_bytes());
        configs.extend(found.configs);
        routes.extend(found.routes);
    }
    let found = match configs.as_slice() {
        [one] => one,
        [] => return Err(format!("{file}: no resetguard configuration found")),
        many => {
            let at: Vec<&str> = many.iter().map(|c| c.path.as_str()).collect();
            return Err(format!(
                "{file}: {} resetguard configurations ({}); explain needs one: pass a plugin JSON",
                many.len(),
                at.join(", ")
            ));
        }
    };
    let raw = found
        .raw
        .clone()
        .map_err(|e| format!("{file}: {}: {e}", found.path))?;
    let base = parse_all_errors(&raw).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        format!(
            "{file}: the plugin configuration is invalid:\n{}",
            lines.join("\n")
        )
    })?;
    let mut source = format!("{} in {file}", found.label);
    let override_value: Option<Value> = match (override_json, route) {
        (Some(_), Some(_)) => return Err("give --route-override or --route, not both".to_string()),
        (Some(json), None) => {
            let value = serde_json::from_str(json)
                .map_err(|e| format!("--route-override: not JSON ({e})"))?;
            source.push_str(&format!(", with the route override {value}"));
            Some(value)
        }
        (None, Some(name)) => {
            let route = routes
                .iter()
                .find(|r| r.name.as_deref() == Some(name))
                .ok_or_else(|| {
                    format!("{file}: no route named {name:?} with resetguard settings")
                })?;
            source.push_str(&format!(", route {}", route.label()));
            if !route.disabled_filters.is_empty() {
                source.push_str(" (note: Envoy's per-route FilterConfig disables a filter here)");
            }
            route.override_value.clone()
        }
        (None, None) => None,
    };
    let Some(value) = override_value else {
        return Ok(Effective {
            source,
            config: Some(base),
        });
    };
    let route_override =
        RouteOverride::from_value(&value).map_err(|e| format!("route override: {e}"))?;
    let plugin: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&raw).map_err(|e| e.to_string())?
    };
    let config = route_override
        .apply(&plugin)
        .map_err(|e| format!("route override: {e}"))?;
    Ok(Effective { source, config })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The explanation, one fact a line.
pub fn explain(effective: &Effective, request: &Request) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request:   {} {}", request.method, request.path);
    let _ = writeln!(out, "policy:    {}", effective.source);
    let Some(config) = &effective.config else {
        let _ = writeln!(out, "resetguard is disabled on this route (`disabled: true`): the request passes untouched, nothing is armed, stripped or counted");
        return out;
    };
    let policy = Policy::new(config.clone());
    let decision = decide(policy.as_ref(), &request.headers, request.end_of_stream);
    retry_lines(&mut out, &decision, config, &request.method);
    key_lines(&mut out, &decision, policy.as_ref(), request);
    let _ = writeln!(out, "outcome:   classified when the stream ends (completed, client_abort, upstream_reset, truncated); non-completed outcomes are published as filter state wasm.resetguard_outcome");
    out
}

fn retry_lines(out: &mut String, d: &Decision<'_, '_>, config: &Config, method: &str) {
    let class = match d.safety {
        RetrySafety::Idempotent => format!("idempotent ({method} is in retry.idempotent_methods): retried on every configured condition"),
        RetrySafety::KeyedIdempotent => "keyed: not idempotent by method, made retry-safe by a valid key (idempotency.retry_keyed_requests)".to_string(),
        RetrySafety::Unsafe => format!("not idempotent ({method} is not in retry.idempotent_methods): retried only when the request provably never reached the upstream"),
    };
    let _ = writeln!(out, "retry:     {class}");
    match &d.arming {
        _ if d.local_reply().is_some() => {
            let _ = writeln!(
                out,
                "router headers set: none used (the filter answers the request itself, below)"
            );
        }
        Arming::Headers(plan) => {
            let _ = writeln!(
                out,
                "router headers set (consumed by Envoy's router, never sent upstream):"
            );
            for (name, value) in &plan.headers {
                let _ = writeln!(out, "  {name}: {value}");
            }
        }
        Arming::ClientSteers => {
            let _ = writeln!(out, "router headers set: none; the client's own retry headers steer the router (retry.trust_client_retry_headers)");
        }
        Arming::Nothing => {
            let why = if config.retry.max_retries == 0 {
                "retry.max_retries is 0"
            } else {
                "no configured condition is safe for this request"
            };
            let _ = writeln!(out, "router headers set: none ({why})");
        }
    }
    let stripped: Vec<String> = d.stripped().iter().map(|h| text(h)).collect();
    if !stripped.is_empty() {
        let _ = writeln!(
            out,
            "client retry headers stripped: {}",
            stripped.join(", ")
        );
    } else if !d.client_retry_headers.is_empty() {
        let kept: Vec<String> = d.client_retry_headers.iter().map(|h| text(h)).collect();
        let _ = writeln!(
            out,
            "client retry headers kept (trusted): {}",
            kept.join(", ")
        );
    }
    let counter = match d.safety {
        RetrySafety::Idempotent => Counter::RequestsIdempotent,
        RetrySafety::KeyedIdempotent => Counter::RequestsKeyed,
        RetrySafety::Unsafe => Counter::RequestsNonIdempotent,
    };
    let _ = writeln!(out, "counted:   {}", counter.name());
}

fn key_lines(out: &mut String, d: &Decision<'_, '_>, policy: PolicyRef<'_>, request: &Request) {
    let Some(idem) = policy.idempotency else {
        let _ = writeln!(
            out,
            "idempotency key: not checked (no `idempotency` section, or disabled)"
        );
        return;
    };
    let header = &idem.config.header;
    match &d.key {
        KeyDecision::Exempt(why) => {
            let why = match why {
                Exemption::Disabled => "idempotency is off".to_string(),
                Exemption::Method => {
                    format!("{} is not in idempotency.required_methods", request.method)
                }
                Exemption::Path => format!(
                    "{} is under none of idempotency.path_prefixes",
                    request.path
                ),
                Exemption::Grpc => "a gRPC call (content-type application/grpc)".to_string(),
            };
            let _ = writeln!(out, "idempotency key: exempt ({why})");
        }
        KeyDecision::Refused { reason, judgement } => {
            let what = match reason {
                Refusal::Missing => format!("required, {header} missing"),
                Refusal::Malformed(why) => format!("required, {header} malformed ({why})"),
                Refusal::BodyTooLarge => format!(
                    "valid, but content-length exceeds idempotency.max_request_body_bytes ({})",
                    idem.config.max_request_body_bytes
                ),
            };
            let _ = writeln!(out, "idempotency key: {what}");
            match (&judgement.verdict, idem.config.mode) {
                (
                    Verdict::Reject {
                        problem,
                        detail,
                        retry_after_s,
                        ..
                    },
                    _,
                ) => {
                    let retry_after = retry_after_s
                        .map(|s| format!(", Retry-After: {s}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "local reply: {} application/problem+json{retry_after}, type {} ({}): {detail}; the request never reaches the upstream",
                        problem.status(),
                        problem.type_uri(),
                        problem.title()
                    );
                }
                (_, IdempotencyMode::Report) => {
                    let _ = writeln!(
                        out,
                        "local reply: none (report mode): the request passes; enforce mode would answer {}",
                        judgement.would_have.unwrap_or("a problem")
                    );
                }
                _ => {}
            }
            let counters: Vec<&str> = judgement.counters.iter().map(|c| c.name()).collect();
            let _ = writeln!(out, "counted:   {}", counters.join(", "));
        }
        KeyDecision::Valid { key } => {
            let _ = writeln!(
                out,
                "idempotency key: required and valid ({header}: {})",
                text(key)
            );
            if let Some(binding) = d.binding(policy) {
                let scope: Vec<String> = binding
                    .scope_headers
                    .iter()
                    .map(|(name, n)| {
                        format!("{name} ({n} value{})", if *n == 1 { "" } else { "s" })
                    })
                    .collect();
                let anonymous = binding.scope_headers.iter().all(|(_, n)| *n == 0);
                let _ = writeln!(
                    out,
                    "key scope: a keyed hash of {}, :authority {}, :method {}, :path {} and the key{}",
                    scope.join(", "),
                    text(&binding.authority),
                    text(&binding.method),
                    text(&binding.path),
                    if anonymous { " — none of the scope headers is present: the anonymous scope, shared by every such client" } else { "" }
                );
            }
            let _ = writeln!(out, "store:     deduped through the shared store: a completed key replays its response (Idempotent-Replayed: true); the same key in flight gets 409, with another body 422; a full store {}",
                match idem.config.when_full {
                    resetguard_core::config::WhenFull::Reject => "503",
                    resetguard_core::config::WhenFull::PassThrough => "passes the request through unprotected",
                });
            if !request.end_of_stream {
                let _ = writeln!(out, "body:      buffered and fingerprinted (up to {} bytes) before the store is asked", idem.config.max_request_body_bytes);
            }
        }
    }
}
