//! The claims SECURITY.md makes, each proven through the real module, and the two bugs the
//! hostile driver (`hostile.rs`) found, each with the case that failed on the old module.

use crate::hostile::{header, is_problem, HOP_BY_HOP};
use host_tests::faults::Faults;
use host_tests::{Host, LogLevel, Request, UpstreamAction};

/// Found by the driver: a host that fails the body read (NOT_FOUND) made the filter fingerprint
/// an empty body, so a request with another payload was served the empty payload's response.
#[test]
fn a_failing_body_read_never_replays_another_payloads_response() {
    let mut h = Host::envoy(r#"{"idempotency":{}}"#);
    let keyed = |body: &[u8]| {
        keyed_post("k-1", "")
            .body(body)
            .upstream(vec![UpstreamAction::ok("for-the-empty-body")])
    };
    let first = h.exchange(keyed(b""));
    assert_eq!(first.status, Some(200));
    h.shared().faults.buffers = Some(host_tests::abi::status::NOT_FOUND);
    let second = h.exchange(keyed(b"another payload"));
    h.shared().faults = Faults::default();
    assert_eq!(second.header("idempotent-replayed"), None, "{second:?}");
    assert_ne!(second.body, b"for-the-empty-body");
    assert_eq!(
        second.status,
        Some(503),
        "the store is treated as unavailable"
    );
    assert!(is_problem(&second));
}

/// Found by the driver: a response body read that failed (NOT_FOUND) during recording stored the
/// response with an empty body, and retries were replayed a 201 without its body.
#[test]
fn a_failing_response_body_read_is_never_replayed_as_an_empty_body() {
    let mut h = Host::envoy(r#"{"idempotency":{}}"#);
    let keyed = || keyed_post("k-2", "payload").upstream(vec![respond(201, b"created")]);
    let vm = &mut h.vms[0];
    let flight = vm.begin(keyed()).unwrap_or_else(|e| panic!("{e}"));
    vm.state().shared().faults.buffers = Some(host_tests::abi::status::NOT_FOUND);
    let first = vm.finish(flight).unwrap_or_else(|e| panic!("{e}"));
    h.shared().faults = Faults::default();
    assert_eq!(
        (first.status, first.body.as_slice()),
        (Some(201), &b"created"[..])
    );
    let retry = h.exchange(keyed());
    assert_eq!(retry.header("idempotent-replayed"), None, "{retry:?}");
    assert_eq!(
        retry.status,
        Some(409),
        "completed, not replayable: never run twice"
    );
    assert!(is_problem(&retry));
    assert!(retry.upstream.is_empty());
}

// ---- The security claims of SECURITY.md, each proven on its own through the real module. ----

/// Entries per shard as the index in shared data says (its u16 count after the magic).
fn shard_sizes(h: &Host, shards: usize) -> Vec<usize> {
    (0..shards)
        .map(|i| {
            let key = format!("resetguard/v1/{shards}/shard/{i}");
            h.shared()
                .shared
                .get("resetguard", key.as_bytes())
                .and_then(|(v, _)| Some(usize::from(u16::from_le_bytes([*v.get(4)?, *v.get(5)?]))))
                .unwrap_or(0)
        })
        .collect()
}

/// The upstream answers at once with this status and body, no headers.
fn respond(status: u16, body: &[u8]) -> UpstreamAction {
    UpstreamAction::Respond {
        status,
        headers: vec![],
        body: body.to_vec(),
        delay_ms: 0,
    }
}

fn keyed_post(key: &str, body: &str) -> Request {
    Request::post("/orders", body)
        .header("authorization", "Bearer tok-flood")
        .header("idempotency-key", key)
        .upstream(vec![UpstreamAction::ok("created")])
}

/// Hash flooding: keys that all land in one shard under one store seed (learnt here with an
/// oracle no client has: the shard indexes in shared data) fill that shard and are refused; the
/// same keys against a store with another random seed spread over the shards and all run.
#[test]
fn a_shard_flood_built_for_one_seed_spreads_under_another() {
    let start = |host_seed: u64, max_entries: u32| {
        let h = Host::builder()
            .seed(host_seed)
            .config(&format!(
                r#"{{"idempotency":{{"shards":8,"max_entries":{max_entries}}}}}"#
            ))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(h.configured(), "{:?}", h.logs());
        h
    };
    // The attacker's precomputation, which needs the seed: keys whose identity lands in shard 0.
    let mut learn = start(0xA11CE, 8 * 64);
    let mut aimed = Vec::new();
    for n in 0..400 {
        let key = format!("flood-{n}");
        let before = shard_sizes(&learn, 8);
        assert_eq!(learn.exchange(keyed_post(&key, "x")).status, Some(200));
        if shard_sizes(&learn, 8)[0] > before[0] {
            aimed.push(key);
        }
        if aimed.len() == 8 {
            break;
        }
    }
    assert_eq!(aimed.len(), 8, "8 of 400 keys land in shard 0");
    let statuses = |h: &mut Host| -> Vec<u16> {
        aimed
            .iter()
            .map(|k| h.exchange(keyed_post(k, "x")).status.unwrap_or(0))
            .collect()
    };
    // Same seed, 4 entries per shard: the flood fills shard 0 and the rest is refused.
    let mut same_seed = start(0xA11CE, 32);
    let hit = statuses(&mut same_seed);
    assert_eq!(hit.iter().filter(|s| **s == 503).count(), 4, "{hit:?}");
    assert_eq!(shard_sizes(&same_seed, 8)[0], 4);
    // Another process, another random seed: the same keys spread and every one runs.
    let mut other_seed = start(0xB0B, 32);
    let spread = statuses(&mut other_seed);
    assert!(spread.iter().all(|s| *s == 200), "{spread:?}");
    let used = shard_sizes(&other_seed, 8)
        .iter()
        .filter(|n| **n > 0)
        .count();
    assert!(used >= 3, "the 8 keys use {used} shards");
}

/// Stored responses are bounded in size (a larger one completes the key unreplayable: 409, never
/// run twice) and in number (the store's shared-data keys never exceed 1 + S + S x C).
#[test]
fn stored_responses_are_bounded_in_size_and_number() {
    let mut h =
        Host::envoy(r#"{"idempotency":{"max_response_body_bytes":64,"max_entries":8,"shards":2}}"#);
    let with_body =
        |key: &str, len: usize| keyed_post(key, "x").upstream(vec![respond(201, &vec![b'r'; len])]);
    assert_eq!(h.exchange(with_body("big", 65)).status, Some(201));
    let retry = h.exchange(with_body("big", 65));
    assert_eq!(retry.status, Some(409));
    assert!(is_problem(&retry) && retry.upstream.is_empty());
    assert!(String::from_utf8_lossy(&retry.body).contains("response-not-replayable"));
    assert_eq!(h.exchange(with_body("fits", 64)).status, Some(201));
    let replay = h.exchange(with_body("fits", 64));
    assert_eq!((replay.status, replay.body.len()), (Some(201), 64));
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some(b"true".as_slice())
    );
    let mut refused = 0;
    for n in 0..500 {
        let x = h.exchange(keyed_post(&format!("many-{n}"), "x"));
        match x.status {
            Some(200) => {}
            Some(503) if is_problem(&x) => refused += 1,
            other => panic!("key {n}: {other:?}"),
        }
    }
    assert!(refused >= 490, "only 8 entries fit: {refused} refused");
    let keys = h.shared().shared.len("resetguard");
    assert!(keys <= 1 + 2 + 2 * 4, "{keys} shared-data keys");
}

/// A replay carries the response's end-to-end headers and none of its hop-by-hop ones (the
/// standard list, and whatever its Connection header names), nor the proxy's x-envoy-* ones.
#[test]
fn a_replay_carries_no_hop_by_hop_headers() {
    let mut h = Host::envoy(r#"{"idempotency":{}}"#);
    let response = UpstreamAction::Respond {
        status: 201,
        headers: [
            ("content-type", "application/json"),
            ("location", "/orders/7"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("connection", "keep-alive, X-Hop-Secret"),
            ("x-hop-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("x-envoy-upstream-service-time", "3"),
        ]
        .iter()
        .map(|(n, v)| header(n, v.as_bytes()))
        .collect(),
        body: b"{}".to_vec(),
        delay_ms: 0,
    };
    let send = |h: &mut Host| h.exchange(keyed_post("hop", "x").upstream(vec![response.clone()]));
    assert_eq!(send(&mut h).status, Some(201));
    let replay = send(&mut h);
    assert_eq!(
        replay.header("idempotent-replayed"),
        Some(b"true".as_slice())
    );
    let names: Vec<String> = replay
        .headers
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).to_ascii_lowercase())
        .collect();
    for hop in HOP_BY_HOP.iter().chain(&["proxy-connection"]) {
        assert!(!names.iter().any(|n| n == hop), "{hop} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("x-envoy-")),
        "{names:?}"
    );
    for kept in ["content-type", "location"] {
        assert!(names.iter().any(|n| n == kept), "{kept} missing: {names:?}");
    }
    assert_eq!(names.iter().filter(|n| *n == "set-cookie").count(), 2);
}

/// Keys and scope values (credentials) never reach a log line, at any level, nor filter state,
/// on every path: missing, malformed, claimed, replayed, mismatched, in flight, aborted.
#[test]
fn keys_and_credentials_never_reach_the_logs_or_filter_state() {
    let mut h = Host::builder()
        .log_level(LogLevel::Trace)
        .config(r#"{"idempotency":{},"client_abort":{"log_level":"info","filter_state":true}}"#)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let post = |key: Option<&str>, body: &str| {
        let r = Request::post("/orders", body).header("authorization", "Bearer tok-secret");
        match key {
            Some(k) => r.header("idempotency-key", k),
            None => r,
        }
    };
    let mut exchanges = vec![
        h.exchange(post(None, "x")),
        h.exchange(post(Some("idk-bad key"), "x")),
        h.exchange(post(Some("idk-ok"), "x")),
        h.exchange(post(Some("idk-ok"), "x")),
        h.exchange(post(Some("idk-ok"), "other")),
        h.exchange(post(Some("idk-abort"), "x").abort_mid_request(0)),
    ];
    let vm = &mut h.vms[0];
    let first = vm
        .begin(post(Some("idk-race"), "x"))
        .unwrap_or_else(|e| panic!("{e}"));
    exchanges.push(
        vm.exchange(post(Some("idk-race"), "x"))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    exchanges.push(vm.finish(first).unwrap_or_else(|e| panic!("{e}")));
    let statuses: Vec<Option<u16>> = exchanges.iter().map(|x| x.status).collect();
    assert_eq!(
        statuses,
        [
            Some(400),
            Some(400),
            Some(200),
            Some(200),
            Some(422),
            None,
            Some(409),
            Some(200)
        ]
    );
    // The log is on (debug lines and the abort are there), and none of it names a secret.
    let logs = h.logs();
    assert!(
        logs.iter().any(|l| l.message.contains("client_abort")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.level == LogLevel::Debug), "{logs:?}");
    let shared = h.shared();
    let stdio = [&shared.stdout, &shared.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
    let logs = shared.logs.iter().map(|l| l.message.clone());
    for line in logs.chain(stdio) {
        assert!(
            !line.contains("tok-secret") && !line.contains("idk-"),
            "{line}"
        );
    }
    for x in &exchanges {
        for value in x.filter_state.values() {
            let value = String::from_utf8_lossy(value);
            assert!(
                !value.contains("tok-") && !value.contains("idk-"),
                "{value}"
            );
        }
    }
}
