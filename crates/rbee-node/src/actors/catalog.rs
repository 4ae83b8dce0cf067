//! `CatalogActor`: the node's view of its model store. Owns the [`Store`]; answers lookups and
//! removals. Store calls touch the filesystem, so they run on the blocking pool.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rbee_proto::{ContentId, ModelRef};
use rbee_store::{CatalogEntry, ModelRecord, Store};

use super::{Handle, QUICK};
use crate::error::NodeError;

/// A cataloged model and the file a loader opens.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub record: ModelRecord,
    pub path: PathBuf,
}

impl ResolvedModel {
    pub fn id(&self) -> ContentId {
        self.record.entry.content_id
    }

    pub fn name(&self) -> &str {
        &self.record.entry.name
    }
}

pub enum CatalogMsg {
    /// Find a model by any reference.
    Resolve(ModelRef, RpcReplyPort<Result<ResolvedModel, NodeError>>),
    /// Every cataloged model.
    List(RpcReplyPort<Result<Vec<ModelRecord>, NodeError>>),
    /// Stamp a model as used now (LRU).
    Touch(ContentId),
    /// Forget a model and delete what nothing else uses.
    Remove(ModelRef, RpcReplyPort<Result<CatalogEntry, NodeError>>),
}

#[derive(Debug)]
pub struct CatalogActor;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Internal(format!("store task failed: {e}")))?
}

impl Actor for CatalogActor {
    type Msg = CatalogMsg;
    type State = Store;
    type Arguments = Store;

    async fn pre_start(
        &self,
        _me: ActorRef<CatalogMsg>,
        store: Store,
    ) -> Result<Store, ActorProcessingErr> {
        Ok(store)
    }

    async fn handle(
        &self,
        _me: ActorRef<CatalogMsg>,
        msg: CatalogMsg,
        store: &mut Store,
    ) -> Result<(), ActorProcessingErr> {
        let store = store.clone();
        match msg {
            CatalogMsg::Resolve(r, reply) => {
                let result = blocking(move || {
                    let record = store.resolve(&r)?;
                    let path = store.primary_path(&record).ok_or_else(|| {
                        NodeError::InvalidModel(format!(
                            "model {} has no loadable file",
                            record.entry.name
                        ))
                    })?;
                    Ok(ResolvedModel { record, path })
                })
                .await;
                let _ = reply.send(result);
            }
            CatalogMsg::List(reply) => {
                let _ = reply.send(blocking(move || Ok(store.list()?)).await);
            }
            CatalogMsg::Touch(id) => {
                if let Err(e) = blocking(move || Ok(store.touch(&id)?)).await {
                    tracing::warn!("could not stamp {id:?} as used: {e}");
                }
            }
            CatalogMsg::Remove(r, reply) => {
                let _ = reply.send(blocking(move || Ok(store.remove(&r, false)?.0)).await);
            }
        }
        Ok(())
    }
}

pub type CatalogHandle = Handle<CatalogMsg>;

impl CatalogHandle {
    pub async fn resolve(&self, r: ModelRef) -> Result<ResolvedModel, NodeError> {
        self.call(|tx| CatalogMsg::Resolve(r, tx), QUICK).await
    }

    pub async fn list(&self) -> Result<Vec<ModelRecord>, NodeError> {
        self.call(CatalogMsg::List, QUICK).await
    }

    pub fn touch(&self, id: ContentId) {
        self.cast(CatalogMsg::Touch(id));
    }

    pub async fn remove(&self, r: ModelRef) -> Result<CatalogEntry, NodeError> {
        self.call(|tx| CatalogMsg::Remove(r, tx), QUICK).await
    }
}
