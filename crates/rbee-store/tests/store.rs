//! The store through its public API, on a real filesystem in a temp dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::write_gguf;
use rbee_format::gguf::writer::GgufWriter;
use rbee_proto::{
    FileEntry, MIN_SHARD_SIZE, Manifest, ModelFormat, ModelMetadata, ModelRef, ModelSource,
    ShardHash,
};
use rbee_store::{ImportSource, Store, StoreError};

fn r(s: &str) -> ModelRef {
    s.parse().unwrap()
}

/// A valid tiny model plus one extra F32 tensor of `extra_floats` values (to control size).
fn setup() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("data")).unwrap();
    (dir, store)
}

fn dir_entries(p: &Path) -> Vec<PathBuf> {
    fs::read_dir(p)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn import_list_show_alias_remove() {
    let (tmp, store) = setup();
    let src = tmp.path().join("tiny-Q4_K_M.gguf");
    write_gguf(&src, "gemma3", 3 << 20, 1); // 12 MiB: several 4 MiB shards
    let out = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap();
    assert!(!out.already_present);
    assert_eq!(out.name, "tiny-Q4_K_M");
    assert_eq!(out.manifest.metadata.architecture, "gemma3");
    assert_eq!(out.manifest.files[0].shards.len(), 4);

    // The view is the same bytes as the source, under the file's own name.
    let rec = store.resolve(&r("tiny-Q4_K_M")).unwrap();
    let path = store.primary_path(&rec).unwrap();
    assert_eq!(fs::read(&path).unwrap(), fs::read(&src).unwrap());

    // Same bytes again: a no-op that says so.
    let again = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap();
    assert!(again.already_present);
    assert_eq!(store.list().unwrap().len(), 1);

    // Lookups by content id, unique prefix, alias.
    let id = out.content_id;
    assert_eq!(
        store.resolve(&ModelRef::ContentId(id)).unwrap().entry.name,
        "tiny-Q4_K_M"
    );
    assert_eq!(store.resolve(&r(&id.short())).unwrap().entry.content_id, id);
    store.alias(&r("tiny-Q4_K_M"), "demo").unwrap();
    assert_eq!(store.resolve(&r("demo")).unwrap().entry.content_id, id);
    // An alias goes alone; the model and its name stay.
    store.alias(&r("tiny-Q4_K_M"), "extra:v1").unwrap();
    store.unalias(&r("tiny-Q4_K_M"), "extra:v1").unwrap();
    assert!(store.resolve(&r("extra:v1")).is_err());
    assert!(matches!(
        store.unalias(&r("tiny-Q4_K_M"), "never-was"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.resolve(&r("demo")).unwrap().entry.content_id, id);
    store.rename(&r("demo"), "fav").unwrap();
    assert_eq!(
        store.resolve(&r("fav")).unwrap().entry.aliases,
        vec!["demo".to_string()]
    );

    // Pinned models are not removed without force.
    store.set_pinned(&r("fav"), true).unwrap();
    assert!(matches!(
        store.remove(&r("fav"), false),
        Err(StoreError::Pinned(_))
    ));
    let (_, gc) = store.remove(&r("fav"), true).unwrap();
    assert!(gc.freed_bytes >= fs::metadata(&src).unwrap().len());
    assert!(store.list().unwrap().is_empty());
    for sub in ["blobs", "views", "manifests", "tmp"] {
        assert!(
            dir_entries(&store.root().join(sub)).is_empty(),
            "{sub} not empty"
        );
    }
    assert!(matches!(
        store.resolve(&r("fav")),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn names_are_unique_and_validated() {
    let (tmp, store) = setup();
    let a = tmp.path().join("a/m.gguf");
    let b = tmp.path().join("b/m.gguf");
    fs::create_dir_all(a.parent().unwrap()).unwrap();
    fs::create_dir_all(b.parent().unwrap()).unwrap();
    write_gguf(&a, "llama", 10, 1);
    write_gguf(&b, "llama", 10, 2);
    let first = store.import(&ImportSource::Path(a), &mut |_| {}).unwrap();
    let second = store.import(&ImportSource::Path(b), &mut |_| {}).unwrap();
    assert_eq!((first.name.as_str(), second.name.as_str()), ("m", "m-2"));
    assert!(matches!(
        store.alias(&r("m-2"), "m"),
        Err(StoreError::NameTaken { .. })
    ));
    assert!(matches!(
        store.alias(&r("m-2"), "hf:x"),
        Err(StoreError::InvalidName(_))
    ));
}

#[test]
fn invalid_gguf_is_refused_with_the_reason_and_leaves_nothing() {
    let (tmp, store) = setup();
    let src = tmp.path().join("broken.gguf");
    write_gguf(&src, "qwen3", 1 << 16, 1);
    let full = fs::read(&src).unwrap();
    fs::write(&src, &full[..full.len() - 100]).unwrap();
    let err = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("extends past end of file"), "{msg}");
    assert!(msg.contains("extra.weight"), "{msg}");

    // A file that does not say what model it is.
    let mut w = GgufWriter::new();
    w.add("general.name", "nameless")
        .add("general.architecture", 7u32);
    w.write_file(&src).unwrap();
    let msg = store
        .import(&ImportSource::Path(src), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("invalid GGUF: general.architecture has type u32, expected a string"),
        "{msg}"
    );

    assert!(store.list().unwrap().is_empty());
    for sub in ["blobs", "views", "manifests", "tmp"] {
        assert!(
            dir_entries(&store.root().join(sub)).is_empty(),
            "{sub} not empty"
        );
    }
}

/// The store keeps and shares any well-formed model: an architecture no engine of this build
/// runs (a peer's may) imports, verifies, lists, serves its shards and pulls into another store.
#[test]
fn a_model_of_an_architecture_this_build_does_not_run_imports_verifies_and_is_shared() {
    let (tmp, store) = setup();
    let src = tmp.path().join("tiny-mamba.gguf");
    write_gguf(&src, "mamba", 3 << 20, 5);
    let out = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap();
    assert_eq!(out.manifest.metadata.architecture, "mamba");
    assert_eq!(out.manifest.metadata.context_length, 128);
    assert!(
        store
            .verify(None, &mut |_| {})
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].entry.name, "tiny-mamba");
    assert_eq!(listed[0].manifest.metadata.architecture, "mamba");
    let rec = store.resolve(&r("tiny-mamba")).unwrap();
    assert_eq!(
        fs::read(store.primary_path(&rec).unwrap()).unwrap(),
        fs::read(&src).unwrap()
    );

    // A peer pulls it shard by shard, each verified, into its own store.
    let peer = Store::open(tmp.path().join("peer")).unwrap();
    let manifest = out.manifest.clone();
    let mut partial = peer.begin_partial(manifest.clone()).unwrap();
    for (fi, si) in partial.missing() {
        let shard = store.read_shard(&manifest, fi, si, true).unwrap();
        partial.write_shard(fi, si, &shard).unwrap();
    }
    let pulled = partial.finish("tiny-mamba").unwrap();
    assert_eq!(pulled.content_id, out.content_id);
    let rec = peer.resolve(&r("tiny-mamba")).unwrap();
    assert_eq!(rec.manifest.metadata.architecture, "mamba");
    assert_eq!(
        fs::read(peer.primary_path(&rec).unwrap()).unwrap(),
        fs::read(&src).unwrap()
    );
    // A safetensors folder of such a model_type too.
    let dir = tmp.path().join("mamba-st");
    write_safetensors_folder(&dir);
    fs::write(dir.join("config.json"), r#"{"model_type":"mamba"}"#).unwrap();
    let out = store.import(&ImportSource::Path(dir), &mut |_| {}).unwrap();
    assert_eq!(out.manifest.metadata.architecture, "mamba");
    assert_eq!(out.manifest.metadata.format, ModelFormat::Safetensors);
}

#[test]
fn an_import_cancelled_mid_file_stops_and_leaves_nothing() {
    let (tmp, store) = setup();
    let src = tmp.path().join("big.gguf");
    // Three 4 MiB shards, cancelled once the first is in.
    write_gguf(&src, "qwen3", 3 << 20, 7);
    let mut reports = Vec::new();
    let seen = std::cell::Cell::new(0u64);
    let err = store
        .import_cancellable(
            &ImportSource::Path(src.clone()),
            Some("big"),
            &|| seen.get() > 0,
            &mut |p| {
                seen.set(p.done);
                reports.push(p.done);
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Cancelled), "{err}");
    assert_eq!(
        reports,
        [0, 4 << 20],
        "stopped at the first shard after the cancel"
    );
    assert!(store.list().unwrap().is_empty());
    for sub in ["blobs", "views", "manifests", "tmp"] {
        assert!(
            dir_entries(&store.root().join(sub)).is_empty(),
            "{sub} not empty"
        );
    }
    // The same source imports in full afterwards.
    let out = store
        .import_cancellable(
            &ImportSource::Path(src),
            Some("big"),
            &|| false,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(out.name, "big");
}

#[test]
fn verify_finds_a_corrupt_shard_and_read_shard_refuses_it() {
    let (tmp, store) = setup();
    let src = tmp.path().join("m.gguf");
    write_gguf(&src, "phi3", 3 << 20, 7);
    let out = store.import(&ImportSource::Path(src), &mut |_| {}).unwrap();
    assert!(
        store
            .verify(None, &mut |_| {})
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );

    // Flip one byte in the third shard of the blob.
    let rec = store.resolve(&ModelRef::ContentId(out.content_id)).unwrap();
    let path = store.primary_path(&rec).unwrap();
    let mut perms = fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&path, perms).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let offset = 2 * (4 << 20) + 17;
    bytes[offset] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let reports = store
        .verify(Some(&ModelRef::ContentId(out.content_id)), &mut |_| {})
        .unwrap();
    assert_eq!(reports[0].bad_shards, vec![("model.gguf".to_string(), 2)]);
    assert!(matches!(
        store.read_shard(&rec.manifest, 0, 2, true),
        Err(StoreError::ShardMismatch { index: 2, .. })
    ));
    assert!(store.read_shard(&rec.manifest, 0, 1, true).is_ok());
    let loc = store
        .locate_shard(&rec.manifest.files[0].shards[1])
        .unwrap()
        .unwrap();
    assert_eq!((loc.offset, loc.len), (4 << 20, 4 << 20));
}

/// A manifest for arbitrary bytes, cut at the smallest shard size.
fn manifest_for(files: &[(&str, &[u8])]) -> Manifest {
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|(name, bytes)| FileEntry {
            name: name.to_string(),
            size: bytes.len() as u64,
            shard_size: MIN_SHARD_SIZE,
            shards: bytes
                .chunks(MIN_SHARD_SIZE as usize)
                .map(ShardHash::of)
                .collect(),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Manifest {
        files: entries,
        metadata: ModelMetadata {
            format: ModelFormat::Gguf,
            architecture: "llama".into(),
            quantization: "F32".into(),
            parameter_count: 1,
            context_length: 1,
        },
        source: ModelSource::Local {
            name: "test".into(),
        },
    }
}

#[test]
fn partial_pull_at_boundary_sizes_resumes_and_finishes() {
    let s = MIN_SHARD_SIZE as usize;
    for size in [0, 1, s - 1, s, s + 1, 7 * s + 3] {
        let (_tmp, store) = setup();
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let side = b"{\"a\":1}".to_vec();
        let manifest = manifest_for(&[("model.gguf", &data), ("config.json", &side)]);
        let mut partial = store.begin_partial(manifest.clone()).unwrap();
        let missing = partial.missing();
        assert_eq!(missing.len(), manifest.shard_total(), "size {size}");

        // Write every other shard, then "crash" (drop) and resume.
        let bytes_of = |fi: usize, si: usize| -> Vec<u8> {
            let src = if manifest.files[fi].name == "model.gguf" {
                &data
            } else {
                &side
            };
            src[si * s..((si + 1) * s).min(src.len())].to_vec()
        };
        for (k, (fi, si)) in missing.iter().enumerate() {
            if k % 2 == 0 {
                partial.write_shard(*fi, *si, &bytes_of(*fi, *si)).unwrap();
            }
        }
        let before = partial.missing();
        drop(partial);
        let mut partial = store.begin_partial(manifest.clone()).unwrap();
        assert_eq!(
            partial.missing(),
            before,
            "size {size}: resume lost progress"
        );
        assert!(
            store.list().unwrap().is_empty(),
            "partial pulls are not cataloged"
        );

        // A shard with one wrong byte is refused and not recorded.
        if let Some((fi, si)) = before.first().copied() {
            let mut bad = bytes_of(fi, si);
            bad[0] ^= 1;
            assert!(matches!(
                partial.write_shard(fi, si, &bad),
                Err(StoreError::ShardMismatch { .. })
            ));
            assert!(!partial.is_verified(fi, si));
        }
        for (fi, si) in before {
            partial.write_shard(fi, si, &bytes_of(fi, si)).unwrap();
        }
        let out = partial.finish("pulled").unwrap();
        let rec = store.resolve(&ModelRef::ContentId(out.content_id)).unwrap();
        // Every shard was verified on the way in: the first load hashes nothing.
        assert!(store.verify_for_load(&rec).unwrap().rehashed.is_empty());
        let dir = store.model_dir(&rec.entry.content_id);
        assert_eq!(
            fs::read(dir.join("model.gguf")).unwrap(),
            data,
            "size {size}"
        );
        assert_eq!(fs::read(dir.join("config.json")).unwrap(), side);
        assert!(store.partial_pulls().unwrap().is_empty());
    }
}

#[test]
fn finishing_an_incomplete_pull_is_refused() {
    let (_tmp, store) = setup();
    let data = vec![1u8; 3 * MIN_SHARD_SIZE as usize];
    let partial = store
        .begin_partial(manifest_for(&[("m.gguf", &data)]))
        .unwrap();
    assert!(matches!(
        partial.finish("x"),
        Err(StoreError::Incomplete(_, 3))
    ));
    assert!(store.list().unwrap().is_empty());
}

fn write_safetensors(path: &Path, tensors: &[(&str, &[u64])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 2;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.resize(out.len() + offset as usize, 0);
    fs::write(path, out).unwrap();
}

fn write_safetensors_folder(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("config.json"),
        r#"{"model_type":"qwen2","max_position_embeddings":4096}"#,
    )
    .unwrap();
    fs::write(dir.join("tokenizer.json"), r#"{"model":{}}"#).unwrap();
    write_safetensors(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("a", &[4, 8])],
    );
    write_safetensors(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("b", &[8])],
    );
}

/// Headers that lie (lengths, cuts, structural bytes, offsets and shapes that do not fit,
/// unknown dtypes): the import refuses each with an error, never a panic, and catalogs
/// nothing. (The header parser, shared with the engine's loader, is fuzzed in
/// `crates/rbee-format/tests/fuzz.rs`; the loader has these cases in
/// `crates/rbee-infer/tests/safetensors.rs`.)
#[test]
fn damaged_safetensors_headers_are_refused_and_catalog_nothing() {
    let (tmp, store) = setup();
    let dir = tmp.path().join("m");
    write_safetensors_folder(&dir);
    let file = dir.join("model-00001-of-00002.safetensors");
    let good = fs::read(&file).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + header_len]).unwrap();
    let data = good[8 + header_len..].to_vec();
    let with_header = |h: &[u8]| {
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h);
        out.extend_from_slice(&data);
        out
    };
    let mut cases = Vec::new();
    for len in [0, 7, header_len as u64 + 1, good.len() as u64, u64::MAX] {
        let mut v = good.clone();
        v[..8].copy_from_slice(&len.to_le_bytes());
        cases.push(v);
    }
    for cut in (0..8 + header_len).step_by(5) {
        cases.push(good[..cut].to_vec());
    }
    for i in 8..8 + header_len {
        let mut v = good.clone();
        v[i] = b"\"{]9"[i % 4];
        cases.push(v);
    }
    for (field, value) in [
        ("data_offsets", serde_json::json!([0u64, u64::MAX])),
        ("data_offsets", serde_json::json!([10, 5])),
        ("data_offsets", serde_json::json!([0])),
        ("shape", serde_json::json!([u64::MAX, 2])),
        ("shape", serde_json::json!("32")),
        ("dtype", serde_json::json!("F128")),
    ] {
        let mut h = header.clone();
        h["a"][field] = value;
        cases.push(with_header(&serde_json::to_vec(&h).unwrap()));
    }
    cases.push(with_header(b"[]"));
    cases.push(with_header(&b"[".repeat(10_000)));
    for (i, bytes) in cases.iter().enumerate() {
        fs::write(&file, bytes).unwrap();
        let result = std::panic::catch_unwind(|| {
            store.import(&ImportSource::Path(dir.clone()), &mut |_| {})
        });
        let result = result.unwrap_or_else(|_| panic!("case {i} panicked"));
        // A single changed byte can still be valid JSON that fits; everything else is refused.
        match result {
            Ok(out) => {
                let id = rbee_proto::ModelRef::ContentId(out.content_id);
                store.remove(&id, true).unwrap();
            }
            Err(_) => assert!(
                store.list().unwrap().is_empty(),
                "case {i}: a refused import cataloged"
            ),
        }
    }
    // Nothing half-written stays behind.
    for sub in ["views", "manifests", "tmp"] {
        assert!(
            dir_entries(&store.root().join(sub)).is_empty(),
            "{sub} not empty"
        );
    }
}

/// A sentence-transformers folder keeps what says how it embeds: `modules.json`, the pooling
/// module's config in its subfolder, `sentence_bert_config.json`, the model card; files that
/// are no part of a model (a stray script, an ONNX export) stay out.
#[test]
fn sentence_transformers_files_survive_an_import() {
    let (tmp, store) = setup();
    let dir = tmp.path().join("minilm-like");
    write_safetensors_folder(&dir);
    fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"}]"#,
    )
    .unwrap();
    fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 256}"#,
    )
    .unwrap();
    fs::write(dir.join("README.md"), "---\ntags:\n- matryoshka\n---\n").unwrap();
    fs::create_dir_all(dir.join("onnx")).unwrap();
    fs::write(dir.join("onnx/model.onnx"), b"not a part of this model").unwrap();
    fs::write(dir.join("train.py"), b"print()").unwrap();
    let out = store
        .import(&ImportSource::Path(dir.clone()), &mut |_| {})
        .unwrap();
    let names: Vec<_> = out.manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "1_Pooling/config.json",
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "modules.json",
            "sentence_bert_config.json",
            "tokenizer.json"
        ]
    );
    out.manifest.validate().unwrap();
    let view = store.model_dir(&out.content_id);
    assert_eq!(
        fs::read(view.join("1_Pooling/config.json")).unwrap(),
        fs::read(dir.join("1_Pooling/config.json")).unwrap()
    );
    assert!(view.join("modules.json").is_file());
}

