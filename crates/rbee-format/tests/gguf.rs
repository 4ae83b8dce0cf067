//! Round trips through the writer and reader, and one test per error path.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::*;
use rbee_format::gguf::*;

fn f32s(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn every_value_type_round_trips() {
    let nested = Array::Array(vec![
        Array::U8(vec![1, 2]),
        Array::Array(vec![Array::String(vec!["x".into()])]),
    ]);
    let values: Vec<(&str, Value)> = vec![
        ("u8", 7u8.into()),
        ("i8", (-7i8).into()),
        ("u16", 700u16.into()),
        ("i16", (-700i16).into()),
        ("u32", 70_000u32.into()),
        ("i32", (-70_000i32).into()),
        ("f32", 1.5f32.into()),
        ("bool", true.into()),
        ("string", "héllo".into()),
        ("u64", u64::MAX.into()),
        ("i64", i64::MIN.into()),
        ("f64", 2.25f64.into()),
        ("a.u8", vec![1u8, 2].into()),
        ("a.i8", vec![-1i8].into()),
        ("a.u16", vec![1u16].into()),
        ("a.i16", vec![-1i16].into()),
        ("a.u32", vec![1u32].into()),
        ("a.i32", vec![-1i32, 5].into()),
        ("a.f32", vec![0.5f32].into()),
        ("a.bool", vec![true, false].into()),
        ("a.str", vec!["a", "", "ü"].into()),
        ("a.u64", vec![u64::MAX].into()),
        ("a.i64", vec![i64::MIN].into()),
        ("a.f64", vec![1e300f64].into()),
        ("a.empty", Vec::<u16>::new().into()),
        ("a.nested", nested.into()),
    ];
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.add(*k, v.clone());
    }
    w.add_tensor("a", &[4, 2], GgmlType::F32, f32s(8))
        .add_tensor("b", &[32], GgmlType::Q8_0, vec![9u8; 34])
        .add_tensor("c", &[256, 2], GgmlType::Q4_K, vec![3u8; 288]);
    let bytes = w.to_bytes().unwrap();
    let file = read(&bytes).unwrap();

    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 32);
    assert_eq!(file.file_size, bytes.len() as u64);
    let got: Vec<(&str, &Value)> = file.metadata.iter().collect();
    let want: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    assert_eq!(got, want);
    assert_eq!(
        file.metadata
            .get("a.empty")
            .unwrap()
            .as_array()
            .unwrap()
            .elem_type_id(),
        2
    );

    let shapes: Vec<_> = file
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.clone(), t.dtype, t.size))
        .collect();
    assert_eq!(
        shapes,
        [
            ("a", vec![4, 2], GgmlType::F32, 32),
            ("b", vec![32], GgmlType::Q8_0, 34),
            ("c", vec![256, 2], GgmlType::Q4_K, 288)
        ]
    );
    assert_eq!(file.data_offset % 32, 0);
    for t in &file.tensors {
        assert_eq!((t.offset - file.data_offset) % 32, 0, "{}", t.name);
    }
    let a = file.tensor("a").unwrap();
    assert_eq!(&bytes[a.offset as usize..][..32], f32s(8).as_slice());
    let c = file.tensor("c").unwrap();
    assert_eq!(c.offset + c.size, bytes.len() as u64);
    assert_eq!(c.n_elements(), 512);
}

#[test]
fn typed_getters() {
    let mut md = Metadata::new();
    md.insert("i32", 5i32);
    md.insert("neg", -5i32);
    md.insert("u8", 200u8);
    md.insert("f64", 0.5f64);
    md.insert("flag", true);
    md.insert("s", "x");
    md.insert("toks", vec!["a", "b"]);
    assert_eq!(md.get_u64("i32"), Some(5));
    assert_eq!(md.get_u64("neg"), None);
    assert_eq!(md.get_u64("u8"), Some(200));
    assert_eq!(md.get_f32("f64"), Some(0.5));
    assert_eq!(md.get_bool("flag"), Some(true));
    assert_eq!(md.get_str("s"), Some("x"));
    assert_eq!(md.get_str("i32"), None);
    assert_eq!(
        md.get_str_array("toks"),
        Some(&["a".to_string(), "b".to_string()][..])
    );
    assert_eq!(md.insert("s", "y"), Some(Value::from("x")));
    assert_eq!(md.remove("i32"), Some(Value::I32(5)));
    assert_eq!(md.get_u64("u8"), Some(200));
    assert_eq!(
        md.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        ["neg", "u8", "f64", "flag", "s", "toks"]
    );
}

