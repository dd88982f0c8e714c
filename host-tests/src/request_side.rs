//! The request half of a stream, as Envoy 1.40's filter manager drives a proxy-wasm filter:
//!
//! - Continue from `on_request_headers` hands the headers to the router at once, which starts the
//!   upstream request before the body is in (the upstream sees headers first).
//! - Pause from `on_request_headers` with a body following is StopAllIterationAndWatermark
//!   (Envoy logs `decode headers called: status=4`): Envoy holds the body and trailers, calls
//!   neither `on_request_body` nor `on_request_trailers`, and the router starts nothing until the
//!   filter resumes; then the held body arrives as one chunk, then the trailers.
//! - Pause from `on_request_body` is StopIterationAndBuffer: later chunks still reach the filter,
//!   with the size of everything buffered so far; Continue (or a resume) forwards the buffer.
//! - Pause from `on_request_trailers` holds the end of the request until a resume.

use crate::abi::{Pairs, ACTION_CONTINUE};
use crate::exchange::{local_reply, stream, take_pending};
use crate::request::{Callback, Request};
use crate::router::Delivered;
use crate::state::{lock, Pending, Phase, StreamData};
use crate::vm::{Vm, VmResult};
use std::collections::VecDeque;

/// What the client sent after the headers, in order.
enum Frame {
    Data(Vec<u8>),
    Trailers(Pairs),
}

/// A stream whose request phase ran (see `Vm::begin`); `Vm::finish` completes it.
pub struct InFlight {
    pub context: u32,
    pub(crate) request: Request,
    pub(crate) start_ns: u64,
    /// Client frames not yet shown to the filter (all of them while it stopped all).
    arriving: VecDeque<Frame>,
    /// The client disconnects after its last frame here: the request never ends.
    pub(crate) client_leaves: bool,
    /// The headers paused with a body following: Envoy's StopAllIterationAndWatermark.
    stopped_all: bool,
    /// A resume lifted stop-all: the data held meanwhile goes to the filter as one chunk.
    release_held: bool,
    /// The filter's last callback answered Pause and nothing resumed it yet.
    paused: bool,
    /// The filter saw the end of the request (end_of_stream or trailers).
    end_seen: bool,
    /// The request headers as the router got them (None: the router has not started).
    pub(crate) routed_headers: Option<Pairs>,
    /// Body data the filter has seen and holds (StopIterationAndBuffer).
    buffered: Vec<u8>,
    /// Body data passed on to the router.
    pub(crate) forwarded: Vec<u8>,
    pub(crate) local: Option<Delivered>,
    pub(crate) closed: bool,
    pub(crate) callbacks: Vec<Callback>,
}

impl InFlight {
    /// The whole request went through the filter to the router.
    pub(crate) fn ready(&self) -> bool {
        self.routed_headers.is_some()
            && self.end_seen
            && !self.paused
            && !self.stopped_all
            && self.arriving.is_empty()
    }

    /// The request is over on the filter side: resumed to the end, answered or closed.
    pub(crate) fn settled(&self) -> bool {
        self.ready() || self.local.is_some() || self.closed
    }

    fn route_headers(&mut self, vm: &mut Vm) {
        if self.routed_headers.is_none() {
            self.routed_headers = Some(stream(vm, self.context).request_headers.clone());
        }
    }

    fn call(
        &mut self,
        vm: &mut Vm,
        name: &'static str,
        size: usize,
        eos: Option<bool>,
    ) -> VmResult<bool> {
        let export = format!("proxy_on_{name}");
        let mut args = vec![self.context as i32, size as i32];
        args.extend(eos.map(i32::from));
        let action = vm.call(self.context, &export, &args)?;
        self.callbacks.push(Callback {
            name,
            size,
            end_of_stream: eos.unwrap_or(true),
            action,
        });
        Ok(action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE)
    }

    /// Forwards what the filter held; a resume after the end completes the request.
    fn resume(&mut self, vm: &mut Vm) {
        self.route_headers(vm);
        self.release_held = std::mem::take(&mut self.stopped_all);
        self.paused = false;
        self.forwarded.append(&mut self.buffered);
    }

