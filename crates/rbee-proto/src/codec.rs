//! The one codec for everything rbee encodes: bincode 2 in serde mode, little-endian varints,
//! and a hard cap on what a decode may consume or allocate.
//!
//! Every message from a peer or file goes through [`decode`], which refuses input larger than
//! [`MAX_MESSAGE_SIZE`] before reading it and refuses trailing bytes after it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// 16 MiB: a manifest of a 100 GB model at 4 MiB shards is under 1 MiB, so this leaves room
/// without letting a peer make us allocate gigabytes.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_SIZE>()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes exceeds the limit of {MAX_MESSAGE_SIZE} bytes")]
    TooLarge { size: usize },
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("malformed message: {trailing} unexpected bytes after the end")]
    TrailingBytes { trailing: usize },
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge { size: bytes.len() });
    }
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge { size: bytes.len() });
    }
    // bincode checks every length it reads against the config's limit before it allocates,
    // not against the bytes left, so the limit is what a few lying bytes can make us
    // allocate. It scales with the input: 16× the size class (a value claims at most 8× its
    // encoding, a `u64` in a one-byte varint), so no valid message is refused.
    let decoded = match bytes.len() {
        0..=1024 => decode_within::<T, { 16 << 10 }>(bytes),
        1025..=4096 => decode_within::<T, { 64 << 10 }>(bytes),
        4097..=16384 => decode_within::<T, { 256 << 10 }>(bytes),
        16385..=65536 => decode_within::<T, { 1 << 20 }>(bytes),
        65537..=262_144 => decode_within::<T, { 4 << 20 }>(bytes),
        _ => decode_within::<T, MAX_MESSAGE_SIZE>(bytes),
    };
    let (value, used) = decoded.map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    bincode::serde::decode_from_slice(bytes, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;
    use crate::{Manifest, ModelRef};
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let m = sample(1 << 20);
        let back: Manifest = decode(&encode(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let r: ModelRef = "org/repo@main:f.gguf".parse().unwrap();
        assert_eq!(decode::<ModelRef>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn rejects_truncated_trailing_and_oversized() {
        let bytes = encode(&sample(1 << 20)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Manifest>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode::<Manifest>(&long),
            Err(CodecError::TrailingBytes { trailing: 1 })
        );
        let huge = vec![0u8; MAX_MESSAGE_SIZE + 1];
        assert!(matches!(
            decode::<Manifest>(&huge),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_forged_length_does_not_allocate() {
        // A Vec<u8> claiming u64::MAX elements: varint tag 253 then 8 bytes.
        let mut forged = vec![253u8];
        forged.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&forged).is_err());
        let mut forged = vec![252u8];
        forged.extend_from_slice(&(MAX_MESSAGE_SIZE as u32 * 2).to_le_bytes());
        assert!(decode::<Vec<u64>>(&forged).is_err());
    }

    #[test]
    fn the_size_classes_never_refuse_a_valid_message() {
        // The densest claims per encoded byte: small `u64`s (8 claimed per byte), at every
        // class boundary and either side of it.
        for n in [
            1usize,
            1023,
            1024,
            1025,
            4096,
            4097,
            16384,
            65537,
            262_145,
            1 << 20,
        ] {
            let v: Vec<u64> = (0..n as u64).map(|i| i % 100).collect();
            let bytes = encode(&v).unwrap();
            assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), v, "{n} values");
            let s: Vec<String> = (0..n / 8 + 1).map(|i| "x".repeat(i % 9)).collect();
            assert_eq!(decode::<Vec<String>>(&encode(&s).unwrap()).unwrap(), s);
        }
        // A short message that claims a long string is refused at its size class.
        let mut forged = vec![252u8];
        forged.extend_from_slice(&(8u32 << 20).to_le_bytes());
        let e = decode::<String>(&forged).unwrap_err().to_string();
        assert!(e.contains("LimitExceeded"), "{e}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Manifest>(&bytes);
            let _ = decode::<ModelRef>(&bytes);
        }
    }
}
