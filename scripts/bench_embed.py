"""Sentences per second of all-MiniLM-L6-v2: rbee (the folder, through its engine's `encode`)
against llama.cpp (llama-cpp-python's embedding mode on an f32 GGUF conversion of the same
folder), on the same sentences and threads (see scripts/bench-embed).

Each engine runs in its own process, one after the other. For each batch size N, one request
of the first N sentences (tokenized, run, mean-pooled and normalised by the engine) is timed
repeatedly for `RBEE_BENCH_SECS` seconds after a warm-up; the rate is N over the mean time.
llama.cpp runs with n_batch = n_ubatch of 512 and of 2048 tokens; its better result per batch
size is the one compared. Both engines' vectors of the same sentences are compared too (they
must agree to cosine 0.9999: llama.cpp's GELU is the tanh approximation)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
import bert_reference  # noqa: E402

THREADS = int(os.environ.get("RBEE_BENCH_THREADS", "2"))
SECS = float(os.environ.get("RBEE_BENCH_SECS", "3"))
BATCHES = [int(x) for x in os.environ.get("RBEE_BENCH_BATCHES", "1,32,256").split(",")]

SUBJECTS = ["The old beekeeper", "A small robot", "Our neighbour", "The night train", "My sister",
            "A tired student", "The city council", "An orange cat"]
VERBS = ["repaired", "painted", "described", "carried", "photographed", "ignored", "sold", "found"]
OBJECTS = ["a wooden fence", "the blue bicycle", "three heavy boxes", "an empty greenhouse",
           "the broken lantern", "a map of the harbour", "her grandfather's radio", "two loaves"]
TAILS = ["before the storm arrived", "near the river at dawn", "during the long winter",
         "while everyone was asleep", "after the market closed", "on a quiet Sunday morning",
         "without telling anyone", "for the village festival"]

LLAMA = r'''
import json, sys, time
import llama_cpp
model, sentences, batches, secs, threads, ubatch, out = sys.argv[1:8]
sentences = json.load(open(sentences))
batches = [int(b) for b in batches.split(",")]
secs, threads, ubatch = float(secs), int(threads), int(ubatch)
llm = llama_cpp.Llama(model_path=model, embedding=True, n_ctx=max(ubatch, 512), n_batch=ubatch,
                      n_ubatch=ubatch, n_threads=threads, n_threads_batch=threads, verbose=False)
rates = {}
for n in batches:
    llm.embed(sentences[:n], normalize=True)
    t, runs = time.perf_counter(), 0
    while runs == 0 or time.perf_counter() - t < secs:
        llm.embed(sentences[:n], normalize=True)
        runs += 1
    rates[n] = n / ((time.perf_counter() - t) / runs)
vectors = llm.embed(sentences[:8], normalize=True)
json.dump({"rates": rates, "vectors": vectors}, open(out, "w"))
'''


def sentences() -> list[str]:
    out = []
    for i in range(256):
        s, v, o, t = (SUBJECTS[i % 8], VERBS[(i // 8) % 8], OBJECTS[(i // 64 + i) % 8],
                      TAILS[(i * 3) % 8])
        out.append(f"{s} {v} {o} {t}, said report number {i}.")
    return out


def main() -> int:
    folder, bench_bin, gguf = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if not gguf.exists():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        tmp = gguf.with_suffix(".tmp")
        bert_reference.write_gguf(folder, tmp)
        tmp.rename(gguf)
    texts = sentences()
    tok = bert_reference.BertTokenizer.from_folder(folder)
    lengths = [len(tok.encode(t)) + 2 for t in texts]
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), CANDLE_NUM_THREADS=str(THREADS))
    with tempfile.TemporaryDirectory() as tmp:
        sent_file = Path(tmp) / "sentences.json"
        sent_file.write_text(json.dumps(texts))
        batches = ",".join(map(str, BATCHES))
        rbee = {}
        run = subprocess.run([bench_bin, str(folder), str(sent_file), batches, str(SECS)],
                             check=True, capture_output=True, text=True, env=env)
        for line in run.stdout.splitlines():
            v = json.loads(line)
            rbee[v["batch"]] = v["sentences_per_sec"]
        runtime = run.stderr.strip().splitlines()[-1]
        llama = {}
        vectors = None
        for ubatch in (512, 2048):
            out = Path(tmp) / f"llama-{ubatch}.json"
            subprocess.run([sys.executable, "-c", LLAMA, str(gguf), str(sent_file), batches, str(SECS),
                            str(THREADS), str(ubatch), str(out)], check=True)
            result = json.loads(out.read_text())
            vectors = result["vectors"]
            for n, rate in result["rates"].items():
                n = int(n)
                if rate > llama.get(n, (0, 0))[0]:
                    llama[n] = (rate, ubatch)
    # The two engines agree on what they compute.
    ours = rbee_vectors(bench_bin, folder, texts[:8], env)
    worst = min(float(np.dot(a, b)) for a, b in zip(ours, vectors))
    print(f"all-MiniLM-L6-v2 ({folder}), {THREADS} threads; sentences of {min(lengths)}-{max(lengths)} "
          f"tokens (mean {np.mean(lengths):.1f}, [CLS] and [SEP] included); {SECS:.0f} s per measurement")
    print(f"rbee runtime: {runtime}; llama.cpp: llama-cpp-python {llama_version()}, f32 GGUF; "
          f"worst cosine between the engines' vectors: {worst:.6f}\n")
    print("| batch (sentences) | rbee (sentences/s) | llama.cpp (sentences/s) | rbee / llama.cpp |")
    print("|---:|---:|---:|---:|")
    for n in BATCHES:
        rate, ubatch = llama[n]
        print(f"| {n} | {rbee[n]:.1f} | {rate:.1f} (n_ubatch {ubatch}) | {rbee[n] / rate:.2f}× |")
    return 0


def rbee_vectors(bench_bin: str, folder: Path, texts: list[str], env: dict) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "s.json"
        f.write_text(json.dumps(texts))
        run = subprocess.run([bench_bin, str(folder), str(f), "vectors", "0"], check=True,
                             capture_output=True, text=True, env=env)
    return json.loads(run.stdout.splitlines()[-1])["vectors"]


def llama_version() -> str:
    import llama_cpp
    return llama_cpp.__version__


if __name__ == "__main__":
    sys.exit(main())