    /// Applies what the filter asked for during the last callback. True if it resumed.
    fn apply_pending(&mut self, vm: &mut Vm) -> bool {
        let mut resumed = false;
        for p in take_pending(vm, self.context) {
            match p {
                Pending::Continue { stream: 0, .. } => {
                    if self.local.is_none() && !self.closed {
                        self.resume(vm);
                        resumed = true;
                    }
                }
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
        resumed
    }

    /// Shows the filter the next client frame(s); false when nothing can be delivered now.
    fn deliver_next(&mut self, vm: &mut Vm) -> VmResult<bool> {
        if self.stopped_all || self.local.is_some() || self.closed {
            return Ok(false);
        }
        let Some(frame) = self.arriving.pop_front() else {
            return Ok(false);
        };
        match frame {
            Frame::Data(mut chunk) => {
                // Data held while stopped-all is delivered at once, as one chunk.
                while let (true, Some(Frame::Data(next))) =
                    (self.release_held, self.arriving.front_mut())
                {
                    chunk.append(next);
                    self.arriving.pop_front();
                }
                self.release_held = false;
                let eos = self.arriving.is_empty() && !self.client_leaves;
                self.buffered.append(&mut chunk);
                let s = stream(vm, self.context);
                s.phase = Phase::RequestBody;
                s.request_body = self.buffered.clone();
                let size = self.buffered.len();
                let go = self.call(vm, "request_body", size, Some(eos))?;
                // The filter may have rewritten the buffered data.
                self.buffered = stream(vm, self.context).request_body.clone();
                self.end_seen |= eos;
                self.paused = !go;
                if go {
                    self.forwarded.append(&mut self.buffered);
                }
            }
            Frame::Trailers(trailers) => {
                let count = trailers.len();
                let s = stream(vm, self.context);
                s.phase = Phase::RequestTrailers;
                s.request_body = self.buffered.clone();
                s.request_trailers = Some(trailers);
                let go = self.call(vm, "request_trailers", count, None)?;
                self.end_seen = true;
                self.paused = !go;
                if go {
                    self.forwarded.append(&mut self.buffered);
                }
            }
        }
        Ok(true)
    }

    /// Delivers frames and applies requests until the filter waits (or the request is through).
    pub(crate) fn drive(&mut self, vm: &mut Vm) -> VmResult<()> {
        loop {
            self.apply_pending(vm);
            if !self.deliver_next(vm)? {
                return Ok(());
            }
        }
    }
}

impl Vm {
    /// Creates the stream and runs the request callbacks as far as the filter lets them go.
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
        data.route = request.route.clone();
        let state = self.state_mut();
        state.contexts.insert(context, root);
        state.streams.insert(context, data);
        self.call(
            context,
            "proxy_on_context_create",
            &[context as i32, root as i32],
        )?;
        let client_leaves = request.abort_after_body_chunks.is_some();
        let mut arriving: VecDeque<Frame> = request
            .body_chunks
            .iter()
            .filter(|c| !c.is_empty())
            .take(request.abort_after_body_chunks.unwrap_or(usize::MAX))
            .map(|c| Frame::Data(c.clone()))
            .collect();
        match &request.trailers {
            Some(t) if !client_leaves => arriving.push_back(Frame::Trailers(t.clone())),
            _ => {}
        }
        let start_ns = lock(&self.state().host).now_ns;
        let mut flight = InFlight {
            context,
            request,
            start_ns,
            arriving,
            client_leaves,
            stopped_all: false,
            release_held: false,
            paused: false,
            end_seen: false,
            routed_headers: None,
            buffered: Vec::new(),
            forwarded: Vec::new(),
            local: None,
            closed: false,
            callbacks: Vec::new(),
        };
        let eos = flight.arriving.is_empty() && !client_leaves;
        let count = flight.request.headers.len();
        let go = flight.call(self, "request_headers", count, Some(eos))?;
        flight.end_seen = eos;
        if go {
            flight.route_headers(self);
        } else if eos {
            flight.paused = true;
        } else {
            flight.stopped_all = true;
        }
        flight.drive(self)?;
        Ok(flight)
    }
}
