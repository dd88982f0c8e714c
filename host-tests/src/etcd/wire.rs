//! What etcd 3.4's JSON gateway (grpc-gateway v1 over gogo protobuf) accepts and how big the
//! request is once decoded: base64 `bytes`, int64 as JSON string or number, enums by name or
//! number, unknown fields ignored, and the protobuf sizes etcd's request limits are checked on.
//! Each behaviour is pinned against the real etcd by `host-tests/etcd/gateway_cases.json`
//! (run by `envoy/tests/test_etcd_gateway.py` and the suite's `host_etcd`).

use serde_json::{Map, Value};

/// A gateway error before anything ran: gRPC code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: u32,
    pub message: String,
}

pub type WireResult<T> = Result<T, WireError>;

pub fn invalid(message: impl Into<String>) -> WireError {
    WireError {
        code: 3,
        message: message.into(),
    }
}

// -- base64 (Go's StdEncoding: padded, '\r' and '\n' skipped) -------------------------------------

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sextet(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes padded standard base64; the error names the first bad input byte as Go does ("illegal
/// base64 data at input byte N"; a length that is not a multiple of 4 is reported at byte 0, as
/// the gateway answered for "YQ").
pub fn unb64(text: &str) -> Result<Vec<u8>, String> {
    let bad = |at: usize| format!("illegal base64 data at input byte {at}");
    let input = text.as_bytes();
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut quad, mut at) = ([0u8; 4], [0usize; 4]);
    let (mut n, mut pad, mut ended) = (0usize, 0usize, false);
    for (i, &c) in input.iter().enumerate() {
        if c == b'\r' || c == b'\n' {
            continue;
        }
        if ended {
            return Err(bad(i));
        }
        if c == b'=' {
            if n < 2 {
                return Err(bad(i));
            }
            pad += 1;
        } else if pad > 0 || sextet(c).is_none() {
            return Err(bad(i));
        }
        quad[n] = c;
        at[n] = i;
        n += 1;
        if n == 4 {
            let mut v = 0u32;
            for &q in &quad[..4 - pad] {
                v = (v << 6) | sextet(q).unwrap_or(0);
            }
            v <<= 6 * pad as u32;
            let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
            ended = pad > 0;
            n = 0;
        }
    }
    if n != 0 {
        // Go reports a bad character before a short tail; a short tail alone at byte 0 (measured).
        return Err(bad(if pad > 0 { at[n - 1] } else { 0 }));
    }
    Ok(out)
}

// -- JSON fields the gateway's way ----------------------------------------------------------------

/// Parses a request body into its top-level object: empty and `null` are `{}` (measured: they
/// answer "key is not provided", not a parse error).
pub fn body_object(body: &[u8]) -> WireResult<Map<String, Value>> {
    body_object_parsed(body, serde_json::from_slice::<Value>(body).ok().as_ref())
}

/// `body_object` for a body the caller already parsed (`parsed`: its JSON, None if it is none).
pub fn body_object_parsed(body: &[u8], parsed: Option<&Value>) -> WireResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match parsed {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::Null) => Ok(Map::new()),
        Some(other) => Err(invalid(format!(
            "json: cannot unmarshal {} into Go value of type map[string]json.RawMessage",
            go_kind(other)
        ))),
        None => Err(invalid(
            serde_json::from_slice::<Value>(body).err().map_or_else(
                || "unexpected end of JSON input".to_string(),
                |e| e.to_string(),
            ),
        )),
    }
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn bytes(&self, name: &str) -> WireResult<Vec<u8>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => unb64(s).map_err(invalid),
            Some(other) => Err(invalid(format!(
                "json: cannot unmarshal {} into Go value of type []uint8",
                go_kind(other)
            ))),
        }
    }

    /// int64/uint64: a JSON number or a string holding one (Go unquotes and parses the rest).
    pub fn int(&self, name: &str) -> WireResult<i64> {
        match self.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| u as i64))
                .ok_or_else(|| invalid(format!("json: cannot unmarshal number {n} into int64"))),
            Some(Value::String(s)) => parse_int_text(s),
            Some(other) => Err(invalid(format!(
                "json: cannot unmarshal {} into Go value of type int64",
                go_kind(other)
            ))),
        }
    }

    pub fn bool(&self, name: &str) -> WireResult<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(invalid(format!(
                "json: cannot unmarshal {} into Go value of type bool",
                go_kind(other)
            ))),
        }
    }

    /// An enum: its name or its number.
    pub fn enumeration(&self, name: &str, names: &[&str], go_type: &str) -> WireResult<i64> {
        match self.get(name) {
            None => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| invalid(format!("unknown value {n} for enum {go_type}"))),
            Some(Value::String(s)) => names
                .iter()
                .position(|n| n == s)
                .map(|i| i as i64)
                .ok_or_else(|| invalid(format!("unknown value \"{s}\" for enum {go_type}"))),
            Some(other) => Err(invalid(format!("unknown value {other} for enum {go_type}"))),
        }
    }

    pub fn object(&self, name: &str) -> WireResult<Option<&Map<String, Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(invalid(format!(
                "json: cannot unmarshal {} into Go value of type map[string]json.RawMessage",
                go_kind(other)
            ))),
        }
    }

    pub fn list(&self, name: &str) -> WireResult<Vec<&Map<String, Value>>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(m) => Ok(m),
                    Value::Null => Err(invalid("etcdserver: key not found")),
                    other => Err(invalid(format!(
                        "json: cannot unmarshal {} into Go value of type map[string]json.RawMessage",
                        go_kind(other)
                    ))),
                })
                .collect(),
            Some(other) => Err(invalid(format!(
                "json: cannot unmarshal {} into Go value of type []json.RawMessage",
                go_kind(other)
            ))),
        }
    }
}

