//! Tool calling: how each template family writes a call, the grammar that forces one
//! (`tool_choice: required` or a named function), and reading calls back out of the text.
//!
//! Families, told apart by the chat template's source ([`ToolFormat::of_template`]):
//!
//! | family | a call in the output |
//! |---|---|
//! | Hermes (Qwen 2.5/3, Hermes, and our generic format) | `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` |
//! | Llama 3.x | `{"name": …, "parameters": {…}}` (the whole reply) |
//! | Mistral | `[TOOL_CALLS][{"name": …, "arguments": {…}}]` (`[TOOL_CALLS]` a control token) |
//!
//! A template that does not mention `tools` gets the **generic format**: a system message
//! listing the tools (their JSON schemas) and asking for the Hermes form above; an assistant
//! turn's calls are written in that form, and a `tool` message becomes a user turn
//! `<tool_response>…</tool_response>`. [`parse_tool_calls`] reads every family's form, so the
//! node that receives the text need not know which model wrote it.

use rbee_proto::generation::{ChatMessage, ToolCall, ToolDef};
use serde_json::{Value, json};

/// How a template's model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{json}</tool_call>`: Qwen 2.5/3 and Hermes templates.
    Hermes,
    /// A bare JSON object with `name` and `parameters`: Llama 3.1+.
    Llama3,
    /// `[TOOL_CALLS]` then a JSON list of calls: Mistral.
    Mistral,
    /// The template knows no tools: ours (Hermes-style, the tools described in a system
    /// message).
    Generic,
}

impl ToolFormat {
    /// The family of a chat template, from its source.
    pub fn of_template(source: &str) -> ToolFormat {
        if !source.contains("tools") {
            ToolFormat::Generic
        } else if source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if source.contains("<|start_header_id|>") || source.contains("<|python_tag|>") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }
}

/// The text of a tool's parameter schema as JSON (an object schema when none is given).
fn parameters(tool: &ToolDef) -> Value {
    serde_json::from_str::<Value>(&tool.parameters)
        .ok()
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

/// Tools as templates expect them: `[{"type": "function", "function": {name, description,
/// parameters}}]` (the OpenAI shape HuggingFace templates are written for).
pub fn tools_value(tools: &[ToolDef]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": parameters(t),
                }})
            })
            .collect(),
    )
}

/// A call's arguments as the object templates expect (`tojson` writes it back): the JSON the
/// model wrote, or the raw text when it is not JSON.
fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

/// Messages as the template sees them: `role`, `content`, and for an assistant's calls
/// `tool_calls: [{id, type, function: {name, arguments}}]`, for a tool result
/// `tool_call_id`. With the generic format the calls and results are written into the text.
pub fn messages_value(messages: &[ChatMessage], format: ToolFormat, tools: &[ToolDef]) -> Value {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if format == ToolFormat::Generic && !tools.is_empty() {
        out.push(json!({"role": "system", "content": generic_system_prompt(tools)}));
    }
    for m in messages {
        if format == ToolFormat::Generic {
            if m.role == "tool" {
                out.push(json!({"role": "user", "content":
                    format!("<tool_response>\n{}\n</tool_response>", m.content)}));
                continue;
            }
            if !m.tool_calls.is_empty() {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let call = json!({"name": c.name, "arguments": arguments_value(&c.arguments)});
                    text.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                }
                out.push(json!({"role": m.role, "content": text}));
                continue;
            }
        }
        let mut v = json!({"role": m.role, "content": m.content});
        if !m.tool_calls.is_empty() {
            v["tool_calls"] = Value::Array(
                m.tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function", "function": {
                            "name": c.name, "arguments": arguments_value(&c.arguments)}})
                    })
                    .collect(),
            );
        }
        if let Some(id) = &m.tool_call_id {
            v["tool_call_id"] = json!(id);
        }
        out.push(v);
    }
    Value::Array(out)
}

