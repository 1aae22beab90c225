//! A serde adapter around bincode's deserializer that never lets a length written in a
//! payload decide an allocation: the decoder allocates only for bytes that are there.
//!
//! bincode 2 believes a length prefix before it looks at the bytes. For an owned `String`
//! it allocates and zeroes the claimed length, then reads into it; for a list it tells
//! serde the claimed count, and serde reserves up to 1 MiB for it. bincode's decode limit
//! (a const generic, one for all payloads) caps the claim, not the work: a 14-byte frame
//! whose string claimed just under the 4 MiB limit cost 4 MiB zeroed, about 290 µs.
//!
//! [`Bounded`] wraps every deserializer bincode hands out, at every depth, and changes
//! three things, nothing else:
//!
//! - an owned string or byte string is asked for as a borrowed one (`deserialize_str`,
//!   `deserialize_bytes`): bincode then takes the bytes from the payload first, failing if
//!   they are not all there, and the visitor copies exactly what was found;
//! - a list or a map tells its visitor no size (`size_hint` is `None`), so that nothing is
//!   reserved up front: a `Vec` grows with the items actually decoded, a `BTreeMap` never
//!   reserves;
//! - a list or a map that claims more items than the payload has bytes is refused at once,
//!   with a clear reason: each item of the protocol takes at least one byte (it has no
//!   list of zero-sized items), so the claim cannot be true.
//!
//! Every allocation the decoder makes is then for a value it decoded from bytes present in
//! the payload (a list grows by doubling as its items come), or for the text of its error.
//! The price is that growth: decoding an answer of 100 instances took 10 to 16% longer
//! (about 2 µs of 14) than with the list reserved at its count, a register within noise
//! (interleaved runs of both decoders, best of 30, release build). Why not per-frame limits: bincode's limit is
//! a type parameter, and it counts what each read claims (8 bytes for any `u64`, however
//! short its varint), so no limit both accepts every valid frame and refuses a string that
//! claims more than the bytes left. Why not pre-validating length prefixes in a first pass:
//! it would decode every frame twice and repeat the layout of every message.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The seed that decodes one whole `T` through [`Bounded`], for a payload of
/// `payload_len` bytes.
pub(super) struct Root<T> {
    payload_len: usize,
    value: PhantomData<T>,
}

impl<T> Root<T> {
    pub(super) fn new(payload_len: usize) -> Self {
        Self {
            payload_len,
            value: PhantomData,
        }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Root<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(Bounded {
            inner: deserializer,
            payload_len: self.payload_len,
        })
    }
}

/// A deserializer that asks `inner` for borrowed strings and bytes, and wraps whatever
/// `inner` hands to a visitor in turn.
struct Bounded<D> {
    inner: D,
    /// The length of the whole payload: no list can hold more items.
    payload_len: usize,
}

impl<D> Bounded<D> {
    fn visitor<V>(&self, visitor: V, counted: bool) -> Wrap<V> {
        Wrap {
            visitor,
            payload_len: self.payload_len,
            counted,
        }
    }
}

/// Forwards `deserialize_*` methods whose visitor only needs wrapping.
macro_rules! forward {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                let visitor = self.visitor(visitor, false);
                self.inner.$method(visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_bytes,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    /// Borrowed, so that the bytes are found before anything is allocated for them.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_str(visitor)
    }

    /// Borrowed, like a string.
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_bytes(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, true);
        self.inner.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, true);
        self.inner.deserialize_map(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    /// A tuple's length is the type's, not the payload's: not counted.
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.inner.deserialize_enum(name, variants, visitor)
    }

    /// bincode is not human-readable, and types such as `Uuid` choose their layout by it:
    /// the adapter must not change the answer.
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor that wraps what it is handed before passing it on.
struct Wrap<V> {
    visitor: V,
    payload_len: usize,
    /// True for the visitor of a list or a map, whose count came from the payload.
    counted: bool,
}

impl<V> Wrap<V> {
    /// Refuses a count that the payload cannot hold, one byte at least per item.
    fn check<E: de::Error>(&self, claimed: Option<usize>, what: &str) -> Result<(), E> {
        match claimed {
            Some(count) if self.counted && count > self.payload_len => {
                Err(E::custom(format_args!(
                    "a {what} of {count} items cannot fit in a payload of {} bytes",
                    self.payload_len
                )))
            }
            _ => Ok(()),
        }
    }

    fn deserializer<D>(&self, inner: D) -> Bounded<D> {
        Bounded {
            inner,
            payload_len: self.payload_len,
        }
    }
}

/// Forwards `visit_*` methods of values that hold no deserializer.
macro_rules! forward_visits {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                self.visitor.$method(value)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(formatter)
    }

    forward_visits!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let deserializer = self.deserializer(deserializer);
        self.visitor.visit_some(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        let deserializer = self.deserializer(deserializer);
        self.visitor.visit_newtype_struct(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.check(seq.size_hint(), "list")?;
        self.visitor.visit_seq(Access {
            inner: seq,
            payload_len: self.payload_len,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.check(map.size_hint(), "map")?;
        self.visitor.visit_map(Access {
            inner: map,
            payload_len: self.payload_len,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(Access {
            inner: data,
            payload_len: self.payload_len,
        })
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<S> {
    seed: S,
    payload_len: usize,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Bounded {
            inner: deserializer,
            payload_len: self.payload_len,
        })
    }
}

/// The items of a list, the entries of a map, or an enum's variant, each handed on
/// wrapped.
struct Access<A> {
    inner: A,
    payload_len: usize,
}

impl<A> Access<A> {
    fn seed<S>(&self, seed: S) -> Seed<S> {
        Seed {
            seed,
            payload_len: self.payload_len,
        }
    }

    fn visitor<V>(&self, visitor: V) -> Wrap<V> {
        Wrap {
            visitor,
            payload_len: self.payload_len,
            counted: false,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    /// No size: what serde would reserve for it is not backed by bytes yet.
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    /// No size, as for a list.
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Access {
                inner: variant,
                payload_len: self.payload_len,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.visitor(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.visitor(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}
