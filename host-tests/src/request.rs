//! What a client sends and what it (and the upstream) ended up seeing.

use crate::abi::Pairs;
use crate::router::UpstreamAction;
use crate::state::Route;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Request {
    /// Every header as sent, pseudo-headers included (tests may omit or garble any of them).
    pub headers: Pairs,
    /// Body chunks as they arrive; empty means no body (end_of_stream on the headers).
    pub body_chunks: Vec<Vec<u8>>,
    /// Request trailers sent after the body (the last body chunk then has no end_of_stream).
    pub trailers: Option<Pairs>,
    pub upstream: Vec<UpstreamAction>,
    /// The client disconnects this many ms after it started the request.
    pub abort_after_ms: Option<u64>,
    /// The client sends the headers and this many body chunks, then disconnects: the request
    /// never completes (no end_of_stream, no trailers).
    pub abort_after_body_chunks: Option<usize>,
    /// The client disconnects once the response headers and this many response body chunks
    /// passed the filter (all of them: after the filter saw the end, before the stream ended).
    pub abort_after_response_chunks: Option<usize>,
    /// The response body reaches the filter in chunks of this many bytes (default: one chunk).
    pub response_chunk_bytes: Option<usize>,
    /// The route the request matches (default: the host's route, if any).
    pub route: Option<Route>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            headers: vec![
                (b":method".to_vec(), method.as_bytes().to_vec()),
                (b":path".to_vec(), path.as_bytes().to_vec()),
                (b":authority".to_vec(), b"example.com".to_vec()),
                (b":scheme".to_vec(), b"http".to_vec()),
            ],
            body_chunks: Vec::new(),
            trailers: None,
            upstream: vec![UpstreamAction::ok("ok")],
            abort_after_ms: None,
            abort_after_body_chunks: None,
            abort_after_response_chunks: None,
            response_chunk_bytes: None,
            route: None,
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn post(path: &str, body: &str) -> Request {
        Request::new("POST", path).body(body.as_bytes())
    }

    /// Raw headers, exactly as given (for fuzzing: no pseudo-headers added).
    pub fn raw(headers: Pairs) -> Request {
        Request {
            headers,
            ..Request::new("GET", "/")
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Request {
        self.body_chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body.to_vec()]
        };
        self
    }

    pub fn chunks(mut self, chunks: Vec<Vec<u8>>) -> Request {
        self.body_chunks = chunks;
        self
    }

    pub fn trailers(mut self, trailers: &[(&str, &str)]) -> Request {
        self.trailers = Some(
            trailers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        );
        self
    }

    pub fn response_chunks_of(mut self, bytes: usize) -> Request {
        self.response_chunk_bytes = Some(bytes.max(1));
        self
    }

    /// Matches the route `name` with this `filter_metadata` (filter name → JSON struct).
    pub fn route(mut self, name: &str, filter_metadata: serde_json::Value) -> Request {
        self.route = Some(Route {
            name: name.to_string(),
            filter_metadata: match filter_metadata {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
        });
        self
    }

    pub fn upstream(mut self, plan: Vec<UpstreamAction>) -> Request {
        self.upstream = plan;
        self
    }

    pub fn abort_after(mut self, ms: u64) -> Request {
        self.abort_after_ms = Some(ms);
        self
    }

    /// The client leaves after sending `chunks` of its body chunks (see the field).
    pub fn abort_mid_request(mut self, chunks: usize) -> Request {
        self.abort_after_body_chunks = Some(chunks);
        self
    }

    /// The client leaves after `chunks` response body chunks reached the filter.
    pub fn abort_mid_response(mut self, chunks: usize) -> Request {
        self.abort_after_response_chunks = Some(chunks);
        self
    }

    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }
}

pub fn find<'a>(headers: &'a Pairs, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// One request the upstream application received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub headers: Pairs,
    pub body: Vec<u8>,
}

/// One stream callback the host made and what the filter answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    /// The export without its `proxy_on_` prefix: `request_headers`, `request_body`, …
    pub name: &'static str,
    /// Header count, or the body size the host reported.
    pub size: usize,
    pub end_of_stream: bool,
    /// 0 Continue, 1 Pause (StopIteration…); None for callbacks without a result.
    pub action: Option<i32>,
}

/// How one request ended, from the client's side and the host's.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    pub context_id: u32,
    /// None when the client got no response (it left, or the stream was reset).
    pub status: Option<u16>,
    pub headers: Pairs,
    pub body: Vec<u8>,
    /// Whether the response reached end_of_stream (false when cut mid-body).
    pub complete: bool,
    pub client_aborted: bool,
    /// Attempts the router made (refused connects included).
    pub router_attempts: u32,
    /// Requests the upstream application received in full (executions).
    pub upstream: Vec<UpstreamRequest>,
    /// Upstream requests the router had started (headers sent, maybe part of the body) that
    /// Envoy reset before the request was complete: the upstream never executed them.
    pub upstream_cut: Vec<UpstreamRequest>,
    /// The filter answered itself with `proxy_send_local_response`.
    pub filter_local_reply: bool,
    /// The router's own reply (reset/refused/timeout): no upstream response.
    pub router_local_reply: bool,
    /// `response.flags` / `response.code_details` as the host recorded them.
    pub flags: u64,
    pub details: String,
    /// Envoy filter state set by the filter (`wasm.NAME`).
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// The filter paused and nothing ever resumed the stream.
    pub stalled: bool,
    /// The stream callbacks in the order the host made them.
    pub callbacks: Vec<Callback>,
    /// `proxy_get_property` calls on this stream: (phase, dotted path).
    pub property_reads: Vec<(crate::state::Phase, String)>,
}

impl Exchange {
    pub fn upstream_attempts(&self) -> u32 {
        self.upstream.len() as u32
    }

    /// Upstream requests that got the request headers but never the whole request.
    pub fn upstream_headers_only(&self) -> u32 {
        self.upstream_cut.len() as u32
    }

    /// What the filter answered to each call of one callback (`request_body`, …).
    pub fn actions(&self, name: &str) -> Vec<Option<i32>> {
        self.callbacks
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.action)
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
