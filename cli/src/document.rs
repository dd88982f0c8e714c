//! Loads a JSON or YAML file into JSON values, remembering the line of every node so errors can
//! say where they are. YAML is read as 1.2 (Envoy's dialect); Kubernetes manifests are read as
//! the YAML 1.1 their API server uses, where a bare `on`/`off`/`yes`/`no` is a boolean.

use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML document (or the JSON file), as JSON.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    /// Line (1-based) of each node, by its dotted path (`a.b[0].c`; the root is `$`).
    pub lines: BTreeMap<String, usize>,
    /// Plain scalars that YAML 1.1 reads as booleans (only when loaded as YAML 1.1): path, word.
    pub yaml11_booleans: Vec<(String, String)>,
    /// Structural problems the parser tolerates but a proxy would not: path, message.
    pub problems: Vec<(String, String)>,
}

impl Document {
    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(line) = self.lines.get(&p) {
                return Some(*line);
            }
            p = parent_path(&p)?;
        }
    }

    /// Reads the same document again as YAML 1.1 (for Kubernetes manifests).
    pub fn reload_as_yaml11(text: &str, index: usize) -> Option<Document> {
        load_yaml(text, true).ok()?.into_iter().nth(index)
    }
}

/// `a.b[1]` -> `a.b`, `a.b` -> `a`, `a` -> `$`, `$` -> none.
pub fn parent_path(path: &str) -> Option<String> {
    if path == "$" {
        return None;
    }
    let Some(cut) = path.rfind(['.', '[']) else {
        return Some("$".to_string());
    };
    Some(if cut == 0 {
        "$".to_string()
    } else {
        path[..cut].to_string()
    })
}

/// `parent` + `.key` (keys that are not identifiers are quoted).
pub fn child_key(parent: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-@/".contains(&b));
    let key = if simple {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    };
    if parent == "$" {
        key
    } else {
        format!("{parent}.{key}")
    }
}

pub fn child_index(parent: &str, index: usize) -> String {
    if parent == "$" {
        format!("[{index}]")
    } else {
        format!("{parent}[{index}]")
    }
}

/// Parses `text`: JSON when it is JSON (values exactly as serde_json reads them), otherwise YAML.
pub fn load(text: &str) -> Result<Vec<Document>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => {
            // JSON is YAML 1.2: the YAML reader supplies line numbers when it agrees.
            let lines = load_yaml(text, false)
                .ok()
                .and_then(|docs| docs.into_iter().next())
                .filter(|d| d.value == value)
                .map(|d| d.lines)
                .unwrap_or_default();
            Ok(vec![Document {
                value,
                lines,
                yaml11_booleans: Vec::new(),
                problems: Vec::new(),
            }])
        }
        // Nothing at all is a plugin config of defaults, as the filter reads it.
        Err(_) if text.trim().is_empty() => Ok(vec![Document {
            value: Value::Null,
            lines: BTreeMap::new(),
            yaml11_booleans: Vec::new(),
            problems: Vec::new(),
        }]),
        Err(json_err) => load_yaml(text, false)
            .map_err(|yaml_err| format!("neither JSON ({json_err}) nor YAML ({yaml_err})")),
    }
}

pub fn load_yaml(text: &str, yaml11: bool) -> Result<Vec<Document>, String> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder {
        yaml11,
        ..Builder::default()
    };
    loop {
        let (event, mark) = parser.next_token().map_err(|e| e.to_string())?;
        match event {
            Event::StreamEnd => break,
            event => builder.on_event(event, mark)?,
        }
    }
    Ok(builder.documents)
}

/// The deepest nesting read, as serde_json's own recursion limit for JSON.
pub const MAX_DEPTH: usize = 128;

enum Frame {
    Mapping {
        path: String,
        anchor: usize,
        map: Map<String, Value>,
        /// The key read, waiting for its value.
        key: Option<String>,
    },
    Sequence {
        path: String,
        anchor: usize,
        items: Vec<Value>,
    },
}

