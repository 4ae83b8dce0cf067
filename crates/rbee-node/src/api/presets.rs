//! Ollama's `options` as the shared sampling fields, and presets applied to a request: the
//! OpenAI and Ollama routes both call [`find`] and [`apply_chat`] / [`apply_sampling`], so a
//! preset is usable by name on every route. Precedence: the request's own values, then the
//! preset's PARAMETERs, then the engine's defaults; the preset's SYSTEM when the request has
//! no system message; its MESSAGEs after the system message, before the conversation.
//! A preset with a TEMPLATE has its chat rendered here ([`apply_template`], Ollama's Go
//! template semantics) and sent to the engine as text, so the base's own template is not used.

use rbee_infer::tools::{ToolFormat, messages_value, tools_value};
use rbee_proto::generation::{ChatOptions, Prompt};
use serde_json::{Map, Value};

use super::types::{ChatRequest, Content, InMessage, Sampling};
use crate::NodeContext;
use crate::error::NodeError;
use crate::preset::Preset;
pub(super) use crate::preset::map_options;

/// The preset named `name`: one this node stores, else one a peer shares, unless this node's
/// catalog has a model by that name (a local model is never shadowed by a peer's preset). A
/// preset from the pool is stored here first ([`crate::pull::presets`]), so it is listed and
/// shared from then on. `NAME:latest` that names nothing is `NAME`, as Ollama reads it (the
/// OpenAI routes pass names as the client spelt them).
pub(super) async fn find(ctx: &NodeContext, name: &str) -> Result<Option<Preset>, NodeError> {
    if let Some(p) = find_exact(ctx, name).await? {
        return Ok(Some(p));
    }
    match name.strip_suffix(":latest") {
        Some(bare) if !bare.is_empty() => find_exact(ctx, bare).await,
        _ => Ok(None),
    }
}

async fn find_exact(ctx: &NodeContext, name: &str) -> Result<Option<Preset>, NodeError> {
    if let Some(p) = all(ctx)
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
    {
        return Ok(Some(p));
    }
    let Some(net) = &ctx.net else { return Ok(None) };
    if !rbee_proto::is_valid_name(name)
        || !net
            .peers()
            .iter()
            .any(|p| p.status.find_preset(name).is_some())
    {
        return Ok(None);
    }
    if ctx
        .catalog
        .list()
        .await?
        .iter()
        .any(|r| r.entry.answers_to(name))
    {
        return Ok(None);
    }
    let Some(preset) = crate::pull::presets::fetch(net, name).await? else {
        return Ok(None);
    };
    save_fetched(ctx, name, &preset).await?;
    Ok(Some(preset))
}

/// Stores a preset fetched from the pool under `name`.
async fn save_fetched(ctx: &NodeContext, name: &str, preset: &Preset) -> Result<(), NodeError> {
    let (store, name, preset) = (ctx.store.clone(), name.to_string(), preset.clone());
    tokio::task::spawn_blocking(move || crate::preset::save(&store, &name, &preset))
        .await
        .map_err(|e| NodeError::Internal(format!("saving the preset: {e}")))?
}

/// Every preset this node stores, by name. One that does not parse is skipped with a warning.
pub(super) async fn all(ctx: &NodeContext) -> Result<Vec<(String, Preset)>, NodeError> {
    crate::preset::all_async(&ctx.store).await
}

/// The reference a request for the preset runs on: its base, by content id.
pub(super) fn base_reference(preset: &Preset) -> String {
    format!("cid:{}", preset.base)
}

/// Fills what the request left unset from the preset's PARAMETERs.
pub(super) fn apply_sampling(preset: &Preset, sampling: &mut Sampling) -> Result<(), NodeError> {
    let mut from = Sampling::default();
    map_options(Some(&preset.modelfile.parameters), &mut from)?;
    macro_rules! fill {
        ($($field:ident),*) => {$(
            if sampling.$field.is_none() {
                sampling.$field = from.$field.clone();
            }
        )*};
    }
    fill!(
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        repeat_penalty,
        frequency_penalty,
        presence_penalty,
        seed,
        stop
    );
    Ok(())
}

