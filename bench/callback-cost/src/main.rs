//! Where the filter's per-request cost goes, callback by callback, in the mock host: the wasm
//! instructions (wasmtime fuel) each proxy-wasm callback executes and the host calls it makes, for
//! the requests bench/bench.py sends (as Envoy hands them to the filter: wrk's headers plus the
//! `x-forwarded-proto` / `x-request-id` Envoy adds before the filter chain).
//!
//! Deterministic, like bench/fuel-baseline.json (host-tests/tests/suite/cost.rs): the same module
//! gives the same counts on any machine. bench/bench.py renders the result (bench/callback-cost.json)
//! next to what each kind of host call costs in Envoy (its probe filters). Re-record with
//!
//!     cargo run --manifest-path bench/callback-cost/Cargo.toml -- bench/callback-cost.json
//!
//! (`RESETGUARD_WASM` picks another build of the filter; the empty filter is read next to it.)
//!
//! A wasmtime call hook sees every entry into the module: each top-level entry (an export the
//! host calls) gets the fuel and the imports counted between its entry and its return. Entries
//! are named after the callbacks the mock host recorded for the stream, in order
//! (`context_create`, the stream callbacks, `done`, `delete`); a callout's answer and a root
//! context's tick are recognised by the host's state at entry.

use host_tests::etcd::Etcd;
use host_tests::fuel;
use host_tests::state::VmState;
use host_tests::{Exchange, Host, Request, Vm};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::{CallHook, StoreContextMut};

const ALLOCATE: &str = "proxy_on_memory_allocate";

/// The bench's keyed listener (bench/bench.py KEYED_CONFIG).
const KEYED: &str = r#"{"idempotency": {"mode": "enforce", "max_entries": 200000, "shards": 2048, "ttl_seconds": 30}}"#;
const KEYED_ETCD: &str = r#"{"idempotency": {"mode": "enforce", "ttl_seconds": 30,
    "store": {"backend": "etcd", "cluster": "etcd", "timeout_ms": 300}}}"#;