/// The system message of the generic format.
fn generic_system_prompt(tools: &[ToolDef]) -> String {
    let mut s = String::from(
        "You may call one or more functions to answer. The functions, as JSON schemas:\n<tools>\n",
    );
    for t in tools_value(tools).as_array().into_iter().flatten() {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call a function, reply with a JSON object naming it and its arguments, inside <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// A Lark grammar (llguidance's dialect) whose every sentence is one call, in `format`, of
/// one of `tools` (or only of `only`), with arguments valid against its schema.
/// `mistral_token` is the id of `[TOOL_CALLS]` when the vocabulary has it.
pub fn tool_call_grammar(
    format: ToolFormat,
    tools: &[ToolDef],
    only: Option<&str>,
    mistral_token: Option<u32>,
) -> Result<String, String> {
    let chosen: Vec<&ToolDef> = tools
        .iter()
        .filter(|t| only.is_none_or(|n| t.name == n))
        .collect();
    if chosen.is_empty() {
        return Err(match only {
            Some(n) => format!("the tool `{n}` asked for is not among the tools"),
            None => "a tool call is required but no tools are given".into(),
        });
    }
    let args_key = if format == ToolFormat::Llama3 {
        "parameters"
    } else {
        "arguments"
    };
    let calls: Vec<Value> = chosen
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, args_key: parameters(t)},
                "required": ["name", args_key],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = crate::constraint::compact_json(if calls.len() == 1 {
        calls.into_iter().next().unwrap_or_default()
    } else {
        json!({"anyOf": calls})
    });
    let call = format!("call: %json {schema}");
    Ok(match (format, mistral_token) {
        (ToolFormat::Mistral, Some(id)) => format!("start: <[{id}]> \"[\" call \"]\"\n{call}\n"),
        (ToolFormat::Llama3, _) => format!("start: call\n{call}\n"),
        _ => format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\n{call}\n"),
    })
}

/// The tool calls in a model's reply, in any family's form, and the text around them (the
/// reply's `content`). `None` when the reply holds no call of one of `tools`. Call ids are
/// `call_0`, `call_1`, … (the API node gives them their final, unique ids). This is
/// [`ReplySplitter`] run over the whole text, so a reply reads the same streamed or not.
pub fn parse_tool_calls(text: &str, tools: &[ToolDef]) -> Option<(String, Vec<ToolCall>)> {
    let mut split = ReplySplitter::new(tools.to_vec());
    let first = split.push(text);
    let (rest, calls) = split.finish();
    (!calls.is_empty()).then(|| (first.content + &rest.content, calls))
}

/// One streamed piece of a tool call, in the order the model writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallDelta {
    /// Call `index` (0, 1, … in the reply) starts: its function's name is known.
    Start { index: usize, name: String },
    /// More of call `index`'s arguments, as the model wrote them.
    Arguments { index: usize, text: String },
}

/// What one piece of a reply is: thinking (`reasoning_content`), answer text, and pieces of
/// tool calls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyPiece {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<CallDelta>,
}

impl ReplyPiece {
    /// Nothing to show yet.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.calls.is_empty()
    }
}

/// Which field of a call object a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Arguments,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjState {
    /// Before the object's `{`.
    Open,
    /// After `{` or `,`: a key (or, right after `{`, the `}` of an empty object).
    Key {
        first: bool,
    },
    /// Inside a key's string.
    KeyText {
        escaped: bool,
    },
    Colon,
    /// Before a value.
    Value,
    /// Inside a value: its nesting depth, whether in a string, after a backslash, a scalar.
    Scan {
        depth: usize,
        in_string: bool,
        escaped: bool,
        scalar: bool,
    },
    /// After a value: `,` or `}`.
    Next,
    Done,
}

/// What feeding one character to a [`CallObject`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    More,
    /// The `name` value just ended (it is in `name`, or the value was no string).
    Name,
    /// The object's closing `}`.
    Done,
    /// Not JSON a call can be.
    Error,
}

/// One call's JSON object, read a character at a time: `name` once its string ends, the
/// `arguments` (or Llama's `parameters`) value's text as it arrives, other keys skipped. Only
/// the structure is checked (keys, strings, nesting); the arguments are the model's text.
#[derive(Debug)]
struct CallObject {
    state: ObjState,
    key: String,
    field: Field,
    /// The text of the `name` value, or of arguments written as a JSON string, until it ends.
    value: String,
    name: Option<String>,
    args_seen: bool,
    /// The arguments are a JSON string (Mistral models do this): held until it ends.
    args_string: bool,
    /// Arguments text read and not yet taken.
    args_out: String,
}

impl CallObject {
    fn new() -> CallObject {
        CallObject {
            state: ObjState::Open,
            key: String::new(),
            field: Field::Other,
            value: String::new(),
            name: None,
            args_seen: false,
            args_string: false,
            args_out: String::new(),
        }
    }

