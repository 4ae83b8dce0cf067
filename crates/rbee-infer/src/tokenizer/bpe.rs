//! Byte-level BPE with ranked merges (`tokenizer.ggml.model = "gpt2"`), as
//! llama.cpp's `llm_tokenizer_bpe_session` does it.
//!
//! Each pre-tokenized word is byte-encoded (GPT-2 table), split into
//! characters, and the adjacent pair with the lowest merge rank is merged
//! (ties: leftmost) until no pair has a rank. Each resulting symbol is emitted
//! as its token; a symbol that is not a token (a merge whose result the
//! vocabulary lacks) is emitted byte by byte through single-byte tokens, and
//! bytes without one are dropped, which is what llama.cpp does.
//!
//! Merge sides are interned to ids so that ranks live in a map keyed by two
//! integers instead of two strings: a side that is a vocabulary token uses its
//! token id, any other side gets an id past the vocabulary.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::byte_level::byte_to_char_table;
use super::error::TokenizerError;
use super::hash::FxHashMap;
use super::pretokenize::{PreConfig, PreTokenizer};
use super::vocab::Vocab;

#[derive(Debug)]
pub(crate) struct Bpe {
    /// (left id, right id) → rank; the first occurrence of a pair wins, as
    /// llama.cpp's `bpe_ranks.emplace`.
    ranks: FxHashMap<(u32, u32), u32>,
    /// Merge sides that are not vocabulary tokens → ids from `vocab.len()` on.
    extra: FxHashMap<Box<[u8]>, u32>,
    pre: PreTokenizer,
    ignore_merges: bool,
    byte_chars: [char; 256],
}

