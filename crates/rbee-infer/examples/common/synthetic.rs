//! Random-weight GGUFs with real models' shapes and tensor types, written to the temp
//! directory, for timing and device checks on machines without the real files (a lent GPU
//! machine has no network, and its carry limit is far below a model's size). Shared by the
//! examples that `#[path]`-include it.

use std::path::PathBuf;

use rbee_format::gguf::{GgmlType, GgufWriter};

type Error = Box<dyn std::error::Error>;

/// Random bytes from a fixed xorshift stream.
struct Bytes(u64);

impl Bytes {
    fn take(&mut self, n: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }

    /// `n` values of `ty` as random codes with sane f16 scales (0x1400 ≈ 0.001).
    fn blocks(&mut self, ty: GgmlType, n: u64) -> Vec<u8> {
        let (size, scales): (u64, &[usize]) = match ty {
            GgmlType::Q8_0 => (34, &[0]),
            GgmlType::Q5_0 => (22, &[0]),
            GgmlType::Q4_K => (144, &[0, 2]),
            GgmlType::Q6_K => (210, &[208]),
            other => panic!("no random blocks for {other:?}"),
        };
        let per = ty.block_size();
        let mut out = self.take(n / per * size);
        for block in out.chunks_exact_mut(size as usize) {
            for &at in scales {
                block[at..at + 2].copy_from_slice(&0x1400u16.to_le_bytes());
            }
        }
        out
    }
}

fn f32s(n: u64, v: f32) -> Vec<u8> {
    (0..n).flat_map(|_| v.to_le_bytes()).collect()
}

/// Gemma 3 270M Q4_K_M's shapes and per-layer tensor types (attn_v Q8_0 and ffn_down Q6_K in
/// layers 0, 1, 4, 7, 10, 13, 15, 16, 17; Q5_0 / Q4_K elsewhere).
pub fn gemma3_270m() -> Result<PathBuf, Error> {
    const HIDDEN: u64 = 640;
    const FFN: u64 = 2048;
    const VOCAB: u64 = 262_144;
    let mut rng = Bytes(0x2545_f491_4f6c_dd1d);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "gemma3")
        .add("gemma3.context_length", 32_768u32)
        .add("gemma3.embedding_length", HIDDEN as u32)
        .add("gemma3.block_count", 18u32)
        .add("gemma3.feed_forward_length", FFN as u32)
        .add("gemma3.attention.head_count", 4u32)
        .add("gemma3.attention.head_count_kv", 1u32)
        .add("gemma3.attention.key_length", 256u32)
        .add("gemma3.attention.value_length", 256u32)
        .add("gemma3.attention.layer_norm_rms_epsilon", 1e-6f32)
        .add("gemma3.rope.freq_base", 1e6f32)
        .add("gemma3.attention.sliding_window", 512u32)
        .add("tokenizer.ggml.bos_token_id", 2u32)
        .add(
            "tokenizer.ggml.tokens",
            (0..VOCAB).map(|i| format!("t{i}")).collect::<Vec<String>>(),
        );
    w.add_tensor(
        "token_embd.weight",
        &[HIDDEN, VOCAB],
        GgmlType::Q8_0,
        rng.blocks(GgmlType::Q8_0, HIDDEN * VOCAB),
    );
    w.add_tensor(
        "output_norm.weight",
        &[HIDDEN],
        GgmlType::F32,
        f32s(HIDDEN, 1.0),
    );
    for il in 0..18 {
        let wide = [0, 1, 4, 7, 10, 13, 15, 16, 17].contains(&il);
        let (v_ty, down_ty) = if wide {
            (GgmlType::Q8_0, GgmlType::Q6_K)
        } else {
            (GgmlType::Q5_0, GgmlType::Q4_K)
        };
        let name = |t: &str| format!("blk.{il}.{t}.weight");
        for t in [
            "attn_norm",
            "ffn_norm",
            "post_attention_norm",
            "post_ffw_norm",
        ] {
            w.add_tensor(name(t), &[HIDDEN], GgmlType::F32, f32s(HIDDEN, 1.0));
        }
        for t in ["attn_q_norm", "attn_k_norm"] {
            w.add_tensor(name(t), &[256], GgmlType::F32, f32s(256, 1.0));
        }
        let mut matrix = |t: &str, ty: GgmlType, cols: u64, rows: u64| {
            let data = rng.blocks(ty, cols * rows);
            w.add_tensor(name(t), &[cols, rows], ty, data);
        };
        matrix("attn_q", GgmlType::Q5_0, HIDDEN, 1024);
        matrix("attn_k", GgmlType::Q5_0, HIDDEN, 256);
        matrix("attn_v", v_ty, HIDDEN, 256);
        matrix("attn_output", GgmlType::Q4_K, 1024, HIDDEN);
        matrix("ffn_gate", GgmlType::Q5_0, HIDDEN, FFN);
        matrix("ffn_up", GgmlType::Q5_0, HIDDEN, FFN);
        matrix("ffn_down", down_ty, FFN, HIDDEN);
    }
    let path = std::env::temp_dir().join("rbee-synthetic-gemma3-270m.gguf");
    w.write_file(&path)?;
    Ok(path)
}

