//! The host's event loop for one VM: ticks of root contexts, callout replies and queue-ready
//! notifications, fired in virtual-time order. Callbacks run here, never inside a host call.

use crate::state::lock;
use crate::vm::{Vm, VmResult};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fired {
    Tick(u32),
    Callout { context: u32, token: u32 },
    QueueReady { context: u32, token: u32 },
}

/// The earliest timed event of this VM: (due ns, is tick, root or callout index).
fn next_timed(vm: &Vm) -> Option<(u64, bool, usize)> {
    let s = vm.state();
    let tick = s
        .ticks
        .iter()
        .map(|(root, (_, due))| (*due, true, *root as usize))
        .min();
    let callout = s
        .callouts
        .iter()
        .enumerate()
        .map(|(i, c)| (c.due_ns, false, i))
        .min();
    tick.into_iter().chain(callout).min()
}

/// Fires the next event due at or before `until_ns` (advancing the clock to it); `None` if none.
pub fn pump_once(vm: &mut Vm, until_ns: u64) -> VmResult<Option<Fired>> {
    let index = vm.state().vm;
    let ready = lock(&vm.state().host).shared.take_ready(index);
    if let Some((context, token)) = ready.first().copied() {
        // Re-queue the rest: one callback per pump keeps ordering visible to callers.
        for _ in ready.iter().skip(1) {
            lock(&vm.state().host).shared.enqueue_notification(token);
        }
        if vm.state().contexts.contains_key(&context) {
            vm.call(
                context,
                "proxy_on_queue_ready",
                &[context as i32, token as i32],
            )?;
        }
        return Ok(Some(Fired::QueueReady { context, token }));
    }
    let Some((due, is_tick, which)) = next_timed(vm) else {
        return Ok(None);
    };
    if due > until_ns {
        return Ok(None);
    }
    {
        let mut shared = lock(&vm.state().host);
        shared.now_ns = shared.now_ns.max(due);
    }
    if is_tick {
        let root = which as u32;
        if let Some(entry) = vm.state_mut().ticks.get_mut(&root) {
            entry.1 = due + entry.0 * 1_000_000;
        }
        vm.call(root, "proxy_on_tick", &[root as i32])?;
        return Ok(Some(Fired::Tick(root)));
    }
    let callout = vm.state_mut().callouts.remove(which);
    let (context, token) = (callout.context, callout.token);
    if !vm.state().contexts.contains_key(&context) {
        // The stream is gone: Envoy cancelled the call, nobody hears back.
        return Ok(Some(Fired::Callout { context, token }));
    }
    let reply = callout.reply;
    let args = [
        context as i32,
        token as i32,
        reply.headers.len() as i32,
        reply.body.len() as i32,
        reply.trailers.len() as i32,
    ];
    vm.state_mut().callout_reply = Some(reply);
    let result = vm.call(context, "proxy_on_http_call_response", &args);
    vm.state_mut().callout_reply = None;
    result?;
    Ok(Some(Fired::Callout { context, token }))
}

/// Advances the host clock by `ms`, firing this VM's events on the way.
pub fn advance(vm: &mut Vm, ms: u64) -> VmResult<Vec<Fired>> {
    let until = lock(&vm.state().host).now_ns + ms * 1_000_000;
    let mut fired = Vec::new();
    while let Some(f) = pump_once(vm, until)? {
        fired.push(f);
    }
    let mut shared = lock(&vm.state().host);
    shared.now_ns = shared.now_ns.max(until);
    Ok(fired)
}
