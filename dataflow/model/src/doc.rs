//! [`Doc`]: a blob's document as it travels in view rows: shared, immutable JSON text.
//!
//! The ledger keeps each blob's document as a `serde_json::Value` of its own and patches
//! it in place; when the blob's row is emitted, the document is written once as compact
//! JSON (object keys sorted, serde_json's map order) and the row shares that text. A
//! row never holds the live value, so the next patch never copies the document, and the
//! view writer binds the text as it is. Equal documents have equal text: the order and
//! equality of `Doc` are those of the text.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A shared JSON document as compact JSON text. Displays as that text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Doc(Arc<str>);

impl Doc {
    /// Writes `value` as compact JSON.
    pub fn new(value: Value) -> Self {
        Doc::of(&value)
    }

    /// Writes `value` as compact JSON.
    pub fn of(value: &Value) -> Self {
        Doc(value.to_string().into())
    }

    /// The document, read back from its text.
    pub fn value(&self) -> Value {
        // The text was written by serde_json from a `Value` (float_roundtrip on), so it
        // reads back as the same value.
        serde_json::from_str(&self.0).expect("a Doc holds JSON written by serde_json")
    }

    /// Compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text.
    pub fn text(&self) -> &Arc<str> {
        &self.0
    }

    /// Compact JSON text, copied.
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }
}

impl std::fmt::Display for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serialised as JSON text, so any format (bincode between processes) can carry it.
impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Read back through a `Value`, so that text from elsewhere becomes canonical.
impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text)
            .map(Doc::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_documents_have_equal_text() {
        let values = [
            json!(null),
            json!(false),
            json!(-1),
            json!(1),
            json!(1.0),
            json!(-0.0),
            json!("a"),
            json!([1, 2]),
            json!({"b": 1, "a": 1}),
            json!({"a": 1, "b": 1.5}),
        ];
        for a in &values {
            for b in &values {
                let (da, db) = (Doc::of(a), Doc::of(b));
                assert_eq!(da == db, a == b, "{a} vs {b}");
                assert_eq!(da.value(), *a);
            }
        }
    }

    #[test]
    fn serialises_as_json_text() {
        let d = Doc::new(json!({"b": [1, "x"], "a": null}));
        assert_eq!(d.as_str(), r#"{"a":null,"b":[1,"x"]}"#);
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#""{\"a\":null,\"b\":[1,\"x\"]}""#);
        assert_eq!(serde_json::from_str::<Doc>(&text).unwrap(), d);
        let spaced = serde_json::to_string(r#"{ "b": [1,"x"], "a": null }"#).unwrap();
        assert_eq!(serde_json::from_str::<Doc>(&spaced).unwrap(), d);
    }
}
