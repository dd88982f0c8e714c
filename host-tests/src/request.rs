//! What a client sends and what it (and the upstream) ended up seeing.

use crate::abi::Pairs;
use crate::router::UpstreamAction;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Request {
    /// Every header as sent, pseudo-headers included (tests may omit or garble any of them).
    pub headers: Pairs,
    /// Body chunks as they arrive; empty means no body (end_of_stream on the headers).
    pub body_chunks: Vec<Vec<u8>>,
    pub upstream: Vec<UpstreamAction>,
    /// The client disconnects this many ms after it started the request.
    pub abort_after_ms: Option<u64>,
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
            upstream: vec![UpstreamAction::ok("ok")],
            abort_after_ms: None,
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

    pub fn upstream(mut self, plan: Vec<UpstreamAction>) -> Request {
        self.upstream = plan;
        self
    }

    pub fn abort_after(mut self, ms: u64) -> Request {
        self.abort_after_ms = Some(ms);
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
    /// Requests the upstream application received.
    pub upstream: Vec<UpstreamRequest>,
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
}

impl Exchange {
    pub fn upstream_attempts(&self) -> u32 {
        self.upstream.len() as u32
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find(&self.headers, name)
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