/// Qwen2.5-1.5B's shapes as llama.cpp's Q4_K_M quantises them: Q4_K, with Q6_K for attn_v
/// and ffn_down in every other layer and for the (tied) token embedding; q/k/v biases.
pub fn qwen2_1_5b() -> Result<PathBuf, Error> {
    const HIDDEN: u64 = 1536;
    const FFN: u64 = 8960;
    const VOCAB: u64 = 151_936;
    const LAYERS: u64 = 28;
    const HEAD: u64 = 128;
    const HEADS: u64 = 12;
    const KV_HEADS: u64 = 2;
    let mut rng = Bytes(0x9e37_79b9_7f4a_7c15);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "qwen2")
        .add("qwen2.context_length", 32_768u32)
        .add("qwen2.embedding_length", HIDDEN as u32)
        .add("qwen2.block_count", LAYERS as u32)
        .add("qwen2.feed_forward_length", FFN as u32)
        .add("qwen2.attention.head_count", HEADS as u32)
        .add("qwen2.attention.head_count_kv", KV_HEADS as u32)
        .add("qwen2.attention.layer_norm_rms_epsilon", 1e-6f32)
        .add("qwen2.rope.freq_base", 1e6f32)
        .add(
            "tokenizer.ggml.tokens",
            (0..VOCAB).map(|i| format!("t{i}")).collect::<Vec<String>>(),
        );
    w.add_tensor(
        "token_embd.weight",
        &[HIDDEN, VOCAB],
        GgmlType::Q6_K,
        rng.blocks(GgmlType::Q6_K, HIDDEN * VOCAB),
    );
    w.add_tensor(
        "output_norm.weight",
        &[HIDDEN],
        GgmlType::F32,
        f32s(HIDDEN, 1.0),
    );
    for il in 0..LAYERS {
        let wide = il % 2 == 0;
        let (v_ty, down_ty) = if wide {
            (GgmlType::Q6_K, GgmlType::Q6_K)
        } else {
            (GgmlType::Q4_K, GgmlType::Q4_K)
        };
        let name = |t: &str| format!("blk.{il}.{t}");
        for t in ["attn_norm", "ffn_norm"] {
            w.add_tensor(
                name(&format!("{t}.weight")),
                &[HIDDEN],
                GgmlType::F32,
                f32s(HIDDEN, 1.0),
            );
        }
        for (t, rows) in [
            ("q", HEADS * HEAD),
            ("k", KV_HEADS * HEAD),
            ("v", KV_HEADS * HEAD),
        ] {
            w.add_tensor(
                name(&format!("attn_{t}.bias")),
                &[rows],
                GgmlType::F32,
                f32s(rows, 0.01),
            );
        }
        let mut matrix = |t: &str, ty: GgmlType, cols: u64, rows: u64| {
            let data = rng.blocks(ty, cols * rows);
            w.add_tensor(name(&format!("{t}.weight")), &[cols, rows], ty, data);
        };
        matrix("attn_q", GgmlType::Q4_K, HIDDEN, HEADS * HEAD);
        matrix("attn_k", GgmlType::Q4_K, HIDDEN, KV_HEADS * HEAD);
        matrix("attn_v", v_ty, HIDDEN, KV_HEADS * HEAD);
        matrix("attn_output", GgmlType::Q4_K, HEADS * HEAD, HIDDEN);
        matrix("ffn_gate", GgmlType::Q4_K, HIDDEN, FFN);
        matrix("ffn_up", GgmlType::Q4_K, HIDDEN, FFN);
        matrix("ffn_down", down_ty, FFN, HIDDEN);
    }
    let path = std::env::temp_dir().join("rbee-synthetic-qwen2-1.5b.gguf");
    w.write_file(&path)?;
    Ok(path)
}
