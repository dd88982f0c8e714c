//! Runs one scenario of the shared corpus (`scenarios/*.json`, format in `scenarios/README.md`)
//! on the mock host, for each host profile it applies to. Returns failures as text.

use crate::abi::{LogLevel, Pairs};
use crate::host::Host;
use crate::profiles::Profile;
use crate::request::{Exchange, Request};
use crate::router::UpstreamAction;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub enum Verdict {
    Passed,
    Failed(Vec<String>),
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn pairs(v: Option<&Value>) -> Pairs {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase().into_bytes(),
                        text(Some(v)).into_bytes(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn action(a: &Value) -> Result<UpstreamAction, String> {
    let int = |k: &str| a.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(match a.get("action").and_then(Value::as_str) {
        Some("respond") => UpstreamAction::Respond {
            status: a.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
            headers: pairs(a.get("headers")),
            body: text(a.get("body")).into_bytes(),
            delay_ms: int("delay_ms"),
        },
        Some("reset_before_headers") => UpstreamAction::ResetBeforeHeaders,
        Some("reset_mid_body") => UpstreamAction::ResetMidBody {
            status: a.get("status").and_then(Value::as_u64).unwrap_or(200) as u16,
            headers: pairs(a.get("headers")),
            body_prefix: text(a.get("body_prefix")).into_bytes(),
        },
        Some("refuse") => UpstreamAction::Refuse,
        Some("refused_stream") => UpstreamAction::RefusedStream,
        other => return Err(format!("unknown upstream action {other:?}")),
    })
}

fn request(r: &Value) -> Result<Request, String> {
    let method = r.get("method").and_then(Value::as_str).unwrap_or("GET");
    let path = r.get("path").and_then(Value::as_str).unwrap_or("/");
    let mut req = Request::new(method, path);
    req.headers.extend(pairs(r.get("headers")));
    req = req.body(text(r.get("body")).as_bytes());
    if let Some(plan) = r.get("upstream").and_then(Value::as_array) {
        req.upstream = plan.iter().map(action).collect::<Result<_, _>>()?;
    }
    if let Some(ms) = r.pointer("/client/abort_after_ms").and_then(Value::as_u64) {
        req = req.abort_after(ms);
    }
    Ok(req)
}

fn outcome_counters(host: &mut Host) -> BTreeMap<String, i64> {
    host.metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("resetguard.outcome."))
        .collect()
}

fn check(
    id: &str,
    expect: &Value,
    x: &Exchange,
    outcome: Option<String>,
    metrics: bool,
    fails: &mut Vec<String>,
) {
    let mut fail = |m: String| fails.push(format!("{id}: {m}"));
    if let Some(status) = expect.get("status") {
        let want = status.as_u64().map(|s| s as u16);
        if x.status != want {
            fail(format!(
                "status {:?}, expected {want:?} (body {:?})",
                x.status,
                String::from_utf8_lossy(&x.body)
            ));
        }
    }
    for (k, v) in expect
        .get("headers")
        .and_then(Value::as_object)
        .unwrap_or(&Map::new())
    {
        if x.header_str(k) != Some(text(Some(v))) {
            fail(format!("header {k} = {:?}, expected {v}", x.header_str(k)));
        }
    }
    for k in expect
        .get("absent_headers")
        .and_then(Value::as_array)
        .unwrap_or(&Vec::new())
    {
        let k = text(Some(k));
        if x.header(&k).is_some() {
            fail(format!("the client got header {k}"));
        }
        let leaked = k.starts_with("x-envoy-")
            && x.upstream
                .iter()
                .any(|u| crate::request::find(&u.headers, &k).is_some());
        if leaked {
            fail(format!("the upstream got header {k}"));
        }
    }
    if let Some(part) = expect.get("body_contains").and_then(Value::as_str) {
        if !String::from_utf8_lossy(&x.body).contains(part) {
            fail(format!(
                "body {:?} lacks {part:?}",
                String::from_utf8_lossy(&x.body)
            ));
        }
    }
    if let Some(n) = expect.get("upstream_attempts").and_then(Value::as_u64) {
        if u64::from(x.upstream_attempts()) != n {
            fail(format!(
                "upstream saw {} attempts, expected {n}",
                x.upstream_attempts()
            ));
        }
    }
    if let (Some(want), true) = (expect.get("outcome").and_then(Value::as_str), metrics) {
        if outcome.as_deref() != Some(want) {
            fail(format!("outcome {outcome:?}, expected {want}"));
        }
    }
}

/// Runs `scenario` on `profile`.
pub fn run(scenario: &Value, profile: Profile) -> Verdict {
    let config = match scenario.get("config") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let workers = scenario.get("workers").and_then(Value::as_u64).unwrap_or(1) as usize;
    let mut host = match Host::builder()
        .profile(profile)
        .workers(workers)
        .config(&config)
        .start()
    {
        Ok(h) => h,
        Err(e) => return Verdict::Failed(vec![e.to_string()]),
    };
    let mut fails = Vec::new();
    if let Some(rejected) = scenario.get("expect_config_rejected") {
        let path = text(rejected.get("path"));
        let errors = host.logs_at(LogLevel::Error);
        if host.configured() || !errors.iter().any(|l| l.contains(&format!("`{path}`"))) {
            fails.push(format!(
                "expected rejection naming `{path}`; configured={}, errors {errors:?}",
                host.configured()
            ));
        }
        return if fails.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed(fails)
        };
    }
    if !host.configured() {
        let errors = host.logs_at(LogLevel::Error);
        return Verdict::Failed(vec![format!("config rejected: {errors:?}")]);
    }
    let metrics = profile.caps().metrics;
    let mut worker = 0;
    for step in scenario
        .get("requests")
        .and_then(Value::as_array)
        .unwrap_or(&Vec::new())
    {
        let mut group: Vec<&Value> = match step.get("parallel").and_then(Value::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![step],
        };
        // Requests that start later in the real suite (`start_after_ms`) begin later here too.
        group.sort_by_key(|r| r.get("start_after_ms").and_then(Value::as_u64).unwrap_or(0));
        // Concurrent requests: every request phase runs (spread over the workers) before any
        // response, the interleaving that races shared state the hardest.
        let mut flights = Vec::new();
        for r in &group {
            let req = match request(r) {
                Ok(req) => req,
                Err(e) => return Verdict::Failed(vec![e]),
            };
            worker = (worker + 1) % workers;
            match host.vm(worker).begin(req) {
                Ok(f) => flights.push((worker, *r, f)),
                Err(e) => return Verdict::Failed(vec![e.to_string()]),
            }
        }
        for (w, r, flight) in flights {
            let before = outcome_counters(&mut host);
            let x = match host.vm(w).finish(flight) {
                Ok(x) => x,
                Err(e) => return Verdict::Failed(vec![e.to_string()]),
            };
            let after = outcome_counters(&mut host);
            let moved = after
                .iter()
                .find(|(k, v)| before.get(*k) != Some(v))
                .map(|(k, _)| k.trim_start_matches("resetguard.outcome.").to_string());
            let id = text(r.get("id"));
            check(
                &id,
                r.get("expect").unwrap_or(&Value::Null),
                &x,
                moved,
                metrics,
                &mut fails,
            );
        }
    }
    if metrics {
        for (k, v) in scenario
            .get("expect_metrics")
            .and_then(Value::as_object)
            .unwrap_or(&Map::new())
        {
            let got = host.metric(k).unwrap_or(0);
            if Some(got) != v.as_i64() {
                fails.push(format!("metric {k} = {got}, expected {v}"));
            }
        }
    }
    if let Some(level) = scenario
        .get("max_log_level")
        .and_then(Value::as_str)
        .and_then(LogLevel::parse)
    {
        for line in host.logs().iter().filter(|l| l.level > level) {
            fails.push(format!(
                "logged above {level:?}: {:?} {}",
                line.level, line.message
            ));
        }
    }
    if fails.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(fails)
    }
}

/// The profiles a scenario applies to (`hosts`, default all).
pub fn profiles(scenario: &Value) -> Vec<Profile> {
    match scenario.get("hosts").and_then(Value::as_array) {
        None => Profile::ALL.to_vec(),
        Some(list) => list
            .iter()
            .filter_map(|h| h.as_str().and_then(Profile::parse))
            .collect(),
    }
}