/// Applies the preset to a chat: its base as the model, its parameters under the request's,
/// its SYSTEM when the request has none, its MESSAGEs before the conversation.
pub(super) fn apply_chat(preset: &Preset, req: &mut ChatRequest) -> Result<(), NodeError> {
    apply_sampling(preset, &mut req.sampling)?;
    req.model = base_reference(preset);
    let text = |role: &str, content: &str| InMessage {
        tool_call_id: None,
        role: role.to_string(),
        content: Some(Content::Text(content.to_string())),
        tool_calls: None,
    };
    let has_system = req
        .messages
        .iter()
        .any(|m| m.role == "system" || m.role == "developer");
    let mut lead: Vec<InMessage> = Vec::new();
    if !has_system && let Some(system) = &preset.modelfile.system {
        lead.push(text("system", system));
    }
    let leading_system = req
        .messages
        .iter()
        .take_while(|m| m.role == "system" || m.role == "developer")
        .count();
    lead.extend(
        preset
            .modelfile
            .messages
            .iter()
            .map(|m| text(&m.role, &m.content)),
    );
    let at = if has_system { leading_system } else { 0 };
    req.messages.splice(at..at, lead);
    Ok(())
}

/// Renders a chat job's conversation through the preset's TEMPLATE, as Ollama renders it,
/// into the text the engine continues. Without a TEMPLATE the job is left to the base
/// model's own chat template.
///
/// Tools: a template that writes `.Tools` gets them (and the history's calls as `.ToolCalls`)
/// and the reply is read back by the same parsers as any chat ([`rbee_infer::tools`] reads
/// every family's call format). A template that does not write `.Tools` gets them in the
/// generic format: a system message describing the tools and asking for
/// `<tool_call>{…}</tool_call>`, earlier calls and results written into the turns' text.
/// A forced call (`tool_choice: required` or a named function) is constrained to the base
/// model's own call format, which the same parsers read.
pub(super) fn apply_template(
    preset: &Preset,
    chat: &mut ChatOptions,
    prompts: Vec<Prompt>,
) -> Result<Vec<Prompt>, NodeError> {
    let Some(source) = &preset.modelfile.template else {
        return Ok(prompts);
    };
    let template = crate::gotemplate::Template::parse(source)
        .map_err(|e| NodeError::BadRequest(format!("preset's {e}")))?;
    let mut extra = Map::new();
    for (name, json) in std::mem::take(&mut chat.template_kwargs) {
        let v: Value = serde_json::from_str(&json).unwrap_or(Value::String(json.clone()));
        match name.as_str() {
            "enable_thinking" => {
                extra.insert("Think".into(), Value::Bool(v.as_bool().unwrap_or(true)));
                extra.insert("IsThinkSet".into(), Value::Bool(true));
            }
            "reasoning_effort" => {
                extra.insert("Think".into(), Value::Bool(true));
                extra.insert("IsThinkSet".into(), Value::Bool(true));
                extra.insert("ThinkLevel".into(), v);
            }
            other => {
                return Err(NodeError::BadRequest(format!(
                    "`chat_template_kwargs.{other}`: this preset renders its own Ollama TEMPLATE, which takes only `enable_thinking` (`think`) and `reasoning_effort`; remove it"
                )));
            }
        }
    }
    let tools = chat.tools.clone();
    let format = if template.uses_tools() {
        ToolFormat::Hermes
    } else {
        ToolFormat::Generic
    };
    let tools_json: Vec<Value> = if template.uses_tools() {
        tools_value(&tools).as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let Prompt::Chat(messages) = prompt else {
            out.push(prompt);
            continue;
        };
        rbee_infer::chat::check_messages(&messages)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let msgs = messages_value(&messages, format, &tools);
        let msgs = msgs.as_array().cloned().unwrap_or_default();
        let text = template
            .render_chat(&msgs, &tools_json, &extra)
            .map_err(|e| NodeError::BadRequest(format!("preset's {e}")))?;
        out.push(Prompt::Text(text));
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::types::Stop;
    use crate::preset::{Modelfile, PresetMessage};
    use serde_json::{Map, Value, json};

    fn options(v: Value) -> Result<(Sampling, Option<u64>), NodeError> {
        let mut s = Sampling::default();
        let n = map_options(v.as_object(), &mut s)?;
        Ok((s, n))
    }

    #[test]
    fn options_map_onto_the_shared_sampling_fields() {
        let (s, n) = options(json!({"num_ctx": 8192, "num_predict": 12, "temperature": 0,
            "top_k": 5, "top_p": 0.9, "min_p": 0.1, "repeat_penalty": 1.1, "seed": 42,
            "stop": ["\n", "###"], "num_thread": 4, "repeat_last_n": 64, "mirostat": 0}))
        .unwrap();
        assert_eq!(n, Some(8192));
        assert_eq!(s.max_tokens, Some(12));
        assert_eq!(s.temperature, Some(0.0));
        assert_eq!((s.top_k, s.seed), (Some(5), Some(42)));
        assert_eq!(
            (s.top_p, s.min_p, s.repeat_penalty),
            (Some(0.9), Some(0.1), Some(1.1))
        );
        assert!(matches!(s.stop, Some(Stop::Many(v)) if v == ["\n", "###"]));
        assert_eq!(
            options(json!({"num_predict": -1})).unwrap().0.max_tokens,
            None
        );
        assert_eq!(
            options(json!({"num_predict": -2})).unwrap().0.max_tokens,
            None
        );
        for (bad, field) in [
            (json!({"num_ctx": 0}), "options.num_ctx"),
            (json!({"num_predict": 0}), "options.num_predict"),
            (json!({"temperature": "hot"}), "options.temperature"),
            (json!({"mirostat": 2}), "options.mirostat"),
            (json!({"repeat_last_n": 128}), "options.repeat_last_n"),
            (json!({"frobnicate": 1}), "options.frobnicate"),
        ] {
            let msg = options(bad.clone()).unwrap_err().to_string();
            assert!(msg.contains(field), "{bad}: {msg}");
        }
    }

    pub(in crate::api) fn preset() -> Preset {
        let mut parameters = Map::new();
        parameters.insert("temperature".into(), json!(0.2));
        parameters.insert("top_k".into(), json!(7));
        parameters.insert("stop".into(), json!(["###"]));
        Preset {
            base: "ab".repeat(32),
            base_name: "gemma".into(),
            modelfile: Modelfile {
                from: "gemma".into(),
                template: None,
                system: Some("Be Mario.".into()),
                parameters,
                messages: vec![PresetMessage {
                    role: "user".into(),
                    content: "Who are you?".into(),
                }],
                license: vec![],
            },
        }
    }

    pub(in crate::api) fn chat(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn request_values_override_preset_parameters_which_override_defaults() {
        let mut req = chat(json!({"model": "mario", "temperature": 0.9,
            "messages": [{"role": "user", "content": "hi"}]}));
        apply_chat(&preset(), &mut req).unwrap();
        assert_eq!(req.model, format!("cid:{}", "ab".repeat(32)));
        assert_eq!(req.sampling.temperature, Some(0.9), "the request's own");
        assert_eq!(req.sampling.top_k, Some(7), "the preset's");
        assert_eq!(req.sampling.top_p, None, "the engine's default");
        assert!(matches!(&req.sampling.stop, Some(Stop::Many(v)) if v == &["###"]));
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(
            roles,
            ["system", "user", "user"],
            "SYSTEM, MESSAGE, the chat"
        );
    }

    #[test]
    fn the_requests_own_system_message_wins() {
        let mut req = chat(json!({"model": "mario", "messages": [
            {"role": "system", "content": "Be Luigi."}, {"role": "user", "content": "hi"}]}));
        apply_chat(&preset(), &mut req).unwrap();
        let texts: Vec<String> = req
            .messages
            .iter()
            .map(|m| match &m.content {
                Some(Content::Text(t)) => t.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(texts, ["Be Luigi.", "Who are you?", "hi"]);
    }
}
