//! Shared by the store's integration tests.

use std::path::Path;

use rbee_format::gguf::GgmlType;
use rbee_format::gguf::writer::GgufWriter;

/// Writes a valid tiny `arch` GGUF with an extra tensor of `extra_floats` floats whose bytes
/// depend on `seed`: different seeds, different content ids.
pub fn write_gguf(path: &Path, arch: &str, extra_floats: usize, seed: u8) {
    let mut w = GgufWriter::tiny_model(arch);
    let data: Vec<u8> = (0..extra_floats * 4)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    w.add_tensor("extra.weight", &[extra_floats as u64], GgmlType::F32, data);
    w.write_file(path).unwrap();
}
