//! Byte buffers serialized as byte strings, not as sequences of numbers.
//!
//! serde's own impl writes a `Vec<u8>` one element at a time. Postcard lays a
//! byte string out exactly like a sequence of `u8` (a varint length, then the
//! bytes), so using byte strings changes nothing on disk and turns a per-byte
//! loop into one copy.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserializer, Serializer};

/// `#[serde(with = "crate::serde_bytes")]` for a `Vec<u8>` field.
pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// See [`serialize`].
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

pub(crate) struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// `#[serde(with = "crate::serde_bytes::option")]` for an `Option<Vec<u8>>`.
pub(crate) mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&Wrap(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Owned>::deserialize(d)?.map(|o| o.0))
    }

    struct Wrap<'a>(&'a [u8]);

    impl serde::Serialize for Wrap<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Owned(Vec<u8>);

    impl<'de> Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d).map(Owned)
        }
    }
}

/// `#[serde(with = "crate::serde_bytes::map")]` for a `BTreeMap<String, Vec<u8>>`.
pub(crate) mod map {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        map: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            m.serialize_entry(k, &Wrap(v))?;
        }
        m.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        d.deserialize_map(MapVisitor)
    }

    struct Wrap<'a>(&'a [u8]);

    impl serde::Serialize for Wrap<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Owned(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            super::deserialize(d).map(Owned)
        }
    }

    struct MapVisitor;

    impl<'de> Visitor<'de> for MapVisitor {
        type Value = BTreeMap<String, Vec<u8>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of strings to bytes")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((k, Owned(v))) = access.next_entry::<String, Owned>()? {
                map.insert(k, v);
            }
            Ok(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        data: Vec<u8>,
        map: BTreeMap<String, Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast {
        #[serde(with = "crate::serde_bytes")]
        data: Vec<u8>,
        #[serde(with = "crate::serde_bytes::map")]
        map: BTreeMap<String, Vec<u8>>,
    }

    #[test]
    fn byte_strings_encode_exactly_like_serde_sequences_in_postcard() {
        let plain = Plain {
            data: (0..=255).collect(),
            map: [("k".to_owned(), vec![1, 2, 3]), ("z".to_owned(), vec![])].into(),
        };
        let fast = Fast {
            data: plain.data.clone(),
            map: plain.map.clone(),
        };
        let a = postcard::to_allocvec(&plain).unwrap();
        let b = postcard::to_allocvec(&fast).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::from_bytes::<Fast>(&a).unwrap(), fast);
    }
}
