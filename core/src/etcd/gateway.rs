//! etcd's v3 JSON gateway, as the filter speaks it over a proxy callout: the requests it sends
//! and what it makes of the answers. Keys and values travel in base64, int64s (revisions, lease
//! IDs) as JSON strings; a transaction whose compare failed has no `succeeded` field at all.
//! What comes back may also be the proxy's own reply (a reset, a refused connect, a timeout) or
//! garbage: every answer is classified, never trusted blindly.

use crate::config::json_text::parse_value;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;

pub const TXN: &str = "/v3/kv/txn";
pub const RANGE: &str = "/v3/kv/range";
pub const GRANT: &str = "/v3/lease/grant";

/// One gateway call: `POST path` with a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: &'static str,
    pub body: String,
}

/// Why a call did not give a usable answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The callout timed out (Envoy's 504 "upstream request timeout").
    Timeout,
    /// etcd (or the way to it) failed: quorum lost (503 code 14), a deadline inside etcd (500
    /// code 2), a reset or refused connection (Envoy's 503), any other 5xx.
    Unavailable,
    /// The lease the request named is gone (404 code 5: etcd restarted, or the lease expired).
    LeaseGone,
    /// The request was over etcd's limit (400 code 3, or 429 code 8 beyond gRPC's).
    TooLarge,
    /// Not an etcd answer the filter understands.
    BadAnswer,
}

impl Failure {
    /// Whether a write answered with this failure may still have been applied (etcd commits a
    /// write it answered 503 for once quorum returns): its outcome is then unknown.
    pub fn maybe_applied(self) -> bool {
        matches!(
            self,
            Failure::Timeout | Failure::Unavailable | Failure::BadAnswer
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unavailable => "unavailable",
            Failure::LeaseGone => "lease gone",
            Failure::TooLarge => "too large",
            Failure::BadAnswer => "bad answer",
        }
    }
}

/// A key's current version in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// A transaction's answer: whether its compare held, the store revision it ran at (the revision
/// of its writes), and the key as the failure branch read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub succeeded: bool,
    pub revision: u64,
    pub existing: Option<Kv>,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A JSON string literal. The bodies are written as text, not built as `Value`s: base64 and
/// decimal digits never need escaping, yet a lease ID is escaped all the same.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn put(k: &str, value: &[u8], lease: &str) -> String {
    format!(
        r#"{{"request_put":{{"key":"{k}","value":"{}","lease":{}}}}}"#,
        b64(value),
        quoted(lease)
    )
}

/// Create-if-absent: put `value` on `lease` unless the key exists; else read it.
pub fn claim(key: &str, value: &[u8], lease: &str) -> Request {
    let k = b64(key.as_bytes());
    let compare =
        format!(r#"{{"key":"{k}","result":"EQUAL","target":"CREATE","create_revision":"0"}}"#);
    txn(&compare, &put(&k, value, lease), &k)
}

/// Replace the claim written at `revision` with `value` on `lease`; else read the key.
pub fn complete(key: &str, revision: u64, value: &[u8], lease: &str) -> Request {
    let k = b64(key.as_bytes());
    txn(&compare_mod(&k, revision), &put(&k, value, lease), &k)
}

/// Delete the claim written at `revision`; else read the key.
pub fn release(key: &str, revision: u64) -> Request {
    let k = b64(key.as_bytes());
    let delete = format!(r#"{{"request_delete_range":{{"key":"{k}"}}}}"#);
    txn(&compare_mod(&k, revision), &delete, &k)
}

/// A linearizable read of one key.
pub fn read(key: &str) -> Request {
    Request {
        path: RANGE,
        body: format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes())),
    }
}

