//! A small strict JSON reader and writer for the plugin configuration, route overrides and
//! problem bodies. It replaces serde_json in the filter: with its `BTreeMap` objects that was
//! ~35 KB of the .wasm for a config read once per (re)configure.
//!
//! ```text
//! parse(raw: &[u8]) -> Result<Value, JsonError>   // RFC 8259, depth ≤ 127, never panics
//! Value::{Null, Bool, Number, String, Array, Object}; Display writes compact JSON
//! Object: keys unique and sorted (a repeated key keeps its last value, as serde_json's map did)
//! push_string(out: &mut String, s: &str)           // a JSON string literal
//! ```
//!
//! Numbers keep their text, so nothing here formats or parses floats (that alone is ~20 KB).

use std::fmt;

/// How deeply arrays and objects may nest (as deep as serde_json allowed).
pub const MAX_DEPTH: usize = 127;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON number as its text (validated by the parser, or written by `From`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number(String);

impl Number {
    /// The value when it is written as a non-negative integer that fits in a u64.
    pub fn as_u64(&self) -> Option<u64> {
        let mut n: u64 = 0;
        for b in self.0.bytes() {
            let digit = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
            n = n.checked_mul(10)?.checked_add(digit)?;
        }
        (!self.0.is_empty()).then_some(n)
    }

    /// Only for numbers written by the caller (route metadata doubles), not checked here.
    pub(crate) fn from_text(text: String) -> Number {
        Number(text)
    }
}

impl From<u64> for Number {
    fn from(n: u64) -> Number {
        Number(n.to_string())
    }
}

impl From<i64> for Number {
    fn from(n: i64) -> Number {
        Number(n.to_string())
    }
}

/// A JSON object: keys unique, in sorted order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object(Vec<(String, Value)>);

impl Object {
    pub fn new() -> Object {
        Object(Vec::new())
    }

    /// An object from entries in any order; of a repeated key the last value stays.
    pub fn from_entries(entries: Vec<(String, Value)>) -> Object {
        Object(sort_unique(entries))
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        let at = self.position(key).ok()?;
        self.0.get(at).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        let at = self.position(key).ok()?;
        self.0.get_mut(at).map(|(_, v)| v)
    }

    /// Sets `key`, replacing its value if present.
    pub fn insert(&mut self, key: String, value: Value) {
        match self.position(&key) {
            Ok(at) => {
                if let Some(slot) = self.0.get_mut(at) {
                    slot.1 = value;
                }
            }
            Err(at) => self.0.insert(at, (key, value)),
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A merge sort by key that keeps, of equal keys, the later entry. Hand-written because std's
/// sorts instantiate ~12 KB of .wasm; O(n log n), recursion depth log2(n).
fn sort_unique(mut entries: Vec<(String, Value)>) -> Vec<(String, Value)> {
    if entries.len() < 2 {
        return entries;
    }
    let right = entries.split_off(entries.len() / 2);
    let mut left = sort_unique(entries).into_iter().peekable();
    let mut right = sort_unique(right).into_iter().peekable();
    let mut out = Vec::with_capacity(left.len() + right.len());
    loop {
        let from_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => match l.0.cmp(&r.0) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                // Both halves are unique already; the right one came later.
                std::cmp::Ordering::Equal => {
                    left.next();
                    false
                }
            },
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        out.extend(if from_left { left.next() } else { right.next() });
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The value of `key` when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }
}

/// Compact JSON, as serde_json writes it (object keys in sorted order).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_value(&mut out, self);
        f.write_str(&out)
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.0),
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(object) => {
            out.push('{');
            for (i, (key, item)) in object.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal (escapes as serde_json writes them).
pub fn push_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let b = c as usize;
                out.push_str("\\u00");
                for nibble in [b >> 4, b & 15] {
                    out.push(char::from(HEX.get(nibble).copied().unwrap_or(b'0')));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a text is not JSON, and where (1-based line and column, in bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub message: &'static str,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON value (surrounding whitespace allowed, nothing else).
pub fn parse(raw: &[u8]) -> Result<Value, JsonError> {
    let text = match std::str::from_utf8(raw) {
        Ok(text) => text,
        Err(e) => return Err(error_at(raw, e.valid_up_to(), "invalid UTF-8")),
    };
    let mut parser = Parser {
        text,
        bytes: raw,
        at: 0,
        depth: 0,
    };
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.at < raw.len() {
        return Err(parser.error("trailing characters"));
    }
    Ok(value)
}

fn error_at(raw: &[u8], at: usize, message: &'static str) -> JsonError {
    let before = raw.get(..at).unwrap_or(raw);
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    JsonError {
        message,
        line: 1 + before.iter().filter(|b| **b == b'\n').count(),
        column: 1 + at - line_start,
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

type Parsed<T> = Result<T, JsonError>;

impl Parser<'_> {
    fn error(&self, message: &'static str) -> JsonError {
        error_at(self.bytes, self.at, message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// Consumes `literal` (the byte at `at` already matched its first byte).
    fn literal(&mut self, literal: &str, value: Value) -> Parsed<Value> {
        let end = self.at + literal.len();
        if self.bytes.get(self.at..end) == Some(literal.as_bytes()) {
            self.at = end;
            Ok(value)
        } else {
            Err(self.error("expected value"))
        }
    }

    fn value(&mut self) -> Parsed<Value> {
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => self.nested(Parser::array),
            Some(b'{') => self.nested(Parser::object),
            Some(_) => Err(self.error("expected value")),
        }
    }

    fn nested(&mut self, read: fn(&mut Self) -> Parsed<Value>) -> Parsed<Value> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("recursion limit exceeded"));
        }
        self.depth += 1;
        self.at += 1; // the opening bracket
        let value = read(self);
        self.depth -= 1;
        value
    }

    /// After `[`: items up to `]`.
    fn array(&mut self) -> Parsed<Value> {
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.error("EOF while parsing a list")),
                Some(_) => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// After `{`: members up to `}`.
    fn object(&mut self) -> Parsed<Value> {
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(Object::new()));
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("key must be a string")),
            }
            let key = self.string()?;
            self.skip_whitespace();
            match self.peek() {
                Some(b':') => self.at += 1,
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("expected `:`")),
            }
            entries.push((key, self.value()?));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(Object::from_entries(entries)));
                }
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Parsed<Value> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let leading_zero = self.peek() == Some(b'0');
        match self.digits() {
            0 => return Err(self.error("invalid number")),
            1 => {}
            _ if leading_zero => return Err(self.error("invalid number")),
            _ => {}
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        let text = self.text.get(start..self.at).unwrap_or_default();
        Ok(Value::Number(Number(text.to_string())))
    }

    /// A string literal (at its opening quote), escapes decoded.
    fn string(&mut self) -> Parsed<String> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let start = self.at;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.at += 1;
            }
            // Both ends sit on ASCII bytes (or the end), so the slice is whole characters.
            out.push_str(self.text.get(start..self.at).unwrap_or_default());
            match self.peek() {
                None => return Err(self.error("EOF while parsing a string")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => {
                    return Err(self
                        .error("control character (\\u0000-\\u001F) found while parsing a string"))
                }
            }
        }
    }

    /// After a backslash: one escape, a surrogate pair as one character.
    fn escape(&mut self) -> Parsed<char> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.at += 1;
                let first = self.hex4()?;
                let code = match first {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        self.at += 2;
                        let second = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(self.error("lone leading surrogate in hex escape"));
                        }
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    }
                    code => code,
                };
                return char::from_u32(code)
                    .ok_or_else(|| self.error("invalid unicode code point"));
            }
            None => return Err(self.error("EOF while parsing a string")),
            Some(_) => return Err(self.error("invalid escape")),
        };
        self.at += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Parsed<u32> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.error("invalid escape"))?;
            code = code * 16 + digit;
            self.at += 1;
        }
        Ok(code)
    }
}

