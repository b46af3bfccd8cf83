//! [`Doc`]: a blob's document as it travels in view rows: shared, immutable, ordered.
//!
//! The ledger keeps each blob's document as a `serde_json::Value` behind an `Arc` and
//! patches it copy-on-write; a view row shares that `Arc` instead of serialising the
//! document. Serialisation happens once, in the sink, for the rows that survive
//! consolidation: on the writer's thread, not the dataflow's.

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A shared JSON document. Displays as compact JSON (object keys sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc(pub Arc<Value>);

impl Doc {
    /// Wraps a value.
    pub fn new(value: Value) -> Self {
        Doc(Arc::new(value))
    }

    /// The document.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Compact JSON text.
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }
}

impl std::fmt::Display for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl Ord for Doc {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return Ordering::Equal;
        }
        compare(&self.0, &other.0)
    }
}

impl PartialOrd for Doc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for Doc {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// A total order on JSON values, consistent with `Value`'s equality: by kind
/// (null < bool < number < string < array < object), then by value; numbers by their
/// integer or float value, then by representation so that unequal values never tie.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let by_value = match (x.as_i64(), y.as_i64()) {
                (Some(i), Some(j)) => i.cmp(&j),
                _ => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .unwrap_or(Ordering::Equal),
            };
            by_value.then_with(|| x.to_string().cmp(&y.to_string()))
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = compare(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((k, p), (l, q)) in x.iter().zip(y) {
                let o = k.cmp(l).then_with(|| compare(p, q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Serialised as JSON text, so any format (bincode between processes) can carry it.
impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_json())
    }
}

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
    fn order_is_total_and_agrees_with_equality() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1),
            json!(1),
            json!(1.0),
            json!(1.5),
            json!("a"),
            json!("b"),
            json!([1]),
            json!([1, 2]),
            json!({"a": 1}),
            json!({"a": 1, "b": 1}),
            json!({"a": 2}),
        ];
        for (i, a) in values.iter().enumerate() {
            for (j, b) in values.iter().enumerate() {
                let (da, db) = (Doc::new(a.clone()), Doc::new(b.clone()));
                assert_eq!(da.cmp(&db) == Ordering::Equal, a == b, "{a} vs {b}");
                assert_eq!(da.cmp(&db), db.cmp(&da).reverse());
                if i < j {
                    assert_eq!(da.cmp(&db), Ordering::Less, "{a} < {b}");
                }
            }
        }
    }

    #[test]
    fn serialises_as_json_text() {
        let d = Doc::new(json!({"b": [1, "x"], "a": null}));
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(text, r#""{\"a\":null,\"b\":[1,\"x\"]}""#);
        assert_eq!(serde_json::from_str::<Doc>(&text).unwrap(), d);
    }
}
