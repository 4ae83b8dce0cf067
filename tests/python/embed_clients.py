"""The official openai client (`embeddings.create`), langchain-openai (`OpenAIEmbeddings`) and the
official ollama client (`embed`, `embeddings`), unmodified, against a running rbee node serving
all-MiniLM-L6-v2. Every vector is checked against the independent numpy reference
(crates/rbee-infer/tests/reference/minilm-corpus.json).

Usage: python embed_clients.py <node url> <model> <minilm-corpus.json>. Exits non-zero on the
first failed check.
"""
import json
import math
import sys

import ollama
import openai
from langchain_openai import OpenAIEmbeddings

base, model, reference_path = sys.argv[1], sys.argv[2], sys.argv[3]
cases = json.load(open(reference_path, encoding="utf-8"))["cases"]
# Short ones (the long ones are cut at 256 tokens, which OpenAI's rules refuse).
short = [c for c in cases if 2 < len(c["ids"]) < 64][:6]
texts = [c["text"] for c in short]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def check(vectors, what):
    assert len(vectors) == len(short), (what, len(vectors))
    for v, c in zip(vectors, short):
        assert len(v) == 384, (what, len(v))
        cos = cosine(v, c["embedding"])
        assert cos >= 0.9999, (what, c["text"], cos)
        norm = math.sqrt(sum(x * x for x in v))
        assert abs(norm - 1.0) < 1e-4, (what, norm)


client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-on-loopback")
models = {m.id for m in client.models.list().data}
assert model in models, (model, models)

# The client asks for base64 by default and decodes it itself.
r = client.embeddings.create(model=model, input=texts)
check([d.embedding for d in r.data], "openai default (base64)")
assert [d.index for d in r.data] == list(range(len(texts)))
assert r.usage.prompt_tokens == sum(len(c["ids"]) for c in short), r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens
assert r.model == model, r.model
r = client.embeddings.create(model=model, input=texts[0], encoding_format="float")
assert cosine(r.data[0].embedding, short[0]["embedding"]) >= 0.9999
r = client.embeddings.create(model=model, input=[short[1]["ids"]])
assert cosine(r.data[0].embedding, short[1]["embedding"]) >= 0.9999, "token ids"
try:
    client.embeddings.create(model=model, input="x", dimensions=128)
    raise AssertionError("dimensions on a model without Matryoshka training was accepted")
except openai.BadRequestError as e:
    assert "dimensions" in str(e) and "Matryoshka" in str(e), e

lc = OpenAIEmbeddings(model=model, base_url=f"{base}/v1", api_key="unused-on-loopback",
                      # Send the texts, not tiktoken ids of OpenAI's own vocabulary.
                      check_embedding_ctx_length=False)
check(lc.embed_documents(texts), "langchain embed_documents")
assert cosine(lc.embed_query(texts[2]), short[2]["embedding"]) >= 0.9999

oc = ollama.Client(host=base)
r = oc.embed(model=model, input=texts)
check(r.embeddings, "ollama embed")
assert r.prompt_eval_count == sum(len(c["ids"]) for c in short), r.prompt_eval_count
r = oc.embed(model=model, input=texts[3], keep_alive="5m")
assert cosine(r.embeddings[0], short[3]["embedding"]) >= 0.9999
r = oc.embeddings(model=model, prompt=texts[4])
assert cosine(r.embedding, short[4]["embedding"]) >= 0.9999
try:
    oc.embed(model=model, input="x", options={"num_ctx": 8192})
    raise AssertionError("an unimplemented option was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "options.num_ctx" in e.error, (e.status_code, e.error)
print("embedding clients ok")
