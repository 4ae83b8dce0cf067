//! Fixture helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Cursor;

use rbee_format::gguf::{GgufError, GgufFile, GgufWriter};
use rbee_format::safetensors::{SafetensorsError, SafetensorsHeader};

pub fn read(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    GgufFile::read(Cursor::new(bytes), bytes.len() as u64)
}

pub fn read_err(bytes: &[u8]) -> String {
    read(bytes).expect_err("expected a read error").to_string()
}

pub fn tiny(arch: &str) -> Vec<u8> {
    GgufWriter::tiny_model(arch).to_bytes().unwrap()
}

/// Position of the first occurrence of `needle`.
pub fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// Position of the value of metadata `key` (just past its type field).
pub fn value_pos(bytes: &[u8], key: &str) -> usize {
    find(bytes, key.as_bytes()) + key.len() + 4
}

/// Position of the `n_dims` field of tensor info `name`.
pub fn tensor_info_pos(bytes: &[u8], name: &str) -> usize {
    let p = find(bytes, name.as_bytes()) + name.len();
    assert_eq!(
        &bytes[p - name.len() - 8..p - name.len()],
        &(name.len() as u64).to_le_bytes()
    );
    p
}

pub fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn st_read(bytes: &[u8]) -> Result<SafetensorsHeader, SafetensorsError> {
    SafetensorsHeader::read(Cursor::new(bytes), bytes.len() as u64)
}

pub fn st_read_err(bytes: &[u8]) -> String {
    st_read(bytes)
        .expect_err("expected a header error")
        .to_string()
}

/// A safetensors file: the length of `json`, `json` itself, then `data_len` bytes of data.
pub fn safetensors_file(json: &str, data_len: u64) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend((0..data_len).map(|i| i as u8));
    out
}
