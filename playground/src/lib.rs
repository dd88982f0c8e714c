//! resetguard's config playground: `resetguard validate` and `resetguard explain` for a browser
//! page, compiled to `wasm32-unknown-unknown` with wasm-bindgen. Everything is decided by the
//! code the filter and the CLI run (`resetguard_cli` over `resetguard_core`); this crate only
//! turns their results into JSON for the page.
//!
//! ```text
//! validate(name, text) -> JSON          validateBytes(name, bytes) -> JSON (a file, maybe not UTF-8)
//! explain(name, text, request) -> JSON  request: {"method", "path", "headers": "name: value\n…",
//!                                                 "route": name|null, "override": JSON text|null}
//! presets() -> JSON [{"path", "text"}]  about() -> JSON {"version", "max_input_bytes", …}
//! selftestPanic()                       panics on purpose: the page's tests prove a panic becomes
//!                                       a message (see `start`)
//! ```
//!
//! A panic cannot unwind on `wasm32-unknown-unknown` (the standard library is built with
//! `panic=abort`): it traps. `start` installs a panic hook that hands the message to the page's
//! global `resetguardPanic(message)` before the trap; the page's worker catches the trap at the
//! JavaScript boundary, reports both, and is replaced by a fresh one.

use resetguard_cli::document::MAX_DEPTH;
use resetguard_cli::effective::{config_json, methods_of_interest, policy_lines};
use resetguard_cli::explain::{self as explaining, Request};
use resetguard_cli::validate::{self, Finding, RouteEffect, Severity};
use resetguard_core::config::{AbortLogLevel, Config, IdempotencyMode, WhenFull};
use resetguard_core::counter::Counter;
use resetguard_core::decision::{decide, Arming, Exemption, KeyDecision, Policy, Refusal};
use resetguard_core::idempotency::verdict::Verdict;
use resetguard_core::retry_policy::{RetryPolicy, RetrySafety, MAX_RETRIES, RETRY_ON};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

include!(concat!(env!("OUT_DIR"), "/presets.rs"));

/// The largest input the page checks. Envoy bootstraps and manifests are far smaller; the CLI
/// (`resetguard validate FILE`) has no such limit.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// Checks `text` as `resetguard validate` checks a file named `name`.
#[wasm_bindgen]
pub fn validate(name: &str, text: &str) -> String {
    validate_json(name, text.as_bytes()).to_string()
}

/// [`validate`] on a file's bytes (which may not be UTF-8).
#[wasm_bindgen(js_name = validateBytes)]
pub fn validate_bytes(name: &str, bytes: &[u8]) -> String {
    validate_json(name, bytes).to_string()
}

/// What the filter does with a request (`resetguard explain`), under the configuration in `text`.
#[wasm_bindgen]
pub fn explain(name: &str, text: &str, request: &str) -> String {
    let request: Value = serde_json::from_str(request).unwrap_or(Value::Null);
    explain_json(name, text, &request).to_string()
}

/// Every shipped example, embedded at build time.
#[wasm_bindgen]
pub fn presets() -> String {
    let list: Vec<Value> = PRESETS
        .iter()
        .map(|(path, text)| json!({"path": path, "text": text}))
        .collect();
    Value::Array(list).to_string()
}

#[wasm_bindgen]
pub fn about() -> String {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "max_input_bytes": MAX_INPUT_BYTES,
        "max_depth": MAX_DEPTH,
    })
    .to_string()
}

/// Panics on purpose (the page's tests check that a panic becomes a message, not a dead page).
#[wasm_bindgen(js_name = selftestPanic)]
pub fn selftest_panic() {
    panic!("selftest: a deliberate panic");
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
extern "C" {
    /// The page's worker defines it; called from the panic hook, just before the trap.
    #[wasm_bindgen(js_name = resetguardPanic)]
    fn report_panic(message: &str);
}

/// Runs when the module is instantiated: panics report their message to the page.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| report_panic(&info.to_string())));
}

fn too_large(name: &str, len: usize) -> Option<String> {
    (len > MAX_INPUT_BYTES).then(|| {
        format!(
            "{name}: {len} bytes is more than the playground checks ({MAX_INPUT_BYTES} bytes); \
             check it with `resetguard validate FILE`, which has no limit"
        )
    })
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Hint => "hint",
    }
}

