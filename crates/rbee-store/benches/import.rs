//! Import throughput of a 1 GiB GGUF next to two references measured in the same run on the same
//! (page-cached) file: BLAKE3 hashing alone on one thread, and a plain copy with fsync. An
//! import reads, hashes, writes and syncs, so it cannot beat either; the goal is to stay close
//! to the slower of the two.
//!
//! `cargo bench -p rbee-store --bench import` (set `RBEE_BENCH_DIR` to measure another disk,
//! `RBEE_BENCH_MIB` for another size).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use rbee_format::gguf::{GgmlType, writer::GgufWriter};
use rbee_store::{ImportSource, Store};

type BenchResult = Result<(), Box<dyn std::error::Error>>;

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn copy_synced(src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut input = File::open(src)?;
    let mut out = File::create(dst)?;
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.sync_all()
}

fn main() -> BenchResult {
    let mib: u64 = std::env::var("RBEE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var_os("RBEE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base)?;
    let src = dir.path().join("bench.gguf");

    // A valid GGUF whose one big tensor carries pseudo-random bytes (so nothing compresses).
    let floats = (mib << 20) / 4;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..floats * 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut w = GgufWriter::tiny_model("llama");
    w.add_tensor("bench.weight", &[floats], GgmlType::F32, data);
    w.write_file(&src)?;
    let size = fs::metadata(&src)?.len();
    // Flush the generated file so its write-back does not land inside a timed run, and warm
    // the page cache so every contender reads from memory.
    File::open(&src)?.sync_all()?;
    hash_file(&src)?;

    // Best of three rounds, contenders interleaved so disk state affects each alike.
    let (mut hash_s, mut copy_s, mut import_s) = (f64::MAX, f64::MAX, f64::MAX);
    for round in 0..3 {
        let t = Instant::now();
        hash_file(&src)?;
        hash_s = hash_s.min(t.elapsed().as_secs_f64());

        let copy = dir.path().join("copy");
        let t = Instant::now();
        copy_synced(&src, &copy)?;
        copy_s = copy_s.min(t.elapsed().as_secs_f64());
        fs::remove_file(copy)?;

        let store = Store::open(dir.path().join(format!("store{round}")))?;
        let t = Instant::now();
        store.import(&ImportSource::Path(src.clone()), &mut |_| {})?;
        import_s = import_s.min(t.elapsed().as_secs_f64());
        fs::remove_dir_all(store.root())?;
    }

    println!(
        "file: {} MiB in {} (best of 3 rounds)",
        size >> 20,
        dir.path().display()
    );
    println!("{:<34} {:>8} {:>10}", "operation", "seconds", "MiB/s");
    for (what, secs) in [
        ("blake3, 1 thread (reference)", hash_s),
        ("copy + fsync (reference)", copy_s),
        ("rbee import (hash+copy+fsync)", import_s),
    ] {
        println!("{what:<34} {secs:>8.3} {:>10.0}", mib_per_s(size, secs));
    }
    println!(
        "import / hash-only: {:.2}x   import / copy-only: {:.2}x",
        hash_s / import_s,
        copy_s / import_s
    );
    Ok(())
}
