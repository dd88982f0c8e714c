//! The mock host's etcd model (`host_tests::etcd`): the same request/answer cases the real etcd
//! passes in `envoy/tests/test_etcd_gateway.py` (`host-tests/etcd/gateway_cases.json`), every
//! fault, lease expiry on the host clock, and two Envoy processes (two `Host`s) sharing one etcd,
//! driven through `proxy_http_call` by a hand-written module.

use crate::wat::{bytes, module, pairs, IMPORTS};
use host_tests::callout::{REFUSED_BODY, RESET_BODY, TIMEOUT_BODY};
use host_tests::etcd::{
    b64, wire, Etcd, EtcdConfig, Fault, Injection, Scope, MAX_REQUEST_BYTES, QUORUM_TIMEOUT_MS,
    TIMED_OUT,
};
use host_tests::Host;
use serde_json::{json, Value};
use std::collections::BTreeMap;

// -- the shared cases -----------------------------------------------------------------------------

fn cases() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/etcd/gateway_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Saved variables and the case's baseline revision (`envoy/harness/etcd_cases.py`'s Context).
#[derive(Default)]
struct Ctx {
    vars: BTreeMap<String, Value>,
    base: i64,
}

fn render(t: &Value, ctx: &Ctx) -> Value {
    match t {
        Value::Object(m) if m.len() == 1 && m.contains_key("$b64") => {
            b64(m["$b64"].as_str().unwrap().as_bytes()).into()
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$b64_repeat") => {
            let text = m["$b64_repeat"][0].as_str().unwrap();
            let n = m["$b64_repeat"][1].as_u64().unwrap() as usize;
            b64(text.repeat(n).as_bytes()).into()
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("$var") => {
            ctx.vars[m["$var"].as_str().unwrap()].clone()
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), render(v, ctx))).collect())
        }
        Value::Array(items) => items.iter().map(|v| render(v, ctx)).collect(),
        other => other.clone(),
    }
}

fn request_of(step: &Value, ctx: &Ctx) -> (String, String, Vec<u8>) {
    let method = step
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST")
        .to_string();
    let body = if let Some(raw) = step.get("raw") {
        raw.as_str().unwrap().as_bytes().to_vec()
    } else if let Some(b) = step.get("body") {
        serde_json::to_vec(&render(b, ctx)).unwrap()
    } else {
        Vec::new()
    };
    (method, step["post"].as_str().unwrap().to_string(), body)
}

fn is_int64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        let digits = s.strip_prefix('-').unwrap_or(s);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

fn matches(p: &Value, a: &Value, ctx: &Ctx, at: &str, out: &mut Vec<String>) {
    match p {
        Value::String(s) if s == "$any" => {}
        Value::String(s) if s == "$int64" => {
            if !is_int64(a) {
                out.push(format!("{at}: {a} is not an int64 string"));
            }
        }
        Value::String(s) if s == "$string" => {
            if !a.is_string() {
                out.push(format!("{at}: {a} is not a string"));
            }
        }
        Value::Object(m) if m.len() == 1 && m.keys().next().unwrap().starts_with('$') => {
            let (op, arg) = m.iter().next().unwrap();
            match op.as_str() {
                "$header" => {
                    let Some(h) = a.as_object() else {
                        return out.push(format!("{at}: expected a header, got {a}"));
                    };
                    let mut keys: Vec<&str> = h.keys().map(String::as_str).collect();
                    keys.sort();
                    if keys != ["cluster_id", "member_id", "raft_term", "revision"] {
                        out.push(format!("{at}: header keys {keys:?}"));
                    }
                    for v in h.values() {
                        if !is_int64(v) {
                            out.push(format!("{at}: header value {v} is not an int64 string"));
                        }
                    }
                    if let Some(n) = arg.as_i64() {
                        let want = (ctx.base + n).to_string();
                        if h.get("revision").and_then(Value::as_str) != Some(&want) {
                            out.push(format!("{at}.revision: {:?} != {want}", h.get("revision")));
                        }
                    }
                }
                "$rev" => {
                    let want = (ctx.base + arg.as_i64().unwrap()).to_string();
                    if a.as_str() != Some(&want) {
                        out.push(format!("{at}: {a} != revision {want}"));
                    }
                }
                "$b64" => {
                    let want = b64(arg.as_str().unwrap().as_bytes());
                    if a.as_str() != Some(&want) {
                        out.push(format!("{at}: {a} != base64 of {arg}"));
                    }
                }
                "$var" => {
                    let want = ctx.vars.get(arg.as_str().unwrap());
                    if want != Some(a) {
                        out.push(format!("{at}: {a} != saved {arg} {want:?}"));
                    }
                }
                "$between" => {
                    let (lo, hi) = (arg[0].as_i64().unwrap(), arg[1].as_i64().unwrap());
                    let v = a.as_str().and_then(|s| s.parse::<i64>().ok());
                    if !v.is_some_and(|v| (lo..=hi).contains(&v)) {
                        out.push(format!("{at}: {a} not from {lo} to {hi}"));
                    }
                }
                other => out.push(format!("{at}: unknown pattern {other}")),
            }
        }
        Value::Object(pm) => {
            let Some(am) = a.as_object() else {
                return out.push(format!("{at}: expected an object, got {a}"));
            };
            let (mut pk, mut ak): (Vec<&String>, Vec<&String>) =
                (pm.keys().collect(), am.keys().collect());
            pk.sort();
            ak.sort();
            if pk != ak {
                out.push(format!("{at}: keys {ak:?} != expected {pk:?}"));
            }
            for (k, v) in pm {
                if let Some(av) = am.get(k) {
                    matches(v, av, ctx, &format!("{at}.{k}"), out);
                }
            }
        }
        Value::Array(pi) => match a.as_array() {
            Some(ai) if ai.len() == pi.len() => {
                for (i, (p, a)) in pi.iter().zip(ai).enumerate() {
                    matches(p, a, ctx, &format!("{at}[{i}]"), out);
                }
            }
            _ => out.push(format!("{at}: expected {} items, got {a}", pi.len())),
        },
        scalar => {
            if scalar != a {
                out.push(format!("{at}: {a} != {scalar}"));
            }
        }
    }
}

