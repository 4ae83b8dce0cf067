#![allow(missing_debug_implementations)] // actor messages carry reply ports and handles
//! The node's actors. Each owns one concern and is reached through a typed handle whose calls
//! all carry a timeout; the supervisor restarts a crashed actor and swaps the new one into the
//! same handle, so callers never hold a dead reference.

pub mod catalog;
pub mod provisioner;
pub mod router;
pub mod supervisor;
pub mod worker;
pub mod workers;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

use crate::error::{NodeError, actor_failed};

/// Calls that should be instant (catalog lookups, status).
pub const QUICK: Duration = Duration::from_secs(10);

/// A reference to an actor that survives its restarts.
pub struct Handle<M: Message> {
    name: &'static str,
    cell: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: Message> std::fmt::Debug for Handle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("name", &self.name).finish()
    }
}

impl<M: Message> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            name: self.name,
            cell: self.cell.clone(),
        }
    }
}

impl<M: Message> Handle<M> {
    /// A handle the supervisor fills in when it starts the actor.
    pub fn empty(name: &'static str) -> Self {
        Handle {
            name,
            cell: Arc::new(RwLock::new(None)),
        }
    }

    pub fn actor(&self) -> Option<ActorRef<M>> {
        self.cell.read().ok().and_then(|a| a.clone())
    }

    pub(crate) fn replace(&self, actor: ActorRef<M>) {
        if let Ok(mut a) = self.cell.write() {
            *a = Some(actor);
        }
    }

    /// Sends a request and waits at most `timeout` for the answer.
    pub async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<Result<T, NodeError>>) -> M,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let actor = self
            .actor()
            .ok_or_else(|| NodeError::Unavailable(format!("{} is gone", self.name)))?;
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(NodeError::Unavailable(format!(
                "{} did not answer within {}s",
                self.name,
                timeout.as_secs()
            ))),
            Ok(CallResult::SenderError) => Err(actor_failed(self.name, "it dropped the request")),
            Err(e) => Err(actor_failed(self.name, e)),
        }
    }

    /// Sends without waiting for an answer; an error when the actor is gone.
    pub fn try_cast(&self, msg: M) -> Result<(), NodeError> {
        let actor = self
            .actor()
            .ok_or_else(|| NodeError::Unavailable(format!("{} is gone", self.name)))?;
        actor.cast(msg).map_err(|e| actor_failed(self.name, e))
    }

    /// Fire and forget.
    pub fn cast(&self, msg: M) {
        if let Some(a) = self.actor() {
            let _ = a.cast(msg);
        }
    }
}
