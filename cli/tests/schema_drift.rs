//! The JSON Schema (`schema/resetguard.schema.json`) and the filter's config parser must agree, in
//! both directions:
//!
//! - schema -> Rust: for every setting, values the schema accepts (default, bounds, every enum
//!   member, pattern matches) are accepted by `Config::parse` and land in that setting (the
//!   rendered effective config shows them); values the schema rejects (wrong type, one past a
//!   bound, a bogus enum member, a pattern miss, a bad array item) are rejected at that exact
//!   path; the schema's `default` is the parser's default.
//! - Rust -> schema: the keys the parser consults in each object (it lists them when it meets an
//!   unknown key: "known settings here: …"), the values of every enum (listed when it meets a bogus
//!   one: "one of …") and every integer range ("an integer from MIN to MAX") equal the schema's.

use resetguard_cli::effective::config_json;
use resetguard_core::config::route_override::{fixed_settings, RouteOverride};
use resetguard_core::config::Config;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

fn schema() -> Value {
    serde_json::from_str(resetguard_cli::SCHEMA).expect("the schema is JSON")
}

/// Follows a local `$ref` (`#/$defs/name`), merging the referring node's own keywords.
fn resolve(schema: &Value, node: &Value) -> Value {
    let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
        return node.clone();
    };
    let pointer = reference.strip_prefix('#').expect("local $ref");
    let mut target = resolve(schema, schema.pointer(pointer).expect("$ref resolves"));
    if let (Value::Object(t), Value::Object(n)) = (&mut target, node) {
        for (k, v) in n {
            if k != "$ref" {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    target
}

fn properties(schema: &Value, node: &Value) -> Map<String, Value> {
    resolve(schema, node)
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// A minimal validator for the keywords the schema uses; checks that the samples below are what
/// the test claims (schema-valid or not) and that the shipped examples conform.
fn conforms(schema: &Value, node: &Value, value: &Value) -> bool {
    let node = resolve(schema, node);
    if let Some(t) = node.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_u64() || value.is_i64(),
            other => panic!("type {other} not handled by the test's validator"),
        };
        if !ok {
            return false;
        }
    }
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return false;
        }
    }
    if let Some(n) = value.as_f64() {
        let below = node
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m);
        let above = node
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m);
        if below || above {
            return false;
        }
    }
    if let (Some(p), Some(s)) = (node.get("pattern").and_then(Value::as_str), value.as_str()) {
        if !regex_lite::Regex::new(p)
            .expect("pattern compiles")
            .is_match(s)
        {
            return false;
        }
    }
    if let (Some(items), Some(values)) = (node.get("items"), value.as_array()) {
        if !values.iter().all(|v| conforms(schema, items, v)) {
            return false;
        }
    }
    if let Some(map) = value.as_object() {
        let props = properties(schema, &node);
        let closed = node.get("additionalProperties") == Some(&Value::Bool(false));
        for (k, v) in map {
            match props.get(k) {
                Some(p) if !conforms(schema, p, v) => return false,
                None if closed => return false,
                _ => {}
            }
        }
    }
    true
}

/// Settings whose valid range depends on another one (`ceil(max_entries / shards) <= 4096`): the
/// companion value that lets every schema-valid value of the first be valid.
fn companion(section: &str, key: &str) -> Map<String, Value> {
    let pair = match (section, key) {
        ("idempotency", "max_entries") => Some(("shards", json!(4096))),
        ("idempotency", "shards") => Some(("max_entries", json!(1))),
        // The etcd backend needs its cluster.
        ("idempotency.store", "backend") => Some(("cluster", json!("etcd"))),
        _ => None,
    };
    pair.map(|(k, v)| Map::from_iter([(k.to_string(), v)]))
        .unwrap_or_default()
}

/// A config that sets `key` of the (dotted) `section` to `value`, with its companion.
fn config_with(section: &str, key: &str, value: &Value) -> Value {
    let mut body = companion(section, key);
    body.insert(key.to_string(), value.clone());
    section
        .rsplit('.')
        .fold(Value::Object(body), |inner, name| json!({ name: inner }))
}

