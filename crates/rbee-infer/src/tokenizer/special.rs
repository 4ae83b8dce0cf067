//! Finding special tokens in input text (llama.cpp's `tokenizer_st_partition`
//! with `parse_special = true`).
//!
//! Control, user-defined and unknown tokens are cut out of the text before the
//! ordinary tokenizer runs, so `<start_of_turn>` in a chat prompt becomes one
//! token rather than a dozen pieces. llama.cpp's rule: take the special tokens
//! longest first; for each, split every remaining text fragment at each
//! occurrence, left to right. A token with the RSTRIP (LSTRIP) attribute also
//! swallows the whitespace after (before) it.
//!
//! Doing that literally is one substring search per special token per
//! fragment, 6k searches for Gemma. Instead all occurrences are found in one
//! pass (positions whose first byte starts some special token, probing only
//! the lengths special tokens with that first byte have), then accepted in
//! llama.cpp's order: by token rank, then position, skipping an occurrence
//! that overlaps text already taken. That is the same outcome, because a
//! fragment is exactly a maximal run of bytes nothing has taken yet.

use super::hash::FxHashMap;
use super::vocab::{Vocab, attr};

/// A piece of input text: plain text for the tokenizer, or a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Clone, Copy)]
struct Special {
    id: u32,
    /// Position in llama.cpp's processing order (longest text first).
    rank: u32,
    attrs: u16,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialMatcher {
    by_text: FxHashMap<Box<[u8]>, Special>,
    /// For each first byte, the distinct lengths of special tokens starting
    /// with it, longest first.
    lengths: Vec<Vec<u32>>,
}

impl SpecialMatcher {
    /// `ids` are the special tokens; `attrs` the attributes of every token.
    pub fn new(vocab: &Vocab, attrs: &[u16], mut ids: Vec<u32>) -> Self {
        let text_len = |id: u32| vocab.text(id).map_or(0, str::len);
        // llama.cpp sorts by length only (std::sort, not stable); ids break
        // ties here so the order is at least deterministic.
        ids.sort_by(|&a, &b| text_len(b).cmp(&text_len(a)).then(a.cmp(&b)));
        let mut by_text = FxHashMap::default();
        let mut lengths = vec![Vec::new(); 256];
        for (rank, &id) in ids.iter().enumerate() {
            let Some(text) = vocab.text(id) else { continue };
            let Some(&first) = text.as_bytes().first() else {
                continue;
            };
            let special = Special {
                id,
                rank: rank as u32,
                attrs: attrs.get(id as usize).copied().unwrap_or(0),
            };
            by_text.entry(text.as_bytes().into()).or_insert(special);
            let lens: &mut Vec<u32> = &mut lengths[first as usize];
            if !lens.contains(&(text.len() as u32)) {
                lens.push(text.len() as u32);
            }
        }
        for lens in &mut lengths {
            lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        SpecialMatcher { by_text, lengths }
    }

    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    /// Splits `text` into plain-text fragments and special tokens, in order.
    pub fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let bytes = text.as_bytes();
        let mut found: Vec<(u32, usize, usize, Special)> = Vec::new();
        if !self.by_text.is_empty() {
            for (pos, &b) in bytes.iter().enumerate() {
                for &len in &self.lengths[b as usize] {
                    let end = pos + len as usize;
                    if end > bytes.len() {
                        continue;
                    }
                    if let Some(&s) = self.by_text.get(&bytes[pos..end]) {
                        found.push((s.rank, pos, end, s));
                    }
                }
            }
        }
        if found.is_empty() {
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![Fragment::Text(text)]
            };
        }
        found.sort_unstable_by_key(|&(rank, pos, _, _)| (rank, pos));

        // taken[i]: 0 = still text, 1 = dropped whitespace, 2 = inside a token.
        let mut taken = vec![0u8; bytes.len()];
        let mut tokens: Vec<(usize, u32)> = Vec::new();
        for (_, start, end, s) in found {
            if taken[start..end].iter().any(|&t| t != 0) {
                continue;
            }
            taken[start..end].fill(2);
            tokens.push((start, s.id));
            if s.attrs & attr::LSTRIP != 0 {
                let mut i = start;
                while i > 0 && taken[i - 1] == 0 && is_c_space(bytes[i - 1]) {
                    i -= 1;
                    taken[i] = 1;
                }
            }
            if s.attrs & attr::RSTRIP != 0 {
                let mut i = end;
                while i < bytes.len() && taken[i] == 0 && is_c_space(bytes[i]) {
                    taken[i] = 1;
                    i += 1;
                }
            }
        }
        tokens.sort_unstable();

