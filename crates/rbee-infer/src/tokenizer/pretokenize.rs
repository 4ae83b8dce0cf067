//! Pre-tokenization for byte-level BPE: splitting text into words before
//! merges, chosen by `tokenizer.ggml.pre` exactly as llama.cpp chooses it.
//!
//! The regex strings are llama.cpp's (`llm_tokenizer_bpe`), which rewrite
//! `(?i:...)` contractions as explicit case classes. llama.cpp applies a list
//! of regexes in turn, each splitting every piece the previous ones left, and
//! keeps unmatched stretches as pieces of their own; [`PreTokenizer::split`]
//! does the same. llama.cpp runs the GPT-2 and Llama-3 patterns through
//! hand-written scanners and the rest through `std::regex` on a
//! category-collapsed copy of the text; both implement these same regexes, so
//! a real regex engine (fancy-regex, for the `(?!\S)` lookahead) gives the
//! same words. The GPT-2 pattern gets a final `|\s+`, which is what
//! llama.cpp's GPT-2 scanner does for whitespace the pattern leaves unmatched.

use tokenizers::utils::SysRegex;

use super::error::TokenizerError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_NO_TAIL: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
// Escapes stand for characters that Unicode normalization would silently
// replace in source text (U+1F7D ώ, U+1FBE ι, U+1FD3 ΐ, U+1FDB Ί, U+2126 Ω,
// U+212A K), which would turn the ranges they end into invalid ones.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";

/// What a `tokenizer.ggml.pre` value selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub regexes: &'static [&'static str],
    /// Llama-3 style: a word that is itself a token is emitted whole, without
    /// running merges (llama.cpp's `ignore_merges`).
    pub ignore_merges: bool,
    /// The pre-type forces `add_bos` on (before the GGUF key may override it).
    pub add_bos: bool,
}

const fn cfg(regexes: &'static [&'static str]) -> PreConfig {
    PreConfig {
        regexes,
        ignore_merges: false,
        add_bos: false,
    }
}

const DEFAULT: PreConfig = cfg(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]);

/// The configuration for a `tokenizer.ggml.pre` value, or `None` if rbee does
/// not know it. `None` for the key (missing) is llama.cpp's "default".
pub(crate) fn pre_config(pre: Option<&str>) -> Option<PreConfig> {
    let Some(pre) = pre else {
        return Some(DEFAULT);
    };
    Some(match pre {
        "default" => DEFAULT,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreConfig {
            regexes: &[LLAMA3],
            ignore_merges: true,
            add_bos: true,
        },
        "dbrx" | "smaug-bpe" => cfg(&[LLAMA3]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => cfg(&[QWEN2]),
        "qwen35" => cfg(&[QWEN35]),
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
        | "jais" | "trillion" | "granite-docling" | "jina-v1-en" | "jina-v2-code"
        | "roberta-bpe" => cfg(&[GPT2]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => cfg(&[r"\p{N}", GPT2_NO_TAIL]),
        "falcon" => cfg(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_NO_TAIL, "[0-9][0-9][0-9]"]),
        "deepseek-llm" => cfg(&[
            "[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
            r"\s+$",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ]),
        "deepseek-coder" => cfg(&[
            "[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ]),
        "chatglm-bpe" | "glm4" => cfg(&[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ]),
        "seed-coder" => cfg(&[
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
        ]),
        _ => return None,
    })
}

/// The GPT-2 configuration, used for a pre-type rbee does not know.
pub(crate) fn gpt2_fallback() -> PreConfig {
    cfg(&[GPT2])
}

/// Compiled pre-tokenizer regexes.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    regexes: Vec<SysRegex>,
}

impl PreTokenizer {
    pub fn new(config: &PreConfig) -> Result<Self, TokenizerError> {
        let regexes = config
            .regexes
            .iter()
            .map(|p| {
                SysRegex::new(p).map_err(|e| TokenizerError::Regex {
                    pattern: (*p).to_owned(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Byte ranges of the words of `text`, in order, covering all of it.
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let mut pieces = vec![(0, text.len())];
        let mut next = Vec::new();
        for re in &self.regexes {
            next.clear();
            for &(start, end) in &pieces {
                let mut prev = start;
                for (s, e) in re.find_iter(&text[start..end]) {
                    let (s, e) = (start + s, start + e);
                    if s > prev {
                        next.push((prev, s));
                    }
                    if e > s {
                        next.push((s, e));
                    }
                    prev = e;
                }
                if prev < end {
                    next.push((prev, end));
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        pieces.retain(|(s, e)| e > s);
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(&pre_config(Some(pre)).unwrap()).unwrap();
        p.split(text)
            .into_iter()
            .map(|(s, e)| text[s..e].to_string())
            .collect()
    }

    #[test]
    fn all_known_patterns_compile() {
        for pre in [
            "default",
            "llama-bpe",
            "qwen2",
            "qwen35",
            "gpt-2",
            "starcoder",
            "falcon",
            "deepseek-llm",
            "deepseek-coder",
            "chatglm-bpe",
            "seed-coder",
            "dbrx",
        ] {
            PreTokenizer::new(&pre_config(Some(pre)).unwrap()).unwrap();
        }
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("gpt-2", "Hello world's  end 123\n\n x"),
            ["Hello", " world", "'s", " ", " end", " 123", "\n\n", " x"]
        );
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words("llama-bpe", "Hello WORLD'S 12345 !!\n\n  x  "),
            [
                "Hello", " WORLD", "'S", " ", "123", "45", " !!\n\n", " ", " x", "  "
            ]
        );
    }

    #[test]
    fn qwen2_splits_single_digits() {
        assert_eq!(words("qwen2", "ab 123"), ["ab", " ", "1", "2", "3"]);
    }

    #[test]
    fn unknown_pre_is_none() {
        assert!(pre_config(Some("no-such-pre")).is_none());
        assert_eq!(pre_config(None), Some(DEFAULT));
    }
}
