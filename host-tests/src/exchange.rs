//! Drives one HTTP stream through a VM the way Envoy's connection manager does: request headers
//! and body (buffering while the filter stops iteration), the router, the response (local
//! replies included pass through the filter's response callbacks), then log, done, delete.

use crate::abi::{Pairs, ACTION_CONTINUE};
use crate::events::pump_once;
use crate::properties::int;
use crate::request::{Exchange, Request, UpstreamRequest};
use crate::router::{self, flags, Delivered};
use crate::state::{lock, Pending, Phase, StreamData};
use crate::vm::{Vm, VmResult};

/// Safety bound on events while waiting for a paused stream.
const MAX_WAIT_EVENTS: usize = 100_000;
/// How long a paused stream may wait (Envoy's default stream idle timeout is 5 minutes).
const MAX_WAIT_NS: u64 = 300 * 1_000_000_000;

/// A stream whose request phase ran (see `begin`); `finish` completes it.
pub struct InFlight {
    pub context: u32,
    request: Request,
    start_ns: u64,
    /// The headers went on to the router side (Continue returned or continue_stream called).
    headers_go: bool,
    buffered: Vec<u8>,
    forwarded: Vec<u8>,
    local: Option<Delivered>,
    closed: bool,
}

fn now(vm: &Vm) -> u64 {
    lock(&vm.state().host).now_ns
}

fn set_now(vm: &Vm, ns: u64) {
    let mut s = lock(&vm.state().host);
    s.now_ns = s.now_ns.max(ns);
}

fn stream(vm: &mut Vm, context: u32) -> &mut StreamData {
    vm.state_mut()
        .streams
        .get_mut(&context)
        .unwrap_or_else(|| panic!("host bug: stream {context} vanished"))
}

fn take_pending(vm: &mut Vm, context: u32) -> Vec<Pending> {
    let all = std::mem::take(&mut vm.state_mut().pending);
    let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| match p {
        Pending::Continue { context: c, .. }
        | Pending::LocalResponse { context: c, .. }
        | Pending::Close { context: c, .. } => *c == context,
    });
    vm.state_mut().pending = rest;
    mine
}

fn local_reply(vm: &Vm, status: u32, details: String, body: Vec<u8>, headers: Pairs) -> Delivered {
    let keep_headers = lock(&vm.state().host).profile.caps().local_response_headers;
    let mut all = vec![(b":status".to_vec(), status.to_string().into_bytes())];
    if keep_headers {
        all.extend(headers);
    }
    if !body.is_empty() {
        all.push((
            b"content-length".to_vec(),
            body.len().to_string().into_bytes(),
        ));
    }
    Delivered {
        status: status as u16,
        headers: all,
        body,
        complete: true,
        flags: 0,
        details,
        local: true,
    }
}

impl InFlight {
    /// Applies what the filter asked for during the last callback (request side).
    fn apply_request_pending(&mut self, vm: &mut Vm) {
        for p in take_pending(vm, self.context) {
            match p {
                Pending::Continue { stream: 0, .. } => self.resume(),
                Pending::Continue { .. } => {}
                Pending::LocalResponse {
                    status,
                    details,
                    body,
                    headers,
                    ..
                } => {
                    if self.local.is_none() {
                        self.local = Some(local_reply(vm, status, details, body, headers));
                    }
                }
                Pending::Close { .. } => self.closed = true,
            }
        }
    }

    fn resume(&mut self) {
        self.headers_go = true;
        self.forwarded.append(&mut self.buffered);
    }

    fn ready(&self) -> bool {
        self.headers_go && self.buffered.is_empty()
    }
}

impl Vm {
    /// Runs a whole request to its end.
    pub fn exchange(&mut self, request: Request) -> VmResult<Exchange> {
        let flight = self.begin(request)?;
        self.finish(flight)
    }

