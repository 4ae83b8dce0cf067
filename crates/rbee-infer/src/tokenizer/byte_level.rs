//! GPT-2's byte ↔ character mapping for byte-level BPE.
//!
//! Byte-level vocabularies store every byte as a printable character so that
//! token texts are valid UTF-8 without spaces or control characters: bytes
//! `!`..`~`, `¡`..`¬` and `®`..`ÿ` map to themselves, the other 68 bytes to
//! U+0100 onwards in byte order (so a space is "Ġ", a newline "Ċ").
//! Same table as llama.cpp's `unicode_byte_to_utf8_map`.

/// Byte → character table.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let keeps_itself = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if keeps_itself {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All values are below U+0200, so always valid scalar values.
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// The byte a byte-level character stands for, if it stands for one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cp as u8),
        0x100..=0x143 => {
            // The (cp - 256)-th byte that does not keep itself.
            let mut k = cp - 0x100;
            (0u32..256)
                .filter(|b| !matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF))
                .find(|_| {
                    let hit = k == 0;
                    k = k.wrapping_sub(1);
                    hit
                })
                .map(|b| b as u8)
        }
        _ => None,
    }
}

/// llama.cpp's `llama_decode_text`: the bytes a byte-level token text stands
/// for. A character outside the table is kept as llama.cpp prints it,
/// `[UNK_BYTE_0x<hex of its UTF-8>` + the whole token text + `]`.
pub(crate) fn decode_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).as_bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_gpt2() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('é'), Some(0xE9));
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn decode_text_maps_back_and_marks_unknowns() {
        assert_eq!(decode_text("ĠhelloĊ"), b" hello\n");
        assert_eq!(decode_text("a€"), b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]".to_vec());
    }
}