fn dotted<'a>(mut v: &'a Value, path: &str) -> Option<&'a Value> {
    for part in path.split('.') {
        v = match part.parse::<usize>() {
            Ok(i) => v.get(i)?,
            Err(_) => v.get(part)?,
        };
    }
    Some(v)
}

fn check(step: &Value, status: u16, raw: &[u8], ctx: &mut Ctx) -> Vec<String> {
    let mut out = Vec::new();
    let label = format!(
        "{} {}",
        step.get("method").and_then(Value::as_str).unwrap_or("POST"),
        step["post"].as_str().unwrap()
    );
    let text = String::from_utf8_lossy(raw);
    if u64::from(status) != step["status"].as_u64().unwrap() {
        out.push(format!(
            "{label}: status {status} != {}: {}",
            step["status"],
            &text[..text.len().min(300)]
        ));
    }
    if let Some(want) = step.get("text").and_then(Value::as_str) {
        if text != want {
            out.push(format!("{label}: body {text:?} != {want:?}"));
        }
    }
    if let Some(end) = step.get("ends_with").and_then(Value::as_str) {
        if !text.ends_with(end) {
            out.push(format!("{label}: body does not end with {end:?}"));
        }
    }
    if let Some(pattern) = step.get("reply") {
        let Ok(body) = serde_json::from_slice::<Value>(raw) else {
            out.push(format!("{label}: not JSON: {text}"));
            return out;
        };
        let mut found = Vec::new();
        matches(pattern, &body, ctx, "$", &mut found);
        out.extend(found.into_iter().map(|m| format!("{label}: {m}")));
        if let Some(save) = step.get("save").and_then(Value::as_object) {
            for (name, path) in save {
                match dotted(&body, path.as_str().unwrap()) {
                    Some(v) => {
                        ctx.vars.insert(name.clone(), v.clone());
                    }
                    None => out.push(format!("{label}: cannot save {name} from {path}")),
                }
            }
        }
    }
    out
}

