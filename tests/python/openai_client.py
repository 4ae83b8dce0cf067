"""The official openai client and langchain-openai, unmodified, against a running rbee node.

Usage: python openai_client.py <base_url> <model>. Exits non-zero on the first failed check.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
from langchain_openai import ChatOpenAI, OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused-on-loopback")

models = [m.id for m in client.models.list().data]
assert model in models, f"{model} not in {models}"

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=12,
    temperature=0,
    seed=1,
)
choice = chat.choices[0]
assert choice.message.role == "assistant", choice
assert choice.message.content, chat
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage
assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

pieces = []
usage = None
ids = set()
with client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=12,
    temperature=0,
    seed=1,
    stream=True,
    stream_options={"include_usage": True},
) as stream:
    for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
streamed = "".join(pieces)
assert streamed == choice.message.content, (streamed, choice.message.content)
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
assert len(ids) == 1, f"one stream, one id (the usage chunk's too): {ids}"

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
assert comp.choices[0].text, comp

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e
    assert e.code == "model_not_found", e

# What clients send routinely: the `developer` role, `seed: -1` (random), `top_k: 0` (off),
# OpenAI's penalties. Every response names itself with `x-request-id`.
raw = client.chat.completions.with_raw_response.create(
    model=model,
    messages=[
        {"role": "developer", "content": "Answer in one word."},
        {"role": "user", "content": "Name a colour."},
    ],
    max_tokens=4,
    seed=-1,
    frequency_penalty=0.5,
    presence_penalty=0.5,
    extra_body={"top_k": 0},
)
assert raw.headers.get("x-request-id"), dict(raw.headers)
assert raw.parse().choices[0].message.content is not None

# What rbee does not do yet is refused by name, not answered as if it had not been asked.
tool = {"type": "function", "function": {"name": "lights_off", "parameters": {"type": "object", "properties": {}}}}
# (Tools, response_format and logprobs work: tests/python/tools_client.py.)
for kwargs, field in [
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"functions": [tool["function"]]}, "functions"),
]:
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **kwargs
        )
        raise AssertionError(f"{field} accepted")
    except openai.BadRequestError as e:
        assert field in str(e), e
# ... unless the request says not to use it.
client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, tools=[tool], tool_choice="none"
)

# A list of prompts: one choice each, in order, as each alone would be answered.
multi = client.completions.create(model=model, prompt=["The sky is", "Grass is"], max_tokens=3, temperature=0)
assert [c.index for c in multi.choices] == [0, 1], multi
single = client.completions.create(model=model, prompt="Grass is", max_tokens=3, temperature=0)
assert multi.choices[1].text == single.choices[0].text, (multi, single)
assert multi.usage.prompt_tokens > single.usage.prompt_tokens, (multi.usage, single.usage)

assert client.models.retrieve(model).id == model
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("unknown model retrieved")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e
    assert e.code == "model_not_found", e

try:
    client.completions.create(model=model, prompt="word " * 40000, max_tokens=1)
    raise AssertionError("a prompt beyond the context accepted")
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded", (e.code, e)

# langchain-openai: chat and the completion LLM (which always sends `prompt` as a list);
# bind_tools and with_structured_output: tests/python/tools_client.py.
llm = ChatOpenAI(base_url=base_url, api_key="unused-on-loopback", model=model, max_tokens=8, temperature=0)
assert llm.invoke("Name a colour.").content
text = OpenAI(base_url=base_url, api_key="unused-on-loopback", model=model, max_tokens=4, temperature=0).invoke(
    "The capital of France is"
)
assert isinstance(text, str) and text, text

# Eight users at once: the node batches their streams, and each gets exactly the tokens it gets
# alone (seeded sampling, different settings per user).
topics = ["bees", "rivers", "compilers", "bread", "glaciers", "chess", "lighthouses", "owls"]


def ask(i, stream):
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": f"Write about {topics[i]}."}],
        max_tokens=16 + i,
        temperature=0.6 + 0.05 * i,
        seed=100 + i,
    )
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content, None, None
    pieces, first = [], None
    with client.chat.completions.create(stream=True, **kwargs) as s:
        for chunk in s:
            for c in chunk.choices:
                if c.delta.content:
                    first = first or time.monotonic()
                    pieces.append(c.delta.content)
    return "".join(pieces), first, time.monotonic()


alone = [ask(i, False)[0] for i in range(8)]
with ThreadPoolExecutor(8) as pool:
    together = list(pool.map(lambda i: ask(i, True), range(8)))
for i, ((text, _, _), want) in enumerate(zip(together, alone)):
    assert text == want, f"user {i}: batched {text!r} != alone {want!r}"
first_end = min(end for _, _, end in together)
overlapping = sum(1 for _, first, _ in together if first is not None and first < first_end)
assert overlapping >= 7, f"only {overlapping} of 8 streams were running before the first ended"

# The next turn of a conversation reuses the cached history: OpenAI's cached_tokens says so.
system = (
    "You are a concise assistant for a home lab. Answer in one sentence, name concrete tools, "
    "and never invent version numbers you are not sure of."
)
history = [{"role": "system", "content": system}, {"role": "user", "content": "What is a reverse proxy?"}]
first = client.chat.completions.create(model=model, messages=history, max_tokens=12, temperature=0)
assert first.usage.prompt_tokens_details.cached_tokens == 0, first.usage
history += [
    {"role": "assistant", "content": first.choices[0].message.content},
    {"role": "user", "content": "And a load balancer?"},
]
usage = None
with client.chat.completions.create(
    model=model, messages=history, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
) as s:
    for chunk in s:
        usage = chunk.usage or usage
cached = usage.prompt_tokens_details.cached_tokens
assert first.usage.prompt_tokens <= cached < usage.prompt_tokens, (first.usage, usage)

print("openai and langchain clients: all checks passed")
