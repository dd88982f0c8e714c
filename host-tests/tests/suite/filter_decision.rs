//! `resetguard_core::decision::decide`, run natively on a request, says exactly what the .wasm then
//! does with it in the host: the router headers it sets, the client retry headers it strips, and
//! the status it answers itself. This is what makes `resetguard explain` truthful.

use host_tests::{Host, Profile, Request};
use resetguard_core::config::Config;
use resetguard_core::decision::{decide, Arming, Policy};

const CONFIGS: [&str; 6] = [
    "",
    r#"{"retry": {"max_retries": 0}}"#,
    r#"{"retry": {"max_retries": 3, "on": ["reset", "5xx", "connect-failure"],
                  "retriable_status_codes": [503], "per_try_timeout_ms": 250}}"#,
    r#"{"retry": {"trust_client_retry_headers": true}}"#,
    r#"{"idempotency": {"path_prefixes": ["/pay"], "retry_keyed_requests": true,
                        "max_request_body_bytes": 16, "scope_headers": ["authorization"]}}"#,
    r#"{"idempotency": {"mode": "report", "required_methods": ["POST", "PATCH"]}}"#,
];

const ROUTER_HEADERS: [&str; 4] = [
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-retriable-status-codes",
];

/// Requests covering methods, client retry headers, keys (valid, malformed, repeated), gRPC and
/// declared body sizes; `n` makes every key unique so the store never answers first.
fn requests(n: usize) -> Vec<Request> {
    let key = format!("\"k-{n}\"");
    let body = |r: Request, len: usize| r.body(&vec![b'x'; len]);
    vec![
        Request::get("/"),
        Request::new("PUT", "/pay/1"),
        Request::get("/")
            .header("x-envoy-retry-on", "5xx")
            .header("x-envoy-max-retries", "7"),
        body(Request::new("POST", "/pay"), 4),
        body(
            Request::new("POST", "/pay").header("idempotency-key", &key),
            4,
        ),
        body(
            Request::new("POST", "/pay/x").header("idempotency-key", "a b"),
            4,
        ),
        body(
            Request::new("POST", "/pay")
                .header("idempotency-key", &key)
                .header("idempotency-key", "b"),
            4,
        ),
        body(Request::new("POST", "/other"), 4),
        body(
            Request::new("POST", "/pay")
                .header("idempotency-key", &format!("big-{n}"))
                .header("content-length", "64"),
            64,
        ),
        body(
            Request::new("POST", "/pay").header("content-type", "application/grpc"),
            4,
        ),
        body(
            Request::new("PATCH", "/pay/2").header("x-envoy-retry-on", "reset"),
            4,
        ),
        Request::new("POST", "/pay").header("idempotency-key", &format!("nobody-{n}")),
    ]
}

fn header(headers: &[(Vec<u8>, Vec<u8>)], name: &str) -> Option<String> {
    host_tests::request::find(&headers.to_vec(), name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn the_native_decision_is_what_the_filter_does() {
    let mut checked = 0;
    for config in CONFIGS {
        let policy = Policy::new(Config::parse(config.as_bytes()).unwrap());
        let mut host = crate::common::host(Profile::Envoy, config);
        for (i, request) in requests(checked).into_iter().enumerate() {
            let sent: Vec<(Vec<u8>, Vec<u8>)> = request
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            let end_of_stream = request.body_chunks.is_empty();
            let decision = decide(policy.as_ref(), &sent, end_of_stream);
            let shown: Vec<String> = sent
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect();
            let what = format!("config {config:?}, request {i}: {shown:?}");

            let flight = host.vm(0).begin(request).unwrap();
            let seen = host.vm(0).state().streams[&flight.context]
                .request_headers
                .clone();
            let x = host.vm(0).finish(flight).unwrap();

            let local = x.filter_local_reply.then_some(x.status).flatten();
            assert_eq!(
                decision.local_reply(),
                local.map(u32::from),
                "local reply: {what}"
            );
            let armed = |name: &str| match &decision.arming {
                Arming::Headers(plan) => plan
                    .headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone()),
                Arming::ClientSteers | Arming::Nothing => None,
            };
            // A stripped client header is gone, unless the filter set its own value.
            for name in decision.stripped() {
                let name = String::from_utf8_lossy(name);
                assert_eq!(
                    header(&seen, &name),
                    armed(&name),
                    "{name} stripped: {what}"
                );
            }
            for name in ROUTER_HEADERS {
                // The filter's value, or whatever the client sent, kept only when trusted.
                let expected = armed(name).or_else(|| {
                    header(&sent, name).filter(|_| decision.client_retry_headers_trusted)
                });
                assert_eq!(header(&seen, name), expected, "{name}: {what}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, CONFIGS.len() * requests(0).len());
}

/// The same holds on a route whose metadata overrides the plugin config: decide on the merged
/// config (`RouteOverride::apply`) and the filter on that route agree.
#[test]
fn the_decision_on_a_merged_config_is_what_the_filter_does_on_that_route() {
    use resetguard_core::config::route_override::RouteOverride;
    let plugin = r#"{"retry": {"max_retries": 3}, "idempotency": {}}"#;
    let route = serde_json::json!({"retry": {"on": ["connect-failure"]},
                                   "idempotency": {"mode": "report"}});
    let filter_json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let merged = RouteOverride::from_value(&filter_json(&route.to_string()))
        .unwrap()
        .apply(&filter_json(plugin))
        .unwrap()
        .unwrap();
    let policy = Policy::new(merged);
    let mut host = Host::envoy(plugin);
    let request = || {
        Request::new("POST", "/orders")
            .body(b"{}")
            .route("tuned", serde_json::json!({ "resetguard": route.clone() }))
    };
    let sent: Vec<(Vec<u8>, Vec<u8>)> = request().headers;
    let decision = decide(policy.as_ref(), &sent, false);
    assert_eq!(decision.local_reply(), None, "report mode answers nothing");
    let Arming::Headers(plan) = decision.arming else {
        panic!("connect-failure is armed for a POST");
    };
    let flight = host.vm(0).begin(request()).unwrap();
    let seen = host.vm(0).state().streams[&flight.context]
        .request_headers
        .clone();
    let x = host.vm(0).finish(flight).unwrap();
    assert_eq!(x.status, Some(200));
    for (name, value) in &plan.headers {
        assert_eq!(
            header(&seen, name).as_deref(),
            Some(value.as_str()),
            "{name}"
        );
    }
    assert_eq!(
        header(&seen, "x-envoy-retry-on").as_deref(),
        Some("connect-failure")
    );
}
