//! BLAKE3-based identifiers. Two newtypes so a shard hash can never be passed where a model's
//! content id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Characters of hex shown by `short()`: enough to tell models apart in logs.
const SHORT_HEX: usize = 12;

/// A 64-character hex string was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a content id: expected 64 hex characters (a BLAKE3 hash)")]
pub struct IdParseError {
    input: String,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], IdParseError> {
    let err = || IdParseError {
        input: s.chars().take(80).collect(),
    };
    if s.len() != 64 {
        return Err(err());
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(err)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(err)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

macro_rules! blake3_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        // Hex in human-readable formats (JSON catalogs, HTTP), 32 raw bytes on the wire.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            /// The id of `bytes`.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// Wraps an already computed BLAKE3 hash.
            pub fn from_hash(hash: blake3::Hash) -> Self {
                Self(*hash.as_bytes())
            }

            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Full lowercase hex (64 characters).
            pub fn to_hex(&self) -> String {
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }

            /// The first 12 hex characters, for logs and tables.
            pub fn short(&self) -> String {
                let mut hex = self.to_hex();
                hex.truncate(SHORT_HEX);
                hex
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex32(s).map(Self)
            }
        }
    };
}

blake3_id!(
    /// The BLAKE3 hash of a manifest's canonical encoding: the name of a model's exact content.
    ContentId
);
blake3_id!(
    /// The BLAKE3 hash of one shard (a fixed-size range of a model file).
    ShardHash
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_round_trip_and_short_form() {
        let id = ContentId::of(b"hello");
        assert_eq!(id.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.short().len(), 12);
        assert!(id.to_hex().starts_with(&id.short()));
        assert_eq!(id.to_hex().parse::<ContentId>(), Ok(id));
        assert_eq!(id.to_hex().to_uppercase().parse::<ContentId>(), Ok(id));
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("abc".parse::<ContentId>().is_err());
        let bad = "g".repeat(64);
        let err = bad.parse::<ShardHash>().unwrap_err();
        assert!(err.to_string().contains("64 hex characters"), "{err}");
        // Multi-byte characters must not be split mid-char.
        assert!("é".repeat(32).parse::<ContentId>().is_err());
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(bytes in any::<[u8; 32]>()) {
            let id = ContentId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
        }
    }
}
