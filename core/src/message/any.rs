//! Arbitrary JSON values carried inside messages (configuration, `audit.custom`, rule
//! definitions).

use alloc::string::String;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use serde_json::Value;

/// An arbitrary JSON value as a message field.
///
/// JSON and MessagePack carry it structurally (objects with keys in sorted order, as the
/// reference emits them). Postcard is not self-describing, so there it travels as its compact
/// JSON text; agentwire's postcard codec is the only one that sees that form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnyValue(pub Value);

impl AnyValue {
    /// The JSON `null` value.
    pub const NULL: AnyValue = AnyValue(Value::Null);

    /// True for `null`.
    #[must_use]
    pub fn is_null(&self) -> bool {
        self.0.is_null()
    }

    /// The string, when the value is a JSON string.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_str()
    }
}

impl From<Value> for AnyValue {
    fn from(v: Value) -> Self {
        AnyValue(v)
    }
}

impl From<&str> for AnyValue {
    fn from(v: &str) -> Self {
        AnyValue(Value::String(v.into()))
    }
}

impl From<String> for AnyValue {
    fn from(v: String) -> Self {
        AnyValue(Value::String(v))
    }
}

impl Serialize for AnyValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_via_json_text(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_value(deserializer).map(AnyValue)
    }
}

/// Serializes `value` structurally on self-describing formats (JSON, MessagePack — agentwire
/// configures its MessagePack codec as human-readable for exactly this test) and as compact
/// JSON text on postcard.
pub(crate) fn serialize_via_json_text<T: Serialize, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        value.serialize(serializer)
    } else {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

/// The counterpart of [`serialize_via_json_text`]: any value on self-describing formats,
/// JSON text on postcard.
pub(crate) fn deserialize_value<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Value, D::Error> {
    if deserializer.is_human_readable() {
        Value::deserialize(deserializer)
    } else {
        let text = <alloc::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Decodes a JSON value as [`Value`] does, counting every array element and object entry
/// against a budget shared by its caller (see [`super::cap::custom_map`]): nesting alone
/// lets a value hold far more than `MAX_COLLECTION_LEN` elements in small collections.
pub(crate) struct BudgetedValue<'b>(pub(crate) &'b mut usize);

impl BudgetedValue<'_> {
    fn spend<E: serde::de::Error>(&mut self) -> Result<(), E> {
        if *self.0 == 0 {
            return Err(super::cap::too_many());
        }
        *self.0 -= 1;
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BudgetedValue<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(self)
        } else {
            // postcard: the value travels as JSON text.
            let text = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
            let mut de = serde_json::Deserializer::from_str(&text);
            let v = self
                .deserialize(&mut de)
                .map_err(serde::de::Error::custom)?;
            de.end().map_err(serde::de::Error::custom)?;
            Ok(v)
        }
    }
}

impl<'de> serde::de::Visitor<'de> for BudgetedValue<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(String::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        if seq.size_hint().is_some_and(|n| n > *self.0) {
            return Err(super::cap::too_many());
        }
        let mut v = alloc::vec::Vec::new();
        while let Some(x) = seq.next_element_seed(BudgetedValue(&mut *self.0))? {
            self.spend()?;
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        if map.size_hint().is_some_and(|n| n > *self.0) {
            return Err(super::cap::too_many());
        }
        let mut m = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.spend()?;
            let v = map.next_value_seed(BudgetedValue(&mut *self.0))?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}