#[test]
fn tiny_model_validates_whatever_its_architecture() {
    // Structure only: architectures no build of rbee runs are well-formed models too.
    for arch in [
        "llama", "qwen2", "qwen3", "gemma3", "phi3", "mamba", "rwkv6", "bert",
    ] {
        let file = read(&tiny(arch)).unwrap();
        assert_eq!(file.architecture(), Some(arch));
        let s = validate(&file).unwrap_or_else(|e| panic!("{arch}: {e}"));
        // token_embd 8x4, output_norm 8, per block: norm 8, attention 3x64 (or 8x24), ffn_down 16x8.
        assert_eq!(s.parameter_count, 32 + 8 + 2 * (8 + 192 + 128), "{arch}");
        assert_eq!(
            s,
            ModelSummary {
                architecture: arch.to_string(),
                quantization: "F32".into(),
                parameter_count: s.parameter_count,
                context_length: 128,
                tokenizer_model: Some("llama".into()),
                name: Some(format!("tiny-{arch}")),
            }
        );
    }
}

#[test]
fn open_file_version_2_and_custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut w = GgufWriter::tiny_model("qwen3");
    w.set_version(2).set_alignment(64);
    let written = w.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        (file.version, file.alignment, file.file_size),
        (2, 64, written)
    );
    assert!(file.tensors.iter().all(|t| t.offset % 64 == 0));
    validate(&file).unwrap();

    let err = GgufFile::open(&dir.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot open ") && err.contains("nope.gguf"),
        "{err}"
    );
}

#[test]
fn quantization_from_file_type_or_dominant_tensor_type() {
    let mut file = read(&tiny("llama")).unwrap();
    file.metadata.insert("general.file_type", 15u32);
    assert_eq!(validate(&file).unwrap().quantization, "Q4_K_M");
    file.metadata.insert("general.file_type", 999u32);
    assert_eq!(validate(&file).unwrap().quantization, "F32");
    file.metadata.insert("general.file_type", "q4");
    assert_eq!(
        validate(&file).unwrap_err().to_string(),
        "general.file_type has type string, expected an integer"
    );

    file.metadata.remove("general.file_type");
    let t = &mut file.tensors[0];
    (t.dtype, t.size) = (GgmlType::Q8_0, 1 << 20);
    assert_eq!(validate(&file).unwrap().quantization, "Q8_0");
}

// ---- validate errors ----

fn validate_err(arch: &str, edit: impl FnOnce(&mut GgufFile)) -> String {
    let mut file = read(&tiny(arch)).unwrap();
    edit(&mut file);
    validate(&file).unwrap_err().to_string()
}

#[test]
fn missing_or_mistyped_keys() {
    let e = validate_err("gemma3", |f| drop(f.metadata.remove("gemma3.block_count")));
    assert_eq!(e, "gemma3.block_count missing");
    let e = validate_err("gemma3", |f| {
        drop(f.metadata.insert("gemma3.block_count", "two"))
    });
    assert_eq!(e, "gemma3.block_count has type string, expected an integer");
    let e = validate_err("qwen2", |f| {
        drop(f.metadata.insert("qwen2.context_length", -1i32))
    });
    assert_eq!(
        e,
        "qwen2.context_length has type negative i32, expected an integer"
    );
    let e = validate_err("phi3", |f| drop(f.metadata.remove("phi3.embedding_length")));
    assert_eq!(e, "phi3.embedding_length missing");
    let e = validate_err("mamba", |f| drop(f.metadata.remove("mamba.context_length")));
    assert_eq!(e, "mamba.context_length missing");
    let e = validate_err("llama", |f| {
        drop(f.metadata.insert("general.architecture", 3u32))
    });
    assert_eq!(e, "general.architecture has type u32, expected a string");
    let e = validate_err("llama", |f| drop(f.metadata.remove("general.architecture")));
    assert_eq!(e, "general.architecture missing");
    let e = validate_err("llama", |f| drop(f.metadata.remove("tokenizer.ggml.model")));
    assert_eq!(e, "tokenizer.ggml.model missing");
    let e = validate_err("llama", |f| {
        drop(f.metadata.remove("tokenizer.ggml.tokens"))
    });
    assert_eq!(e, "tokenizer.ggml.tokens missing");
    let e = validate_err("llama", |f| {
        drop(f.metadata.insert("tokenizer.ggml.tokens", vec![1u32]))
    });
    assert_eq!(
        e,
        "tokenizer.ggml.tokens has type array, expected an array of strings"
    );
}

