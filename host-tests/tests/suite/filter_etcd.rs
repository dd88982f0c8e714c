//! The fleet-wide store through the real module: two proxies (two hosts) on one etcd model, and
//! every failure path of the gateway (a lost quorum, a write that commits yet answers 503, a
//! reset, a timeout, garbage, lost leases), each deterministic. What must hold whatever etcd
//! does: a keyed request never runs upstream twice, nothing traps, and neither the raw key nor a
//! scope value ever reaches etcd in clear.

use host_tests::etcd::{Etcd, EtcdConfig, Fault, Injection, Scope};
use host_tests::{Exchange, Host, Request, UpstreamAction};

fn config(on_unavailable: &str) -> String {
    format!(
        r#"{{"idempotency": {{"store": {{"backend": "etcd", "cluster": "etcd", "timeout_ms": 300,
            "on_unavailable": "{on_unavailable}"}}}}}}"#
    )
}

/// A proxy of the fleet: its own host (process), the shared etcd under its own client label.
fn proxy(etcd: &Etcd, label: &str, on_unavailable: &str) -> Host {
    let mut host = Host::builder()
        .workers(2)
        .config(&config(on_unavailable))
        .etcd("etcd", &etcd.client(label))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.configured(), "{:?}", host.logs());
    // The leases granted at configure come back.
    host.advance(10).unwrap();
    host
}

const CREATED: &[u8] = b"{\"order\":\"o-7\",\"state\":\"created\"}";

fn post(key: &str, body: &str, who: &str) -> Request {
    Request::post("/orders", body)
        .header("authorization", &format!("Bearer {who}-secret-token"))
        .header("idempotency-key", key)
        .upstream(vec![UpstreamAction::Respond {
            status: 201,
            headers: vec![
                (b"content-type".to_vec(), b"application/json".to_vec()),
                (b"set-cookie".to_vec(), b"a=1".to_vec()),
            ],
            body: CREATED.to_vec(),
            delay_ms: 2,
        }])
}

/// Lets the root contexts send (and etcd answer) the settlements of finished streams.
fn settle(hosts: &mut [&mut Host]) {
    for _ in 0..4 {
        for h in hosts.iter_mut() {
            h.advance(60).unwrap();
        }
    }
}

