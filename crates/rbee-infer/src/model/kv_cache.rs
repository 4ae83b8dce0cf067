//! Per-layer key/value cache, stored as f16 like llama.cpp's default cache.
//!
//! f16 halves the memory of an f32 cache, and llama.cpp rounds K and V to
//! f16 when it stores them, so storing f16 is also what keeps our attention
//! numerically in step with it. Rows are position-major (`[pos][kv_head][dim]`)
//! so appending a token is one contiguous copy and growth never re-lays-out;
//! capacity grows in chunks of positions rather than being reserved for the
//! whole context up front.

use super::f16::f32_to_f16;

/// Positions added to the capacity each time a layer's cache fills up.
const GROW_CHUNK: usize = 256;

#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    /// f16 bits, `len * k_row` values.
    k: Vec<u16>,
    v: Vec<u16>,
    k_row: usize,
    v_row: usize,
}

impl LayerCache {
    pub fn new(k_row: usize, v_row: usize) -> LayerCache {
        LayerCache {
            k: Vec::new(),
            v: Vec::new(),
            k_row,
            v_row,
        }
    }

    /// Values per position: keys, values.
    pub fn k_row(&self) -> usize {
        self.k_row
    }

    pub fn v_row(&self) -> usize {
        self.v_row
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.k.len().checked_div(self.k_row).unwrap_or(0)
    }

    /// Drops positions `len..`.
    pub fn truncate(&mut self, len: usize) {
        self.k.truncate(len * self.k_row);
        self.v.truncate(len * self.v_row);
    }

    pub fn clear(&mut self) {
        self.k = Vec::new();
        self.v = Vec::new();
    }

    /// Appends rows of keys and values (one row per position, f32, rounded to f16).
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let positions = k.len() / self.k_row;
        let needed = self.len() + positions;
        if needed * self.k_row > self.k.capacity() {
            let target = needed.next_multiple_of(GROW_CHUNK);
            self.k.reserve_exact(target * self.k_row - self.k.len());
            self.v.reserve_exact(target * self.v_row - self.v.len());
        }
        self.k.extend(k.iter().map(|&x| f32_to_f16(x)));
        self.v.extend(v.iter().map(|&x| f32_to_f16(x)));
    }

    /// Keys of positions `range`, as the cache holds them: f16 bits (`[pos][kv_head][dim]`).
    pub fn keys_f16(&self, range: std::ops::Range<usize>) -> &[u16] {
        &self.k[range.start * self.k_row..range.end * self.k_row]
    }

    pub fn values_f16(&self, range: std::ops::Range<usize>) -> &[u16] {
        &self.v[range.start * self.v_row..range.end * self.v_row]
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        (self.k.capacity() + self.v.capacity()) * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::f16::f16_to_f32;

    #[test]
    fn appends_grows_in_chunks_and_truncates() {
        let mut cache = LayerCache::new(4, 2);
        cache.append(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), GROW_CHUNK * 6 * 2);
        cache.append(&[0.1; 8], &[0.2; 4]);
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache
                .keys_f16(0..1)
                .iter()
                .map(|&h| f16_to_f32(h))
                .collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(cache.values_f16(2..3), &[f32_to_f16(0.2); 2]);
        assert_eq!(cache.keys_f16(1..3), &[f32_to_f16(0.1); 8]);
        cache.truncate(1);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }
}
