//! Envoy semantics the host must reproduce, as measured on Envoy 1.40 (the real-Envoy suite in
//! `envoy/tests` checks the filter against the same behaviours), with hand-written modules.

use crate::wat::{handed, pairs, start, u32_at, IMPORTS};
use host_tests::callout::{RESET_BODY, TIMEOUT_BODY};
use host_tests::{ClusterBehaviour, Host, Profile, Request, UpstreamAction};
use serde_json::json;

fn callout_module(headers: &str) -> String {
    format!(
        r#"
  (data (i32.const 1024) "known")
  (data (i32.const 1040) "unknown")
  (data (i32.const 1100) ":status")
  (data (i32.const 2048) "{headers}")
  (func (export "call") (param $cluster i32) (param $len i32) (param $hlen i32) (result i32)
    (call $http_call (local.get $cluster) (local.get $len) (i32.const 2048) (local.get $hlen)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 64)))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $h i32) (param $b i32) (param $t i32)
    (i32.store (i32.const 200) (local.get $ctx))
    (i32.store (i32.const 204) (local.get $token))
    (i32.store (i32.const 208) (local.get $b))
    (drop (call $get_buffer (i32.const 4) (i32.const 0) (local.get $b) (i32.const 300) (i32.const 304)))
    (drop (call $get_header (i32.const 6) (i32.const 1100) (i32.const 7) (i32.const 308) (i32.const 312))))
"#
    )
}

#[test]
fn http_call_needs_pseudo_headers_and_a_known_cluster_and_replies_like_envoy() {
    let full = pairs(&[(":method", "GET"), (":path", "/x"), (":authority", "a")]);
    let full_len = full.len() / 3;
    let partial = pairs(&[(":method", "GET"), (":path", "/x")]);
    let partial_len = partial.len() / 3;
    let respond = ClusterBehaviour::Respond {
        status: 200,
        headers: vec![],
        body: b"pong".to_vec(),
        delay_ms: 30,
    };
    let mut host = start(
        Host::builder().cluster("known", respond),
        IMPORTS,
        &callout_module(&full),
    );
    assert_eq!(
        host.vm(0)
            .call(1, "call", &[1040, 7, full_len as i32])
            .unwrap(),
        Some(2),
        "unknown cluster"
    );
    assert_eq!(
        host.vm(0)
            .call(1, "call", &[1024, 5, full_len as i32])
            .unwrap(),
        Some(0)
    );
    let token = u32_at(&mut host, 64);
    // Nothing is delivered from inside the call; it arrives after its delay.
    assert_eq!(u32_at(&mut host, 204), 0);
    host.advance(29).unwrap();
    assert_eq!(u32_at(&mut host, 204), 0);
    host.advance(1).unwrap();
    assert_eq!((u32_at(&mut host, 200), u32_at(&mut host, 204)), (1, token));
    assert_eq!(handed(&mut host, 300).1, b"pong");
    assert_eq!(handed(&mut host, 308).1, b"200");

    let mut host = start(
        Host::builder().cluster("known", ClusterBehaviour::Reset),
        IMPORTS,
        &callout_module(&partial),
    );
    assert_eq!(
        host.vm(0)
            .call(1, "call", &[1024, 5, partial_len as i32])
            .unwrap(),
        Some(2),
        "no :authority"
    );
    for (behaviour, status, body) in [
        (ClusterBehaviour::Reset, "503", RESET_BODY.to_string()),
        (ClusterBehaviour::Refuse, "503", "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".to_string()),
        (ClusterBehaviour::Hang, "504", TIMEOUT_BODY.to_string()),
    ] {
        let mut host = start(Host::builder().cluster("known", behaviour), IMPORTS, &callout_module(&full));
        assert_eq!(host.vm(0).call(1, "call", &[1024, 5, full_len as i32]).unwrap(), Some(0));
        host.advance(1000).unwrap();
        assert_eq!(handed(&mut host, 308).1, status.as_bytes());
        assert_eq!(String::from_utf8(handed(&mut host, 300).1).unwrap(), body);
    }
}