    fn feed(&mut self, c: char) -> Fed {
        match self.state {
            ObjState::Open => match c {
                '{' => self.state = ObjState::Key { first: true },
                c if c.is_whitespace() => {}
                _ => return Fed::Error,
            },
            ObjState::Key { first } => match c {
                '"' => {
                    self.key.clear();
                    self.key.push('"');
                    self.state = ObjState::KeyText { escaped: false };
                }
                '}' if first => {
                    self.state = ObjState::Done;
                    return Fed::Done;
                }
                c if c.is_whitespace() => {}
                _ => return Fed::Error,
            },
            ObjState::KeyText { escaped } => {
                self.key.push(c);
                if escaped {
                    self.state = ObjState::KeyText { escaped: false };
                } else if c == '\\' {
                    self.state = ObjState::KeyText { escaped: true };
                } else if c == '"' {
                    let Ok(key) = serde_json::from_str::<String>(&self.key) else {
                        return Fed::Error;
                    };
                    self.field = match key.as_str() {
                        "name" if self.name.is_none() => Field::Name,
                        "arguments" | "parameters" if !self.args_seen => Field::Arguments,
                        _ => Field::Other,
                    };
                    self.state = ObjState::Colon;
                }
            }
            ObjState::Colon => match c {
                ':' => self.state = ObjState::Value,
                c if c.is_whitespace() => {}
                _ => return Fed::Error,
            },
            ObjState::Value => {
                if c.is_whitespace() {
                    return Fed::More;
                }
                let (depth, in_string, scalar) = match c {
                    '{' | '[' => (1, false, false),
                    '"' => (0, true, false),
                    '}' | ']' | ',' | ':' => return Fed::Error,
                    _ => (0, false, true),
                };
                if self.field == Field::Name && !in_string {
                    return Fed::Error;
                }
                if self.field == Field::Arguments {
                    self.args_seen = true;
                    self.args_string = in_string;
                }
                self.value.clear();
                self.keep(c);
                self.state = ObjState::Scan {
                    depth,
                    in_string,
                    escaped: false,
                    scalar,
                };
            }
            ObjState::Scan {
                mut depth,
                mut in_string,
                mut escaped,
                scalar,
            } => {
                if scalar {
                    if c == ',' || c == '}' || c.is_whitespace() {
                        self.state = ObjState::Next;
                        return self.feed(c);
                    }
                    self.keep(c);
                    return Fed::More;
                }
                self.keep(c);
                let mut ended = false;
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        in_string = false;
                        ended = depth == 0;
                    }
                } else {
                    match c {
                        '"' => in_string = true,
                        '{' | '[' => depth += 1,
                        '}' | ']' => {
                            depth -= 1;
                            ended = depth == 0;
                        }
                        _ => {}
                    }
                }
                if !ended {
                    self.state = ObjState::Scan {
                        depth,
                        in_string,
                        escaped,
                        scalar,
                    };
                    return Fed::More;
                }
                self.state = ObjState::Next;
                return self.value_ended();
            }
            ObjState::Next => match c {
                ',' => self.state = ObjState::Key { first: false },
                '}' => {
                    self.state = ObjState::Done;
                    return Fed::Done;
                }
                c if c.is_whitespace() => {}
                _ => return Fed::Error,
            },
            ObjState::Done => return Fed::Error,
        }
        Fed::More
    }

    /// Keeps a character of the value being read.
    fn keep(&mut self, c: char) {
        match self.field {
            Field::Arguments if !self.args_string => self.args_out.push(c),
            Field::Name | Field::Arguments => self.value.push(c),
            Field::Other => {}
        }
    }

    fn value_ended(&mut self) -> Fed {
        match self.field {
            Field::Name => {
                match serde_json::from_str::<String>(&self.value) {
                    Ok(name) => self.name = Some(name),
                    Err(_) => return Fed::Error,
                }
                Fed::Name
            }
            Field::Arguments if self.args_string => {
                // Arguments written as a JSON string: the object inside it, when it is one.
                let text = std::mem::take(&mut self.value);
                match serde_json::from_str::<String>(&text) {
                    Ok(inner)
                        if serde_json::from_str::<Value>(&inner).is_ok_and(|v| v.is_object()) =>
                    {
                        self.args_out.push_str(&inner);
                    }
                    _ => self.args_out.push_str(&text),
                }
                Fed::More
            }
            _ => Fed::More,
        }
    }

    /// The arguments text not yet taken; at the end of a cut-off call, also a string value
    /// still held.
    fn take_args(&mut self, end: bool) -> String {
        if end && self.args_string && self.state != ObjState::Done {
            let held = std::mem::take(&mut self.value);
            self.args_out.push_str(&held);
        }
        std::mem::take(&mut self.args_out)
    }
}

#[derive(Debug)]
enum Phase {
    /// Nothing but whitespace seen since the start (or since the thinking ended).
    Start,
    Thinking,
    Content,
    /// After `[TOOL_CALLS]` or `<|python_tag|>`: a call object or a list of them.
    Opening,
    /// Inside `<tool_call>`: its object.
    Tagged(CallObject),
    /// After a tagged call's object, up to `</tool_call>`.
    TagClose,
    /// A reply that starts as JSON: one call (Llama 3).
    Bare(CallObject),
    /// A reply that starts as a JSON list: calls (Mistral); `ListNext` is between items.
    ListItem(CallObject),
    ListNext,
}

