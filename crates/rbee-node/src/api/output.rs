//! What a request asks of its output, turned from the API's JSON shapes into the engine's
//! vocabulary in one place, so every front end (the OpenAI routes here, the Ollama routes)
//! means the same thing by it:
//!
//! - [`response_format`] / [`format()`]: OpenAI's `response_format` and Ollama's `format` to a
//!   [`Constraint`] (constrained decoding, compiled by the node that runs the model);
//! - [`tools`]: OpenAI's `tools` and `tool_choice` to tool definitions (for the template) and,
//!   for `required` or a named function, a [`Constraint::ToolCall`];
//! - [`template_kwargs`]: `chat_template_kwargs` and `reasoning_effort` to template variables;
//! - [`logprobs`]: OpenAI's `logprobs` / `top_logprobs` to `SamplingParams::logprobs`;
//! - [`logprobs_json`]: the engine's per-token log-probabilities in OpenAI's shapes.

use rbee_proto::generation::{Constraint, MAX_TOP_LOGPROBS, TokenLogprob, ToolDef};
use serde_json::{Map, Value, json};

use crate::error::NodeError;

fn bad(msg: impl Into<String>) -> NodeError {
    NodeError::BadRequest(msg.into())
}

/// OpenAI's `response_format`: `text` (or absent) → none; `json_object` → any JSON object;
/// `json_schema` → its `json_schema.schema` (strict or not, the output follows the schema).
pub fn response_format(v: Option<&Value>) -> Result<Option<Constraint>, NodeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let schema = v
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| {
                    bad("`response_format.json_schema.schema` is missing: give the JSON schema the output must follow")
                })?;
            schema_constraint(schema, "response_format.json_schema.schema").map(Some)
        }
        other => Err(bad(format!(
            "`response_format.type` {} is not one of `text`, `json_object`, `json_schema`",
            other.map_or_else(|| "(missing)".to_string(), |k| format!("`{k}`"))
        ))),
    }
}

/// Ollama's `format`: `"json"` → any JSON object; an object → that JSON schema; `""` or
/// null → none.
pub fn format(v: Option<&Value>) -> Result<Option<Constraint>, NodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::JsonObject)),
        Some(schema @ Value::Object(_)) => schema_constraint(schema, "format").map(Some),
        Some(other) => Err(bad(format!(
            "`format` must be \"json\" or a JSON schema object, not {other}"
        ))),
    }
}

fn schema_constraint(schema: &Value, field: &str) -> Result<Constraint, NodeError> {
    if !schema.is_object() {
        return Err(bad(format!("`{field}` must be a JSON schema object")));
    }
    Ok(Constraint::JsonSchema(schema.to_string()))
}

/// `SamplingParams::logprobs` from a request. Chat: `logprobs: true` with `top_logprobs`
/// 0..=20 (OpenAI refuses `top_logprobs` without `logprobs`); completions: `logprobs` is the
/// number of alternatives, 0..=5.
pub fn logprobs(
    logprobs: Option<&Value>,
    top_logprobs: Option<&Value>,
    chat: bool,
) -> Result<Option<u8>, NodeError> {
    let top = match top_logprobs.filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n <= u64::from(MAX_TOP_LOGPROBS))
                .ok_or_else(|| {
                    bad(format!(
                        "`top_logprobs` must be an integer 0..={MAX_TOP_LOGPROBS}"
                    ))
                })? as u8,
        ),
    };
    let logprobs = logprobs.filter(|v| !v.is_null());
    if chat {
        let on = match logprobs {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(other) => {
                return Err(bad(format!(
                    "`logprobs` must be true or false, not {other}"
                )));
            }
        };
        if !on {
            if top.is_some_and(|n| n > 0) {
                return Err(bad("`top_logprobs` needs `logprobs: true`"));
            }
            return Ok(None);
        }
        return Ok(Some(top.unwrap_or(0)));
    }
    if top.is_some() {
        return Err(bad(
            "`top_logprobs` is a chat field; on /v1/completions `logprobs` is the number of alternatives",
        ));
    }
    match logprobs {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= 5)
            .map(|n| Some(n as u8))
            .ok_or_else(|| bad("`logprobs` on /v1/completions must be an integer 0..=5")),
    }
}

/// OpenAI's `tools` and `tool_choice` as the engine's tools and constraint: `auto` (or
/// absent) tells the model about the tools and lets it choose; `none` leaves them out;
/// `required` forces a call of one of them, `{"type": "function", "function": {"name"}}` a
/// call of that one (both by grammar, so the output always parses as a call with arguments
/// valid against the tool's schema). Only `function` tools exist.
pub fn tools(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
) -> Result<(Vec<ToolDef>, Option<Constraint>), NodeError> {
    let list = match tools.filter(|v| !v.is_null()) {
        None => {
            let asks = tool_choice
                .filter(|v| !v.is_null())
                .is_some_and(|c| c.as_str().is_none_or(|c| c != "none" && c != "auto"));
            return if asks {
                Err(bad(
                    "`tool_choice` asks for a tool call but there are no `tools`",
                ))
            } else {
                Ok((Vec::new(), None))
            };
        }
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(bad(
                "`tools` must be a list of `{\"type\": \"function\", \"function\": {…}}`",
            ));
        }
    };
    let mut defs = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str);
        if kind != Some("function") {
            return Err(bad(format!(
                "`tools[{i}].type` {}: only `function` tools are supported",
                kind.map_or_else(|| "is missing".to_string(), |k| format!("`{k}`"))
            )));
        }
        let f = t
            .get("function")
            .ok_or_else(|| bad(format!("`tools[{i}].function` is missing")))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("`tools[{i}].function.name` is missing")))?;
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => String::new(),
            Some(p @ Value::Object(_)) => p.to_string(),
            Some(_) => {
                return Err(bad(format!(
                    "`tools[{i}].function.parameters` must be a JSON schema object"
                )));
            }
        };
        defs.push(ToolDef {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            parameters,
        });
    }
    let constraint = match tool_choice.filter(|v| !v.is_null()) {
        None => None,
        Some(Value::String(c)) if c == "auto" => None,
        Some(Value::String(c)) if c == "none" => return Ok((Vec::new(), None)),
        Some(Value::String(c)) if c == "required" => Some(Constraint::ToolCall { only: None }),
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`tool_choice.function.name` is missing"))?;
            if !defs.iter().any(|d| d.name == name) {
                return Err(bad(format!(
                    "`tool_choice` names `{name}`, which is not among `tools`"
                )));
            }
            Some(Constraint::ToolCall {
                only: Some(name.to_string()),
            })
        }
        Some(other) => {
            return Err(bad(format!(
                "`tool_choice` {other} is not `auto`, `none`, `required` or a function"
            )));
        }
    };
    Ok((defs, constraint))
}

