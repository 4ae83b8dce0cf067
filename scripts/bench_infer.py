"""Runs llama.cpp and rbee on one GGUF and prompt; prints both and the ratios (see bench-infer).

Rounds alternate llama.cpp and rbee (RBEE_BENCH_ROUNDS, default 3) and each figure is the best
of its rounds, so a burst of other work on the machine hurts both sides alike and is filtered
out; the greedy tokens are compared in every round."""
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT_TOKENS = 88
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


def llama_cpp_run(model: str, text: str) -> dict:
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
    out = subprocess.run([sys.executable, "-c", code, model, text, str(PROMPT_TOKENS), str(GEN_TOKENS), str(THREADS)],
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


def main() -> int:
    model, binary = sys.argv[1], sys.argv[2]
    rounds = int(os.environ.get("RBEE_BENCH_ROUNDS", "3"))
    refs, ours_runs = [], []
    for _ in range(rounds):
        ref = llama_cpp_run(model, TEXT)
        refs.append(ref)
        ours_runs.append(rbee_run(binary, model, ref["prompt_ids"]))
    rows = [
        ("prefill tok/s", "prefill_tok_s", True, 1.0),
        ("decode tok/s", "decode_tok_s", True, 1.0),
        ("load s", "load_s", False, 1.0),
        ("peak RSS GB", "peak_rss", False, 1e9),
    ]
    ref, ours = refs[0], ours_runs[0]
    print(f"model: {model}")
    print(f"prompt: {ref['prompt_tokens']} tokens (rbee: {ours['prompt_tokens']}), {GEN_TOKENS} greedy tokens, "
          f"{THREADS} threads, best of {rounds} alternating rounds (load average at the end: {os.getloadavg()[0]:.2f})")
    print(f"{'':<16}{'llama.cpp':>12}{'rbee':>12}{'rbee/llama.cpp':>16}")
    for name, key, higher, unit in rows:
        a = best(refs, key, higher) / unit
        b = best(ours_runs, key, higher) / unit
        print(f"{name:<16}{a:>12.2f}{b:>12.2f}{b / a:>15.2f}x")
    for i, (ref, ours) in enumerate(zip(refs, ours_runs)):
        same = sum(1 for x, y in zip(ref["tokens"], ours["tokens"]) if x == y)
        first_diff = next((i for i, (x, y) in enumerate(zip(ref["tokens"], ours["tokens"])) if x != y), None)
        print(f"round {i + 1}: greedy tokens identical: {same}/{GEN_TOKENS}"
              + ("" if first_diff is None else f" (first difference at {first_diff})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
