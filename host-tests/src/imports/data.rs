//! Properties, shared data, shared queues and metrics. Capabilities a profile lacks answer
//! UNIMPLEMENTED, like the proxies modelled.

use super::{code, enter};
use crate::abi::{split_path, status, METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM};
use crate::memory::{hand_over, read, write_u32, write_u64};
use crate::properties;
use crate::state::{Metric, VmState};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, VmState>;

fn caps(c: &C) -> crate::profiles::Caps {
    c.data().shared().profile.caps()
}

fn read_str(c: &mut C, p: i32, l: i32) -> Result<Vec<u8>, i32> {
    read(c, p, l).map_err(|e| e.0)
}

fn get_property(mut c: C, pp: i32, pl: i32, rp: i32, rs: i32) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_get_property");
    let path = match read_str(&mut c, pp, pl) {
        Ok(p) => split_path(&p),
        Err(e) => return Ok(e),
    };
    if let Some(s) = c.data_mut().stream_mut() {
        let phase = s.phase;
        s.property_reads.push((phase, path.join(".")));
    }
    let caps = caps(&c);
    match properties::get(c.data(), caps, &path) {
        Err(status) => Ok(status),
        Ok(v) => Ok(code(hand_over(&mut c, &v, rp, rs)?)),
    }
}

fn set_property(mut c: C, pp: i32, pl: i32, vp: i32, vl: i32) -> i32 {
    enter(&mut c, "proxy_set_property");
    let (path, value) = match (read_str(&mut c, pp, pl), read_str(&mut c, vp, vl)) {
        (Ok(p), Ok(v)) => (split_path(&p), v),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let caps = caps(&c);
    if properties::set(c.data_mut(), caps, &path, &value) {
        status::OK
    } else {
        status::NOT_FOUND
    }
}

fn get_shared_data(mut c: C, kp: i32, kl: i32, rp: i32, rs: i32, rc: i32) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_get_shared_data");
    if !caps(&c).shared_data {
        return Ok(status::UNIMPLEMENTED);
    }
    let key = match read_str(&mut c, kp, kl) {
        Ok(k) => k,
        Err(e) => return Ok(e),
    };
    let found = {
        let state = c.data();
        let shared = state.shared();
        if let Some(fault) = shared.faults.shared_get {
            return Ok(fault);
        }
        shared.shared.get(&state.setup.vm_id, &key)
    };
    let Some((value, cas)) = found else {
        return Ok(status::NOT_FOUND);
    };
    let handed = hand_over(&mut c, &value, rp, rs)?;
    Ok(code(handed.and_then(|()| write_u32(&mut c, rc, cas))))
}

