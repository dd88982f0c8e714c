//! The README's configuration reference has one row per setting of the JSON Schema (the one
//! description of the settings), each with the schema's default, and no row the schema lacks.

use serde_json::Value;

fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

/// The rows of the first table under the README's heading for `section` ("### `retry`",
/// "#### `idempotency.store`"): (key, default cell).
fn rows(readme: &str, section: &str) -> Vec<(String, String)> {
    let level = if section.contains('.') { "####" } else { "###" };
    let heading = format!("\n{level} `{section}`\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("a {heading:?} heading"));
    let lines = readme[start + heading.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2);
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            (key.to_string(), cells[1].to_string())
        })
        .collect()
}

/// The first backticked value of a default cell, as JSON (`"Idempotency-Key"`, `[]`, `2`).
fn shown_default(cell: &str) -> Value {
    let value = cell.split('`').nth(1).unwrap_or_default();
    serde_json::from_str(value).unwrap_or_else(|e| panic!("{cell:?}: {e}"))
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // Header names are case-insensitive; the README writes the key header as clients do.
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

#[test]
fn every_setting_has_a_row_with_the_schema_default() {
    let schema: Value = serde_json::from_str(resetguard_cli::SCHEMA).unwrap();
    let readme = readme();
    let mut sections: Vec<(String, &Value)> = ["retry", "client_abort", "idempotency"]
        .map(|s| (s.to_string(), &schema["$defs"][s]))
        .into();
    while let Some((section, definition)) = sections.pop() {
        let properties = definition["properties"].as_object().unwrap();
        let rows = rows(&readme, &section);
        for (key, property) in properties {
            let Some((_, cell)) = rows.iter().find(|(k, _)| k == key) else {
                panic!("README: no row for `{section}.{key}`");
            };
            // A nested section (`$ref` to an object) has its own table under its own heading.
            let target = property["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .map(|name| &schema["$defs"][name]);
            if let Some(nested) = target.filter(|d| d["type"] == "object") {
                sections.push((format!("{section}.{key}"), nested));
                continue;
            }
            let default = &property["default"];
            // A setting without a default (required when used, e.g. a cluster name) shows `-`.
            if default.is_null() {
                assert!(
                    cell.starts_with('-'),
                    "README: `{section}.{key}` shows {cell}"
                );
                continue;
            }
            assert!(
                same(&shown_default(cell), default),
                "README: `{section}.{key}` shows {cell}, the schema's default is {default}"
            );
        }
        for (key, _) in &rows {
            assert!(
                properties.contains_key(key),
                "README: `{section}.{key}` is not a setting"
            );
        }
    }
}
