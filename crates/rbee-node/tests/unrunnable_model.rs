//! A catalogued model this node's engine cannot run (a peer's might: the store keeps any
//! well-formed model) is a client error naming the architecture, not a server error.
#![allow(clippy::unwrap_used)]

#[path = "common/supervisor.rs"]
mod supervisor;

use std::time::Duration;

use axum::response::IntoResponse;
use rbee_format::gguf::GgufWriter;
use rbee_node::actors::supervisor::NodeSupervisor;
use rbee_store::ImportSource;

#[tokio::test]
async fn a_catalogued_model_of_another_architecture_is_refused_with_422_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = rbee_store::Store::open(tmp.path().join("data")).unwrap();
    let src = tmp.path().join("tiny-mamba.gguf");
    GgufWriter::tiny_model("mamba").write_file(&src).unwrap();
    store.import(&ImportSource::Path(src), &mut |_| {}).unwrap();
    let args = supervisor::lone_node(&store);
    let (catalog, worker) = (
        args.catalog.clone(),
        args.workers.devices()[0].handle.clone(),
    );
    let (sup, _) = ractor::Actor::spawn(None, NodeSupervisor, args)
        .await
        .unwrap();

    // Twice: the first load fails, the second meets the failed slot.
    for attempt in 0..2 {
        let model = catalog
            .resolve("tiny-mamba".parse().unwrap())
            .await
            .unwrap();
        let err = worker
            .acquire(model, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 422, "attempt {attempt}: {err}");
        assert_eq!(err.error_type(), "invalid_model");
        let msg = err.to_string();
        assert!(
            msg.contains("\"mamba\"")
                && msg.contains(&rbee_infer::SUPPORTED_ARCHITECTURES.join(", ")),
            "attempt {attempt}: {msg}"
        );
        assert_eq!(err.into_response().status().as_u16(), 422);
    }
    sup.stop(None);
}
