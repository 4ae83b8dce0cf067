//! The content id covers the content and a canonical file name: the same bytes are one model
//! whatever the file was called or where it came from, and stores from before keep working.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use rbee_proto::{GGUF_FILE_NAME, ModelRef, ModelSource};
use rbee_store::{ImportSource, Store};

fn write_gguf(path: &Path, seed: u8) {
    common::write_gguf(path, "llama", 1000, seed);
}

#[test]
fn the_same_bytes_under_another_file_name_are_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("data")).unwrap();
    let a = tmp.path().join("first-name.gguf");
    let b = tmp.path().join("dir/other name.Q4_K_M.gguf");
    fs::create_dir_all(b.parent().unwrap()).unwrap();
    write_gguf(&a, 1);
    fs::copy(&a, &b).unwrap();
    let first = store.import(&ImportSource::Path(a), &mut |_| {}).unwrap();
    let second = store.import(&ImportSource::Path(b), &mut |_| {}).unwrap();
    assert_eq!(second.content_id, first.content_id);
    assert!(second.already_present);
    assert_eq!(second.name, "first-name");
    assert_eq!(store.list().unwrap().len(), 1);
    // Stored under the canonical name; the original is kept as the source.
    let rec = store
        .resolve(&ModelRef::ContentId(first.content_id))
        .unwrap();
    assert_eq!(rec.manifest.files[0].name, GGUF_FILE_NAME);
    assert_eq!(
        rec.manifest.source,
        ModelSource::Local {
            name: "first-name.gguf".into()
        }
    );
    assert!(store.primary_path(&rec).unwrap().ends_with(GGUF_FILE_NAME));

    // The same bytes from the HuggingFace cache: still one model.
    let hub = tmp.path().join("hub");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = hub.join("models--org--m-GGUF");
    let snap = repo.join("snapshots").join(commit);
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), commit).unwrap();
    fs::copy(
        tmp.path().join("first-name.gguf"),
        snap.join("m.Q4_K_M.gguf"),
    )
    .unwrap();
    let store = store.with_hf_cache_dir(&hub);
    let third = store
        .import(
            &ImportSource::parse("hf-cache:org/m-GGUF").unwrap(),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(third.content_id, first.content_id);
    assert!(third.already_present);
}

/// A store written before the rule: the model's manifest names its file as it was called and
/// is filed under the hash of the whole manifest (source included).
#[test]
fn a_store_from_before_the_rule_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let store = Store::open(&root).unwrap();
    let src = tmp.path().join("old.gguf");
    write_gguf(&src, 2);
    let new = store
        .import(&ImportSource::Path(src.clone()), &mut |_| {})
        .unwrap();

    // Turn it into what the old code wrote.
    let mut legacy = new.manifest.clone();
    legacy.files[0].name = "old.gguf".into();
    let old_id = legacy.legacy_content_id();
    assert_ne!(old_id, new.content_id);
    let blob = root.join("blobs").join(legacy.files[0].blob_id().to_hex());
    fs::remove_dir_all(root.join("views").join(new.content_id.to_hex())).unwrap();
    fs::remove_file(root.join("manifests").join(new.content_id.to_hex())).unwrap();
    fs::write(
        root.join("manifests").join(old_id.to_hex()),
        legacy.encode().unwrap(),
    )
    .unwrap();
    fs::create_dir_all(root.join("views").join(old_id.to_hex())).unwrap();
    fs::hard_link(
        &blob,
        root.join("views").join(old_id.to_hex()).join("old.gguf"),
    )
    .unwrap();
    let catalog = fs::read_to_string(root.join("catalog.json")).unwrap();
    fs::write(
        root.join("catalog.json"),
        catalog.replace(&new.content_id.to_hex(), &old_id.to_hex()),
    )
    .unwrap();
    fs::remove_file(root.join("verified.json")).unwrap();

    // Read, verified and loaded as before, under its old id and file name.
    let store = Store::open(&root).unwrap();
    assert!(store.rebuilt_catalog().is_none());
    let rec = store.resolve(&"old".parse().unwrap()).unwrap();
    assert_eq!(rec.entry.content_id, old_id);
    assert!(store.primary_path(&rec).unwrap().ends_with("old.gguf"));
    assert!(store.primary_path(&rec).unwrap().is_file());
    assert!(store.verify(None, &mut |_| {}).unwrap()[0].is_ok());
    store.verify_for_load(&rec).unwrap();
    assert!(store.damaged().unwrap().is_empty());
    assert_eq!(store.gc().unwrap().removed_paths, 0);

    // The same bytes imported now (any name) are that model, not a second one.
    let renamed = tmp.path().join("renamed.gguf");
    fs::copy(&src, &renamed).unwrap();
    let again = store
        .import(&ImportSource::Path(renamed), &mut |_| {})
        .unwrap();
    assert!(again.already_present);
    assert_eq!(again.content_id, old_id);
    assert_eq!(store.list().unwrap().len(), 1);

    // A lost catalog is rebuilt with the legacy manifest too.
    fs::remove_file(root.join("catalog.json")).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(
        store.rebuilt_catalog().unwrap().models,
        [("old".to_string(), old_id)]
    );
}

#[test]
fn a_pull_keeps_the_id_the_pool_knows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("data")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let shard = rbee_proto::MIN_SHARD_SIZE as usize;
    let manifest = rbee_proto::Manifest {
        files: vec![rbee_proto::FileEntry {
            name: "peer-name.gguf".into(),
            size: data.len() as u64,
            shard_size: shard as u64,
            shards: data.chunks(shard).map(rbee_proto::ShardHash::of).collect(),
        }],
        metadata: rbee_proto::ModelMetadata {
            format: rbee_proto::ModelFormat::Gguf,
            architecture: "llama".into(),
            quantization: "F32".into(),
            parameter_count: 1,
            context_length: 1,
        },
        source: ModelSource::Local {
            name: "peer-name.gguf".into(),
        },
    };
    let legacy = manifest.legacy_content_id();
    // Not the manifest's under either rule: refused.
    assert!(
        store
            .begin_partial_as(rbee_proto::ContentId::of(b"x"), manifest.clone())
            .is_err()
    );
    let mut partial = store.begin_partial_as(legacy, manifest.clone()).unwrap();
    for (i, chunk) in data.chunks(shard).enumerate() {
        partial.write_shard(0, i, chunk).unwrap();
    }
    let out = partial.finish("pulled").unwrap();
    assert_eq!(out.content_id, legacy);
    assert!(store.resolve(&ModelRef::ContentId(legacy)).is_ok());
}
