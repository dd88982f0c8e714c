//! Client aborts: a client that leaves is counted by phase, logged at
//! `client_abort.log_level` (debug by default, never warn/error), published for access logs, and
//! releases or completes its idempotency claim the way `unknown_outcome` says — on every host
//! profile, with and without a key.

use crate::common::*;
use host_tests::{Exchange, Host, LogLevel, Profile, Request, UpstreamAction};

const KEYED: &str = r#"{"idempotency": {"mode": "enforce"}}"#;
const CREATED: &[u8] = b"{\"order\":\"o-1\",\"state\":\"created\"}";

/// Where the client leaves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Leave {
    /// After the headers and the first body chunk; the rest never comes.
    BeforeRequestComplete,
    /// The request is in, the upstream answers after 200 ms; the client leaves at 50 ms.
    AwaitingUpstream,
    /// After the response headers and one body chunk.
    DuringResponse,
    /// After the whole response passed the filter, before the stream ended.
    AfterResponsePassed,
}

const PHASES: [Leave; 3] = [
    Leave::BeforeRequestComplete,
    Leave::AwaitingUpstream,
    Leave::DuringResponse,
];

impl Leave {
    fn phase_name(self) -> Option<&'static str> {
        match self {
            Leave::BeforeRequestComplete => Some("before_request_complete"),
            Leave::AwaitingUpstream => Some("awaiting_upstream"),
            Leave::DuringResponse => Some("during_response"),
            Leave::AfterResponsePassed => None,
        }
    }

    fn apply(self, request: Request) -> Request {
        match self {
            Leave::BeforeRequestComplete => request.abort_mid_request(1),
            Leave::AwaitingUpstream => request.abort_after(50),
            Leave::DuringResponse => request.abort_mid_response(1),
            Leave::AfterResponsePassed => request.abort_mid_response(usize::MAX),
        }
    }
}

/// A two-chunk POST whose upstream answers 201 after 200 ms, in 8-byte response chunks.
fn post(key: Option<&str>) -> Request {
    let mut r = Request::new("POST", "/orders").header("authorization", "Bearer a");
    if let Some(key) = key {
        r = r.header("idempotency-key", key);
    }
    r.chunks(vec![b"{\"n\":".to_vec(), b"1}".to_vec()])
        .response_chunks_of(8)
        .upstream(vec![UpstreamAction::Respond {
            status: 201,
            headers: vec![(b"content-type".to_vec(), b"application/json".to_vec())],
            body: CREATED.to_vec(),
            delay_ms: 200,
        }])
}

