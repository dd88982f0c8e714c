//! Per-route overrides through route metadata (`metadata.filter_metadata.resetguard`), served per
//! request by the mock host in Envoy 1.40's encoding: the effective policy of each route, the
//! `disabled` opt-out, invalid overrides falling back (reported once), and what a lookup costs.

use crate::common::*;
use host_tests::fuel;
use host_tests::{LogLevel, Profile, Request, UpstreamAction};
use serde_json::{json, Value};

const ROUTE_METADATA: &str = "xds.route_metadata.filter_metadata.resetguard";
const REJECTED: &str = "resetguard.config.route_override_rejected";

fn on_route(request: Request, name: &str, resetguard: Value) -> Request {
    request.route(name, json!({ "resetguard": resetguard }))
}

fn reset_then_ok() -> Vec<UpstreamAction> {
    vec![UpstreamAction::ResetBeforeHeaders, UpstreamAction::ok("ok")]
}

/// The one warning about this route's override; it must say each of `fragments`.
fn the_one_warning(host: &host_tests::Host, route: &str, fragments: &[&str]) {
    let warnings: Vec<String> = host
        .logs_at(LogLevel::Warn)
        .into_iter()
        .filter(|l| l.contains(&format!("route {route}:")) && l.contains("override"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for fragment in fragments {
        assert!(
            warnings[0].contains(fragment),
            "{fragment}: {}",
            warnings[0]
        );
    }
}

#[test]
fn each_route_gets_the_plugin_config_merged_with_its_override() {
    let mut host = host(
        Profile::Envoy,
        r#"{"retry": {"max_retries": 3, "on": ["reset"]}}"#,
    );
    // No override: the plugin's 3 retries.
    let x = host.exchange(Request::get("/").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 4));
    // max_retries 0 on this route: nothing armed, one attempt.
    let x = host.exchange(on_route(
        Request::get("/").upstream(reset_then_ok()),
        "no-retry",
        json!({"retry": {"max_retries": 0}}),
    ));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 1));
    // Only max_retries is overridden: `on` still comes from the plugin (1 retry of a reset).
    let x = host.exchange(on_route(
        Request::get("/").upstream(vec![UpstreamAction::ResetBeforeHeaders; 3]),
        "one-retry",
        json!({"retry": {"max_retries": 1}}),
    ));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 2));
    // The override is per route: the plugin config still applies elsewhere.
    let x = host.exchange(Request::get("/").upstream(reset_then_ok()));
    assert_eq!((x.status, x.upstream_attempts()), (Some(200), 2));
    assert_eq!(host.metric("resetguard.retry.armed_full"), Some(3));
    assert_eq!(host.metric(REJECTED), Some(0));
    // Each override is resolved once per worker and says so.
    let applied: Vec<String> = host
        .logs_at(LogLevel::Info)
        .into_iter()
        .filter(|l| l.contains("override applied"))
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(
        applied[0].contains("route no-retry: override applied: max_retries=0"),
        "{applied:?}"
    );
}

#[test]
fn a_risky_override_is_warned_about_like_the_plugin_config() {
    let mut host = envoy();
    let x = host.exchange(on_route(
        Request::post("/orders", "{}").upstream(reset_then_ok()),
        "risky",
        json!({"retry": {"idempotent_methods": ["GET", "POST"]}}),
    ));
    assert_eq!(
        (x.status, x.upstream_attempts()),
        (Some(200), 2),
        "POST retried as told"
    );
    let warnings = host.logs_at(LogLevel::Warn);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("route risky: retry.idempotent_methods lists POST"),
        "{warnings:?}"
    );
    assert_eq!(host.metric(REJECTED), Some(0));
}