/// The keys and tensors only some architectures have (llama.cpp reads the feed-forward width
/// and head count as optional or per layer; a state-space block has no attention) are an
/// engine's to require, not the format's.
#[test]
fn a_model_of_another_layout_is_well_formed() {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "mamba")
        .add("mamba.block_count", 2u32)
        .add("mamba.context_length", 1u32 << 20)
        .add("mamba.embedding_length", 8u32)
        .add("mamba.ssm.state_size", 16u32)
        .add("tokenizer.ggml.model", "gpt2")
        .add("tokenizer.ggml.tokens", vec!["a", "b"]);
    w.add_tensor("token_embd.weight", &[8, 2], GgmlType::F32, f32s(16));
    for i in 0..2 {
        w.add_tensor(
            format!("blk.{i}.attn_norm.weight"),
            &[8],
            GgmlType::F32,
            f32s(8),
        )
        .add_tensor(
            format!("blk.{i}.ssm_in.weight"),
            &[8, 32],
            GgmlType::F32,
            f32s(256),
        )
        .add_tensor(
            format!("blk.{i}.ssm_out.weight"),
            &[16, 8],
            GgmlType::F32,
            f32s(128),
        );
    }
    let s = validate(&read(&w.to_bytes().unwrap()).unwrap()).unwrap();
    assert_eq!(
        (s.architecture.as_str(), s.context_length, s.parameter_count),
        ("mamba", 1 << 20, 16 + 2 * (8 + 256 + 128))
    );
    assert_eq!(s.tokenizer_model.as_deref(), Some("gpt2"));

    // A transformer without what only some engines read is well-formed too.
    let mut file = read(&tiny("llama")).unwrap();
    file.metadata.remove("llama.feed_forward_length");
    file.metadata.remove("llama.attention.head_count");
    file.tensors
        .retain(|t| !t.name.ends_with("ffn_down.weight") && !t.name.contains("attn_q"));
    assert_eq!(validate(&file).unwrap().architecture, "llama");
}

#[test]
fn missing_tensors() {
    let drop_tensor =
        |name: &'static str| move |f: &mut GgufFile| f.tensors.retain(|t| t.name != name);
    assert_eq!(
        validate_err("llama", drop_tensor("token_embd.weight")),
        "tensor token_embd.weight missing"
    );
    let drop_block = |i: u64| {
        move |f: &mut GgufFile| {
            f.tensors
                .retain(|t| !t.name.starts_with(&format!("blk.{i}.")))
        }
    };
    assert_eq!(
        validate_err("qwen3", drop_block(1)),
        "qwen3.block_count is 2, but block 1 has no tensors (blk.1.*)"
    );
    assert_eq!(
        validate_err("mamba", drop_block(0)),
        "mamba.block_count is 2, but block 0 has no tensors (blk.0.*)"
    );
    // Tensors named like a block but not in one ("blk.1" alone, "blk.x.") count for none.
    let e = validate_err("gemma3", |f| {
        drop_block(1)(f);
        for t in &mut f.tensors {
            if t.name == "blk.0.ffn_down.weight" {
                t.name = "blk.1".into();
            } else if t.name == "blk.0.attn_norm.weight" {
                t.name = "blk.x.attn_norm.weight".into();
            }
        }
    });
    assert_eq!(
        e,
        "gemma3.block_count is 2, but block 1 has no tensors (blk.1.*)"
    );
    // Which tensors a block holds is the engine's business: one is enough here.
    let mut file = read(&tiny("phi3")).unwrap();
    file.tensors
        .retain(|t| !t.name.starts_with("blk.") || t.name.ends_with("attn_norm.weight"));
    validate(&file).unwrap();
    // A huge block_count fails at the first absent block instead of looping.
    let e = validate_err("llama", |f| {
        drop(f.metadata.insert("llama.block_count", u64::MAX))
    });
    assert_eq!(
        e,
        "llama.block_count is 18446744073709551615, but block 2 has no tensors (blk.2.*)"
    );
}

// ---- read errors ----

#[test]
fn bad_magic_and_versions() {
    let mut b = tiny("llama");
    b[..4].copy_from_slice(b"GGML");
    // What the file holds stays out of the message (an API client may name any path).
    assert_eq!(
        read_err(&b),
        r#"not a GGUF file: it does not start with the bytes "GGUF""#
    );
    let mut b = tiny("llama");
    put_u32(&mut b, 4, 1);
    assert_eq!(
        read_err(&b),
        "GGUF version 1 is not supported (only versions 2 and 3)"
    );
    put_u32(&mut b, 4, 3u32.swap_bytes());
    assert_eq!(read_err(&b), "big-endian GGUF files are not supported");
    assert_eq!(
        read_err(b"GG"),
        "truncated file: magic at offset 0 needs 4 bytes, only 2 remain"
    );
}

