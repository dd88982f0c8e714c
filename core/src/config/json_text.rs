//! The plugin JSON as text, parsed by serde_json with one rule its `Value` cannot keep: a key
//! given twice in one object is refused (which of the two would count?), named by its path.

use super::reader::{child_path, error, ConfigError};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

/// Parses one JSON value; duplicate keys are an error at their path.
pub fn parse_strict(raw: &[u8]) -> Result<Value, ConfigError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(raw);
    let parsed = Strict {
        path: Path::Root,
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| match duplicate.take() {
        Some(path) => error(&path, "each setting once, got it twice in one object"),
        None => error("$", format!("a JSON object ({e})")),
    })
}

/// Parses one JSON value with the same rules, for text that is not configuration (the schema,
/// etcd's answers): `None` for anything that is not JSON. One deserializer for every JSON the
/// filter reads keeps one copy of its code in the .wasm.
pub fn parse_value(raw: &[u8]) -> Option<Value> {
    parse_strict(raw).ok()
}

/// Where a value sits, borrowed from its parents' frames: rendered only when a duplicate is
/// named, so a parse without one formats no path at all.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    /// The reader's notation: `$` for the root, `retry.max_retries`, `a[1].b`.
    fn render(&self) -> String {
        match self {
            Path::Root => "$".to_string(),
            Path::Key(Path::Root, key) => key.to_string(),
            Path::Key(parent, key) => child_path(&parent.render(), key),
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// Builds a `Value` like serde_json's own, carrying the path so a duplicate can be named.
struct Strict<'p, 'd> {
    path: Path<'p>,
    duplicate: &'d RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let item = Strict {
                path: Path::Index(&self.path, items.len()),
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(item)? {
                Some(value) => items.push(value),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(Path::Key(&self.path, &key).render());
                return Err(de::Error::custom("a key given twice"));
            }
            let value = map.next_value_seed(Strict {
                path: Path::Key(&self.path, &key),
                duplicate: self.duplicate,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_what_serde_json_reads() {
        let raw = br#"{"a": [1, -2, 3.5, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            parse_strict(raw).unwrap(),
            serde_json::from_slice::<Value>(raw).unwrap()
        );
        assert_eq!(parse_strict(b" 7 ").unwrap(), json!(7));
    }

    #[test]
    fn a_key_given_twice_is_named_by_its_path() {
        let cases: [(&[u8], &str); 3] = [
            (br#"{"retry": {}, "retry": {}}"#, "retry"),
            (
                br#"{"retry": {"max_retries": 1, "max_retries": 2}}"#,
                "retry.max_retries",
            ),
            (br#"{"a": [{"b": 1}, {"b": 1, "b": 2}]}"#, "a[1].b"),
        ];
        for (raw, path) in cases {
            let e = parse_strict(raw).unwrap_err();
            assert_eq!(e.path, path);
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid plugin configuration at `{path}`: each setting once, got it twice in \
                     one object"
                )
            );
        }
    }

    #[test]
    fn syntax_errors_say_where_at_the_root() {
        for raw in [&b"{"[..], b"{} x", b"\xff", b"[1,]", b""] {
            let e = parse_strict(raw).unwrap_err();
            assert_eq!(e.path, "$");
            assert!(e.expected.starts_with("a JSON object ("), "{e}");
            assert!(e.expected.contains("line 1 column"), "{e}");
        }
    }
}
