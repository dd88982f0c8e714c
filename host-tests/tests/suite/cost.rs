//! The regression signal for the filter's per-request cost: wasm instructions (wasmtime fuel) and
//! host crossings on the main paths, checked against `bench/fuel-baseline.json`.
//!
//! Fuel is deterministic (same module, same requests, same count on any machine), so the ceiling
//! can be generous without hiding a real regression: a path fails at 1.5x its recorded fuel, or
//! with more than max(2, 25%) extra host crossings (each one costs microseconds in Envoy).
//! Re-record after an intended change with
//! `RESETGUARD_RECORD_COST=1 cargo test -p host-tests --test suite cost`.

use host_tests::fuel::{self, Cost};
use host_tests::{Exchange, Host, Request, UpstreamAction};
use serde_json::{json, Value};
use std::path::PathBuf;

const ENFORCE: &str = r#"{"idempotency": {"mode": "enforce"}}"#;
/// A store whose shards are well filled (about 150 of 200 entries each after the warm-up; keys land
/// on shards at random, so room is left for the fullest): the keyed cost
/// grows with a shard's index, which every claim reads, decodes, re-encodes and writes back.
const ENFORCE_SMALL_SHARDS: &str =
    r#"{"idempotency": {"mode": "enforce", "max_entries": 800, "shards": 4}}"#;
const FUEL_CEILING: f64 = 1.5;
/// Requests of the same kind run before the measured one: steady state, not first-use setup.
const WARM_UP: usize = 2;
const FULL_SHARDS_WARM_UP: usize = 600;

fn baseline_path() -> PathBuf {
    host_tests::wasm::workspace_root().join("bench/fuel-baseline.json")
}

/// A browser-like GET, with the headers a load generator or client typically sends.
fn get(path: &str) -> Request {
    Request::get(path)
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
}

fn post(key: Option<&str>) -> Request {
    let request = Request::post("/orders", r#"{"amount": 10}"#)
        .header("user-agent", "bench/1.0")
        .header("content-type", "application/json")
        .header("content-length", "14");
    match key {
        Some(key) => request.header("idempotency-key", key),
        None => request,
    }
}

fn slow_upstream() -> Vec<UpstreamAction> {
    vec![UpstreamAction::Respond {
        status: 200,
        headers: vec![],
        body: b"late".to_vec(),
        delay_ms: 200,
    }]
}

/// One path: its config, the nth request of its kind, and what that request must have done.
struct Path {
    name: &'static str,
    config: &'static str,
    warm_up: usize,
    request: fn(usize) -> Request,
    check: fn(&Exchange),
}

fn answered_by_upstream(x: &Exchange) {
    assert_eq!(x.status, Some(200), "{x:?}");
    assert_eq!(x.upstream_attempts(), 1);
    assert!(!x.filter_local_reply);
}

const PATHS: [Path; 6] = [
    Path {
        name: "get_pass_through",
        config: "",
        warm_up: WARM_UP,
        request: |_| get("/items/1"),
        check: answered_by_upstream,
    },
    Path {
        name: "post_unkeyed",
        config: "",
        warm_up: WARM_UP,
        request: |_| post(None),
        check: answered_by_upstream,
    },
    Path {
        name: "post_keyed_first",
        config: ENFORCE,
        warm_up: WARM_UP,
        request: |n| post(Some(&format!("cost-key-{n}"))),
        check: answered_by_upstream,
    },
    Path {
        name: "post_keyed_replay",
        config: ENFORCE,
        warm_up: WARM_UP,
        request: |_| post(Some("cost-key-replayed")),
        check: |x| {
            assert_eq!(x.status, Some(200), "{x:?}");
            assert!(x.filter_local_reply, "not a replay: {x:?}");
            assert_eq!(x.upstream_attempts(), 0);
        },
    },
    Path {
        name: "post_keyed_first_full_shards",
        config: ENFORCE_SMALL_SHARDS,
        warm_up: FULL_SHARDS_WARM_UP,
        request: |n| post(Some(&format!("cost-key-{n}"))),
        check: answered_by_upstream,
    },
    Path {
        name: "client_abort",
        config: "",
        warm_up: WARM_UP,
        request: |_| get("/slow").upstream(slow_upstream()).abort_after(50),
        check: |x| assert!(x.client_aborted, "{x:?}"),
    },
];

fn host_on(module: &wasmtime::Module, config: &str) -> Host {
    let host = Host::builder()
        .config(config)
        .start_module(module)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.configured(), "{:?}", host.logs());
    host
}

