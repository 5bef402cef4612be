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
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
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
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    from_value_strict(value, template)
}

/// [`from_str_strict`] of a JSON value already parsed.
pub fn from_value_strict<T: Serialize + DeserializeOwned>(value: Value, template: &T) -> std::result::Result<T, String> {
    let known = serde_json::to_value(template).map_err(|e| e.to_string())?;
    check_keys(&value, &known, "")?;
    let mut merged = known;
    merge(&mut merged, value);
    // A value of the wrong type or out of its type's range names its field.
    serde_path_to_error::deserialize(merged).map_err(|e| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("field `{path}`: {}", e.inner()),
    })
}

fn check_keys(value: &Value, known: &Value, prefix: &str) -> std::result::Result<(), String> {
    let (Value::Object(value), Value::Object(known)) = (value, known) else {
        return Ok(());
    };
    for (key, v) in value {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match known.get(key) {
            Some(k) => check_keys(v, k, &path)?,
            None => {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(format!("unknown field `{path}`; expected one of: {}", names.join(", ")));
            }
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
        // A wrong value names its field once, and what was expected.
        let err = from_str_strict(r#"{"hidden": -1}"#, &CnnConfig::new()).unwrap_err();
        assert!(err.starts_with("field `hidden`: invalid value: integer `-1`, expected usize"), "{err}");
        assert_eq!(err.matches("invalid").count(), 1, "{err}");
        let err = from_str_strict(r#"{"hidden": "wide"}"#, &CnnConfig::new()).unwrap_err();
        assert!(err.starts_with("field `hidden`: invalid type: string \"wide\""), "{err}");
        assert!(from_str_strict::<CnnConfig>("{", &CnnConfig::new()).unwrap_err().contains("not valid JSON"));
    }
}
