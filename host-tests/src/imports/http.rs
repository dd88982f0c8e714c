//! Header maps, bodies and stream control. Which maps and buffers exist follows the stream's
//! phase as in Envoy: an unavailable map answers BAD_ARGUMENT (NOT_FOUND while logging).

use super::{code, enter};
use crate::abi::{decode_pairs, encode_pairs, status, BufferType, MapType, Pairs};
use crate::memory::{hand_over, read};
use crate::state::{Pending, Phase, VmState};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, VmState>;

fn map_missing(state: &VmState) -> i32 {
    match state.stream() {
        Some(s) if s.phase == Phase::Log => status::NOT_FOUND,
        _ => status::BAD_ARGUMENT,
    }
}

fn map(state: &VmState, raw: i32) -> Result<&Pairs, i32> {
    if let Some(c) = state.shared().faults.headers {
        return Err(c);
    }
    let kind = MapType::from_abi(raw).ok_or(status::BAD_ARGUMENT)?;
    let found = match kind {
        MapType::HttpCallResponseHeaders => state.callout_reply.as_ref().map(|r| &r.headers),
        MapType::HttpCallResponseTrailers => state.callout_reply.as_ref().map(|r| &r.trailers),
        MapType::RequestHeaders => state.stream().map(|s| &s.request_headers),
        MapType::RequestTrailers => state.stream().and_then(|s| s.request_trailers.as_ref()),
        MapType::ResponseHeaders => state.stream().and_then(|s| s.response_headers.as_ref()),
        MapType::ResponseTrailers => state.stream().and_then(|s| s.response_trailers.as_ref()),
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => None,
    };
    found.ok_or_else(|| map_missing(state))
}

fn map_mut(state: &mut VmState, raw: i32) -> Result<&mut Pairs, i32> {
    map(state, raw)?;
    let kind = MapType::from_abi(raw).ok_or(status::BAD_ARGUMENT)?;
    let current = state.current;
    let found = match kind {
        MapType::HttpCallResponseHeaders => state.callout_reply.as_mut().map(|r| &mut r.headers),
        MapType::HttpCallResponseTrailers => state.callout_reply.as_mut().map(|r| &mut r.trailers),
        _ => {
            let s = state.streams.get_mut(&current);
            match kind {
                MapType::RequestHeaders => s.map(|s| &mut s.request_headers),
                MapType::RequestTrailers => s.and_then(|s| s.request_trailers.as_mut()),
                MapType::ResponseHeaders => s.and_then(|s| s.response_headers.as_mut()),
                MapType::ResponseTrailers => s.and_then(|s| s.response_trailers.as_mut()),
                _ => None,
            }
        }
    };
    found.ok_or(status::BAD_ARGUMENT)
}

/// Header names are case-insensitive; Envoy stores them lower-cased.
fn lower(key: &[u8]) -> Vec<u8> {
    key.to_ascii_lowercase()
}

fn get_header_map_value(
    mut c: C,
    map_type: i32,
    kp: i32,
    kl: i32,
    rp: i32,
    rs: i32,
) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_get_header_map_value");
    let key = match read(&mut c, kp, kl) {
        Ok(k) => lower(&k),
        Err(e) => return Ok(e.0),
    };
    let value = match map(c.data(), map_type) {
        Err(e) => return Ok(e),
        Ok(m) => m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
    };
    match value {
        None => Ok(status::NOT_FOUND),
        Some(v) => Ok(code(hand_over(&mut c, &v, rp, rs)?)),
    }
}

fn get_header_map_pairs(mut c: C, map_type: i32, rp: i32, rs: i32) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_get_header_map_pairs");
    let encoded = match map(c.data(), map_type) {
        Err(e) => return Ok(e),
        Ok(m) => encode_pairs(m),
    };
    Ok(code(hand_over(&mut c, &encoded, rp, rs)?))
}