/// Splits a reply, as it streams, into thinking, answer text and tool calls: a leading
/// `<think>…</think>` is reasoning; with tools, a reply that starts as a call (`<tool_call>`,
/// or the JSON of a Llama 3 / Mistral call) or reaches a `<tool_call>` is read as calls, each
/// one's name given as soon as it is known and its arguments as they arrive
/// ([`CallDelta`]). Text that could still be the start of a tag or a call is held back until
/// it is known, so no piece of a tag ever shows as content; text that looked like a call and
/// is not one (no `name` of one of the tools, or not JSON) is released as content.
///
/// A call's `arguments` are the model's own text of the arguments value (as OpenAI's are),
/// whitespace included: the streamed fragments join to exactly the non-streamed value.
/// Arguments written as a JSON string holding an object (some Mistral models) are that
/// object's text, given in one piece when the string ends. A call without arguments gets
/// `{}`. Once a call's name has been given, the call stays: if the model's JSON then breaks,
/// the call keeps the arguments read so far and the text from there on is content.
#[derive(Debug)]
pub struct ReplySplitter {
    tools: Vec<ToolDef>,
    phase: Phase,
    thought: bool,
    pending: String,
    /// Text of a call not yet known to be one (released as content if it is not).
    held: String,
    /// The current object's call has been given (its name is valid).
    committed: bool,
    /// A call ended just before: whitespace until more text is dropped.
    after_call: bool,
    calls: Vec<ToolCall>,
}