/// The line a parse error names: the YAML reader's `line N` for YAML, serde_json's for JSON
/// (the text starts with `{` or `[`).
fn parse_error_line(message: &str, text: Option<&str>) -> Option<usize> {
    let looks_json = text.is_some_and(|t| t.trim_start().starts_with(['{', '[']));
    let part = match message.split_once(" nor YAML (") {
        Some((json_part, _)) if looks_json => json_part,
        Some((_, yaml_part)) => yaml_part,
        None => message,
    };
    let at = part.find("line ")? + "line ".len();
    let digits: String = part[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn finding_json(f: &Finding, text: Option<&str>) -> Value {
    let line = f.line.or_else(|| {
        (f.document == 0 && f.message.starts_with("cannot parse"))
            .then(|| parse_error_line(&f.message, text))
            .flatten()
    });
    json!({
        "severity": severity(f.severity),
        "document": f.document,
        "line": line,
        "path": f.path,
        "message": f.message,
    })
}

fn unusable_json(name: &str, message: String) -> Value {
    json!({
        "status": "unusable",
        "exit_code": validate::UNUSABLE,
        "summary": message,
        "findings": [{"severity": "error", "document": 0, "line": null, "path": "$",
                      "message": message}],
        "configs": [], "routes": [], "skipped": [],
        "text": {"stdout": "", "stderr": format!("error: {message}\n")},
        "name": name,
    })
}

/// `resetguard validate` on `bytes`, as data: the status, every finding with its line and path,
/// each plugin configuration's and each route's effective policy, and the CLI's own text.
pub fn validate_json(name: &str, bytes: &[u8]) -> Value {
    if let Some(message) = too_large(name, bytes.len()) {
        return unusable_json(name, message);
    }
    let report = validate::validate_bytes(name, bytes);
    let text = std::str::from_utf8(bytes).ok();
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| finding_json(f, text))
        .collect();
    let configs: Vec<Value> = report
        .configs
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let mut v = json!({
                "index": index,
                "document": c.document,
                "label": c.label,
                "path": c.path,
                "line": c.line,
                "valid": c.config.is_some(),
            });
            if let Some(config) = &c.config {
                described(&mut v, config);
            }
            v
        })
        .collect();
    let routes: Vec<Value> = report
        .routes
        .iter()
        .map(|r| {
            let effects: Vec<Value> = r
                .effective
                .iter()
                .map(|(config, effect)| {
                    let mut v = json!({"config": config});
                    match effect {
                        RouteEffect::Disabled => v["kind"] = json!("disabled"),
                        RouteEffect::Same => v["kind"] = json!("same"),
                        RouteEffect::Config(config) => {
                            v["kind"] = json!("policy");
                            described(&mut v, config);
                        }
                    }
                    v
                })
                .collect();
            json!({
                "document": r.document,
                "name": r.name,
                "path": r.path,
                "line": r.line,
                "override": r.override_value,
                "turned_off": r.turned_off,
                "effects": effects,
            })
        })
        .collect();
    let skipped: Vec<Value> = report
        .skipped
        .iter()
        .map(|(document, path, what)| json!({"document": document, "path": path, "what": what}))
        .collect();
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let (status, summary) = match report.status {
        validate::OK => ("ok", format!("ok: {name}")),
        validate::INVALID => ("invalid", format!("{name}: {errors} error(s)")),
        _ => (
            "unusable",
            report
                .findings
                .iter()
                .find(|f| f.severity == Severity::Error)
                .map(|f| format!("{name}: {}", f.message))
                .unwrap_or_else(|| format!("{name}: unusable")),
        ),
    };
    json!({
        "name": name,
        "status": status,
        "exit_code": report.status,
        "summary": summary,
        "findings": findings,
        "configs": configs,
        "routes": routes,
        "skipped": skipped,
        "text": {"stdout": report.out, "stderr": report.err},
    })
}

/// Adds a configuration's effective policy: structured, as the CLI's lines, and every setting.
fn described(v: &mut Value, config: &Config) {
    v["policy"] = policy_json(config);
    v["policy_lines"] = json!(policy_lines(config));
    v["settings"] = config_json(config);
}