fn set_header_map_pairs(mut c: C, map_type: i32, p: i32, l: i32) -> i32 {
    enter(&mut c, "proxy_set_header_map_pairs");
    let raw = match read(&mut c, p, l) {
        Ok(r) => r,
        Err(e) => return e.0,
    };
    let Some(pairs) = decode_pairs(&raw) else {
        return status::BAD_ARGUMENT;
    };
    match map_mut(c.data_mut(), map_type) {
        Err(e) => e,
        Ok(m) => {
            *m = pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect();
            status::OK
        }
    }
}

/// The shared shape of replace / add / remove.
fn edit(
    mut c: C,
    name: &'static str,
    map_type: i32,
    kp: i32,
    kl: i32,
    value: Option<(i32, i32)>,
    op: fn(&mut Pairs, Vec<u8>, Vec<u8>),
) -> i32 {
    enter(&mut c, name);
    let key = match read(&mut c, kp, kl) {
        Ok(k) => lower(&k),
        Err(e) => return e.0,
    };
    let value = match value.map(|(vp, vl)| read(&mut c, vp, vl)).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => return e.0,
    };
    match map_mut(c.data_mut(), map_type) {
        Err(e) => e,
        Ok(m) => {
            op(m, key, value);
            status::OK
        }
    }
}

fn replace(m: &mut Pairs, key: Vec<u8>, value: Vec<u8>) {
    match m.iter().position(|(k, _)| *k == key) {
        Some(first) => {
            m[first].1 = value;
            let mut i = 0;
            m.retain(|(k, _)| {
                i += 1;
                i - 1 == first || *k != key
            });
        }
        None => m.push((key, value)),
    }
}

fn add(m: &mut Pairs, key: Vec<u8>, value: Vec<u8>) {
    m.push((key, value));
}

fn remove(m: &mut Pairs, key: Vec<u8>, _: Vec<u8>) {
    m.retain(|(k, _)| *k != key);
}

/// The buffer a type names in the current context, if it exists now.
fn buffer(state: &VmState, raw: i32) -> Result<Vec<u8>, i32> {
    if let Some(c) = state.shared().faults.buffers {
        return Err(c);
    }
    let kind = BufferType::from_abi(raw).ok_or(status::BAD_ARGUMENT)?;
    let stream = state.stream();
    let found = match kind {
        // At trailers Envoy still shows the body this filter buffered (none if it streamed).
        BufferType::RequestBody => stream
            .filter(|s| {
                s.phase == Phase::RequestBody
                    || (s.phase == Phase::RequestTrailers && !s.request_body.is_empty())
            })
            .map(|s| s.request_body.clone()),
        BufferType::ResponseBody => stream
            .filter(|s| s.phase == Phase::ResponseBody)
            .map(|s| s.response_body.clone()),
        BufferType::HttpCallResponseBody => state.callout_reply.as_ref().map(|r| r.body.clone()),
        BufferType::VmConfiguration => Some(state.setup.vm_config.clone()),
        BufferType::PluginConfiguration => Some(state.setup.plugin_config.clone()),
        _ => None,
    };
    found.ok_or(status::NOT_FOUND)
}

fn get_buffer_bytes(
    mut c: C,
    kind: i32,
    start: i32,
    max: i32,
    rp: i32,
    rs: i32,
) -> wasmtime::Result<i32> {
    enter(&mut c, "proxy_get_buffer_bytes");
    let data = match buffer(c.data(), kind) {
        Ok(d) => d,
        Err(e) => return Ok(e),
    };
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    if start > data.len() {
        return Ok(status::BAD_ARGUMENT);
    }
    let end = start + max.min(data.len() - start);
    Ok(code(hand_over(&mut c, &data[start..end], rp, rs)?))
}

