//! How a stream ended, as the filter classifies it, and the log lines and filter state it leaves.

use crate::common::*;
use host_tests::{LogLevel, Profile, Request, UpstreamAction};

fn counters(host: &mut host_tests::Host) -> [i64; 5] {
    [
        "completed",
        "client_abort",
        "upstream_reset",
        "truncated",
        "incomplete",
    ]
    .map(|o| host.metric(&format!("resetguard.outcome.{o}")).unwrap_or(0))
}

fn slow(ms: u64) -> UpstreamAction {
    UpstreamAction::Respond {
        status: 200,
        headers: vec![],
        body: b"late".to_vec(),
        delay_ms: ms,
    }
}

/// The upstream sends the headers and half the body, then resets.
fn cut_mid_body() -> UpstreamAction {
    UpstreamAction::ResetMidBody {
        status: 200,
        headers: vec![],
        body_prefix: b"half".to_vec(),
    }
}

#[test]
fn outcomes_are_classified_from_envoy_stream_info() {
    let mut host = envoy();
    host.exchange(Request::get("/"));
    assert_eq!(counters(&mut host), [1, 0, 0, 0, 0]);

    let x = host.exchange(Request::get("/").upstream(vec![slow(200)]).abort_after(50));
    assert!(x.client_aborted);
    assert_eq!(counters(&mut host), [1, 1, 0, 0, 0]);
    assert_eq!(
        x.filter_state
            .get("wasm.resetguard_outcome")
            .map(Vec::as_slice),
        Some(&b"client_abort"[..])
    );

    let x =
        host.exchange(Request::post("/", "b").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!(x.status, Some(503));
    assert_eq!(counters(&mut host), [1, 1, 1, 0, 0]);

    let x = host.exchange(Request::get("/").upstream(vec![cut_mid_body()]));
    assert!(!x.complete);
    assert_eq!(counters(&mut host), [1, 1, 1, 1, 0]);

    // An upstream's own 503 is a completed exchange, not a reset.
    let own = UpstreamAction::Respond {
        status: 503,
        headers: vec![],
        body: vec![],
        delay_ms: 0,
    };
    host.exchange(Request::post("/", "b").upstream(vec![own]));
    assert_eq!(counters(&mut host), [2, 1, 1, 1, 0]);
    let info = host.logs_at(LogLevel::Info);
    assert!(
        !info.iter().any(|l| l.contains("client_abort")),
        "client aborts log at debug by default: {info:?}"
    );
    assert!(
        info.iter().any(|l| l.contains("upstream_reset POST /")),
        "{info:?}"
    );
    assert!(
        host.logs_at(LogLevel::Warn).is_empty(),
        "aborts and resets are not warnings"
    );
}

#[test]
fn an_abort_while_retrying_is_still_a_client_abort() {
    let mut host = envoy();
    let plan = vec![UpstreamAction::ResetBeforeHeaders, slow(500)];
    let x = host.exchange(Request::get("/").upstream(plan).abort_after(100));
    assert!(x.client_aborted);
    assert_eq!(x.upstream_attempts(), 2);
    assert_eq!(counters(&mut host), [0, 1, 0, 0, 0]);
}

#[test]
fn abort_logging_follows_the_config() {
    let mut host = host(
        Profile::Envoy,
        r#"{"client_abort": {"log_level": "off", "filter_state": false}}"#,
    );
    let x = host.exchange(Request::get("/").upstream(vec![slow(100)]).abort_after(1));
    assert!(x.filter_state.is_empty());
    assert!(!host
        .logs()
        .iter()
        .any(|l| l.message.contains("client_abort")));
    assert_eq!(counters(&mut host), [0, 1, 0, 0, 0]);
}

#[test]
fn without_response_flags_a_response_cut_mid_body_is_incomplete_not_guessed() {
    // Kong and APISIX report no response flags: a response that started and was cut could be
    // the upstream dying or the client leaving (aborts before any response: filter_abort.rs).
    for profile in [Profile::Kong, Profile::Apisix] {
        let mut h = host(profile, "");
        let x = h.exchange(Request::get("/").upstream(vec![cut_mid_body()]));
        assert!(!x.complete);
        let x = h.exchange(Request::get("/").abort_mid_response(0));
        assert!(x.client_aborted);
        h.exchange(Request::get("/"));
        let info = h.logs_at(LogLevel::Info);
        let incomplete = info.iter().filter(|l| l.contains("incomplete GET /"));
        assert_eq!(incomplete.count(), 2, "{profile:?}: {info:?}");
        assert!(
            !info
                .iter()
                .any(|l| l.contains("truncated") || l.contains("client_abort")),
            "{profile:?}: {info:?}"
        );
        assert_eq!(
            h.metric("resetguard.outcome.incomplete"),
            None,
            "{profile:?}: no metrics at all"
        );
    }
}

#[test]
fn a_retriable_503_that_exhausts_its_retries_is_the_upstreams_answer_with_urx() {
    let mut host = host(
        Profile::Envoy,
        r#"{"retry": {"max_retries": 1, "retriable_status_codes": [503]}}"#,
    );
    let busy = UpstreamAction::Respond {
        status: 503,
        headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
        body: b"busy".to_vec(),
        delay_ms: 0,
    };
    let x = host.exchange(Request::get("/").upstream(vec![busy]));
    assert_eq!((x.status, x.body.as_slice()), (Some(503), &b"busy"[..]));
    assert_eq!(
        x.upstream_attempts(),
        2,
        "one retry, then the retries are used up"
    );
    assert!(
        !x.router_local_reply,
        "the client gets the upstream's own 503"
    );
    assert!(
        x.header("x-envoy-upstream-service-time").is_some(),
        "an upstream response, not a router reply"
    );
    assert_eq!(
        (x.flags, x.details.as_str()),
        (0x8000, "via_upstream"),
        "Envoy sets URX alone on an exhausted retriable status"
    );
    assert_eq!(
        counters(&mut host),
        [1, 0, 0, 0, 0],
        "completed, not upstream_reset"
    );
}

#[test]
fn a_runtime_log_level_change_reaches_the_filter_on_its_next_tick() {
    let mut host = host_tests::Host::envoy(r#"{"client_abort": {"log_level": "debug"}}"#);
    let abort = || Request::get("/").upstream(vec![slow(200)]).abort_after(50);
    let debug_aborts = |host: &host_tests::Host| {
        host.logs_at(LogLevel::Debug)
            .iter()
            .filter(|l| l.contains("client_abort"))
            .count()
    };
    host.exchange(abort());
    assert_eq!(debug_aborts(&host), 0, "info level: no debug line");

    // The operator raises the level (Envoy's admin /logging); requests never ask for it.
    host.shared().log_level = LogLevel::Debug;
    host.exchange(abort());
    assert_eq!(debug_aborts(&host), 0, "not before the root context's tick");
    host.advance(2_000).unwrap();
    host.exchange(abort());
    assert_eq!(debug_aborts(&host), 1);
}
