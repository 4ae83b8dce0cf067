//! XSalsa20 keystream speed: this crate next to the `salsa20` crate (what `libp2p::pnet`
//! uses), in the same process, best of 5 rounds over 256 MiB.
//!
//! `cargo run --release -p rbee-pnet --example cipher_speed`
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use salsa20::cipher::{KeyIvInit, StreamCipher};

fn best(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let (key, nonce) = ([7u8; 32], [3u8; 24]);
    let mut buf = vec![0u8; 256 << 20];
    let mb = buf.len() as f64 / 1e6;
    let reference = best(|| {
        salsa20::XSalsa20::new(&key.into(), &nonce.into()).apply_keystream(&mut buf);
    });
    let ours = best(|| {
        // In 64 KiB pieces, as connection writes come.
        let mut c = rbee_pnet::XSalsa20::new(&key, &nonce);
        for piece in buf.chunks_mut(64 << 10) {
            c.apply(piece);
        }
    });
    println!("{:<34}{:>10}", "XSalsa20, 256 MiB", "MB/s");
    println!(
        "{:<34}{:>10.0}",
        "salsa20 crate (libp2p::pnet)",
        mb / reference
    );
    println!("{:<34}{:>10.0}", "rbee-pnet", mb / ours);
    println!("ratio: {:.2}x", reference / ours);
}
