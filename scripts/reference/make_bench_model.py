#!/usr/bin/env python3
"""A realistic-size model for speed benchmarks: the shape of Qwen2.5-1.5B (1.54B parameters,
28 layers, hidden 1536, GQA 12/2 heads, FFN 8960, 151,936-token vocabulary, tied embeddings)
with random weights, written as F16 and quantised to Q4_K_M by llama.cpp itself
(`llama_model_quantize`), so its tensors are the Q4_K/Q6_K mix of the models people run.

Speed does not depend on the values; they are scaled (1/sqrt(fan-in), unit norms) so that
activations stay finite. The vocabulary is byte-level BPE (make_reference's tiny one) padded
with unreachable tokens to the real size, so the output projection costs what it costs.

Usage: <reference venv>/bin/python make_bench_model.py <out.gguf>   (scripts/bench-model runs it)
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference as mr  # noqa: E402  (re-executes in the reference venv)

import gguf  # noqa: E402
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import TokenType  # noqa: E402

N_EMBD, N_LAYER, N_HEAD, N_HEAD_KV, N_FF, N_VOCAB, N_CTX = 1536, 28, 12, 2, 8960, 151936, 32768
HEAD_DIM = N_EMBD // N_HEAD


def write_f16(path: Path) -> None:
    rng = np.random.default_rng(20261206)
    voc = mr.build_bpe_vocab()
    tokens, types = list(voc["tokens"]), list(voc["types"])
    pad = N_VOCAB - len(tokens)
    tokens += [f"<|unused_{i}|>" for i in range(pad)]
    types += [int(TokenType.UNUSED)] * pad

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_type("model")
    w.add_name("rbee bench qwen2 1.5B shape (random weights)")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_file_type(1)
    w.add_quantization_version(2)
    w.add_tokenizer_model(voc["model"])
    w.add_tokenizer_pre(voc["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(voc["merges"])
    w.add_bos_token_id(voc["bos"])
    w.add_eos_token_id(voc["eos"])
    w.add_pad_token_id(voc["pad"])
    w.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int) -> None:
        a = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(cols ** -0.5)
        w.add_tensor(name, a.astype(np.float16), raw_dtype=QT.F16)

    def vector(name: str, n: int, mean: float = 1.0, std: float = 0.02) -> None:
        a = (rng.standard_normal(n, dtype=np.float32) * np.float32(std) + np.float32(mean))
        w.add_tensor(name, a, raw_dtype=QT.F32)

    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    matrix("token_embd.weight", N_VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        vector(p + "attn_norm.weight", N_EMBD)
        matrix(p + "attn_q.weight", q_dim, N_EMBD)
        matrix(p + "attn_k.weight", kv_dim, N_EMBD)
        matrix(p + "attn_v.weight", kv_dim, N_EMBD)
        vector(p + "attn_q.bias", q_dim, mean=0.0)
        vector(p + "attn_k.bias", kv_dim, mean=0.0)
        vector(p + "attn_v.bias", kv_dim, mean=0.0)
        matrix(p + "attn_output.weight", N_EMBD, q_dim)
        vector(p + "ffn_norm.weight", N_EMBD)
        matrix(p + "ffn_gate.weight", N_FF, N_EMBD)
        matrix(p + "ffn_up.weight", N_FF, N_EMBD)
        matrix(p + "ffn_down.weight", N_EMBD, N_FF)
    vector("output_norm.weight", N_EMBD)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


def quantize(src: Path, dst: Path) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with {rc}")


def main() -> int:
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    f16 = out.with_name(out.stem + ".f16.tmp")
    tmp = out.with_name(out.stem + ".tmp")
    mr.log(f"writing {f16} (F16, random weights)")
    write_f16(f16)
    mr.log(f"quantising to Q4_K_M with llama.cpp into {out}")
    quantize(f16, tmp)
    f16.unlink()
    tmp.rename(out)  # atomic: a half-written model never has the final name
    mr.log(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
