//! Envoy 1.40's request side with hand-written modules: Pause at request headers with a body
//! following is stop-all (measured: `decode headers called: status=4`), Pause at a body chunk is
//! StopIterationAndBuffer, and the router starts the upstream request as soon as the headers go.

use crate::wat::*;
use host_tests::{Host, Request};

/// Counts body and trailer callbacks (at 700 / 712), records the last body size and
/// end_of_stream (704 / 708); answers `{body}` to each body chunk.
const COUNTERS: &str = r#"
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (i32.store (i32.const 700) (i32.add (i32.load (i32.const 700)) (i32.const 1)))
    (i32.store (i32.const 704) (local.get $size))
    (i32.store (i32.const 708) (local.get $eos))
    {body})
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param i32) (result i32)
    (i32.store (i32.const 712) (i32.add (i32.load (i32.const 712)) (i32.const 1)))
    (i32.const 0))
"#;

/// The early keyed-POST bug: pause at headers and wait for the body to decide.
fn waits_for_the_body() -> String {
    format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.const 1))
  {}"#,
        COUNTERS.replace("{body}", "(i32.const 0)")
    )
}

/// Pauses at headers and resumes from a tick 10 ms later.
fn resumes_from_a_tick() -> String {
    format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 96) (local.get $ctx))
    (drop (call $set_tick (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param $ctx i32)
    (i32.store (i32.const 716) (i32.load (i32.const 700)))
    (drop (call $set_effective (i32.load (i32.const 96))))
    (drop (call $continue (i32.const 0)))
    (drop (call $set_tick (i32.const 0))))
  {}"#,
        COUNTERS.replace("{body}", "(i32.const 0)")
    )
}

/// Continues the headers, buffers the body, and answers 409 itself at its end.
fn answers_at_the_end_of_the_body() -> String {
    let answer = r#"(if (local.get $eos) (then
      (drop (call $local_response (i32.const 409) (i32.const 1024) (i32.const 4)
        (i32.const 1024) (i32.const 4) (i32.const 1040) (i32.const 4) (i32.const -1)))))
    (i32.const 1)"#;
    format!(
        r#"
  (data (i32.const 1024) "dupe")
  (data (i32.const 1040) "\00\00\00\00")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.const 0))
  {}"#,
        COUNTERS.replace("{body}", answer)
    )
}

fn post(chunks: &[&str]) -> Request {
    Request::new("POST", "/orders").chunks(chunks.iter().map(|c| c.as_bytes().to_vec()).collect())
}

fn counters(host: &mut Host) -> [u32; 5] {
    [700, 704, 708, 712, 716].map(|at| u32_at(host, at))
}

#[test]
fn a_filter_that_pauses_at_headers_to_wait_for_the_body_stalls_like_in_envoy() {
    let mut host = start(Host::builder(), IMPORTS, &waits_for_the_body());
    let x = host.exchange(post(&["{\"n\":", "1}"]));
    assert!(x.stalled, "stop-all: nothing resumes the stream");
    assert_eq!(x.status, None);
    assert_eq!(
        counters(&mut host)[0],
        0,
        "Envoy holds the body: on_request_body is never called"
    );
    assert_eq!(x.actions("request_body"), vec![]);
    assert_eq!(
        (x.upstream_attempts(), x.upstream_headers_only()),
        (0, 0),
        "the router starts nothing while the headers are paused"
    );
    // The client gives up: still no body callback, still nothing upstream.
    let x = host.exchange(post(&["{}"]).trailers(&[("x-sum", "1")]).abort_after(500));
    assert!(x.client_aborted && !x.stalled);
    assert_eq!(counters(&mut host)[0], 0);
    assert_eq!(counters(&mut host)[3], 0, "trailers are held too");
    assert_eq!((x.upstream_attempts(), x.upstream_headers_only()), (0, 0));
}

#[test]
fn a_resume_after_stop_all_delivers_the_held_body_then_the_trailers() {
    let mut host = start(Host::builder(), IMPORTS, &resumes_from_a_tick());
    let x = host.exchange(post(&["ab", "cd", "ef"]).trailers(&[("x-sum", "1")]));
    assert_eq!(x.status, Some(200));
    // [body calls, last size, last eos, trailer calls, body calls when the tick fired]
    assert_eq!(
        counters(&mut host),
        [1, 6, 0, 1, 0],
        "no body before the resume; then the held body as one chunk, then the trailers"
    );
    let names: Vec<_> = x.callbacks.iter().map(|c| c.name).collect();
    assert_eq!(
        names[..3],
        ["request_headers", "request_body", "request_trailers"]
    );
    assert_eq!(x.upstream_attempts(), 1);
    assert_eq!(x.upstream[0].body, b"abcdef");
    assert_eq!(x.upstream_headers_only(), 0);

    let mut host = start(Host::builder(), IMPORTS, &resumes_from_a_tick());
    let x = host.exchange(post(&["ab", "cd"]));
    assert_eq!(
        counters(&mut host)[..3],
        [1, 4, 1],
        "one chunk, end_of_stream"
    );
    assert_eq!(x.upstream[0].body, b"abcd");
}

#[test]
fn continued_headers_start_the_upstream_and_a_local_reply_at_the_body_resets_it() {
    let mut host = start(Host::builder(), IMPORTS, &answers_at_the_end_of_the_body());
    let x = host.exchange(post(&["ab", "cd", "ef"]));
    assert_eq!(x.status, Some(409));
    assert_eq!(
        x.callbacks
            .iter()
            .filter(|c| c.name == "request_body")
            .map(|c| (c.size, c.end_of_stream, c.action))
            .collect::<Vec<_>>(),
        vec![(2, false, Some(1)), (4, false, Some(1)), (6, true, Some(1))],
        "StopIterationAndBuffer: every chunk arrives, with the size buffered so far"
    );
    assert_eq!(x.upstream_attempts(), 0, "the upstream never executed it");
    assert_eq!(
        x.upstream_headers_only(),
        1,
        "the router had sent the headers; the local reply reset that upstream request"
    );
    assert!(x.upstream_cut[0].body.is_empty());
    assert!(host_tests::request::find(&x.upstream_cut[0].headers, ":path").is_some());

    // Without a body there is no body callback to answer from: the request goes through.
    let x = host.exchange(Request::get("/"));
    assert_eq!((x.status, x.upstream_attempts()), (Some(200), 1));
    assert_eq!(x.upstream_headers_only(), 0);
}