#[test]
fn truncated_header() {
    let b = tiny("llama");
    // Counts are checked against the bytes left before any entry is read.
    assert_eq!(
        read_err(&b[..40]),
        "truncated file: 12 metadata entries at offset 24 needs 156 bytes, only 16 remain"
    );
    let p = find(&b, b"</s>");
    assert_eq!(
        read_err(&b[..p + 2]),
        format!(
            "truncated file: value of tokenizer.ggml.tokens at offset {p} needs 4 bytes, only 2 remain"
        )
    );
    let p = tensor_info_pos(&b, "blk.1.ffn_down.weight");
    assert_eq!(
        read_err(&b[..p + 6]),
        format!(
            "truncated file: tensor info blk.1.ffn_down.weight at offset {} needs 8 bytes, only 2 remain",
            p + 4
        )
    );
}

#[test]
fn tensor_past_end_of_file() {
    let b = tiny("qwen2");
    let t = read(&b)
        .unwrap()
        .tensor("blk.1.ffn_down.weight")
        .unwrap()
        .clone();
    let cut = b.len() - 1;
    assert_eq!(
        read_err(&b[..cut]),
        format!(
            "tensor blk.1.ffn_down.weight extends past end of file (offset {}, size 512, file size {cut})",
            t.offset
        )
    );
    // An offset near u64::MAX must not wrap around.
    let mut b = b.clone();
    let at = tensor_info_pos(&b, "token_embd.weight") + 4 + 16 + 4;
    put_u64(&mut b, at, u64::MAX - 31);
    assert!(read_err(&b).starts_with(
        "tensor token_embd.weight extends past end of file (offset 18446744073709551615"
    ));
}

#[test]
fn misaligned_and_bad_alignment() {
    let mut w = GgufWriter::new();
    w.add("general.alignment", 64u32)
        .add_tensor("a", &[4], GgmlType::F32, f32s(4))
        .add_tensor("b", &[4], GgmlType::F32, f32s(4));
    assert_eq!(
        read_err(&w.to_bytes().unwrap()),
        "tensor b offset 32 is not a multiple of the alignment 64"
    );
    for bad in [0u32, 48] {
        let mut w = GgufWriter::new();
        w.add("general.alignment", bad);
        assert_eq!(
            read_err(&w.to_bytes().unwrap()),
            format!("general.alignment {bad} is not a nonzero power of two")
        );
    }
    let mut w = GgufWriter::new();
    w.add("general.alignment", "32");
    assert_eq!(
        read_err(&w.to_bytes().unwrap()),
        "general.alignment has type string, expected an unsigned integer"
    );
}

#[test]
fn huge_lengths_and_counts() {
    let b = tiny("llama");
    let patched = |at: usize, v: u64| {
        let mut b = b.clone();
        put_u64(&mut b, at, v);
        read_err(&b)
    };
    assert_eq!(
        patched(8, u64::MAX),
        "tensor count is 18446744073709551615, limit is 1048576"
    );
    assert_eq!(
        patched(16, 1 << 40),
        "metadata entry count is 1099511627776, limit is 1048576"
    );
    let e = patched(8, 100_000);
    assert!(
        e.starts_with("truncated file: 100000 tensor infos at offset ")
            && e.contains("needs 3200000 bytes"),
        "{e}"
    );
    let e = patched(16, 1_000_000);
    assert!(
        e.starts_with("truncated file: 1000000 metadata entries at offset 24 needs 13000000 bytes"),
        "{e}"
    );

    let name = value_pos(&b, "general.name");
    assert_eq!(
        patched(name, u64::MAX),
        "value of general.name length is 18446744073709551615, limit is 16777216"
    );
    assert!(patched(name, 1 << 20).starts_with(&format!(
        "truncated file: value of general.name at offset {}",
        name + 8
    )));
    assert_eq!(
        patched(24, 1 << 16),
        "key of metadata entry #0 length is 65536, limit is 65535"
    );

    let count = value_pos(&b, "tokenizer.ggml.tokens") + 4;
    assert_eq!(
        patched(count, u64::MAX),
        "array length of tokenizer.ggml.tokens is 18446744073709551615, limit is 16777216"
    );
    assert!(
        patched(count, 1 << 24)
            .starts_with("truncated file: 16777216 elements of tokenizer.ggml.tokens")
    );
}

