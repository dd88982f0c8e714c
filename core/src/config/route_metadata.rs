//! Decodes the bytes Envoy returns for `["xds","route_metadata","filter_metadata","resetguard"]`.
//!
//! ```text
//! decode(raw: &[u8]) -> Result<serde_json::Value, ConfigError>
//! ```
//!
//! Measured on Envoy 1.40: the route's `google.protobuf.Struct` is not handed over as protobuf
//! but as a CEL map in proxy-wasm's pair encoding (the header-map format: a u32 count, a
//! (u32 key length, u32 value length) per entry, then each key and value NUL-terminated), nested:
//! a map value is itself such an encoding, a list is one whose values are all empty (its items
//! are the keys), a number is an 8-byte little-endian double, a boolean one byte, a string its
//! UTF-8 bytes. A `null` anywhere makes the whole read fail (SERIALIZATION_FAILURE). Envoy's YAML
//! loader turns integers beyond 32 bits and decimals (`1.5`) into strings.
//!
//! The encoding carries no types, so the decoder follows the shape of the plugin configuration
//! (`schema::route_override_shape`, read from the JSON Schema): where a setting expects a number
//! it reads 8 bytes as a double (integral doubles
//! become JSON integers, so the strict reader accepts them), where it expects a string it reads
//! text. Keys the configuration does not know decode as text and are then rejected by the strict
//! reader with their path. Malformed bytes are an error at the path where they were found; the
//! decoder never panics and allocates only what the input holds.

use super::reader::{child_path, error, ConfigResult};
use super::schema::{route_override_shape, Shape};
use serde_json::{Map, Number, Value};

/// Decodes a route's resetguard metadata into the JSON value it was written as.
pub fn decode(raw: &[u8]) -> ConfigResult<Value> {
    decode_as(raw, route_override_shape(), "$")
}

fn decode_as(raw: &[u8], shape: &Shape, path: &str) -> ConfigResult<Value> {
    match shape {
        Shape::Object(fields) => {
            let Some(entries) = split_pairs(raw) else {
                return text(raw, path);
            };
            let mut map = Map::new();
            for (key, value) in entries {
                let key =
                    std::str::from_utf8(key).map_err(|_| error(path, "setting names in UTF-8"))?;
                let child = child_path(path, key);
                let value = match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, shape)) => decode_as(value, shape, &child)?,
                    // Unknown: the strict reader rejects it by name; its value does not matter
                    // (but must not be null, which a merge would drop).
                    None => text(value, &child)
                        .unwrap_or_else(|_| Value::String("(not text)".to_string())),
                };
                // Of a key given twice the last stays, as in a JSON object read by serde_json.
                map.insert(key.to_string(), value);
            }
            Ok(Value::Object(map))
        }
        Shape::List(item) => {
            let Some(entries) = split_pairs(raw).filter(|e| e.iter().all(|(_, v)| v.is_empty()))
            else {
                return text(raw, path);
            };
            entries
                .iter()
                .enumerate()
                .map(|(i, (value, _))| decode_as(value, item, &format!("{path}[{i}]")))
                .collect::<ConfigResult<Vec<Value>>>()
                .map(Value::Array)
        }
        Shape::Integer => match <[u8; 8]>::try_from(raw) {
            Ok(bytes) => Ok(number(f64::from_le_bytes(bytes))),
            Err(_) => text(raw, path),
        },
        Shape::Bool => match raw {
            [0] => Ok(Value::Bool(false)),
            [1] => Ok(Value::Bool(true)),
            _ => text(raw, path),
        },
        Shape::Text => text(raw, path),
    }
}

/// Text where text was expected; other bytes are most likely a number written where a string
/// belongs (so the reader can say "a string, got a number").
fn text(raw: &[u8], path: &str) -> ConfigResult<Value> {
    match (std::str::from_utf8(raw), <[u8; 8]>::try_from(raw)) {
        (Ok(s), _) => Ok(Value::String(s.to_string())),
        (Err(_), Ok(bytes)) => Ok(number(f64::from_le_bytes(bytes))),
        (Err(_), Err(_)) => Err(error(
            path,
            "a value Envoy encoded as text, got bytes that are not UTF-8",
        )),
    }
}

const EXACT: f64 = 9_007_199_254_740_992.0;

