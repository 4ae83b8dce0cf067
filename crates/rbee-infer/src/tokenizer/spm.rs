//! SentencePiece-style BPE over scores (`tokenizer.ggml.model = "llama"`), as
//! llama.cpp's `llm_tokenizer_spm` does it.
//!
//! Why this is implemented directly instead of through the `tokenizers` crate
//! with merges derived from the scores: the two give the same pieces in
//! principle, but llama.cpp's loop has specifics (any adjacent pair whose
//! concatenation is *any* vocabulary entry may merge, control and byte tokens
//! included; ties go to the leftmost pair; leftover characters become byte
//! tokens or the single-byte token) that a derived merge list only
//! approximates, and deriving merges for a 262k vocabulary means tens of
//! millions of substring lookups and a large `tokenizers` model build on every
//! load. Running the algorithm on the vocabulary itself costs nothing at load
//! and matches llama.cpp by construction.
//!
//! The algorithm: split the (space-escaped) text into UTF-8 characters, then
//! repeatedly merge the adjacent pair whose concatenation is a token with the
//! highest score (ties: leftmost), until no pair is a token. Each remaining
//! symbol is its token, or, if it is not in the vocabulary (a single character
//! the vocabulary lacks), its UTF-8 bytes as `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::error::TokenizerError;
use super::vocab::Vocab;

/// SentencePiece's visible space, U+2581 "▁".
pub(crate) const SPACE_MARK: &str = "\u{2581}";

/// Per-vocabulary state for SPM encoding.
#[derive(Debug, Clone)]
pub(crate) struct Spm {
    pub scores: Vec<f32>,
    /// llama.cpp's `byte_to_token`: the `<0xXX>` token, or else the token whose
    /// text is that single byte.
    byte_tokens: [Option<u32>; 256],
}

impl Spm {
    pub fn new(vocab: &Vocab, scores: Vec<f32>) -> Self {
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let b = b as u8;
            *slot = vocab
                .get(&format!("<0x{b:02X}>"))
                .or_else(|| vocab.get_bytes(&[b]));
        }
        Spm {
            scores,
            byte_tokens,
        }
    }

    /// Appends the tokens of `text` (spaces already escaped to "▁") to `out`.
    pub fn encode(
        &self,
        vocab: &Vocab,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let bytes = text.as_bytes();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start: start as u32,
                len: ch.len_utf8() as u32,
                prev: i as i32 - 1,
                next: i as i32 + 1,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        let try_add =
            |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
                if left < 0 || right < 0 {
                    return;
                }
                let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
                let start = l.start as usize;
                let size = (l.len + r.len) as usize;
                let Some(id) = vocab.get_bytes(&bytes[start..start + size]) else {
                    return;
                };
                queue.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left: left as u32,
                    right: right as u32,
                    size: size as u32,
                });
            };

        for i in 1..symbols.len() as i32 {
            try_add(&symbols, &mut queue, i - 1, i);
        }

        while let Some(bigram) = queue.pop() {
            let (li, ri) = (bigram.left as usize, bigram.right as usize);
            let (left, right) = (symbols[li], symbols[ri]);
            // A stale pair: one side was merged away or grew since it was queued.
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            symbols[li].len += right.len;
            symbols[ri].len = 0;
            symbols[li].next = right.next;
            if right.next >= 0 {
                symbols[right.next as usize].prev = li as i32;
            }
            try_add(&symbols, &mut queue, symbols[li].prev, li as i32);
            try_add(&symbols, &mut queue, li as i32, symbols[li].next);
        }

        let mut i = 0i32;
        while i >= 0 {
            let sym = symbols[i as usize];
            let piece = &bytes[sym.start as usize..(sym.start + sym.len) as usize];
            match vocab.get_bytes(piece) {
                Some(id) => out.push(id),
                None => {
                    for &b in piece {
                        out.push(
                            self.byte_tokens[b as usize]
                                .ok_or(TokenizerError::NoByteToken { byte: b })?,
                        );
                    }
                }
            }
            i = sym.next;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

/// A candidate merge. The heap pops the highest score first, and among equal
/// scores the leftmost pair, as llama.cpp's `llm_bigram_spm::comparator`.
#[derive(Debug, Clone, Copy)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // llama.cpp compares with `<` and `==`, so -0.0 equals 0.0; partial_cmp
        // does the same (total_cmp would not).
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// llama.cpp's `llama_escape_whitespace`: every " " becomes "▁".
pub(crate) fn escape_whitespace(text: &str, out: &mut String) {
    for (i, part) in text.split(' ').enumerate() {
        if i > 0 {
            out.push_str(SPACE_MARK);
        }
        out.push_str(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm(tokens: &[(&str, f32)]) -> (Vocab, Spm) {
        let mut all: Vec<(String, f32)> = tokens.iter().map(|(t, s)| (t.to_string(), *s)).collect();
        for b in 0..=255u8 {
            all.push((format!("<0x{b:02X}>"), 0.0));
        }
        let vocab = Vocab::new(all.iter().map(|(t, _)| t.as_str())).unwrap();
        let s = Spm::new(&vocab, all.iter().map(|(_, s)| *s).collect());
        (vocab, s)
    }

    fn enc(v: &Vocab, s: &Spm, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.encode(v, text, &mut out).unwrap();
        out.iter()
            .map(|&id| v.text(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn merges_highest_score_first() {
        // "ab" outscores "bc", so "abc" → "ab" + "c", not "a" + "bc".
        let (v, s) = spm(&[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -2.0),
            ("bc", -3.0),
        ]);
        assert_eq!(enc(&v, &s, "abc"), ["ab", "c"]);
        let (v, s) = spm(&[
            ("a", -1.0),
            ("b", -1.0),
            ("c", -1.0),
            ("ab", -3.0),
            ("bc", -2.0),
        ]);
        assert_eq!(enc(&v, &s, "abc"), ["a", "bc"]);
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        let (v, s) = spm(&[("a", -1.0), ("aa", -2.0)]);
        assert_eq!(enc(&v, &s, "aaa"), ["aa", "a"]);
    }

    #[test]
    fn merges_need_every_intermediate_piece() {
        // "abc" is a token but neither "ab" nor "bc" is: no path to it.
        let (v, s) = spm(&[("a", -1.0), ("b", -1.0), ("c", -1.0), ("abc", 0.0)]);
        assert_eq!(enc(&v, &s, "abc"), ["a", "b", "c"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let (v, s) = spm(&[("▁", -1.0), ("h", -1.0), ("i", -1.0), ("hi", -2.0)]);
        assert_eq!(
            enc(&v, &s, "hi▁é🙂"),
            [
                "hi", "▁", "<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"
            ]
        );
    }

    #[test]
    fn missing_byte_token_is_an_error() {
        let vocab = Vocab::new(["a"].into_iter()).unwrap();
        let s = Spm::new(&vocab, vec![0.0]);
        let mut out = Vec::new();
        let err = s.encode(&vocab, "ab", &mut out).unwrap_err();
        assert!(
            matches!(err, TokenizerError::NoByteToken { byte: b'b' }),
            "{err}"
        );
    }

    #[test]
    fn escapes_every_space() {
        let mut s = String::new();
        escape_whitespace(" a  b ", &mut s);
        assert_eq!(s, "▁a▁▁b▁");
    }
}
