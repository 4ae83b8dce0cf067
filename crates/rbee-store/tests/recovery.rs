//! Damage the store must survive without losing data: a lost or garbled `catalog.json`, and a
//! corrupt manifest.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::write_gguf;
use rbee_proto::ModelRef;
use rbee_store::{ImportSource, Store, StoreError};

fn entries(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A store with two imported models, `alpha` and `beta`.
fn two_models() -> (tempfile::TempDir, Store, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("data")).unwrap();
    let a = tmp.path().join("alpha.gguf");
    let b = tmp.path().join("beta.gguf");
    write_gguf(&a, "llama", 1000, 1);
    write_gguf(&b, "gemma3", 2000, 2);
    for p in [&a, &b] {
        store
            .import(&ImportSource::Path(p.clone()), &mut |_| {})
            .unwrap();
    }
    (tmp, store, a, b)
}

fn names(store: &Store) -> Vec<String> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.entry.name)
        .collect()
}

fn store_files(store: &Store) -> Vec<PathBuf> {
    ["blobs", "manifests", "views"]
        .iter()
        .flat_map(|d| entries(&store.root().join(d)))
        .collect()
}

#[test]
fn a_new_store_gets_a_catalog_file_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("data")).unwrap();
    assert!(store.root().join("catalog.json").is_file());
    assert!(store.rebuilt_catalog().is_none());
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_manifests_and_gc_deletes_nothing() {
    let (_tmp, store, _, _) = two_models();
    let before = store_files(&store);
    fs::remove_file(store.root().join("catalog.json")).unwrap();

    // Reopened: rebuilt, under the names an import gives.
    let reopened = Store::open(store.root()).unwrap();
    let report = reopened.rebuilt_catalog().expect("rebuilt");
    assert_eq!(report.damaged_catalog, None);
    let mut rebuilt: Vec<_> = report.models.iter().map(|(n, _)| n.clone()).collect();
    rebuilt.sort();
    assert_eq!(rebuilt, ["alpha", "beta"]);
    let mut listed = names(&reopened);
    listed.sort();
    assert_eq!(listed, ["alpha", "beta"]);
    let gc = reopened.gc().unwrap();
    assert_eq!(gc.removed_paths, 0, "{gc:?}");
    assert_eq!(store_files(&reopened), before);

    // Lost while a store is open (a running node): gc rebuilds too instead of seeing nothing.
    fs::remove_file(store.root().join("catalog.json")).unwrap();
    let gc = store.gc().unwrap();
    assert_eq!(gc.removed_paths, 0, "{gc:?}");
    assert_eq!(store_files(&store), before);
    assert_eq!(store.list().unwrap().len(), 2);
    assert!(
        store
            .verify(None, &mut |_| {})
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );
}

#[test]
fn a_garbled_catalog_is_kept_aside_and_rebuilt() {
    let (_tmp, store, _, _) = two_models();
    let before = store_files(&store);
    let catalog = store.root().join("catalog.json");
    fs::write(&catalog, b"{\"version\": 1, \"models\": [tru").unwrap();
    let reopened = Store::open(store.root()).unwrap();
    let moved = reopened
        .rebuilt_catalog()
        .and_then(|r| r.damaged_catalog.clone())
        .expect("damaged catalog moved aside");
    assert_eq!(
        fs::read(&moved).unwrap(),
        b"{\"version\": 1, \"models\": [tru"
    );
    assert_eq!(reopened.list().unwrap().len(), 2);
    assert_eq!(reopened.gc().unwrap().removed_paths, 0);
    assert_eq!(store_files(&reopened), before);
}

#[test]
fn a_catalog_of_another_version_is_refused_and_gc_deletes_nothing() {
    let (_tmp, store, _, _) = two_models();
    let before = store_files(&store);
    fs::write(
        store.root().join("catalog.json"),
        br#"{"version": 99, "models": []}"#,
    )
    .unwrap();
    let err = store.gc().unwrap_err();
    assert!(matches!(err, StoreError::CorruptCatalog { .. }), "{err}");
    assert!(err.to_string().contains("version 99"), "{err}");
    assert!(Store::open(store.root()).is_err());
    assert_eq!(store_files(&store), before);
}

/// Flips a byte in the middle of `name`'s manifest file.
fn corrupt_manifest(store: &Store, name: &str) -> (rbee_proto::ContentId, PathBuf) {
    let id = store
        .resolve(&name.parse::<ModelRef>().unwrap())
        .unwrap()
        .entry
        .content_id;
    let path = store.root().join("manifests").join(id.to_hex());
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    (id, path)
}

