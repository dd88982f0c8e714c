//! Logging, time, ticks, callouts, gRPC (UNIMPLEMENTED), effective context and `proxy_done`.

use super::{code, enter};
use crate::abi::{decode_pairs, status, LogLevel};
use crate::callout::{dispatch, headers_valid, Callout};
use crate::memory::{read, write_u32, write_u64};
use crate::state::{LogLine, VmState};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, VmState>;

fn log(mut c: C, level: i32, p: i32, l: i32) -> i32 {
    enter(&mut c, "proxy_log");
    let Some(level) = LogLevel::from_abi(level) else {
        return status::BAD_ARGUMENT;
    };
    let message = match read(&mut c, p, l) {
        Ok(m) => String::from_utf8_lossy(&m).into_owned(),
        Err(e) => return e.0,
    };
    let state = c.data();
    let mut shared = state.shared();
    shared.logs.push(LogLine {
        vm: state.vm,
        level,
        message,
    });
    shared.faults.log.unwrap_or(status::OK)
}

fn get_log_level(mut c: C, rp: i32) -> i32 {
    enter(&mut c, "proxy_get_log_level");
    let level = c.data().shared().log_level as u32;
    code(write_u32(&mut c, rp, level))
}

fn now(mut c: C, rp: i32) -> i32 {
    enter(&mut c, "proxy_get_current_time_nanoseconds");
    let now = c.data().shared().now_ns;
    code(write_u64(&mut c, rp, now))
}

/// Ticks belong to the root context, also when an HTTP context asks (as in Envoy).
fn set_tick_period(mut c: C, period: i32) -> i32 {
    enter(&mut c, "proxy_set_tick_period_milliseconds");
    let state = c.data_mut();
    let (caps, now) = {
        let s = state.shared();
        (s.profile.caps(), s.now_ns)
    };
    if !caps.ticks {
        return status::UNIMPLEMENTED;
    }
    let root = state.root_of_current();
    let period = period as u32 as u64;
    if period == 0 {
        state.ticks.remove(&root);
    } else {
        state.ticks.insert(root, (period, now + period * 1_000_000));
    }
    status::OK
}

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut c: C,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    rt: i32,
) -> i32 {
    enter(&mut c, "proxy_http_call");
    if let Some(fault) = c.data().shared().faults.http_call {
        return fault;
    }
    let read_all = |c: &mut C| -> Result<_, i32> {
        Ok((
            read(c, up, ul).map_err(|e| e.0)?,
            read(c, hp, hl).map_err(|e| e.0)?,
            read(c, bp, bl).map_err(|e| e.0)?,
            read(c, tp, tl).map_err(|e| e.0)?,
        ))
    };
    let (cluster, headers, body, trailers) = match read_all(&mut c) {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let (Some(headers), Some(_)) = (decode_pairs(&headers), decode_pairs(&trailers)) else {
        return status::BAD_ARGUMENT;
    };
    let cluster = String::from_utf8_lossy(&cluster).into_owned();
    let state = c.data_mut();
    let (behaviour, now) = {
        let s = state.shared();
        (s.clusters.get(&cluster).cloned(), s.now_ns)
    };
    // Envoy: an unknown cluster or incomplete headers fail the call at once.
    let Some(behaviour) = behaviour else {
        return status::BAD_ARGUMENT;
    };
    if !headers_valid(&headers) {
        return status::BAD_ARGUMENT;
    }
    let (reply, due_ns) = dispatch(&behaviour, &headers, &body, now, timeout as u32 as u64);
    let token = state.next_token;
    state.next_token += 1;
    state.callouts.push(Callout {
        token,
        context: state.current,
        cluster,
        request_headers: headers,
        request_body: body,
        due_ns,
        reply,
    });
    code(write_u32(&mut c, rt, token))
}

fn get_status(mut c: C, _cp: i32, _mp: i32, _ms: i32) -> i32 {
    enter(&mut c, "proxy_get_status");
    // Only gRPC sets a status, and gRPC is not offered.
    status::NOT_FOUND
}

fn set_effective_context(mut c: C, id: i32) -> i32 {
    enter(&mut c, "proxy_set_effective_context");
    let state = c.data_mut();
    if state.contexts.contains_key(&(id as u32)) {
        state.current = id as u32;
        status::OK
    } else {
        // Envoy 1.40: a stream whose client has gone answers BAD_ARGUMENT.
        status::BAD_ARGUMENT
    }
}

fn done(mut c: C) -> i32 {
    enter(&mut c, "proxy_done");
    let state = c.data_mut();
    let current = state.current;
    state.done.push(current);
    status::OK
}

pub fn link(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_log", log)?;
    l.func_wrap("env", "proxy_get_log_level", get_log_level)?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", now)?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", set_tick_period)?;
    l.func_wrap("env", "proxy_http_call", http_call)?;
    l.func_wrap("env", "proxy_get_status", get_status)?;
    l.func_wrap("env", "proxy_set_effective_context", set_effective_context)?;
    l.func_wrap("env", "proxy_done", done)?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            enter(&mut c, "proxy_call_foreign_function");
            status::NOT_FOUND
        },
    )?;
    // gRPC is not modelled: every call answers UNIMPLEMENTED.
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            enter(&mut c, "proxy_grpc_call");
            status::UNIMPLEMENTED
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            enter(&mut c, "proxy_grpc_stream");
            status::UNIMPLEMENTED
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C, _: i32, _: i32, _: i32, _: i32| {
            enter(&mut c, "proxy_grpc_send");
            status::UNIMPLEMENTED
        },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: C, _: i32| {
        enter(&mut c, "proxy_grpc_cancel");
        status::UNIMPLEMENTED
    })?;
    l.func_wrap("env", "proxy_grpc_close", |mut c: C, _: i32| {
        enter(&mut c, "proxy_grpc_close");
        status::UNIMPLEMENTED
    })?;
    Ok(())
}
