//! What a lent GPU machine runs (`scripts/gpu-check`): the device runtime on the GPU against
//! the llama.cpp-exact CPU runtime on the same machine (fidelity), then the device runtime's
//! speed (single-stream and batched decode, weight bytes per second against the device's
//! measured copy bandwidth). Models are written here with random weights and real shapes
//! (`common/synthetic.rs`): Gemma 3 270M's and Qwen2.5-1.5B's Q4_K_M layouts. Prints one
//! JSON object per line.
//!
//! ```text
//! gpu_check cuda            # on the GPU machine (built with --features cuda)
//! gpu_check cpu [--quick]   # the same flow on candle's CPU device: how the script is checked
//!                           # on machines without a GPU
//! ```
//!
//! Fidelity, as docs/ARCHITECTURE.md defines it: per position, max |Δlogit| over the logits'
//! spread, and top-1 agreement under teacher forcing (sequences of random token ids: random
//! weights give flat logits, so near-ties are common and top-1 is a weak signal here; the
//! tolerance is the stronger one).

#[path = "common/synthetic.rs"]
mod synthetic;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rbee_infer::model::{
    DeviceRuntime, Output, SeqStep, Transformer,
    runtime::{Cpu, Nudged},
};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// Token ids from a fixed xorshift stream, below `vocab`.
fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn fidelity(model: &str, path: &Path, device: &Device, quick: bool) -> Result<(), Error> {
    let mut cpu = Transformer::load_gguf_on(Cpu, path)?;
    let mut dev = Transformer::load_gguf_on(DeviceRuntime::new(device.clone(), "check"), path)?;
    // The floor: the CPU runtime one bit off (see `runtime::Nudged`).
    let mut nudged = Transformer::load_gguf_on(Nudged::new(7), path)?;
    let vocab = cpu.config().vocab_size;
    let (sequences, len) = if quick { (1, 16) } else { (3, 64) };
    let (mut positions, mut top1, mut clear) = (0usize, 0usize, 0usize);
    // Positions the floor keeps (a one-bit change does not flip them), and the device's there.
    let (mut stable, mut stable_top1) = (0usize, 0usize);
    let mut relative = Vec::new();
    for s in 0..sequences {
        let ids = tokens(0x5eed + s as u64, len, vocab);
        let want = cpu.logits_per_position(&ids, ids.len() / 2)?;
        let got = dev.logits_per_position(&ids, ids.len() / 2)?;
        let floor = nudged.logits_per_position(&ids, ids.len() / 2)?;
        for ((w, g), f) in want.iter().zip(&got).zip(&floor) {
            let spread = w.iter().fold(f32::MIN, |m, &x| m.max(x))
                - w.iter().fold(f32::MAX, |m, &x| m.min(x));
            let diff = w.iter().zip(g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            relative.push(diff / spread.max(1e-6));
            let (i, j) = (argmax(w), argmax(g));
            if i != j && (w[i] - w[j]) / spread.max(1e-6) > 0.01 {
                clear += 1;
            }
            top1 += usize::from(i == j);
            positions += 1;
            if argmax(f) == i {
                stable += 1;
                stable_top1 += usize::from(i == j);
            }
        }
    }
    relative.sort_by(f32::total_cmp);
    println!(
        "{}",
        json!({
            "kind": "fidelity", "model": model, "device": format!("{device:?}"),
            "positions": positions, "top1_equal": top1,
            "top1_percent": 100.0 * top1 as f64 / positions.max(1) as f64,
            "clear_disagreements": clear,
            "floor_top1_equal": stable, "stable_top1_equal": stable_top1,
            "median_relative": relative.get(relative.len() / 2),
            "worst_relative": relative.last(),
        })
    );
    Ok(())
}

/// Bytes per second the device copies (read + write) a 256 MiB f32 buffer, best of 5.
fn copy_bandwidth(device: &Device) -> Result<f64, Error> {
    let n = 64 << 20;
    let a = Tensor::zeros(n, DType::F32, device)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        device.synchronize()?;
        let t = Instant::now();
        let b = (&a + 1.0)?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
        drop(b);
    }
    Ok(2.0 * 4.0 * n as f64 / best)
}

