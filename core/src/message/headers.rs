//! HTTP header map: names sorted, multi-valued, one value inline.

use alloc::borrow::Cow;
use alloc::string::String;
use core::fmt;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::MAX_COLLECTION_LEN;

/// The values of one header name, in arrival order; one value is stored inline.
pub type HeaderValues = SmallVec<[String; 1]>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Well-known names are shared statics, not allocations (see [`name_from_str`]).
    pub(crate) name: Cow<'static, str>,
    pub(crate) values: HeaderValues,
}

/// A multi-valued header map, wire form `{"name": ["value", ...]}`.
///
/// Names are kept sorted by byte value, which is exactly the order the reference proxy emits
/// in JSON (spec §3.1), so encoding needs no sorting step; lookups are binary searches. Names
/// are compared as given: proxies send lower-case names (as the `http` crate produces them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: SmallVec<[Entry; 8]>,
}

impl Headers {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Headers::default()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| (*e.name).cmp(name))
    }

    /// Adds a value after any existing values of `name`.
    pub fn append(&mut self, name: impl Into<String> + AsRef<str>, value: impl Into<String>) {
        match self.position(name.as_ref()) {
            Ok(i) => self.entries[i].values.push(value.into()),
            Err(i) => {
                let mut values = HeaderValues::new();
                values.push(value.into());
                self.entries.insert(
                    i,
                    Entry {
                        name: match known_name(name.as_ref()) {
                            Some(known) => Cow::Borrowed(known),
                            None => Cow::Owned(name.into()),
                        },
                        values,
                    },
                );
            }
        }
    }

    /// Replaces every value of `name` with `value`.
    pub fn insert(&mut self, name: impl Into<String> + AsRef<str>, value: impl Into<String>) {
        match self.position(name.as_ref()) {
            Ok(i) => {
                let values = &mut self.entries[i].values;
                values.clear();
                values.push(value.into());
            }
            Err(_) => self.append(name, value),
        }
    }

    /// Removes `name` and returns its values.
    pub fn remove(&mut self, name: &str) -> Option<HeaderValues> {
        let i = self.position(name).ok()?;
        Some(self.entries.remove(i).values)
    }

    /// The first value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// Every value of `name`, empty when absent.
    #[must_use]
    pub fn get_all(&self, name: &str) -> &[String] {
        match self.position(name) {
            Ok(i) => &self.entries[i].values,
            Err(_) => &[],
        }
    }

    /// Number of distinct names.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every `(name, value)` pair, names sorted, values in order; allocation-free.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .flat_map(|e| e.values.iter().map(move |v| (&*e.name, v.as_str())))
    }

    /// Every name with its values.
    pub fn names(&self) -> impl Iterator<Item = (&str, &[String])> + '_ {
        self.entries.iter().map(|e| (&*e.name, &e.values[..]))
    }
}

/// One `name: [values]` pair in wire order, before [`Headers::from_decoded`].
pub(crate) type DecodedEntry = Entry;

/// Decoded pairs in wire order.
pub(crate) type DecodedEntries = SmallVec<[Entry; 8]>;

impl Headers {
    /// The map for pairs in wire order, as every decoder builds it: sorted once (n log n, even
    /// for a hostile 100 000 names) instead of inserting in order; a repeated name keeps its
    /// last occurrence, as a map decoder would.
    pub(crate) fn from_decoded(mut entries: DecodedEntries) -> Headers {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if entries.windows(2).all(|w| w[0].name != w[1].name) {
            return Headers { entries };
        }
        let mut deduped: SmallVec<[Entry; 8]> = SmallVec::with_capacity(entries.len());
        for e in entries {
            match deduped.last_mut() {
                Some(last) if last.name == e.name => *last = e,
                _ => deduped.push(e),
            }
        }
        Headers { entries: deduped }
    }
}

impl<N, V> FromIterator<(N, V)> for Headers
where
    N: Into<String> + AsRef<str>,
    V: Into<String>,
{
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        // Collect, sort once (stable, so values keep their order) and merge: n log n even for
        // a huge list, where appending one by one would shift the sorted vector each time.
        let mut pairs: SmallVec<[(String, String); 8]> = iter
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries: SmallVec<[Entry; 8]> = SmallVec::new();
        for (name, value) in pairs {
            match entries.last_mut() {
                Some(last) if *last.name == *name => last.values.push(value),
                _ => {
                    let mut values = HeaderValues::new();
                    values.push(value);
                    entries.push(Entry {
                        name: Cow::Owned(name),
                        values,
                    });
                }
            }
        }
        Headers { entries }
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for e in &self.entries {
            map.serialize_entry(&*e.name, &e.values[..])?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to arrays of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Headers, A::Error> {
                // The size hint comes from the peer: cap what we reserve on its word, and
                // refuse a declared count over the cap at once.
                let mut entries: DecodedEntries =
                    SmallVec::with_capacity(super::cap::check_hint(access.size_hint())?);
                let mut used = 0usize;
                while let Some(name) = access.next_key_seed(NameSeed)? {
                    let values = access.next_value_seed(ValuesSeed { used: &mut used })?;
                    entries.push(DecodedEntry { name, values });
                }
                Ok(Headers::from_decoded(entries))
            }
        }
        deserializer.deserialize_map(HeadersVisitor)
    }
}

macro_rules! known_names {
    ($($name:literal)*) => {
        /// The shared copy of a well-known (lower-case) header name.
        pub(crate) fn known_name(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some($name),)*
                _ => None,
            }
        }
    };
}

