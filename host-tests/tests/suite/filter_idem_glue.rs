//! The idempotency glue of the real filter, in the order Envoy 1.40 drives it: what each
//! callback answers, when the store is read, and what the upstream gets to see.

use crate::common::*;
use host_tests::state::Phase;
use host_tests::{Exchange, Host, Profile, Request, UpstreamAction};

const ENFORCE: &str = r#"{"idempotency": {"mode": "enforce"}}"#;
const CONTINUE: Option<i32> = Some(0);
const PAUSE: Option<i32> = Some(1);

fn keyed(key: &str, chunks: &[&str]) -> Request {
    Request::new("POST", "/orders")
        .header("authorization", "Bearer a")
        .header("idempotency-key", key)
        .chunks(chunks.iter().map(|c| c.as_bytes().to_vec()).collect())
        .upstream(vec![UpstreamAction::Respond {
            status: 201,
            headers: vec![(b"content-type".to_vec(), b"application/json".to_vec())],
            body: b"{\"order\":\"o-1\",\"state\":\"created\"}".to_vec(),
            delay_ms: 5,
        }])
}

fn body_sizes(x: &Exchange) -> Vec<(usize, bool)> {
    x.callbacks
        .iter()
        .filter(|c| c.name == "request_body")
        .map(|c| (c.size, c.end_of_stream))
        .collect()
}

fn enforce() -> Host {
    host(Profile::Envoy, ENFORCE)
}

#[test]
fn a_keyed_post_streams_headers_buffers_the_body_and_records_the_response_unpaused() {
    let mut host = enforce();
    let x = host.exchange(keyed("k-glue", &["{\"n\":", "1,", "\"m\":2}"]).response_chunks_of(8));
    assert_eq!(x.status, Some(201));
    assert!(!x.stalled);
    assert_eq!(
        x.actions("request_headers"),
        vec![CONTINUE],
        "a pause here is stop-all in Envoy: the body would never come"
    );
    assert_eq!(x.actions("request_body"), vec![PAUSE, PAUSE, CONTINUE]);
    assert_eq!(body_sizes(&x), vec![(5, false), (7, false), (13, true)]);
    assert_eq!(x.upstream_attempts(), 1);
    assert_eq!(x.upstream[0].body, b"{\"n\":1,\"m\":2}");
    assert_eq!(x.upstream_headers_only(), 0);
    let response = x.actions("response_body");
    assert!(response.len() > 1, "the response came in chunks");
    assert!(
        response.iter().all(|a| *a == CONTINUE),
        "the response is copied, never paused: {response:?}"
    );
    assert!(
        x.property_reads
            .contains(&(Phase::ResponseHeaders, "response.code_details".to_string())),
        "the recording reads code_details at response headers (on_log re-reads them only when \
         those did not say via_upstream): {:?}",
        x.property_reads
    );

    // The same request again is replayed from what was recorded chunk by chunk.
    let again = host.exchange(keyed("k-glue", &["{\"n\":", "1,", "\"m\":2}"]));
    assert_eq!(again.status, Some(201));
    assert_eq!(again.body, x.body);
    assert_eq!(
        again.header_str("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(again.actions("request_headers"), vec![CONTINUE]);
    assert_eq!(again.actions("request_body"), vec![PAUSE, PAUSE, PAUSE]);
    assert_eq!(
        (again.upstream_attempts(), again.upstream_headers_only()),
        (0, 1),
        "the headers had gone upstream; the replay resets that request before its body"
    );
    assert!(again.upstream_cut[0].body.is_empty());
}

#[test]
fn a_payload_mismatch_is_answered_after_the_headers_went_upstream() {
    let mut host = enforce();
    assert_eq!(
        host.exchange(keyed("k-422", &["{\"n\":1}"])).status,
        Some(201)
    );
    let x = host.exchange(keyed("k-422", &["{\"n\":", "2}"]));
    assert_eq!(x.status, Some(422));
    assert_eq!(x.actions("request_body"), vec![PAUSE, PAUSE]);
    assert_eq!((x.upstream_attempts(), x.upstream_headers_only()), (0, 1));
}

#[test]
fn an_in_flight_duplicate_is_answered_at_headers_and_the_upstream_sees_nothing() {
    let mut host = host_tests::Host::builder()
        .workers(2)
        .config(ENFORCE)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let first = host.vm(0).begin(keyed("k-409", &["{\"n\":1}"])).unwrap();
    let dupe = host.vm(1).begin(keyed("k-409", &["{\"n\":1}"])).unwrap();
    let dupe = host.vm(1).finish(dupe).unwrap();
    let first = host.vm(0).finish(first).unwrap();
    assert_eq!((first.status, first.upstream_attempts()), (Some(201), 1));
    assert_eq!(dupe.status, Some(409));
    assert_eq!(dupe.actions("request_headers"), vec![PAUSE]);
    assert_eq!(
        dupe.actions("request_body"),
        vec![],
        "answered at headers: the body never reaches the filter"
    );
    assert_eq!(
        (dupe.upstream_attempts(), dupe.upstream_headers_only()),
        (0, 0)
    );
}

#[test]
fn a_keyed_post_with_trailers_is_decided_at_the_trailers() {
    let mut host = enforce();
    let request = || keyed("k-trailers", &["{\"n\":", "1}"]).trailers(&[("x-checksum", "abc")]);
    let x = host.exchange(request());
    assert_eq!(x.status, Some(201));
    assert_eq!(body_sizes(&x), vec![(5, false), (7, false)]);
    assert_eq!(x.actions("request_body"), vec![PAUSE, PAUSE]);
    assert_eq!(x.actions("request_trailers"), vec![CONTINUE]);
    assert_eq!(x.upstream_attempts(), 1);
    assert_eq!(x.upstream[0].body, b"{\"n\":1}");

    let again = host.exchange(request());
    assert_eq!(again.status, Some(201));
    assert_eq!(
        again.header_str("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(
        (again.upstream_attempts(), again.upstream_headers_only()),
        (0, 1)
    );
}