/// The value at a dotted section path and key of a rendered config.
fn at<'a>(rendered: &'a Value, section: &str, key: &str) -> &'a Value {
    section
        .split('.')
        .fold(rendered, |v, name| &v[name])
        .get(key)
        .unwrap_or(&Value::Null)
}

/// How the effective config renders an accepted value: lists deduped, and header names
/// (`lower`) lower-cased as proxies hand them to filters.
fn normalised(value: &Value, lower: bool) -> Value {
    match value {
        Value::String(s) if lower => Value::String(s.to_ascii_lowercase()),
        Value::Array(items) => {
            let mut out: Vec<Value> = Vec::new();
            for item in items {
                let item = normalised(item, lower);
                if !out.contains(&item) {
                    out.push(item);
                }
            }
            Value::Array(out)
        }
        other => other.clone(),
    }
}

/// Whether a setting holds header names (its value or items use `$defs/header_name`).
fn holds_header_names(schema: &Value, s: &Setting) -> bool {
    let pattern = &schema["$defs"]["header_name"]["pattern"];
    let item = s.node.get("items").map(|i| resolve(schema, i));
    s.node.get("pattern") == Some(pattern)
        || item.is_some_and(|i| i.get("pattern") == Some(pattern))
}

/// Strings to try against a `pattern`.
const STRING_PROBES: &[&str] = &[
    "idempotency-key",
    "X-Tenant-Id",
    "/payments",
    "/",
    "",
    "has space",
    "payments",
    ":path",
    "/caf\u{e9}",
    "x\ty",
];

/// (value, schema-valid?) samples for one setting, derived from its schema.
fn samples(node: &Value) -> Vec<(Value, bool)> {
    let mut out = Vec::new();
    if let Some(d) = node.get("default") {
        out.push((d.clone(), true));
    }
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        out.extend(options.iter().map(|o| (o.clone(), true)));
        out.push((json!("__bogus__"), false));
        out.push((json!(1), false));
    }
    match node.get("type").and_then(Value::as_str) {
        Some("integer") => {
            let min = node["minimum"].as_i64().expect("integers have a minimum");
            let max = node["maximum"].as_i64().expect("integers have a maximum");
            out.extend([
                (json!(min), true),
                (json!(max), true),
                (json!(min - 1), false),
            ]);
            out.extend([
                (json!(max + 1), false),
                (json!(min.to_string()), false),
                (json!(1.5), false),
            ]);
        }
        Some("boolean") => {
            out.extend([
                (json!(true), true),
                (json!(false), true),
                (json!("true"), false),
            ]);
        }
        Some("string") => {
            out.push((json!(7), false));
            if node.get("pattern").is_some() {
                out.extend(STRING_PROBES.iter().map(|s| (json!(s), true)));
            }
        }
        Some("array") => out.push((json!("not an array"), false)),
        _ => {}
    }
    out
}

struct Setting {
    section: String,
    key: String,
    node: Value,
}

/// Every leaf setting, nested sections (`idempotency.store`) included.
fn settings(schema: &Value) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut sections: Vec<(String, Value)> = properties(schema, schema).into_iter().collect();
    while let Some((section, node)) = sections.pop() {
        for (key, leaf) in properties(schema, &node) {
            let node = resolve(schema, &leaf);
            if node.get("type") == Some(&json!("object")) {
                sections.push((format!("{section}.{key}"), node));
                continue;
            }
            out.push(Setting {
                section: section.clone(),
                key,
                node,
            });
        }
    }
    assert!(
        out.len() >= 20,
        "the schema lists the settings ({})",
        out.len()
    );
    out
}

fn check_sample(schema: &Value, s: &Setting, value: &Value, path: &str, claimed_valid: bool) {
    let config = config_with(&s.section, &s.key, value);
    // The claim is checked against the schema itself (pattern samples are claimed per verdict).
    let valid = conforms(schema, schema, &config);
    if s.node.get("pattern").is_none() && s.node.get("items").is_none() {
        assert_eq!(
            valid, claimed_valid,
            "{path} = {value}: the test's own sample is wrong"
        );
    }
    match Config::parse(config.to_string().as_bytes()) {
        Ok(parsed) if valid => {
            let rendered = config_json(&parsed);
            assert_eq!(
                at(&rendered, &s.section, &s.key),
                &normalised(value, holds_header_names(schema, s)),
                "{path} = {value}: accepted, but it did not land in that setting"
            );
        }
        Ok(_) => panic!("{path} = {value}: the schema rejects it, the filter accepts it"),
        Err(e) if valid => {
            panic!("{path} = {value}: the schema accepts it, the filter rejects it: {e}")
        }
        Err(e) => assert!(
            e.path == path || e.path.starts_with(&format!("{path}[")),
            "{path} = {value}: rejected at `{}`, not at the setting ({e})",
            e.path
        ),
    }
}

