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
