//! Fuzz-style robustness: every truncation, byte flip and huge-field variant of
//! a valid file, plus seeded random mutations, must give `Ok` or `Err` from
//! GGUF `read` + `validate` and from the safetensors header reader: never a
//! panic and never a large allocation.

#![allow(clippy::unwrap_used)]
// tests may unwrap
// The only way to observe allocation sizes is a counting global allocator,
// which needs `unsafe impl GlobalAlloc`; it just forwards to `System`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rbee_format::gguf::{Array, GgufFile, GgufWriter, validate};
use rbee_format::safetensors::SafetensorsHeader;

struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Inputs are a few KiB; anything near this means a count drove an allocation.
const ALLOC_LIMIT: usize = 1 << 20;

/// A valid model with every kind of value, so mutations reach every parser path.
fn corpus() -> (Vec<u8>, usize) {
    let mut w = GgufWriter::tiny_model("llama");
    w.add(
        "x.nested",
        Array::Array(vec![
            Array::I16(vec![1, -1]),
            Array::Array(vec![Array::Bool(vec![true])]),
        ]),
    )
    .add("x.f64", 0.25f64)
    .add("x.i64", vec![-1i64])
    .add("x.u16", 3u16);
    let bytes = w.to_bytes().unwrap();
    let file = common::read(&bytes).unwrap();
    validate(&file).unwrap();
    (bytes, usize::try_from(file.data_offset).unwrap())
}

/// Parses and validates; on success re-checks the bounds invariant.
fn check(bytes: &[u8], file_size: u64, label: &dyn Fn() -> String) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(file) = GgufFile::read(Cursor::new(bytes), file_size) {
            for t in &file.tensors {
                assert!(
                    t.offset
                        .checked_add(t.size)
                        .is_some_and(|end| end <= file_size),
                    "{}",
                    t.name
                );
            }
            let _ = validate(&file).map_err(|e| e.to_string());
        }
    }));
    assert!(outcome.is_ok(), "panicked on {}", label());
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < ALLOC_LIMIT,
        "an allocation of {largest} bytes happened by {}",
        label()
    );
}

#[test]
fn every_truncation() {
    let (bytes, _) = corpus();
    for cut in 0..bytes.len() {
        let b = &bytes[..cut];
        check(b, cut as u64, &|| format!("truncation at {cut}"));
        // A caller overstating the size must not cause big allocations either.
        check(b, u64::MAX, &|| {
            format!("truncation at {cut}, size u64::MAX")
        });
    }
}

#[test]
fn every_header_byte_flipped() {
    let (bytes, header) = corpus();
    for at in 0..header {
        let orig = bytes[at];
        for v in [0x00, 0xff, 0x80, 0x7f, orig ^ 1, orig.wrapping_add(1)] {
            let mut b = bytes.clone();
            b[at] = v;
            check(&b, b.len() as u64, &|| format!("byte {at} = {v:#x}"));
        }
    }
}

#[test]
fn every_field_position_huge() {
    let (bytes, header) = corpus();
    let huge64 = [
        u64::MAX,
        u64::MAX - 7,
        1 << 63,
        1 << 32,
        (1 << 24) + 1,
        1 << 20,
    ];
    for at in 0..header - 8 {
        for v in huge64 {
            let mut b = bytes.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            check(&b, b.len() as u64, &|| format!("u64 at {at} = {v}"));
        }
        for v in [u32::MAX, 1 << 31, 13, 9] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            check(&b, b.len() as u64, &|| format!("u32 at {at} = {v}"));
        }
    }
}

/// 400 seeded cases of up to 15 byte changes, a cut, and a size that may lie, through `check`.
fn seeded_mutations(bytes: &[u8], check: fn(&[u8], u64, &dyn Fn() -> String)) {
    let len = bytes.len();
    let config = Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (
        prop::collection::vec((0..len, any::<u8>()), 1..16),
        0..=len,
        any::<bool>(),
    );
    runner
        .run(&strategy, |(edits, cut, lie)| {
            let mut b = bytes.to_vec();
            for &(at, v) in &edits {
                b[at] = v;
            }
            b.truncate(cut);
            let size = if lie {
                b.len() as u64 + 4096
            } else {
                b.len() as u64
            };
            check(&b, size, &|| format!("edits {edits:?}, cut {cut}"));
            Ok(())
        })
        .unwrap();
}

#[test]
fn seeded_random_mutations() {
    seeded_mutations(&corpus().0, check);
}

// ---- safetensors ----

/// A valid header with metadata, a scalar, an empty tensor and several dtypes.
fn st_corpus() -> (Vec<u8>, usize) {
    let json = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"I64","shape":[],"data_offsets":[22,30]},"d":{"dtype":"U8","shape":[0],"data_offsets":[30,30]}}"#;
    let bytes = common::safetensors_file(json, 30);
    common::st_read(&bytes).unwrap();
    (bytes, 8 + json.len())
}

/// Reads the header; on success re-checks that the tensors tile the data section.
fn st_check(bytes: &[u8], file_size: u64, label: &dyn Fn() -> String) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(h) = SafetensorsHeader::read(Cursor::new(bytes), file_size) {
            let mut at = h.data_offset;
            for (name, t) in &h.tensors {
                let [start, end] = h.file_range(t);
                assert_eq!(start, at, "{name}");
                assert!(end >= start && end <= file_size, "{name}");
                at = end;
            }
            assert_eq!(at, file_size);
        }
    }));
    assert!(outcome.is_ok(), "panicked on {}", label());
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest < ALLOC_LIMIT,
        "an allocation of {largest} bytes happened by {}",
        label()
    );
}

#[test]
fn safetensors_every_truncation() {
    let (bytes, _) = st_corpus();
    for cut in 0..bytes.len() {
        let b = &bytes[..cut];
        st_check(b, cut as u64, &|| format!("truncation at {cut}"));
        st_check(b, u64::MAX, &|| {
            format!("truncation at {cut}, size u64::MAX")
        });
    }
}

#[test]
fn safetensors_every_header_byte_flipped() {
    let (bytes, header) = st_corpus();
    for at in 0..header {
        let orig = bytes[at];
        for v in [
            0x00,
            0xff,
            b'"',
            b'{',
            b'}',
            b'[',
            b']',
            b',',
            b'9',
            b'-',
            orig ^ 1,
            orig.wrapping_add(1),
        ] {
            let mut b = bytes.clone();
            b[at] = v;
            st_check(&b, b.len() as u64, &|| format!("byte {at} = {v:#x}"));
        }
    }
    // Every value of the length field's low bytes, and huge ones.
    for v in (0..512u64).chain([1 << 32, 100 << 20, (100 << 20) + 1, u64::MAX]) {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&v.to_le_bytes());
        st_check(&b, b.len() as u64, &|| format!("header length {v}"));
        st_check(&b, u64::MAX, &|| {
            format!("header length {v}, size u64::MAX")
        });
    }
}

#[test]
fn safetensors_seeded_random_mutations() {
    seeded_mutations(&st_corpus().0, st_check);
}
