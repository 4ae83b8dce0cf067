//! Tool calling, structured output and logprobs through a real `rbee-node join` process and
//! the unmodified openai and langchain-openai clients (`tests/python/tools_client.py`): a tiny
//! random-weight model with Qwen 2.5's tool template, whose calls and objects are well formed
//! only because the grammar forces them, and the real demo model.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rbee_tests::{NodeProcess, import_demo, import_model, workspace_root};

/// tiny-qwen2 (byte-level BPE, random weights) with Qwen 2.5's tool-calling template and a
/// context long enough for its tool instructions in byte-sized tokens.
fn tool_model(dir: &Path) -> PathBuf {
    let reference = workspace_root().join("crates/rbee-infer/tests/reference");
    let template = std::fs::read_to_string(reference.join("qwen2.5-tools.jinja")).unwrap();
    let mut w = rbee_format::gguf::GgufWriter::copy_of(
        &reference.join("tiny-qwen2.gguf"),
        &["tokenizer.chat_template", "qwen2.context_length"],
    )
    .unwrap();
    w.add("tokenizer.chat_template", template)
        .add("qwen2.context_length", 4096u32);
    let path = dir.join("tiny-qwen2-tools.gguf");
    w.write_file(&path).unwrap();
    path
}

#[test]
fn openai_and_langchain_tool_calls_structured_output_and_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    if import_demo(&data, "demo").is_none() {
        return;
    }
    import_model(&data, &tool_model(tmp.path()), "toolie");
    let node = NodeProcess::start(&data, &[]);
    let url = node.url("/v1");
    rbee_tests::run_python_clients(
        "tools_client.py",
        &[url.as_ref(), "toolie".as_ref(), "demo".as_ref()],
        &node,
    );
}