#[test]
fn a_disabled_route_is_passed_through_untouched() {
    let mut host = envoy();
    let off = |request: Request| on_route(request, "off", json!({"disabled": true}));
    let flight = host
        .vm(0)
        .begin(off(Request::get("/").header("x-envoy-retry-on", "5xx")))
        .unwrap();
    let seen = host.vm(0).state().streams[&flight.context]
        .request_headers
        .clone();
    host.vm(0).finish(flight).unwrap();
    let header = |n: &str| host_tests::request::find(&seen, n).map(|v| v.to_vec());
    assert_eq!(
        header("x-envoy-retry-on"),
        Some(b"5xx".to_vec()),
        "not stripped"
    );
    assert_eq!(header("x-envoy-max-retries"), None, "nothing armed");
    let before = host.metrics();
    let x = host.exchange(off(Request::get("/").upstream(reset_then_ok())));
    assert_eq!((x.status, x.upstream_attempts()), (Some(503), 1));
    assert!(x.filter_state.is_empty(), "{:?}", x.filter_state);
    assert_eq!(
        host.metrics(),
        before,
        "no counter moves on a disabled route"
    );
    let reads: Vec<&str> = x.property_reads.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(reads, [ROUTE_METADATA], "one read, then nothing");
}

#[test]
fn an_invalid_override_falls_back_to_the_plugin_config_and_is_reported_once() {
    let mut host = envoy();
    let bad = json!({"retry": {"max_retries": 11}});
    for _ in 0..5 {
        let x = host.exchange(on_route(
            Request::get("/").upstream(reset_then_ok()),
            "bad",
            bad.clone(),
        ));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(200), 2),
            "plugin's retries"
        );
    }
    the_one_warning(&host, "bad", &["`retry.max_retries`", "from 0 to 10"]);
    assert_eq!(host.metric(REJECTED), Some(1));
    assert_eq!(host.metric("resetguard.retry.armed_full"), Some(5));

    // Another broken override is another report; a fixed setting names its path.
    let mut host = host_with_idempotency();
    let x = host.exchange(on_route(
        Request::get("/"),
        "shards",
        json!({"idempotency": {"shards": 2}}),
    ));
    assert_eq!(x.status, Some(200));
    the_one_warning(
        &host,
        "shards",
        &["`idempotency.shards`", "cannot vary per route"],
    );
}

fn host_with_idempotency() -> host_tests::Host {
    host(Profile::Envoy, r#"{"idempotency": {}}"#)
}

#[test]
fn metadata_envoy_cannot_serialize_falls_back_and_is_reported_once_per_route() {
    // A null anywhere in the route's struct makes Envoy answer SERIALIZATION_FAILURE.
    let mut host = envoy();
    let with_null = json!({"retry": {"max_retries": null}});
    for _ in 0..3 {
        let x = host.exchange(on_route(
            Request::get("/").upstream(reset_then_ok()),
            "nulls",
            with_null.clone(),
        ));
        assert_eq!((x.status, x.upstream_attempts()), (Some(200), 2));
    }
    the_one_warning(&host, "nulls", &["null"]);
    assert_eq!(host.metric(REJECTED), Some(1));
}

#[test]
fn routes_can_turn_idempotency_off_or_narrow_it() {
    let mut host = host_with_idempotency();
    let post = || Request::post("/orders", "{}");
    assert_eq!(
        host.exchange(post()).status,
        Some(400),
        "plugin: key required"
    );
    let x = host.exchange(on_route(
        post(),
        "open",
        json!({"idempotency": {"enabled": false}}),
    ));
    assert_eq!((x.status, x.upstream_attempts()), (Some(200), 1));
    let x = host.exchange(on_route(
        post(),
        "report",
        json!({"idempotency": {"mode": "report"}}),
    ));
    assert_eq!(x.status, Some(200), "report mode lets it through");
    assert_eq!(host.metric("resetguard.idempotency.report_only"), Some(1));
    // Keyed requests on a route still dedupe through the plugin's store.
    let keyed = || {
        on_route(
            post().header("idempotency-key", "k1"),
            "keyed",
            json!({"idempotency": {"retry_keyed_requests": true}}),
        )
    };
    let first = host.exchange(keyed());
    assert_eq!((first.status, first.upstream_attempts()), (Some(200), 1));
    let again = host.exchange(keyed());
    assert_eq!((again.status, again.upstream_attempts()), (Some(200), 0));
    assert!(again.filter_local_reply, "replayed from the store");
    assert_eq!(host.metric("resetguard.requests.keyed"), Some(2));
}

#[test]
fn a_route_cannot_turn_idempotency_on_without_a_store() {
    let mut host = envoy();
    let x = host.exchange(on_route(
        Request::post("/orders", "{}"),
        "idem",
        json!({"idempotency": {"enabled": true}}),
    ));
    assert_eq!(x.status, Some(200), "the plugin config (no keys) applies");
    the_one_warning(&host, "idem", &["`idempotency`"]);
}

#[test]
fn hosts_without_route_metadata_run_the_plugin_config() {
    for profile in [Profile::Kong, Profile::Apisix] {
        let mut host = host(profile, r#"{"retry": {"max_retries": 1}}"#);
        let x = host.exchange(on_route(
            Request::get("/").upstream(reset_then_ok()),
            "r",
            json!({"disabled": true}),
        ));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(200), 2),
            "{profile:?}: retried by the plugin config"
        );
    }
}

