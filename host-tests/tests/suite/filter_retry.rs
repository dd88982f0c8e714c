//! Retry arming by method (RFC 9110 §9.2.2) and client retry headers, through the router model.

use crate::common::*;
use host_tests::{Profile, Request, UpstreamAction};

const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

fn resets_then_ok(n: usize) -> Vec<UpstreamAction> {
    let mut plan = vec![UpstreamAction::ResetBeforeHeaders; n];
    plan.push(UpstreamAction::ok("ok"));
    plan
}

/// The retry policy the filter armed, read from the router's view of the request.
fn armed(host: &mut host_tests::Host, request: Request) -> (Option<String>, Option<String>) {
    let flight = host.vm(0).begin(request).unwrap();
    let headers = host.vm(0).state().streams[&flight.context]
        .request_headers
        .clone();
    host.vm(0).finish(flight).unwrap();
    let get = |n: &str| {
        host_tests::request::find(&headers, n).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    (get("x-envoy-retry-on"), get("x-envoy-max-retries"))
}

#[test]
fn idempotent_methods_get_full_reset_retries_by_default() {
    let mut host = envoy();
    for method in IDEMPOTENT {
        let (on, max) = armed(&mut host, Request::new(method, "/r"));
        assert_eq!(
            on.as_deref(),
            Some("reset,connect-failure,refused-stream"),
            "{method}"
        );
        assert_eq!(max.as_deref(), Some("2"), "{method}");
        let x = host.exchange(Request::new(method, "/r").upstream(resets_then_ok(2)));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(200), 3),
            "{method}"
        );
        assert_eq!(
            upstream_header(&x, 2, "x-envoy-retry-on"),
            None,
            "consumed by the router"
        );
    }
    assert_eq!(host.metric("resetguard.requests.idempotent"), Some(12));
    assert_eq!(host.metric("resetguard.retry.armed_full"), Some(12));
}

#[test]
fn non_idempotent_methods_are_retried_only_when_unsent() {
    let mut host = envoy();
    for method in ["POST", "PATCH"] {
        let (on, _) = armed(&mut host, Request::new(method, "/r").body(b"x"));
        assert_eq!(
            on.as_deref(),
            Some("reset-before-request,connect-failure,refused-stream"),
            "{method}"
        );
        // The upstream read the request, then reset: never replayed.
        let x = host.exchange(
            Request::new(method, "/r")
                .body(b"x")
                .upstream(resets_then_ok(1)),
        );
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(503), 1),
            "{method}"
        );
        // A refused connect never reached the application: safe to retry.
        let x = host.exchange(
            Request::new(method, "/r")
                .body(b"x")
                .upstream(vec![UpstreamAction::Refuse, UpstreamAction::ok("ok")]),
        );
        assert_eq!(
            (x.status, x.router_attempts, x.upstream_attempts()),
            (Some(200), 2, 1),
            "{method}"
        );
        let x = host.exchange(Request::new(method, "/r").body(b"x").upstream(vec![
            UpstreamAction::RefusedStream,
            UpstreamAction::ok("ok"),
        ]));
        assert_eq!(x.status, Some(200), "{method}: refused-stream is armed");
    }
    assert_eq!(host.metric("resetguard.requests.non_idempotent"), Some(8));
    assert_eq!(host.metric("resetguard.retry.armed_unsent_only"), Some(8));
}

#[test]
fn max_retries_bounds_the_attempts_and_zero_arms_nothing() {
    let mut host = host(Profile::Envoy, r#"{"retry": {"max_retries": 5}}"#);
    let x = host.exchange(Request::get("/").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 6));
    let mut host = crate::common::host(Profile::Envoy, r#"{"retry": {"max_retries": 0}}"#);
    assert_eq!(armed(&mut host, Request::get("/")), (None, None));
    let x = host.exchange(Request::get("/").upstream(resets_then_ok(1)));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 1));
}

#[test]
fn retriable_status_codes_and_per_try_timeout_reach_the_router_for_idempotent_only() {
    let config = r#"{"retry": {"retriable_status_codes": [503], "per_try_timeout_ms": 100}}"#;
    let mut host = host(Profile::Envoy, config);
    let busy = UpstreamAction::Respond {
        status: 503,
        headers: vec![],
        body: b"busy".to_vec(),
        delay_ms: 0,
    };
    let x = host.exchange(Request::get("/").upstream(vec![busy.clone(), UpstreamAction::ok("ok")]));
    assert_eq!((x.status, x.upstream_attempts()), (Some(200), 2));
    let slow = UpstreamAction::Respond {
        status: 200,
        headers: vec![],
        body: b"slow".to_vec(),
        delay_ms: 500,
    };
    let x = host.exchange(Request::get("/").upstream(vec![slow.clone(), UpstreamAction::ok("ok")]));
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(200), 2),
        "per-try timeout then retry"
    );
    let x = host.exchange(Request::post("/", "b").upstream(vec![busy, UpstreamAction::ok("ok")]));
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(503), 1),
        "POST: no status retries"
    );
    let x = host.exchange(Request::post("/", "b").upstream(vec![slow]));
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(200), 1),
        "POST: no per-try timeout"
    );
}

#[test]
fn client_retry_headers_are_stripped_unless_trusted() {
    let mut host = envoy();
    let sneaky = Request::post("/pay", "x")
        .header("x-envoy-retry-on", "5xx,reset")
        .header("X-Envoy-Max-Retries", "10")
        .header("x-envoy-retriable-status-codes", "500")
        .upstream(resets_then_ok(3));
    let x = host.exchange(sneaky.clone());
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(503), 1),
        "the client's policy was not honoured"
    );
    assert_eq!(
        upstream_header(&x, 0, "x-envoy-retriable-status-codes"),
        None
    );
    assert_eq!(
        host.metric("resetguard.retry.client_headers_stripped"),
        Some(1)
    );
    let x = host.exchange(Request::get("/").header("x-envoy-upstream-rq-per-try-timeout-ms", "1"));
    assert_eq!(x.status, Some(200));
    assert_eq!(
        host.metric("resetguard.retry.client_headers_stripped"),
        Some(2)
    );

    let mut trusting = crate::common::host(
        Profile::Envoy,
        r#"{"retry": {"trust_client_retry_headers": true}}"#,
    );
    let x = trusting.exchange(sneaky);
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(200), 4),
        "a trusted client steers retries"
    );
    assert_eq!(
        trusting.metric("resetguard.retry.client_headers_stripped"),
        Some(0)
    );
}

#[test]
fn operator_listed_methods_and_conditions_are_honoured() {
    let config =
        r#"{"retry": {"idempotent_methods": ["GET", "POST"], "on": ["reset"], "max_retries": 1}}"#;
    let mut host = host(Profile::Envoy, config);
    assert!(
        host.logs_at(host_tests::LogLevel::Warn)
            .iter()
            .any(|l| l.contains("POST")),
        "a warning names POST"
    );
    let (on, max) = armed(&mut host, Request::post("/", "b"));
    assert_eq!((on.as_deref(), max.as_deref()), (Some("reset"), Some("1")));
    let (on, _) = armed(&mut host, Request::new("PUT", "/"));
    assert_eq!(
        on.as_deref(),
        Some("reset-before-request"),
        "PUT is not listed: `reset` narrows to its unsent form"
    );
}
