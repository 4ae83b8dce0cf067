//! Metadata values and the ordered key → value map.

use std::collections::HashMap;

use crate::gguf::error::GgufError;

// GGUF value type ids.
pub(crate) const T_U8: u32 = 0;
pub(crate) const T_I8: u32 = 1;
pub(crate) const T_U16: u32 = 2;
pub(crate) const T_I16: u32 = 3;
pub(crate) const T_U32: u32 = 4;
pub(crate) const T_I32: u32 = 5;
pub(crate) const T_F32: u32 = 6;
pub(crate) const T_BOOL: u32 = 7;
pub(crate) const T_STRING: u32 = 8;
pub(crate) const T_ARRAY: u32 = 9;
pub(crate) const T_U64: u32 = 10;
pub(crate) const T_I64: u32 = 11;
pub(crate) const T_F64: u32 = 12;

/// Name of a GGUF value type, as used in error messages.
pub(crate) fn type_name(id: u32) -> &'static str {
    const NAMES: [&str; 13] = [
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64",
        "f64",
    ];
    usize::try_from(id)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed array. Typed rather than `Vec<Value>` so memory stays proportional
/// to the file (a u8 element costs 1 byte, not 32) and empty arrays keep their
/// element type through a round trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

// Value and Array have the same variants; generate the per-variant tables once.
macro_rules! per_variant {
    ($($variant:ident = $id:ident),*) => {
        impl Value {
            /// The GGUF value type id.
            pub fn type_id(&self) -> u32 {
                match self { $(Value::$variant(_) => $id),* }
            }
        }
        impl Array {
            /// The GGUF value type id of the elements.
            pub fn elem_type_id(&self) -> u32 {
                match self { $(Array::$variant(_) => $id),* }
            }
            pub fn len(&self) -> usize {
                match self { $(Array::$variant(v) => v.len()),* }
            }
        }
    };
}
per_variant!(
    U8 = T_U8,
    I8 = T_I8,
    U16 = T_U16,
    I16 = T_I16,
    U32 = T_U32,
    I32 = T_I32,
    F32 = T_F32,
    Bool = T_BOOL,
    String = T_STRING,
    Array = T_ARRAY,
    U64 = T_U64,
    I64 = T_I64,
    F64 = T_F64
);

impl Value {
    /// `"u32"`, `"string"`, `"array"`, ...
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// The type name, with "negative" prepended to a negative integer's so an
    /// error explains why an integer key was still rejected.
    pub(crate) fn describe(&self) -> &'static str {
        match *self {
            Value::I8(v) if v < 0 => "negative i8",
            Value::I16(v) if v < 0 => "negative i16",
            Value::I32(v) if v < 0 => "negative i32",
            Value::I64(v) if v < 0 => "negative i64",
            _ => self.type_name(),
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// `f32`, or `f64` narrowed to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            Value::Array(Array::String(v)) => Some(v),
            _ => None,
        }
    }
}

impl Array {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! conversions {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(v) }
        }
        impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Self { Array::$variant(v) }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Self { Value::Array(Array::$variant(v)) }
        }
    )*};
}
conversions!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(Array::String(v.into_iter().map(str::to_owned).collect()))
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Self {
        Value::Array(v)
    }
}

/// Metadata in file order, with O(1) lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key` as `get` reads it (e.g. [`Value::as_u64`]), or an error naming the
    /// key: [`GgufError::MissingKey`], or [`GgufError::WrongType`] saying it is not `expected`.
    pub fn require<'a, T>(
        &'a self,
        key: &str,
        get: fn(&'a Value) -> Option<T>,
        expected: &'static str,
    ) -> Result<T, GgufError> {
        let v = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })?;
        get(v).ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            found: v.describe(),
            expected,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `key`, keeping its position if present; returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.index.get(&key).and_then(|&i| self.entries.get_mut(i)) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        None
    }

    /// Removes `key`, keeping the order of the rest.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, value) = self.entries.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        Some(value)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Any integer type holding a non-negative value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// `f32` or `f64`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        self.get(key)?.as_str_array()
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}