    /// Creates the stream and runs the request headers and body callbacks.
    pub fn begin(&mut self, request: Request) -> VmResult<InFlight> {
        let context = self.next_context_id();
        let root = self.root_id;
        let mut data = StreamData::new(
            request
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        );
        for (prop, header) in [
            ("request.method", ":method"),
            ("request.path", ":path"),
            ("request.host", ":authority"),
            ("request.scheme", ":scheme"),
        ] {
            if let Some(v) = request.header_value(header) {
                data.info.insert(prop.to_string(), v.to_vec());
            }
        }
        data.info
            .insert("request.protocol".into(), b"HTTP/1.1".to_vec());
        data.info
            .insert("xds.cluster_name".into(), b"upstream".to_vec());
        let state = self.state_mut();
        state.contexts.insert(context, root);
        state.streams.insert(context, data);
        self.call(
            context,
            "proxy_on_context_create",
            &[context as i32, root as i32],
        )?;
        let mut flight = InFlight {
            context,
            start_ns: now(self),
            headers_go: false,
            buffered: Vec::new(),
            forwarded: Vec::new(),
            local: None,
            closed: false,
            request,
        };
        let chunks = flight.request.body_chunks.clone();
        let count = flight.request.headers.len() as i32;
        let action = self.call(
            context,
            "proxy_on_request_headers",
            &[context as i32, count, i32::from(chunks.is_empty())],
        )?;
        if action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE {
            flight.headers_go = true;
        }
        flight.apply_request_pending(self);
        for (i, chunk) in chunks.iter().enumerate() {
            if flight.local.is_some() || flight.closed {
                break;
            }
            flight.buffered.extend_from_slice(chunk);
            let s = stream(self, context);
            s.phase = Phase::RequestBody;
            s.request_body = flight.buffered.clone();
            let eos = i + 1 == chunks.len();
            let len = flight.buffered.len() as i32;
            let action = self.call(
                context,
                "proxy_on_request_body",
                &[context as i32, len, i32::from(eos)],
            )?;
            // The filter may have rewritten the buffered data.
            flight.buffered = stream(self, context).request_body.clone();
            if action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE {
                flight.resume();
            }
            flight.apply_request_pending(self);
        }
        Ok(flight)
    }

    /// Waits for a paused request, routes it, runs the response callbacks and ends the stream.
    pub fn finish(&mut self, mut flight: InFlight) -> VmResult<Exchange> {
        let context = flight.context;
        let abort_at = flight
            .request
            .abort_after_ms
            .map(|ms| flight.start_ns + ms * 1_000_000);
        let mut out = Exchange {
            context_id: context,
            ..Exchange::default()
        };
        // Wait for the filter to resume (a tick or callout reply may do it), or the client to go.
        let deadline = abort_at.unwrap_or(flight.start_ns + MAX_WAIT_NS);
        let mut events = 0;
        while !flight.ready() && flight.local.is_none() && !flight.closed {
            events += 1;
            if events > MAX_WAIT_EVENTS || pump_once(self, deadline)?.is_none() {
                set_now(self, deadline);
                if abort_at.is_some() {
                    return self.abort(flight, out);
                }
                out.stalled = true;
                return self.end(flight.context, out, 0, "stalled_by_filter");
            }
            flight.apply_request_pending(self);
        }
        if flight.closed {
            return self.end(context, out, flags::DC, "filter_closed_stream");
        }
        let delivered = match flight.local.take() {
            Some(local) => {
                out.filter_local_reply = true;
                local
            }
            None => {
                let mut headers = stream(self, context).request_headers.clone();
                let arm = router::consume(&mut headers);
                let routed = router::route(&arm, &flight.request.upstream);
                let forwarded_at = now(self);
                let cut = abort_at.filter(|a| *a < forwarded_at + routed.done_ms * 1_000_000);
                for attempt in &routed.attempts {
                    let at = forwarded_at + attempt.start_ms * 1_000_000;
                    if cut.is_some_and(|c| at >= c) {
                        break;
                    }
                    out.router_attempts += 1;
                    if attempt.reached_upstream {
                        out.upstream.push(UpstreamRequest {
                            headers: headers.clone(),
                            body: flight.forwarded.clone(),
                        });
                    }
                }
                if let Some(at) = cut {
                    set_now(self, at);
                    return self.abort(flight, out);
                }
                set_now(self, forwarded_at + routed.done_ms * 1_000_000);
                out.router_local_reply = routed.delivered.local;
                routed.delivered
            }
        };
        self.respond(flight, out, delivered)
    }

