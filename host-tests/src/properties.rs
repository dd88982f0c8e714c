//! `proxy_get_property` / `proxy_set_property` with Envoy's paths and encodings: integers are
//! 8-byte little-endian, strings UTF-8, route metadata under `xds.route_metadata.filter_metadata`
//! (encoded as Envoy 1.40 does, see `encode_struct`).

use crate::abi::{encode_pairs, status};
use crate::profiles::Caps;
use crate::state::VmState;
use serde_json::{Map, Value};

/// Encodes an integer property as Envoy does.
pub fn int(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Reads a property, or the status the host answers (NOT_FOUND, or SERIALIZATION_FAILURE for
/// route metadata holding a null, as Envoy does).
pub fn get(state: &VmState, caps: Caps, path: &[String]) -> Result<Vec<u8>, i32> {
    if state.shared().faults.properties_missing {
        return Err(status::NOT_FOUND);
    }
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["xds", "route_metadata", "filter_metadata", rest @ ..] if caps.xds_properties => {
            let (_, filter_metadata) = route(state);
            metadata(filter_metadata, rest)
        }
        _ => lookup(state, caps, &segments).ok_or(status::NOT_FOUND),
    }
}

/// The request's route if the test named one, else the host's default route.
fn route(state: &VmState) -> (Option<&str>, &Map<String, Value>) {
    match state.stream().and_then(|s| s.route.as_ref()) {
        Some(route) => (Some(route.name.as_str()), &route.filter_metadata),
        None => (
            state.setup.route_name.as_deref(),
            &state.setup.route_metadata,
        ),
    }
}

fn lookup(state: &VmState, caps: Caps, segments: &[&str]) -> Option<Vec<u8>> {
    match segments {
        ["plugin_name"] => Some(state.setup.plugin_name.clone().into_bytes()),
        ["plugin_root_id"] => Some(state.setup.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => Some(state.setup.vm_id.clone().into_bytes()),
        ["xds", "route_name"] if caps.xds_properties => {
            route(state).0.map(|name| name.as_bytes().to_vec())
        }
        ["response", "flags"] if !caps.response_flags => None,
        ["response", "code_details"] if !caps.code_details => None,
        ["request", "headers", name] => {
            let stream = state.stream()?;
            let name = name.to_ascii_lowercase();
            stream
                .request_headers
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone())
        }
        [single] if caps.filter_state => {
            let stream = state.stream()?;
            stream
                .info
                .get(*single)
                .or_else(|| stream.filter_state.get(&format!("wasm.{single}")))
                .cloned()
        }
        _ => state.stream()?.info.get(&segments.join(".")).cloned(),
    }
}

fn metadata(root: &Map<String, Value>, path: &[&str]) -> Result<Vec<u8>, i32> {
    let Some((first, rest)) = path.split_first() else {
        return encode_struct(&Value::Object(root.clone()));
    };
    let mut value = root.get(*first).ok_or(status::NOT_FOUND)?;
    for segment in rest {
        value = value
            .as_object()
            .and_then(|map| map.get(*segment))
            .ok_or(status::NOT_FOUND)?;
    }
    encode_struct(value)
}

/// A `google.protobuf.Struct` value as Envoy 1.40 hands it to a filter (measured): a CEL value,
/// untyped. Numbers are 8-byte little-endian doubles, booleans one byte, strings UTF-8; a map is
/// proxy-wasm's pair encoding (u32 count, (u32 key len, u32 value len) each, then NUL-terminated
/// keys and values) with each value encoded the same way; a list is a pair encoding whose keys
/// are the items and values empty. A null anywhere answers SERIALIZATION_FAILURE.
pub fn encode_struct(value: &Value) -> Result<Vec<u8>, i32> {
    Ok(match value {
        Value::Null => return Err(status::SERIALIZATION_FAILURE),
        Value::Bool(b) => vec![u8::from(*b)],
        Value::Number(n) => n.as_f64().unwrap_or(0.0).to_le_bytes().to_vec(),
        Value::String(s) => s.clone().into_bytes(),
        Value::Array(items) => encode_pairs(
            &items
                .iter()
                .map(|item| Ok((encode_struct(item)?, Vec::new())))
                .collect::<Result<Vec<_>, i32>>()?,
        ),
        Value::Object(map) => encode_pairs(
            &map.iter()
                .map(|(k, v)| Ok((k.clone().into_bytes(), encode_struct(v)?)))
                .collect::<Result<Vec<_>, i32>>()?,
        ),
    })
}

/// Stores a property; Envoy turns any path into filter state `wasm.<path>` readable by access
/// logs. Returns false where the host has no such notion (the call answers NOT_FOUND).
pub fn set(state: &mut VmState, caps: Caps, path: &[String], value: &[u8]) -> bool {
    if !caps.filter_state {
        return false;
    }
    let key = format!("wasm.{}", path.join("."));
    match state.stream_mut() {
        Some(stream) => {
            stream.filter_state.insert(key, value.to_vec());
            true
        }
        None => false,
    }
}