/// Envoy's body edit rules: (0, 0) prepends, (0, n>0) replaces all, start ≥ len appends.
fn set_buffer_bytes(mut c: C, kind: i32, start: i32, size: i32, p: i32, l: i32) -> i32 {
    enter(&mut c, "proxy_set_buffer_bytes");
    if let Err(e) = buffer(c.data(), kind) {
        return e;
    }
    let data = match read(&mut c, p, l) {
        Ok(d) => d,
        Err(e) => return e.0,
    };
    let state = c.data_mut();
    let current = state.current;
    let body = match (BufferType::from_abi(kind), state.streams.get_mut(&current)) {
        (Some(BufferType::RequestBody), Some(s)) => &mut s.request_body,
        (Some(BufferType::ResponseBody), Some(s)) => &mut s.response_body,
        (Some(BufferType::HttpCallResponseBody), _) => match state.callout_reply.as_mut() {
            Some(r) => &mut r.body,
            None => return status::NOT_FOUND,
        },
        _ => return status::BAD_ARGUMENT,
    };
    let start = start as u32 as usize;
    if start == 0 && size == 0 {
        body.splice(0..0, data);
    } else if start == 0 {
        *body = data;
    } else if start >= body.len() {
        body.extend(data);
    } else {
        return status::BAD_ARGUMENT;
    }
    status::OK
}

fn queue(c: &mut C, pending: impl FnOnce(u32) -> Pending) -> i32 {
    let state = c.data_mut();
    if !state.streams.contains_key(&state.current) {
        return status::BAD_ARGUMENT;
    }
    let p = pending(state.current);
    state.pending.push(p);
    status::OK
}

fn continue_stream(mut c: C, stream: i32) -> i32 {
    enter(&mut c, "proxy_continue_stream");
    if !(0..=1).contains(&stream) {
        return status::BAD_ARGUMENT;
    }
    queue(&mut c, |context| Pending::Continue { context, stream })
}

fn close_stream(mut c: C, stream: i32) -> i32 {
    enter(&mut c, "proxy_close_stream");
    if !(0..=1).contains(&stream) {
        return status::BAD_ARGUMENT;
    }
    queue(&mut c, |context| Pending::Close { context, stream })
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut c: C,
    code_: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    _grpc: i32,
) -> i32 {
    enter(&mut c, "proxy_send_local_response");
    let read_all = |c: &mut C| -> Result<[Vec<u8>; 3], i32> {
        Ok([
            read(c, dp, dl).map_err(|e| e.0)?,
            read(c, bp, bl).map_err(|e| e.0)?,
            read(c, hp, hl).map_err(|e| e.0)?,
        ])
    };
    let [details, body, headers] = match read_all(&mut c) {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    let Some(headers) = decode_pairs(&headers) else {
        return status::BAD_ARGUMENT;
    };
    if !(100..=599).contains(&code_) {
        return status::BAD_ARGUMENT;
    }
    queue(&mut c, |context| Pending::LocalResponse {
        context,
        status: code_ as u32,
        details: String::from_utf8_lossy(&details).into_owned(),
        body,
        headers: headers.into_iter().map(|(k, v)| (lower(&k), v)).collect(),
    })
}

pub fn link(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "proxy_get_header_map_value", get_header_map_value)?;
    l.func_wrap("env", "proxy_get_header_map_pairs", get_header_map_pairs)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", set_header_map_pairs)?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: C, m: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit(
                c,
                "proxy_replace_header_map_value",
                m,
                kp,
                kl,
                Some((vp, vl)),
                replace,
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: C, m: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            edit(
                c,
                "proxy_add_header_map_value",
                m,
                kp,
                kl,
                Some((vp, vl)),
                add,
            )
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |c: C, m: i32, kp: i32, kl: i32| {
            edit(c, "proxy_remove_header_map_value", m, kp, kl, None, remove)
        },
    )?;
    l.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    l.func_wrap("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    l.func_wrap("env", "proxy_continue_stream", continue_stream)?;
    l.func_wrap("env", "proxy_close_stream", close_stream)?;
    l.func_wrap("env", "proxy_continue_request", |c: C| {
        continue_stream(c, 0)
    })?;
    l.func_wrap("env", "proxy_continue_response", |c: C| {
        continue_stream(c, 1)
    })?;
    l.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_keeps_one_value_in_place() {
        let mut m: Pairs = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"a".to_vec(), b"3".to_vec()),
        ];
        replace(&mut m, b"a".to_vec(), b"x".to_vec());
        assert_eq!(
            m,
            vec![
                (b"a".to_vec(), b"x".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
    }
}