fn problem_type(x: &Exchange) -> String {
    serde_json::from_slice::<serde_json::Value>(&x.body)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_retry_through_another_proxy_is_replayed_from_etcd_never_run_again() {
    let etcd = Etcd::new();
    let mut a = proxy(&etcd, "proxy-a", "reject");
    let mut b = proxy(&etcd, "proxy-b", "reject");
    let first = a.exchange(post("k-fleet", "{\"n\":1}", "alice"));
    assert_eq!(
        (first.status, first.upstream_attempts()),
        (Some(201), 1),
        "{first:?}"
    );
    settle(&mut [&mut a, &mut b]);
    // The same request through the other proxy: the stored response, byte for byte.
    let replay = b.exchange(post("k-fleet", "{\"n\":1}", "alice"));
    assert_eq!(replay.status, Some(201), "{replay:?}");
    assert_eq!(replay.upstream_attempts(), 0);
    assert_eq!(
        replay.header_str("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(replay.body, CREATED);
    assert_eq!(replay.header_str("set-cookie").as_deref(), Some("a=1"));
    // Another payload: 422 from the other proxy too; another client: its own key.
    let other = b.exchange(post("k-fleet", "{\"n\":2}", "alice"));
    assert_eq!(other.status, Some(422));
    let bob = b.exchange(post("k-fleet", "{\"n\":1}", "bob"));
    assert_eq!((bob.status, bob.upstream_attempts()), (Some(201), 1));
    // Neither the key nor a credential ever went to etcd in clear.
    for secret in [&b"k-fleet"[..], b"alice-secret-token", b"bob-secret-token"] {
        assert!(
            etcd.requests_containing(secret).is_empty(),
            "{}",
            String::from_utf8_lossy(secret)
        );
    }
    assert_eq!(a.metric("resetguard.idempotency.claimed"), Some(1));
    assert_eq!(b.metric("resetguard.idempotency.replays"), Some(1));
    assert!(
        a.metric("resetguard.store.calls.ok").unwrap_or(0) >= 3,
        "grants, claim, complete"
    );
}

#[test]
fn concurrent_duplicates_on_two_proxies_run_once() {
    let etcd = Etcd::new();
    let mut a = proxy(&etcd, "proxy-a", "reject");
    let mut b = proxy(&etcd, "proxy-b", "reject");
    let slow = || {
        post("k-race", "{\"n\":1}", "alice").upstream(vec![UpstreamAction::Respond {
            status: 201,
            headers: vec![],
            body: CREATED.to_vec(),
            delay_ms: 200,
        }])
    };
    let first = a.vm(0).begin(slow()).unwrap_or_else(|e| panic!("{e}"));
    a.advance(20).unwrap();
    let duplicate = b.exchange(slow());
    assert_eq!(duplicate.status, Some(409), "{duplicate:?}");
    assert!(problem_type(&duplicate).ends_with("key-in-flight"));
    assert_eq!(duplicate.upstream_attempts(), 0);
    let done = a.vm(0).finish(first).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((done.status, done.upstream_attempts()), (Some(201), 1));
}

#[test]
fn a_claim_that_committed_but_answered_503_is_found_by_its_owner_token() {
    let etcd = Etcd::new();
    let mut a = proxy(&etcd, "proxy-a", "reject");
    etcd.inject(
        Injection::new(Fault::CommitThenTimeout)
            .on(Scope::Path("/v3/kv/txn".into()))
            .times(1),
    );
    let x = a.exchange(post("k-commit", "{\"n\":1}", "alice"));
    assert_eq!((x.status, x.upstream_attempts()), (Some(201), 1), "{x:?}");
    // etcd would answer 503 after 7 s; the 300 ms callout timeout answers first.
    assert_eq!(a.metric("resetguard.store.calls.timeout"), Some(1));
    settle(&mut [&mut a]);
    let again = a.exchange(post("k-commit", "{\"n\":1}", "alice"));
    assert_eq!(
        again.header_str("idempotent-replayed").as_deref(),
        Some("true")
    );
}

#[test]
fn with_etcd_unavailable_each_on_unavailable_choice_answers_as_documented() {
    for (choice, status, runs) in [("reject", 503, 0), ("pass", 201, 1), ("local", 201, 1)] {
        let etcd = Etcd::new();
        let mut a = proxy(&etcd, "proxy-a", choice);
        let quorum = etcd.fail(Fault::NoLeader);
        let x = a.exchange(post("k-down", "{\"n\":1}", "alice"));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(status), runs),
            "{choice}: {x:?}"
        );
        if choice == "reject" {
            assert!(
                problem_type(&x).ends_with("store-unavailable"),
                "{choice}: {x:?}"
            );
            assert_eq!(x.header_str("retry-after").as_deref(), Some("1"));
        }
        if choice == "local" {
            // Deduped in this proxy while etcd is down: the re-send is replayed locally.
            let again = a.exchange(post("k-down", "{\"n\":1}", "alice"));
            assert_eq!(
                again.header_str("idempotent-replayed").as_deref(),
                Some("true"),
                "{again:?}"
            );
            // Both went to the local store: etcd was still down for the re-send.
            assert_eq!(a.metric("resetguard.store.fallbacks.local"), Some(2));
        }
        // The claim waited at most one callout timeout (300 ms) before answering.
        etcd.heal(quorum);
        let after = a.exchange(post("k-after", "{\"n\":1}", "alice"));
        assert_eq!(after.status, Some(201), "{choice}: etcd is back");
    }
}

#[test]
fn garbage_resets_and_lost_leases_never_trap_and_never_run_a_key_twice() {
    let faults = [
        Fault::Reset { applied: true },
        Fault::Reset { applied: false },
        Fault::Refuse,
        Fault::Hang { applied: true },
        Fault::Garbage {
            status: 200,
            body: b"<html>".to_vec(),
            applied: false,
        },
        Fault::Garbage {
            status: 200,
            body: b"{\"header\":{}}".to_vec(),
            applied: true,
        },
        Fault::LeaseGone,
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        let etcd = Etcd::new();
        let mut a = proxy(&etcd, "proxy-a", "reject");
        let key = format!("k-fault-{i}");
        etcd.inject(
            Injection::new(fault.clone())
                .on(Scope::Path("/v3/kv/txn".into()))
                .times(1),
        );
        let first = a.exchange(post(&key, "{\"n\":1}", "alice"));
        assert!(a.vm(0).trapped().is_none(), "{fault:?}");
        settle(&mut [&mut a]);
        // Whatever the first got, its re-sends never make a second execution.
        let mut runs = first.upstream_attempts();
        for _ in 0..3 {
            let again = a.exchange(post(&key, "{\"n\":1}", "alice"));
            runs += again.upstream_attempts();
            settle(&mut [&mut a]);
        }
        assert!(runs <= 1, "{fault:?}: {runs} executions");
        // A lost lease is granted again: the store works afterwards.
        let fresh = a.exchange(post(&format!("{key}-next"), "{\"n\":1}", "alice"));
        assert_eq!(fresh.status, Some(201), "{fault:?}: {fresh:?}");
    }
}

#[test]
fn a_settlement_etcd_cannot_take_now_is_retried_until_it_lands() {
    let etcd = Etcd::new();
    let mut a = proxy(&etcd, "proxy-a", "reject");
    let x = a.vm(0).begin(post("k-late", "{\"n\":1}", "alice")).unwrap();
    // etcd goes away while the request is upstream; the completion fails, then is retried.
    let down = etcd.fail(Fault::NoLeader);
    let done = a.vm(0).finish(x).unwrap();
    assert_eq!(done.status, Some(201));
    settle(&mut [&mut a]);
    etcd.heal(down);
    settle(&mut [&mut a]);
    assert_eq!(a.metric("resetguard.idempotency.stored"), Some(1));
    let replay = a.exchange(post("k-late", "{\"n\":1}", "alice"));
    assert_eq!(
        replay.header_str("idempotent-replayed").as_deref(),
        Some("true")
    );
}

#[test]
fn a_cluster_envoy_refuses_is_reported_and_keyed_requests_get_on_unavailable() {
    // Envoy refuses callouts to an unknown cluster and to one not usable yet (health-checked,
    // warming) alike: the configuration is kept, grants are asked again on every tick, and a
    // cluster still refused after 10 s is reported with its field (`resetguard validate` checks
    // the name against the bootstrap).
    let mut host = Host::builder()
        .config(r#"{"idempotency": {"store": {"backend": "etcd", "cluster": "nowhere"}}}"#)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.configured());
    let x = host.exchange(post("k-nowhere", "{\"n\":1}", "alice"));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 0), "{x:?}");
    assert!(problem_type(&x).ends_with("store-unavailable"), "{x:?}");
    assert!(
        host_errors_naming(&host, "nowhere").is_empty(),
        "not reported before 10 s"
    );
    host.advance(10_500).unwrap();
    let errors = host_errors_naming(&host, "nowhere");
    assert_eq!(errors.len(), 1, "{:?}", host.logs());
    assert!(errors[0].contains("`idempotency.store.cluster`"));
}

