//! `Workers`: the node's workers, one per device, and where on this node a model is placed.
//!
//! Placement (the node's half of routing; `route` ranks the nodes):
//! 1. a device that has the model loaded, or loading, serves it;
//! 2. else the GPUs, most free memory first: the first whose worker takes it (it evicts idle
//!    models, least recently used first, when that makes room);
//! 3. else the CPU.
//!
//! A worker that answers "never fits" or "no room, everything is busy" passes the model to the
//! next device; any other answer (a broken file, a load that failed) is the answer.

use std::sync::Arc;
use std::time::Duration;

use rbee_infer::engine::LoadedModel;
use rbee_proto::ContentId;

use super::catalog::ResolvedModel;
use super::worker::{ModelState, WorkerHandle, WorkerStatus};
use crate::error::NodeError;

/// One device's worker.
#[derive(Debug, Clone)]
pub struct DeviceWorker {
    pub device: String,
    pub is_gpu: bool,
    pub handle: WorkerHandle,
}

/// Every worker of the node (never empty: the node offers at least one device).
#[derive(Debug, Clone)]
pub struct Workers {
    all: Arc<Vec<DeviceWorker>>,
}

impl Workers {
    pub fn new(all: Vec<DeviceWorker>) -> Workers {
        Workers { all: Arc::new(all) }
    }

    pub fn devices(&self) -> &[DeviceWorker] {
        &self.all
    }

    /// Every worker's status; the workers that did not answer are left out (an error only
    /// when none answered).
    pub async fn status(&self) -> Result<Vec<WorkerStatus>, NodeError> {
        let mut out = Vec::with_capacity(self.all.len());
        let mut last_err = None;
        for w in self.all.iter() {
            match w.handle.status().await {
                Ok(s) => out.push(s),
                Err(e) => last_err = Some(e),
            }
        }
        match (out.is_empty(), last_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }

    /// The model loaded on the device placement chooses (see the module docs); waits at most
    /// `wait` for a load in progress.
    pub async fn acquire(
        &self,
        model: ResolvedModel,
        wait: Duration,
    ) -> Result<Arc<dyn LoadedModel>, NodeError> {
        self.acquire_with_context(model, None, wait).await
    }

    /// [`acquire`](Self::acquire) with at least `context` tokens of context where the device
    /// chosen can hold it ([`WorkerHandle::acquire_with_context`]).
    pub async fn acquire_with_context(
        &self,
        model: ResolvedModel,
        context: Option<usize>,
        wait: Duration,
    ) -> Result<Arc<dyn LoadedModel>, NodeError> {
        // One device (the common node): nothing to place, no status round trip per request.
        if let [only] = self.all.as_slice() {
            return only.handle.acquire_with_context(model, context, wait).await;
        }
        let id = model.id().to_hex();
        let mut statuses = Vec::with_capacity(self.all.len());
        for w in self.all.iter() {
            statuses.push(w.handle.status().await.ok());
        }
        // 1. Where it is already (or being) loaded.
        for (w, s) in self.all.iter().zip(&statuses) {
            let holds = s.as_ref().is_some_and(|s| {
                s.models.iter().any(|(mid, _, state)| {
                    *mid == id
                        && matches!(
                            state,
                            ModelState::Loaded { .. } | ModelState::Loading { .. }
                        )
                })
            });
            if holds {
                return w.handle.acquire_with_context(model, context, wait).await;
            }
        }
        // 2. GPUs by free memory, then 3. the CPU.
        let mut order: Vec<(usize, u64)> = self
            .all
            .iter()
            .zip(&statuses)
            .enumerate()
            .map(|(i, (_, s))| {
                let free = s
                    .as_ref()
                    .map_or(0, |s| s.budget_bytes.saturating_sub(s.used_bytes));
                (i, free)
            })
            .collect();
        order.sort_by_key(|&(i, free)| (!self.all[i].is_gpu, std::cmp::Reverse(free)));
        let mut refused = None;
        for (i, _) in order {
            let w = &self.all[i];
            match w
                .handle
                .acquire_with_context(model.clone(), context, wait)
                .await
            {
                Err(e @ (NodeError::NeverFits { .. } | NodeError::Busy { .. })) => {
                    tracing::debug!(device = %w.device, model = model.name(), "not placed here: {e}");
                    refused = Some(e);
                }
                other => return other,
            }
        }
        Err(refused.unwrap_or_else(|| NodeError::Unavailable("this node has no worker".into())))
    }

    /// Unloads the model from every device; whether any had it loaded.
    pub async fn unload(&self, id: ContentId) -> Result<bool, NodeError> {
        let mut was = false;
        for w in self.all.iter() {
            was |= w.handle.unload(id).await?;
        }
        Ok(was)
    }
}