fn parse_int_text(s: &str) -> WireResult<i64> {
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v as i64);
    }
    // Go's jsonpb unquotes the string and decodes the rest as a JSON number.
    let c = s
        .chars()
        .next()
        .map_or("EOF".to_string(), |c| c.to_string());
    Err(invalid(format!(
        "invalid character '{c}' looking for beginning of value"
    )))
}

// -- protobuf sizes (what etcd's limits are checked on) -------------------------------------------

pub fn varint_len(v: u64) -> usize {
    ((64 - v.leading_zeros() as usize).max(1)).div_ceil(7)
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

/// A length-delimited field (bytes, string, message) that is set.
pub fn len_field(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

/// A proto3 bytes field: omitted when empty.
pub fn bytes_field(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_field(field, len)
    }
}

/// A proto3 varint field (int64 as two's complement, enums, bools): omitted when zero.
pub fn int_field(field: u32, v: i64) -> usize {
    if v == 0 {
        0
    } else {
        tag_len(field) + varint_len(v as u64)
    }
}

/// A field of a oneof: encoded once set, even at zero.
pub fn oneof_int_field(field: u32, v: i64) -> usize {
    tag_len(field) + varint_len(v as u64)
}

/// etcd wraps every write in an `InternalRaftRequest { header = 100: { ID = 1 }, <op> = 3..9 }`
/// and refuses it above `--max-request-bytes`; the request ID is `(member_id & 0xffff) << 48 |
/// ms << 8 | counter`, so its varint length (and the limit seen by a client) depends on the
/// member ID: 8 + varint(ID) + the op field.
pub fn raft_request_size(member_id: u64, op_len: usize) -> usize {
    let low = member_id & 0xffff;
    let id_len = if low == 0 {
        7
    } else {
        (48 + (64 - low.leading_zeros() as usize)).div_ceil(7)
    };
    let header = 1 + id_len;
    tag_len(100) + varint_len(header as u64) + header + len_field(4, op_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_reports_like_go() {
        for raw in [&b""[..], b"a", b"ab", b"abc", b"\0\xff\x10k"] {
            assert_eq!(unb64(&b64(raw)).unwrap(), raw);
        }
        assert_eq!(b64(b"k"), "aw==");
        assert_eq!(unb64("Y\nQ==").unwrap(), b"a");
        assert_eq!(
            unb64("YQ").unwrap_err(),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            unb64("-_8=").unwrap_err(),
            "illegal base64 data at input byte 0"
        );
    }

    #[test]
    fn proto_sizes() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
        // Measured: member 5099357604517118029 (low 16 bits 0x4d) took a 1,572,839-byte value
        // on a 3-byte key, not one byte more: PutRequest 1,572,848 + 16 = 1,572,864.
        let put = bytes_field(1, 3) + bytes_field(2, 1_572_839);
        assert_eq!(put, 1_572_848);
        assert_eq!(raft_request_size(5_099_357_604_517_118_029, put), 1_572_864);
    }
}