fn baseline(etcd: &Etcd) -> i64 {
    let r = etcd.post("/v3/kv/range", &json!({"key": b64(b"baseline")}));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs steps through the model's direct API; `delays` collects each answer's delay.
fn run_steps(
    etcd: &Etcd,
    steps: &Value,
    ctx: &mut Ctx,
    delays: &mut Vec<Option<u64>>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for step in steps.as_array().unwrap() {
        if let Some(ms) = step.get("sleep_ms").and_then(Value::as_u64) {
            etcd.advance(ms);
            continue;
        }
        let (method, path, body) = request_of(step, ctx);
        let now = etcd.now_ns();
        let reply = etcd.dispatch(now, &method, &path, &body, 0);
        delays.push(reply.after_ms);
        failures.extend(check(step, reply.status, &reply.body, ctx));
    }
    failures
}

#[test]
fn the_model_answers_every_gateway_case_as_the_real_etcd_did() {
    let all = cases();
    // One cluster for every case, as the real test runs them.
    let etcd = Etcd::new();
    let mut failures = Vec::new();
    let names: Vec<&str> = all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    for case in all["cases"].as_array().unwrap() {
        let mut ctx = Ctx {
            base: baseline(&etcd),
            ..Ctx::default()
        };
        let found = run_steps(&etcd, &case["steps"], &mut ctx, &mut Vec::new());
        failures.extend(found.into_iter().map(|f| format!("[{}] {f}", case["name"])));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_model_loses_its_quorum_as_the_real_three_member_cluster_did() {
    let all = cases();
    let section = &all["quorum_lost"];
    let etcd = Etcd::new();
    let mut ctx = Ctx {
        base: baseline(&etcd),
        ..Ctx::default()
    };
    let mut failures = run_steps(&etcd, &section["setup"], &mut ctx, &mut Vec::new());
    let timeout = section["quorum_timeout_ms"].as_u64().unwrap();
    assert_eq!(timeout, QUORUM_TIMEOUT_MS);
    let mut phase = |name: &str, etcd: &Etcd, ctx: &mut Ctx| {
        let steps = &section[name];
        let mut delays = Vec::new();
        failures.extend(run_steps(etcd, steps, ctx, &mut delays));
        for (step, delay) in steps.as_array().unwrap().iter().zip(delays) {
            let want = if step["delayed"].as_bool().unwrap() {
                timeout
            } else {
                1
            };
            if delay != Some(want) {
                failures.push(format!(
                    "{name} {}: after {delay:?} ms, not {want}",
                    step["post"]
                ));
            }
        }
    };
    let stale = etcd.fail(Fault::QuorumLost);
    phase("leader_stale", &etcd, &mut ctx);
    assert_eq!(etcd.held_writes(), 2, "the txn and the lease grant");
    // The old leader steps down: no leader from now on, the held writes stay held.
    let no_leader = etcd.fail(Fault::NoLeader);
    etcd.heal(stale);
    assert_eq!(etcd.held_writes(), 2);
    phase("no_leader", &etcd, &mut ctx);
    assert!(etcd.get(b"q/stale").is_none());
    // Time passes without a leader; leases do not expire meanwhile.
    etcd.advance(20_000);
    etcd.heal(no_leader);
    assert_eq!(etcd.held_writes(), 0);
    failures.extend(run_steps(
        &etcd,
        &section["after"],
        &mut ctx,
        &mut Vec::new(),
    ));
    // Counted: the requests each fault changed the answer of (not the serializable reads,
    // keep-alives and time-to-live a stale leader still answers).
    assert_eq!(etcd.hits(stale), 3);
    assert_eq!(etcd.hits(no_leader), 7);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// -- direct API: what the filter's failure paths need ---------------------------------------------

fn claim(etcd: &Etcd, key: &[u8], value: &[u8], lease: Option<&str>) -> Value {
    let mut put = json!({"key": b64(key), "value": b64(value)});
    if let Some(l) = lease {
        put["lease"] = l.into();
    }
    let r = etcd.post(
        "/v3/kv/txn",
        &json!({
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": b64(key)}}],
        }),
    );
    r.json().unwrap_or(Value::Null)
}

fn grant(etcd: &Etcd, ttl: i64) -> String {
    etcd.post("/v3/lease/grant", &json!({ "TTL": ttl }))
        .json()
        .unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn lease_ids_and_revisions_are_int64_strings_beyond_a_doubles_precision() {
    let etcd = Etcd::new();
    let id = grant(&etcd, 30);
    assert!(id.parse::<i64>().unwrap() > 1 << 53, "{id}");
    assert_eq!(claim(&etcd, b"k", b"v", Some(&id))["succeeded"], true);
    let kv = etcd.get(b"k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(kv.lease.to_string(), id);
    let lost = claim(&etcd, b"k", b"w", None);
    assert!(lost.get("succeeded").is_none(), "{lost}");
    assert_eq!(
        lost["responses"][0]["response_range"]["kvs"][0]["lease"],
        id
    );
    let leases = etcd.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].ttl, leases[0].keys.clone()),
        (30, vec![b"k".to_vec()])
    );
}

#[test]
fn the_request_limit_follows_the_member_id_like_etcds() {
    // The member ID's low 16 bits size the raft request ID, so the value that still fits moves
    // by a byte or two with it; checked at a small limit (the real one is a gateway case and
    // wire.rs's unit test holds the measured boundary).
    let limit = 4096;
    for member_id in [
        EtcdConfig::default().member_id,
        5_099_357_604_517_118_029,
        0x1_0001,
    ] {
        let etcd = Etcd::with_config(EtcdConfig {
            member_id,
            max_request_bytes: limit,
            ..EtcdConfig::default()
        });
        let put = |n: usize| wire::bytes_field(1, 3) + wire::bytes_field(2, n);
        let max = (limit - 64..limit)
            .filter(|n| wire::raft_request_size(member_id, put(*n)) <= limit)
            .max()
            .unwrap();
        let at = |n: usize| {
            etcd.post(
                "/v3/kv/put",
                &json!({"key": b64(b"big"), "value": b64(&vec![b'x'; n])}),
            )
        };
        assert_eq!(at(max).status, 200, "member {member_id:#x}");
        let over = at(max + 1);
        assert_eq!(over.status, 400);
        assert_eq!(
            over.json().unwrap()["error"],
            "etcdserver: request is too large"
        );
        // Beyond gRPC's limit (the request limit + 512 KiB) another code and status.
        let grpc = at(limit + 512 * 1024 + 1);
        assert_eq!(grpc.status, 429);
        assert_eq!(grpc.json().unwrap()["code"], 8);
    }
    // Measured: this member took a 1,572,839-byte value on a 3-byte key, not one byte more.
    let measured = 5_099_357_604_517_118_029;
    let fits = |n| {
        wire::raft_request_size(measured, wire::bytes_field(1, 3) + wire::bytes_field(2, n))
            <= MAX_REQUEST_BYTES
    };
    assert!(fits(1_572_839) && !fits(1_572_840));
}

#[test]
fn a_write_that_commits_yet_answers_503() {
    let etcd = Etcd::new();
    let fault = etcd.fail_next(1, Fault::CommitThenTimeout);
    let r = etcd.post("/v3/kv/put", &json!({"key": b64(b"k"), "value": b64(b"v")}));
    assert_eq!((r.status, r.after_ms), (503, Some(QUORUM_TIMEOUT_MS)));
    assert_eq!(r.json().unwrap()["error"], TIMED_OUT);
    assert_eq!(r.json().unwrap()["code"], 14);
    assert_eq!(etcd.value(b"k").unwrap(), b"v", "committed all the same");
    assert_eq!((etcd.hits(fault), etcd.active(fault)), (1, false));
    // Reading the key back resolves the unknown outcome.
    let back = etcd.post("/v3/kv/range", &json!({"key": b64(b"k")}));
    assert_eq!(back.status, 200);
    assert_eq!(back.json().unwrap()["kvs"][0]["value"], b64(b"v"));
}

#[test]
fn a_quorum_loss_holds_writes_and_serves_serializable_reads() {
    let etcd = Etcd::new();
    assert_eq!(claim(&etcd, b"pre", b"v", None)["succeeded"], true);
    let lease = grant(&etcd, 5);
    assert_eq!(
        claim(&etcd, b"leased", b"v", Some(&lease))["succeeded"],
        true
    );
    let lost = etcd.fail(Fault::QuorumLost);
    let r = etcd.post("/v3/kv/put", &json!({"key": b64(b"k"), "value": b64(b"v")}));
    assert_eq!((r.status, r.after_ms), (503, Some(QUORUM_TIMEOUT_MS)));
    let lin = etcd.post("/v3/kv/range", &json!({"key": b64(b"pre")}));
    assert_eq!(lin.status, 503);
    let ser = etcd.post(
        "/v3/kv/range",
        &json!({"key": b64(b"pre"), "serializable": true}),
    );
    assert_eq!((ser.status, ser.after_ms), (200, Some(1)));
    // A read-only txn is a linearizable read too, unless all its ranges are serializable.
    let ro = etcd.post(
        "/v3/kv/txn",
        &json!({"success": [{"request_range": {"key": b64(b"pre")}}]}),
    );
    assert_eq!(ro.status, 503);
    let ro_ser = etcd.post(
        "/v3/kv/txn",
        &json!({"success": [{"request_range": {"key": b64(b"pre"), "serializable": true}}]}),
    );
    assert_eq!(ro_ser.status, 200);
    // Leases do not run out while nobody can revoke them.
    etcd.advance(60_000);
    assert!(etcd.get(b"leased").is_some());
    assert!(etcd.get(b"k").is_none());
    assert_eq!(etcd.held_writes(), 1);
    etcd.heal(lost);
    assert_eq!(etcd.value(b"k").unwrap(), b"v");
    // Renewed to the full TTL at the heal.
    etcd.advance(4_999);
    assert!(etcd.get(b"leased").is_some());
    etcd.advance(1);
    assert!(etcd.get(b"leased").is_none());
    assert_eq!(
        etcd.hits(lost),
        3,
        "the put, the linearizable range and the read-only txn"
    );
}

#[test]
fn lease_gone_answers_404_until_switched_off_and_expiring_every_lease_takes_their_keys() {
    let etcd = Etcd::new();
    let lease = grant(&etcd, 30);
    let gone = etcd.fail(Fault::LeaseGone);
    let put = json!({"key": b64(b"k"), "value": b64(b"v"), "lease": lease});
    let r = etcd.post("/v3/kv/put", &put);
    assert_eq!(r.status, 404);
    assert_eq!(r.json().unwrap()["code"], 5);
    let keep = etcd.post("/v3/lease/keepalive", &json!({ "ID": lease }));
    assert_eq!(keep.status, 200);
    assert!(keep.json().unwrap()["result"].get("TTL").is_none());
    let ttl = etcd.post("/v3/lease/timetolive", &json!({ "ID": lease }));
    assert_eq!(ttl.json().unwrap()["TTL"], "-1");
    // Without a lease the put goes through; grants are not affected.
    let plain = etcd.post("/v3/kv/put", &json!({"key": b64(b"p"), "value": b64(b"v")}));
    assert_eq!(plain.status, 200);
    let fresh = grant(&etcd, 30);
    assert_eq!(etcd.hits(gone), 3);
    etcd.heal(gone);
    assert_eq!(etcd.post("/v3/kv/put", &put).status, 200);
    let mut with_fresh = put.clone();
    with_fresh["key"] = b64(b"k2").into();
    with_fresh["lease"] = fresh.into();
    assert_eq!(etcd.post("/v3/kv/put", &with_fresh).status, 200);
    let rev = etcd.revision();
    etcd.expire_all_leases();
    assert!(etcd.leases().is_empty());
    assert_eq!(etcd.keys(), vec![b"p".to_vec()]);
    assert_eq!(
        etcd.revision(),
        rev + 2,
        "one revision per revoked lease with keys"
    );
    assert_eq!(etcd.post("/v3/kv/put", &put).status, 404);
    etcd.wipe();
    assert_eq!((etcd.revision(), etcd.keys().len()), (1, 0));
}

#[test]
fn injections_are_scoped_counted_and_switch_themselves_off() {
    let etcd = Etcd::new();
    let writes = etcd.inject(Injection::new(Fault::Refuse).on(Scope::Writes).times(2));
    let read = etcd.post("/v3/kv/range", &json!({"key": b64(b"a")}));
    assert_eq!(read.status, 200);
    for _ in 0..2 {
        let w = etcd.post("/v3/kv/put", &json!({"key": b64(b"a"), "value": b64(b"1")}));
        assert_eq!((w.status, w.text()), (503, REFUSED_BODY.to_string()));
    }
    assert!(!etcd.active(writes));
    assert_eq!(
        etcd.post("/v3/kv/put", &json!({"key": b64(b"a"), "value": b64(b"1")}))
            .status,
        200
    );
    assert_eq!(etcd.hits(writes), 2);

    let one_key =
        etcd.inject(Injection::new(Fault::Reset { applied: true }).on(Scope::Key(b"hot".to_vec())));
    let hot = claim(&etcd, b"hot", b"v", None);
    assert_eq!(hot, Value::Null, "the reset body is not JSON");
    assert_eq!(
        etcd.value(b"hot").unwrap(),
        b"v",
        "executed before the reset"
    );
    assert_eq!(claim(&etcd, b"cold", b"v", None)["succeeded"], true);
    let by_path = etcd.inject(
        Injection::new(Fault::Garbage {
            status: 200,
            body: br#"{"header":{}}"#.to_vec(),
            applied: false,
        })
        .on(Scope::Path("/v3/kv/txn".into())),
    );
    let shaped_wrong = claim(&etcd, b"cold2", b"v", None);
    assert_eq!(shaped_wrong, json!({"header": {}}));
    assert!(etcd.get(b"cold2").is_none());
    assert_eq!((etcd.hits(one_key), etcd.hits(by_path)), (1, 1));
    etcd.heal_all();
    assert_eq!(claim(&etcd, b"cold2", b"v", None)["succeeded"], true);
    assert!(!etcd.active(one_key) && !etcd.active(by_path));
}

#[test]
fn requests_are_recorded_decoded_so_a_test_can_find_anything_sent_in_clear() {
    let etcd = Etcd::new();
    let proxy = etcd.client("proxy-a");
    claim(&proxy, b"scope=tenant-7|key=secret-42", b"fp", None);
    claim(&proxy, b"c0ffee", b"fp", None);
    let found = etcd.requests_containing(b"secret-42");
    assert_eq!(found.len(), 1, "found through base64");
    assert_eq!(found[0].client, "proxy-a");
    assert_eq!(found[0].path, "/v3/kv/txn");
    assert!(found[0].json.as_ref().unwrap()["compare"][0]["key"].is_string());
    assert!(
        !String::from_utf8_lossy(&found[0].body).contains("secret-42"),
        "not raw"
    );
    assert_eq!(etcd.requests().len(), 2);
    let stats = etcd.stats(b"c0ffee");
    assert_eq!((stats.txns, stats.writes, stats.puts), (1, 1, 0));
    assert_eq!(etcd.requests_to("/v3/kv/txn").len(), 2);
    etcd.clear_requests();
    assert!(etcd.requests().is_empty());
}

// -- through proxy_http_call ----------------------------------------------------------------------

struct Call {
    path: &'static str,
    body: Vec<u8>,
    timeout_ms: u32,
}

fn call(path: &'static str, body: Value, timeout_ms: u32) -> Call {
    Call {
        path,
        body: serde_json::to_vec(&body).unwrap(),
        timeout_ms,
    }
}

/// A module with one export per call (`call0`, `call1`, …) dispatching it to cluster "etcd";
/// each reply's body and :status land in a slot per token (12288 + 16 * token).
fn caller(calls: &[Call]) -> wasmtime::Module {
    let mut body = String::from(
        r#"
  (data (i32.const 1024) "etcd")
  (data (i32.const 1100) ":status")
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $h i32) (param $b i32) (param $t i32)
    (local $slot i32)
    (local.set $slot (i32.add (i32.const 12288) (i32.mul (local.get $token) (i32.const 16))))
    (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $b) (local.get $slot) (i32.add (local.get $slot) (i32.const 4))))
    (drop (call $get_header (i32.const 6) (i32.const 1100) (i32.const 7) (i32.add (local.get $slot) (i32.const 8)) (i32.add (local.get $slot) (i32.const 12)))))
"#,
    );
    let mut at = 16384usize;
    for (i, c) in calls.iter().enumerate() {
        let headers = pairs(&[
            (":method", "POST"),
            (":path", c.path),
            (":authority", "etcd"),
        ]);
        let hlen = headers.len() / 3;
        let (hptr, bptr) = (at, at + hlen);
        at = bptr + c.body.len() + 8;
        assert!(at < 65536, "requests too large for the caller module");
        body.push_str(&format!(
            r#"
  (data (i32.const {hptr}) "{headers}")
  (data (i32.const {bptr}) "{}")
  (func (export "call{i}") (result i32)
    (call $http_call (i32.const 1024) (i32.const 4) (i32.const {hptr}) (i32.const {hlen})
      (i32.const {bptr}) (i32.const {}) (i32.const 0) (i32.const 0) (i32.const {}) (i32.const 64)))
"#,
            bytes(&c.body),
            c.body.len(),
            c.timeout_ms
        ));
    }
    module(IMPORTS, &body)
}