/// The lookup's cost, from the filter's side: one property read per request (plus
/// `xds.route_name` on the first request of a route, to name it in the log), and instructions
/// measured with wasmtime fuel for a GET without metadata, with a cached override, and the first
/// request of a route (decode, merge, validate). Printed for the report; bounded loosely here.
#[test]
fn a_cached_override_costs_one_property_read_and_a_lookup() {
    let module = fuel::metered_filter().unwrap_or_else(|e| panic!("{e}"));
    let mut host = host_tests::Host::builder()
        .config(r#"{"retry": {"max_retries": 3}}"#)
        .start_module(module)
        .unwrap_or_else(|e| panic!("{e}"));
    // The plugin's own settings, so both requests run the same policy: only the lookup differs.
    let tuned = json!({"retry": {"max_retries": 3, "on": ["reset", "connect-failure", "refused-stream"]},
                       "client_abort": {"log_level": "debug"}});
    let get = |route: Option<&Value>| {
        let request = Request::get("/items/1").header("accept", "*/*");
        match route {
            Some(r) => on_route(request, "tuned", r.clone()),
            None => request,
        }
    };
    host.exchange(get(None));
    let (_, plain) = fuel::measure(host.vm(0), get(None)).unwrap();
    let (first_x, first) = fuel::measure(host.vm(0), get(Some(&tuned))).unwrap();
    let (x, cached) = fuel::measure(host.vm(0), get(Some(&tuned))).unwrap();
    assert_eq!(x.status, Some(200));
    let reads = |x: &host_tests::Exchange| -> Vec<String> {
        x.property_reads.iter().map(|(_, p)| p.clone()).collect()
    };
    // The first request of the route also reads its name, to log what the override did.
    assert_eq!(reads(&first_x), [ROUTE_METADATA, "xds.route_name"]);
    assert_eq!(reads(&x), [ROUTE_METADATA]);
    assert_eq!(cached.host_calls(), plain.host_calls(), "same crossings");
    eprintln!(
        "route override cost: GET without metadata {} fuel / {} host calls; with a cached \
         override {} fuel / {} host calls; first request of the route {} fuel",
        plain.fuel,
        plain.host_calls(),
        cached.fuel,
        cached.host_calls(),
        first.fuel
    );
    // Linear in the metadata's size (the host copies it in, the cache compares it): bounded per
    // byte, far below what the first request of a route (decode, merge, validate) costs.
    let bytes = host_tests::properties::encode_struct(&tuned).unwrap().len() as u64;
    let lookup = cached.fuel.saturating_sub(plain.fuel);
    eprintln!("route override lookup: {lookup} fuel for {bytes} bytes of metadata");
    assert!(
        lookup < 500 + 10 * bytes && lookup * 10 < first.fuel,
        "a cached override costs {lookup} fuel for {bytes} bytes"
    );
    assert!(first.fuel > cached.fuel, "the first request parses");
}
