"""The official `ollama` Python client, unmodified, against a real rbee node.

Run by tests/tests/ollama_api.rs: `ollama_client.py <url> <model>`, where the node at <url>
does not hold <model> yet and a peer of its pool does. Each step asserts what a user of the
client relies on; any failure exits non-zero with the traceback.
"""

import json
import sys

import ollama

url, model = sys.argv[1], sys.argv[2]
client = ollama.Client(host=url)
tagged = f"{model}:latest"

# Version: Copilot's Ollama provider needs >= 0.6.4.
version = client._request_raw("GET", "/api/version").json()["version"]
assert tuple(int(p) for p in version.split(".")) >= (0, 6, 4), version

# Pull from the pool, with progress.
statuses = []
progress = []
for p in client.pull(model, stream=True):
    statuses.append(p.status)
    if p.total:
        progress.append((p.completed or 0, p.total))
assert statuses[-1] == "success", statuses
assert progress, f"no progress with completed/total: {statuses}"
done, total = progress[-1]
assert total > 0 and done == total, progress
assert all(c <= t for c, t in progress), progress

# List: the pulled model, under Ollama's name:tag.
listed = {m.model: m for m in client.list().models}
assert tagged in listed, listed.keys()
entry = listed[tagged]
assert entry.size > 0 and entry.digest and entry.details.family == "gemma3", entry
assert entry.details.quantization_level, entry.details

# Show: capabilities and the context length.
shown = client.show(tagged)
assert "completion" in shown.capabilities, shown.capabilities
info = shown.modelinfo
assert info["general.architecture"] == "gemma3", info
assert info["gemma3.context_length"] == 32768, info
assert shown.details.parameter_size.endswith("M"), shown.details
assert shown.template, "the chat template"

# Chat, not streaming: greedy, bounded.
messages = [{"role": "user", "content": "Name a colour."}]
greedy = {"temperature": 0, "num_predict": 8, "seed": 1}
r = client.chat(model=tagged, messages=messages, options=greedy, stream=False)
assert r.message.role == "assistant" and r.message.content.strip(), r
assert r.done and r.done_reason in ("stop", "length"), r
assert r.eval_count and 0 < r.eval_count <= 8, r
assert r.prompt_eval_count and r.prompt_eval_count > 3, r
for field in ("total_duration", "prompt_eval_duration", "eval_duration"):
    assert getattr(r, field) and getattr(r, field) > 0, (field, r)
assert r.total_duration >= r.eval_duration, r

# Chat, streaming: the same greedy answer, piece by piece, then the final object.
parts = list(client.chat(model=tagged, messages=messages, options=greedy, stream=True))
assert len(parts) >= 2 and parts[-1].done and not any(p.done for p in parts[:-1]), parts
text = "".join(p.message.content for p in parts)
assert text == r.message.content, (text, r.message.content)
assert parts[-1].eval_count == r.eval_count, parts[-1]

# A system prompt changes what the model reads.
with_system = client.chat(
    model=tagged,
    messages=[{"role": "system", "content": "You answer in French, briefly."}] + messages,
    options=greedy,
    stream=False,
)
assert with_system.prompt_eval_count > r.prompt_eval_count, (with_system, r)

# Generate, streaming.
pieces = list(client.generate(model=tagged, prompt="Count: one, two,", options=greedy, stream=True))
assert pieces[-1].done and pieces[-1].eval_count, pieces[-1]
assert "".join(p.response for p in pieces).strip(), pieces

# Generate, raw: the prompt as given (no chat template), so it reads fewer tokens.
raw = client.generate(model=tagged, prompt="Count: one, two,", raw=True, options=greedy)
templated = client.generate(model=tagged, prompt="Count: one, two,", options=greedy)
assert raw.prompt_eval_count < templated.prompt_eval_count, (raw, templated)

# format="json": the answer is a JSON value (constrained decoding).
as_json = client.chat(model=tagged, messages=messages, format="json", options=greedy, stream=False)
json.loads(as_json.message.content)

# Tools with the client's own function-to-schema conversion: a well-formed answer, its
# calls (if the model makes any) of the tool offered, with arguments as a mapping.
def light_on(room: str) -> str:
    """Turn on the light in a room.

    Args:
      room: the room's name
    """
    return "on"

with_tools = client.chat(model=tagged, messages=messages, tools=[light_on], options=greedy, stream=False)
for call in with_tools.message.tool_calls or []:
    assert call.function.name == "light_on" and isinstance(call.function.arguments, dict), call

