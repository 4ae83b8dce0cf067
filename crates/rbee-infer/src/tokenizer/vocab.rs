//! The token table: id ↔ text, per-token attributes, and the output bytes of
//! each token.
//!
//! Texts live in one contiguous buffer with an end-offset per token, and the
//! text → id index is an open-addressing table of ids into that buffer. For a
//! 262k-token vocabulary this is three allocations instead of 262k `String`s
//! plus a `HashMap` of them, which keeps the build in the low milliseconds.

use super::error::TokenizerError;
use super::hash::hash_bytes;

/// Token attributes, the same bits as llama.cpp's `llama_token_attr`, so that
/// the rules copied from llama.cpp (which test bits, not types) read the same.
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;

    /// Attribute of a GGUF `tokenizer.ggml.token_type` value (llama.cpp's
    /// `LLAMA_TOKEN_TYPE_*`): 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte; anything else is undefined (no bits).
    pub fn from_gguf_type(t: i32) -> u16 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// An immutable list of byte strings indexed by id, stored contiguously.
#[derive(Debug, Default, Clone)]
pub(crate) struct ByteTable {
    buf: Vec<u8>,
    ends: Vec<u32>,
}

impl ByteTable {
    pub fn with_capacity(entries: usize, bytes: usize) -> Self {
        ByteTable {
            buf: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(entries),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TokenizerError> {
        self.extend(bytes);
        self.finish_entry()
    }

    /// Appends bytes to the entry being built; [`Self::finish_entry`] closes it.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn push_byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// Ends the entry made of everything appended since the previous one.
    pub fn finish_entry(&mut self) -> Result<(), TokenizerError> {
        let end = u32::try_from(self.buf.len()).map_err(|_| TokenizerError::TooLarge {
            what: "token texts exceed 4 GiB",
        })?;
        self.ends.push(end);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, id: usize) -> Option<&[u8]> {
        let end = *self.ends.get(id)? as usize;
        let start = match id {
            0 => 0,
            _ => self.ends[id - 1] as usize,
        };
        self.buf.get(start..end)
    }
}

const EMPTY: u64 = u64::MAX;

/// Token texts with a text → id index.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    texts: ByteTable,
    /// Open addressing with linear probing, at most half full. A slot is
    /// `EMPTY` or (high 32 bits of the text's hash) << 32 | id: comparing the
    /// stored hash first avoids a random read of the text for most probes.
    slots: Vec<u64>,
    mask: usize,
}

#[inline]
fn slot_of(hash: u64, mask: usize) -> usize {
    hash as usize & mask
}

#[inline]
fn tag_of(hash: u64) -> u64 {
    hash >> 32
}

impl Vocab {
    /// Builds the table from token texts in id order. A text that appears twice
    /// is an error, as in llama.cpp: the second id could never be produced.
    pub fn new<'a>(texts: impl ExactSizeIterator<Item = &'a str>) -> Result<Self, TokenizerError> {
        let n = texts.len();
        if n >= u32::MAX as usize {
            return Err(TokenizerError::TooLarge {
                what: "more than 2^32-1 tokens",
            });
        }
        let cap = (n * 2).next_power_of_two().max(16);
        let mut vocab = Vocab {
            texts: ByteTable::with_capacity(n, n * 8),
            slots: vec![EMPTY; cap],
            mask: cap - 1,
        };
        for (id, text) in texts.enumerate() {
            let text = text.as_bytes();
            let hash = hash_bytes(text);
            let mut slot = slot_of(hash, vocab.mask);
            loop {
                let occupant = vocab.slots[slot];
                if occupant == EMPTY {
                    vocab.slots[slot] = tag_of(hash) << 32 | id as u64;
                    break;
                }
                if occupant >> 32 == tag_of(hash) {
                    let other = occupant as u32;
                    if vocab.texts.get(other as usize) == Some(text) {
                        return Err(TokenizerError::DuplicateToken {
                            token: String::from_utf8_lossy(text).into_owned(),
                            first: other,
                            second: id as u32,
                        });
                    }
                }
                slot = (slot + 1) & vocab.mask;
            }
            vocab.texts.push(text)?;
        }
        Ok(vocab)
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// The id of the token whose text is exactly `bytes`.
    #[inline]
    pub fn get_bytes(&self, bytes: &[u8]) -> Option<u32> {
        let hash = hash_bytes(bytes);
        let tag = tag_of(hash);
        let mut slot = slot_of(hash, self.mask);
        loop {
            let entry = self.slots[slot];
            if entry == EMPTY {
                return None;
            }
            if entry >> 32 == tag {
                let id = entry as u32;
                if self.texts.get(id as usize) == Some(bytes) {
                    return Some(id);
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    #[inline]
    pub fn get(&self, text: &str) -> Option<u32> {
        self.get_bytes(text.as_bytes())
    }

    /// The text of token `id`. Texts come from `&str`s, so this is UTF-8.
    pub fn text(&self, id: u32) -> Option<&str> {
        std::str::from_utf8(self.texts.get(id as usize)?).ok()
    }

    /// The text of token `id` as bytes (no UTF-8 check).
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.texts.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_round_trips_and_misses() {
        let words = ["a", "b", "ab", "", "▁the", "<0x0A>"];
        let v = Vocab::new(words.iter().copied()).unwrap();
        for (i, w) in words.iter().enumerate() {
            assert_eq!(v.get(w), Some(i as u32), "{w:?}");
            assert_eq!(v.text(i as u32), Some(*w));
        }
        assert_eq!(v.get("abc"), None);
        assert_eq!(v.get_bytes(&[0xC4]), None);
        assert_eq!(v.text(6), None);
    }

    #[test]
    fn duplicate_is_an_error() {
        let err = Vocab::new(["x", "y", "x"].into_iter()).unwrap_err();
        assert!(
            matches!(
                err,
                TokenizerError::DuplicateToken {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}
