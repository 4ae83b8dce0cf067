//! This machine's memory read bandwidth, the ceiling of a bandwidth-bound decode: `threads`
//! threads each sum their share of a 1 GiB buffer (u64 adds, vectorised; far larger than any
//! cache), best of 5 passes. Prints one JSON line: `{"kind":"bandwidth","threads","gb_s"}`.
//!
//! `bench_bandwidth [threads]` (default 2)

use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
        .max(1);
    let words = (1usize << 30) / 8;
    // Written once so every page is backed before timing.
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let chunk = words.div_ceil(threads);
    let mut best = f64::MAX;
    let mut checksum = 0u64;
    for _ in 0..5 {
        let started = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || sum(part)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        best = best.min(started.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sums.iter().fold(0, |a, &b| a.wrapping_add(b)));
    }
    let gb_s = (words * 8) as f64 / best / 1e9;
    println!(
        r#"{{"kind":"bandwidth","threads":{threads},"gb_s":{gb_s:.2},"checksum":{checksum}}}"#
    );
}

/// Eight independent accumulators, so the adds vectorise and the loop is bound by loads.
fn sum(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let (chunks, rest) = part.as_chunks::<8>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v);
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(0u64, |a, &b| a.wrapping_add(b))
}