fn start(builder: host_tests::host::HostBuilder, calls: &[Call]) -> Host {
    builder
        .start_module(&caller(calls))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn u32_at(host: &mut Host, vm: usize, ptr: u32) -> u32 {
    let b = host.vm(vm).read_memory(ptr, 4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Dispatches call `i` on worker `vm`; answers its token.
fn dispatch(host: &mut Host, vm: usize, i: usize) -> u32 {
    let status = host.vm(vm).call(1, &format!("call{i}"), &[]).unwrap();
    assert_eq!(status, Some(0), "proxy_http_call status");
    u32_at(host, vm, 64)
}

/// The (status, body) delivered for `token` on worker `vm`, if it arrived.
fn reply(host: &mut Host, vm: usize, token: u32) -> Option<(u16, Vec<u8>)> {
    let slot = 12288 + 16 * token;
    let (sp, sl) = (u32_at(host, vm, slot + 8), u32_at(host, vm, slot + 12));
    if sp == 0 {
        return None;
    }
    let status = String::from_utf8(host.vm(vm).read_memory(sp, sl)).unwrap();
    let (bp, bl) = (u32_at(host, vm, slot), u32_at(host, vm, slot + 4));
    Some((status.parse().unwrap(), host.vm(vm).read_memory(bp, bl)))
}

fn json_of(r: &Option<(u16, Vec<u8>)>) -> Value {
    serde_json::from_slice(&r.as_ref().unwrap().1).unwrap_or(Value::Null)
}

fn claim_call(key: &str, value: &str, timeout_ms: u32) -> Call {
    call(
        "/v3/kv/txn",
        json!({
            "compare": [{"key": b64(key.as_bytes()), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key.as_bytes()), "value": b64(value.as_bytes())}}],
            "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
        }),
        timeout_ms,
    )
}

#[test]
fn http_call_reaches_the_model_and_its_answer_arrives_after_the_latency() {
    let etcd = Etcd::new();
    let mut host = start(
        Host::builder().etcd("etcd", &etcd),
        &[claim_call("k", "owner", 500)],
    );
    let token = dispatch(&mut host, 0, 0);
    assert_eq!(etcd.value(b"k").unwrap(), b"owner", "applied on arrival");
    assert_eq!(reply(&mut host, 0, token), None, "nothing inside the call");
    host.advance(1).unwrap();
    let r = reply(&mut host, 0, token);
    assert_eq!(r.as_ref().unwrap().0, 200);
    assert_eq!(json_of(&r)["succeeded"], true);
    let sent = etcd.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("POST", "/v3/kv/txn")
    );
    assert_eq!(sent[0].client, "etcd-client");
}