fn plan_json(retry: &RetryPolicy, safety: RetrySafety) -> Value {
    match retry.plan(safety) {
        None => json!({"armed": false, "retry_on": [], "max_retries": 0, "router_headers": []}),
        Some(plan) => {
            let header = |name: &str| {
                plan.headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            };
            let on: Vec<&str> = header(RETRY_ON)
                .map(|v| v.split(',').collect())
                .unwrap_or_default();
            let max: u64 = header(MAX_RETRIES)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let headers: Vec<Value> = plan.headers.iter().map(|(n, v)| json!([n, v])).collect();
            json!({"armed": true, "retry_on": on, "max_retries": max, "router_headers": headers})
        }
    }
}

/// The policy per method group: what is retried on which condition, whether a key is required
/// (and on which paths), plus how client router controls and client aborts are handled.
fn policy_json(config: &Config) -> Value {
    let retry = RetryPolicy::new(&config.retry);
    let idem = &config.idempotency;
    let settings = config_json(config);
    let mode = &settings["idempotency"]["mode"];
    let entry = |safety: RetrySafety, method: Option<&str>| -> Value {
        let (class, summary) = match safety {
            RetrySafety::Idempotent => ("idempotent", "retried on every configured condition"),
            _ => (
                "not idempotent",
                "retried only when the request provably never reached the upstream",
            ),
        };
        let key = method
            .filter(|m| idem.enabled && idem.required_methods.iter().any(|r| r == m))
            .map(|_| {
                json!({
                    "header": idem.header,
                    "mode": mode,
                    "required": idem.mode == IdempotencyMode::Enforce,
                    "paths": idem.path_prefixes,
                    "every_path": idem.path_prefixes.is_empty(),
                    "scope_headers": idem.scope_headers,
                    "keyed_retry": idem.retry_keyed_requests
                        .then(|| plan_json(&retry, RetrySafety::KeyedIdempotent)),
                })
            });
        json!({"class": class, "summary": summary, "retry": plan_json(&retry, safety), "key": key})
    };
    // Methods treated alike share an entry, as in `resetguard validate`'s lines.
    let mut groups: Vec<(Vec<String>, Value)> = Vec::new();
    let mut add = |label: String, e: Value| match groups.iter_mut().find(|(_, g)| *g == e) {
        Some((labels, _)) => labels.push(label),
        None => groups.push((vec![label], e)),
    };
    for method in methods_of_interest(config) {
        let safety = retry.safety_of_method(method.as_bytes());
        let e = entry(safety, Some(&method));
        add(method, e);
    }
    add(
        "any other method".to_string(),
        entry(RetrySafety::Unsafe, None),
    );
    let methods: Vec<Value> = groups
        .into_iter()
        .map(|(labels, mut e)| {
            e["methods"] = json!(labels);
            e
        })
        .collect();
    let keys = if idem.enabled {
        json!({
            "enabled": true,
            "mode": mode,
            "methods": idem.required_methods,
            "paths": idem.path_prefixes,
            "every_path": idem.path_prefixes.is_empty(),
            "header": idem.header,
            "scope_headers": idem.scope_headers,
            "when_full": settings["idempotency"]["when_full"],
            "unknown_outcome": settings["idempotency"]["unknown_outcome"],
            "retry_keyed_requests": idem.retry_keyed_requests,
        })
    } else {
        json!({"enabled": false})
    };
    let aborts = &config.client_abort;
    let log = match aborts.log_level {
        AbortLogLevel::Off => "no log line (still counted)",
        AbortLogLevel::Debug => {
            "one debug-level log line per client abort (hidden at Envoy's usual info level; \
             /logging?wasm=debug shows it), never a warning or error"
        }
        AbortLogLevel::Info => "one info-level log line per client abort, never a warning or error",
    };
    let filter_state = if aborts.filter_state {
        "published for access logs: wasm.resetguard_outcome (every stream that did not \
         complete), and for client aborts wasm.resetguard_code (499) and \
         wasm.resetguard_abort_phase"
    } else {
        "not published (client_abort.filter_state: false)"
    };
    let counters: Vec<&str> = [
        Counter::OutcomeClientAbort,
        Counter::ClientAbortBeforeRequestComplete,
        Counter::ClientAbortAwaitingUpstream,
        Counter::ClientAbortDuringResponse,
    ]
    .iter()
    .map(|c| c.name())
    .collect();
    json!({
        "methods": methods,
        "client_router_controls": if config.retry.trust_client_retry_headers { "kept" } else { "stripped" },
        "keys": keys,
        "aborts": {
            "log_level": settings["client_abort"]["log_level"],
            "log": log,
            "filter_state": aborts.filter_state,
            "access_log": filter_state,
            "counters": counters,
        },
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain_error(message: String) -> Value {
    json!({"ok": false, "error": message})
}

fn non_empty<'a>(request: &'a Value, key: &str) -> Option<&'a str> {
    request
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `resetguard explain` on a typed request, as data: the router headers the filter sets, the
/// client headers it strips, the key verdict, the local reply it answers with, and the CLI's text.
pub fn explain_json(name: &str, config_text: &str, request: &Value) -> Value {
    if let Some(message) = too_large(name, config_text.len()) {
        return explain_error(message);
    }
    let Some(method) = non_empty(request, "method") else {
        return explain_error("type a method (GET, POST, …)".to_string());
    };
    let Some(path) = non_empty(request, "path") else {
        return explain_error("type a path (/payments/42)".to_string());
    };
    let mut headers = Vec::new();
    let lines = request.get("headers").and_then(Value::as_str).unwrap_or("");
    for (i, line) in lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match explaining::parse_header(line) {
            Ok(h) => headers.push(h),
            Err(e) => return explain_error(format!("headers, line {}: {e}", i + 1)),
        }
    }
    let effective = match explaining::effective_text(
        name,
        config_text,
        non_empty(request, "override"),
        non_empty(request, "route"),
    ) {
        Ok(e) => e,
        Err(e) => return explain_error(e),
    };
    let req = Request::new(method, path, &headers);
    let sent: Vec<Value> = req
        .headers
        .iter()
        .map(|(n, v)| json!([text(n), text(v)]))
        .collect();
    let mut out = json!({
        "ok": true,
        "source": effective.source,
        "request": {"method": method, "path": path, "headers": sent, "body": !req.end_of_stream},
        "text": explaining::explain(&effective, &req),
    });
    let Some(config) = &effective.config else {
        out["disabled"] = json!(true);
        return out;
    };
    out["disabled"] = json!(false);
    let policy = Policy::new(config.clone());
    let d = decide(policy.as_ref(), &req.headers, req.end_of_stream);
    let local = d.local_reply().is_some();
    let (class, counter) = match d.safety {
        RetrySafety::Idempotent => ("idempotent", Counter::RequestsIdempotent),
        RetrySafety::KeyedIdempotent => ("keyed", Counter::RequestsKeyed),
        RetrySafety::Unsafe => ("not idempotent", Counter::RequestsNonIdempotent),
    };
    let mut counters = vec![counter.name()];
    let (router_headers, arming, note) = match &d.arming {
        _ if local => (
            vec![],
            "local_reply",
            "none used: the filter answers the request itself".to_string(),
        ),
        Arming::Headers(plan) => (
            plan.headers.iter().map(|(n, v)| json!([n, v])).collect(),
            "headers",
            "consumed by Envoy's router, never sent upstream".to_string(),
        ),
        Arming::ClientSteers => (
            vec![],
            "client_steers",
            "none: the client's own retry headers steer the router \
             (retry.trust_client_retry_headers)"
                .to_string(),
        ),
        Arming::Nothing => (
            vec![],
            "nothing",
            if config.retry.max_retries == 0 {
                "none: retry.max_retries is 0".to_string()
            } else {
                "none: no configured condition is safe for this request".to_string()
            },
        ),
    };
    let stripped: Vec<String> = d.stripped().iter().map(|h| text(h)).collect();
    let kept: Vec<String> = if d.client_retry_headers_trusted {
        d.client_retry_headers.iter().map(|h| text(h)).collect()
    } else {
        Vec::new()
    };
    let header = policy
        .idempotency
        .as_ref()
        .map(|i| i.config.header.clone())
        .unwrap_or_default();
    let mut local_reply = Value::Null;
    let key = match (&d.key, policy.idempotency.as_ref()) {
        (_, None) => json!({"verdict": "not_checked",
            "detail": "no `idempotency` section, or it is disabled"}),
        (KeyDecision::Exempt(why), Some(_)) => {
            let (reason, detail) = match why {
                Exemption::Disabled => ("disabled", "idempotency is off".to_string()),
                Exemption::Method => (
                    "method",
                    format!("{method} is not in idempotency.required_methods"),
                ),
                Exemption::Path => (
                    "path",
                    format!("{path} is under none of idempotency.path_prefixes"),
                ),
                Exemption::Grpc => (
                    "grpc",
                    "a gRPC call (content-type application/grpc)".to_string(),
                ),
            };
            json!({"verdict": "exempt", "reason": reason, "detail": detail})
        }
        (KeyDecision::Refused { reason, judgement }, Some(idem)) => {
            let (verdict, detail) = match reason {
                Refusal::Missing => ("missing", format!("required, {header} missing")),
                Refusal::Malformed(why) => {
                    ("malformed", format!("required, {header} malformed ({why})"))
                }
                Refusal::BodyTooLarge => (
                    "body_too_large",
                    format!(
                        "valid, but content-length exceeds idempotency.max_request_body_bytes ({})",
                        idem.config.max_request_body_bytes
                    ),
                ),
            };
            counters.extend(judgement.counters.iter().map(|c| c.name()));
            match &judgement.verdict {
                Verdict::Reject {
                    problem,
                    detail,
                    retry_after_s,
                    upstream_status,
                } => {
                    let body = problem.body(detail, *upstream_status);
                    local_reply = json!({
                        "status": problem.status(),
                        "content_type": "application/problem+json",
                        "retry_after_s": retry_after_s,
                        "type": problem.type_uri(),
                        "title": problem.title(),
                        "detail": detail,
                        "body": serde_json::from_slice::<Value>(&body)
                            .unwrap_or_else(|_| json!(text(&body))),
                    });
                }
                _ if idem.config.mode == IdempotencyMode::Report => {
                    local_reply = json!({
                        "status": null,
                        "report_mode": true,
                        "would_have": judgement.would_have,
                    });
                }
                _ => {}
            }
            json!({"verdict": verdict, "detail": detail})
        }
        (KeyDecision::Valid { key }, Some(idem)) => {
            let scope = d.binding(policy.as_ref()).map(|b| {
                json!({
                    "headers": b.scope_headers.iter()
                        .map(|(n, count)| json!({"name": n, "values": count}))
                        .collect::<Vec<_>>(),
                    "anonymous": b.scope_headers.iter().all(|(_, n)| *n == 0),
                    "authority": text(&b.authority),
                    "method": text(&b.method),
                    "path": text(&b.path),
                })
            });
            let full = match idem.config.when_full {
                WhenFull::Reject => "503",
                WhenFull::PassThrough => "passes the request through unprotected",
            };
            json!({
                "verdict": "valid",
                "key": text(key),
                "detail": format!("required and valid ({header}: {})", text(key)),
                "scope": scope,
                "store": format!(
                    "deduped through the shared store: a completed key replays its response \
                     (Idempotent-Replayed: true); the same key in flight gets 409, with another \
                     body 422; a full store {full}"
                ),
                "body_buffered": (!req.end_of_stream)
                    .then_some(idem.config.max_request_body_bytes),
            })
        }
    };
    out["retry"] = json!({"class": class});
    out["arming"] = json!(arming);
    out["router_headers"] = Value::Array(router_headers);
    out["router_headers_note"] = json!(note);
    out["stripped"] = json!(stripped);
    out["kept"] = json!(kept);
    out["key"] = key;
    out["local_reply"] = local_reply;
    out["counters"] = json!(counters);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(path: &str) -> &'static str {
        PRESETS
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no preset {path}"))
    }

    #[test]
    fn every_shipped_example_is_a_preset_and_valid() {
        for dir in ["config", "envoy", "istio", "envoy-gateway"] {
            assert!(
                PRESETS
                    .iter()
                    .any(|(p, _)| p.starts_with(&format!("examples/{dir}/"))),
                "no preset from examples/{dir}"
            );
        }
        for (path, text) in PRESETS {
            let v = validate_json(path, text.as_bytes());
            assert_eq!(v["status"], "ok", "{path}: {v:#}");
            assert!(!v["configs"].as_array().unwrap().is_empty(), "{path}");
            assert!(v["configs"][0]["policy"]["methods"].is_array(), "{path}");
        }
    }

    #[test]
    fn errors_have_lines_and_paths() {
        let v = validate_json(
            "bad.json",
            b"{\n  \"retry\": {\n    \"max_retries\": 11\n  },\n  \"retyr\": {}\n}\n",
        );
        assert_eq!(v["status"], "invalid");
        assert_eq!(v["exit_code"], 1);
        let f = &v["findings"];
        assert_eq!(f[0]["path"], "retry.max_retries");
        assert_eq!(f[0]["line"], 3);
        assert_eq!(f[1]["path"], "retyr");
        assert_eq!(f[1]["line"], 5);
    }

    #[test]
    fn yaml11_on_in_a_manifest_is_an_error_with_a_hint() {
        let text = preset("examples/istio/wasmplugin.yaml").replace("\"on\":", "on:");
        let v = validate_json("wasmplugin.yaml", text.as_bytes());
        assert_eq!(v["status"], "invalid");
        let f = v["findings"].as_array().unwrap();
        assert!(f.iter().any(|f| f["severity"] == "error"
            && f["path"] == "spec.pluginConfig.retry.true"
            && f["line"].is_u64()));
        assert!(f.iter().any(|f| f["severity"] == "hint"));
    }

    #[test]
    fn hostile_inputs_give_messages() {
        let big = vec![b'a'; MAX_INPUT_BYTES + 1];
        let v = validate_json("big", &big);
        assert_eq!(v["status"], "unusable");
        assert!(v["summary"]
            .as_str()
            .unwrap()
            .contains("more than the playground checks"));
        let deep = format!("{}x", "- ".repeat(50_000));
        let v = validate_json("deep", deep.as_bytes());
        assert_eq!(v["status"], "unusable");
        assert!(
            v["summary"]
                .as_str()
                .unwrap()
                .contains("nested deeper than"),
            "{v}"
        );
        assert_eq!(v["findings"][0]["line"], 1);
        let v = validate_json("junk", &[0xff, 0xfe, 0x00, 0x12]);
        assert!(v["summary"].as_str().unwrap().contains("not UTF-8"), "{v}");
        let v = validate_json("junk", b"\x00\x01\x02 {[: \x7f");
        assert_eq!(v["status"], "unusable", "{v}");
    }

    #[test]
    fn explain_a_keyless_post() {
        let request = json!({"method": "POST", "path": "/payments/1",
            "headers": "authorization: Bearer x\nx-envoy-retry-on: 5xx\n"});
        let v = explain_json(
            "idempotency.json",
            preset("examples/config/idempotency.json"),
            &request,
        );
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["key"]["verdict"], "missing");
        assert_eq!(v["local_reply"]["status"], 400);
        assert_eq!(v["stripped"], json!(["x-envoy-retry-on"]));
        assert_eq!(v["arming"], "local_reply");
    }

    #[test]
    fn explain_a_route() {
        let request = json!({"method": "PUT", "path": "/uploads/a", "route": "uploads"});
        let v = explain_json(
            "bootstrap.yaml",
            preset("examples/envoy/bootstrap.yaml"),
            &request,
        );
        assert_eq!(v["ok"], true, "{v}");
        let headers = v["router_headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!(["x-envoy-max-retries", "1"])),
            "{v}"
        );
        let request = json!({"method": "GET", "path": "/events/a", "route": "events"});
        let v = explain_json(
            "bootstrap.yaml",
            preset("examples/envoy/bootstrap.yaml"),
            &request,
        );
        assert_eq!(v["disabled"], true);
        let v = explain_json(
            "x.json",
            "{}",
            &json!({"method": "GET", "path": "/",
            "headers": "no colon"}),
        );
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn parse_error_lines() {
        let v = validate_json("x.yaml", b"a: 1\nb: [1,\n");
        assert_eq!(v["status"], "unusable");
        assert!(v["findings"][0]["line"].is_u64(), "{v}");
    }
}