const TICK_MODULE: &str = r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 96) (local.get $ctx))
    (i32.store (i32.const 92) (call $set_tick (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param $ctx i32)
    (i32.store (i32.const 400) (local.get $ctx))
    (i32.store (i32.const 404) (i32.add (i32.load (i32.const 404)) (i32.const 1)))
    (i32.store (i32.const 408) (call $set_effective (i32.load (i32.const 96))))
    (drop (call $continue (i32.const 0))))
"#;

#[test]
fn ticks_belong_to_the_root_context_which_can_resume_a_stream() {
    let mut host = start(Host::builder(), IMPORTS, TICK_MODULE);
    let x = host.exchange(Request::get("/"));
    assert_eq!(x.status, Some(200), "the tick resumed the paused request");
    assert_eq!(u32_at(&mut host, 92), 0);
    assert_eq!(u32_at(&mut host, 400), 1, "ticks go to the root context");
    assert_eq!(u32_at(&mut host, 404), 1);
    assert_eq!(
        u32_at(&mut host, 408),
        0,
        "live stream: set_effective_context OK"
    );
    // The stream is gone now: set_effective_context answers BAD_ARGUMENT.
    host.advance(10).unwrap();
    assert_eq!(u32_at(&mut host, 404), 2);
    assert_eq!(u32_at(&mut host, 408), 2);
    // APISIX has no ticks: the request stays paused until the client gives up.
    let mut apisix = start(
        Host::builder().profile(Profile::Apisix),
        IMPORTS,
        TICK_MODULE,
    );
    let x = apisix.exchange(Request::get("/").abort_after(1000));
    assert_eq!(u32_at(&mut apisix, 92), 12);
    assert!(x.client_aborted);
}

const LOG_MODULE: &str = r#"
  (data (i32.const 1024) "response\00code")
  (data (i32.const 1040) "response\00flags")
  (data (i32.const 1056) "response\00code_details")
  (data (i32.const 1088) "xds\00route_name")
  (data (i32.const 1104) "xds\00route_metadata\00filter_metadata\00resetguard\00mode")
  (data (i32.const 1160) "route_metadata\00filter_metadata\00resetguard\00mode")
  (func (export "proxy_on_log") (param $ctx i32)
    (i32.store (i32.const 500) (call $get_property (i32.const 1024) (i32.const 13) (i32.const 520) (i32.const 524)))
    (i32.store (i32.const 504) (call $get_property (i32.const 1040) (i32.const 14) (i32.const 528) (i32.const 532)))
    (i32.store (i32.const 508) (call $get_property (i32.const 1056) (i32.const 21) (i32.const 536) (i32.const 540))))
  (func (export "route") (result i32)
    (i32.store (i32.const 600) (call $get_property (i32.const 1088) (i32.const 14) (i32.const 620) (i32.const 624)))
    (i32.store (i32.const 604) (call $get_property (i32.const 1104) (i32.const 50) (i32.const 628) (i32.const 632)))
    (call $get_property (i32.const 1160) (i32.const 46) (i32.const 636) (i32.const 640)))
"#;

fn logged(host: &mut Host) -> (u32, Vec<u8>, Vec<u8>, String) {
    (
        u32_at(host, 500),
        handed(host, 520).1,
        handed(host, 528).1,
        String::from_utf8(handed(host, 536).1).unwrap(),
    )
}

#[test]
fn on_log_sees_envoy_stream_info_for_normal_reset_and_aborted_streams() {
    let mut host = start(Host::builder(), IMPORTS, LOG_MODULE);
    host.exchange(Request::get("/"));
    let (status, code, flags, details) = logged(&mut host);
    assert_eq!(status, 0);
    assert_eq!(code, 200u64.to_le_bytes());
    assert_eq!(
        flags,
        0u64.to_le_bytes(),
        "integers are 8-byte little-endian"
    );
    assert_eq!(details, "via_upstream");

    let x = host.exchange(Request::get("/").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!(x.status, Some(503));
    assert_eq!(x.body, RESET_BODY.as_bytes());
    let (_, code, flags, _) = logged(&mut host);
    assert_eq!(code, 503u64.to_le_bytes());
    assert_eq!(u64::from_le_bytes(flags.try_into().unwrap()), 0x40, "UC");

    let slow = UpstreamAction::Respond {
        status: 200,
        headers: vec![],
        body: b"late".to_vec(),
        delay_ms: 100,
    };
    let x = host.exchange(Request::get("/").upstream(vec![slow]).abort_after(20));
    assert!(x.client_aborted && x.status.is_none());
    assert_eq!(x.upstream_attempts(), 1);
    assert_eq!(
        u32_at(&mut host, 500),
        1,
        "response.code absent on a client abort"
    );
    assert_eq!(u32_at(&mut host, 504), 0);
    let flags_at = u32_at(&mut host, 528);
    let flags = host.vm(0).read_memory(flags_at, 8);
    assert_eq!(u64::from_le_bytes(flags.try_into().unwrap()), 0x4000, "DC");
    assert_eq!(
        String::from_utf8(handed(&mut host, 536).1).unwrap(),
        "downstream_remote_disconnect"
    );

    // Kong and APISIX have no Envoy stream-info flags or details.
    for profile in [Profile::Kong, Profile::Apisix] {
        let mut other = start(Host::builder().profile(profile), IMPORTS, LOG_MODULE);
        other.exchange(Request::get("/"));
        assert_eq!(
            (u32_at(&mut other, 504), u32_at(&mut other, 508)),
            (1, 1),
            "{profile:?}"
        );
    }
}

#[test]
fn route_metadata_lives_under_xds() {
    let builder = Host::builder().route("r1", json!({"resetguard": {"mode": "strict"}}));
    let mut host = start(builder, IMPORTS, LOG_MODULE);
    let flight = host.vm(0).begin(Request::get("/")).unwrap();
    let old_path = host.vm(0).call(flight.context, "route", &[]).unwrap();
    assert_eq!(u32_at(&mut host, 600), 0);
    assert_eq!(handed(&mut host, 620).1, b"r1");
    assert_eq!(u32_at(&mut host, 604), 0);
    assert_eq!(handed(&mut host, 628).1, b"strict");
    assert_eq!(
        old_path,
        Some(1),
        "the pre-xds route_metadata path answers nothing"
    );
    host.vm(0).finish(flight).unwrap();
}

const ARMING_MODULE: &str = r#"
  (data (i32.const 1024) "x-envoy-retry-on")
  (data (i32.const 1048) "x-envoy-max-retries")
  (data (i32.const 1072) "3")
  (data (i32.const 1080) "reset-before-request")
  (data (i32.const 1104) "reset")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (drop (call $replace_header (i32.const 0) (i32.const 1024) (i32.const 16)
      (i32.load (i32.const 80)) (i32.load (i32.const 84))))
    (drop (call $replace_header (i32.const 0) (i32.const 1048) (i32.const 19) (i32.const 1072) (i32.const 1)))
    (i32.const 0))
  (func (export "arm") (param $p i32) (param $l i32)
    (i32.store (i32.const 80) (local.get $p))
    (i32.store (i32.const 84) (local.get $l)))
"#;

#[test]
fn the_router_consumes_filter_set_retry_headers_and_retries_by_condition() {
    let mut host = start(Host::builder(), IMPORTS, ARMING_MODULE);
    host.vm(0).call(1, "arm", &[1104, 5]).unwrap();
    let plan = vec![
        UpstreamAction::ResetBeforeHeaders,
        UpstreamAction::ResetBeforeHeaders,
        UpstreamAction::ok("fine"),
    ];
    let x = host.exchange(Request::get("/").upstream(plan.clone()));
    assert_eq!((x.status, x.upstream_attempts()), (Some(200), 3));
    for attempt in &x.upstream {
        assert!(
            !attempt
                .headers
                .iter()
                .any(|(k, _)| k.starts_with(b"x-envoy-")),
            "router headers leaked upstream"
        );
    }
    let x = host.exchange(Request::get("/").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(503), 4),
        "max 3 retries"
    );
    assert_eq!(
        x.flags & 0x8040,
        0x8040,
        "UC + URX once the retries are exhausted"
    );

    // reset-before-request: a request the upstream read is not retried; a refused connect is.
    host.vm(0).call(1, "arm", &[1080, 20]).unwrap();
    let x = host.exchange(Request::post("/", "b").upstream(plan));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 1));
    let x = host.exchange(
        Request::post("/", "b").upstream(vec![UpstreamAction::Refuse, UpstreamAction::ok("ok")]),
    );
    assert_eq!(
        (x.status, x.router_attempts, x.upstream_attempts()),
        (Some(200), 2, 1)
    );
    assert_eq!(x.upstream[0].body, b"b", "the router re-sends the body");
    let x = host.exchange(
        Request::get("/").upstream(vec![UpstreamAction::ResetMidBody {
            status: 200,
            headers: vec![],
            body_prefix: b"par".to_vec(),
        }]),
    );
    assert_eq!(
        (
            x.status,
            x.complete,
            x.body.as_slice(),
            x.upstream_attempts()
        ),
        (Some(200), false, &b"par"[..], 1)
    );
}

