//! A strict reader over a JSON object that tracks the field path for error messages and rejects
//! keys nobody asked for, so a typo in the plugin JSON is an error instead of a silent default.

use serde_json::{Map, Value};
use std::fmt;

/// A rejected configuration: the JSON path of the offending field and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration at `{}`: {}",
            self.path, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

pub type ConfigResult<T> = Result<T, ConfigError>;

/// The path of `key` inside the object at `parent` (`$` is the root).
pub fn child_path(parent: &str, key: &str) -> String {
    if parent == "$" {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn error(path: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        expected: expected.into(),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read; `finish` fails on any key that no getter consumed.
pub struct ObjectReader<'a> {
    path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

impl<'a> ObjectReader<'a> {
    pub fn new(path: &str, value: &'a Value) -> ConfigResult<Self> {
        match value {
            Value::Object(map) => Ok(ObjectReader {
                path: path.to_string(),
                map,
                seen: Vec::new(),
            }),
            other => Err(error(path, format!("an object, got {}", describe(other)))),
        }
    }

    pub fn child_path(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A nested object, or `None` when absent (absent means "all defaults").
    pub fn object(&mut self, key: &'static str) -> ConfigResult<Option<ObjectReader<'a>>> {
        let path = self.child_path(key);
        self.take(key)
            .map(|v| ObjectReader::new(&path, v))
            .transpose()
    }

    pub fn bool(&mut self, key: &'static str, default: bool) -> ConfigResult<bool> {
        let path = self.child_path(key);
        match self.take(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(error(&path, format!("a boolean, got {}", describe(other)))),
        }
    }

    /// An integer in `min..=max`.
    pub fn integer(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> ConfigResult<u64> {
        let path = self.child_path(key);
        match self.take(key) {
            None => Ok(default),
            Some(v) => read_integer(&path, v, min, max),
        }
    }

    /// One of the named `options` (listed in that order when the value is none of them).
    pub fn one_of<T: Copy>(
        &mut self,
        key: &'static str,
        default: T,
        options: &[(&'static str, T)],
    ) -> ConfigResult<T> {
        let path = self.child_path(key);
        let Some(name) = self.string(key)? else {
            return Ok(default);
        };
        match options.iter().find(|(option, _)| *option == name) {
            Some((_, value)) => Ok(*value),
            None => {
                let names: Vec<&str> = options.iter().map(|(option, _)| *option).collect();
                Err(error(
                    &path,
                    format!("one of {}, got {name:?}", names.join(", ")),
                ))
            }
        }
    }

    pub fn string(&mut self, key: &'static str) -> ConfigResult<Option<&'a str>> {
        let path = self.child_path(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(error(&path, format!("a string, got {}", describe(other)))),
        }
    }

    /// An array whose items are each read by `item` (which gets the item's path).
    pub fn array<T>(
        &mut self,
        key: &'static str,
        mut item: impl FnMut(&str, &'a Value) -> ConfigResult<T>,
    ) -> ConfigResult<Option<Vec<T>>> {
        let path = self.child_path(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(&format!("{path}[{i}]"), v))
                .collect::<ConfigResult<Vec<T>>>()
                .map(Some),
            Some(other) => Err(error(&path, format!("an array, got {}", describe(other)))),
        }
    }

    /// Fails on the first key that no getter asked for.
    pub fn finish(self) -> ConfigResult<()> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => {
                let path = self.child_path(unknown);
                let mut known = self.seen;
                known.sort_unstable();
                known.dedup();
                Err(error(
                    &path,
                    format!("no such setting; known settings here: {}", known.join(", ")),
                ))
            }
        }
    }
}

/// A setting with a fixed set of values, each with its name in the plugin JSON: the one table
/// the reader accepts (`ObjectReader::one_of`) and the effective view writes (`Serialize`).
pub trait Named: Copy + PartialEq + 'static {
    const NAMES: &'static [(&'static str, Self)];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(name, _)| name)
    }
}

/// `Serialize` for a `Named` enum: its name.
macro_rules! serialize_by_name {
    ($($t:ty),+) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::config::reader::Named::name(*self))
            }
        }
    )+};
}
pub(crate) use serialize_by_name;

pub fn read_integer(path: &str, value: &Value, min: u64, max: u64) -> ConfigResult<u64> {
    let expected = || format!("an integer from {min} to {max}");
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(error(path, format!("{}, got {n}", expected()))),
        None => Err(error(path, format!("{}, got {value}", expected()))),
    }
}

pub fn read_string<'a>(path: &str, value: &'a Value) -> ConfigResult<&'a str> {
    match value {
        Value::String(s) => Ok(s.as_str()),
        other => Err(error(path, format!("a string, got {}", describe(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_name_their_path() {
        let v = json!({"retry": {"max_retriez": 1}});
        let mut root = ObjectReader::new("$", &v).unwrap();
        let mut retry = root.object("retry").unwrap().unwrap();
        assert_eq!(retry.integer("max_retries", 2, 0, 10).unwrap(), 2);
        let err = retry.finish().unwrap_err();
        assert_eq!(err.path, "retry.max_retriez");
        assert!(err.expected.contains("max_retries"), "{err}");
    }

    #[test]
    fn type_and_range_errors_say_what_was_expected() {
        let v = json!({"n": -1, "b": "yes", "big": 11, "f": 1.5});
        let mut r = ObjectReader::new("$", &v).unwrap();
        assert_eq!(
            r.integer("n", 0, 0, 10).unwrap_err().to_string(),
            "invalid plugin configuration at `n`: an integer from 0 to 10, got -1"
        );
        assert_eq!(
            r.bool("b", false).unwrap_err().expected,
            "a boolean, got a string"
        );
        assert_eq!(
            r.integer("big", 0, 0, 10).unwrap_err().expected,
            "an integer from 0 to 10, got 11"
        );
        assert!(r.integer("f", 0, 0, 10).is_err());
    }

    #[test]
    fn one_of_reads_a_named_option_or_lists_them_all() {
        let v = json!({"a": "report", "b": "loud", "c": 1});
        let mut r = ObjectReader::new("$", &v).unwrap();
        let options = [("enforce", 1), ("report", 2)];
        assert_eq!(r.one_of("a", 0, &options).unwrap(), 2);
        assert_eq!(r.one_of("absent", 0, &options).unwrap(), 0);
        assert_eq!(
            r.one_of("b", 0, &options).unwrap_err().to_string(),
            "invalid plugin configuration at `b`: one of enforce, report, got \"loud\""
        );
        assert_eq!(
            r.one_of("c", 0, &options).unwrap_err().expected,
            "a string, got a number"
        );
    }

    #[test]
    fn null_means_default() {
        let v = json!({"n": null});
        let mut r = ObjectReader::new("$", &v).unwrap();
        assert_eq!(r.integer("n", 7, 0, 10).unwrap(), 7);
        r.finish().unwrap();
    }

    #[test]
    fn array_items_carry_their_index() {
        let v = json!({"on": ["reset", 3]});
        let mut r = ObjectReader::new("$", &v).unwrap();
        let err = r
            .array("on", |p, v| read_string(p, v).map(str::to_owned))
            .unwrap_err();
        assert_eq!(err.path, "on[1]");
    }
}