#[test]
fn safetensors_folder_import() {
    let (tmp, store) = setup();
    let dir = tmp.path().join("qwen-tiny");
    write_safetensors_folder(&dir);
    let out = store
        .import(&ImportSource::Path(dir.clone()), &mut |_| {})
        .unwrap();
    let m = &out.manifest.metadata;
    assert_eq!(
        (m.architecture.as_str(), m.quantization.as_str()),
        ("qwen2", "BF16")
    );
    assert_eq!((m.parameter_count, m.context_length), (40, 4096));
    let names: Vec<_> = out.manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "tokenizer.json"
        ]
    );
    assert!(
        store
            .model_dir(&out.content_id)
            .join("tokenizer.json")
            .is_file()
    );

    // A header that points past the end of the file is refused.
    let bad = tmp.path().join("bad");
    write_safetensors_folder(&bad);
    let f = bad.join("model-00002-of-00002.safetensors");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() - 2]).unwrap();
    let msg = store
        .import(&ImportSource::Path(bad), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not fit"), "{msg}");
}

#[test]
fn ollama_import_links_instead_of_copying() {
    let (tmp, store) = setup();
    let ollama = tmp.path().join("ollama");
    let hex = "ab".repeat(32);
    let blob = ollama.join("blobs").join(format!("sha256-{hex}"));
    fs::create_dir_all(blob.parent().unwrap()).unwrap();
    write_gguf(&blob, "llama", 1000, 3);
    let mdir = ollama.join("manifests/registry.ollama.ai/library/tinyllama");
    fs::create_dir_all(&mdir).unwrap();
    fs::write(
        mdir.join("latest"),
        format!(r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.license","digest":"sha256:00"}},{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{hex}"}}]}}"#),
    )
    .unwrap();
    let store = store.with_ollama_dir(&ollama);
    let out = store
        .import(
            &ImportSource::parse("ollama:tinyllama").unwrap(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(out.name, "tinyllama");
    let view = store.model_dir(&out.content_id).join("model.gguf");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&view).unwrap().ino(),
        fs::metadata(&blob).unwrap().ino(),
        "not hard-linked"
    );

    let msg = store
        .import(&ImportSource::parse("ollama:nope:7b").unwrap(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope") && msg.contains("ollama list"), "{msg}");
}

#[test]
fn hf_cache_import_picks_q4_k_m_and_records_the_source() {
    let (tmp, store) = setup();
    let hub = tmp.path().join("hub");
    let repo = hub.join("models--org--tiny-GGUF");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    let snap = repo.join("snapshots").join(commit);
    fs::create_dir_all(&snap).unwrap();
    fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, name) in ["tiny.Q8_0.gguf", "tiny.Q4_K_M.gguf", "tiny.F16.gguf"]
        .iter()
        .enumerate()
    {
        let blob = repo.join("blobs").join(format!("{i:064}"));
        write_gguf(&blob, "qwen2", 100 * (i + 1), i as u8);
        std::os::unix::fs::symlink(format!("../../blobs/{i:064}"), snap.join(name)).unwrap();
    }
    let store = store.with_hf_cache_dir(&hub);
    let out = store
        .import(
            &ImportSource::parse("hf-cache:org/tiny-GGUF").unwrap(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(out.name, "tiny.Q4_K_M");
    assert_eq!(
        out.manifest.source,
        ModelSource::HuggingFace {
            repo: "org/tiny-GGUF".into(),
            revision: commit.into(),
            file: Some("tiny.Q4_K_M.gguf".into())
        }
    );
    // The same HuggingFace reference now finds it in the catalog.
    assert_eq!(
        store
            .resolve(&r("org/tiny-GGUF:tiny.Q4_K_M.gguf"))
            .unwrap()
            .entry
            .content_id,
        out.content_id
    );
    let msg = store
        .import(
            &ImportSource::parse("hf-cache:org/other").unwrap(),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not in the cache"), "{msg}");
}

#[test]
fn concurrent_imports_both_land() {
    let (tmp, store) = setup();
    let paths: Vec<PathBuf> = (0..4u8)
        .map(|i| {
            let p = tmp.path().join(format!("m{i}.gguf"));
            write_gguf(&p, "llama", 50_000, i);
            p
        })
        .collect();
    std::thread::scope(|s| {
        for p in &paths {
            let store = store.clone();
            s.spawn(move || {
                store
                    .import(&ImportSource::Path(p.clone()), &mut |_| {})
                    .unwrap()
            });
        }
    });
    assert_eq!(store.list().unwrap().len(), 4);
}

#[test]
fn a_named_import_never_renames_and_a_failed_one_catalogs_nothing() {
    let (tmp, store) = setup();
    let src = tmp.path().join("tiny-Q4_K_M.gguf");
    write_gguf(&src, "gemma3", 1 << 10, 1);
    let path = ImportSource::Path(src.clone());
    let out = store
        .import_named(&path, Some("mine"), &mut |_| {})
        .unwrap();
    assert_eq!(out.name, "mine");

    // The same bytes under another name: refused with the alias command, the old name kept.
    let err = store
        .import_named(&path, Some("yours"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyCataloged { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rbee-node models alias mine yours"),
        "{err}"
    );
    assert_eq!(
        store.resolve(&r("mine")).unwrap().entry.content_id,
        out.content_id
    );
    assert!(store.resolve(&r("yours")).is_err());
    // Under its own name or an alias it has, a re-import is the usual no-op.
    assert!(
        store
            .import_named(&path, Some("mine"), &mut |_| {})
            .unwrap()
            .already_present
    );
    store.alias(&r("mine"), "alias").unwrap();
    let again = store
        .import_named(&path, Some("alias"), &mut |_| {})
        .unwrap();
    assert!(again.already_present);

    // An invalid name fails before anything is read or cataloged.
    let other = tmp.path().join("other.gguf");
    write_gguf(&other, "gemma3", 1 << 10, 2);
    let other = ImportSource::Path(other);
    for bad in ["../bad", "a\0b", ""] {
        let err = store
            .import_named(&other, Some(bad), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidName(_)), "{bad:?}: {err}");
    }
    assert_eq!(store.list().unwrap().len(), 1);

    // New bytes under a name another model has: refused, and nothing is left cataloged.
    let err = store
        .import_named(&other, Some("mine"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
    let names: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.entry.name)
        .collect();
    assert_eq!(names, ["mine"]);
}

#[test]
fn removing_a_model_reports_the_space_it_really_freed() {
    let (tmp, store) = setup();
    let src = tmp.path().join("m.gguf");
    write_gguf(&src, "llama", 1 << 20, 4);
    let size = fs::metadata(&src).unwrap().len();
    let out = store.import(&ImportSource::Path(src), &mut |_| {}).unwrap();
    let manifest_len = fs::metadata(store.root().join("manifests").join(out.content_id.to_hex()))
        .unwrap()
        .len();
    // The view is a hard link to the blob: one copy on disk, counted once.
    let (_, gc) = store.remove(&r("m"), false).unwrap();
    assert_eq!(gc.freed_bytes, size + manifest_len);

    // Linked from Ollama, the bytes stay on disk (Ollama's link): only the manifest is freed.
    let ollama = tmp.path().join("ollama");
    let hex = "cd".repeat(32);
    let blob = ollama.join("blobs").join(format!("sha256-{hex}"));
    fs::create_dir_all(blob.parent().unwrap()).unwrap();
    write_gguf(&blob, "llama", 1 << 20, 5);
    let mdir = ollama.join("manifests/registry.ollama.ai/library/tiny");
    fs::create_dir_all(&mdir).unwrap();
    fs::write(
        mdir.join("latest"),
        format!(r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{hex}"}}]}}"#),
    )
    .unwrap();
    let store = store.with_ollama_dir(&ollama);
    let out = store
        .import(&ImportSource::parse("ollama:tiny").unwrap(), &mut |_| {})
        .unwrap();
    let manifest_len = fs::metadata(store.root().join("manifests").join(out.content_id.to_hex()))
        .unwrap()
        .len();
    let (_, gc) = store.remove(&r("tiny"), false).unwrap();
    assert_eq!(gc.freed_bytes, manifest_len);
    assert!(blob.is_file());
}

/// Runs `f` on a thread and fails the test if it has not returned within 10 s (a hang).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("hung (opened a FIFO?)")
}

#[test]
fn non_regular_sources_are_refused_before_they_are_opened() {
    let (tmp, store) = setup();
    let fifo = tmp.path().join("pipe.gguf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let link = tmp.path().join("link.gguf");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let sock = tmp.path().join("sock.gguf");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A safetensors folder whose weights are a FIFO.
    let folder = tmp.path().join("st");
    write_safetensors_folder(&folder);
    let weights = folder.join("model-00002-of-00002.safetensors");
    fs::remove_file(&weights).unwrap();
    std::process::Command::new("mkfifo")
        .arg(&weights)
        .status()
        .unwrap();

    for (src, kind) in [
        (fifo.clone(), "a FIFO"),
        (link, "a FIFO"),
        (sock, "a socket"),
        (PathBuf::from("/dev/null"), "a character device"),
        (weights.clone(), "a FIFO"),
    ] {
        let source = if src == weights {
            folder.clone()
        } else {
            src.clone()
        };
        let store = store.clone();
        let err = within_10s(move || {
            store
                .import(&ImportSource::Path(source), &mut |_| {})
                .unwrap_err()
        });
        assert!(
            matches!(err, StoreError::NotRegularFile { .. }),
            "{}: {err}",
            src.display()
        );
        let msg = err.to_string();
        assert!(
            msg.contains(kind) && msg.contains("not a regular file"),
            "{msg}"
        );
    }
    assert!(store.list().unwrap().is_empty());

    // A symlink to a regular file is followed.
    let real = tmp.path().join("real.gguf");
    write_gguf(&real, "llama", 100, 9);
    let to_real = tmp.path().join("to-real.gguf");
    std::os::unix::fs::symlink(&real, &to_real).unwrap();
    store
        .import(&ImportSource::Path(to_real), &mut |_| {})
        .unwrap();
}

#[test]
fn one_node_per_data_dir() {
    let (_tmp, store) = setup();
    let mut lock = store.lock_node().unwrap();
    lock.record_api_addr("127.0.0.1:7777").unwrap();
    let err = Store::open(store.root()).unwrap().lock_node().unwrap_err();
    assert!(matches!(err, StoreError::NodeRunning { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id()))
            && msg.contains("http://127.0.0.1:7777")
            && msg.contains("--data-dir"),
        "{msg}"
    );
    drop(lock);
    store.lock_node().unwrap();
}

fn make_writable(path: &Path) {
    let mut perms = fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(path, perms).unwrap();
}

#[test]
fn blobs_are_verified_before_a_load_when_new_or_changed() {
    let (tmp, store) = setup();
    let src = tmp.path().join("m.gguf");
    write_gguf(&src, "llama", 3 << 20, 6);
    let out = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap();
    let rec = store.resolve(&ModelRef::ContentId(out.content_id)).unwrap();
    // The import hashed the bytes it stored: nothing to hash on the first load.
    assert!(store.verify_for_load(&rec).unwrap().rehashed.is_empty());

    // One byte flipped in place (same size): refused, naming the file and what to run.
    let path = store.primary_path(&rec).unwrap();
    let file = rec.manifest.files[0].name.clone();
    make_writable(&path);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[(4 << 20) + 5] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    for _ in 0..2 {
        let err = store.verify_for_load(&rec).unwrap_err();
        assert!(matches!(err, StoreError::CorruptModelFile { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("shard 1")
                && msg.contains(&format!("rbee-node models verify {}", rec.entry.name)),
            "{msg}"
        );
    }
    // Restored: hashed again once, then recorded.
    fs::write(&path, &good).unwrap();
    assert_eq!(
        store.verify_for_load(&rec).unwrap().rehashed,
        [file.as_str()]
    );
    assert!(store.verify_for_load(&rec).unwrap().rehashed.is_empty());

    // Truncated: refused by size.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(good.len() as u64 - 1).unwrap();
    let msg = store.verify_for_load(&rec).unwrap_err().to_string();
    assert!(msg.contains("bytes, its manifest says"), "{msg}");
    f.set_len(0).unwrap();
    drop(f);
    fs::write(&path, &good).unwrap();

    // Without a record (lost, or a store from before it), the first load hashes.
    fs::remove_file(store.root().join("verified.json")).unwrap();
    assert_eq!(
        store.verify_for_load(&rec).unwrap().rehashed,
        [file.as_str()]
    );
    assert!(store.verify_for_load(&rec).unwrap().rehashed.is_empty());

    // gc forgets the blobs it removes.
    store
        .remove(&ModelRef::ContentId(out.content_id), false)
        .unwrap();
    let record = fs::read_to_string(store.root().join("verified.json")).unwrap();
    assert!(
        !record.contains(&rec.manifest.files[0].blob_id().to_hex()),
        "{record}"
    );
}

#[test]
fn presets_are_stored_atomically_listed_by_name_and_removed() {
    let (_tmp, store) = setup();
    assert!(store.presets().unwrap().is_empty());
    store.save_preset("pirate:v2", b"{\"a\": 1}").unwrap();
    store.save_preset("mario", b"{}").unwrap();
    store.save_preset("mario", b"{\"b\": 2}").unwrap();
    let listed = store.presets().unwrap();
    assert_eq!(
        listed,
        vec![
            ("mario".to_string(), b"{\"b\": 2}".to_vec()),
            ("pirate:v2".to_string(), b"{\"a\": 1}".to_vec()),
        ]
    );
    // No temporary file is left beside them.
    let dir = store.root().join("presets");
    assert_eq!(dir_entries(&dir).len(), 2, "{:?}", dir_entries(&dir));
    assert!(matches!(
        store.save_preset("../evil", b"{}"),
        Err(StoreError::InvalidName(_))
    ));
    assert!(store.remove_preset("mario").unwrap());
    assert!(!store.remove_preset("mario").unwrap());
    assert_eq!(store.presets().unwrap().len(), 1);
}
