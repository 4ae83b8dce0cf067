//! `NodeSupervisor`: starts the node's actors and restarts any that crash.
//!
//! ```text
//! NodeSupervisor
//! ├── CatalogActor      the model store: lookups, removal, LRU stamps
//! ├── ProvisionerActor  imports, and pulls (catalog → pool → hub), each pull a supervised task
//! ├── WorkerActor(cpu)  loaded models and the memory budget; one per device (`cuda:0`, …)
//! └── RouterActor       where a request runs
//! ```
//!
//! A restarted actor is swapped into the same [`Handle`](super::Handle), so the HTTP API and
//! the other actors keep working without knowing it happened. A crashed worker loses its
//! loaded models; requests already running hold their model and finish, and the model threads
//! of dropped models end with their last request.

use std::collections::HashMap;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use rbee_store::Store;

use super::catalog::{CatalogActor, CatalogHandle};
use super::provisioner::{ProvisionerActor, ProvisionerArgs, ProvisionerHandle};
use super::router::{RouterActor, RouterArgs, RouterHandle};
use super::worker::{WorkerActor, WorkerArgs};
use super::workers::Workers;

/// Everything the supervisor needs to (re)start its children.
pub struct SupervisorArgs {
    pub store: Store,
    pub provisioning: ProvisionerArgs,
    /// One per device, in the order of `workers`.
    pub worker: Vec<WorkerArgs>,
    pub catalog: CatalogHandle,
    pub provisioner: ProvisionerHandle,
    pub workers: Workers,
    pub router: RouterHandle,
    pub node: String,
    pub net: Option<rbee_net::Client>,
    pub status: crate::peer::status::StatusCache,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Catalog,
    Provisioner,
    /// The worker of device `n` (index into `workers`).
    Worker(usize),
    Router,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    restarts: u32,
}

#[derive(Debug)]
pub struct NodeSupervisor;

impl SupervisorState {
    async fn start(&mut self, child: Child, me: ActorCell) -> Result<(), ActorProcessingErr> {
        let a = &self.args;
        let id = match child {
            Child::Catalog => {
                let (r, _) = Actor::spawn_linked(None, CatalogActor, a.store.clone(), me).await?;
                a.catalog.replace(r.clone());
                r.get_id()
            }
            Child::Provisioner => {
                let (r, _) =
                    Actor::spawn_linked(None, ProvisionerActor, a.provisioning.clone(), me).await?;
                a.provisioner.replace(r.clone());
                r.get_id()
            }
            Child::Worker(n) => {
                let (Some(args), Some(w)) = (a.worker.get(n), a.workers.devices().get(n)) else {
                    return Err(format!("no worker {n}").into());
                };
                let (r, _) = Actor::spawn_linked(None, WorkerActor, args.clone(), me).await?;
                w.handle.replace(r.clone());
                r.get_id()
            }
            Child::Router => {
                let args = RouterArgs {
                    node: a.node.clone(),
                    catalog: a.catalog.clone(),
                    workers: a.workers.clone(),
                    net: a.net.clone(),
                    status: a.status.clone(),
                };
                let (r, _) = Actor::spawn_linked(None, RouterActor, args, me).await?;
                a.router.replace(r.clone());
                r.get_id()
            }
        };
        self.children.insert(id, child);
        Ok(())
    }
}

/// Restarts beyond this mean something is wrong for good: stop the node rather than spin.
const MAX_RESTARTS: u32 = 100;

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            args,
            children: HashMap::new(),
            restarts: 0,
        };
        let workers = (0..st.args.worker.len()).map(Child::Worker);
        let children: Vec<Child> = [Child::Catalog, Child::Provisioner]
            .into_iter()
            .chain(workers)
            .chain([Child::Router])
            .collect();
        for child in children {
            st.start(child, me.get_cell()).await?;
        }
        Ok(st)
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell.clone(), format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.clone(), format!("stopped: {reason:?}"))
            }
            _ => return Ok(()),
        };
        let Some(child) = st.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        st.restarts += 1;
        tracing::error!(?child, restarts = st.restarts, "actor {why}; restarting it");
        if st.restarts > MAX_RESTARTS {
            return Err(format!(
                "{child:?} keeps crashing; giving up after {MAX_RESTARTS} restarts"
            )
            .into());
        }
        st.start(child, me.get_cell()).await
    }
}
