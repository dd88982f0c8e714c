//! Non-panicking calls into the proxy-wasm ABI 0.2.1 host.
//!
//! The SDK's `hostcalls` panic on any status they did not expect (and its `Status` enum has no
//! UNIMPLEMENTED, so a host answering 12 is undefined behaviour there). A panic traps the VM and
//! fails every request on that worker, so the filter calls the imports itself and turns every
//! status into a `Result`. The SDK still provides the exports (dispatcher, allocator).

use std::ptr::{null, null_mut};

/// A status the host answered other than OK.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

impl HostError {
    pub const NOT_FOUND: HostError = HostError(1);
    pub const CAS_MISMATCH: HostError = HostError(8);
    pub const UNIMPLEMENTED: HostError = HostError(12);
    pub const BAD_ARGUMENT: HostError = HostError(2);
    pub const SERIALIZATION_FAILURE: HostError = HostError(3);
    pub const PARSE_FAILURE: HostError = HostError(4);
    pub const EMPTY: HostError = HostError(7);
    pub const INTERNAL_FAILURE: HostError = HostError(10);

    /// The status's name in the ABI (for logs and store errors).
    pub fn name(self) -> &'static str {
        match self {
            HostError::NOT_FOUND => "NOT_FOUND",
            HostError::BAD_ARGUMENT => "BAD_ARGUMENT",
            HostError::SERIALIZATION_FAILURE => "SERIALIZATION_FAILURE",
            HostError::PARSE_FAILURE => "PARSE_FAILURE",
            HostError::EMPTY => "EMPTY",
            HostError::CAS_MISMATCH => "CAS_MISMATCH",
            HostError::INTERNAL_FAILURE => "INTERNAL_FAILURE",
            HostError::UNIMPLEMENTED => "UNIMPLEMENTED",
            _ => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

pub type HostResult<T> = Result<T, HostError>;

fn status(code: u32) -> HostResult<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// Header maps, as numbered by the ABI.
#[derive(Copy, Clone, Debug)]
#[repr(u32)]
pub enum MapType {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

/// Buffers, as numbered by the ABI.
#[derive(Copy, Clone, Debug)]
#[repr(u32)]
pub enum BufferType {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
    /// Any level beyond the ABI's: log nothing.
    Off = 6,
}

impl LogLevel {
    fn from_abi(level: u32) -> LogLevel {
        match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => LogLevel::Off,
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, map_data: *const u8, map_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
}

/// `proxy_continue_stream`'s stream type of an HTTP request.
const STREAM_HTTP_REQUEST: u32 = 0;

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or a block of exactly `size` bytes from the module's allocator.
unsafe fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// Answers `Ok(None)` for NOT_FOUND, the usual "absent" answer of getters.
fn optional(result: HostResult<Vec<u8>>) -> HostResult<Option<Vec<u8>>> {
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(HostError::NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn log(level: LogLevel, message: &str) -> HostResult<()> {
    // SAFETY: the pointer and length describe a live string for the call's duration.
    status(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub fn log_level() -> HostResult<LogLevel> {
    let mut level = 0u32;
    // SAFETY: the host writes one u32 into a live local.
    status(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(LogLevel::from_abi(level))
}

pub fn now_nanos() -> HostResult<u64> {
    let mut now = 0u64;
    // SAFETY: the host writes one u64 into a live local.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut now) })?;
    Ok(now)
}

pub fn buffer(
    buffer_type: BufferType,
    start: usize,
    max_size: usize,
) -> HostResult<Option<Vec<u8>>> {
    let mut data = null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers are live locals; the returned block is ours to free.
    let code = unsafe {
        proxy_get_buffer_bytes(buffer_type as u32, start, max_size, &mut data, &mut size)
    };
    optional(status(code).map(|()| unsafe { take_host_buffer(data, size) }))
}

/// A header map, read in place from the host's serialized buffer: iterating copies nothing.
/// Copy only what must outlive the buffer: a copy per name and value costs about 1,300 wasm
/// instructions per header (bench/fuel-baseline.json), more than the host call itself.
pub fn header_map(map: MapType) -> HostResult<HeaderPairs> {
    let mut data = null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers are live locals; the returned block is ours to free.
    let code = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    status(code)?;
    let raw = unsafe { take_host_buffer(data, size) };
    HeaderPairs::parse(raw).ok_or(HostError::SERIALIZATION_FAILURE)
}

pub fn header(map: MapType, name: &str) -> HostResult<Option<Vec<u8>>> {
    let mut data = null_mut();
    let mut size = 0usize;
    // SAFETY: the key is live for the call; out-pointers are live locals.
    let code = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    optional(status(code).map(|()| unsafe { take_host_buffer(data, size) }))
}

pub fn set_header(map: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: key and value are live for the call.
    status(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replaces a whole header map with `pairs`, in that order.
pub fn set_header_map(map: MapType, pairs: &[(&str, &[u8])]) -> HostResult<()> {
    let encoded = encode_pairs(pairs);
    // SAFETY: the buffer is live for the call.
    status(unsafe { proxy_set_header_map_pairs(map as u32, encoded.as_ptr(), encoded.len()) })
}

pub fn remove_header(map: MapType, name: &[u8]) -> HostResult<()> {
    // SAFETY: the key is live for the call.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Reads a property; the ABI takes the path as NUL-separated segments.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let encoded = encode_path(path);
    let mut data = null_mut();
    let mut size = 0usize;
    // SAFETY: the path is live for the call; out-pointers are live locals.
    let code = unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    optional(status(code).map(|()| unsafe { take_host_buffer(data, size) }))
}

pub fn set_property(path: &[&str], value: &[u8]) -> HostResult<()> {
    let encoded = encode_path(path);
    // SAFETY: path and value are live for the call.
    status(unsafe {
        proxy_set_property(encoded.as_ptr(), encoded.len(), value.as_ptr(), value.len())
    })
}

/// Reads a shared-data entry: `Ok(None)` when absent, else the value and its CAS token.
pub fn shared_data(key: &str) -> HostResult<Option<(Vec<u8>, u32)>> {
    let mut data = null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: the key is live for the call; out-pointers are live locals.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status(code) {
        Ok(()) => Ok(Some((unsafe { take_host_buffer(data, size) }, cas))),
        Err(HostError::NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a shared-data entry; `cas` 0 writes unconditionally, else it must match.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
    // SAFETY: key and value are live for the call.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// `send_local_response`'s gRPC status argument for a plain HTTP answer.
const NO_GRPC_STATUS: i32 = -1;
/// `define_metric`'s types of a counter and a histogram (gauges are 1).
const METRIC_COUNTER: u32 = 0;
const METRIC_HISTOGRAM: u32 = 2;

pub fn send_local_response(
    status_code: u32,
    details: &str,
    body: &[u8],
    headers: &[(&str, &[u8])],
) -> HostResult<()> {
    let encoded = encode_pairs(headers);
    // SAFETY: every buffer is live for the call.
    status(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            if body.is_empty() {
                null()
            } else {
                body.as_ptr()
            },
            body.len(),
            encoded.as_ptr(),
            encoded.len(),
            NO_GRPC_STATUS,
        )
    })
}

/// Defines a counter and returns its id.
pub fn define_counter(name: &str) -> HostResult<u32> {
    define_metric(METRIC_COUNTER, name)
}

/// Defines a histogram and returns its id.
pub fn define_histogram(name: &str) -> HostResult<u32> {
    define_metric(METRIC_HISTOGRAM, name)
}

fn define_metric(kind: u32, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: the name is live for the call; the id is a live local.
    status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Records one value in a histogram.
pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}

pub fn increment_metric(id: u32, offset: i64) -> HostResult<()> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn set_tick_period_ms(period: u32) -> HostResult<()> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Resumes the current HTTP request, paused while the filter waited (for a callout's answer).
pub fn resume_request() -> HostResult<()> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

/// Sends a callout to `cluster` through the SDK, which routes its answer back to the context
/// that sent it (its dispatcher keeps the token). The SDK answers Ok, BAD_ARGUMENT (an unknown
/// cluster, missing pseudo-headers) or INTERNAL_FAILURE; a host answering anything else would
/// trap the VM there, and proxies answer nothing else to this call.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> HostResult<u32> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        Some(body),
        Vec::new(),
        std::time::Duration::from_millis(timeout_ms),
    )
    .map_err(|status| HostError(status as u32))
}

/// A callout answer: its `:status` (0 if the host gives none) and body.
pub fn http_call_response(body_size: usize) -> (u16, Vec<u8>) {
    let status = header(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|raw| std::str::from_utf8(&raw).ok()?.parse().ok())
        .unwrap_or(0);
    let body = buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

fn encode_path(path: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.iter().map(|s| s.len() + 1).sum());
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(segment.as_bytes());
    }
    out
}

/// Serializes header pairs the ABI's way: count, (key len, value len)*, then NUL-terminated data.
pub fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let data_len: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data_len);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A serialized header map (count, (key len, value len)*, then NUL-terminated data), checked
/// once when parsed so that iterating it cannot fail.
#[derive(Debug)]
pub struct HeaderPairs {
    raw: Vec<u8>,
    count: usize,
}

impl HeaderPairs {
    /// `None` if the host sent something malformed.
    pub fn parse(raw: Vec<u8>) -> Option<HeaderPairs> {
        if raw.is_empty() {
            return Some(HeaderPairs { raw, count: 0 });
        }
        let count = read_size(&raw, 0)?;
        // Each pair needs at least 8 bytes of sizes and 2 terminators: reject absurd counts early.
        if count > raw.len() / 10 + 1 {
            return None;
        }
        let mut end = 4 + count * 8;
        for i in 0..count {
            let (key_len, value_len) = (read_size(&raw, 4 + i * 8)?, read_size(&raw, 8 + i * 8)?);
            end = end
                .checked_add(key_len)?
                .checked_add(value_len)?
                .checked_add(2)?;
        }
        (end <= raw.len()).then_some(HeaderPairs { raw, count })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// (name, value) pairs in the host's order, borrowed from the buffer.
    pub fn iter(&self) -> PairsIter<'_> {
        PairsIter {
            raw: &self.raw,
            index: 0,
            count: self.count,
            data: 4 + self.count * 8,
        }
    }

    pub fn to_owned_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

#[derive(Clone)]
pub struct PairsIter<'a> {
    raw: &'a [u8],
    index: usize,
    count: usize,
    /// Where the next pair's name starts.
    data: usize,
}

impl<'a> Iterator for PairsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let key_len = read_size(self.raw, 4 + self.index * 8)?;
        let value_len = read_size(self.raw, 8 + self.index * 8)?;
        let key = self.raw.get(self.data..self.data + key_len)?;
        let value_at = self.data + key_len + 1;
        let value = self.raw.get(value_at..value_at + value_len)?;
        self.data = value_at + value_len + 1;
        self.index += 1;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.index;
        (left, Some(left))
    }
}

fn read_size(raw: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = raw.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pairs(raw: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        HeaderPairs::parse(raw.to_vec()).map(|pairs| pairs.to_owned_pairs())
    }

    #[test]
    fn pairs_round_trip() {
        let pairs: &[(&str, &[u8])] = &[(":method", b"GET"), ("x", b"\xff\x00y"), ("empty", b"")];
        let decoded = decode_pairs(&encode_pairs(pairs)).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_pairs_are_rejected_not_panicked_on() {
        let good = encode_pairs(&[("key", b"value")]);
        for cut in 0..good.len() {
            let _ = decode_pairs(&good[..cut]);
        }
        assert!(decode_pairs(&good[..good.len() - 3]).is_none());
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0x7f]).is_none());
        assert_eq!(decode_pairs(&[]), Some(vec![]));
    }

    #[test]
    fn header_pairs_are_read_in_place_as_the_host_wrote_them() {
        let pairs: &[(&str, &[u8])] = &[(":status", b"200"), ("x", b"\xff"), ("e", b"")];
        let map = HeaderPairs::parse(encode_pairs(pairs)).unwrap();
        assert_eq!(map.len(), 3);
        let read: Vec<(&[u8], &[u8])> = map.iter().collect();
        let expected: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        assert_eq!(read, expected);
        assert!(HeaderPairs::parse(Vec::new()).unwrap().is_empty());
        // A size that points past the data is refused at parse time, never while iterating.
        let mut lying = encode_pairs(&[("key", b"value")]);
        lying[8] = 200;
        assert!(HeaderPairs::parse(lying).is_none());
    }

    #[test]
    fn path_is_nul_separated() {
        assert_eq!(
            encode_path(&["response", "flags"]),
            b"response\0flags".to_vec()
        );
        assert_eq!(encode_path(&["x"]), b"x".to_vec());
    }
}
