//! Chat templates: the model's own Jinja template (`tokenizer.chat_template` in a GGUF, or
//! `chat_template` in tokenizer_config.json), rendered with minijinja the way HuggingFace
//! renders it (trim_blocks, lstrip_blocks, Python string methods), or a built-in template for
//! the architecture when the model ships none.

use minijinja::{Environment, ErrorKind, Value};

pub use rbee_proto::generation::{ChatMessage, ChatOptions, MessagesError, check_messages};

use crate::tools::{ToolFormat, messages_value, tools_value};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template failed to render: {0}")]
    Render(String),
    #[error(transparent)]
    Messages(#[from] MessagesError),
}

/// Gemma has no system role: system messages are prepended to the next user turn (several
/// in a row are all kept, in order), and ones that no user turn follows become a user turn of
/// their own, so no instruction is ever dropped.
const GEMMA: &str = "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = ns.sys ~ (m.content | trim) ~ '\n\n' %}{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}
{{ ('' if m.role == 'assistant' else ns.sys) ~ m.content | trim }}<end_of_turn>
{% if m.role != 'assistant' %}{% set ns.sys = '' %}{% endif %}{% endif %}{% endfor %}{% if ns.sys %}<start_of_turn>user
{{ ns.sys | trim }}<end_of_turn>
{% endif %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}";

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{{ m.content | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}";

/// As Gemma's: every system message is kept, on the next user turn, or on a turn of its own
/// when none follows.
const LLAMA2: &str = "{{ bos_token }}{% set ns = namespace(sys='') %}{% macro inst(sys, text) %}[INST] {% if sys %}<<SYS>>\n{{ sys | trim }}\n<</SYS>>\n\n{% endif %}{{ text | trim }} [/INST]{% endmacro %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = ns.sys ~ (m.content | trim) ~ '\n\n' %}{% elif m.role == 'assistant' %} {{ m.content | trim }}{{ eos_token }}{% else %}{{ inst(ns.sys, m.content) }}{% set ns.sys = '' %}{% endif %}{% endfor %}{% if ns.sys %}{{ inst(ns.sys, '') }}{% endif %}";

const PHI3: &str = "{% for m in messages %}<|{{ m.role }}|>
{{ m.content }}<|end|>
{% endfor %}{% if add_generation_prompt %}<|assistant|>
{% endif %}";

/// The built-in template for an architecture; `has_token` tells which special tokens the
/// vocabulary has, to tell Llama 3 from Llama 2/Mistral.
pub fn builtin_template(architecture: &str, has_token: impl Fn(&str) -> bool) -> &'static str {
    match architecture {
        "gemma" | "gemma2" | "gemma3" => GEMMA,
        "qwen2" | "qwen3" => CHATML,
        "phi3" => PHI3,
        _ if has_token("<|start_header_id|>") => LLAMA3,
        _ if has_token("<|im_start|>") => CHATML,
        _ => LLAMA2,
    }
}

/// `value` as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it.
fn python_json(value: &Value, indent: Option<usize>) -> Result<String, serde_json::Error> {
    use serde::Serialize;
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(&pad),
            );
            value.serialize(&mut ser)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
            value.serialize(&mut ser)?;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// serde_json's compact output with Python's default separators.
struct PythonFormatter;