#[test]
fn a_corrupt_manifest_is_quarantined_and_named_while_the_rest_works() {
    let (_tmp, store, alpha_src, _) = two_models();
    let (id, path) = corrupt_manifest(&store, "alpha");
    let blobs_before = entries(&store.root().join("blobs"));

    // The rest of the catalog keeps working.
    assert_eq!(names(&store), ["beta"]);
    let listing = store.listing().unwrap();
    assert_eq!(listing.damaged.len(), 1);
    let d = &listing.damaged[0];
    assert_eq!(d.entry.name, "alpha");
    let quarantined = store.root().join("quarantine").join(id.to_hex());
    assert!(quarantined.is_file(), "not quarantined");
    assert!(!path.exists(), "still in manifests/");
    assert!(
        fs::read_to_string(
            store
                .root()
                .join("quarantine")
                .join(format!("{}.reason", id.to_hex()))
        )
        .unwrap()
        .contains(&path.display().to_string())
    );
    assert!(
        d.reason.contains(&quarantined.display().to_string()),
        "{}",
        d.reason
    );
    assert!(store.resolve(&"beta".parse().unwrap()).is_ok());

    // Asking for it names the model and the files, and says what to do; once.
    let err = store.resolve(&"alpha".parse().unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::DamagedModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("alpha") && msg.contains(&quarantined.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("rbee-node models rm alpha"), "{msg}");
    assert!(std::error::Error::source(&err).is_none());
    let verify = store.verify(None, &mut |_| {}).unwrap();
    assert_eq!(verify.len(), 2);
    assert!(
        verify
            .iter()
            .any(|r| r.name == "alpha" && r.damaged.is_some())
    );
    assert!(verify.iter().any(|r| r.name == "beta" && r.is_ok()));

    // gc keeps every blob while a model is damaged: its manifest was what listed them.
    let gc = store.gc().unwrap();
    assert_eq!(gc.kept_blobs_for, ["alpha"]);
    assert_eq!(entries(&store.root().join("blobs")), blobs_before);
    // Renaming it is refused and changes nothing.
    assert!(store.rename(&"alpha".parse().unwrap(), "other").is_err());
    assert_eq!(store.listing().unwrap().damaged[0].entry.name, "alpha");

    // Importing the same bytes again repairs it, name and all.
    let again = store
        .import(&ImportSource::Path(alpha_src), &mut |_| {})
        .unwrap();
    assert_eq!((again.name.as_str(), again.content_id), ("alpha", id));
    assert!(store.listing().unwrap().damaged.is_empty());
    assert!(store.resolve(&"alpha".parse().unwrap()).is_ok());
}

#[test]
fn a_damaged_model_can_be_removed_and_then_its_blobs_are_collected() {
    let (_tmp, store, _, _) = two_models();
    corrupt_manifest(&store, "alpha");
    let beta = store.resolve(&"beta".parse().unwrap()).unwrap();
    let (entry, gc) = store.remove(&"alpha".parse().unwrap(), false).unwrap();
    assert_eq!(entry.name, "alpha");
    assert!(gc.kept_blobs_for.is_empty());
    let blobs: Vec<String> = entries(&store.root().join("blobs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs, [beta.manifest.files[0].blob_id().to_hex()]);
    assert_eq!(names(&store), ["beta"]);
}

#[test]
fn a_lost_catalog_with_a_damaged_manifest_keeps_its_blobs() {
    let (_tmp, store, _, _) = two_models();
    corrupt_manifest(&store, "beta");
    let blobs_before = entries(&store.root().join("blobs"));
    fs::remove_file(store.root().join("catalog.json")).unwrap();
    let reopened = Store::open(store.root()).unwrap();
    let report = reopened.rebuilt_catalog().unwrap().clone();
    assert_eq!(report.models.len(), 1);
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].0.starts_with("damaged-"), "{report:?}");
    assert_eq!(names(&reopened), ["alpha"]);
    let gc = reopened.gc().unwrap();
    assert_eq!(gc.kept_blobs_for.len(), 1);
    assert_eq!(entries(&reopened.root().join("blobs")), blobs_before);
}

#[test]
fn importing_again_repairs_a_corrupt_manifest_not_yet_noticed() {
    let (_tmp, store, alpha_src, _) = two_models();
    let (id, path) = corrupt_manifest(&store, "alpha");
    let again = store
        .import(&ImportSource::Path(alpha_src), &mut |_| {})
        .unwrap();
    assert_eq!(again.content_id, id);
    assert!(store.root().join("quarantine").join(id.to_hex()).is_file());
    assert!(path.is_file());
    assert_eq!(names(&store), ["alpha", "beta"]);
}