/// `json!`-style values in unit tests: written with serde_json's macro, read back by `parse`.
#[cfg(test)]
macro_rules! json {
    ($($t:tt)+) => {
        $crate::json::parse(::serde_json::json!($($t)+).to_string().as_bytes())
            .expect("serde_json writes JSON")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn round_trips_what_serde_json_writes() {
        let text = r#"{"a":[1,-2,3.5e-7,true,false,null],"b":{"c":"x\"\\\n\u0001é😀"},"e":{}}"#;
        let value = ok(text);
        assert_eq!(value.to_string(), text);
        let serde: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde.to_string(), text);
    }

    #[test]
    fn objects_are_sorted_and_a_repeated_key_keeps_its_last_value() {
        let value = ok(r#" {"b": 1, "a": 2, "b": 3, "c": {"z": 0, "y": 1}} "#);
        assert_eq!(value.to_string(), r#"{"a":2,"b":3,"c":{"y":1,"z":0}}"#);
        // Many keys, repeated and out of order: what serde_json's BTreeMap made of them.
        let entries: Vec<(String, u64)> = (0..500u64)
            .map(|i| (format!("k{}", i * 7919 % 97), i))
            .collect();
        let text = format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let serde: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(ok(&text).to_string(), serde.to_string());
        assert_eq!(value.get("b").and_then(Value::as_u64), Some(3));
        let mut object = Object::new();
        object.insert("m".into(), Value::Null);
        object.insert("a".into(), Value::Bool(true));
        object.insert("m".into(), Value::Bool(false));
        assert_eq!(Value::Object(object).to_string(), r#"{"a":true,"m":false}"#);
    }

    #[test]
    fn escapes_decode_including_surrogate_pairs() {
        assert_eq!(
            ok(r#""\ud83d\ude00 \u00e9\/\b\f\t""#),
            Value::String("😀 é/\u{8}\u{c}\t".into())
        );
        let mut out = String::new();
        push_string(&mut out, "a\u{1f}\u{7f}\"");
        assert_eq!(out, "\"a\\u001f\u{7f}\\\"\"");
    }

    #[test]
    fn integers_read_as_u64_only_when_exactly_integers_in_range() {
        let n = |t: &str| ok(t).as_u64();
        assert_eq!(n("0"), Some(0));
        assert_eq!(n("18446744073709551615"), Some(u64::MAX));
        for t in ["18446744073709551616", "-1", "-0", "1.0", "1e2", "\"1\""] {
            assert_eq!(n(t), None, "{t}");
        }
    }

    #[test]
    fn malformed_text_is_an_error_with_its_position() {
        for (text, message, line, column) in [
            ("", "EOF while parsing a value", 1, 1),
            ("{", "EOF while parsing an object", 1, 2),
            ("[1,]", "expected value", 1, 4),
            ("[1 2]", "expected `,` or `]`", 1, 4),
            ("{\"a\" 1}", "expected `:`", 1, 6),
            ("{\n  1: 2}", "key must be a string", 2, 3),
            ("{} x", "trailing characters", 1, 4),
            ("01", "invalid number", 1, 3),
            ("1.", "invalid number", 1, 3),
            ("-", "invalid number", 1, 2),
            ("1e+", "invalid number", 1, 4),
            ("tru", "expected value", 1, 1),
            (
                "\"a\tb\"",
                "control character (\\u0000-\\u001F) found while parsing a string",
                1,
                3,
            ),
            ("\"\\x\"", "invalid escape", 1, 3),
            ("\"\\ud800\"", "lone leading surrogate in hex escape", 1, 8),
            ("\"\\udc00\"", "invalid unicode code point", 1, 8),
            ("\"abc", "EOF while parsing a string", 1, 5),
            ("\"\u{e9}\" \u{0}", "trailing characters", 1, 6),
        ] {
            let err = parse(text.as_bytes()).unwrap_err();
            assert_eq!(
                (err.message, err.line, err.column),
                (message, line, column),
                "{text:?}"
            );
        }
        assert_eq!(parse(b"[\"\xff\"]").unwrap_err().message, "invalid UTF-8");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_DEPTH).as_bytes()).is_ok());
        // The same limit as serde_json's.
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deep(MAX_DEPTH + 1)).is_err());
        let err = parse(deep(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(err.message, "recursion limit exceeded");
        // Far deeper than the stack would allow recursing into: still just an error.
        assert!(parse("[".repeat(1 << 20).as_bytes()).is_err());
    }

    /// Differential check against serde_json, which the filter used before: seeds mutated by a
    /// fixed pseudo-random sequence must be accepted or rejected alike, and read alike.
    #[test]
    fn agrees_with_serde_json_on_mutated_documents() {
        let seeds: [&[u8]; 4] = [
            br#"{"retry": {"max_retries": 3, "on": ["reset", "5xx"]}, "a": [1.5e-3, -0, null]}"#,
            br#"{"s": "\u00e9\ud83d\ude00\n\"", "t": true, "f": false, "n": 12345678901234567890}"#,
            br#"[[[[{"k": {"k": [0.5, "x", {}]}}]]]]"#,
            br#"{"b": 1, "a": 2, "b": 3}"#,
        ];
        let alphabet = b"{}[]\",:0123456789-+.eE\\utrfalsn \n\t\x01\xc3\xa9";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut doc = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % (doc.len() as u64 + 1)) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 if at < doc.len() => doc[at] = byte,
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => doc.insert(at, byte),
                }
            }
            let theirs = serde_json::from_slice::<serde_json::Value>(&doc);
            accepted += usize::from(theirs.is_ok());
            let ours = parse(&doc);
            let text = String::from_utf8_lossy(&doc);
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => {
                    let reread: serde_json::Value = serde_json::from_str(&ours.to_string())
                        .unwrap_or_else(|e| panic!("{text}: we wrote {ours}: {e}"));
                    assert_eq!(&reread, theirs, "{text}");
                }
                (Err(_), Err(_)) => {}
                // serde_json refuses numbers beyond f64 (1e999); they are JSON, and the
                // config reader rejects them where an integer is expected.
                (Ok(_), Err(e)) if e.to_string().starts_with("number out of range") => {}
                _ => panic!("{text}: ours {ours:?}, serde_json {theirs:?}"),
            }
        }
        // Both outcomes are well represented (the mutations are not all fatal).
        assert!((2_000..18_000).contains(&accepted), "{accepted} accepted");
    }

    #[test]
    fn never_panics_on_truncations_of_valid_json() {
        let text = r#"{"a": [1, {"b": "\u00e9\ud83d\ude00"}, -0.5e+3], "c": null}"#;
        for cut in 0..text.len() {
            let _ = parse(&text.as_bytes()[..cut]);
        }
        assert!(parse(text.as_bytes()).is_ok());
    }
}
