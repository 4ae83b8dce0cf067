"""Tool calls, structured output and logprobs through the official clients, unmodified.

Usage: python tools_client.py <base_url> <tool_model> <demo_model>. `tool_model` is a tiny
random-weight model with Qwen 2.5's tool template: it writes garbage unless a grammar forces
it, so every well-formed call or object below is the grammar's doing. `demo_model` is the real
Gemma 3 270M. Exits non-zero on the first failed check.
"""
import json
import sys
from typing import Literal

import openai
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

base_url, tiny, demo = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key="unused-on-loopback")

light = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Turn a light on or off",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
            "required": ["room", "on"],
            "additionalProperties": False,
        },
    },
}
clock = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}


def check_light_args(arguments):
    args = json.loads(arguments)
    assert args["room"] in ("kitchen", "hall") and isinstance(args["on"], bool), args
    return args


# tool_choice "required": a call of one of the tools, whatever the model would say.
ask = [{"role": "user", "content": "Turn the kitchen light on."}]
forced = client.chat.completions.create(
    model=tiny, messages=ask, tools=[light, clock], tool_choice="required", temperature=0, max_tokens=128
)
choice = forced.choices[0]
assert choice.finish_reason == "tool_calls", forced
calls = choice.message.tool_calls
assert calls and calls[0].type == "function" and calls[0].id, choice.message
assert calls[0].function.name in ("set_light", "get_time"), calls
if calls[0].function.name == "set_light":
    check_light_args(calls[0].function.arguments)

# A named function: that one.
named = client.chat.completions.create(
    model=tiny,
    messages=ask,
    tools=[light, clock],
    tool_choice={"type": "function", "function": {"name": "set_light"}},
    temperature=0,
    max_tokens=128,
)
call = named.choices[0].message.tool_calls[0]
assert call.function.name == "set_light", call
check_light_args(call.function.arguments)

# The round trip: the call and its result go back into the template, and the model answers.
history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True})},
]
again = client.chat.completions.create(
    model=tiny, messages=history, tools=[light], tool_choice="required", temperature=0, max_tokens=128
)
assert again.choices[0].message.tool_calls[0].function.name == "set_light", again
assert again.usage.prompt_tokens > named.usage.prompt_tokens, (again.usage, named.usage)
free = client.chat.completions.create(model=tiny, messages=history, tools=[light], temperature=0, max_tokens=8)
assert free.choices[0].finish_reason in ("stop", "length"), free

# Streaming: the SDK's own accumulation rebuilds the calls from the deltas.
with client.chat.completions.stream(
    model=tiny,
    messages=ask,
    tools=[light, clock],
    tool_choice={"type": "function", "function": {"name": "set_light"}},
    temperature=0,
    max_tokens=128,
) as stream:
    for _ in stream:
        pass
    final = stream.get_final_completion()
streamed = final.choices[0].message.tool_calls[0]
assert final.choices[0].finish_reason == "tool_calls", final
assert streamed.function.name == "set_light", streamed
assert json.loads(streamed.function.arguments) == json.loads(call.function.arguments), (streamed, call)
raw_deltas = []
for chunk in client.chat.completions.create(
    model=tiny, messages=ask, tools=[light], tool_choice="required", temperature=0, max_tokens=128, stream=True
):
    for c in chunk.choices:
        if c.delta.tool_calls:
            raw_deltas += c.delta.tool_calls
        if c.delta.content:
            raise AssertionError(f"a forced call streamed content: {c.delta.content!r}")
assert raw_deltas and raw_deltas[0].index == 0 and raw_deltas[0].id, raw_deltas

# Streamed calls come as OpenAI sends them: the first delta of a call has its index, id, type
# and name with empty arguments; the arguments follow in fragments as the model writes them,
# and they join to exactly the arguments of the same request not streamed.
deltas, finish = [], None
for chunk in client.chat.completions.create(
    model=tiny,
    messages=ask,
    tools=[light, clock],
    tool_choice={"type": "function", "function": {"name": "set_light"}},
    temperature=0,
    max_tokens=128,
    stream=True,
):
    for c in chunk.choices:
        deltas += c.delta.tool_calls or []
        finish = c.finish_reason or finish
assert finish == "tool_calls", finish
head = deltas[0]
assert (head.index, head.type, head.function.name, head.function.arguments) == (0, "function", "set_light", ""), head
assert head.id and head.id.startswith("call_"), head
fragments = [d.function.arguments for d in deltas[1:] if d.function.arguments]
assert len(fragments) > 1, deltas
assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:]), deltas
assert "".join(fragments) == call.function.arguments, ("".join(fragments), call.function.arguments)
# The SDK's stream helper: argument deltas as events, the final call exactly the non-streamed one.
with client.chat.completions.stream(
    model=tiny,
    messages=ask,
    tools=[light, clock],
    tool_choice={"type": "function", "function": {"name": "set_light"}},
    temperature=0,
    max_tokens=128,
) as stream:
    arg_events = [e for e in stream if e.type == "tool_calls.function.arguments.delta" and e.arguments_delta]
    final = stream.get_final_completion()
