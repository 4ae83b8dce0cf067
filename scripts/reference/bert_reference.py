"""An independent BERT sentence encoder in numpy, and a BERT folder → llama.cpp GGUF writer.

Written from the published architecture (Devlin et al. 2018, "BERT"; Reimers & Gurevych
2019, "Sentence-BERT") and the file formats, not from rbee's code:

- `BertTokenizer`: BERT's BasicTokenizer (clean-up, CJK characters split out, lower-casing with
  accents stripped, whitespace and punctuation splitting) and greedy longest-match-first
  WordPiece with `##` continuations and a 100-character word limit.
- `Bert`: embeddings (word + absolute position + token type 0) → LayerNorm, then post-norm
  encoder layers (self-attention with biases → add & LayerNorm → dense → exact erf GELU →
  dense → add & LayerNorm), all in float64.
- `embed`: [CLS] text [SEP], cut to `max_seq_length` keeping both, then pooling (mean over all
  tokens, or [CLS]) and L2 normalisation as the folder's sentence-transformers modules say.
- `write_gguf`: the folder as a `bert` GGUF with llama.cpp's key and tensor names (what its
  `convert_hf_to_gguf.py` writes for BertModel), for llama.cpp's embedding mode.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        if t["dtype"] == "BF16":
            raw = np.frombuffer(data[base + start:base + end], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[base + start:base + end], dtype=DTYPES[t["dtype"]])
        out[name.removeprefix("bert.")] = arr.reshape(t["shape"])
    return out


# --------------------------------------------------------------------------
# tokenizer


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    if c in "\t\n\r":
        return False
    return unicodedata.category(c) in ("Cc", "Cf")


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class BertTokenizer:
    def __init__(self, vocab: dict[str, int], unk: str = "[UNK]", lowercase: bool = True):
        self.vocab = vocab
        self.unk = unk
        self.lowercase = lowercase

    @classmethod
    def from_folder(cls, folder: Path) -> "BertTokenizer":
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        model = tok["model"]
        assert model["type"] == "WordPiece", model["type"]
        lower = tok.get("normalizer", {}).get("lowercase", True)
        return cls(model["vocab"], model.get("unk_token", "[UNK]"), lower)

    def basic(self, text: str) -> list[str]:
        cleaned = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_whitespace(c):
                cleaned.append(" ")
            elif _is_cjk(cp):
                cleaned.append(f" {c} ")
            else:
                cleaned.append(c)
        words = []
        for word in "".join(cleaned).split():
            if self.lowercase:
                word = word.lower()
                word = "".join(c for c in unicodedata.normalize("NFD", word)
                               if unicodedata.category(c) != "Mn")
            piece = ""
            for c in word:
                if _is_punctuation(c):
                    if piece:
                        words.append(piece)
                    words.append(c)
                    piece = ""
                else:
                    piece += c
            if piece:
                words.append(piece)
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.vocab[self.unk]]
        out = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = "##" + sub
                if sub in self.vocab:
                    found = self.vocab[sub]
                    break
                end -= 1
            if found is None:
                return [self.vocab[self.unk]]
            out.append(found)
            start = end
        return out

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in self.basic(text):
            ids.extend(self.wordpiece(word))
        return ids


# --------------------------------------------------------------------------
# the encoder


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


class Bert:
    def __init__(self, folder: Path):
        self.config = json.loads((folder / "config.json").read_text())
        self.w = {k: v.astype(np.float64) for k, v in read_safetensors(folder / "model.safetensors").items()
                  if v.dtype != np.int64}
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.heads = int(self.config["num_attention_heads"])

    def forward(self, ids: list[int]) -> np.ndarray:
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden = x.shape[1]
        d = hidden // self.heads
        for i in range(int(self.config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            lin = lambda t, name: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]  # noqa: E731
            q = lin(x, "attention.self.query").reshape(n, self.heads, d).transpose(1, 0, 2)
            k = lin(x, "attention.self.key").reshape(n, self.heads, d).transpose(1, 0, 2)
            v = lin(x, "attention.self.value").reshape(n, self.heads, d).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, hidden)
            x = _layer_norm(x + lin(ctx, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = _gelu(lin(x, "intermediate.dense"))
            x = _layer_norm(x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], self.eps)
        return x


def sentence_settings(folder: Path) -> dict:
    """max_seq_length, pooling and normalisation from the sentence-transformers files."""
    cfg = json.loads((folder / "config.json").read_text())
    max_len = int(cfg["max_position_embeddings"])
    sb = folder / "sentence_bert_config.json"
    if sb.exists():
        max_len = min(max_len, int(json.loads(sb.read_text())["max_seq_length"]))
    modules = json.loads((folder / "modules.json").read_text())
    pooling, normalize = "mean", False
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            pc = json.loads((folder / m["path"] / "config.json").read_text())
            pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
        elif kind == "Normalize":
            normalize = True
    return {"max_seq_length": max_len, "pooling": pooling, "normalize": normalize}


def embed(model: Bert, tok: BertTokenizer, text: str, settings: dict) -> tuple[list[int], np.ndarray]:
    cls_id, sep_id = tok.vocab["[CLS]"], tok.vocab["[SEP]"]
    body = tok.encode(text)[: settings["max_seq_length"] - 2]
    ids = [cls_id, *body, sep_id]
    h = model.forward(ids)
    v = h[0] if settings["pooling"] == "cls" else h.mean(axis=0)
    if settings["normalize"]:
        v = v / np.linalg.norm(v)
    return ids, v


# --------------------------------------------------------------------------
# GGUF


def gguf_tensor_name(hf: str) -> str | None:
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if hf in fixed:
        return fixed[hf]
    parts = {
        "attention.self.query": "attn_q", "attention.self.key": "attn_k",
        "attention.self.value": "attn_v", "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm", "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm",
    }
    if not hf.startswith("encoder.layer."):
        return None
    layer, rest = hf[len("encoder.layer."):].split(".", 1)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{parts[part]}.{kind}" if part in parts else None


def add_bert_vocab(w, vocab: dict[str, int], specials: dict[str, int]) -> None:
    """The vocabulary as llama.cpp's converter writes a WordPiece one: `##x` → `x`, a
    word-initial `x` → `▁x`, `[…]` tokens unchanged; control type for the special ones."""
    import gguf

    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    types = []
    out = []
    for t in tokens:
        if t.startswith("[") and t.endswith("]"):
            out.append(t)
        elif t.startswith("##"):
            out.append(t[2:])
        else:
            out.append("\u2581" + t)
    special_ids = set(specials.values())
    for i in range(len(tokens)):
        if i in special_ids:
            types.append(gguf.TokenType.CONTROL if tokens[i] != "[UNK]" else gguf.TokenType.UNKNOWN)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("bert")
    w.add_token_list(out)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_bos_token_id(specials["[CLS]"])
    w.add_sep_token_id(specials["[SEP]"])
    w.add_unk_token_id(specials["[UNK]"])
    w.add_pad_token_id(specials["[PAD]"])
    if "[MASK]" in specials:
        w.add_mask_token_id(specials["[MASK]"])


def write_gguf(folder: Path, out: Path, f16: bool = False) -> None:
    """The BERT folder as llama.cpp's `bert` GGUF (f32, or f16 matrices)."""
    import gguf

    cfg = json.loads((folder / "config.json").read_text())
    settings = sentence_settings(folder)
    weights = read_safetensors(folder / "model.safetensors")
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_name(folder.name)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.CLS if settings["pooling"] == "cls" else gguf.PoolingType.MEAN)
    w.add_file_type(1 if f16 else 0)
    specials = {t: vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]") if t in vocab}
    add_bert_vocab(w, vocab, specials)
    for hf, arr in weights.items():
        name = gguf_tensor_name(hf)
        if name is None:
            continue
        arr = arr.astype(np.float32)
        if f16 and arr.ndim == 2 and name not in ("token_types.weight",):
            arr = arr.astype(np.float16)
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
