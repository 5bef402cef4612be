//! Strict JSON for configs: unknown fields are errors (a typo never passes silently),
//! and files are written atomically ([`super::write_atomic`]).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use super::write_atomic;

/// Reads `path` as a `T`. Every key of the file must exist in `template` serialised
/// (nested objects are checked too), so an unknown or misspelt field is an error naming
/// it; absent fields take `template`'s values.
pub fn read_strict<T: Serialize + DeserializeOwned>(path: &Path, template: &T) -> Result<T> {
    let text = mnist_fs::read_to_string_capped(path, mnist_fs::MAX_JSON_BYTES).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_str_strict(&text, template).map_err(|message| Error::Json {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses `text` as a `T` with the checks of [`read_strict`]; the error is a message.
pub fn from_str_strict<T: Serialize + DeserializeOwned>(text: &str, template: &T) -> std::result::Result<T, String> {
    from_value_strict(parse(text)?, template)
}

/// Parses JSON text, refusing an object that holds the same key twice (serde_json would
/// keep the last one silently, so `{"steps": 10, "steps": 20}` would train 20 steps). The
/// error is a message: `not valid JSON: ...` with the line and column, or that the text
/// is empty. The line is quoted around the column, between backquotes, since serde_json's
/// own message names no field: `number out of range at line 13 column 24 (line 13 reads
/// ...)` with the line `"learning_rate": 1e400,` in place of the dots.
pub fn parse(text: &str) -> std::result::Result<Value, String> {
    // A byte order mark, as some Windows editors write at the start, is no content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err("the file is empty; expected JSON".into());
    }
    serde_json::from_str::<Unique>(text).map(|u| u.0).map_err(|e| match quote_line(text, e.line(), e.column()) {
        Some(quoted) => format!("not valid JSON: {e} (line {} reads `{quoted}`)", e.line()),
        None => format!("not valid JSON: {e}"),
    })
}

/// Line `line` (1-based) of `text` around byte column `column` (1-based, as serde_json
/// counts): at most [`QUOTE_BEFORE`] characters before the column and [`QUOTE_AFTER`]
/// after it, `...` where cut, control characters as spaces, trimmed; `None` for a
/// line that is blank or not there (an error at the end of the text).
fn quote_line(text: &str, line: usize, column: usize) -> Option<String> {
    let whole = text.lines().nth(line.checked_sub(1)?)?;
    let chars: Vec<(usize, char)> = whole.char_indices().collect();
    // The character the column falls in (the last one for a column past the end).
    let at = chars.iter().rposition(|&(i, _)| i < column.max(1)).unwrap_or(0);
    let start = at.saturating_sub(QUOTE_BEFORE);
    let end = (at + 1 + QUOTE_AFTER).min(chars.len());
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let middle: String = chars[start..end].iter().map(|&(_, c)| clean(c)).collect();
    let middle = middle.trim();
    if middle.is_empty() {
        return None;
    }
    let (before, after) = (if start > 0 { "..." } else { "" }, if end < chars.len() { "..." } else { "" });
    Some(format!("{before}{middle}{after}"))
}

/// Characters quoted before and after the column of a JSON error.
const QUOTE_BEFORE: usize = 50;
const QUOTE_AFTER: usize = 20;

/// [`from_str_strict`] of a JSON value already parsed.
pub fn from_value_strict<T: Serialize + DeserializeOwned>(value: Value, template: &T) -> std::result::Result<T, String> {
    from_value_strict_beside(value, template, &[])
}

/// [`from_value_strict`] of an object whose top level also holds the fields `beside` (taken
/// out by the caller, who reads them itself): they are named among the fields expected.
pub fn from_value_strict_beside<T: Serialize + DeserializeOwned>(value: Value, template: &T, beside: &[&str]) -> std::result::Result<T, String> {
    let known = serde_json::to_value(template).map_err(|e| e.to_string())?;
    if let (Value::Object(fields), false) = (&known, value.is_object()) {
        return Err(format!("expected a JSON object of fields ({}), got {}", field_names(fields, beside), describe(&value)));
    }
    check_keys(&value, &known, "", beside)?;
    let mut merged = known.clone();
    merge(&mut merged, value.clone());
    // A value of the wrong type or out of its type's range names its field, and says what
    // the field takes in JSON's terms (not Rust's `usize` or `struct CnnConfig`).
    serde_path_to_error::deserialize(merged).map_err(|e| {
        let segments: Vec<String> = e.path().iter().filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        }).collect();
        let given = at(&value, &segments);
        let expected = at(&known, &segments).zip(given).and_then(|(template, given)| expects(template, given));
        match (segments.is_empty(), expected, given) {
            (false, Some(expected), Some(given)) => format!("field `{}`: expected {expected}, got {}", segments.join("."), describe(given)),
            (false, _, _) => format!("field `{}`: {}", segments.join("."), e.inner()),
            (true, _, _) => e.inner().to_string(),
        }
    })
}

