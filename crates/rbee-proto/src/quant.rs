//! Which GGUF file of a repo to use when the user named only the repo.
//!
//! Q4_K_M is the usual sweet spot of size and quality; we walk down a fixed preference list and
//! otherwise take the smallest file. Never "the largest": that is how a 2-bit-named repo turns
//! into a 60 GB F32 download.

/// Best first.
pub const QUANT_PREFERENCE: &[&str] = &["Q4_K_M", "Q5_K_M", "Q4_0", "Q5_0", "Q8_0"];

/// Whether `tag` is a quantization tag (`Q4_K_M`, `IQ2_XS`, `Q8_0`, `F16`, `BF16`) rather
/// than a file name: what Ollama's `org/repo:Q4_K_M` names put after the colon.
pub fn is_quant_tag(tag: &str) -> bool {
    let upper = tag.to_ascii_uppercase();
    !tag.is_empty()
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && (upper.starts_with('Q')
            || upper.starts_with("IQ")
            || ["F16", "BF16", "F32"].contains(&upper.as_str()))
        && upper.chars().any(|c| c.is_ascii_digit())
}

/// True when `name` carries the quantization tag `quant` as a whole token, in any case and with
/// `.`, `-` or `_` around it (`model.Q4_K_M.gguf`, `model-q4_k_m.gguf`).
pub fn has_quant_tag(name: &str, quant: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let bytes = upper.as_bytes();
    let mut start = 0;
    while let Some(pos) = upper[start..].find(quant) {
        let at = start + pos;
        let end = at + quant.len();
        let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return true;
        }
        start = at + 1;
    }
    false
}

/// The first part of a split GGUF (`-00001-of-00003.gguf`) stands for the whole set; later parts
/// are not candidates on their own.
pub fn is_later_split_part(name: &str) -> bool {
    split_part(name).is_some_and(|(part, _)| part > 1)
}

/// `(part, total)` for names like `model-00002-of-00005.gguf`.
pub fn split_part(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".gguf")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let part = head.rsplit('-').next()?;
    if part.len() != 5 || total.len() != 5 {
        return None;
    }
    Some((part.parse().ok()?, total.parse().ok()?))
}

/// Picks the GGUF to download from `(file name, size if known)` pairs. Returns None when the
/// repo has no GGUF model file at all.
pub fn choose_gguf(files: &[(String, Option<u64>)]) -> Option<String> {
    let candidates: Vec<&(String, Option<u64>)> = files
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|(n, _)| {
            let base = n.rsplit('/').next().unwrap_or(n).to_ascii_lowercase();
            // Vision projectors and imatrix side files are not language models.
            !base.starts_with("mmproj") && !base.contains("imatrix")
        })
        .filter(|(n, _)| !is_later_split_part(n))
        .collect();
    for quant in QUANT_PREFERENCE {
        let mut hits: Vec<_> = candidates
            .iter()
            .filter(|(n, _)| has_quant_tag(n, quant))
            .collect();
        hits.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, _)) = hits.first() {
            return Some(name.clone());
        }
    }
    candidates
        .iter()
        .min_by_key(|(n, size)| (size.unwrap_or(u64::MAX), n.clone()))
        .map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[(&str, u64)]) -> Vec<(String, Option<u64>)> {
        names
            .iter()
            .map(|(n, s)| (n.to_string(), Some(*s)))
            .collect()
    }

    #[test]
    fn prefers_q4_k_m_in_any_naming_style() {
        for style in ["m-Q4_K_M.gguf", "m-q4_k_m.gguf", "m.Q4_K_M.gguf"] {
            let f = files(&[
                ("m-Q8_0.gguf", 8),
                (style, 4),
                ("m-F16.gguf", 16),
                ("m-Q2_K.gguf", 2),
            ]);
            assert_eq!(choose_gguf(&f).as_deref(), Some(style));
        }
    }

    #[test]
    fn walks_the_preference_list_then_takes_the_smallest() {
        let f = files(&[("m-Q8_0.gguf", 8), ("m-Q5_0.gguf", 5)]);
        assert_eq!(choose_gguf(&f).as_deref(), Some("m-Q5_0.gguf"));
        let f = files(&[("m-F32.gguf", 32), ("m-IQ2_XS.gguf", 2), ("m-F16.gguf", 16)]);
        assert_eq!(choose_gguf(&f).as_deref(), Some("m-IQ2_XS.gguf"));
        // IQ4_K_M-like names must not pass for Q4_K_M.
        let f = files(&[("m-IQ4_K_M.gguf", 3), ("m-Q5_K_M.gguf", 5)]);
        assert_eq!(choose_gguf(&f).as_deref(), Some("m-Q5_K_M.gguf"));
    }

    #[test]
    fn skips_projectors_and_later_split_parts() {
        let f = files(&[
            ("mmproj-Q4_K_M.gguf", 1),
            ("big-Q4_K_M-00002-of-00002.gguf", 5),
            ("big-Q4_K_M-00001-of-00002.gguf", 5),
            ("README.md", 1),
        ]);
        assert_eq!(
            choose_gguf(&f).as_deref(),
            Some("big-Q4_K_M-00001-of-00002.gguf")
        );
        assert_eq!(split_part("x-00002-of-00005.gguf"), Some((2, 5)));
        assert_eq!(choose_gguf(&files(&[("a.safetensors", 1)])), None);
    }
}
