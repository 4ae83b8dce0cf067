//! `RouterActor`: decides where a request runs. Today every decision is local (this node's
//! worker for the device); the pool issue adds peers behind the same message.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rbee_proto::ModelRef;

use super::catalog::{CatalogHandle, ResolvedModel};
use super::worker::WorkerHandle;
use super::{Handle, QUICK};
use crate::error::NodeError;

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    pub model: ResolvedModel,
    pub worker: WorkerHandle,
    /// The node that serves it (this one, for now).
    pub node: String,
}

pub enum RouterMsg {
    Route(ModelRef, RpcReplyPort<Result<RouteDecision, NodeError>>),
}

#[derive(Clone)]
pub struct RouterArgs {
    pub node: String,
    pub catalog: CatalogHandle,
    pub workers: Vec<WorkerHandle>,
}

#[derive(Debug)]
pub struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterArgs;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route(model, reply) => {
                // Resolution is a catalog round trip; do it off the router's mailbox.
                let st = st.clone();
                tokio::spawn(async move {
                    let result = async {
                        let resolved = st.catalog.resolve(model).await?;
                        let worker = st.workers.first().cloned().ok_or_else(|| {
                            NodeError::Unavailable("this node has no worker".into())
                        })?;
                        Ok(RouteDecision {
                            model: resolved,
                            worker,
                            node: st.node.clone(),
                        })
                    }
                    .await;
                    let _ = reply.send(result);
                });
            }
        }
        Ok(())
    }
}

pub type RouterHandle = Handle<RouterMsg>;

impl RouterHandle {
    pub async fn route(&self, model: ModelRef) -> Result<RouteDecision, NodeError> {
        self.call(|tx| RouterMsg::Route(model, tx), QUICK).await
    }
}
