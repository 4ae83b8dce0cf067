"""Runs llama.cpp (the portable build, and the native one when given) and rbee on GGUFs with the
same prompt ids; prints them side by side with the ratios, the weight bytes each engine reads
per second while decoding, and this machine's memory read bandwidth (see bench-infer).

Rounds alternate the engines (RBEE_BENCH_ROUNDS, default 3) and each figure is the best of its
rounds, so a burst of other work on the machine hurts all sides alike and is filtered out; the
greedy tokens are compared with each llama.cpp build in every round."""
import json
import os
import subprocess
import sys
import tempfile
import time

# 88 by default; RBEE_BENCH_PROMPT_TOKENS=1500 measures a long chat's context (the text is
# repeated to length; at most 1900, so that the prompt and the greedy tokens fit n_ctx 2048).
PROMPT_TOKENS = min(int(os.environ.get("RBEE_BENCH_PROMPT_TOKENS", "88")), 1900)
THREADS = int(os.environ.get("RBEE_BENCH_THREADS", "2"))
GEN_TOKENS = 64
TEXT = (
    "The history of computing is a story of people sharing scarce machines. In the 1960s, "
    "time-sharing systems let many users work on one mainframe; in the 1990s, clusters of "
    "cheap computers replaced supercomputers; today, a home lab full of old laptops and gaming "
    "PCs can pool its memory and processors to run language models that no single machine could "
    "hold. This essay explains how such a pool decides where each request should run, and why "
    "content addressing makes sharing model files safe and fast across every node."
)


def llama_cpp_run(python: str, model: str, text: str) -> dict:
    code = r'''
import json, resource, sys, time
import numpy as np
import llama_cpp
model, text, n_prompt, n_gen, n_threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t = time.perf_counter()
llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=n_threads, n_threads_batch=n_threads, n_batch=512, verbose=False)
load = time.perf_counter() - t
ids = llm.tokenize(text.encode(), add_bos=True, special=True)[:n_prompt]
llm.reset()
t = time.perf_counter()
llm.eval(ids)
prefill = time.perf_counter() - t
out = []
t = time.perf_counter()
n_vocab = llm.n_vocab()
def last_logits():
    # llm.scores is only filled with logits_all=True (which would slow llama.cpp down), so read
    # the last position's logits from the context directly, as make_reference.py does.
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))
for _ in range(n_gen):
    tok = int(np.argmax(last_logits()))
    out.append(tok)
    llm.eval([tok])
decode = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load_s": load, "prompt_tokens": len(ids), "prefill_tok_s": len(ids) / prefill,
                  "decode_tok_s": n_gen / decode, "peak_rss": rss, "tokens": out, "prompt_ids": ids}))
'''
    out = subprocess.run([python, "-c", code, model, text, str(PROMPT_TOKENS), str(GEN_TOKENS), str(THREADS)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rbee_run(binary: str, model: str, prompt_ids: list) -> dict:
    # The same token ids llama.cpp evaluated (BOS included), so both engines see the same input.
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(" ".join(str(i) for i in prompt_ids))
        f.flush()
        env = dict(os.environ, CANDLE_NUM_THREADS=str(THREADS))
        out = subprocess.run([binary, model, f.name, str(GEN_TOKENS)], check=True, capture_output=True, text=True,
                             env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list, key: str, higher: bool) -> float:
    values = [r[key] for r in runs]
    return max(values) if higher else min(values)


def weight_bytes(model: str) -> int:
    """Bytes of tensor data in the GGUF: what a decode step reads once."""
    import gguf
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(model).tensors)


def bandwidth(binary: str) -> float:
    out = subprocess.run([binary, str(THREADS)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["gb_s"]


def agreement(ref: dict, ours: dict) -> str:
    same = sum(1 for x, y in zip(ref["tokens"], ours["tokens"]) if x == y)
    first_diff = next((i for i, (x, y) in enumerate(zip(ref["tokens"], ours["tokens"])) if x != y), None)
    return f"{same}/{GEN_TOKENS}" + ("" if first_diff is None else f" (first difference at {first_diff})")


def bench(model: str, binary: str, engines: dict, rounds: int, bw_binary: str) -> None:
    runs = {name: [] for name in [*engines, "rbee"]}
    # This VM's read bandwidth moves between runs (28-52 GB/s seen within an hour), so it is
    # measured in every round, between the engines, and the decode figures are given as a
    # share of the highest: the most the memory gave while they ran.
    bandwidths = []
    for _ in range(rounds):
        for name, python in engines.items():
            runs[name].append(llama_cpp_run(python, model, TEXT * (PROMPT_TOKENS // 60 + 1)))
        bandwidths.append(bandwidth(bw_binary))
        runs["rbee"].append(rbee_run(binary, model, runs["portable"][-1]["prompt_ids"]))
    gb_s = max(bandwidths)
    wbytes = weight_bytes(model)
    names = list(runs)
    print(f"\nmodel: {model} ({wbytes / 1e9:.2f} GB of weights)")
    print(f"prompt: {runs['portable'][0]['prompt_tokens']} tokens, {GEN_TOKENS} greedy tokens, {THREADS} threads, "
          f"best of {rounds} alternating rounds (load average at the end: {os.getloadavg()[0]:.2f})")
    header = "| | " + " | ".join(f"llama.cpp {n}" if n != "rbee" else "rbee" for n in names)
    header += " | " + " | ".join(f"rbee / {n}" for n in engines) + " |"
    print(header)
    print("|---" * (1 + len(names) + len(engines)) + "|")
    rows = [
        ("prefill tok/s", "prefill_tok_s", True, 1.0),
        ("decode tok/s", "decode_tok_s", True, 1.0),
        ("load s", "load_s", False, 1.0),
        ("peak RSS GB", "peak_rss", False, 1e9),
    ]
    for label, key, higher, unit in rows:
        vals = {n: best(runs[n], key, higher) / unit for n in names}
        cells = [f"{vals[n]:.2f}" for n in names] + [f"{vals['rbee'] / vals[n]:.2f}×" for n in engines]
        print(f"| {label} | " + " | ".join(cells) + " |")
    decode = {n: best(runs[n], "decode_tok_s", True) * wbytes / 1e9 for n in names}
    cells = [f"{decode[n]:.1f} ({decode[n] / gb_s:.0%})" for n in names] + [""] * len(engines)
    print("| decode GB/s read (of bandwidth) | " + " | ".join(cells) + " |")
    print(f"memory read bandwidth, {THREADS} threads, measured in each round: "
          f"{min(bandwidths):.1f}-{gb_s:.1f} GB/s (shares above: of the highest)")
    for n in engines:
        print(f"greedy tokens identical to llama.cpp {n}: " +
              ", ".join(agreement(r, o) for r, o in zip(runs[n], runs["rbee"])))


def main() -> int:
    binary, bw_binary, portable = sys.argv[1], sys.argv[2], sys.argv[3]
    native = os.environ.get("RBEE_BENCH_NATIVE_PYTHON")
    models = sys.argv[4:]
    rounds = int(os.environ.get("RBEE_BENCH_ROUNDS", "3"))
    engines = {"portable": portable}
    if native:
        engines = {"native": native, "portable": portable}
    for model in models:
        bench(model, binary, engines, rounds, bw_binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