/// Runs the path's warm-up requests, then measures the next one of its kind.
fn measure(module: &wasmtime::Module, path: &Path) -> Cost {
    let mut host = host_on(module, path.config);
    for n in 0..path.warm_up {
        host.exchange((path.request)(n));
    }
    let (x, cost) = fuel::measure(host.vm(0), (path.request)(path.warm_up))
        .unwrap_or_else(|e| panic!("{}: {e}", path.name));
    (path.check)(&x);
    cost
}

fn record(cost: &Cost) -> Value {
    json!({
        "fuel": cost.fuel,
        "host_calls": cost.host_calls(),
        "allocations": cost.allocations(),
        "calls": cost.calls,
    })
}

/// The empty filter's cost for a GET (the SDK's floor), if its .wasm was built next to ours.
fn noop_floor() -> Option<Value> {
    let path = host_tests::wasm::filter_path().with_file_name("noop_filter.wasm");
    let module = fuel::metered_module(&path).ok()?;
    Some(record(&measure(&module, &PATHS[0])))
}

#[test]
fn per_request_cost_stays_under_the_recorded_ceiling() {
    let module = fuel::metered_filter().unwrap_or_else(|e| panic!("{e}"));
    let measured: Vec<(&str, Cost)> = PATHS.iter().map(|p| (p.name, measure(module, p))).collect();
    for (name, cost) in &measured {
        eprintln!(
            "{name}: fuel {} host calls {} allocations {} {:?}",
            cost.fuel,
            cost.host_calls(),
            cost.allocations(),
            cost.calls
        );
    }
    if std::env::var_os("RESETGUARD_RECORD_COST").is_some() {
        let paths: serde_json::Map<String, Value> = measured
            .iter()
            .map(|(name, cost)| (name.to_string(), record(cost)))
            .collect();
        let out = json!({
            "about": "Per-request cost of the filter in the mock host (host-tests/tests/suite/cost.rs): \
                      fuel = wasm instructions, host_calls = imports called, allocations = buffers \
                      the host allocated in the module. Re-record with \
                      `RESETGUARD_RECORD_COST=1 cargo test -p host-tests --test suite cost`.",
            "wasm_bytes": std::fs::metadata(host_tests::wasm::filter_path()).map(|m| m.len()).ok(),
            "paths": paths,
            "noop_floor_get": noop_floor(),
        });
        let text = serde_json::to_string_pretty(&out).unwrap_or_default() + "\n";
        std::fs::write(baseline_path(), text).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let text = std::fs::read_to_string(baseline_path())
        .unwrap_or_else(|e| panic!("{}: {e}", baseline_path().display()));
    let baseline: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for (name, cost) in &measured {
        let Some(recorded) = baseline["paths"].get(*name) else {
            failures.push(format!("{name}: not in the baseline (re-record it)"));
            continue;
        };
        let fuel = recorded["fuel"].as_u64().unwrap_or(0);
        if cost.fuel as f64 > fuel as f64 * FUEL_CEILING {
            failures.push(format!(
                "{name}: fuel {} > {FUEL_CEILING} x {fuel}",
                cost.fuel
            ));
        }
        let crossings = recorded["host_calls"].as_u64().unwrap_or(0)
            + recorded["allocations"].as_u64().unwrap_or(0);
        let allowed = crossings + (crossings / 4).max(2);
        let now = cost.host_calls() + cost.allocations();
        if now > allowed {
            failures.push(format!(
                "{name}: {now} host crossings > {allowed} (recorded {crossings}: {})",
                recorded["calls"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "per-request cost regressed (if intended, re-record: \
         RESETGUARD_RECORD_COST=1 cargo test -p host-tests --test suite cost):\n{}",
        failures.join("\n")
    );
}
