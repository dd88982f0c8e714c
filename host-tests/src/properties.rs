//! `proxy_get_property` / `proxy_set_property` with Envoy's paths and encodings: integers are
//! 8-byte little-endian, strings UTF-8, route metadata under `xds.route_metadata.filter_metadata`.

use crate::profiles::Caps;
use crate::state::VmState;
use serde_json::Value;

/// Encodes an integer property as Envoy does.
pub fn int(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

/// Reads a property; `None` answers NOT_FOUND.
pub fn get(state: &VmState, caps: Caps, path: &[String]) -> Option<Vec<u8>> {
    if state.shared().faults.properties_missing {
        return None;
    }
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["plugin_name"] => Some(state.setup.plugin_name.clone().into_bytes()),
        ["plugin_root_id"] => Some(state.setup.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => Some(state.setup.vm_id.clone().into_bytes()),
        ["xds", "route_name"] if caps.xds_properties => {
            state.setup.route_name.clone().map(String::into_bytes)
        }
        ["xds", "route_metadata", "filter_metadata", rest @ ..] if caps.xds_properties => {
            metadata(&state.setup.route_metadata, rest)
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

fn metadata(root: &serde_json::Map<String, Value>, path: &[&str]) -> Option<Vec<u8>> {
    let (first, rest) = path.split_first()?;
    let mut value = root.get(*first)?;
    for segment in rest {
        value = value.as_object()?.get(*segment)?;
    }
    Some(match value {
        Value::String(s) => s.clone().into_bytes(),
        Value::Number(n) => n.as_f64()?.to_le_bytes().to_vec(),
        Value::Bool(b) => vec![u8::from(*b)],
        Value::Null => return None,
        // Envoy hands over a serialized protobuf Struct here; tests only read leaves.
        other => other.to_string().into_bytes(),
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
