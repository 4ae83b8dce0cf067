//! The arguments of a lone node's supervision tree (no pool, no hub, a 1 GiB CPU budget), for
//! the tests that start the actors without a node process.

use std::sync::Arc;

use rbee_infer::engine::{CandleBackend, LoadOptions};
use rbee_node::actors::Handle;
use rbee_node::actors::provisioner::ProvisionerArgs;
use rbee_node::actors::supervisor::SupervisorArgs;
use rbee_node::actors::worker::WorkerArgs;
use rbee_node::actors::workers::{DeviceWorker, Workers};

pub fn lone_node(store: &rbee_store::Store) -> SupervisorArgs {
    SupervisorArgs {
        store: store.clone(),
        provisioning: ProvisionerArgs {
            sources: rbee_node::pull::Sources {
                store: store.clone(),
                pool: None,
                hub: None,
            },
            tasks: Arc::default(),
        },
        worker: vec![{
            let memory = rbee_node::actors::worker::DeviceMemory::new(1 << 30);
            WorkerArgs {
                device: "cpu".into(),
                budget: 1 << 30,
                backend: Arc::new(CandleBackend),
                load: LoadOptions::default(),
                metrics: Arc::default(),
                store: Some(store.clone()),
                host: memory.clone(),
                memory,
                other_gpus: Vec::new(),
                is_gpu: false,
                gpu_layers: Arc::default(),
            }
        }],
        catalog: Handle::empty("catalog"),
        provisioner: Handle::empty("provisioner"),
        workers: Workers::new(vec![DeviceWorker {
            device: "cpu".into(),
            is_gpu: false,
            handle: Handle::empty("worker"),
        }]),
        router: Handle::empty("router"),
        node: "test".into(),
        net: None,
        status: Default::default(),
    }
}