#[test]
fn two_envoy_processes_and_their_workers_share_one_etcd() {
    let etcd = Etcd::new();
    let calls = [
        claim_call("order-7", "proxy-a", 500),
        claim_call("order-7", "proxy-b", 500),
    ];
    let mut a = start(
        Host::builder()
            .workers(2)
            .etcd("etcd", &etcd.client("proxy-a")),
        &calls,
    );
    let mut b = start(
        Host::builder()
            .workers(2)
            .etcd("etcd", &etcd.client("proxy-b")),
        &calls,
    );
    let first = dispatch(&mut a, 0, 0);
    let same_proxy = dispatch(&mut a, 1, 0);
    let other_proxy = dispatch(&mut b, 1, 1);
    a.advance(5).unwrap();
    b.advance(5).unwrap();
    assert_eq!(json_of(&reply(&mut a, 0, first))["succeeded"], true);
    for r in [reply(&mut a, 1, same_proxy), reply(&mut b, 1, other_proxy)] {
        let lost = json_of(&r);
        assert!(lost.get("succeeded").is_none(), "{lost}");
        assert_eq!(
            lost["responses"][0]["response_range"]["kvs"][0]["value"],
            b64(b"proxy-a")
        );
    }
    let clients: Vec<String> = etcd.requests().into_iter().map(|r| r.client).collect();
    assert_eq!(clients, ["proxy-a", "proxy-a", "proxy-b"]);
    assert_eq!(etcd.stats(b"order-7").txns, 3);
    assert_eq!(etcd.stats(b"order-7").writes, 1);
}