/// `", "` before every item but the first, of a list or an object.
fn python_separator<W: ?Sized + std::io::Write>(
    writer: &mut W,
    first: bool,
) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The model's own template (true) or our built-in one (false).
    pub from_model: bool,
    /// How this template's model writes tool calls ([`ToolFormat::Generic`] when the template
    /// knows no tools).
    pub tool_format: ToolFormat,
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        from_model: bool,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        // transformers' `tojson`: keys in their order, Python's `json.dumps` separators
        // (`", "`, `": "`), non-ASCII kept, and `indent=N`; minijinja's own sorts keys and
        // writes no spaces, so a tool list would not be what the model was trained on.
        env.add_filter(
            "tojson",
            |v: Value, kwargs: minijinja::value::Kwargs| -> Result<String, minijinja::Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                kwargs.assert_all_used()?;
                python_json(&v, indent)
                    .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use it for "Today is …"; a fixed, honest answer beats the wall clock
            // leaking into reproducible prompts.
            String::new()
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            from_model,
            tool_format: ToolFormat::of_template(source),
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with(messages, &ChatOptions::default(), add_generation_prompt)
    }

    /// Renders `messages` with the request's tools (as `tools`, the list of
    /// `{"type": "function", "function": {…}}` HuggingFace templates read, or in the generic
    /// format of [`crate::tools`] when the template knows no tools), assistant turns'
    /// `tool_calls` and tool results' `tool_call_id`, and the template variables of
    /// `options.template_kwargs` (`enable_thinking`, `reasoning_effort`, …; they cannot
    /// replace `messages`, `tools` or the special tokens).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        options: &ChatOptions,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        check_messages(messages)?;
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let mut vars = std::collections::BTreeMap::new();
        for (name, json) in &options.template_kwargs {
            let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                ChatError::Render(format!("template variable `{name}` is not JSON: {e}"))
            })?;
            vars.insert(name.clone(), Value::from_serialize(&value));
        }
        let msgs = messages_value(messages, self.tool_format, &options.tools);
        vars.insert("messages".into(), Value::from_serialize(&msgs));
        vars.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        vars.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        vars.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        if options.tools.is_empty() || self.tool_format == ToolFormat::Generic {
            vars.remove("tools");
        } else {
            vars.insert(
                "tools".into(),
                Value::from_serialize(tools_value(&options.tools)),
            );
        }
        tmpl.render(Value::from_serialize(&vars))
            .map_err(|e| ChatError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "  Hi! "),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Name a colour."),
        ]
    }

    #[test]
    fn gemma_builtin_matches_the_official_format() {
        let t = ChatTemplate::new(
            builtin_template("gemma3", |_| false),
            "<bos>",
            "<eos>",
            false,
        )
        .unwrap();
        let text = t.render(&msgs(), true).unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn gemma_builtin_keeps_every_system_message() {
        let t = ChatTemplate::new(
            builtin_template("gemma3", |_| false),
            "<bos>",
            "<eos>",
            false,
        )
        .unwrap();
        let chat = [
            ChatMessage::new("system", "One."),
            ChatMessage::new("system", "Two."),
            ChatMessage::new("user", "Hi!"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("system", "Three."),
            ChatMessage::new("user", "Go."),
            ChatMessage::new("system", "Four."),
        ];
        assert_eq!(
            t.render(&chat, true).unwrap(),
            "<bos><start_of_turn>user\nOne.\n\nTwo.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nThree.\n\nGo.<end_of_turn>\n<start_of_turn>user\nFour.<end_of_turn>\n<start_of_turn>model\n"
        );
        // Many system messages are all in the prompt, not only the last one.
        let many: Vec<_> = (0..100)
            .map(|i| ChatMessage::new("system", format!("rule {i}")))
            .chain([ChatMessage::new("user", "ok")])
            .collect();
        let text = t.render(&many, true).unwrap();
        assert!(
            text.contains("rule 0") && text.contains("rule 99"),
            "{text}"
        );
    }

    #[test]
    fn llama2_builtin_keeps_every_system_message() {
        let t =
            ChatTemplate::new(builtin_template("llama", |_| false), "<s>", "</s>", false).unwrap();
        let chat = [
            ChatMessage::new("system", "One."),
            ChatMessage::new("system", "Two."),
            ChatMessage::new("user", "Hi!"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("system", "Three."),
        ];
        assert_eq!(
            t.render(&chat, true).unwrap(),
            "<s>[INST] <<SYS>>\nOne.\n\nTwo.\n<</SYS>>\n\nHi! [/INST] Hello.</s>[INST] <<SYS>>\nThree.\n<</SYS>>\n\n [/INST]"
        );
    }

    #[test]
    fn chatml_and_llama3_builtins() {
        let t = ChatTemplate::new(
            builtin_template("qwen3", |_| false),
            "",
            "<|im_end|>",
            false,
        )
        .unwrap();
        let text = t.render(&msgs()[1..2], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\n  Hi! <|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::new(
            builtin_template("llama", |tok| tok == "<|start_header_id|>"),
            "<|begin_of_text|>",
            "<|eot_id|>",
            false,
        )
        .unwrap();
        let text = t.render(&msgs()[1..2], true).unwrap();
        assert!(text.starts_with(
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        ));
    }

    #[test]
    fn model_templates_with_python_methods_and_exceptions() {
        let src = "{% for m in messages %}{% if m.role not in ['user','assistant'] %}{{ raise_exception('roles must alternate') }}{% endif %}{{ m.content.strip().upper() }}|{% endfor %}";
        let t = ChatTemplate::new(src, "", "", true).unwrap();
        assert_eq!(t.render(&msgs()[1..3], false).unwrap(), "HI!|HELLO.|");
        let err = t.render(&msgs(), false).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn bad_input_is_refused() {
        let t = ChatTemplate::new(CHATML, "", "", false).unwrap();
        assert!(matches!(
            t.render(&[], true),
            Err(ChatError::Messages(MessagesError::Empty))
        ));
        let bad = [ChatMessage::new("root", "x")];
        assert!(matches!(
            t.render(&bad, true),
            Err(ChatError::Messages(MessagesError::BadRole { .. }))
        ));
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", "", true),
            Err(ChatError::Compile(_))
        ));
    }

    #[test]
    fn qwen_template_renders_tools_calls_results_and_kwargs() {
        use rbee_proto::generation::{ToolCall, ToolDef};
        let source = include_str!("../tests/reference/qwen2.5-tools.jinja");
        let t = ChatTemplate::new(source, "", "<|im_end|>", true).unwrap();
        assert_eq!(t.tool_format, ToolFormat::Hermes);
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city": "Paris"}"#.into(),
        }];
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("c1".into());
        let chat = [ChatMessage::new("user", "Weather in Paris?"), call, result];
        let options = ChatOptions {
            tools: vec![ToolDef {
                name: "get_weather".into(),
                description: "Weather in a city".into(),
                parameters: r#"{"type": "object", "properties": {"city": {"type": "string"}}}"#
                    .into(),
            }],
            template_kwargs: Vec::new(),
        };
        let text = t.render_with(&chat, &options, true).unwrap();
        assert!(text.contains("# Tools"), "{text}");
        assert!(
            text.contains(r#"{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}"#),
            "the tool as JSON: {text}"
        );
        assert!(
            text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"),
            "the call: {text}"
        );
        assert!(
            text.contains("<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>"),
            "the result: {text}"
        );
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
        // Without tools the template's plain branch runs.
        let plain = t.render(&chat[..1], true).unwrap();
        assert!(!plain.contains("# Tools"), "{plain}");
        // Template variables reach the template, and cannot replace the messages.
        let t = ChatTemplate::new(
            "{{ messages | length }}{% if enable_thinking is defined and not enable_thinking %} no-think{% endif %} {{ reasoning_effort }}",
            "",
            "",
            true,
        )
        .unwrap();
        let options = ChatOptions {
            tools: Vec::new(),
            template_kwargs: vec![
                ("enable_thinking".into(), "false".into()),
                ("reasoning_effort".into(), "\"low\"".into()),
                ("messages".into(), "[]".into()),
            ],
        };
        assert_eq!(
            t.render_with(&chat, &options, true).unwrap(),
            "3 no-think low"
        );
        let bad = ChatOptions {
            tools: Vec::new(),
            template_kwargs: vec![("x".into(), "{not json".into())],
        };
        assert!(t.render_with(&chat, &bad, true).is_err());
    }
}