pub fn grant(ttl_s: u64) -> Request {
    Request {
        path: GRANT,
        body: format!(r#"{{"TTL":"{ttl_s}"}}"#),
    }
}

fn compare_mod(k: &str, revision: u64) -> String {
    format!(r#"{{"key":"{k}","result":"EQUAL","target":"MOD","mod_revision":"{revision}"}}"#)
}

/// One compare, one operation on success, a read of the key on failure.
fn txn(compare: &str, success: &str, k: &str) -> Request {
    Request {
        path: TXN,
        body: format!(
            r#"{{"compare":[{compare}],"success":[{success}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
        ),
    }
}

/// What a non-200 answer (or an unreadable one) means.
fn failure(status: u16, body: &[u8]) -> Failure {
    let code = parse_value(body).and_then(|v| v.get("code").and_then(Value::as_u64));
    match (status, code) {
        (404, Some(5)) => Failure::LeaseGone,
        (400 | 413, _) if contains(body, b"too large") => Failure::TooLarge,
        (429, Some(8)) => Failure::TooLarge,
        (504, _) => Failure::Timeout,
        (500..=599, _) => Failure::Unavailable,
        _ => Failure::BadAnswer,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The JSON object of a 200 answer.
fn ok_json(status: u16, body: &[u8]) -> Result<Value, Failure> {
    if status != 200 {
        return Err(failure(status, body));
    }
    match parse_value(body) {
        Some(v @ Value::Object(_)) => Ok(v),
        _ => Err(Failure::BadAnswer),
    }
}

/// An int64 as the gateway writes it (a JSON string; a number is accepted too).
fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn kv_of(v: &Value) -> Result<Kv, Failure> {
    let value = match v.get("value") {
        // A key put with an empty value has no `value` field.
        None => Vec::new(),
        Some(Value::String(s)) => B64.decode(s).map_err(|_| Failure::BadAnswer)?,
        Some(_) => return Err(Failure::BadAnswer),
    };
    let mod_revision = int(v.get("mod_revision")).ok_or(Failure::BadAnswer)?;
    Ok(Kv {
        value,
        mod_revision,
    })
}

/// The first kv of a range answer (`kvs` absent: no such key).
fn first_kv(range: &Value) -> Result<Option<Kv>, Failure> {
    match range.get("kvs") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(kvs)) => kvs.first().map(kv_of).transpose(),
        Some(_) => Err(Failure::BadAnswer),
    }
}

pub fn parse_txn(status: u16, body: &[u8]) -> Result<Txn, Failure> {
    let v = ok_json(status, body)?;
    let revision = int(v.pointer("/header/revision")).ok_or(Failure::BadAnswer)?;
    let succeeded = match v.get("succeeded") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(Failure::BadAnswer),
    };
    let existing = if succeeded {
        None
    } else {
        match v.pointer("/responses/0/response_range") {
            Some(range) => first_kv(range)?,
            // A failed compare always runs the failure branch's read.
            None => return Err(Failure::BadAnswer),
        }
    };
    Ok(Txn {
        succeeded,
        revision,
        existing,
    })
}

pub fn parse_range(status: u16, body: &[u8]) -> Result<Option<Kv>, Failure> {
    let v = ok_json(status, body)?;
    int(v.pointer("/header/revision")).ok_or(Failure::BadAnswer)?;
    first_kv(&v)
}

/// A granted lease: its ID (kept as the gateway's decimal string: IDs exceed 2^53) and TTL.
pub fn parse_grant(status: u16, body: &[u8]) -> Result<(String, u64), Failure> {
    let v = ok_json(status, body)?;
    let id = match v.get("ID") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.clone()
        }
        _ => return Err(Failure::BadAnswer),
    };
    let ttl = int(v.get("TTL")).ok_or(Failure::BadAnswer)?;
    Ok((id, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn requests_carry_keys_and_values_in_base64_and_int64s_as_strings() {
        let r = claim("/rg/k/abc", b"\x00v", "7587862817413111311");
        assert_eq!(r.path, TXN);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["compare"][0]["target"], "CREATE");
        assert_eq!(v["compare"][0]["create_revision"], "0");
        assert_eq!(v["compare"][0]["key"], B64.encode("/rg/k/abc"));
        assert_eq!(v["success"][0]["request_put"]["value"], "AHY=");
        assert_eq!(
            v["success"][0]["request_put"]["lease"],
            "7587862817413111311"
        );
        assert_eq!(
            v["failure"][0]["request_range"]["key"],
            B64.encode("/rg/k/abc")
        );
        let r = release("/rg/k/abc", 12);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["compare"][0]["mod_revision"], "12");
        assert!(v["success"][0]["request_delete_range"].is_object());
        assert_eq!(
            serde_json::from_str::<Value>(&grant(33).body).unwrap()["TTL"],
            "33"
        );
    }

    #[test]
    fn every_request_body_is_the_gateway_json_it_stands_for() {
        let (k, v) = (B64.encode("/rg/k/abc"), B64.encode(b"\x00v"));
        let put = json!([{"request_put": {"key": k, "value": v, "lease": "7587"}}]);
        let read_back = json!([{"request_range": {"key": k}}]);
        let by_mod = json!([{"key": k, "result": "EQUAL", "target": "MOD", "mod_revision": "12"}]);
        let cases = [
            (
                claim("/rg/k/abc", b"\x00v", "7587"),
                json!({
                "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": put, "failure": read_back}),
            ),
            (
                complete("/rg/k/abc", 12, b"\x00v", "7587"),
                json!({
                "compare": by_mod, "success": put, "failure": read_back}),
            ),
            (
                release("/rg/k/abc", 12),
                json!({
                "compare": by_mod, "success": [{"request_delete_range": {"key": k}}],
                "failure": read_back}),
            ),
            (read("/rg/k/abc"), json!({"key": k})),
            (grant(33), json!({"TTL": "33"})),
            // A lease ID is only ever digits from etcd; anything else is still escaped.
            (
                claim("k", b"", "7\"5"),
                json!({
                "compare": [{"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": "aw==", "value": "", "lease": "7\"5"}}],
                "failure": [{"request_range": {"key": "aw=="}}]}),
            ),
        ];
        for (request, expected) in cases {
            let sent: Value = serde_json::from_str(&request.body).unwrap();
            assert_eq!(sent, expected, "{}", request.body);
        }
    }

    #[test]
    fn a_won_and_a_lost_create_read_as_etcd_answers_them() {
        let won = body(json!({"header": {"revision": "42"}, "succeeded": true,
            "responses": [{"response_put": {"header": {"revision": "42"}}}]}));
        assert_eq!(
            parse_txn(200, &won),
            Ok(Txn {
                succeeded: true,
                revision: 42,
                existing: None
            })
        );
        // Lost: no `succeeded` at all, and the failure branch's range.
        let lost = body(json!({"header": {"revision": "43"},
            "responses": [{"response_range": {"header": {"revision": "43"},
                "kvs": [{"key": "a2V5", "create_revision": "40", "mod_revision": "41",
                         "version": "2", "value": "dmFs", "lease": "7587"}], "count": "1"}}]}));
        assert_eq!(
            parse_txn(200, &lost),
            Ok(Txn {
                succeeded: false,
                revision: 43,
                existing: Some(Kv {
                    value: b"val".to_vec(),
                    mod_revision: 41
                })
            })
        );
        // A compare that failed because the key is gone: the range finds nothing.
        let gone = body(json!({"header": {"revision": "44"},
            "responses": [{"response_range": {"header": {"revision": "44"}}}]}));
        assert_eq!(parse_txn(200, &gone).unwrap().existing, None);
        assert_eq!(
            parse_grant(
                200,
                &body(json!({"header": {}, "ID": "7587862817413111311", "TTL": "33"}))
            ),
            Ok(("7587862817413111311".to_string(), 33))
        );
        assert_eq!(
            parse_range(200, &body(json!({"header": {"revision": "9"}}))),
            Ok(None)
        );
    }

    #[test]
    fn failures_are_classified_by_what_may_have_happened() {
        let cases: [(u16, &[u8], Failure, bool); 9] = [
            (404, br#"{"code":5,"error":"etcdserver: requested lease not found"}"#, Failure::LeaseGone, false),
            (400, br#"{"code":3,"error":"etcdserver: request is too large"}"#, Failure::TooLarge, false),
            (429, br#"{"code":8,"error":"grpc: received message larger than max"}"#, Failure::TooLarge, false),
            (503, br#"{"code":14,"error":"etcdserver: request timed out"}"#, Failure::Unavailable, true),
            (500, br#"{"code":2,"error":"context deadline exceeded"}"#, Failure::Unavailable, true),
            (503, b"upstream connect error or disconnect/reset before headers. reset reason: connection termination", Failure::Unavailable, true),
            (504, b"upstream request timeout", Failure::Timeout, true),
            (400, br#"{"code":3,"error":"invalid character"}"#, Failure::BadAnswer, true),
            (200, b"<html>not etcd</html>", Failure::BadAnswer, true),
        ];
        for (status, raw, expected, unknown) in cases {
            let got = parse_txn(status, raw).unwrap_err();
            assert_eq!(got, expected, "{status} {}", String::from_utf8_lossy(raw));
            assert_eq!(got.maybe_applied(), unknown, "{expected:?}");
        }
        // Well-formed JSON of the wrong shape is garbage too.
        for raw in [
            json!([]),
            json!({"header": {}}),
            json!({"header": {"revision": "x"}}),
            json!({"header": {"revision": "1"}, "succeeded": "yes"}),
            json!({"header": {"revision": "1"}}),
        ] {
            assert_eq!(
                parse_txn(200, &body(raw.clone())),
                Err(Failure::BadAnswer),
                "{raw}"
            );
        }
        assert_eq!(
            parse_grant(200, &body(json!({"ID": 5, "TTL": "3"}))),
            Err(Failure::BadAnswer)
        );
    }

    proptest::proptest! {
        /// Whatever a gateway (or something pretending to be one) answers, parsing never panics.
        #[test]
        fn parsing_arbitrary_answers_never_panics(status in 100u16..600, raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_txn(status, &raw);
            let _ = parse_range(status, &raw);
            let _ = parse_grant(status, &raw);
        }
    }
}