    /// Runs the response through the filter; a local reply sent now replaces the response once.
    fn respond(
        &mut self,
        flight: InFlight,
        mut out: Exchange,
        mut delivered: Delivered,
    ) -> VmResult<Exchange> {
        let context = flight.context;
        for _ in 0..2 {
            let s = stream(self, context);
            s.phase = Phase::ResponseHeaders;
            s.response_headers = Some(delivered.headers.clone());
            s.info
                .insert("response.code".into(), int(delivered.status.into()));
            s.info.insert("response.flags".into(), int(delivered.flags));
            s.info.insert(
                "response.code_details".into(),
                delivered.details.clone().into_bytes(),
            );
            let eos = delivered.body.is_empty() && delivered.complete;
            let count = delivered.headers.len() as i32;
            let action = self.call(
                context,
                "proxy_on_response_headers",
                &[context as i32, count, i32::from(eos)],
            )?;
            let mut headers_go = action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE;
            let mut replaced = None;
            let mut body_go = delivered.body.is_empty();
            let mut forwarded = Vec::new();
            let mut closed = false;
            let apply = |vm: &mut Vm,
                         headers_go: &mut bool,
                         body_go: &mut bool,
                         replaced: &mut Option<Delivered>,
                         closed: &mut bool| {
                for p in take_pending(vm, context) {
                    match p {
                        Pending::Continue { stream: 1, .. } => {
                            *headers_go = true;
                            *body_go = true;
                        }
                        Pending::LocalResponse {
                            status,
                            details,
                            body,
                            headers,
                            ..
                        } => {
                            *replaced = Some(local_reply(vm, status, details, body, headers));
                        }
                        Pending::Close { .. } => *closed = true,
                        Pending::Continue { .. } => {}
                    }
                }
            };
            apply(
                self,
                &mut headers_go,
                &mut body_go,
                &mut replaced,
                &mut closed,
            );
            if let Some(local) = replaced.take() {
                out.filter_local_reply = true;
                delivered = local;
                continue;
            }
            if !delivered.body.is_empty() && !closed {
                let s = stream(self, context);
                s.phase = Phase::ResponseBody;
                s.response_body = delivered.body.clone();
                let len = delivered.body.len() as i32;
                let action = self.call(
                    context,
                    "proxy_on_response_body",
                    &[context as i32, len, i32::from(delivered.complete)],
                )?;
                body_go = action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE;
                apply(
                    self,
                    &mut headers_go,
                    &mut body_go,
                    &mut replaced,
                    &mut closed,
                );
                if let Some(local) = replaced.take() {
                    out.filter_local_reply = true;
                    delivered = local;
                    continue;
                }
            }
            // Wait for a paused response to be resumed.
            let deadline = now(self) + MAX_WAIT_NS;
            while !(closed || headers_go && body_go) && delivered.complete {
                if pump_once(self, deadline)?.is_none() {
                    out.stalled = true;
                    break;
                }
                apply(
                    self,
                    &mut headers_go,
                    &mut body_go,
                    &mut replaced,
                    &mut closed,
                );
            }
            if headers_go {
                forwarded.extend(stream(self, context).response_body.clone());
                let headers = stream(self, context)
                    .response_headers
                    .clone()
                    .unwrap_or_default();
                out.status = crate::request::find(&headers, ":status")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                out.headers = headers
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with(b":"))
                    .collect();
                out.body = if body_go { forwarded } else { Vec::new() };
                out.complete = delivered.complete && body_go && !out.stalled;
            }
            break;
        }
        let (f, details) = (delivered.flags, delivered.details.clone());
        self.end(flight.context, out, f, &details)
    }

    /// The client went away: Envoy logs the stream with DC and no response code.
    fn abort(&mut self, flight: InFlight, mut out: Exchange) -> VmResult<Exchange> {
        out.client_aborted = true;
        let s = stream(self, flight.context);
        s.info.remove("response.code");
        self.end(
            flight.context,
            out,
            flags::DC,
            "downstream_remote_disconnect",
        )
    }

    /// on_log, on_done, on_delete; the context is gone afterwards.
    fn end(
        &mut self,
        context: u32,
        mut out: Exchange,
        flag_bits: u64,
        details: &str,
    ) -> VmResult<Exchange> {
        let s = stream(self, context);
        s.phase = Phase::Log;
        s.info.insert("response.flags".into(), int(flag_bits));
        s.info
            .insert("response.code_details".into(), details.as_bytes().to_vec());
        if out.status.is_none() {
            s.info.remove("response.code");
        }
        out.flags = flag_bits;
        out.details = details.to_string();
        self.call(context, "proxy_on_log", &[context as i32])?;
        self.call(context, "proxy_on_done", &[context as i32])?;
        self.call(context, "proxy_on_delete", &[context as i32])?;
        let state = self.state_mut();
        let s = state.streams.remove(&context);
        state.contexts.remove(&context);
        state.callouts.retain(|c| c.context != context);
        state.pending.retain(|p| !matches!(p, Pending::Continue { context: c, .. } | Pending::LocalResponse { context: c, .. } | Pending::Close { context: c, .. } if *c == context));
        out.filter_state = s.map(|s| s.filter_state).unwrap_or_default();
        Ok(out)
    }
}