/// A double as JSON: integral values within ±2^53 as integers (so the strict reader accepts
/// them), the rest as decimals, or a string for NaN and infinities, which JSON cannot hold, so
/// the strict reader can say what it got.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // In range and integral: the cast is exact.
        return if n >= 0.0 {
            Value::from(n as u64)
        } else {
            Value::from(n as i64)
        };
    }
    Number::from_f64(n).map_or_else(
        || Value::String("not a finite number".into()),
        Value::Number,
    )
}

/// Splits one level of the pair encoding into borrowed (key, value) slices; `None` unless the
/// bytes are exactly a well-formed encoding (sizes in bounds, NUL terminators, nothing after).
pub fn split_pairs(raw: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = raw.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let count = read_u32(0)?;
    // Each entry takes 8 bytes of sizes and 2 terminators: bound the count before allocating.
    if count > raw.len() / 10 {
        return (count == 0 && raw.len() == 4).then(Vec::new);
    }
    let mut cursor = count.checked_mul(8)?.checked_add(4)?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let key_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let key = raw.get(cursor..cursor.checked_add(key_len)?)?;
        cursor += key_len;
        if raw.get(cursor) != Some(&0) {
            return None;
        }
        cursor += 1;
        let value = raw.get(cursor..cursor.checked_add(value_len)?)?;
        cursor += value_len;
        if raw.get(cursor) != Some(&0) {
            return None;
        }
        cursor += 1;
        entries.push((key, value));
    }
    (cursor == raw.len()).then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route_override::RouteOverride;
    use crate::config::Config;
    use serde_json::json;

    /// One level of proxy-wasm's pair encoding.
    fn pairs(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_le_bytes().to_vec();
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in entries {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    /// Encodes a JSON value the way Envoy 1.40 hands route metadata to a filter.
    fn envoy_encode(value: &Value) -> Vec<u8> {
        match value {
            Value::Null => panic!("Envoy cannot serialize null"),
            Value::Bool(b) => vec![u8::from(*b)],
            Value::Number(_) => value
                .to_string()
                .parse::<f64>()
                .unwrap()
                .to_le_bytes()
                .to_vec(),
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Array(items) => pairs(
                &items
                    .iter()
                    .map(|v| (envoy_encode(v), Vec::new()))
                    .collect::<Vec<_>>(),
            ),
            Value::Object(map) => pairs(
                &map.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), envoy_encode(v)))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// Bytes captured from Envoy 1.40 for `retry: {max_retries: 0, on: [reset, 5xx],
    /// per_try_timeout_ms: 1.5}` (YAML), as the filter reads `…/resetguard/retry`.
    const ENVOY_RETRY: &str = "03000000120000000300000002000000200000000b000000080000007065725f\
        7472795f74696d656f75745f6d7300312e35006f6e000200000005000000000000000300000000000000726573\
        657400003578780000006d61785f7265747269657300000000000000000000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_bytes_captured_from_envoy() {
        let raw = pairs(&[(b"retry".to_vec(), unhex(ENVOY_RETRY))]);
        assert_eq!(
            decode(&raw).unwrap(),
            json!({"retry": {"max_retries": 0, "on": ["reset", "5xx"], "per_try_timeout_ms": "1.5"}})
        );
    }

    #[test]
    fn round_trips_every_setting_and_the_reader_accepts_it() {
        let value = json!({
            "disabled": false,
            "retry": {"max_retries": 3, "on": ["reset"], "idempotent_methods": ["GET", "PUT"],
                      "per_try_timeout_ms": 250, "retriable_status_codes": [503, 502],
                      "trust_client_retry_headers": true},
            "client_abort": {"log_level": "off", "filter_state": false},
            "idempotency": {"enabled": true, "mode": "report", "header": "x",
                            "max_key_length": 64, "scope_headers": [], "path_prefixes": ["/p"],
                            "unknown_outcome": "complete", "when_full": "reject",
                            "retry_keyed_requests": true}
        });
        let decoded = decode(&envoy_encode(&value)).unwrap();
        assert_eq!(decoded, value);
        // "complete" is 8 bytes, like a double: the shape keeps it text.
        let outcome = decoded
            .get("idempotency")
            .and_then(|i| i.get("unknown_outcome"));
        assert_eq!(outcome.and_then(Value::as_str), Some("complete"));
    }

    #[test]
    fn wrong_kinds_decode_to_what_the_reader_rejects_by_path() {
        let plugin = json!({});
        for (value, path) in [
            (json!({"retry": {"max_retries": 1.5}}), "retry.max_retries"),
            (json!({"retry": {"max_retries": -1}}), "retry.max_retries"),
            (json!({"retry": {"max_retries": "2"}}), "retry.max_retries"),
            (json!({"retry": {"on": "reset"}}), "retry.on"),
            (json!({"retry": {"on": [1]}}), "retry.on[0]"),
            (json!({"retry": "fast"}), "retry"),
            (
                json!({"retry": {"trust_client_retry_headers": "yes"}}),
                "retry.trust_client_retry_headers",
            ),
            (json!({"retyr": {"max_retries": 1}}), "retyr"),
            (json!({"retry": {"bogus": [1, {"a": true}]}}), "retry.bogus"),
            (json!({"disabled": "yes"}), "disabled"),
        ] {
            let decoded = decode(&envoy_encode(&value)).unwrap();
            let result = RouteOverride::from_value(&decoded).and_then(|r| r.apply(&plugin));
            let err = result.expect_err(&format!("{value} decoded as {decoded}"));
            assert_eq!(err.path, path, "{value} decoded as {decoded}: {err}");
        }
    }

    #[test]
    fn doubles_become_integers_only_when_integral() {
        assert_eq!(number(3.0), json!(3));
        assert_eq!(number(-1.0), json!(-1));
        assert_eq!(number(0.5), json!(0.5));
        assert_eq!(number(1e300), json!(1e300));
        assert_eq!(number(-1.25), json!(-1.25));
        assert_eq!(number(1.5e-7), json!(1.5e-7));
        assert_eq!(number(0.1), json!(0.1));
        // Beyond 2^53 a double is shown as a decimal, exactly as the reader will say it got it.
        for n in [
            f64::MIN_POSITIVE,
            -f64::MAX,
            9.999_999_999_9e20,
            2f64.powi(53) + 2.0,
        ] {
            assert_eq!(number(n).as_f64(), Some(n), "{n}");
            assert!(number(n).as_u64().is_none(), "{n}");
        }
        assert_eq!(number(f64::NAN), json!("not a finite number"));
        assert_eq!(number(f64::INFINITY), json!("not a finite number"));
    }

    #[test]
    fn truncated_and_hostile_bytes_are_errors_or_text_never_panics() {
        let good = envoy_encode(&json!({"retry": {"on": ["reset", "5xx"], "max_retries": 1},
                                         "idempotency": {"mode": "report"}}));
        for cut in 0..good.len() {
            let _ = decode(&good[..cut]);
        }
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = decode(&bad);
            }
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge_count).is_err() || decode(&huge_count).unwrap().is_string());
        assert!(split_pairs(&good[..good.len() - 1]).is_none());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(split_pairs(&trailing).is_none());
        assert_eq!(split_pairs(&[0, 0, 0, 0]), Some(vec![]));
        assert!(split_pairs(&[]).is_none());
        // Sizes pointing past the end on a 32-bit host must not overflow.
        let mut sizes = 1u32.to_le_bytes().to_vec();
        sizes.extend_from_slice(&u32::MAX.to_le_bytes());
        sizes.extend_from_slice(&u32::MAX.to_le_bytes());
        sizes.extend_from_slice(&[0; 8]);
        assert!(split_pairs(&sizes).is_none());
        // Not text, not a map: an error naming the root.
        assert_eq!(decode(&[0xff, 0xfe]).unwrap_err().path, "$");
    }

    #[test]
    fn the_shape_knows_exactly_the_settings_the_reader_knows() {
        let Shape::Object(sections) = route_override_shape() else {
            panic!("the root is an object");
        };
        let names = |fields: &[(String, Shape)]| {
            let mut n: Vec<String> = fields.iter().map(|(k, _)| k.to_string()).collect();
            n.sort();
            n
        };
        // The reader lists the settings it knows when it meets one it does not.
        let known = |json: Value, at: &str| -> Vec<String> {
            let err = Config::parse_value(&json).unwrap_err();
            assert_eq!(err.path, at);
            let list = err.expected.rsplit(": ").next().unwrap();
            let mut n: Vec<String> = list.split(", ").map(str::to_string).collect();
            n.sort();
            n
        };
        let mut top = known(json!({"zz_unknown": 1}), "zz_unknown");
        top.push("disabled".to_string());
        top.sort();
        assert_eq!(names(sections), top);
        for (section, shape) in sections.iter().filter(|(k, _)| *k != "disabled") {
            let Shape::Object(fields) = shape else {
                panic!("{section} is an object");
            };
            let json = json!({ section.as_str(): {"zz_unknown": 1} });
            assert_eq!(
                names(fields),
                known(json, &format!("{section}.zz_unknown")),
                "add the new {section} setting to the schema"
            );
        }
    }
}
