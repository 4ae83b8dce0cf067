"""The official openai client, unmodified, against a running rbee node.

Usage: python openai_client.py <base_url> <model>. Exits non-zero on the first failed check.
"""
import sys

import openai

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
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
streamed = "".join(pieces)
assert streamed == choice.message.content, (streamed, choice.message.content)
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
assert comp.choices[0].text, comp

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e), e

print("openai client: all checks passed")