        let mut out = Vec::with_capacity(tokens.len() * 2 + 1);
        let mut next_token = tokens.iter().peekable();
        let mut i = 0;
        while i < bytes.len() {
            match taken[i] {
                0 => {
                    let start = i;
                    while i < bytes.len() && taken[i] == 0 {
                        i += 1;
                    }
                    // Special texts are whole UTF-8 strings, and stripped
                    // whitespace is ASCII, so runs end on char boundaries.
                    out.push(Fragment::Text(&text[start..i]));
                }
                1 => i += 1,
                _ => {
                    if let Some(&&(pos, id)) = next_token.peek()
                        && pos == i
                    {
                        next_token.next();
                        out.push(Fragment::Token(id));
                    }
                    i += 1;
                }
            }
        }
        out
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for strip attributes
/// (unlike `u8::is_ascii_whitespace`, it includes vertical tab).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::Fragment::{Text, Token};
    use super::*;

    fn matcher(tokens: &[(&str, u16)]) -> (Vocab, SpecialMatcher) {
        let vocab = Vocab::new(tokens.iter().map(|(t, _)| *t)).unwrap();
        let attrs: Vec<u16> = tokens.iter().map(|(_, a)| *a).collect();
        let ids = (0..tokens.len() as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        let m = SpecialMatcher::new(&vocab, &attrs, ids);
        (vocab, m)
    }

    const C: u16 = attr::CONTROL;
    const U: u16 = attr::USER_DEFINED;
    const N: u16 = attr::NORMAL;

    #[test]
    fn splits_around_special_tokens() {
        let (_, m) = matcher(&[("<s>", C), ("<start_of_turn>", C), ("user", N), ("\n", U)]);
        assert_eq!(
            m.partition("<start_of_turn>user\nhi<s>"),
            [Token(1), Text("user"), Token(3), Text("hi"), Token(0)]
        );
        assert_eq!(m.partition(""), []);
        assert_eq!(m.partition("plain"), [Text("plain")]);
    }

    #[test]
    fn longer_tokens_win_regardless_of_position() {
        // llama.cpp takes "\n\n" everywhere before any "\n".
        let (_, m) = matcher(&[("\n", U), ("\n\n", U)]);
        assert_eq!(m.partition("\n\n\n"), [Token(1), Token(0)]);
        assert_eq!(
            m.partition("a\n\n\n\nb"),
            [Text("a"), Token(1), Token(1), Text("b")]
        );
        // Longest first, not leftmost-longest: "bcd" is taken before "ab" is tried.
        let (_, m) = matcher(&[("ab", U), ("bcd", U)]);
        assert_eq!(m.partition("abcd"), [Text("a"), Token(1)]);
    }

    #[test]
    fn normal_tokens_are_not_special() {
        let (_, m) = matcher(&[("hello", N)]);
        assert_eq!(m.partition("hello"), [Text("hello")]);
    }

    #[test]
    fn rstrip_and_lstrip_drop_adjacent_whitespace() {
        let (_, m) = matcher(&[("<|end|>", C | attr::RSTRIP), ("<mask>", U | attr::LSTRIP)]);
        assert_eq!(
            m.partition("a<|end|> \n b"),
            [Text("a"), Token(0), Text("b")]
        );
        assert_eq!(
            m.partition("a  <mask> b"),
            [Text("a"), Token(1), Text(" b")]
        );
        assert_eq!(m.partition("<|end|>   "), [Token(0)]);
    }

    #[test]
    fn non_ascii_neighbours_stay_whole() {
        let (_, m) = matcher(&[("<x>", C)]);
        assert_eq!(m.partition("é<x>日本"), [Text("é"), Token(0), Text("日本")]);
    }
}