const LOCAL_MODULE: &str = r#"
  (data (i32.const 1024) "denied")
  (data (i32.const 1040) "no")
  (data (i32.const 2048) "{headers}")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 700) (call $local_response (i32.const 403) (i32.const 1024) (i32.const 6)
      (i32.const 1040) (i32.const 2) (i32.const 2048) (i32.const {len}) (i32.const -1)))
    ;; Still inside the callback: nothing may have been delivered yet.
    (i32.store (i32.const 704) (i32.load (i32.const 708)))
    (i32.const 1))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 708) (i32.add (i32.load (i32.const 708)) (i32.const 1)))
    (i32.const 0))
"#;

#[test]
fn local_responses_are_queued_and_pass_through_the_response_callbacks() {
    let headers = pairs(&[("x-reason", "policy")]);
    let module = LOCAL_MODULE
        .replace("{headers}", &headers)
        .replace("{len}", &(headers.len() / 3).to_string());
    let mut host = start(Host::builder(), IMPORTS, &module);
    let x = host.exchange(Request::get("/"));
    assert_eq!(
        (x.status, x.body.as_slice(), x.upstream_attempts()),
        (Some(403), &b"no"[..], 0)
    );
    assert_eq!(x.header_str("x-reason").as_deref(), Some("policy"));
    assert_eq!(x.details, "denied");
    assert_eq!(u32_at(&mut host, 700), 0);
    assert_eq!(
        u32_at(&mut host, 704),
        0,
        "the reply was not re-entered into the module"
    );
    assert_eq!(
        u32_at(&mut host, 708),
        1,
        "the local reply went through on_response_headers"
    );
    let mut apisix = start(Host::builder().profile(Profile::Apisix), IMPORTS, &module);
    let x = apisix.exchange(Request::get("/"));
    assert_eq!(x.status, Some(403));
    assert_eq!(
        x.header("x-reason"),
        None,
        "APISIX drops local response headers"
    );
}

const WASI_MODULE: &str = r#"
  (data (i32.const 1028) "hello")
  (func (export "go") (result i32)
    (drop (call $random_get (i32.const 800) (i32.const 16)))
    (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 820)))
    (call $fd_write (i32.const 1) (i32.const 1040) (i32.const 1) (i32.const 830)))
  (data (i32.const 1040) "\04\04\00\00\05\00\00\00")
"#;

#[test]
fn wasi_is_deterministic_and_captured() {
    let run = |seed: u64| {
        let mut host = start(Host::builder().seed(seed), IMPORTS, WASI_MODULE);
        assert_eq!(host.vm(0).call(1, "go", &[]).unwrap(), Some(0));
        let random = host.vm(0).read_memory(800, 16);
        let clock = host.vm(0).read_memory(820, 8);
        let out = host.shared().stdout.clone();
        (random, clock, out)
    };
    let (a, clock, out) = run(1);
    assert_eq!(a, run(1).0, "same seed, same bytes");
    assert_ne!(a, run(2).0);
    assert_eq!(
        u64::from_le_bytes(clock.try_into().unwrap()),
        host_tests::state::EPOCH_NS
    );
    assert_eq!(out, b"hello");
}