# A field not implemented is a 400 naming it, not silently ignored.
try:
    client.generate(model=tagged, prompt="what is this?", images=[b"\x89PNG"])
    raise AssertionError("images accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "images" in e.error, e

# ps: loaded here, with its context.
loaded = {m.model: m for m in client.ps().models}
assert tagged in loaded, loaded.keys()
assert loaded[tagged].size > 0 and loaded[tagged].context_length, loaded[tagged]

# Copy: another name for the same model, usable at once.
assert client.copy(tagged, "colours:v1").status == "success"
listed = {m.model: m for m in client.list().models}
assert "colours:v1" in listed and listed["colours:v1"].digest == entry.digest, listed.keys()
again = client.chat(model="colours:v1", messages=messages, options=greedy, stream=False)
assert again.message.content == r.message.content, again

# Delete the copy: only that name goes.
assert client.delete("colours:v1").status == "success"
listed = {m.model for m in client.list().models}
assert "colours:v1" not in listed and tagged in listed, listed
try:
    client.show("colours:v1")
    raise AssertionError("a deleted name still shows")
except ollama.ResponseError as e:
    assert e.status_code == 404, e

# A preset from Modelfile parts: its SYSTEM observably applies.
system = "You are a pirate. Answer every question as a pirate would, in one sentence."
statuses = [p.status for p in client.create(
    model="pirate", from_=tagged, system=system,
    parameters={"temperature": 0, "num_predict": 8, "seed": 1, "stop": ["###"]},
    stream=True)]
assert statuses[-1] == "success", statuses
listed = {m.model: m for m in client.list().models}
assert "pirate:latest" in listed, listed.keys()
assert listed["pirate:latest"].details.parent_model == tagged, listed["pirate:latest"]
as_preset = client.chat(model="pirate", messages=messages, stream=False)
assert as_preset.prompt_eval_count > r.prompt_eval_count + 10, (as_preset, r)
assert as_preset.eval_count <= 8, as_preset  # the preset's num_predict
assert as_preset.message.content != r.message.content, (as_preset, r)
# The same as sending the system prompt by hand.
by_hand = client.chat(model=tagged, messages=[{"role": "system", "content": system}] + messages,
                      options=greedy, stream=False)
assert by_hand.message.content == as_preset.message.content, (by_hand, as_preset)
# The request's own options override the preset's parameters.
longer = client.chat(model="pirate", messages=messages, options={"num_predict": 2}, stream=False)
assert longer.eval_count <= 2, longer
# show prints the Modelfile.
shown = client.show("pirate")
assert "FROM gemma:latest" in shown.modelfile and "SYSTEM" in shown.modelfile, shown.modelfile
assert "PARAMETER stop" in shown.modelfile and "temperature" in shown.parameters, shown
# Bad Modelfile parts are refused clearly.
for bad, word in [({"template": "{{ range .Messages }}{{ break }}{{ end }}"}, "`break`"),
                  ({"template": "{{ .Prompt | upper }}"}, "`upper`"),
                  ({"parameters": {"mirostat": 2}}, "mirostat"),
                  ({"adapters": {"lora.gguf": "sha256:00"}}, "adapters")]:
    try:
        client.create(model="bad", from_=tagged, stream=False, **bad)
        raise AssertionError(f"{bad} accepted")
    except ollama.ResponseError as e:
        assert e.status_code == 400 and word in e.error, (bad, e)
try:
    client.create(model="orphan", from_="no-such-base", stream=False)
    raise AssertionError("a preset over nothing")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
assert client.delete("pirate").status == "success"
assert "pirate:latest" not in {m.model for m in client.list().models}

# A preset with an Ollama (Go) TEMPLATE: the chat is rendered through it. One that writes
# Gemma's turns as the model's own template does gives the same prompt token for token and
# so the same greedy answer; one that adds an instruction gives a longer prompt.
gemma_turns = ('{{- range .Messages }}<start_of_turn>'
               '{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
               '{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n')
assert client.create(model="turns", from_=tagged, template=gemma_turns,
                     stream=False).status == "success"
shown = client.show("turns")
assert shown.template == gemma_turns, shown.template
assert "TEMPLATE" in shown.modelfile and "<start_of_turn>" in shown.modelfile, shown.modelfile
same = client.chat(model="turns", messages=messages, options=greedy, stream=False)
assert same.prompt_eval_count == r.prompt_eval_count, (same, r)
assert same.message.content == r.message.content, (same, r)
framed = gemma_turns.replace("{{ .Content }}", "Answer in French. {{ .Content }}")
assert client.create(model="french", from_=tagged, template=framed,
                     stream=False).status == "success"
fr = client.chat(model="french", messages=messages, options=greedy, stream=False)
assert fr.prompt_eval_count > r.prompt_eval_count + 3, (fr, r)
# The same template in a Modelfile, as `ollama create -f` sends it.
modelfile = "FROM " + tagged + "\nTEMPLATE \"\"\"" + gemma_turns + "\"\"\"\n"
from_file = client._request_raw("POST", "/api/create", json={
    "model": "turns-mf", "modelfile": modelfile, "stream": False}).json()
assert from_file["status"] == "success", from_file
again = client.chat(model="turns-mf", messages=messages, options=greedy, stream=False)
assert again.message.content == r.message.content, (again, r)
for name in ("turns", "french", "turns-mf"):
    assert client.delete(name).status == "success"

# keep_alive 0 unloads: ps no longer lists it.
client.generate(model=tagged, prompt="Hi", options={"num_predict": 2}, keep_alive=0)
assert tagged not in {m.model for m in client.ps().models}, client.ps()
# Loading with an empty prompt, and unloading the same way.
client.generate(model=tagged)
assert tagged in {m.model for m in client.ps().models}, client.ps()
client.generate(model=tagged, keep_alive=0)
assert tagged not in {m.model for m in client.ps().models}, client.ps()

# Delete the model itself.
assert client.delete(tagged).status == "success"
assert tagged not in {m.model for m in client.list().models}
try:
    client.chat(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model answered")
except ollama.ResponseError as e:
    assert e.status_code == 404, e

print("ollama client: all checks passed")