known_names! {
    "accept" "accept-charset" "accept-encoding" "accept-language" "accept-ranges"
    "access-control-allow-origin" "age" "allow" "authorization" "cache-control" "connection"
    "content-disposition" "content-encoding" "content-language" "content-length"
    "content-location" "content-range" "content-security-policy" "content-type" "cookie" "date"
    "dnt" "etag" "expect" "expires" "forwarded" "from" "host" "if-match" "if-modified-since"
    "if-none-match" "if-range" "if-unmodified-since" "keep-alive" "last-modified" "link"
    "location" "origin" "pragma" "priority" "proxy-authorization" "range" "referer"
    "retry-after" "sec-ch-ua" "sec-ch-ua-mobile" "sec-ch-ua-platform" "sec-fetch-dest"
    "sec-fetch-mode" "sec-fetch-site" "sec-fetch-user" "server" "set-cookie"
    "strict-transport-security" "te" "trailer" "transfer-encoding" "upgrade"
    "upgrade-insecure-requests" "user-agent" "vary" "via" "www-authenticate" "x-forwarded-for"
    "x-forwarded-host" "x-forwarded-proto" "x-real-ip" "x-request-id" "traceparent"
    "tracestate"
}

/// A decoded header name: the shared copy when well-known, else an owned copy.
pub(crate) fn name_from_str(name: &str) -> Cow<'static, str> {
    match known_name(name) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(String::from(name)),
    }
}

/// Decodes a header name as `String` does (same accepted forms, same errors), without
/// allocating for well-known names.
struct NameSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'static, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl Visitor<'_> for NameSeed {
    type Value = Cow<'static, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(name_from_str(v))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(match known_name(&v) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(v),
        })
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        match core::str::from_utf8(v) {
            Ok(s) => Ok(name_from_str(s)),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
        }
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: alloc::vec::Vec<u8>) -> Result<Self::Value, E> {
        match String::from_utf8(v) {
            Ok(s) => self.visit_string(s),
            Err(e) => Err(E::invalid_value(
                serde::de::Unexpected::Bytes(e.as_bytes()),
                &self,
            )),
        }
    }
}

/// Counts one more element of a header map against [`MAX_COLLECTION_LEN`].
#[inline]
pub(crate) fn count_one(used: &mut usize) -> bool {
    if *used == MAX_COLLECTION_LEN {
        return false;
    }
    *used += 1;
    true
}

/// Decodes one header's values without trusting the peer's declared count (smallvec's own
/// serde impl reserves whatever length a MessagePack array header claims), counting every
/// value — and a name with no value once — against [`MAX_COLLECTION_LEN`] for the whole map.
struct ValuesSeed<'u> {
    used: &'u mut usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for ValuesSeed<'_> {
    type Value = HeaderValues;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<HeaderValues, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ValuesSeed<'_> {
    type Value = HeaderValues;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of header values")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderValues, A::Error> {
        if seq
            .size_hint()
            .is_some_and(|n| n > MAX_COLLECTION_LEN - *self.used)
        {
            return Err(super::cap::too_many());
        }
        let mut values = HeaderValues::new();
        while let Some(v) = seq.next_element::<String>()? {
            if !count_one(self.used) {
                return Err(super::cap::too_many());
            }
            values.push(v);
        }
        if values.is_empty() && !count_one(self.used) {
            return Err(super::cap::too_many());
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn keeps_names_sorted_and_values_in_order() {
        let mut h = Headers::new();
        h.append("x-b", "1");
        h.append("accept", "text/html");
        h.append("x-b", "2");
        h.insert("host", "example.com");
        let pairs: Vec<_> = h.iter().collect();
        assert_eq!(
            pairs,
            [
                ("accept", "text/html"),
                ("host", "example.com"),
                ("x-b", "1"),
                ("x-b", "2")
            ]
        );
        h.insert("x-b", "3");
        assert_eq!(h.get_all("x-b"), ["3"]);
        assert_eq!(h.remove("accept").map(|v| v.len()), Some(1));
        assert_eq!(h.get("accept"), None);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn from_iter_sorts_once_and_keeps_value_order() {
        let h: Headers = [("b", "1"), ("a", "x"), ("b", "2")].into_iter().collect();
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("a", "x"), ("b", "1"), ("b", "2")]
        );
        let many: Headers = (0..100_000u32)
            .rev()
            .map(|i| (alloc::format!("h{i:06}"), "v"))
            .collect();
        assert_eq!(many.len(), 100_000);
        assert_eq!(many.names().next().map(|(n, _)| n), Some("h000000"));
    }

    #[test]
    fn well_known_names_are_shared_not_allocated() {
        let mut h = Headers::new();
        h.append("content-type", "a");
        h.append(String::from("x-custom"), "b");
        let decoded: Headers = serde_json::from_str(r#"{"host":["x"],"x-y":["z"]}"#).unwrap();
        for (headers, known, other) in [(&h, "content-type", "x-custom"), (&decoded, "host", "x-y")]
        {
            let name = |n: &str| &headers.entries[headers.position(n).unwrap()].name;
            assert!(matches!(name(known), Cow::Borrowed(_)));
            assert!(matches!(name(other), Cow::Owned(_)));
        }
        assert_eq!(known_name("Host"), None, "names are compared as given");
    }

    #[test]
    fn decoding_sorts_and_keeps_the_last_duplicate() {
        let h: Headers = serde_json::from_str(r#"{"z":["1"],"a":["2","3"],"z":["4"]}"#).unwrap();
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("a", "2"), ("a", "3"), ("z", "4")]
        );
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"a":["2","3"],"z":["4"]}"#
        );
    }
}