#[derive(Default)]
struct Builder {
    yaml11: bool,
    stack: Vec<Frame>,
    anchors: BTreeMap<usize, Value>,
    documents: Vec<Document>,
    current: Option<Document>,
}

impl Builder {
    fn doc(&mut self) -> &mut Document {
        self.current.get_or_insert_with(|| Document {
            value: Value::Null,
            lines: BTreeMap::new(),
            yaml11_booleans: Vec::new(),
            problems: Vec::new(),
        })
    }

    /// The path of the node that starts now (a mapping value or a sequence item).
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => "$".to_string(),
            Some(Frame::Mapping { path, key, .. }) => child_key(path, key.as_deref().unwrap_or("")),
            Some(Frame::Sequence { path, items, .. }) => child_index(path, items.len()),
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Mapping { key: None, .. }))
    }

    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), String> {
        match event {
            Event::DocumentStart => {
                self.doc();
            }
            Event::DocumentEnd => {
                if let Some(doc) = self.current.take() {
                    self.documents.push(doc);
                }
                self.anchors.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.expecting_key() {
                    let path = match self.stack.last() {
                        Some(Frame::Mapping { path, .. }) => path.clone(),
                        _ => "$".to_string(),
                    };
                    let mut key = text.clone();
                    if let Some(b) =
                        yaml11_bool(&text).filter(|_| self.yaml11 && style == TScalarStyle::Plain)
                    {
                        // What Kubernetes delivers: the key becomes "true" or "false".
                        key = b.to_string();
                        if key != text {
                            let at = child_key(&path, &key);
                            self.doc().yaml11_booleans.push((at, text));
                        }
                    }
                    if let Some(Frame::Mapping { map, key: slot, .. }) = self.stack.last_mut() {
                        let dup = map.contains_key(&key);
                        *slot = Some(key);
                        if dup {
                            let at = self.next_path();
                            self.doc()
                                .problems
                                .push((at, "duplicate key (YAML forbids it)".to_string()));
                        }
                    }
                    let at = self.next_path();
                    self.doc().lines.insert(at, mark.line());
                    return Ok(());
                }
                let path = self.next_path();
                let value = self.scalar(&path, text, style, tag.as_ref());
                self.record_line(&path, mark);
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.push_value(value);
            }
            Event::Alias(id) => {
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                let path = self.start_node("an alias", mark)?;
                self.record_line(&path, mark);
                self.push_value(value);
            }
            Event::MappingStart(anchor, _) => {
                self.check_depth(mark)?;
                let path = self.start_node("a mapping", mark)?;
                self.stack.push(Frame::Mapping {
                    path,
                    anchor,
                    map: Map::new(),
                    key: None,
                });
            }
            Event::SequenceStart(anchor, _) => {
                self.check_depth(mark)?;
                let path = self.start_node("a sequence", mark)?;
                self.stack.push(Frame::Sequence {
                    path,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Mapping { map, anchor, .. }) => (Value::Object(map), anchor),
                    Some(Frame::Sequence { items, anchor, .. }) => (Value::Array(items), anchor),
                    None => return Err(format!("line {}: unbalanced YAML", mark.line())),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, value.clone());
                }
                self.push_value(value);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Refuses nesting deeper than JSON input may be (serde_json's limit): every later step
    /// (serialising a plugin config, walking a bootstrap) recurses once per level.
    fn check_depth(&self, mark: Marker) -> Result<(), String> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!(
                "line {}: nested deeper than {MAX_DEPTH} levels",
                mark.line()
            ));
        }
        Ok(())
    }

    /// The path (line recorded) of a node that starts here; only scalars may be mapping keys.
    fn start_node(&mut self, what: &str, mark: Marker) -> Result<String, String> {
        if self.expecting_key() {
            return Err(format!("line {}: {what} as a mapping key", mark.line()));
        }
        let path = self.next_path();
        self.record_line(&path, mark);
        Ok(path)
    }

    fn record_line(&mut self, path: &str, mark: Marker) {
        let line = mark.line();
        self.doc().lines.entry(path.to_string()).or_insert(line);
    }

    fn push_value(&mut self, value: Value) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
            Some(Frame::Sequence { items, .. }) => items.push(value),
            None => self.doc().value = value,
        }
    }

    fn scalar(
        &mut self,
        path: &str,
        text: String,
        style: TScalarStyle,
        tag: Option<&Tag>,
    ) -> Value {
        if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
            return Value::String(text);
        }
        if self.yaml11 {
            if let Some(b) = yaml11_bool(&text) {
                if !matches!(
                    text.as_str(),
                    "true" | "false" | "True" | "False" | "TRUE" | "FALSE"
                ) {
                    self.doc()
                        .yaml11_booleans
                        .push((path.to_string(), text.clone()));
                }
                return Value::Bool(b);
            }
        }
        resolve_plain(text)
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.trim_start_matches('+').parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = text.trim_start_matches('+').parse::<u64>() {
            return Value::Number(n.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(n) = u64::from_str_radix(hex, 16) {
            return Value::Number(n.into());
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(n) = u64::from_str_radix(oct, 8) {
            return Value::Number(n.into());
        }
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b".eE+-".contains(&b));
    if looks_float {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text)
}

/// YAML 1.1's booleans (what Kubernetes' parser makes of them).
pub fn yaml11_bool(text: &str) -> Option<bool> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            Some(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            Some(false)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_values_and_lines() {
        let docs =
            load("a:\n  b: [1, x, true, ~, 1.5]\n  \"on\": 2\nc: &x {d: 0x10}\ne: *x\n").unwrap();
        let d = &docs[0];
        assert_eq!(
            d.value,
            json!({"a": {"b": [1, "x", true, null, 1.5], "on": 2}, "c": {"d": 16}, "e": {"d": 16}})
        );
        assert_eq!(d.line_of("a.b[2]"), Some(2));
        assert_eq!(d.line_of("a.on"), Some(3));
        assert_eq!(d.line_of("e.d"), Some(5));
        assert_eq!(d.line_of("a.nothing.here"), Some(1));
    }

    #[test]
    fn yaml11_reads_bare_on_as_a_boolean_key() {
        let text = "retry:\n  on: [reset]\n  \"on\": [reset]\nlevel: off\n";
        let d12 = &load_yaml(text, false).unwrap()[0];
        assert!(d12.value["retry"].get("on").is_some());
        assert!(d12.yaml11_booleans.is_empty());
        let d11 = &load_yaml(text, true).unwrap()[0];
        assert_eq!(d11.value["level"], json!(false));
        assert_eq!(d11.value["retry"]["true"], json!(["reset"]));
        let paths: Vec<&str> = d11
            .yaml11_booleans
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        assert_eq!(paths, ["retry.true", "level"]);
    }

    #[test]
    fn json_keeps_serde_values_and_gets_lines() {
        let d = &load("{\n  \"retry\": {\n    \"max_retries\": 11\n  }\n}\n").unwrap()[0];
        assert_eq!(d.value, json!({"retry": {"max_retries": 11}}));
        assert_eq!(d.line_of("retry.max_retries"), Some(3));
    }

    #[test]
    fn duplicate_keys_and_multiple_documents() {
        let docs = load("a: 1\na: 2\n---\nb: 1\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].problems[0].0, "a");
        assert!(load("a: [1\n").is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}x", "- ".repeat(MAX_DEPTH));
        assert!(load_yaml(&ok, false).is_ok());
        for deep in [
            format!("{}x", "- ".repeat(20_000)),
            format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)),
            (0..500).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
        ] {
            let err = load(&deep).unwrap_err();
            assert!(
                err.contains("nested deeper than 128 levels") || err.contains("recursion limit"),
                "{err}"
            );
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parent_path("a.b[1]").as_deref(), Some("a.b"));
        assert_eq!(parent_path("a").as_deref(), Some("$"));
        assert_eq!(child_key("$", "@type"), "@type");
        assert_eq!(child_key("x", "a b"), "x.\"a b\"");
        assert_eq!(child_index("x", 2), "x[2]");
    }
}