fn debug_host(profile: Profile, config: &str) -> Host {
    let host = Host::builder()
        .profile(profile)
        .log_level(LogLevel::Debug)
        .config(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(host.configured(), "{:?}", host.logs());
    host
}

fn state(x: &Exchange, name: &str) -> Option<String> {
    x.filter_state
        .get(&format!("wasm.{name}"))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn counter(host: &mut Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

fn lines_with(host: &Host, level: LogLevel, needle: &str) -> Vec<String> {
    host.logs()
        .into_iter()
        .filter(|l| l.level == level && l.message.contains(needle))
        .map(|l| l.message)
        .collect()
}

#[test]
fn each_phase_is_counted_published_and_logged_at_debug_only() {
    for keyed in [false, true] {
        let mut host = debug_host(Profile::Envoy, if keyed { KEYED } else { "" });
        for (i, leave) in PHASES.into_iter().enumerate() {
            let key = format!("k-phase-{i}");
            let x = host.exchange(leave.apply(post(keyed.then_some(key.as_str()))));
            let phase = leave.phase_name().unwrap_or_default();
            assert!(x.client_aborted && !x.complete && !x.stalled, "{leave:?}");
            assert_eq!(x.flags, 0x4000, "{leave:?}: Envoy logs DC");
            assert_eq!(
                state(&x, "resetguard_outcome").as_deref(),
                Some("client_abort"),
                "{leave:?}"
            );
            assert_eq!(state(&x, "resetguard_code").as_deref(), Some("499"));
            assert_eq!(state(&x, "resetguard_abort_phase").as_deref(), Some(phase));
            assert_eq!(
                counter(&mut host, &format!("resetguard.client_abort.{phase}")),
                1,
                "{leave:?} keyed={keyed}: {:?}",
                host.metrics()
            );
            assert_eq!(
                counter(&mut host, "resetguard.outcome.client_abort"),
                i as i64 + 1
            );
            let logged = lines_with(&host, LogLevel::Debug, &format!("[{phase}] POST /orders"));
            assert_eq!(logged.len(), 1, "{leave:?}: {:?}", host.logs());
            assert!(
                !logged[0].contains(&key),
                "keys are never logged: {logged:?}"
            );
            match leave {
                // The headers went upstream, the body never completed: Envoy resets that request.
                Leave::BeforeRequestComplete => {
                    assert_eq!((x.upstream_attempts(), x.upstream_headers_only()), (0, 1));
                    assert_eq!(x.status, None);
                }
                Leave::AwaitingUpstream => {
                    assert_eq!((x.upstream_attempts(), x.status), (1, None));
                }
                _ => assert_eq!((x.upstream_attempts(), x.status), (1, Some(201))),
            }
        }
        assert_eq!(counter(&mut host, "resetguard.outcome.completed"), 0);
        assert!(
            host.logs_at(LogLevel::Info)
                .iter()
                .all(|l| !l.contains("client_abort")),
            "nothing above debug: {:?}",
            host.logs_at(LogLevel::Info)
        );
    }
}

#[test]
fn the_log_level_is_configurable_but_never_above_info() {
    for (config, level, lines) in [
        ("", LogLevel::Debug, 3),
        (
            r#"{"client_abort": {"log_level": "info"}}"#,
            LogLevel::Info,
            3,
        ),
        (
            r#"{"client_abort": {"log_level": "off"}}"#,
            LogLevel::Debug,
            0,
        ),
    ] {
        let mut host = debug_host(Profile::Envoy, config);
        for leave in PHASES {
            host.exchange(leave.apply(post(None)));
        }
        assert_eq!(
            lines_with(&host, level, "client_abort").len(),
            lines,
            "{config}: {:?}",
            host.logs()
        );
        assert!(host.logs_at(LogLevel::Warn).is_empty(), "{config}");
        assert_eq!(counter(&mut host, "resetguard.outcome.client_abort"), 3);
    }
    // At Envoy's default info level the default configuration writes nothing for an abort.
    let mut host = envoy();
    host.exchange(Leave::AwaitingUpstream.apply(post(None)));
    assert!(!host
        .logs()
        .iter()
        .any(|l| l.message.contains("client_abort")));
}

#[test]
fn an_upstream_reset_keeps_its_own_counter_level_and_no_abort_code() {
    let mut host = envoy();
    let x =
        host.exchange(Request::post("/", "b").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!(x.status, Some(503));
    assert_eq!(
        state(&x, "resetguard_outcome").as_deref(),
        Some("upstream_reset")
    );
    assert_eq!(state(&x, "resetguard_code"), None);
    assert_eq!(state(&x, "resetguard_abort_phase"), None);
    assert_eq!(counter(&mut host, "resetguard.outcome.client_abort"), 0);
    assert_eq!(
        lines_with(&host, LogLevel::Info, "upstream_reset POST /").len(),
        1
    );
}

#[test]
fn a_clean_request_reads_no_property_and_publishes_nothing() {
    let mut host = envoy();
    let x = host.exchange(post(None));
    assert_eq!(x.status, Some(201));
    // The one read is the route's override lookup at request headers (NOT_FOUND here).
    let reads: Vec<&str> = x.property_reads.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        reads,
        ["xds.route_metadata.filter_metadata.resetguard"],
        "{:?}",
        x.property_reads
    );
    assert!(x.filter_state.is_empty());
    assert_eq!(counter(&mut host, "resetguard.outcome.completed"), 1);
}

/// What a client's retry with the same key got after the first attempt's client left.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// It reached the upstream and got its 201.
    Upstream,
    /// The stored response, without the upstream.
    Replayed,
    /// 409 `client-left`: the request ran or may have; it is not run again.
    ClientLeft,
    /// 409 `outcome-unknown`: it may have run (the host cannot say more); not run again.
    OutcomeUnknown,
}

fn retry_after(host: &mut Host, leave: Leave, key: &str) -> Retry {
    let first = host.exchange(leave.apply(post(Some(key))));
    assert!(first.client_aborted, "{leave:?}");
    let x = host.exchange(post(Some(key)));
    let body = String::from_utf8_lossy(&x.body);
    match (x.status, x.upstream_attempts()) {
        (Some(201), 1) => Retry::Upstream,
        (Some(201), 0) if x.header_str("idempotent-replayed").as_deref() == Some("true") => {
            assert_eq!(x.body, CREATED);
            Retry::Replayed
        }
        (Some(409), 0) if body.contains(":idempotency-client-left\"") => Retry::ClientLeft,
        (Some(409), 0) if body.contains(":idempotency-outcome-unknown\"") => Retry::OutcomeUnknown,
        other => panic!("{leave:?}: unexpected retry answer {other:?} {body}"),
    }
}

#[test]
fn a_keyed_client_that_left_is_not_stuck_behind_its_own_claim() {
    use Leave::*;
    use Retry::*;
    // Envoy reports how the response started (`via_upstream`): the claim follows what ran.
    let envoy_expect = [
        (BeforeRequestComplete, Upstream), // never complete upstream, never claimed
        (AwaitingUpstream, ClientLeft),    // unknown outcome: never run twice (the default)
        (DuringResponse, ClientLeft),      // it ran; the response was cut by the client leaving
        (AfterResponsePassed, Replayed),   // it ran and the whole response was recorded
    ];
    let mut first = host(Profile::Envoy, KEYED);
    for (i, (leave, expect)) in envoy_expect.into_iter().enumerate() {
        let got = retry_after(&mut first, leave, &format!("k-envoy-{i}"));
        assert_eq!(got, expect, "{leave:?}");
    }
    assert_eq!(
        counter(&mut first, "resetguard.idempotency.in_flight_conflicts"),
        0
    );
    assert_eq!(counter(&mut first, "resetguard.idempotency.released"), 0);
    assert_eq!(counter(&mut first, "resetguard.idempotency.replays"), 1);
    // An abort after the response passed the filter is a completed stream to it.
    assert_eq!(counter(&mut first, "resetguard.outcome.client_abort"), 3);

    // `unknown_outcome: release` (opt-in) lets the unknown case run again; what ran still never
    // does.
    let mut releasing = host(
        Profile::Envoy,
        r#"{"idempotency": {"mode": "enforce", "unknown_outcome": "release"}}"#,
    );
    for (i, (leave, expect)) in [
        (BeforeRequestComplete, Upstream),
        (AwaitingUpstream, Upstream),
        (DuringResponse, ClientLeft),
    ]
    .into_iter()
    .enumerate()
    {
        let got = retry_after(&mut releasing, leave, &format!("k-release-{i}"));
        assert_eq!(got, expect, "{leave:?}");
    }
    assert_eq!(
        counter(&mut releasing, "resetguard.idempotency.released"),
        1
    );
}

#[test]
fn hosts_without_response_flags_fall_back_to_the_streams_lifecycle() {
    for profile in [Profile::Kong, Profile::Apisix] {
        let mut host = debug_host(profile, "");
        for leave in PHASES {
            let x = host.exchange(leave.apply(post(None)));
            assert!(x.client_aborted, "{profile:?} {leave:?}");
            assert!(x.filter_state.is_empty(), "{profile:?}: no filter state");
        }
        // Before any response: a client abort, inferred. During the response: not guessed.
        let inferred = lines_with(
            &host,
            LogLevel::Debug,
            "inferred from the stream's lifecycle",
        );
        assert_eq!(inferred.len(), 2, "{profile:?}: {:?}", host.logs());
        assert!(inferred[0].contains("client_abort [before_request_complete] POST /orders"));
        assert!(inferred[1].contains("client_abort [awaiting_upstream] POST /orders"));
        let incomplete = lines_with(&host, LogLevel::Info, "incomplete POST /orders");
        assert_eq!(incomplete.len(), 1, "{profile:?}: {:?}", host.logs());
        assert!(
            !incomplete[0].contains("inferred"),
            "not guessed: {incomplete:?}"
        );
        assert!(host.logs_at(LogLevel::Warn).is_empty(), "{profile:?}");
        assert!(host.metrics().is_empty(), "{profile:?} has no metrics");
    }
}

#[test]
fn hosts_without_code_details_never_run_a_key_twice() {
    // Kong keeps claims in shared data but cannot tell an upstream response from a proxy reply:
    // nothing is stored, and a key whose request reached the upstream (it made an upstream
    // request) completes unreplayable, whatever happened after. APISIX has no store at all, so
    // every retry reaches the upstream (keys are checked, not deduped).
    use Leave::*;
    use Retry::*;
    let kong = [
        (BeforeRequestComplete, Upstream),
        (AwaitingUpstream, OutcomeUnknown),
        (DuringResponse, OutcomeUnknown),
        (AfterResponsePassed, OutcomeUnknown),
    ];
    let mut host = debug_host(Profile::Kong, KEYED);
    for (i, (leave, expect)) in kong.into_iter().enumerate() {
        let got = retry_after(&mut host, leave, &format!("k-kong-{i}"));
        assert_eq!(got, expect, "kong {leave:?}");
    }
    assert!(host.logs_at(LogLevel::Warn).is_empty());
    let mut host = debug_host(Profile::Apisix, KEYED);
    for (i, leave) in PHASES.into_iter().chain([AfterResponsePassed]).enumerate() {
        let got = retry_after(&mut host, leave, &format!("k-apisix-{i}"));
        assert_eq!(got, Upstream, "apisix {leave:?}");
    }
    assert!(host.logs_at(LogLevel::Warn).is_empty());
}

#[test]
fn the_filter_owns_no_per_stream_timer_or_callout_so_nothing_outlives_an_abort() {
    for profile in Profile::ALL {
        let mut host = host(profile, KEYED);
        for (i, leave) in PHASES.into_iter().enumerate() {
            host.exchange(leave.apply(post(Some(&format!("k-{i}")))));
            host.exchange(leave.apply(post(None)));
        }
        // Ticks keep firing on the root context after the streams are gone.
        host.advance(10_000)
            .unwrap_or_else(|e| panic!("{profile:?}: {e}"));
        let vm = host.vm(0);
        assert!(vm.trapped().is_none());
        let state = vm.state();
        assert!(
            state.streams.is_empty() && state.pending.is_empty(),
            "{profile:?}"
        );
        assert!(state.callouts.is_empty(), "{profile:?}");
        assert!(
            state.ticks.keys().all(|root| *root == state.root_context),
            "{profile:?}: only the root context's log-level tick"
        );
        for call in [
            "proxy_http_call",
            "proxy_dispatch_http_call",
            "proxy_set_effective_context",
            "proxy_continue_stream",
        ] {
            assert_eq!(state.calls.get(call), None, "{profile:?} called {call}");
        }
        // The host still serves.
        let after = host.exchange(post(Some("k-after")));
        assert_eq!(after.status, Some(201), "{profile:?}");
    }
}
