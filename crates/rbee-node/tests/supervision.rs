//! A crashed actor is restarted into the same handle, so callers keep working.
#![allow(clippy::unwrap_used)]

#[path = "common/supervisor.rs"]
mod supervisor;

use std::time::Duration;

use rbee_node::actors::supervisor::NodeSupervisor;

#[tokio::test]
async fn killed_children_come_back_behind_the_same_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let store = rbee_store::Store::open(tmp.path()).unwrap();
    let args = supervisor::lone_node(&store);
    let (catalog, worker) = (
        args.catalog.clone(),
        args.workers.devices()[0].handle.clone(),
    );
    let (sup, _) = ractor::Actor::spawn(None, NodeSupervisor, args)
        .await
        .unwrap();

    for _ in 0..3 {
        let before = worker.actor().unwrap().get_id();
        worker.actor().unwrap().kill();
        // Wait for the supervisor to notice and restart it.
        let mut restarted = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if worker.actor().is_some_and(|a| a.get_id() != before) {
                restarted = true;
                break;
            }
        }
        assert!(restarted, "worker was not restarted");
        let status = worker.status().await.unwrap();
        assert_eq!(status.device, "cpu");
    }
    let before = catalog.actor().unwrap().get_id();
    catalog.actor().unwrap().kill();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if catalog.actor().is_some_and(|a| a.get_id() != before) {
            break;
        }
    }
    assert!(catalog.list().await.unwrap().is_empty());
    sup.stop(None);
}
