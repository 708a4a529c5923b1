//! The element-count cap on collections decoded from the wire.
//!
//! Decoding is bounded by the frame size, but small elements amplify: a 16 MiB frame of
//! one-letter headers decodes to ~11 times its size. Every list and map of the message types
//! is therefore decoded through this module (or, for [`super::Headers`], counted the same
//! way), which refuses a collection as soon as its element `MAX_COLLECTION_LEN + 1` arrives
//! (or its declared length says it will) and reserves at most [`PREALLOC`] elements on the
//! peer's word.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use serde::de::{Error, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The most elements any one list or map decoded from the wire may have: header values of an
/// event (every value counts, and a name with no value counts once), header operations,
/// audit tags, rule ids, reason codes and `custom` entries, routing metadata, labels, …
///
/// 10 000 is far above anything a real request carries — HTTP servers accept around 100
/// request headers, and Pingora (httparse) stops at a few hundred — yet it bounds what one
/// event or answer can cost: at most 10 000 small allocations per collection instead of the
/// 1.2 million a 16 MiB frame of one-letter headers would make. It is a constant, not a
/// setting: the serde decoders have no per-call context to carry one, and no legitimate
/// peer comes near it. The reference has no such cap (see `docs/COMPATIBILITY.md`).
pub const MAX_COLLECTION_LEN: usize = 10_000;

/// The most elements reserved before they arrive, whatever length the peer declares.
pub(crate) const PREALLOC: usize = 64;

/// The serde error text of a refused collection; [`crate::encoding::DecodeError`] recognises
/// it (formats keep custom messages, except postcard, see [`take_refusal`]).
pub(crate) const TOO_MANY: &str = "collection longer than MAX_COLLECTION_LEN (10000) elements";

#[cfg(feature = "std")]
std::thread_local! {
    static REFUSED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// The error for a collection over the cap (noted for formats that drop the message).
pub(crate) fn too_many<E: Error>() -> E {
    #[cfg(feature = "std")]
    let _ = REFUSED.try_with(|r| r.set(true));
    E::custom(TOO_MANY)
}

/// Whether this thread refused a collection since the last call (clears the note). postcard
/// replaces custom error messages with one unit variant, so its decode errors are classified
/// through this note; without `std` they are reported as malformed (still refused).
pub(crate) fn take_refusal() -> bool {
    #[cfg(feature = "std")]
    {
        REFUSED.try_with(|r| r.replace(false)).unwrap_or(false)
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// Refuses a declared length over the cap before anything is read.
#[inline]
pub(crate) fn check_hint<E: Error>(hint: Option<usize>) -> Result<usize, E> {
    match hint {
        Some(n) if n > MAX_COLLECTION_LEN => Err(too_many()),
        Some(n) => Ok(n.min(PREALLOC)),
        None => Ok(0),
    }
}

/// A `Vec` decoded with the cap.
pub(crate) struct CappedVec<T>(pub(crate) Vec<T>);

impl<T> Default for CappedVec<T> {
    fn default() -> Self {
        CappedVec(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for CappedVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = CappedVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(check_hint(seq.size_hint())?);
                while let Some(x) = seq.next_element()? {
                    if v.len() == MAX_COLLECTION_LEN {
                        return Err(too_many());
                    }
                    v.push(x);
                }
                Ok(CappedVec(v))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A `BTreeMap` decoded with the cap (entries counted as they arrive, repeated keys
/// included; the last of a repeated key wins, as in serde's own impl).
pub(crate) struct CappedMap<K, V>(pub(crate) BTreeMap<K, V>);

impl<K, V> Default for CappedMap<K, V> {
    fn default() -> Self {
        CappedMap(BTreeMap::new())
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for CappedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Vis<K, V> {
            type Value = CappedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                check_hint(map.size_hint())?;
                let mut m = BTreeMap::new();
                let mut seen = 0usize;
                while let Some((k, v)) = map.next_entry()? {
                    if seen == MAX_COLLECTION_LEN {
                        return Err(too_many());
                    }
                    seen += 1;
                    m.insert(k, v);
                }
                Ok(CappedMap(m))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// `Option::<T>::deserialize(..).unwrap_or_default()` on formats that write `null` for a
/// default (JSON, MessagePack), `T` itself on postcard.
fn or_null<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    if d.is_human_readable() {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    } else {
        T::deserialize(d)
    }
}

/// A capped list.
pub(crate) fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    CappedVec::deserialize(d).map(|v| v.0)
}

/// A capped list; `null` reads as empty.
pub(crate) fn vec_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    or_null::<D, CappedVec<T>>(d).map(|v| v.0)
}

/// A capped map.
pub(crate) fn map<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    CappedMap::deserialize(d).map(|m| m.0)
}

/// A capped map; `null` reads as empty.
pub(crate) fn map_or_null<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    or_null::<D, CappedMap<K, V>>(d).map(|m| m.0)
}

/// An optional capped map.
pub(crate) fn opt_map<'de, D, K, V>(d: D) -> Result<Option<BTreeMap<K, V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    Option::<CappedMap<K, V>>::deserialize(d).map(|m| m.map(|m| m.0))
}

/// `audit.custom`, `null` reading as empty: its entries and every element nested in its
/// values count against one `MAX_COLLECTION_LEN` budget (an agent's answer could otherwise
/// nest small arrays to amplify its frame like tiny headers do).
pub(crate) fn custom_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<alloc::string::String, super::AnyValue>, D::Error> {
    #[derive(Default)]
    struct Custom(BTreeMap<alloc::string::String, super::AnyValue>);
    impl<'de> Deserialize<'de> for Custom {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Vis;
            impl<'de> Visitor<'de> for Vis {
                type Value = Custom;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Custom, A::Error> {
                    check_hint(map.size_hint())?;
                    let mut budget = MAX_COLLECTION_LEN;
                    let mut m = BTreeMap::new();
                    while let Some(k) = map.next_key()? {
                        if budget == 0 {
                            return Err(too_many());
                        }
                        budget -= 1;
                        let v = map.next_value_seed(super::any::BudgetedValue(&mut budget))?;
                        m.insert(k, super::AnyValue(v));
                    }
                    Ok(Custom(m))
                }
            }
            d.deserialize_map(Vis)
        }
    }
    or_null::<D, Custom>(d).map(|c| c.0)
}
