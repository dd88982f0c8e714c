//! The response half of a stream: the upstream's response (or a local reply) through the
//! filter's response callbacks, body chunk by chunk as Envoy delivers it. Pause at response
//! headers holds the headers; Pause at a body chunk buffers (StopIterationAndBuffer) and later
//! chunks report the buffered size; `proxy_continue_stream(1)` forwards what was held. A local
//! reply sent from a response callback replaces the response once.

use crate::abi::ACTION_CONTINUE;
use crate::events::pump_once;
use crate::exchange::{local_reply, now, stream, take_pending, MAX_WAIT_NS};
use crate::properties::int;
use crate::request::{Callback, Exchange};
use crate::request_side::InFlight;
use crate::router::{flags, Delivered};
use crate::state::{Pending, Phase};
use crate::vm::{Vm, VmResult};

/// What the filter has let through of one response so far.
#[derive(Default)]
struct Flow {
    headers_go: bool,
    buffered: Vec<u8>,
    forwarded: Vec<u8>,
    replaced: Option<Delivered>,
    closed: bool,
}

impl Flow {
    fn apply(&mut self, vm: &mut Vm, context: u32) {
        for p in take_pending(vm, context) {
            match p {
                Pending::Continue { stream: 1, .. } => {
                    self.headers_go = true;
                    self.forwarded.append(&mut self.buffered);
                }
                Pending::LocalResponse {
                    status,
                    details,
                    body,
                    headers,
                    ..
                } => {
                    self.replaced = Some(local_reply(vm, status, details, body, headers));
                }
                Pending::Close { .. } => self.closed = true,
                Pending::Continue { .. } => {}
            }
        }
    }
}

fn chunks(body: &[u8], size: Option<usize>) -> Vec<Vec<u8>> {
    match size {
        _ if body.is_empty() => Vec::new(),
        Some(n) => body.chunks(n).map(<[u8]>::to_vec).collect(),
        None => vec![body.to_vec()],
    }
}

fn callback(
    vm: &mut Vm,
    out: &mut Exchange,
    context: u32,
    name: &'static str,
    size: usize,
    eos: bool,
) -> VmResult<bool> {
    let export = format!("proxy_on_{name}");
    let args = [context as i32, size as i32, i32::from(eos)];
    let action = vm.call(context, &export, &args)?;
    out.callbacks.push(Callback {
        name,
        size,
        end_of_stream: eos,
        action,
    });
    Ok(action.unwrap_or(ACTION_CONTINUE) == ACTION_CONTINUE)
}

impl Vm {
    /// Runs the response through the filter and ends the stream.
    pub(crate) fn respond(
        &mut self,
        flight: InFlight,
        mut out: Exchange,
        mut delivered: Delivered,
    ) -> VmResult<Exchange> {
        let context = flight.context;
        let chunk_bytes = flight.request.response_chunk_bytes;
        let leave_after = flight.request.abort_after_response_chunks;
        let mut client_left = false;
        for round in 0..2 {
            let s = stream(self, context);
            s.phase = Phase::ResponseHeaders;
            s.response_headers = Some(delivered.headers.clone());
            s.info
                .insert("response.code".into(), int(delivered.status.into()));
            // An upstream response that will be cut later is, at its headers, still an ordinary
            // `via_upstream` answer with no flags: Envoy records the reset only when it happens.
            let (head_flags, head_details) = if delivered.local || delivered.complete {
                (delivered.flags, delivered.details.clone())
            } else {
                (0, "via_upstream".to_string())
            };
            s.info.insert("response.flags".into(), int(head_flags));
            s.info
                .insert("response.code_details".into(), head_details.into_bytes());
            let body = chunks(&delivered.body, chunk_bytes);
            let eos = body.is_empty() && delivered.complete;
            let count = delivered.headers.len();
            let mut flow = Flow {
                headers_go: callback(self, &mut out, context, "response_headers", count, eos)?,
                ..Flow::default()
            };
            flow.apply(self, context);
            for (i, chunk) in body.iter().enumerate() {
                if flow.closed || flow.replaced.is_some() {
                    break;
                }
                if leave_after == Some(i) {
                    client_left = true;
                    break;
                }
                flow.buffered.extend_from_slice(chunk);
                let s = stream(self, context);
                s.phase = Phase::ResponseBody;
                s.response_body = flow.buffered.clone();
                let eos = i + 1 == body.len() && delivered.complete;
                let size = flow.buffered.len();
                let go = callback(self, &mut out, context, "response_body", size, eos)?;
                // The filter may have rewritten the buffered data.
                flow.buffered = stream(self, context).response_body.clone();
                if go {
                    flow.forwarded.append(&mut flow.buffered);
                }
                flow.apply(self, context);
            }
            // The client leaves after the whole response passed the filter, before the stream
            // ended (an HTTP/2 client's RST_STREAM racing the last frame).
            client_left |= leave_after.is_some_and(|k| k >= body.len()) && flow.replaced.is_none();
            if round == 0 && !client_left {
                if let Some(local) = flow.replaced.take() {
                    out.filter_local_reply = true;
                    delivered = local;
                    continue;
                }
            }
            // Wait for a paused response to be resumed.
            let deadline = now(self) + MAX_WAIT_NS;
            let held = |f: &Flow| !f.headers_go || !f.buffered.is_empty();
            while !flow.closed && !client_left && held(&flow) && delivered.complete {
                if pump_once(self, deadline)?.is_none() {
                    out.stalled = true;
                    break;
                }
                flow.apply(self, context);
            }
            if flow.headers_go {
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
                out.complete =
                    delivered.complete && flow.buffered.is_empty() && !out.stalled && !client_left;
                out.body = flow.forwarded;
            }
            break;
        }
        if client_left {
            out.client_aborted = true;
            return self.end(flight, out, flags::DC, "downstream_remote_disconnect");
        }
        let (f, details) = (delivered.flags, delivered.details.clone());
        self.end(flight, out, f, &details)
    }
}