#[test]
fn every_schema_setting_is_read_by_the_filter_with_the_same_rules() {
    let schema = schema();
    for s in settings(&schema) {
        let path = format!("{}.{}", s.section, s.key);
        for (value, claimed_valid) in samples(&s.node) {
            check_sample(&schema, &s, &value, &path, claimed_valid);
        }
        // Array settings: every sample of the item schema, as a one-item list.
        if let Some(items) = s.node.get("items") {
            let items = resolve(&schema, items);
            for (item, claimed_valid) in samples(&items) {
                check_sample(&schema, &s, &json!([item]), &path, claimed_valid);
            }
        }
    }
}

#[test]
fn schema_defaults_are_the_filters_defaults() {
    let schema = schema();
    for s in settings(&schema) {
        let path = format!("{}.{}", s.section, s.key);
        let top = s.section.split('.').next().unwrap_or_default();
        let parsed = Config::parse(json!({ top: {} }).to_string().as_bytes()).unwrap();
        let rendered = config_json(&parsed);
        match s.node.get("default") {
            Some(default) => assert_eq!(
                at(&rendered, &s.section, &s.key),
                &normalised(default, holds_header_names(&schema, &s)),
                "{path}: the schema's default differs from the filter's"
            ),
            // No default (a name the operator must give when it is used): the filter has none.
            None => assert_eq!(at(&rendered, &s.section, &s.key), &Value::Null, "{path}"),
        }
        assert!(
            s.node
                .get("description")
                .is_some_and(|d| d.as_str().is_some_and(|d| d.len() > 10)),
            "{path} has no description"
        );
    }
}

/// The comma-separated list after `prefix` in an error message.
fn listed_after(message: &str, prefix: &str, end: &str) -> Option<BTreeSet<String>> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let list = rest.split(end).next()?;
    Some(list.split(", ").map(str::to_string).collect())
}

/// `value` nested under `path` (`["retry"]` -> `{"retry": value}`).
fn nested(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |v, k| json!({ k: v }))
}

/// The keys the filter's reader consults in the object at `path`, or `None` when it does not read
/// an object there: an unknown key makes it list them ("known settings here: …").
fn keys_the_filter_reads(path: &[String]) -> Option<BTreeSet<String>> {
    let config = nested(path, json!({"__probe__": 1}));
    let err = Config::parse(config.to_string().as_bytes()).unwrap_err();
    if !err.path.ends_with("__probe__") {
        return None; // rejected at the setting itself: not an object
    }
    Some(
        listed_after(&err.expected, "known settings here: ", "\n")
            .expect("the reader lists its keys"),
    )
}

/// Walks every object the filter reads, from the filter's side, comparing keys with the schema.
fn compare_objects(schema: &Value, node: &Value, path: &mut Vec<String>) {
    let in_schema: BTreeSet<String> = properties(schema, node).keys().cloned().collect();
    let read = keys_the_filter_reads(path)
        .unwrap_or_else(|| panic!("{path:?} is an object in the schema, not in the filter"));
    assert_eq!(
        read,
        in_schema,
        "keys of `{}`: filter (left) vs schema (right)",
        path.join(".")
    );
    for key in read {
        path.push(key.clone());
        let child = resolve(schema, &properties(schema, node)[&key]);
        let schema_object = child.get("type").and_then(Value::as_str) == Some("object");
        match keys_the_filter_reads(path) {
            Some(_) => {
                assert!(
                    schema_object,
                    "`{}` is an object in the filter, not in the schema",
                    path.join(".")
                );
                compare_objects(schema, &child, path);
            }
            None => assert!(
                !schema_object,
                "`{}` is an object in the schema, not in the filter",
                path.join(".")
            ),
        }
        path.pop();
    }
}