#[test]
fn a_quorum_loss_longer_than_the_call_timeout_is_envoys_504_and_the_write_may_still_commit() {
    let etcd = Etcd::new();
    let calls = [
        claim_call("held", "v", 1000),
        claim_call("dropped", "v", 1000),
        claim_call("no-timeout", "v", 0),
    ];
    let mut host = start(Host::builder().etcd("etcd", &etcd), &calls);
    let lost = etcd.fail(Fault::QuorumLost);
    let held = dispatch(&mut host, 0, 0);
    let unbounded = dispatch(&mut host, 0, 2);
    host.advance(999).unwrap();
    assert_eq!(reply(&mut host, 0, held), None);
    host.advance(1).unwrap();
    assert_eq!(
        reply(&mut host, 0, held),
        Some((504, TIMEOUT_BODY.as_bytes().to_vec()))
    );
    // A call without a timeout waits for etcd's own answer.
    host.advance(5_999).unwrap();
    assert_eq!(reply(&mut host, 0, unbounded), None);
    host.advance(1).unwrap();
    let r = reply(&mut host, 0, unbounded);
    assert_eq!(r.as_ref().unwrap().0, 503);
    assert_eq!(json_of(&r)["code"], 14);
    assert!(etcd.get(b"held").is_none());
    etcd.heal(lost);
    assert_eq!(
        etcd.value(b"held").unwrap(),
        b"v",
        "the timed-out claim was committed"
    );
    assert_eq!(etcd.value(b"no-timeout").unwrap(), b"v");

    let gone = etcd.fail(Fault::NoLeader);
    let dropped = dispatch(&mut host, 0, 1);
    host.advance(1000).unwrap();
    assert_eq!(reply(&mut host, 0, dropped).unwrap().0, 504);
    etcd.heal(gone);
    assert!(
        etcd.get(b"dropped").is_none(),
        "without a leader nothing is kept"
    );
}