fn set_shared_data(mut c: C, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32) -> i32 {
    enter(&mut c, "proxy_set_shared_data");
    if !caps(&c).shared_data {
        return status::UNIMPLEMENTED;
    }
    let (key, value) = match (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) {
        (Ok(k), Ok(v)) => (k, v),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let state = c.data();
    let mut shared = state.shared();
    if let Some(fault) = shared.faults.shared_set {
        return fault;
    }
    shared
        .shared
        .set(&state.setup.vm_id, &key, &value, cas as u32)
}

fn register_queue(mut c: C, np: i32, nl: i32, tp: i32) -> i32 {
    enter(&mut c, "proxy_register_shared_queue");
    if !caps(&c).shared_queues {
        return status::UNIMPLEMENTED;
    }
    let name = match read_str(&mut c, np, nl) {
        Ok(n) => String::from_utf8_lossy(&n).into_owned(),
        Err(e) => return e,
    };
    let state = c.data();
    let context = state.current;
    let token = state
        .shared()
        .shared
        .register_queue(&state.setup.vm_id, &name, state.vm, context);
    code(write_u32(&mut c, tp, token))
}

fn resolve_queue(mut c: C, vp: i32, vl: i32, np: i32, nl: i32, tp: i32) -> i32 {
    enter(&mut c, "proxy_resolve_shared_queue");
    if !caps(&c).shared_queues {
        return status::UNIMPLEMENTED;
    }
    let (vm_id, name) = match (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) {
        (Ok(v), Ok(n)) => (
            String::from_utf8_lossy(&v).into_owned(),
            String::from_utf8_lossy(&n).into_owned(),
        ),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let found = c.data().shared().shared.resolve_queue(&vm_id, &name);
    match found {
        None => status::NOT_FOUND,
        Some(token) => code(write_u32(&mut c, tp, token)),
    }
}

fn dequeue(mut c: C, token: i32, rp: i32, rs: i32) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_dequeue_shared_queue");
    if !caps(&c).shared_queues {
        return Ok(status::UNIMPLEMENTED);
    }
    let item = c.data().shared().shared.dequeue(token as u32);
    match item {
        Err(e) => Ok(e),
        Ok(v) => Ok(code(hand_over(&mut c, &v, rp, rs)?)),
    }
}

fn enqueue(mut c: C, token: i32, vp: i32, vl: i32) -> i32 {
    enter(&mut c, "proxy_enqueue_shared_queue");
    if !caps(&c).shared_queues {
        return status::UNIMPLEMENTED;
    }
    match read_str(&mut c, vp, vl) {
        Err(e) => e,
        Ok(v) => c.data().shared().shared.enqueue(token as u32, &v),
    }
}

/// Checks the capability and fault for metric calls.
fn metrics_refused(c: &C) -> Option<i32> {
    let shared = c.data().shared();
    if !shared.profile.caps().metrics {
        return Some(status::UNIMPLEMENTED);
    }
    shared.faults.metrics
}

fn define_metric(mut c: C, kind: i32, np: i32, nl: i32, ip: i32) -> i32 {
    enter(&mut c, "proxy_define_metric");
    if let Some(e) = metrics_refused(&c) {
        return e;
    }
    if !(METRIC_COUNTER..=METRIC_HISTOGRAM).contains(&kind) {
        return status::BAD_ARGUMENT;
    }
    let name = match read_str(&mut c, np, nl) {
        Ok(n) => String::from_utf8_lossy(&n).into_owned(),
        Err(e) => return e,
    };
    let state = c.data_mut();
    state
        .shared()
        .metrics
        .entry(name.clone())
        .or_insert(Metric {
            kind,
            value: 0,
            samples: Vec::new(),
        });
    let id = state.next_metric;
    state.next_metric += 1;
    state.metric_ids.insert(id, name);
    code(write_u32(&mut c, ip, id))
}

/// Applies `f` to the metric an id names; NOT_FOUND for ids this VM never defined.
fn with_metric(c: &C, id: i32, f: impl FnOnce(&mut Metric) -> i32) -> i32 {
    let state = c.data();
    let Some(name) = state.metric_ids.get(&(id as u32)) else {
        return status::NOT_FOUND;
    };
    let mut shared = state.shared();
    match shared.metrics.get_mut(name) {
        Some(m) => f(m),
        None => status::NOT_FOUND,
    }
}

fn increment_metric(mut c: C, id: i32, offset: i64) -> i32 {
    enter(&mut c, "proxy_increment_metric");
    if let Some(e) = metrics_refused(&c) {
        return e;
    }
    with_metric(&c, id, |m| match m.kind {
        METRIC_COUNTER if offset < 0 => status::BAD_ARGUMENT,
        METRIC_HISTOGRAM => status::BAD_ARGUMENT,
        _ => {
            m.value = m.value.saturating_add(offset);
            status::OK
        }
    })
}

fn record_metric(mut c: C, id: i32, value: i64) -> i32 {
    enter(&mut c, "proxy_record_metric");
    if let Some(e) = metrics_refused(&c) {
        return e;
    }
    with_metric(&c, id, |m| {
        if m.kind == METRIC_COUNTER && value < m.value {
            return status::BAD_ARGUMENT;
        }
        if m.kind == METRIC_HISTOGRAM {
            m.samples.push(value);
        }
        m.value = value;
        status::OK
    })
}

fn get_metric(mut c: C, id: i32, rp: i32) -> i32 {
    enter(&mut c, "proxy_get_metric");
    if let Some(e) = metrics_refused(&c) {
        return e;
    }
    let mut value = None;
    let s = with_metric(&c, id, |m| {
        if m.kind == METRIC_GAUGE || m.kind == METRIC_COUNTER {
            value = Some(m.value);
            status::OK
        } else {
            status::BAD_ARGUMENT
        }
    });
    match value {
        Some(v) => code(write_u64(&mut c, rp, v as u64)),
        None => s,
    }
}

pub fn link(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_property", get_property)?;
    l.func_wrap("env", "proxy_set_property", set_property)?;
    l.func_wrap("env", "proxy_get_shared_data", get_shared_data)?;
    l.func_wrap("env", "proxy_set_shared_data", set_shared_data)?;
    l.func_wrap("env", "proxy_register_shared_queue", register_queue)?;
    l.func_wrap("env", "proxy_resolve_shared_queue", resolve_queue)?;
    l.func_wrap("env", "proxy_dequeue_shared_queue", dequeue)?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", enqueue)?;
    l.func_wrap("env", "proxy_define_metric", define_metric)?;
    l.func_wrap("env", "proxy_increment_metric", increment_metric)?;
    l.func_wrap("env", "proxy_record_metric", record_metric)?;
    l.func_wrap("env", "proxy_get_metric", get_metric)?;
    Ok(())
}
