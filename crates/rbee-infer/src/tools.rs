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

/// One call read out of text: `{"name", "arguments" | "parameters"}` naming one of the
/// tools.
fn call_of(v: &Value, tools: &[ToolDef], n: usize) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let arguments = match args {
        // Some models write the arguments as a JSON string.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
        other => other.to_string(),
    };
    Some(ToolCall {
        id: format!("call_{n}"),
        name: name.to_string(),
        arguments,
    })
}

/// The tool calls in a model's reply, in any family's form, and the text around them (the
/// reply's `content`). `None` when the reply holds no call of one of `tools`. Call ids are
/// `call_0`, `call_1`, … (the API node gives them their final, unique ids).
pub fn parse_tool_calls(text: &str, tools: &[ToolDef]) -> Option<(String, Vec<ToolCall>)> {
    if tools.is_empty() {
        return None;
    }
    // Hermes: any number of tagged calls, with text before (and rarely between) them.
    if let Some(first) = text.find("<tool_call>") {
        let mut calls = Vec::new();
        let mut content = text[..first].to_string();
        let mut rest = &text[first..];
        while let Some(start) = rest.find("<tool_call>") {
            content.push_str(&rest[..start]);
            let body = &rest[start + "<tool_call>".len()..];
            let (inner, after) = match body.find("</tool_call>") {
                Some(end) => (&body[..end], &body[end + "</tool_call>".len()..]),
                None => (body, ""),
            };
            let v: Value = serde_json::from_str(inner.trim()).ok()?;
            calls.push(call_of(&v, tools, calls.len())?);
            rest = after;
        }
        content.push_str(rest);
        return Some((content.trim().to_string(), calls));
    }
    // Llama 3 (a bare object, maybe after `<|python_tag|>`) and Mistral (a list, after the
    // invisible `[TOOL_CALLS]` control token or its text).
    let body = text
        .trim()
        .trim_start_matches("[TOOL_CALLS]")
        .trim_start_matches("<|python_tag|>")
        .trim();
    match serde_json::from_str::<Value>(body).ok()? {
        Value::Array(items) if !items.is_empty() => {
            let calls: Option<Vec<ToolCall>> = items
                .iter()
                .enumerate()
                .map(|(n, v)| call_of(v, tools, n))
                .collect();
            calls.map(|c| (String::new(), c))
        }
        v @ Value::Object(_) => call_of(&v, tools, 0).map(|c| (String::new(), vec![c])),
        _ => None,
    }
}

/// What one piece of a reply is: thinking (`reasoning_content`) and answer text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyPiece {
    pub reasoning: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing but whitespace seen since the start (or since the thinking ended).
    Start,
    Thinking,
    Content,
    /// Inside tool calls: kept until the end, then parsed.
    Calls,
}

/// Splits a reply, as it streams, into thinking, answer text and tool calls: a leading
/// `<think>…</think>` is reasoning; with tools, a reply that starts as a call (`<tool_call>`,
/// or the JSON of a Llama 3 / Mistral call) or reaches a `<tool_call>` is held from there and
/// parsed at the end. Text that could still be the start of a tag is held back until it is
/// known, so no piece of a tag ever shows as content.
#[derive(Debug)]
pub struct ReplySplitter {
    tools: Vec<ToolDef>,
    phase: Phase,
    thought: bool,
    pending: String,
    calls: String,
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

impl ReplySplitter {
    /// `tools`: the request's tools (none: no call is looked for).
    pub fn new(tools: Vec<ToolDef>) -> ReplySplitter {
        ReplySplitter {
            tools,
            phase: Phase::Start,
            thought: false,
            pending: String::new(),
            calls: String::new(),
        }
    }

    /// Adds generated text; returns what can be shown now.
    pub fn push(&mut self, text: &str) -> ReplyPiece {
        self.pending.push_str(text);
        let mut out = ReplyPiece::default();
        loop {
            match self.phase {
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
                        if t.starts_with('{') || t.starts_with('[') || t.starts_with("<tool_call>")
                        {
                            self.calls = std::mem::take(&mut self.pending);
                            self.phase = Phase::Calls;
                            continue;
                        }
                        if "<tool_call>".starts_with(t) {
                            return out;
                        }
                    }
                    self.pending = t.to_string();
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
                    if let Some(at) = self.pending.find("<tool_call>") {
                        out.content.push_str(&self.pending[..at]);
                        self.calls = self.pending[at..].to_string();
                        self.pending.clear();
                        self.phase = Phase::Calls;
                        return out;
                    }
                    release(&mut self.pending, "<tool_call>", &mut out.content);
                    return out;
                }
                Phase::Calls => {
                    self.calls.push_str(&self.pending);
                    self.pending.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the reply: the rest of the text, and the tool calls if it held any. Text
    /// that looked like a call but is not one is returned as content.
    pub fn finish(mut self) -> (ReplyPiece, Vec<ToolCall>) {
        let mut out = ReplyPiece::default();
        match self.phase {
            Phase::Thinking => out.reasoning = std::mem::take(&mut self.pending),
            Phase::Calls => match parse_tool_calls(&self.calls, &self.tools) {
                Some((content, calls)) => {
                    out.content = content;
                    return (out, calls);
                }
                None => out.content = std::mem::take(&mut self.calls),
            },
            Phase::Start | Phase::Content => out.content = std::mem::take(&mut self.pending),
        }
        (out, Vec::new())
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
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
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
}
