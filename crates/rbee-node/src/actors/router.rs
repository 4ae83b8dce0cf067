//! `RouterActor`: decides where a request runs — this node's worker or a peer — from the
//! catalog, this node's status and the pool view ([`crate::route`] ranks the candidates),
//! and keeps a backoff for peers that failed recently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::route::{Reason, Target, candidates, held_in_pool};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rbee_net::{Client, PeerId};
use rbee_proto::ModelRef;
use rbee_proto::pool::{DiskModel, NodeStatus};

use super::catalog::{CatalogHandle, ResolvedModel};
use super::workers::Workers;
use super::{Handle, QUICK};
use crate::error::NodeError;

/// First backoff after a peer failure; doubles per further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One place a request can run, best first.
#[derive(Debug, Clone)]
pub enum RouteTarget {
    Local {
        model: Box<ResolvedModel>,
        worker: Workers,
    },
    Peer {
        peer: PeerId,
        node: String,
    },
    /// Nobody can run the model now: this node pulls it from the peers that hold it, then
    /// loads it.
    Pull,
}

pub enum RouterMsg {
    /// Where `reference` (as the user wrote it: `text`) can run, best first.
    Route {
        reference: ModelRef,
        text: String,
        local_only: bool,
        reply: RpcReplyPort<Result<Vec<RouteTarget>, NodeError>>,
    },
    /// How a request sent to a peer went.
    PeerResult(PeerId, bool),
}

#[derive(Clone)]
pub struct RouterArgs {
    pub node: String,
    pub catalog: CatalogHandle,
    pub workers: Workers,
    pub net: Option<Client>,
    /// This node's latest status (kept fresh by the status publisher).
    pub status: Arc<Mutex<Option<NodeStatus>>>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

pub struct RouterState {
    args: RouterArgs,
    backoff: HashMap<PeerId, Backoff>,
}

#[derive(Debug)]
pub struct RouterActor;

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(RouterState {
            args,
            backoff: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route {
                reference,
                text,
                local_only,
                reply,
            } => {
                let now = Instant::now();
                st.backoff.retain(|_, b| b.until > now);
                let avoid: Vec<PeerId> = st.backoff.keys().copied().collect();
                // Resolution is a catalog round trip; do it off the router's mailbox.
                let args = st.args.clone();
                tokio::spawn(async move {
                    let result = route(&args, reference, &text, local_only, &avoid).await;
                    let _ = reply.send(result);
                });
            }
            RouterMsg::PeerResult(peer, ok) => {
                if ok {
                    st.backoff.remove(&peer);
                } else {
                    let failures = st.backoff.get(&peer).map_or(0, |b| b.failures) + 1;
                    let wait = BACKOFF_BASE
                        .saturating_mul(1 << failures.min(6).saturating_sub(1))
                        .min(BACKOFF_MAX);
                    tracing::info!(%peer, failures, secs = wait.as_secs(), "avoiding peer after a failure");
                    st.backoff.insert(
                        peer,
                        Backoff {
                            failures,
                            until: Instant::now() + wait,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

async fn route(
    args: &RouterArgs,
    reference: ModelRef,
    text: &str,
    local_only: bool,
    avoid: &[PeerId],
) -> Result<Vec<RouteTarget>, NodeError> {
    let worker = args.workers.clone();
    let local = match args.catalog.resolve(reference).await {
        Ok(m) => Some(m),
        Err(e) if e.is_model_not_found() => None,
        Err(e) => return Err(e),
    };
    let net = match (&args.net, local_only) {
        (Some(net), false) => net,
        (net, _) => {
            return match local {
                Some(m) => Ok(vec![RouteTarget::Local {
                    model: Box::new(m),
                    worker,
                }]),
                // A peer chose this node to fetch the model and serve it.
                None if net
                    .as_ref()
                    .is_some_and(|n| held_in_pool(text, None, &n.peers())) =>
                {
                    Ok(vec![RouteTarget::Pull])
                }
                None => Err(NodeError::ModelNotFound {
                    model: text.to_string(),
                    checked: vec!["not on this node".into()],
                    hint: Some("GET /v1/models lists what is available".into()),
                }),
            };
        }
    };
    let mut status = args
        .status
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_else(|| NodeStatus {
            name: args.node.clone(),
            api_addr: None,
            seq: 0,
            devices: Vec::new(),
            loaded: Vec::new(),
            on_disk: Vec::new(),
            tokens_per_sec: 0.0,
            presets: Vec::new(),
        });
    // The cached status may predate an import a moment ago: the catalog has the last word.
    if let Some(m) = &local
        && !status.on_disk.iter().any(|d| d.content_id == m.id())
    {
        status.on_disk.push(DiskModel {
            content_id: m.id(),
            names: vec![m.name().to_string()],
            source: None,
            size: m.record.manifest.total_size(),
            shared: true,
        });
    }
    let peers = net.peers();
    let ranked = candidates(
        text,
        local.as_ref().map(|m| m.id()),
        local.as_ref().map(|_| &status),
        &peers,
        |p| avoid.contains(p),
    );
    // Whether a Fetch can succeed: some node (this one included) shares the model.
    let held = held_in_pool(text, local.as_ref().map(|m| m.id()), &peers)
        || local.as_ref().is_some_and(|m| {
            status
                .on_disk
                .iter()
                .any(|d| d.content_id == m.id() && d.shared)
        });
    let mut targets = Vec::new();
    let mut fetch_on = None;
    for c in ranked {
        match (c.target, c.reason) {
            (_, Reason::Fetch) if !held => fetch_on = Some(c.node),
            (Target::Local, Reason::Fetch) => targets.push(RouteTarget::Pull),
            (Target::Local, _) => {
                if let Some(m) = &local {
                    targets.push(RouteTarget::Local {
                        model: Box::new(m.clone()),
                        worker: worker.clone(),
                    });
                }
            }
            (Target::Peer(peer), _) => targets.push(RouteTarget::Peer { peer, node: c.node }),
        }
    }
    if targets.is_empty() {
        let seen = peers.len();
        let hint = match fetch_on {
            Some(node) => format!(
                "Node {node} has the most free memory for it: pull it there (`rbee-node models pull <org/repo>` or `models import`) and ask again"
            ),
            None => "GET /v1/pool shows what each node has".into(),
        };
        return Err(NodeError::ModelNotFound {
            model: text.to_string(),
            checked: vec![
                "not on this node".into(),
                format!("none of the {seen} peer(s) in the pool has it"),
            ],
            hint: Some(hint),
        });
    }
    Ok(targets)
}

pub type RouterHandle = Handle<RouterMsg>;

impl RouterHandle {
    pub async fn route(
        &self,
        reference: ModelRef,
        text: String,
        local_only: bool,
    ) -> Result<Vec<RouteTarget>, NodeError> {
        self.call(
            |reply| RouterMsg::Route {
                reference,
                text,
                local_only,
                reply,
            },
            QUICK,
        )
        .await
    }

    pub fn peer_result(&self, peer: PeerId, ok: bool) {
        self.cast(RouterMsg::PeerResult(peer, ok));
    }
}