#[test]
fn invalid_utf8_names_the_key() {
    let b = tiny("llama");
    let mut v = b.clone();
    v[find(&b, b"tiny-llama")] = 0xff;
    assert_eq!(read_err(&v), "value of general.name is not valid UTF-8");
    let mut k = b.clone();
    k[32] = 0xc3;
    assert_eq!(read_err(&k), "key of metadata entry #0 is not valid UTF-8");
    let mut a = b.clone();
    a[find(&b, b"</s>")] = 0x80;
    assert_eq!(read_err(&a), "tokenizer.ggml.tokens[2] is not valid UTF-8");
}

#[test]
fn duplicates() {
    let mut w = GgufWriter::new();
    w.add("general.name", "a").add("general.name", "b");
    assert_eq!(
        read_err(&w.to_bytes().unwrap()),
        "duplicate metadata key general.name"
    );
    let mut w = GgufWriter::new();
    w.add_tensor("x", &[1], GgmlType::F32, f32s(1))
        .add_tensor("x", &[1], GgmlType::F32, f32s(1));
    assert_eq!(read_err(&w.to_bytes().unwrap()), "duplicate tensor name x");
}

#[test]
fn bad_tensor_shapes_and_types() {
    let one = |dims: &[u64], dtype| {
        let mut w = GgufWriter::new();
        w.add_tensor("t", dims, dtype, vec![]);
        w.to_bytes().unwrap()
    };
    assert_eq!(
        read_err(&one(&[1 << 32, 1 << 32], GgmlType::F32)),
        "tensor t dimensions [4294967296, 4294967296] overflow"
    );
    assert_eq!(
        read_err(&one(&[1 << 62], GgmlType::F32)),
        "tensor t dimensions [4611686018427387904] overflow"
    );
    assert_eq!(
        read_err(&one(&[1 << 63], GgmlType::I8)),
        "tensor t dimensions [9223372036854775808] overflow"
    );
    assert_eq!(
        read_err(&one(&[16, 2], GgmlType::Q4_0)),
        "tensor t row length 16 is not a multiple of the Q4_0 block size 32"
    );
    assert_eq!(
        read_err(&one(&[], GgmlType::F32)),
        "tensor t has 0 dimensions, expected 1 to 8"
    );

    let b = one(&[4], GgmlType::F32);
    let p = tensor_info_pos(&b, "t");
    let mut nine = b.clone();
    put_u32(&mut nine, p, 9);
    assert_eq!(
        read_err(&nine),
        "tensor t has 9 dimensions, expected 1 to 8"
    );
    let mut ty = b.clone();
    put_u32(&mut ty, p + 4 + 8, 99);
    assert_eq!(read_err(&ty), "tensor t has unknown ggml type id 99");
    let mut removed = b.clone();
    put_u32(&mut removed, p + 4 + 8, 4);
    assert_eq!(read_err(&removed), "tensor t has unknown ggml type id 4");
}

#[test]
fn overlapping_tensors() {
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[16], GgmlType::F32, f32s(16))
        .add_tensor("b", &[16], GgmlType::F32, f32s(16));
    let mut b = w.to_bytes().unwrap();
    let at = tensor_info_pos(&b, "b") + 4 + 8 + 4;
    put_u64(&mut b, at, 0);
    assert_eq!(read_err(&b), "tensors a and b overlap");
}

#[test]
fn unknown_value_types_and_deep_nesting() {
    let b = tiny("llama");
    let mut v = b.clone();
    put_u32(&mut v, value_pos(&b, "general.name") - 4, 13);
    assert_eq!(read_err(&v), "general.name has unknown value type 13");
    let mut a = b.clone();
    put_u32(&mut a, value_pos(&b, "tokenizer.ggml.tokens"), 42);
    assert_eq!(
        read_err(&a),
        "tokenizer.ggml.tokens[] has unknown value type 42"
    );

    let nest =
        |depth: usize| (1..depth).fold(Array::U8(vec![1]), |inner, _| Array::Array(vec![inner]));
    let mut ok = GgufWriter::new();
    ok.add("deep", nest(MAX_ARRAY_DEPTH as usize));
    assert_eq!(
        read(&ok.to_bytes().unwrap()).unwrap().metadata.get("deep"),
        Some(&nest(4).into())
    );
    let mut w = GgufWriter::new();
    w.add("deep", nest(5));
    assert_eq!(
        read_err(&w.to_bytes().unwrap()),
        "array nesting depth of deep is 5, limit is 4"
    );
}
