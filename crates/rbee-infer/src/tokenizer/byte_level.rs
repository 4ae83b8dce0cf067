//! GPT-2's byte ↔ character mapping for byte-level BPE.
//!
//! Byte-level vocabularies store every byte as a printable character so that
//! token texts are valid UTF-8 without spaces or control characters: bytes
//! `!`..`~`, `¡`..`¬` and `®`..`ÿ` map to themselves, the other 68 bytes to
//! U+0100 onwards in byte order (so a space is "Ġ", a newline "Ċ").
//! Same table as llama.cpp's `unicode_byte_to_utf8_map`.

/// Whether byte `b` is stored as the character with the same code point.
const fn keeps_itself(b: u32) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 bytes that are stored as U+0100 + their index here.
const SHIFTED: [u8; 68] = {
    let mut out = [0u8; 68];
    let (mut b, mut n) = (0u32, 0usize);
    while b < 256 {
        if !keeps_itself(b) {
            out[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    out
};

/// Byte → character table.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    for (b, slot) in table.iter_mut().enumerate() {
        *slot = char::from_u32(b as u32).unwrap_or_default();
    }
    for (i, &b) in SHIFTED.iter().enumerate() {
        // Below U+0200, so always a valid scalar value.
        table[b as usize] = char::from_u32(0x100 + i as u32).unwrap_or_default();
    }
    table
}

/// The byte a byte-level character stands for, if it stands for one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        return keeps_itself(cp).then_some(cp as u8);
    }
    SHIFTED.get(cp as usize - 0x100).copied()
}

/// llama.cpp's `llama_decode_text`: appends the bytes a byte-level token text
/// stands for to `out`. A character outside the table is kept as llama.cpp
/// prints it, `[UNK_BYTE_0x<hex of its UTF-8>` + the whole token text + `]`.
pub(crate) fn decode_text(text: &str, out: &mut Vec<u8>) {
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
        let decode = |t: &str| {
            let mut out = Vec::new();
            decode_text(t, &mut out);
            out
        };
        assert_eq!(decode("ĠhelloĊ"), b" hello\n");
        assert_eq!(decode("a€"), b"a[UNK_BYTE_0xe282aca\xe2\x82\xac]".to_vec());
    }
}