assert len(arg_events) > 1, arg_events
assert arg_events[-1].arguments == call.function.arguments, arg_events[-1]
assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments, final


# Structured output: the SDK's parse with a pydantic model; the reply validates.
class Light(BaseModel):
    room: Literal["kitchen", "hall", "garage"]
    on: bool
    level: int = Field(ge=0, le=9)


parsed = client.chat.completions.parse(
    model=tiny, messages=[{"role": "user", "content": "Kitchen, on, 5."}], response_format=Light, temperature=0,
    max_tokens=128,
)
assert isinstance(parsed.choices[0].message.parsed, Light), parsed
assert parsed.choices[0].finish_reason == "stop", parsed

# json_object on the real model: a JSON object, parsed as such.
obj = client.chat.completions.create(
    model=demo,
    messages=[{"role": "user", "content": "Describe a cat as JSON with keys name and colour."}],
    response_format={"type": "json_object"},
    temperature=0,
    max_tokens=200,
)
value = json.loads(obj.choices[0].message.content)
assert isinstance(value, dict), value

# A schema the engine cannot compile is a 400 naming it, not an unconstrained answer.
try:
    client.chat.completions.create(
        model=demo,
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        max_tokens=4,
    )
    raise AssertionError("an invalid schema accepted")
except openai.BadRequestError as e:
    assert "constraint" in str(e) or "schema" in str(e), e

# logprobs on the real model: one per token, greedy picks the most likely, alternatives sorted.
lp = client.chat.completions.create(
    model=demo,
    messages=[{"role": "user", "content": "Name a colour."}],
    logprobs=True,
    top_logprobs=3,
    temperature=0,
    max_tokens=8,
)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens, (len(content), lp.usage)
assert "".join(t.token for t in content).startswith(lp.choices[0].message.content[:1]), content
for t in content:
    assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
    assert t.top_logprobs[0].logprob == t.logprob and t.top_logprobs[0].token == t.token, t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob, t
    assert bytes(t.bytes).decode("utf-8", "replace") == t.token, t
pieces = []
for chunk in client.chat.completions.create(
    model=demo,
    messages=[{"role": "user", "content": "Name a colour."}],
    logprobs=True,
    top_logprobs=3,
    temperature=0,
    max_tokens=8,
    stream=True,
):
    for c in chunk.choices:
        if c.logprobs and c.logprobs.content:
            pieces += c.logprobs.content
assert [p.token for p in pieces] == [t.token for t in content], (pieces, content)
comp = client.completions.create(model=demo, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
l = comp.choices[0].logprobs
assert len(l.tokens) == len(l.token_logprobs) == len(l.top_logprobs) == len(l.text_offset) > 0, l
assert "".join(l.tokens) == comp.choices[0].text, (l.tokens, comp.choices[0].text)
assert all(len(m) <= 2 for m in l.top_logprobs), l

# What is still not implemented keeps its 400.
try:
    client.chat.completions.create(model=demo, messages=[{"role": "user", "content": "hi"}], logit_bias={"42": 5})
    raise AssertionError("logit_bias accepted")
except openai.BadRequestError as e:
    assert "logit_bias" in str(e), e

# langchain-openai: bind_tools and with_structured_output, unmodified.
llm = ChatOpenAI(base_url=base_url, api_key="unused-on-loopback", model=tiny, max_tokens=128, temperature=0)
msg = llm.bind_tools([light], tool_choice="set_light").invoke("Kitchen light on.")
assert msg.tool_calls and msg.tool_calls[0]["name"] == "set_light", msg
assert msg.tool_calls[0]["args"]["room"] in ("kitchen", "hall"), msg.tool_calls
# Streaming: the tool_call_chunks (the name first, then argument fragments) add up to the call.
joined, with_args = None, 0
for piece in llm.bind_tools([light], tool_choice="set_light").stream("Kitchen light on."):
    joined = piece if joined is None else joined + piece
    with_args += sum(1 for c in piece.tool_call_chunks if c.get("args"))
assert with_args > 1, with_args
assert joined.tool_calls[0]["name"] == "set_light", joined
assert joined.tool_calls[0]["args"] == msg.tool_calls[0]["args"], (joined.tool_calls, msg.tool_calls)
out = llm.with_structured_output(Light).invoke("Kitchen, on, 5.")
assert isinstance(out, Light), out
out = llm.with_structured_output(Light, method="function_calling").invoke("Kitchen, on, 5.")
assert isinstance(out, Light), out
print("tools_client: all checks passed")
