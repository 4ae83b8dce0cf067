//! ggml tensor types and their storage layout (ggml's `type_traits`):
//! elements per block and bytes per block.

use std::fmt;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $block:literal, $size:literal;)*) => {
        /// A ggml tensor element type, as stored in GGUF tensor infos.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType { $($variant),* }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant),*];

            /// The type with ggml id `id`; `None` for removed or unknown ids.
            pub fn from_id(id: u32) -> Option<Self> {
                match id { $($id => Some(Self::$variant),)* _ => None }
            }
            /// The ggml type id.
            pub fn id(self) -> u32 {
                match self { $(Self::$variant => $id),* }
            }
            /// ggml's name, e.g. `"Q4_K"`.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant)),* }
            }
            /// Elements per block.
            pub fn block_size(self) -> u64 {
                match self { $(Self::$variant => $block),* }
            }
            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self { $(Self::$variant => $size),* }
            }
        }
    };
}

// Ids 4, 5 (Q4_2, Q4_3) and 31..=33 (Q4_0_4_4 etc.) were removed from ggml.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 36;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::GgmlType;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for (i, t) in GgmlType::ALL.iter().enumerate() {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert!(GgmlType::ALL[..i].iter().all(|o| o.id() != t.id()));
        }
        assert_eq!(GgmlType::ALL.len(), 31);
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(36), None);
    }

    #[test]
    fn layouts_match_ggml() {
        let t = |id| GgmlType::from_id(id).map(|t| (t.name(), t.block_size(), t.type_size()));
        assert_eq!(t(2), Some(("Q4_0", 32, 18)));
        assert_eq!(t(12), Some(("Q4_K", 256, 144)));
        assert_eq!(t(14), Some(("Q6_K", 256, 210)));
        assert_eq!(t(15), Some(("Q8_K", 256, 292)));
        assert_eq!(t(21), Some(("IQ3_S", 256, 110)));
        assert_eq!(t(30), Some(("BF16", 1, 2)));
        assert_eq!(t(34), Some(("TQ1_0", 256, 54)));
    }
}