#[test]
fn every_key_the_filter_reads_is_in_the_schema() {
    let schema = schema();
    compare_objects(&schema, &schema, &mut Vec::new());
}

#[test]
fn enums_and_ranges_match_what_the_filter_says_it_accepts() {
    let schema = schema();
    for s in settings(&schema) {
        let path = format!("{}.{}", s.section, s.key);
        let (node, value, err_path) = match s.node.get("items") {
            Some(items) => (
                resolve(&schema, items),
                json!(["__bogus__"]),
                format!("{path}[0]"),
            ),
            None => (s.node.clone(), json!("__bogus__"), path.clone()),
        };
        let config = config_with(&s.section, &s.key, &value);
        let err = Config::parse(config.to_string().as_bytes());
        if let Some(options) = node.get("enum").and_then(Value::as_array) {
            let err = err.expect_err(&path);
            assert_eq!(err.path, err_path);
            let in_schema: BTreeSet<String> = options
                .iter()
                .map(|o| o.as_str().unwrap().to_string())
                .collect();
            // Methods are checked against the IANA registry without listing it; each schema
            // member was accepted above.
            if let Some(listed) = listed_after(&err.expected, "one of ", ", got") {
                assert_eq!(
                    listed, in_schema,
                    "{path}: enum of the filter (left) vs schema (right)"
                );
            }
        }
        if node.get("type").and_then(Value::as_str) == Some("integer") {
            let below = if s.node.get("items").is_some() {
                json!([-1])
            } else {
                json!(-1)
            };
            let config = config_with(&s.section, &s.key, &below);
            let err = Config::parse(config.to_string().as_bytes()).expect_err(&path);
            let range = listed_after(&err.expected, "an integer from ", ", got")
                .and_then(|r| r.into_iter().next())
                .unwrap_or_else(|| panic!("{path}: {err}"));
            let expected = format!("{} to {}", node["minimum"], node["maximum"]);
            assert_eq!(
                range, expected,
                "{path}: range of the filter (left) vs schema (right)"
            );
        }
    }
}

#[test]
fn route_overrides_forbid_exactly_the_fixed_settings() {
    let schema = schema();
    let over = resolve(&schema, &schema["$defs"]["route_override"]);
    let plugin: BTreeSet<String> = properties(&schema, &schema).keys().cloned().collect();
    let mut expected = plugin.clone();
    expected.insert("disabled".to_string());
    let keys: BTreeSet<String> = properties(&schema, &over).keys().cloned().collect();
    assert_eq!(
        keys, expected,
        "a route override is the plugin sections plus `disabled`"
    );
    for fixed in fixed_settings() {
        let (section, key) = fixed.split_once('.').unwrap();
        let value = json!({ section: { key: 1 } });
        assert!(
            !conforms_override(&schema, &value),
            "{fixed}: the schema allows it per route"
        );
        let err = RouteOverride::from_value(&value).unwrap_err();
        assert_eq!(err.path, *fixed);
    }
    for ok in [
        json!({"disabled": true}),
        json!({"retry": {"max_retries": 3}}),
        json!({"idempotency": {"mode": "report"}}),
    ] {
        assert!(conforms_override(&schema, &ok), "{ok}");
        RouteOverride::from_value(&ok).unwrap();
    }
    assert!(!conforms_override(&schema, &json!({"disabled": "yes"})));
    assert!(RouteOverride::from_value(&json!({"disabled": "yes"})).is_err());
}

/// The route override schema: the plugin schema's checks plus its `not` clauses.
fn conforms_override(schema: &Value, value: &Value) -> bool {
    let over = resolve(schema, &schema["$defs"]["route_override"]);
    if !conforms(schema, &over, value) {
        return false;
    }
    let section = &over["properties"]["idempotency"];
    let forbidden = section
        .pointer("/not/anyOf")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let present = value.get("idempotency").and_then(Value::as_object);
    !forbidden.iter().any(|clause| {
        let required = clause["required"][0].as_str().unwrap_or("");
        present.is_some_and(|m| m.contains_key(required))
    })
}

#[test]
fn shipped_plugin_configs_conform_to_the_schema() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let schema = schema();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let value: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(conforms(&schema, &schema, &value), "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "examples found: {n}");
}
