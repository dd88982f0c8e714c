//! The JSON Schema of the plugin configuration (`schema/resetguard.schema.json`) is the one
//! description of the settings: editors and `resetguard schema` show it, the drift test
//! (`cli/tests/schema_drift.rs`) holds the strict reader to it, and what the filter needs to know
//! about the settings is read from it here: the type of each setting (to decode untyped route
//! metadata), the settings a route may not override, and the registered HTTP methods.

use serde_json::Value;
use std::sync::OnceLock;

/// The schema as shipped (for `resetguard schema` and tools).
pub const SCHEMA_JSON: &str = include_str!("../../../schema/resetguard.schema.json");
/// The same schema without descriptions or whitespace (build.rs): what the filter reads.
const SHAPES_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/shapes.json"));

/// What a setting holds, as far as decoding the untyped route-metadata encoding needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    Bool,
    Integer,
    Text,
    List(Box<Shape>),
    Object(Vec<(String, Shape)>),
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    // The file is part of the build and a test parses it: Null only if it were not JSON.
    SCHEMA.get_or_init(|| {
        super::json_text::parse_value(SHAPES_JSON.as_bytes()).unwrap_or(Value::Null)
    })
}

/// The definition a `$ref` (`#/$defs/NAME`) points at, or the node itself.
fn resolve(node: &Value) -> &Value {
    node.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| schema().get("$defs")?.get(name))
        .unwrap_or(node)
}

fn shape_of(node: &Value) -> Shape {
    let node = resolve(node);
    match node.get("type").and_then(Value::as_str) {
        Some("boolean") => Shape::Bool,
        Some("integer") => Shape::Integer,
        Some("array") => Shape::List(Box::new(node.get("items").map_or(Shape::Text, shape_of))),
        Some("object") => Shape::Object(
            node.get("properties")
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, prop)| (name.clone(), shape_of(prop)))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        // Strings, and enums of strings.
        _ => Shape::Text,
    }
}

/// The shape of a route override (`$defs/route_override`): `disabled` plus every setting.
pub fn route_override_shape() -> &'static Shape {
    static SHAPE: OnceLock<Shape> = OnceLock::new();
    SHAPE.get_or_init(|| {
        schema()
            .get("$defs")
            .and_then(|d| d.get("route_override"))
            .map_or(Shape::Object(Vec::new()), shape_of)
    })
}

/// The methods of IANA's HTTP Method Registry (`$defs/method`): anything else in the config is
/// a typo.
pub fn registered_methods() -> &'static [&'static str] {
    static METHODS: OnceLock<Vec<&'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        schema()
            .pointer("/$defs/method/enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    })
}

/// The settings a route may not override (they size or key the store opened at configure
/// time), as dotted paths: what the route override's schema forbids with `not: {anyOf:
/// [{required: [...]}]}`.
pub fn fixed_settings() -> &'static [String] {
    static FIXED: OnceLock<Vec<String>> = OnceLock::new();
    FIXED.get_or_init(|| {
        let Some(props) = schema()
            .pointer("/$defs/route_override/properties")
            .and_then(Value::as_object)
        else {
            return Vec::new();
        };
        let mut fixed = Vec::new();
        for (section, node) in props {
            let forbidden = node
                .pointer("/not/anyOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|alt| alt.get("required")?.as_array())
                .flatten()
                .filter_map(Value::as_str);
            fixed.extend(forbidden.map(|key| format!("{section}.{key}")));
        }
        fixed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_json_and_describes_every_section() {
        assert!(schema().is_object());
        let Shape::Object(sections) = route_override_shape() else {
            panic!("{:?}", route_override_shape());
        };
        let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["client_abort", "disabled", "idempotency", "retry"]);
    }

    #[test]
    fn shapes_follow_the_schema_types_through_refs() {
        let Shape::Object(sections) = route_override_shape() else {
            panic!();
        };
        let section = |name: &str| match sections.iter().find(|(n, _)| n == name) {
            Some((_, Shape::Object(fields))) => fields.clone(),
            other => panic!("{name}: {other:?}"),
        };
        let field = |sec: &str, name: &str| {
            section(sec)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s)
        };
        assert_eq!(field("retry", "max_retries"), Some(Shape::Integer));
        assert_eq!(
            field("retry", "on"),
            Some(Shape::List(Box::new(Shape::Text)))
        );
        assert_eq!(
            field("retry", "retriable_status_codes"),
            Some(Shape::List(Box::new(Shape::Integer)))
        );
        assert_eq!(field("idempotency", "header"), Some(Shape::Text));
        assert_eq!(field("idempotency", "mode"), Some(Shape::Text));
        assert_eq!(field("client_abort", "filter_state"), Some(Shape::Bool));
    }

    #[test]
    fn the_method_registry_is_iana_s() {
        let methods = registered_methods();
        assert_eq!(methods.len(), 40);
        for m in ["GET", "POST", "PATCH", "QUERY", "PRI", "VERSION-CONTROL"] {
            assert!(methods.contains(&m), "{m}");
        }
        assert!(!methods.contains(&"get"));
    }

    #[test]
    fn fixed_settings_are_the_ones_that_size_or_choose_the_store() {
        assert_eq!(
            fixed_settings(),
            [
                "idempotency.shards",
                "idempotency.max_entries",
                "idempotency.ttl_seconds",
                "idempotency.lock_timeout_ms",
                "idempotency.require_store",
                "idempotency.store",
            ]
        );
    }
}