/// The value at a path of object keys.
fn at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// What a field whose default is `template` takes, in JSON's terms, for the value `given`
/// that it refused; `None` where the deserializer's own message says it better (a name
/// from a list, an optional value).
fn expects(template: &Value, given: &Value) -> Option<String> {
    Some(match template {
        Value::Number(n) if n.is_u64() => {
            // A whole number beyond the largest the field holds says so; one written as a
            // float (`1e3`, `1000.0`, which JSON parsers read as floats) says how to write it.
            let whole = given.as_f64().filter(|v| *v >= 0.0 && v.fract() == 0.0 && given.as_u64().is_none());
            match whole {
                Some(v) if v >= u64::MAX as f64 => format!("a whole number, 0 or more up to {}", u64::MAX),
                Some(v) => format!("a whole number, 0 or more, written without a decimal point or exponent ({v:.0})"),
                None => "a whole number, 0 or more".into(),
            }
        }
        Value::Number(n) if n.is_i64() => "a whole number".into(),
        Value::Number(_) => "a number".into(),
        Value::Bool(_) => "true or false".into(),
        Value::Object(fields) => format!("an object of fields ({})", field_names(fields, &[])),
        Value::String(_) | Value::Array(_) | Value::Null => return None,
    })
}

/// An object's field names, then those `beside` it, comma-separated.
fn field_names(fields: &serde_json::Map<String, Value>, beside: &[&str]) -> String {
    fields.keys().map(String::as_str).chain(beside.iter().copied()).collect::<Vec<_>>().join(", ")
}

/// A JSON value as an error message shows it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {}", Value::String(s.clone())),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A JSON value parsed with every object's keys checked to be distinct.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Unique, E> {
        Ok(Unique(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Unique(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Unique, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key `{key}` appears twice in one object; keep one")));
            }
            let Unique(v) = map.next_value()?;
            fields.insert(key, v);
        }
        Ok(Unique(Value::Object(fields)))
    }
}

fn check_keys(value: &Value, known: &Value, prefix: &str, beside: &[&str]) -> std::result::Result<(), String> {
    let (Value::Object(value), Value::Object(known)) = (value, known) else {
        return Ok(());
    };
    for (key, v) in value {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match known.get(key) {
            Some(k) => check_keys(v, k, &path, &[])?,
            None => return Err(format!("unknown field `{path}`; expected one of: {}", field_names(known, beside))),
        }
    }
    Ok(())
}