impl Bpe {
    /// `merges` are GGUF merge strings, "left right", in rank order.
    pub fn new(vocab: &Vocab, merges: &[String], pre: &PreConfig) -> Result<Self, TokenizerError> {
        let mut ranks = FxHashMap::default();
        ranks.reserve(merges.len());
        let mut extra: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        let intern = |s: &str, extra: &mut FxHashMap<Box<[u8]>, u32>| -> u32 {
            if let Some(id) = vocab.get(s) {
                return id;
            }
            let next = (vocab.len() + extra.len()) as u32;
            *extra.entry(s.as_bytes().into()).or_insert(next)
        };
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a merge
            // with no such space becomes the pair ("", ""), which never matches.
            let Some(pos) = merge.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let left = intern(&merge[..pos], &mut extra);
            let right = intern(&merge[pos + 1..], &mut extra);
            ranks.entry((left, right)).or_insert(rank as u32);
        }
        Ok(Bpe {
            ranks,
            extra,
            pre: PreTokenizer::new(pre)?,
            ignore_merges: pre.ignore_merges,
            byte_chars: byte_to_char_table(),
        })
    }

    fn symbol_id(&self, vocab: &Vocab, bytes: &[u8]) -> Option<u32> {
        vocab
            .get_bytes(bytes)
            .or_else(|| self.extra.get(bytes).copied())
    }

    fn rank(&self, left: Option<u32>, right: Option<u32>) -> Option<u32> {
        self.ranks.get(&(left?, right?)).copied()
    }

    /// Appends the tokens of `text` to `out`.
    pub fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut queue = BinaryHeap::new();
        for (start, end) in self.pre.split(text) {
            word.clear();
            for &b in &text.as_bytes()[start..end] {
                word.push(self.byte_chars[b as usize]);
            }
            self.encode_word(vocab, &word, &mut symbols, &mut queue, out);
        }
    }

    fn encode_word(
        &self,
        vocab: &Vocab,
        word: &str,
        symbols: &mut Vec<Symbol>,
        queue: &mut BinaryHeap<Bigram>,
        out: &mut Vec<u32>,
    ) {
        let bytes = word.as_bytes();
        if self.ignore_merges
            && let Some(id) = vocab.get(word)
        {
            out.push(id);
            return;
        }
        symbols.clear();
        queue.clear();
        for (i, (start, ch)) in word.char_indices().enumerate() {
            let len = ch.len_utf8();
            symbols.push(Symbol {
                start: start as u32,
                len: len as u32,
                prev: i as i32 - 1,
                next: i as i32 + 1,
                id: self.symbol_id(vocab, &bytes[start..start + len]),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = -1;
        }
        let add = |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
            if left < 0 || right < 0 {
                return;
            }
            let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
            if let Some(rank) = self.rank(l.id, r.id) {
                queue.push(Bigram {
                    rank,
                    left: left as u32,
                    right: right as u32,
                    size: l.len + r.len,
                });
            }
        };
        for i in 1..symbols.len() as i32 {
            add(symbols.as_slice(), &mut *queue, i - 1, i);
        }
        while let Some(bigram) = queue.pop() {
            let (li, ri) = (bigram.left as usize, bigram.right as usize);
            let (left, right) = (symbols[li], symbols[ri]);
            // Stale: a side was merged away, or grew (llama.cpp compares the
            // texts; the start offsets never move, so lengths decide it).
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            let start = left.start as usize;
            let merged = &bytes[start..start + bigram.size as usize];
            symbols[li].len = bigram.size;
            symbols[li].id = self.symbol_id(vocab, merged);
            symbols[ri].len = 0;
            symbols[li].next = right.next;
            if right.next >= 0 {
                symbols[right.next as usize].prev = li as i32;
            }
            let (prev, next) = (symbols[li].prev, symbols[li].next);
            add(symbols.as_slice(), &mut *queue, prev, li as i32);
            add(symbols.as_slice(), &mut *queue, li as i32, next);
        }
        let mut i = 0i32;
        while i >= 0 && (i as usize) < symbols.len() {
            let sym = symbols[i as usize];
            let piece = &bytes[sym.start as usize..(sym.start + sym.len) as usize];
            match vocab.get_bytes(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.iter().filter_map(|&b| vocab.get_bytes(&[b]))),
            }
            i = sym.next;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
    id: Option<u32>,
}

/// A candidate merge; the heap pops the lowest rank first, then the leftmost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::super::pretokenize::pre_config;
    use super::*;

    fn bpe(tokens: &[&str], merges: &[&str], pre: &str) -> (Vocab, Bpe) {
        let vocab = Vocab::new(tokens.iter().copied()).unwrap();
        let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
        let b = Bpe::new(&vocab, &merges, &pre_config(Some(pre)).unwrap()).unwrap();
        (vocab, b)
    }

    fn enc(v: &Vocab, b: &Bpe, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        b.encode(v, text, &mut out);
        out.iter()
            .map(|&id| v.text(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn merges_by_rank_within_words() {
        let tokens = ["a", "b", "c", "Ġ", "ab", "bc", "Ġa", "Ġab"];
        let (v, b) = bpe(&tokens, &["b c", "Ġ a", "a b", "Ġa b"], "gpt-2");
        // "b c" outranks "a b": "abc" → "a" "bc".
        assert_eq!(enc(&v, &b, "abc"), ["a", "bc"]);
        assert_eq!(enc(&v, &b, "abc ab"), ["a", "bc", "Ġab"]);
    }

    #[test]
    fn merged_symbol_outside_vocab_falls_back_to_single_bytes() {
        // "x y" merges into "xy", which is no token: emitted as "x", "y".
        let (v, b) = bpe(&["x", "y", "xyz", "z"], &["x y", "xy z"], "gpt-2");
        assert_eq!(enc(&v, &b, "xyz"), ["xyz"]);
        assert_eq!(enc(&v, &b, "xy"), ["x", "y"]);
    }

    #[test]
    fn ignore_merges_emits_whole_word_tokens() {
        // No merge path to "abc", but llama-bpe takes a whole-word token as is.
        let (v, b) = bpe(&["a", "b", "c", "abc"], &[], "llama-bpe");
        assert_eq!(enc(&v, &b, "abc"), ["abc"]);
        let (v, b) = bpe(&["a", "b", "c", "abc"], &[], "gpt-2");
        assert_eq!(enc(&v, &b, "abc"), ["a", "b", "c"]);
    }

    #[test]
    fn non_ascii_is_byte_encoded() {
        // "é" is bytes C3 A9 → characters "Ã" "©".
        let (v, b) = bpe(&["Ã", "©", "Ã©"], &["Ã ©"], "gpt-2");
        assert_eq!(enc(&v, &b, "é"), ["Ã©"]);
    }
}