fn host_errors_naming(host: &Host, needle: &str) -> Vec<String> {
    host.logs_at(host_tests::LogLevel::Error)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

/// The gateway-answer driver: seeded random faults on every kind of etcd call while keyed
/// requests and their re-sends go through two proxies, some clients leaving mid-request. Whatever
/// etcd answers: no trap, and no key ever runs upstream twice.
#[test]
fn random_gateway_faults_never_trap_or_run_a_key_twice() {
    use rand::{RngExt, SeedableRng};
    let seed: u64 = std::env::var("RESETGUARD_ETCD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let etcd = Etcd::new();
    let mut proxies = [
        proxy(&etcd, "proxy-a", "reject"),
        proxy(&etcd, "proxy-b", "reject"),
    ];
    let mut runs: std::collections::HashMap<String, u32> = Default::default();
    let faults = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..8) {
        0 => Fault::CommitThenTimeout,
        1 => Fault::Reset {
            applied: rng.random(),
        },
        2 => Fault::Refuse,
        3 => Fault::Hang {
            applied: rng.random(),
        },
        4 => Fault::Garbage {
            status: 200,
            body: b"{\"header\":{\"revision\":\"x\"}}".to_vec(),
            applied: rng.random(),
        },
        5 => Fault::LeaseGone,
        6 => Fault::NoLeader,
        _ => Fault::Garbage {
            status: 503,
            body: b"no".to_vec(),
            applied: false,
        },
    };
    for round in 0..60 {
        let key = format!("k-rnd-{}", rng.random_range(0..20));
        if rng.random_range(0..3) == 0 {
            let path = ["/v3/kv/txn", "/v3/kv/range", "/v3/lease/grant"][rng.random_range(0..3)];
            etcd.inject(
                Injection::new(faults(&mut rng))
                    .on(Scope::Path(path.into()))
                    .times(rng.random_range(1..3)),
            );
        }
        let which = rng.random_range(0..2);
        let mut request = post(&key, "{\"n\":1}", "alice");
        if rng.random_range(0..6) == 0 {
            request = request.abort_after(rng.random_range(0..6));
        }
        let x = proxies[which].exchange(request);
        *runs.entry(key.clone()).or_default() += x.upstream_attempts();
        for p in proxies.iter_mut() {
            p.advance(rng.random_range(0..120)).unwrap();
            assert!(
                p.vm(0).trapped().is_none() && p.vm(1).trapped().is_none(),
                "seed {seed} round {round}"
            );
        }
        if rng.random_range(0..10) == 0 {
            etcd.heal_all();
        }
    }
    for (key, n) in &runs {
        assert!(*n <= 1, "seed {seed}: {key} ran {n} times");
    }
    let a_runs = proxies[0]
        .metric("resetguard.idempotency.claimed")
        .unwrap_or(0);
    assert!(a_runs > 0, "the driver reached the store");
}

#[test]
fn every_gateway_round_trip_is_recorded_in_the_store_histogram() {
    let etcd = Etcd::with_config(EtcdConfig {
        latency_ms: 4,
        ..EtcdConfig::default()
    });
    let mut a = proxy(&etcd, "proxy-a", "reject");
    let first = a.exchange(post("k-timed", "{\"n\":1}", "alice"));
    assert_eq!(first.status, Some(201), "{first:?}");
    settle(&mut [&mut a]);
    let replay = a.exchange(post("k-timed", "{\"n\":1}", "alice"));
    assert_eq!(replay.status, Some(201), "{replay:?}");
    // Grants, claim, completion, the replay's claim: one sample each, the model's latency.
    let calls = etcd.requests().len();
    let samples = a.histogram("resetguard.store.round_trip_ms");
    assert!(calls >= 4, "{calls}");
    assert_eq!(samples.len(), calls, "{samples:?}");
    assert!(samples.iter().all(|&ms| ms == 4), "{samples:?}");
    // A claim etcd does not answer in time: Envoy's 504 at `timeout_ms`, recorded as such (the
    // read-back that follows finds no claim, and the request runs).
    etcd.fail_next(1, Fault::QuorumLost);
    let slow = a.exchange(post("k-slow", "{\"n\":1}", "alice"));
    assert_eq!(slow.upstream_attempts(), 1, "{slow:?}");
    let samples = a.histogram("resetguard.store.round_trip_ms");
    assert!(samples.contains(&300), "{samples:?}");
}