/// Overlays `value` on `base`, object by object: absent fields keep `base`'s values.
fn merge(base: &mut Value, value: Value) {
    match (base, value) {
        (Value::Object(base), Value::Object(value)) => {
            for (key, v) in value {
                match base.get_mut(&key) {
                    Some(b) => merge(b, v),
                    None => {
                        base.insert(key, v);
                    }
                }
            }
        }
        (base, value) => *base = value,
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CnnConfig;

    #[test]
    fn unknown_fields_are_named_and_defaults_fill_gaps() {
        let err = from_str_strict(r#"{"hiden": 10}"#, &CnnConfig::new()).unwrap_err();
        assert!(err.contains("unknown field `hiden`") && err.contains("hidden"), "{err}");
        let c: CnnConfig = from_str_strict(r#"{"hidden": 10}"#, &CnnConfig::new()).unwrap();
        assert_eq!(c, CnnConfig::new().with_hidden(10));
        // A wrong value names its field once, and what was expected in JSON's terms.
        for (text, message) in [
            (r#"{"hidden": -1}"#, "field `hidden`: expected a whole number, 0 or more, got -1"),
            (r#"{"hidden": 2.5}"#, "field `hidden`: expected a whole number, 0 or more, got 2.5"),
            (r#"{"hidden": "wide"}"#, "field `hidden`: expected a whole number, 0 or more, got the string \"wide\""),
            (r#"{"dropout": true}"#, "field `dropout`: expected a number, got true"),
            (r#"{"hidden": 1180591620717411303424}"#, "field `hidden`: expected a whole number, 0 or more up to 18446744073709551615, got 1.1805916207174113e+21"),
            (r#"{"hidden": 1e3}"#, "field `hidden`: expected a whole number, 0 or more, written without a decimal point or exponent (1000), got 1000.0"),
            ("\u{feff}{\"hidden\": -1}", "field `hidden`: expected a whole number, 0 or more, got -1"),
            (r#"{"dropout": null}"#, "field `dropout`: expected a number, got null"),
            (r#"[1, 2]"#, "expected a JSON object of fields (classes, conv1_channels, conv2_channels, dropout, hidden, init_bias, init_std, kernel_size), got an array"),
            (r#"7"#, "expected a JSON object of fields"),
        ] {
            let err = from_str_strict(text, &CnnConfig::new()).unwrap_err();
            assert!(err.starts_with(message), "{text}: {err}");
            assert!(!err.contains("usize") && !err.contains("f64") && !err.contains("struct"), "{err}");
        }
        assert!(from_str_strict::<CnnConfig>("{", &CnnConfig::new()).unwrap_err().contains("not valid JSON"));
        // serde_json names no field for a number out of range: the line quoted does.
        let err = parse("{\n  \"hidden\": 1,\n  \"learning_rate\": 1e400,\n  \"steps\": 3\n}").unwrap_err();
        assert_eq!(err, "not valid JSON: number out of range at line 3 column 24 (line 3 reads `\"learning_rate\": 1e400,`)");
        // A long line (minified JSON) is quoted around the column only, cut with `...`.
        let long = format!("{{\"a\": [{}], \"b\": 1e999, \"c\": [{}]}}", "1, ".repeat(40) + "1", "2, ".repeat(40) + "2");
        let err = parse(&long).unwrap_err();
        let quoted = err.split_once(" reads `").map(|(_, q)| q.trim_end_matches("`)")).unwrap();
        assert!(quoted.starts_with("...") && quoted.ends_with("...") && quoted.contains("\"b\": 1e999"), "{err}");
        assert!(quoted.chars().count() <= QUOTE_BEFORE + 1 + QUOTE_AFTER + 6, "{err}");
        // At the end of the text there is no line to quote; multi-byte characters and
        // control characters are quoted whole and as spaces.
        assert_eq!(parse("{\"a\": 1").unwrap_err(), "not valid JSON: EOF while parsing an object at line 1 column 7 (line 1 reads `{\"a\": 1`)");
        assert_eq!(parse("{\"a\": 1\n").unwrap_err(), "not valid JSON: EOF while parsing an object at line 2 column 0");
        let err = parse("{\"é\u{7}ü\": x}").unwrap_err();
        assert!(err.ends_with("(line 1 reads `{\"é ü\": x}`)"), "{err}");
        // An empty file says so (it was "EOF while parsing a value at line 1 column 0").
        for empty in ["", " \n", "\u{feff}"] {
            assert_eq!(from_str_strict::<CnnConfig>(empty, &CnnConfig::new()).unwrap_err(), "the file is empty; expected JSON");
        }
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let err = from_str_strict(r#"{"hidden": 10, "hidden": 20}"#, &CnnConfig::new()).unwrap_err();
        assert!(err.contains("not valid JSON") && err.contains("the key `hidden` appears twice") && err.contains("line 1"), "{err}");
        let err = parse("{\"a\": {\"b\": 1,\n \"b\": 1}}").unwrap_err();
        assert!(err.contains("`b` appears twice") && err.contains("line 2"), "{err}");
        // The same key in two objects is no duplicate, and values keep their types.
        let v = parse(r#"{"a": {"b": 1}, "c": {"b": [-2, 0.5, "x", null, true]}}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": {"b": 1}, "c": {"b": [-2, 0.5, "x", null, true]}}));
    }
}