/// The longest suffix of `text` that is a proper prefix of `tag`, on a char boundary.
fn tag_start(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// Moves `pending` into `into`, all but a tail that could still become `tag`.
fn release(pending: &mut String, tag: &str, into: &mut String) {
    let cut = pending.len() - tag_start(pending, tag);
    into.push_str(&pending[..cut]);
    pending.drain(..cut);
}

/// Texts some templates put before a call list or object (`[TOOL_CALLS]` is Mistral's control
/// token when it shows as text, `<|python_tag|>` Llama 3's).
const CALL_PREFIXES: [&str; 2] = ["[TOOL_CALLS]", "<|python_tag|>"];

impl ReplySplitter {
    /// `tools`: the request's tools (none: no call is looked for).
    pub fn new(tools: Vec<ToolDef>) -> ReplySplitter {
        ReplySplitter {
            tools,
            phase: Phase::Start,
            thought: false,
            pending: String::new(),
            held: String::new(),
            committed: false,
            after_call: false,
            calls: Vec::new(),
        }
    }

    /// Adds generated text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> ReplyPiece {
        self.pending.push_str(text);
        let mut out = ReplyPiece::default();
        loop {
            match &mut self.phase {
                Phase::Start => {
                    let t = self.pending.trim_start();
                    if t.is_empty() {
                        return out;
                    }
                    if !self.thought {
                        if let Some(rest) = t.strip_prefix("<think>") {
                            self.pending = rest.to_string();
                            self.phase = Phase::Thinking;
                            continue;
                        }
                        if "<think>".starts_with(t) {
                            return out;
                        }
                    }
                    if !self.tools.is_empty() {
                        let t = t.to_string();
                        if let Some(rest) = t.strip_prefix("<tool_call>") {
                            self.open_tagged(rest.to_string());
                            continue;
                        }
                        if let Some(p) = CALL_PREFIXES.iter().find(|p| t.starts_with(**p)) {
                            self.held = p.to_string();
                            self.pending = t[p.len()..].to_string();
                            self.phase = Phase::Opening;
                            continue;
                        }
                        if t.starts_with('{')
                            || (t.starts_with('[') && !"[TOOL_CALLS]".starts_with(&t))
                        {
                            self.pending = t;
                            self.phase = Phase::Opening;
                            continue;
                        }
                        if std::iter::once("<tool_call>")
                            .chain(CALL_PREFIXES)
                            .any(|p| p.starts_with(&t))
                        {
                            return out;
                        }
                        self.pending = t;
                    } else {
                        self.pending = t.to_string();
                    }
                    self.phase = Phase::Content;
                }
                Phase::Thinking => {
                    if let Some(end) = self.pending.find("</think>") {
                        out.reasoning.push_str(&self.pending[..end]);
                        self.pending = self.pending[end + "</think>".len()..].to_string();
                        self.thought = true;
                        self.phase = Phase::Start;
                        continue;
                    }
                    release(&mut self.pending, "</think>", &mut out.reasoning);
                    return out;
                }
                Phase::Content => {
                    if self.tools.is_empty() {
                        out.content.push_str(&self.pending);
                        self.pending.clear();
                        return out;
                    }
                    if self.after_call {
                        let t = self.pending.trim_start();
                        if t.is_empty() {
                            return out;
                        }
                        self.pending = t.to_string();
                        self.after_call = false;
                    }
                    if let Some(at) = self.pending.find("<tool_call>") {
                        out.content.push_str(self.pending[..at].trim_end());
                        let rest = self.pending[at + "<tool_call>".len()..].to_string();
                        self.open_tagged(rest);
                        continue;
                    }
                    // All but a tail that may become a tag, and whitespace that may come
                    // before one.
                    let tag = tag_start(&self.pending, "<tool_call>");
                    let text = &self.pending[..self.pending.len() - tag];
                    let cut = text.trim_end().len();
                    out.content.push_str(&self.pending[..cut]);
                    self.pending.drain(..cut);
                    return out;
                }
                Phase::Opening => {
                    let t = self.pending.trim_start();
                    let Some(first) = t.chars().next() else {
                        return out;
                    };
                    // Whitespace after a prefix is the call's text too (if it is no call).
                    let space = self.pending.len() - t.len();
                    let t = t.to_string();
                    self.held.push_str(&self.pending[..space]);
                    self.pending.clear();
                    self.committed = false;
                    if first == '[' {
                        self.held.push('[');
                        self.pending = t[1..].to_string();
                        self.phase = Phase::ListItem(CallObject::new());
                    } else {
                        self.pending = t;
                        self.phase = Phase::Bare(CallObject::new());
                    }
                }
                Phase::Tagged(_) | Phase::Bare(_) | Phase::ListItem(_) => {
                    if !self.read_call(&mut out) {
                        return out;
                    }
                }
                Phase::TagClose => {
                    let t = self.pending.trim_start();
                    if let Some(rest) = t.strip_prefix("</tool_call>") {
                        self.pending = rest.to_string();
                        self.after_call = true;
                        self.phase = Phase::Content;
                        continue;
                    }
                    if t.is_empty() || "</tool_call>".starts_with(t) {
                        return out;
                    }
                    // No closing tag: what follows is text (or the next call).
                    self.pending = t.to_string();
                    self.after_call = true;
                    self.phase = Phase::Content;
                }
                Phase::ListNext => {
                    let t = self.pending.trim_start();
                    let Some(first) = t.chars().next() else {
                        self.pending.clear();
                        return out;
                    };
                    let rest = t[first.len_utf8()..].to_string();
                    match first {
                        ',' => {
                            self.pending = rest;
                            self.held = ",".into();
                            self.committed = false;
                            self.phase = Phase::ListItem(CallObject::new());
                        }
                        ']' => {
                            self.pending = rest;
                            self.after_call = true;
                            self.phase = Phase::Content;
                        }
                        _ => {
                            self.pending = t.to_string();
                            self.after_call = true;
                            self.phase = Phase::Content;
                        }
                    }
                }
            }
        }
    }

    /// Starts reading a tagged call; `rest` is the text after `<tool_call>`.
    fn open_tagged(&mut self, rest: String) {
        self.held = "<tool_call>".into();
        self.pending = rest;
        self.committed = false;
        self.phase = Phase::Tagged(CallObject::new());
    }

    /// Feeds pending text to the call object being read; true when the phase changed (the
    /// rest of the text is still pending), false when all of it was taken.
    fn read_call(&mut self, out: &mut ReplyPiece) -> bool {
        let text = std::mem::take(&mut self.pending);
        for (at, c) in text.char_indices() {
            let (Phase::Tagged(obj) | Phase::Bare(obj) | Phase::ListItem(obj)) = &mut self.phase
            else {
                self.pending = text[at..].to_string();
                return true;
            };
            let fed = obj.feed(c);
            if !self.committed {
                self.held.push(c);
            }
            let rest = &text[at + c.len_utf8()..];
            match fed {
                Fed::More => {}
                Fed::Name => {
                    let valid = obj
                        .name
                        .as_ref()
                        .is_some_and(|n| self.tools.iter().any(|t| &t.name == n));
                    if !valid {
                        self.false_start(out, rest);
                        return true;
                    }
                    let name = obj.name.clone().unwrap_or_default();
                    let index = self.calls.len();
                    self.calls.push(ToolCall {
                        id: format!("call_{index}"),
                        name: name.clone(),
                        arguments: String::new(),
                    });
                    out.calls.push(CallDelta::Start { index, name });
                    self.committed = true;
                    self.held.clear();
                }
                Fed::Error if self.committed => {
                    self.flush_args(out, true);
                    self.pending = text[at..].to_string();
                    self.after_call = true;
                    self.phase = Phase::Content;
                    return true;
                }
                Fed::Error => {
                    self.false_start(out, rest);
                    return true;
                }
                Fed::Done if !self.committed => {
                    // An object without the name of one of the tools: no call.
                    self.false_start(out, rest);
                    return true;
                }
                Fed::Done => {
                    self.flush_args(out, true);
                    self.pending = rest.to_string();
                    self.phase = match self.phase {
                        Phase::Tagged(_) => Phase::TagClose,
                        Phase::ListItem(_) => Phase::ListNext,
                        _ => {
                            self.after_call = true;
                            Phase::Content
                        }
                    };
                    return true;
                }
            }
        }
        self.flush_args(out, false);
        false
    }

    /// Gives the arguments read so far of the call being read, if it has been given; at its
    /// end (`end`), `{}` for a call that had none.
    fn flush_args(&mut self, out: &mut ReplyPiece, end: bool) {
        if !self.committed {
            return;
        }
        let obj = match &mut self.phase {
            Phase::Tagged(o) | Phase::Bare(o) | Phase::ListItem(o) => o,
            _ => return,
        };
        let mut text = obj.take_args(end);
        if end && !obj.args_seen {
            text = "{}".into();
        }
        let Some(call) = self.calls.last_mut() else {
            return;
        };
        if text.is_empty() {
            return;
        }
        call.arguments.push_str(&text);
        let index = self.calls.len() - 1;
        match out.calls.last_mut() {
            Some(CallDelta::Arguments { index: i, text: t }) if *i == index => t.push_str(&text),
            _ => out.calls.push(CallDelta::Arguments { index, text }),
        }
    }

    /// What looked like a call is not one: its text is content, and so is what follows.
    fn false_start(&mut self, out: &mut ReplyPiece, rest: &str) {
        out.content.push_str(&std::mem::take(&mut self.held));
        self.pending = rest.to_string();
        self.after_call = false;
        self.committed = false;
        self.phase = Phase::Content;
    }

    /// The end of the reply: the rest of the text and of the calls, and every tool call it
    /// held (all of their pieces having been given by [`push`](Self::push) and this).
    pub fn finish(mut self) -> (ReplyPiece, Vec<ToolCall>) {
        let mut out = ReplyPiece::default();
        match &self.phase {
            Phase::Thinking => out.reasoning = std::mem::take(&mut self.pending),
            Phase::Tagged(_) | Phase::Bare(_) | Phase::ListItem(_) => {
                if self.committed {
                    // Cut off inside a call: it keeps what it has.
                    self.flush_args(&mut out, true);
                } else {
                    out.content = std::mem::take(&mut self.held);
                }
            }
            Phase::Opening => out.content = std::mem::take(&mut self.held) + &self.pending,
            Phase::TagClose | Phase::ListNext => {
                out.content = self.pending.trim().to_string();
            }
            Phase::Start | Phase::Content => {
                out.content = std::mem::take(&mut self.pending);
                if !self.calls.is_empty() {
                    out.content = out.content.trim_end().to_string();
                }
            }
        }
        (out, self.calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<ToolDef> {
        vec![
            ToolDef {
                name: "get_weather".into(),
                description: "Weather in a city".into(),
                parameters: r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into(),
            },
            ToolDef {
                name: "lights".into(),
                description: String::new(),
                parameters: String::new(),
            },
        ]
    }

    #[test]
    fn families_are_told_apart_by_their_templates() {
        assert_eq!(
            ToolFormat::of_template("{% if tools %}<tool_call>{% endif %}"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}[TOOL_CALLS]{% endif %}"),
            ToolFormat::Mistral
        );
        assert_eq!(
            ToolFormat::of_template("{% if tools %}<|start_header_id|>ipython{% endif %}"),
            ToolFormat::Llama3
        );
        assert_eq!(
            ToolFormat::of_template("<start_of_turn>{{ m.content }}"),
            ToolFormat::Generic
        );
    }

    #[test]
    fn hermes_calls_parse_with_the_text_around_them() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"lights\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = parse_tool_calls(text, &weather()).unwrap();
        assert_eq!(content, "Let me check.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(
            (calls[1].id.as_str(), calls[1].arguments.as_str()),
            ("call_1", "{}")
        );
    }

    #[test]
    fn llama_and_mistral_calls_parse() {
        let llama = r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}"#;
        let (_, calls) = parse_tool_calls(llama, &weather()).unwrap();
        // The arguments are the model's own text.
        assert_eq!(calls[0].arguments, r#"{"city": "Oslo"}"#);
        let mistral = r#"[TOOL_CALLS][{"name": "lights", "arguments": "{\"on\": true}"}]"#;
        let (_, calls) = parse_tool_calls(mistral, &weather()).unwrap();
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("lights", "{\"on\": true}")
        );
    }

    #[test]
    fn text_that_is_not_a_call_of_a_known_tool_stays_text() {
        assert!(parse_tool_calls("The weather is fine.", &weather()).is_none());
        assert!(parse_tool_calls(r#"{"name": "rm_rf", "arguments": {}}"#, &weather()).is_none());
        assert!(parse_tool_calls(r#"{"city": "Paris"}"#, &weather()).is_none());
        assert!(parse_tool_calls("<tool_call>\n{broken\n</tool_call>", &weather()).is_none());
        assert!(parse_tool_calls("<tool_call>{\"name\": \"lights\"}</tool_call>", &[]).is_none());
    }

    #[test]
    fn the_grammar_names_only_the_chosen_tool() {
        let g = tool_call_grammar(ToolFormat::Hermes, &weather(), Some("lights"), None).unwrap();
        assert!(
            g.contains("\"lights\"") && !g.contains("get_weather"),
            "{g}"
        );
        assert!(g.starts_with("start: \"<tool_call>\\n\" call"));
        let g = tool_call_grammar(ToolFormat::Llama3, &weather(), None, None).unwrap();
        assert!(g.contains("anyOf") && g.contains("\"parameters\""), "{g}");
        assert!(tool_call_grammar(ToolFormat::Hermes, &weather(), Some("nope"), None).is_err());
        assert!(tool_call_grammar(ToolFormat::Hermes, &[], None, None).is_err());
    }

    #[test]
    fn generic_format_writes_calls_and_results_into_the_text() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("c1".into());
        let msgs = [ChatMessage::new("user", "Weather?"), call, result];
        let v = messages_value(&msgs, ToolFormat::Generic, &weather());
        let v = v.as_array().unwrap();
        assert_eq!(v[0]["role"], "system");
        assert!(
            v[0]["content"]
                .as_str()
                .unwrap()
                .contains("\"get_weather\"")
        );
        assert!(v[2]["content"].as_str().unwrap().contains(
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}"
        ));
        assert_eq!(v[3]["role"], "user");
        assert_eq!(v[3]["content"], "<tool_response>\n18 C\n</tool_response>");
        // A template with tool support gets the calls as structured data.
        let v = messages_value(&msgs, ToolFormat::Hermes, &weather());
        assert_eq!(
            v[1]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        assert_eq!(v[2]["tool_call_id"], "c1");
    }

    /// Feeds `text` one character at a time (the hardest split) and collects the pieces.
    fn split(text: &str, tools: Vec<ToolDef>) -> (String, String, Vec<ToolCall>) {
        let mut s = ReplySplitter::new(tools);
        let (mut reasoning, mut content) = (String::new(), String::new());
        for ch in text.chars() {
            let p = s.push(&ch.to_string());
            reasoning.push_str(&p.reasoning);
            content.push_str(&p.content);
        }
        let (p, calls) = s.finish();
        reasoning.push_str(&p.reasoning);
        content.push_str(&p.content);
        (reasoning, content, calls)
    }

    #[test]
    fn reasoning_content_and_calls_are_split_however_the_text_arrives() {
        let (r, c, calls) = split("<think>\nhmm </think>\n\nYes.", vec![]);
        assert_eq!((r.trim(), c.as_str(), calls.len()), ("hmm", "Yes.", 0));
        let (r, c, _) = split("Yes, <think> is a tag.", vec![]);
        assert_eq!((r.as_str(), c.as_str()), ("", "Yes, <think> is a tag."));
        let (r, c, calls) = split(
            "<think>x</think>Checking.<tool_call>\n{\"name\": \"lights\", \"arguments\": {}}\n</tool_call>",
            weather(),
        );
        assert_eq!((r.as_str(), c.as_str()), ("x", "Checking."));
        assert_eq!(calls[0].name, "lights");
        let (_, c, calls) = split(
            r#"{"name": "get_weather", "parameters": {"city": "Rome"}}"#,
            weather(),
        );
        assert_eq!((c.as_str(), calls[0].name.as_str()), ("", "get_weather"));
        // JSON that is no call comes back as text.
        let (_, c, calls) = split(r#"{"answer": 42}"#, weather());
        assert_eq!((c.as_str(), calls.len()), (r#"{"answer": 42}"#, 0));
        let (_, c, _) = split("a <tool_c", weather());
        assert_eq!(c, "a <tool_c");
    }

    /// Feeds `text` in pieces of `size` characters; the call deltas joined per call, and the
    /// content.
    fn stream(text: &str, size: usize) -> (String, Vec<CallDelta>, Vec<ToolCall>) {
        let mut s = ReplySplitter::new(weather());
        let chars: Vec<char> = text.chars().collect();
        let (mut content, mut deltas) = (String::new(), Vec::new());
        for piece in chars.chunks(size) {
            let p = s.push(&piece.iter().collect::<String>());
            content.push_str(&p.content);
            deltas.extend(p.calls);
        }
        let (p, calls) = s.finish();
        content.push_str(&p.content);
        deltas.extend(p.calls);
        (content, deltas, calls)
    }

    /// Each call's name and its arguments joined from the deltas, checking that a call's
    /// start comes before its arguments.
    fn joined(deltas: &[CallDelta]) -> Vec<(String, String)> {
        let mut calls: Vec<(String, String)> = Vec::new();
        for d in deltas {
            match d {
                CallDelta::Start { index, name } => {
                    assert_eq!(*index, calls.len(), "{deltas:?}");
                    calls.push((name.clone(), String::new()));
                }
                CallDelta::Arguments { index, text } => calls[*index].1.push_str(text),
            }
        }
        calls
    }

    #[test]
    fn calls_stream_as_a_name_then_argument_fragments_equal_to_the_whole() {
        let hermes = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"Nord\\\"\", \"days\": [1, {\"x\": \"}\"}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"lights\"}\n</tool_call>";
        let whole = parse_tool_calls(hermes, &weather()).unwrap();
        assert_eq!(whole.0, "Let me check.");
        assert_eq!(
            whole.1[0].arguments,
            r#"{"city": "Paris \"Nord\"", "days": [1, {"x": "}"}]}"#
        );
        assert_eq!(whole.1[1].arguments, "{}", "no arguments: an empty object");
        for size in [1, 2, 3, 7, 1000] {
            let (content, deltas, calls) = stream(hermes, size);
            assert_eq!(content, "Let me check.", "size {size}");
            assert_eq!(calls, whole.1, "size {size}");
            let got = joined(&deltas);
            let want: Vec<(String, String)> = whole
                .1
                .iter()
                .map(|c| (c.name.clone(), c.arguments.clone()))
                .collect();
            assert_eq!(got, want, "size {size}");
            if size == 1 {
                // The arguments come in many fragments, the name before any of them.
                let fragments = deltas
                    .iter()
                    .filter(|d| matches!(d, CallDelta::Arguments { index: 0, .. }))
                    .count();
                assert!(fragments > 10, "{deltas:?}");
                assert!(
                    matches!(&deltas[0], CallDelta::Start { index: 0, name } if name == "get_weather")
                );
            }
        }
    }

    #[test]
    fn the_name_is_given_as_soon_as_it_is_known() {
        let mut s = ReplySplitter::new(weather());
        assert!(s.push("<tool_call>\n{\"name\": \"get_wea").is_empty());
        let p = s.push("ther\", \"argu");
        assert_eq!(
            p.calls,
            vec![CallDelta::Start {
                index: 0,
                name: "get_weather".into()
            }]
        );
        let p = s.push("ments\": {\"ci");
        assert_eq!(
            p.calls,
            vec![CallDelta::Arguments {
                index: 0,
                text: "{\"ci".into()
            }]
        );
        // Arguments before the name wait for it.
        let mut s = ReplySplitter::new(weather());
        assert!(s.push("{\"parameters\": {\"city\": \"Oslo\"}, ").is_empty());
        let p = s.push("\"name\": \"get_weather\"}");
        assert_eq!(
            joined(&p.calls),
            vec![("get_weather".into(), "{\"city\": \"Oslo\"}".into())]
        );
    }

    #[test]
    fn llama_and_mistral_calls_stream_too() {
        let llama = r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#;
        for size in [1, 4] {
            let (content, deltas, calls) = stream(llama, size);
            assert_eq!((content.as_str(), calls.len()), ("", 1));
            assert_eq!(
                joined(&deltas),
                vec![("get_weather".into(), r#"{"city": "Oslo"}"#.into())]
            );
        }
        let mistral = r#"[TOOL_CALLS][{"name": "lights", "arguments": "{\"on\": true}"}, {"name": "get_weather", "arguments": {"city": "Rome"}}]"#;
        for size in [1, 5] {
            let (content, deltas, calls) = stream(mistral, size);
            assert_eq!(content, "");
            assert_eq!(
                joined(&deltas),
                vec![
                    ("lights".into(), r#"{"on": true}"#.into()),
                    ("get_weather".into(), r#"{"city": "Rome"}"#.into())
                ]
            );
            assert_eq!(calls[1].id, "call_1");
        }
    }

    #[test]
    fn false_starts_are_content_and_a_broken_call_keeps_what_it_had() {
        for text in [
            r#"{"answer": 42}"#,
            r#"{"name": "rm_rf", "arguments": {}}"#,
            "<tool_call>\n{broken\n</tool_call>",
            "[1, 2, 3]",
            "[TOOL_CALLS] is a marker",
        ] {
            let (content, deltas, calls) = stream(text, 1);
            assert_eq!((content.as_str(), deltas.len(), calls.len()), (text, 0, 0));
        }
        // Text after a false start is still read for calls.
        let text = "<tool_call>{\"x\": 1}</tool_call> then <tool_call>{\"name\": \"lights\", \"arguments\": {}}</tool_call>";
        let (content, _, calls) = stream(text, 1);
        assert_eq!(content, "<tool_call>{\"x\": 1}</tool_call> then");
        assert_eq!(calls[0].name, "lights");
        // Cut off inside the arguments (max_tokens): the call keeps them, unfinished.
        let (content, deltas, calls) = stream(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa",
            2,
        );
        assert_eq!(
            (content.as_str(), calls[0].arguments.as_str()),
            ("", "{\"city\": \"Pa")
        );
        assert_eq!(joined(&deltas)[0].1, calls[0].arguments);
        // Broken after the name: the call stays, the rest is content.
        let (content, _, calls) = stream("{\"name\": \"lights\", \"arguments\": {} oops", 1);
        assert_eq!((content.as_str(), calls.len()), ("oops", 1));
    }
}