#[test]
fn envoy_level_faults_come_back_as_envoys_synthetic_replies() {
    let cases: Vec<(Fault, u16, Vec<u8>, u64, bool)> = vec![
        (
            Fault::Reset { applied: false },
            503,
            RESET_BODY.into(),
            0,
            false,
        ),
        (
            Fault::Reset { applied: true },
            503,
            RESET_BODY.into(),
            0,
            true,
        ),
        (Fault::Refuse, 503, REFUSED_BODY.into(), 0, false),
        (
            Fault::Hang { applied: true },
            504,
            TIMEOUT_BODY.into(),
            300,
            true,
        ),
        (
            Fault::Hang { applied: false },
            504,
            TIMEOUT_BODY.into(),
            300,
            false,
        ),
        (
            Fault::Garbage {
                status: 200,
                body: b"<html>proxy</html>".to_vec(),
                applied: false,
            },
            200,
            b"<html>proxy</html>".to_vec(),
            1,
            false,
        ),
    ];
    for (fault, status, body, after, applied) in cases {
        let etcd = Etcd::new();
        let mut host = start(
            Host::builder().etcd("etcd", &etcd),
            &[claim_call("k", "v", 300)],
        );
        let id = etcd.fail(fault.clone());
        let token = dispatch(&mut host, 0, 0);
        if after > 0 {
            host.advance(after - 1).unwrap();
            assert_eq!(reply(&mut host, 0, token), None, "{fault:?}");
        }
        host.advance(1).unwrap();
        assert_eq!(
            reply(&mut host, 0, token),
            Some((status, body)),
            "{fault:?}"
        );
        assert_eq!(etcd.get(b"k").is_some(), applied, "{fault:?}");
        assert_eq!(etcd.hits(id), 1);
        assert_eq!(etcd.requests()[0].status, status);
    }
}