#[derive(Clone, Debug, Default)]
struct Entry {
    context: u32,
    callout: bool,
    fuel_at_entry: u64,
    fuel: u64,
    calls_at_entry: BTreeMap<&'static str, u64>,
    calls: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
struct Recorder {
    depth: u32,
    entries: Vec<Entry>,
}

fn hook(rec: &Arc<Mutex<Recorder>>, ctx: StoreContextMut<'_, VmState>, event: CallHook) {
    let Ok(mut r) = rec.lock() else { return };
    match event {
        CallHook::CallingWasm => {
            if r.depth == 0 {
                let fuel = ctx.get_fuel().unwrap_or(0);
                let state = ctx.data();
                r.entries.push(Entry {
                    context: state.current,
                    callout: state.callout_reply.is_some(),
                    fuel_at_entry: fuel,
                    calls_at_entry: state.calls.clone(),
                    ..Entry::default()
                });
            }
            r.depth += 1;
        }
        CallHook::ReturningFromWasm => {
            r.depth = r.depth.saturating_sub(1);
            if r.depth == 0 {
                let fuel = ctx.get_fuel().unwrap_or(0);
                let calls = ctx.data().calls.clone();
                if let Some(e) = r.entries.last_mut() {
                    e.fuel = e.fuel_at_entry.saturating_sub(fuel);
                    e.calls = calls
                        .iter()
                        .map(|(k, n)| (*k, n - e.calls_at_entry.get(k).copied().unwrap_or(0)))
                        .filter(|(_, n)| *n > 0)
                        .collect();
                }
            }
        }
        CallHook::CallingHost | CallHook::ReturningFromHost => {}
    }
}

fn install(vm: &mut Vm) -> Arc<Mutex<Recorder>> {
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let r = Arc::clone(&rec);
    vm.store.call_hook(move |ctx, event| {
        hook(&r, ctx, event);
        Ok(())
    });
    rec
}

fn take(rec: &Arc<Mutex<Recorder>>) -> Vec<Entry> {
    std::mem::take(&mut rec.lock().expect("recorder").entries)
}

fn row(name: &str, e: &Entry) -> Value {
    let host_calls: u64 = e
        .calls
        .iter()
        .filter(|(k, _)| **k != ALLOCATE)
        .map(|(_, n)| n)
        .sum();
    let calls: Map<String, Value> = e
        .calls
        .iter()
        .filter(|(k, _)| **k != ALLOCATE)
        .map(|(k, n)| (k.trim_start_matches("proxy_").to_string(), json!(n)))
        .collect();
    json!({
        "callback": name,
        "fuel": e.fuel,
        "host_calls": host_calls,
        "allocations": e.calls.get(ALLOCATE).copied().unwrap_or(0),
        "calls": calls,
    })
}

/// Names the entries of one measured request: the stream's own (in the order the mock host made
/// them), its callouts' answers, and of the root context's only the tick that sent the stream's
/// settlement (the first root tick after the stream that made a callout; it also flushes the
/// counters) and that callout's answer: the root's other ticks (idle, lease grants) are not the
/// request's.
fn label(entries: &[Entry], x: &Exchange, root: u32, settles: bool) -> Vec<Value> {
    let mut stream_names: Vec<String> = vec!["context_create".into()];
    stream_names.extend(x.callbacks.iter().map(|c| c.name.to_string()));
    stream_names.extend(["done".to_string(), "delete".to_string()]);
    let mut names = stream_names.into_iter();
    let mut rows = Vec::new();
    // 0: before the settlement's tick, 1: its callout in flight, 2: answered.
    let mut settlement = 0;
    for e in entries {
        let name = if e.context == root {
            let sends = e.calls.contains_key("proxy_http_call");
            match (settlement, e.callout) {
                (0, false) if sends && settles => {
                    settlement = 1;
                    "root: tick (sends the settlement)".to_string()
                }
                (1, true) => {
                    settlement = 2;
                    "root: http_call_response (settlement answered)".to_string()
                }
                _ => continue,
            }
        } else if e.context != x.context_id {
            format!("context {}", e.context)
        } else if e.callout {
            "http_call_response".to_string()
        } else {
            names.next().unwrap_or_else(|| "unexpected entry".into())
        };
        rows.push(row(&name, e));
    }
    let left: Vec<String> = names.collect();
    assert!(
        left.is_empty(),
        "callbacks without an entry: {left:?} ({:?})",
        x.callbacks
    );
    rows
}

fn total(rows: &[Value]) -> Value {
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    json!({"fuel": sum("fuel"), "host_calls": sum("host_calls"), "allocations": sum("allocations")})
}

/// The headers Envoy hands the filter for a wrk request: wrk's, plus what the connection
/// manager adds before the filter chain.
fn envoy_request(method: &str, n: usize) -> Request {
    let r = Request::new(method, "/bench")
        .header("x-forwarded-proto", "http")
        .header(
            "x-request-id",
            &format!("1b4e28ba-2fa1-11d2-883f-0016d3cc{n:04}"),
        );
    if method == "POST" {
        r.header("content-type", "application/json")
            .header("content-length", "14")
            .body(br#"{"amount": 10}"#)
    } else {
        r
    }
}

fn keyed(n: usize, key: Option<&str>) -> Request {
    let key = key.map_or_else(|| format!("bench-{n}"), str::to_string);
    envoy_request("POST", n).header("idempotency-key", &key)
}

struct Case {
    name: &'static str,
    module: PathBuf,
    config: &'static str,
    etcd: bool,
    /// The stream hands the root context a settlement to write to etcd.
    settles: bool,
    request: fn(usize) -> Request,
    /// What the measured request must have been.
    check: fn(&Exchange) -> bool,
}

fn upstream_answered(x: &Exchange) -> bool {
    x.status == Some(200) && x.upstream_attempts() == 1 && !x.filter_local_reply
}

fn replayed(x: &Exchange) -> bool {
    x.status == Some(200) && x.filter_local_reply && x.upstream_attempts() == 0
}

fn measure(case: &Case) -> Value {
    let module = fuel::metered_module(&case.module).unwrap_or_else(|e| panic!("{e}"));
    let etcd = Etcd::new();
    let mut builder = Host::builder().config(case.config);
    if case.etcd {
        builder = builder.etcd("etcd", &etcd.client("bench"));
    }
    let mut host = builder
        .start_module(&module)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.configured(), "{}: {:?}", case.name, host.logs());
    // Leases granted at configure, settlements of the warm-up: everything done before measuring.
    let settle = |host: &mut Host| {
        for _ in 0..4 {
            host.advance(60).unwrap_or_else(|e| panic!("{e}"));
        }
    };
    settle(&mut host);
    for n in 0..3 {
        host.exchange((case.request)(n));
        settle(&mut host);
    }
    host.flush_ticks();
    let root = host.vm(0).root_id;
    let rec = install(host.vm(0));
    let x = host.exchange((case.request)(3));
    assert!((case.check)(&x), "{}: {x:?}", case.name);
    if case.etcd {
        // The root context sends the stream's settlement on its next 50 ms tick.
        for _ in 0..30 {
            host.advance(10).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let rows = label(&take(&rec), &x, root, case.settles);
    // The counters a request left are flushed on the root's 250 ms tick (once per 250 ms, not
    // per request): measured apart.
    host.flush_ticks();
    let flush: Vec<Value> = take(&rec)
        .iter()
        .map(|e| row("root: tick (counter flush)", e))
        .collect();
    json!({"total": total(&rows), "callbacks": rows, "flush_tick": flush.first()})
}

fn main() {
    let out = std::env::args().nth(1).map(PathBuf::from);
    let wasm = host_tests::wasm::filter_path();
    let noop = wasm.with_file_name("noop_filter.wasm");
    let cases = [
        Case {
            name: "empty filter (B), GET",
            module: noop.clone(),
            config: "",
            etcd: false,
            settles: false,
            request: |n| envoy_request("GET", n),
            check: upstream_answered,
        },
        Case {
            name: "GET (defaults)",
            module: wasm.clone(),
            config: "",
            etcd: false,
            settles: false,
            request: |n| envoy_request("GET", n),
            check: upstream_answered,
        },
        Case {
            name: "unkeyed POST (defaults)",
            module: wasm.clone(),
            config: "",
            etcd: false,
            settles: false,
            request: |n| envoy_request("POST", n),
            check: upstream_answered,
        },
        Case {
            name: "keyed POST, first execution (local store)",
            module: wasm.clone(),
            config: KEYED,
            etcd: false,
            settles: false,
            request: |n| keyed(n, None),
            check: upstream_answered,
        },
        Case {
            name: "keyed POST, replay (local store)",
            module: wasm.clone(),
            config: KEYED,
            etcd: false,
            settles: false,
            request: |n| keyed(n, Some("bench-replay")),
            check: replayed,
        },
        Case {
            name: "keyed POST, first execution (etcd)",
            module: wasm.clone(),
            config: KEYED_ETCD,
            etcd: true,
            settles: true,
            request: |n| keyed(n, None),
            check: upstream_answered,
        },
        Case {
            name: "keyed POST, replay (etcd)",
            module: wasm.clone(),
            config: KEYED_ETCD,
            etcd: true,
            settles: false,
            request: |n| keyed(n, Some("bench-replay")),
            check: replayed,
        },
    ];
    let mut paths = Map::new();
    for case in &cases {
        let v = measure(case);
        eprintln!("{}: {}", case.name, v["total"]);
        paths.insert(case.name.to_string(), v);
    }
    let result = json!({
        "about": "Per-callback cost in the mock host (bench/callback-cost): fuel = wasm instructions \
                  each callback executed, host_calls = imports it called, allocations = buffers the \
                  host allocated in the module (each one more entry into the module). Re-record with \
                  `cargo run --manifest-path bench/callback-cost/Cargo.toml -- bench/callback-cost.json`.",
        "wasm_bytes": std::fs::metadata(&wasm).map(|m| m.len()).ok(),
        "paths": paths,
    });
    let text = serde_json::to_string_pretty(&result).unwrap_or_default() + "\n";
    match out {
        Some(path) => write(&path, &text),
        None => print!("{text}"),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}
