//! Drives one HTTP stream through a VM the way Envoy's connection manager does: request headers
//! and body (buffering while the filter stops iteration), the router, the response (local
//! replies included pass through the filter's response callbacks), then log, done, delete.

use crate::abi::Pairs;
use crate::events::pump_once;
use crate::properties::int;
use crate::request::{Callback, Exchange, Request, UpstreamRequest};
use crate::request_side::InFlight;
use crate::router::{self, flags, Delivered};
use crate::state::{lock, Pending, Phase, StreamData};
use crate::vm::{Vm, VmResult};

/// Safety bound on events while waiting for a paused stream.
const MAX_WAIT_EVENTS: usize = 100_000;
/// How long a paused stream may wait (Envoy's default stream idle timeout is 5 minutes).
pub(crate) const MAX_WAIT_NS: u64 = 300 * 1_000_000_000;

pub(crate) fn now(vm: &Vm) -> u64 {
    lock(&vm.state().host).now_ns
}

pub(crate) fn set_now(vm: &Vm, ns: u64) {
    let mut s = lock(&vm.state().host);
    s.now_ns = s.now_ns.max(ns);
}

pub(crate) fn stream(vm: &mut Vm, context: u32) -> &mut StreamData {
    vm.state_mut()
        .streams
        .get_mut(&context)
        .unwrap_or_else(|| panic!("host bug: stream {context} vanished"))
}

pub(crate) fn take_pending(vm: &mut Vm, context: u32) -> Vec<Pending> {
    let all = std::mem::take(&mut vm.state_mut().pending);
    let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|p| match p {
        Pending::Continue { context: c, .. }
        | Pending::LocalResponse { context: c, .. }
        | Pending::Close { context: c, .. } => *c == context,
    });
    vm.state_mut().pending = rest;
    mine
}

pub(crate) fn local_reply(
    vm: &Vm,
    status: u32,
    details: String,
    body: Vec<u8>,
    headers: Pairs,
) -> Delivered {
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

/// Records the upstream request the router had started (headers sent, the request not yet
/// complete) when Envoy ends the stream without completing it: the router resets it.
/// `upstream.address` of the modelled upstream host.
const UPSTREAM_ADDRESS: &[u8] = b"127.0.0.1:8080";

fn cut_upstream(flight: &InFlight, out: &mut Exchange) {
    let Some(mut headers) = flight.routed_headers.clone() else {
        return;
    };
    let reaches = !matches!(
        flight.request.upstream.first(),
        None | Some(router::UpstreamAction::Refuse)
    );
    if reaches {
        router::consume(&mut headers);
        out.upstream_cut.push(UpstreamRequest {
            headers,
            body: flight.forwarded.clone(),
        });
    }
}

impl Vm {
    /// Runs a whole request to its end.
    pub fn exchange(&mut self, request: Request) -> VmResult<Exchange> {
        let flight = self.begin(request)?;
        self.finish(flight)
    }

    /// Waits for a paused request, routes it, runs the response callbacks and ends the stream.
    pub fn finish(&mut self, mut flight: InFlight) -> VmResult<Exchange> {
        let context = flight.context;
        // A client that stops mid-request leaves once its last frame is in (or at its timer).
        let leaves_at = flight.client_leaves.then_some(0);
        let abort_at = flight
            .request
            .abort_after_ms
            .or(leaves_at)
            .map(|ms| flight.start_ns + ms * 1_000_000);
        let mut out = Exchange {
            context_id: context,
            ..Exchange::default()
        };
        // Wait for the filter to resume (a tick or callout reply may do it), or the client to go.
        let deadline = abort_at.unwrap_or(flight.start_ns + MAX_WAIT_NS);
        let mut events = 0;
        while !flight.settled() {
            events += 1;
            if events > MAX_WAIT_EVENTS || pump_once(self, deadline)?.is_none() {
                set_now(self, deadline);
                cut_upstream(&flight, &mut out);
                if abort_at.is_some() {
                    return self.abort(flight, out);
                }
                out.stalled = true;
                return self.end(flight, out, 0, "stalled_by_filter");
            }
            flight.drive(self)?;
        }
        if flight.closed {
            cut_upstream(&flight, &mut out);
            return self.end(flight, out, flags::DC, "filter_closed_stream");
        }
        let delivered = match flight.local.take() {
            Some(local) => {
                // The router resets an upstream request it had started for this stream.
                cut_upstream(&flight, &mut out);
                out.filter_local_reply = true;
                local
            }
            None => {
                let mut headers = flight.routed_headers.clone().unwrap_or_default();
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
                        // Envoy records the upstream host once a request went to it.
                        stream(self, flight.context)
                            .info
                            .insert("upstream.address".into(), UPSTREAM_ADDRESS.to_vec());
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

    /// The client went away: Envoy logs the stream with DC and no response code.
    pub(crate) fn abort(&mut self, flight: InFlight, mut out: Exchange) -> VmResult<Exchange> {
        out.client_aborted = true;
        let s = stream(self, flight.context);
        s.info.remove("response.code");
        self.end(flight, out, flags::DC, "downstream_remote_disconnect")
    }

    /// on_log, on_done, on_delete; the context is gone afterwards.
    pub(crate) fn end(
        &mut self,
        flight: InFlight,
        mut out: Exchange,
        flag_bits: u64,
        details: &str,
    ) -> VmResult<Exchange> {
        let context = flight.context;
        let mut callbacks = flight.callbacks;
        callbacks.append(&mut out.callbacks);
        out.callbacks = callbacks;
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
        out.callbacks.push(Callback {
            name: "log",
            size: 0,
            end_of_stream: true,
            action: None,
        });
        self.call(context, "proxy_on_done", &[context as i32])?;
        self.call(context, "proxy_on_delete", &[context as i32])?;
        let state = self.state_mut();
        let s = state.streams.remove(&context);
        state.contexts.remove(&context);
        state.callouts.retain(|c| c.context != context);
        state.pending.retain(|p| !matches!(p, Pending::Continue { context: c, .. } | Pending::LocalResponse { context: c, .. } | Pending::Close { context: c, .. } if *c == context));
        if let Some(s) = s {
            out.filter_state = s.filter_state;
            out.property_reads = s.property_reads;
        }
        Ok(out)
    }
}
