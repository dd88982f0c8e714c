//! The `resetguard` operator CLI, as a library so its tests can drive each part. It links the
//! filter's rlib: configs are parsed and requests decided by the code the `.wasm` runs.

pub mod discover;
pub mod document;
pub mod effective;
pub mod explain;
pub mod validate;

/// The JSON Schema of the plugin configuration (`schema/resetguard.schema.json`).
pub const SCHEMA: &str = include_str!("../../schema/resetguard.schema.json");

/// A serde_json value (what the CLI reads JSON and YAML into) as the filter's own JSON value
/// (what `Config::parse_value` and `RouteOverride` take): the same tree, object keys sorted.
pub fn filter_json(value: &serde_json::Value) -> resetguard_core::json::Value {
    use resetguard_core::json::{Object, Value};
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        // serde_json writes every number it holds as JSON, which the filter reads back as is.
        serde_json::Value::Number(n) => {
            resetguard_core::json::parse(n.to_string().as_bytes()).unwrap_or(Value::Null)
        }
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(filter_json).collect()),
        serde_json::Value::Object(map) => Value::Object(Object::from_entries(
            map.iter()
                .map(|(k, v)| (k.clone(), filter_json(v)))
                .collect(),
        )),
    }
}