/// `chat_template_kwargs` (an object: `{"enable_thinking": false}`) and `reasoning_effort`
/// as the chat template's variables; `reasoning_effort` reaches the template under its own
/// name, for the templates that read it.
pub fn template_kwargs(
    kwargs: Option<&Value>,
    reasoning_effort: Option<&Value>,
) -> Result<Vec<(String, String)>, NodeError> {
    let mut out = Vec::new();
    match kwargs.filter(|v| !v.is_null()) {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                out.push((k.clone(), v.to_string()));
            }
        }
        Some(_) => return Err(bad("`chat_template_kwargs` must be an object")),
    }
    match reasoning_effort.filter(|v| !v.is_null()) {
        None => {}
        Some(v @ Value::String(_)) => {
            out.retain(|(k, _)| k != "reasoning_effort");
            out.push(("reasoning_effort".into(), v.to_string()));
        }
        Some(_) => {
            return Err(bad(
                "`reasoning_effort` must be a string (`low`, `medium`, `high`)",
            ));
        }
    }
    Ok(out)
}

fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The engine's log-probabilities in OpenAI's shape: chat's `{"content": [{token, logprob,
/// bytes, top_logprobs}], "refusal": null}`, or completions' `{tokens, token_logprobs,
/// top_logprobs, text_offset}` with offsets counted from `offset` (the text already sent).
pub fn logprobs_json(tokens: &[TokenLogprob], chat: bool, offset: usize) -> Value {
    if chat {
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                json!({
                    "token": token_text(&t.bytes),
                    "logprob": t.logprob,
                    "bytes": t.bytes,
                    "top_logprobs": t.top.iter().map(|a| json!({
                        "token": token_text(&a.bytes),
                        "logprob": a.logprob,
                        "bytes": a.bytes,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json!({"content": content, "refusal": null});
    }
    let mut at = offset;
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(at);
        at += t.bytes.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| token_text(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            let mut m = Map::new();
            for a in &t.top {
                m.entry(token_text(&a.bytes)).or_insert(json!(a.logprob));
            }
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_map_onto_constraints() {
        assert_eq!(response_format(None).unwrap(), None);
        assert_eq!(
            response_format(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            response_format(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(Constraint::JsonObject)
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let c = response_format(Some(&json!({"type": "json_schema",
            "json_schema": {"name": "x", "strict": true, "schema": schema}})))
        .unwrap();
        let Some(Constraint::JsonSchema(text)) = c else {
            panic!("a schema constraint")
        };
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), schema);
        let e = response_format(Some(&json!({"type": "json_schema", "json_schema": {}})));
        assert!(matches!(e, Err(NodeError::BadRequest(m)) if m.contains("schema")));
        let e = response_format(Some(&json!({"type": "yaml"})));
        assert!(matches!(e, Err(NodeError::BadRequest(m)) if m.contains("`yaml`")));
        assert_eq!(
            format(Some(&json!("json"))).unwrap(),
            Some(Constraint::JsonObject)
        );
        assert!(format(Some(&json!(3))).is_err());
    }

    #[test]
    fn logprobs_follow_openai_rules() {
        assert_eq!(logprobs(None, None, true).unwrap(), None);
        assert_eq!(logprobs(Some(&json!(true)), None, true).unwrap(), Some(0));
        assert_eq!(
            logprobs(Some(&json!(true)), Some(&json!(5)), true).unwrap(),
            Some(5)
        );
        assert!(logprobs(Some(&json!(false)), Some(&json!(3)), true).is_err());
        assert!(logprobs(Some(&json!(true)), Some(&json!(21)), true).is_err());
        assert_eq!(logprobs(Some(&json!(2)), None, false).unwrap(), Some(2));
        assert!(logprobs(Some(&json!(6)), None, false).is_err());
    }

    #[test]
    fn completion_offsets_count_bytes_from_the_text_already_sent() {
        let t = |b: &[u8]| TokenLogprob {
            bytes: b.to_vec(),
            logprob: -0.5,
            top: vec![],
        };
        let v = logprobs_json(&[t(b"ab"), t(b"c")], false, 10);
        assert_eq!(v["text_offset"], json!([10, 12]));
        assert_eq!(v["tokens"], json!(["ab", "c"]));
        let v = logprobs_json(&[t(b"ab")], true, 0);
        assert_eq!(v["content"][0]["token"], "ab");
        assert_eq!(v["content"][0]["bytes"], json!([97, 98]));
    }
}
