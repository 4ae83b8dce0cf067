"""Concurrent streams: llama.cpp decoding N sequences in one batch against rbee serving N
concurrent requests, on the same GGUF, token ids and threads (see scripts/bench-batch).

Each engine runs in its own process. llama.cpp (llama-cpp-python's low-level API, the way its
`batched` example drives it): the N prompts in one llama_decode (split into ubatches of 512),
then one llama_decode per step with one token of every sequence, greedy. rbee
(crates/rbee-infer/examples/bench_batch.rs): N `generate` calls submitted at once, each read
on its own thread; the engine batches them. Both decode with ignore-EOS for `gen` tokens.
Aggregate decode tok/s = N × (gen − 1) tokens over the time from the last first token to the
last token, on both sides."""
import json
import os
import subprocess
import sys
import tempfile

THREADS = int(os.environ.get("RBEE_BENCH_THREADS", "2"))
GEN = int(os.environ.get("RBEE_BENCH_GEN", "64"))
STREAMS = [int(x) for x in os.environ.get("RBEE_BENCH_STREAMS", "1,2,4,8,16").split(",")]
TOPICS = ["bees", "rivers", "compilers", "bread", "glaciers", "chess", "lighthouses", "owls",
          "volcanoes", "trains", "orchards", "satellites", "violins", "deserts", "harbours", "moss"]

LLAMA = r'''
import json, sys, time
import numpy as np
import llama_cpp as L
model, prompts_file, n_gen, n_threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = json.load(open(prompts_file))
L.llama_backend_init()
mp = L.llama_model_default_params()
m = L.llama_model_load_from_file(model.encode(), mp)
vocab = L.llama_model_get_vocab(m)
n_vocab = L.llama_vocab_n_tokens(vocab)
most = max(spec["streams"])
plen = max(len(p) for p in spec["prompts"][:most])
cp = L.llama_context_default_params()
cp.n_ctx = most * (plen + n_gen) + 256
cp.n_batch = 2048
cp.n_ubatch = 512
cp.n_seq_max = most
cp.n_threads = n_threads
cp.n_threads_batch = n_threads
cp.kv_unified = True
ctx = L.llama_init_from_model(m, cp)
batch = L.llama_batch_init(2048, 0, 1)

def decode(entries):
    """entries: (seq, pos, token, wants_logits); returns {seq: argmax} for those wanting logits."""
    out = {}
    for at in range(0, len(entries), 2048):
        chunk = entries[at:at + 2048]
        batch.n_tokens = len(chunk)
        for i, (s, pos, tok, want) in enumerate(chunk):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = want
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")
        for i, (s, pos, tok, want) in enumerate(chunk):
            if want:
                ptr = L.llama_get_logits_ith(ctx, i)
                out[s] = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))
    return out

def run(n):
    prompts = spec["prompts"][:n]
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    t0 = time.perf_counter()
    entries = [(s, pos, tok, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
    last = decode(entries)
    first = time.perf_counter()
    for step in range(n_gen - 1):
        last = decode([(s, len(prompts[s]) + step, last[s], True) for s in range(n)])
    end = time.perf_counter()
    return {"kind": "streams", "streams": n, "aggregate_decode_tok_s": n * (n_gen - 1) / (end - first),
            "ttft_ms": (first - t0) * 1e3}

run(1)  # warm-up
for n in spec["streams"]:
    print(json.dumps(run(n)), flush=True)
'''


def run_json_lines(cmd, env=None) -> list[dict]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def make_prompts(model: str, path: str) -> dict:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)

    def ids(text: str, bos: bool = True) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=bos, special=False)

    prompts = []
    for i in range(max(max(STREAMS), 8)):
        topic = TOPICS[i % len(TOPICS)]
        text = (f"Request {i}. Write a careful, detailed paragraph about {topic} for a reader who "
                f"knows nothing about {topic}: where they come from, how they work, and why "
                f"people in a small town might care about {topic} this year.")
        prompts.append(ids(text))
    history = ids(" ".join(f"Turn {i}: the user asked about {TOPICS[i % 16]} and the assistant "
                           f"answered with three sentences about {TOPICS[(i + 3) % 16]}."
                           for i in range(80)))[:1500]
    turn = ids(" Now the user asks: and what about the harbours at night?", bos=False)
    spec = {"streams": STREAMS, "prompts": prompts, "followup_history": history, "followup_turn": turn}
    with open(path, "w") as f:
        json.dump(spec, f)
    return spec


def main() -> int:
    model, rbee_bin = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        pfile = os.path.join(tmp, "prompts.json")
        spec = make_prompts(model, pfile)
        plen = [len(p) for p in spec["prompts"]]
        print(f"model {os.path.basename(model)}, {THREADS} threads, {GEN} tokens per stream, "
              f"prompts {min(plen)}-{max(plen)} tokens, follow-up history {len(spec['followup_history'])}",
              flush=True)
        llama = run_json_lines([sys.executable, "-c", LLAMA, model, pfile, str(GEN), str(THREADS)])
        env = dict(os.environ, CANDLE_NUM_THREADS=str(THREADS))
        rbee = run_json_lines([rbee_bin, model, pfile, str(GEN), str(THREADS)], env=env)
    by_n = {r["streams"]: r for r in rbee if r["kind"] == "streams"}
    ll_n = {r["streams"]: r for r in llama}
    print("| streams | llama.cpp batched tok/s | rbee tok/s | rbee / llama.cpp | llama.cpp TTFT ms | rbee TTFT p50 / p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in STREAMS:
        a, b = ll_n[n], by_n[n]
        print(f"| {n} | {a['aggregate_decode_tok_s']:.1f} | {b['aggregate_decode_tok_s']:.1f} | "
              f"{b['aggregate_decode_tok_s'] / a['aggregate_decode_tok_s']:.2f}× | {a['ttft_ms']:.0f} | "
              f"{b['ttft_p50_ms']:.0f} / {b['ttft_p99_ms']:.0f} |")
    join = next(r for r in rbee if r["kind"] == "join")
    fol = next(r for r in rbee if r["kind"] == "followup")
    if 1 in by_n and 8 in by_n:
        print(f"rbee 8 streams / 1 stream aggregate: "
              f"{by_n[8]['aggregate_decode_tok_s'] / by_n[1]['aggregate_decode_tok_s']:.2f}×")
    print(f"rbee TTFT of a request joining 7 decoding ones: {join['join_ttft_ms']:.0f} ms vs idle "
          f"{join['idle_ttft_ms']:.0f} ms ({join['join_ttft_ms'] / join['idle_ttft_ms']:.2f}×)")
    print(f"rbee follow-up turn after {fol['history_tokens']} tokens of history "
          f"({fol['cached_tokens']} cached): TTFT {fol['followup_ttft_ms']:.0f} ms vs first turn "
          f"{fol['first_ttft_ms']:.0f} ms ({fol['followup_ttft_ms'] / fol['first_ttft_ms']:.2f}×)")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
