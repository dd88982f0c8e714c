//! The filter reads the shapes of the settings from the JSON Schema at run time; it carries a copy
//! without the descriptions (for editors, not for the proxy) and without whitespace.

use serde_json::Value;

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

fn main() {
    let source = "../schema/resetguard.schema.json";
    println!("cargo:rerun-if-changed={source}");
    let text = std::fs::read_to_string(source).expect("the schema is readable");
    let mut schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    strip(&mut schema);
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("shapes.json");
    std::fs::write(out, schema.to_string()).expect("OUT_DIR is writable");
}