#[test]
fn leases_expire_on_the_host_clock_and_take_their_keys() {
    let etcd = Etcd::new();
    let calls = [call("/v3/kv/range", json!({"key": b64(b"k")}), 500)];
    let mut host = start(Host::builder().etcd("etcd", &etcd), &calls);
    assert_eq!(etcd.now_ns(), host.shared().now_ns, "one clock");
    let lease = grant(&etcd, 2);
    assert_eq!(claim(&etcd, b"k", b"v", Some(&lease))["succeeded"], true);
    host.advance(1_999).unwrap();
    assert!(etcd.get(b"k").is_some());
    host.advance(1).unwrap();
    assert!(etcd.get(b"k").is_none(), "the host's clock expired it");
    let token = dispatch(&mut host, 0, 0);
    host.advance(1).unwrap();
    let r = json_of(&reply(&mut host, 0, token));
    assert!(r.get("kvs").is_none(), "{r}");
    assert_eq!(r["header"]["revision"], "3");
}

#[test]
fn the_fastest_clock_of_two_hosts_drives_the_shared_etcd() {
    let etcd = Etcd::new();
    let mut a = start(Host::builder().etcd("etcd", &etcd), &[]);
    let mut b = start(Host::builder().etcd("etcd", &etcd), &[]);
    let lease = grant(&etcd, 10);
    claim(&etcd, b"k", b"v", Some(&lease));
    a.advance(10_000).unwrap();
    assert!(etcd.get(b"k").is_none());
    // The other process lags behind: etcd's clock never goes back.
    b.advance(1).unwrap();
    assert_eq!(etcd.now_ns(), a.shared().now_ns);
}