fn speed(
    model: &str,
    path: &Path,
    device: &Device,
    bandwidth: f64,
    quick: bool,
) -> Result<(), Error> {
    let weight_bytes = std::fs::metadata(path)?.len() as f64;
    let started = Instant::now();
    let mut dev = Transformer::load_gguf_on(DeviceRuntime::new(device.clone(), "check"), path)?;
    device.synchronize()?;
    let load_s = started.elapsed().as_secs_f64();
    let vocab = dev.config().vocab_size;
    let streams: &[usize] = if quick { &[1, 4] } else { &[1, 8, 32] };
    let steps = if quick { 4 } else { 64 };
    for &n in streams {
        let mut caches: Vec<_> = (0..n).map(|_| dev.new_cache()).collect();
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|i| tokens(0xbee + i as u64, 32, vocab))
            .collect();
        let mut next = Vec::with_capacity(n);
        for (cache, prompt) in caches.iter_mut().zip(&prompts) {
            let mut step = [SeqStep {
                cache,
                tokens: prompt,
                start: 0,
                output: Output::Logits,
            }];
            let logits = dev
                .forward_batch(&mut step)?
                .pop()
                .flatten()
                .ok_or("no logits")?;
            next.push(argmax(&logits) as u32);
        }
        let mut at = prompts[0].len();
        // One step unmeasured (first-use work), then `steps` timed.
        for timed in [false, true] {
            let t = Instant::now();
            for _ in 0..if timed { steps } else { 1 } {
                let batch: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
                let mut seqs: Vec<SeqStep<'_, _>> = caches
                    .iter_mut()
                    .zip(&batch)
                    .map(|(cache, token)| SeqStep {
                        cache,
                        tokens: token,
                        start: at,
                        output: Output::Logits,
                    })
                    .collect();
                let out = dev.forward_batch(&mut seqs)?;
                next = out
                    .into_iter()
                    .map(|l| l.map(|l| argmax(&l) as u32).ok_or("no logits"))
                    .collect::<Result<_, _>>()?;
                at += 1;
            }
            if timed {
                let secs = t.elapsed().as_secs_f64();
                let step_per_s = steps as f64 / secs;
                println!(
                    "{}",
                    json!({
                        "kind": "speed", "model": model, "device": format!("{device:?}"),
                        "streams": n, "load_s": load_s,
                        "aggregate_tok_s": n as f64 * step_per_s,
                        "per_stream_tok_s": step_per_s,
                        "weight_bytes": weight_bytes,
                        "weight_bytes_per_s": weight_bytes * step_per_s,
                        "copy_bandwidth_bytes_per_s": bandwidth,
                        "fraction_of_bandwidth": weight_bytes * step_per_s / bandwidth,
                    })
                );
            }
        }
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "cuda".into());
    let quick = args.any(|a| a == "--quick");
    let device = match which.as_str() {
        "cuda" => Device::new_cuda(0)?,
        "cpu" => Device::Cpu,
        other => return Err(format!("unknown device `{other}` (cuda or cpu)").into()),
    };
    let bandwidth = copy_bandwidth(&device)?;
    println!(
        "{}",
        json!({"kind": "device", "device": format!("{device:?}"),
            "copy_bandwidth_bytes_per_s": bandwidth})
    );
    let models = [
        ("gemma3-270m-q4_k_m-random", synthetic::gemma3_270m()?),
        ("qwen2-1.5b-q4_k_m-random", synthetic::qwen2_1_5b()?),
    ];
    for (name, path) in &models {
        fidelity(name, path, &device, quick)?;
        speed(name, path, &device, bandwidth, quick)?;
    }
    Ok(())
}
