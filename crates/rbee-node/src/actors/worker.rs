//! `WorkerActor`: one per device. Owns the models loaded on it and the device's memory budget.
//!
//! Loading runs on the blocking pool and reports back as a message, so the worker keeps
//! answering while a model loads; requests for a loading model wait (bounded by the caller's
//! timeout). A model that does not fit evicts least-recently-used idle models first; one that
//! can never fit is refused with the numbers. Validation runs before any memory is committed,
//! so a broken file is reported at once.
//!
//! A GPU worker splits a model too large for its budget (partial offload, llama.cpp's `-ngl`
//! chosen from memory): as many of its last layers as fit go on its GPU, as many of the layers
//! before those as fit the node's other GPUs' free memory go there (a model spanning GPUs by
//! layers, the GPU with the most free first), and the rest runs on the CPU. Each device's
//! memory is a [`DeviceMemory`] ledger that every worker sees: a split charges its parts to the
//! other devices' ledgers (the CPU's for the host part) and is refused when one has no room.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rbee_infer::InferError;
use rbee_infer::engine::{
    Backend, LoadOptions, LoadedModel, MemoryEstimate, OffloadPlan, SpanDevice,
};
use rbee_proto::ContentId;
use serde::Serialize;

use super::catalog::ResolvedModel;
use super::{Handle, QUICK};
use crate::error::NodeError;
use crate::metrics::Metrics;

type Reply = RpcReplyPort<Result<Arc<dyn LoadedModel>, NodeError>>;

/// How long a request for a larger context waits for a busy model to go idle (so it can be
/// reloaded) before it is served within the context the model has: `GROW_WAITS` × `GROW_WAIT`.
const GROW_WAITS: u8 = 25;
const GROW_WAIT: Duration = Duration::from_millis(20);

pub enum WorkerMsg {
    /// The loaded model, loading it first if needed; with `context`, loaded (or reloaded,
    /// when idle) with at least that many tokens of context where it fits.
    Acquire {
        model: Box<ResolvedModel>,
        context: Option<usize>,
        /// Times this request already waited for a busy model to go idle before growing its
        /// context (bounded by `GROW_WAITS`).
        waited: u8,
        reply: Reply,
    },
    /// Internal: a load finished.
    Loaded {
        id: ContentId,
        result: Result<Arc<dyn LoadedModel>, NodeError>,
    },
    /// Unload if loaded; answers whether it was.
    Unload {
        id: ContentId,
        reply: RpcReplyPort<Result<bool, NodeError>>,
    },
    Status(RpcReplyPort<Result<WorkerStatus, NodeError>>),
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ModelState {
    Loading {
        elapsed_secs: f64,
        bytes: u64,
    },
    Loaded {
        bytes: u64,
        idle_secs: f64,
        /// Anything running, queued or about to be queued: it is not evictable.
        busy: bool,
        /// Requests waiting for the model thread (the engine's count).
        queue: usize,
        /// Sequences the model thread is generating (the engine's count).
        live: usize,
        /// Sequences it generates at once (its batch slots).
        max_live: usize,
        /// KV cache positions for all its sequences (counted in `bytes`).
        kv_budget_tokens: usize,
        /// Tokens of context it was loaded with (the configured length, capped by the model's).
        context_length: usize,
        /// What it runs on: device and kernel set (for a split model, its layers on each).
        runtime: String,
        /// Host memory its layers on the CPU take, charged to the CPU's budget (a model split
        /// by a GPU worker; 0 otherwise).
        host_bytes: u64,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub device: String,
    pub budget_bytes: u64,
    pub used_bytes: u64,
    /// Content id (hex) → name and state.
    pub models: Vec<(String, String, ModelState)>,
    /// Parts of other workers' models held here (layers of a model spanning devices, or the
    /// host part of one a GPU split).
    pub parts: Vec<PartStatus>,
}

/// One device's memory budget, seen by every worker: what its own worker's models take, and
/// the parts of models other workers split onto it (on the CPU, the host parts of models GPU
/// workers split; on a GPU, the layers of a model spanning GPUs).
#[derive(Debug)]
pub struct DeviceMemory {
    budget: u64,
    used: Mutex<DeviceUse>,
}

#[derive(Debug, Default, Clone)]
struct DeviceUse {
    /// Its own worker's models (loading or loaded).
    own: u64,
    /// Parts of models split onto it, held by other workers, by a number of their own.
    parts: Vec<(u64, PartStatus)>,
    next: u64,
}

impl DeviceUse {
    /// Bytes the parts hold.
    fn shares(&self) -> u64 {
        self.parts.iter().map(|(_, p)| p.bytes).sum()
    }
}

/// A part of another worker's model held on a device: shown with the device's status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartStatus {
    pub model: String,
    pub bytes: u64,
    /// The device whose worker loaded the model (and holds its last layers).
    pub held_by: String,
}

impl DeviceMemory {
    pub fn new(budget: u64) -> Arc<DeviceMemory> {
        Arc::new(DeviceMemory {
            budget,
            used: Mutex::new(DeviceUse::default()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut DeviceUse) -> T) -> T {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut used)
    }

    /// Bytes the parts of other workers' split models hold here.
    fn shares(&self) -> u64 {
        self.with(|u| u.shares())
    }

    /// Bytes free: the budget less its own models and the shares.
    fn free(&self) -> u64 {
        self.with(|u| self.budget.saturating_sub(u.own + u.shares()))
    }

    /// Its own worker's use, as it changes.
    fn set_own(&self, own: u64) {
        self.with(|u| u.own = own);
    }

    /// `bytes` here for a part of `model`, split by `held_by`'s worker, if they are free (else
    /// the bytes free).
    fn share(self: &Arc<Self>, bytes: u64, model: &str, held_by: &str) -> Result<Share, u64> {
        self.with(|u| {
            let free = self.budget.saturating_sub(u.own + u.shares());
            if bytes > free {
                return Err(free);
            }
            u.next += 1;
            let id = u.next;
            u.parts.push((
                id,
                PartStatus {
                    model: model.to_string(),
                    bytes,
                    held_by: held_by.to_string(),
                },
            ));
            Ok(Share {
                memory: self.clone(),
                bytes,
                id,
            })
        })
    }

    /// The parts of other workers' models held here.
    fn parts(&self) -> Vec<PartStatus> {
        self.with(|u| u.parts.iter().map(|(_, p)| p.clone()).collect())
    }
}

/// A split model's part on another device: given back when the model's slot goes (evicted,
/// unloaded, reloaded or failed).
#[derive(Debug)]
struct Share {
    memory: Arc<DeviceMemory>,
    bytes: u64,
    id: u64,
}

impl Drop for Share {
    fn drop(&mut self) {
        let id = self.id;
        self.memory.with(|u| u.parts.retain(|(i, _)| *i != id));
    }
}

/// What a split model holds on other devices: its host part, and its layers on other GPUs.
#[derive(Debug, Default)]
struct Parts {
    host: Option<Share>,
    gpus: Vec<Share>,
}

impl Parts {
    fn host_bytes(&self) -> u64 {
        self.host.as_ref().map_or(0, |h| h.bytes)
    }
}

/// Another GPU of this node, which a model too large for this one may span.
#[derive(Debug, Clone)]
pub struct OtherGpu {
    pub name: String,
    /// How the model's runtime names it (`LoadOptions::device_name`, else `name`).
    pub runtime_name: String,
    pub device: rbee_infer::devices::Device,
    pub memory: Arc<DeviceMemory>,
}

enum Slot {
    Loading {
        name: String,
        started: Instant,
        bytes: u64,
        waiters: Vec<Reply>,
        parts: Parts,
    },
    Loaded {
        name: String,
        model: Arc<dyn LoadedModel>,
        bytes: u64,
        last_used: Instant,
        /// Held for the model's parts on other devices while it lives (none: not split).
        parts: Parts,
    },
    Failed {
        name: String,
        reason: String,
    },
}

impl Slot {
    fn bytes(&self) -> u64 {
        match self {
            Slot::Loading { bytes, .. } | Slot::Loaded { bytes, .. } => *bytes,
            Slot::Failed { .. } => 0,
        }
    }
}

#[derive(Clone)]
pub struct WorkerArgs {
    pub device: String,
    pub budget: u64,
    pub backend: Arc<dyn Backend>,
    pub load: LoadOptions,
    pub metrics: Arc<Metrics>,
    /// Where models come from: their files are verified against the manifest through it
    /// before each load (hashed when new or changed). `None` loads files as they are.
    pub store: Option<rbee_store::Store>,
    /// This device's memory ledger: the worker publishes its own use there; other workers
    /// charge the parts of models they split onto this device to it.
    pub memory: Arc<DeviceMemory>,
    /// The host's (the CPU worker's) ledger: a GPU worker charges the host parts of the models
    /// it splits to it.
    pub host: Arc<DeviceMemory>,
    /// The node's other GPUs (on a GPU worker): a model too large for this GPU spans them.
    pub other_gpus: Vec<OtherGpu>,
    /// A GPU: models too large for it are split with the CPU. Not a GPU: this is the CPU
    /// worker, whose budget `host` is.
    pub is_gpu: bool,
    /// Per model name, the most layers a GPU takes (the config's `gpu_layers`): fewer leave
    /// the rest on the CPU even when the whole model would fit.
    pub gpu_layers: Arc<std::collections::BTreeMap<String, usize>>,
}

pub struct WorkerState {
    args: WorkerArgs,
    slots: HashMap<ContentId, Slot>,
}

#[derive(Debug)]
pub struct WorkerActor;

/// A loaded model is idle when its engine runs and queues nothing, and no request holds a
/// handle it has not yet queued on (acquired, about to call `generate`). The engine's count is
/// the truth for work in flight; the handle count only covers that short gap before it.
fn idle(model: &Arc<dyn LoadedModel>) -> bool {
    model.activity().is_idle() && Arc::strong_count(model) == 1
}

impl WorkerState {
    /// Memory in use on this device: its models, and the parts of models other workers split
    /// onto it.
    fn used(&self) -> u64 {
        let own: u64 = self.slots.values().map(Slot::bytes).sum();
        own + self.args.memory.shares()
    }

    /// The worker tells its device's ledger what its own models take.
    fn publish(&self) {
        self.args
            .memory
            .set_own(self.slots.values().map(Slot::bytes).sum());
    }

    fn never_fits(&self, model: &ResolvedModel, needed: u64) -> NodeError {
        NodeError::NeverFits {
            model: model.name().to_string(),
            device: self.args.device.clone(),
            needed,
            budget: self.args.budget,
        }
    }

    /// How `model` would be split over this GPU, the node's other GPUs (most free memory
    /// first) and the host: planned from this device's budget and the others' free memory, at
    /// most `cap` layers on GPUs in all; `None` when not one layer fits this GPU. Also returns
    /// the other GPUs in the order of the plan's parts.
    fn plan_split(
        &self,
        model: &ResolvedModel,
        opts: &LoadOptions,
        cap: usize,
    ) -> Result<Option<(OffloadPlan, Vec<OtherGpu>)>, NodeError> {
        let mut others: Vec<(u64, OtherGpu)> = self
            .args
            .other_gpus
            .iter()
            .map(|g| (g.memory.free(), g.clone()))
            .filter(|(free, _)| *free > 0)
            .collect();
        others.sort_by_key(|(free, _)| std::cmp::Reverse(*free));
        let mut budgets = vec![self.args.budget];
        budgets.extend(others.iter().map(|(free, _)| *free));
        let plan = self
            .args
            .backend
            .plan_offload(&model.path, opts, &budgets, cap)?;
        Ok(plan.map(|p| (p, others.into_iter().map(|(_, g)| g).collect())))
    }

    /// The parts of a split on other devices reserved (the host's and other GPUs'), and the
    /// load options given its layers on each device.
    fn reserve_split(
        &self,
        model: &ResolvedModel,
        plan: &OffloadPlan,
        others: &[OtherGpu],
        opts: &mut LoadOptions,
    ) -> Result<Parts, NodeError> {
        let busy = |what: String, free: u64| NodeError::Busy {
            message: format!(
                "`{}` would run {} of its {} layers on {} and the rest elsewhere, which needs {what}; it has {free} bytes free",
                model.name(),
                plan.layers,
                plan.of,
                self.args.device,
            ),
            retry_after_secs: 2,
        };
        let mut parts = Parts::default();
        opts.more_devices.clear();
        for (part, gpu) in plan.more.iter().zip(others) {
            if part.layers == 0 {
                continue;
            }
            let share = gpu
                .memory
                .share(part.device_bytes, model.name(), &self.args.device)
                .map_err(|free| {
                    busy(format!("{} bytes on {}", part.device_bytes, gpu.name), free)
                })?;
            parts.gpus.push(share);
            opts.more_devices.push(SpanDevice {
                device: gpu.device.clone(),
                name: gpu.runtime_name.clone(),
                layers: part.layers,
            });
        }
        let host = self
            .args
            .host
            .share(plan.host_bytes, model.name(), &self.args.device)
            .map_err(|free| {
                busy(
                    format!(
                        "{} bytes of host memory (the CPU's budget)",
                        plan.host_bytes
                    ),
                    free,
                )
            })?;
        parts.host = Some(host);
        opts.device_layers = Some(plan.layers);
        Ok(parts)
    }

    /// Evicts idle models, least recently used first, until `need` more bytes fit.
    fn make_room(&mut self, need: u64) -> bool {
        while self.used() + need > self.args.budget {
            let victim = self
                .slots
                .iter()
                .filter_map(|(id, s)| match s {
                    Slot::Loaded {
                        model, last_used, ..
                    } if idle(model) => Some((*id, *last_used)),
                    _ => None,
                })
                .min_by_key(|(_, t)| *t)
                .map(|(id, _)| id);
            let Some(id) = victim else { return false };
            if let Some(Slot::Loaded { name, bytes, .. }) = self.slots.remove(&id) {
                tracing::info!(model = %name, bytes, device = %self.args.device, "evicted (least recently used)");
                self.args
                    .metrics
                    .evictions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        true
    }

    fn acquire(
        &mut self,
        me: &ActorRef<WorkerMsg>,
        model: ResolvedModel,
        context: Option<usize>,
        waited: u8,
        reply: Reply,
    ) {
        let id = model.id();
        let trained = usize::try_from(model.record.manifest.metadata.context_length)
            .unwrap_or(usize::MAX)
            .max(1);
        // A context asked for beyond what the model was trained for is clamped to it.
        let wanted = context.map(|c| {
            if c > trained {
                tracing::info!(model = %model.name(), asked = c, trained, "the context asked for is larger than the model's trained context: clamped");
            }
            c.min(trained)
        });
        match self.slots.get_mut(&id) {
            Some(Slot::Loaded {
                model: loaded,
                last_used,
                ..
            }) => {
                let has = loaded.info().context_length;
                let grow = wanted.is_some_and(|w| w > has);
                if grow && idle(loaded) {
                    tracing::info!(model = %model.name(), from = has, to = ?wanted, "reloading with a larger context");
                    self.slots.remove(&id);
                } else {
                    if grow && waited < GROW_WAITS {
                        // A request that just finished may not have left the model thread
                        // yet: ask again shortly, then serve within what it has.
                        let me = me.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(GROW_WAIT).await;
                            let _ = me.cast(WorkerMsg::Acquire {
                                model: Box::new(model),
                                context,
                                waited: waited + 1,
                                reply,
                            });
                        });
                        return;
                    }
                    if grow {
                        tracing::info!(model = %model.name(), context = has, asked = ?wanted, "busy with a smaller context: serving within it");
                    }
                    *last_used = Instant::now();
                    let _ = reply.send(Ok(loaded.clone()));
                    return;
                }
            }
            Some(Slot::Loading { waiters, .. }) => {
                waiters.push(reply);
                return;
            }
            _ => {}
        }
        // Validation and the memory estimate read only the header: fast, and a broken file
        // is reported here, before anything is committed.
        let mut opts = self.args.load.clone();
        if let (Some(w), Some(configured)) = (wanted, opts.context_length)
            && w > configured
        {
            let mut larger = opts.clone();
            larger.context_length = Some(w);
            // Only when it fits the budget; else the configured context.
            match self.fitted(&model.path, &mut larger) {
                Ok(e) if e.total() <= self.args.budget => opts = larger,
                _ => {
                    tracing::info!(model = %model.name(), asked = w, configured, "a larger context does not fit the memory budget: loading with the configured one")
                }
            }
        }
        let estimate = match self.fitted(&model.path, &mut opts) {
            Ok(e) => e,
            Err(e) => {
                let err = NodeError::from(e);
                self.slots.insert(
                    id,
                    Slot::Failed {
                        name: model.name().to_string(),
                        reason: err.to_string(),
                    },
                );
                let _ = reply.send(Err(err));
                return;
            }
        };
        let mut need = estimate.total();
        let mut parts = Parts::default();
        // A layer count configured for this model (`gpu_layers`), on a GPU.
        let cap = self
            .args
            .is_gpu
            .then(|| self.args.gpu_layers.get(model.name()).copied())
            .flatten();
        if self.args.is_gpu && (need > self.args.budget || cap.is_some()) {
            // Too large for this GPU whole, or configured to keep only some layers on GPUs: as
            // many of its last layers as fit here, the layers before them on the node's other
            // GPUs as far as they have room (at most the configured count in all), the rest on
            // the CPU.
            let planned = match self.plan_split(&model, &opts, cap.unwrap_or(usize::MAX)) {
                Ok(plan) => plan,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let whole_fits = need <= self.args.budget;
            match planned {
                Some((plan, _)) if plan.layers == plan.of && whole_fits => {}
                Some((plan, others)) => {
                    match self.reserve_split(&model, &plan, &others, &mut opts) {
                        Ok(reserved) => {
                            let elsewhere: Vec<String> = opts
                                .more_devices
                                .iter()
                                .map(|d| format!("{} on {}", d.layers, d.name))
                                .collect();
                            tracing::info!(model = %model.name(), device = %self.args.device, layers = plan.layers, of = plan.of, other_gpus = ?elsewhere, device_bytes = plan.device_bytes, host_bytes = plan.host_bytes, "splitting it across devices");
                            need = plan.device_bytes;
                            parts = reserved;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
                }
                None if whole_fits => {}
                None => {
                    let _ = reply.send(Err(self.never_fits(&model, need)));
                    return;
                }
            }
        } else if need > self.args.budget {
            let _ = reply.send(Err(self.never_fits(&model, need)));
            return;
        }
        self.slots.remove(&id);
        if !self.make_room(need) {
            let _ = reply.send(Err(NodeError::Busy {
                message: format!(
                    "no room for `{}` ({need} bytes) on {}: every loaded model is busy; retry shortly",
                    model.name(),
                    self.args.device
                ),
                retry_after_secs: 2,
            }));
            return;
        }
        self.slots.insert(
            id,
            Slot::Loading {
                name: model.name().to_string(),
                started: Instant::now(),
                bytes: need,
                waiters: vec![reply],
                parts,
            },
        );
        self.publish();
        let backend = self.args.backend.clone();
        let path: PathBuf = model.path.clone();
        let me = me.clone();
        let store = self.args.store.clone();
        let record = model.record;
        tokio::task::spawn_blocking(move || {
            // The bytes must be the ones the manifest names before an engine sees them: a
            // corrupt blob would otherwise load and serve (bit rot rarely breaks the format).
            let verified = match &store {
                Some(store) => match store.verify_for_load(&record) {
                    Ok(check) if !check.rehashed.is_empty() => {
                        tracing::info!(model = %record.entry.name, files = ?check.rehashed, "verified against the manifest");
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(NodeError::from(e)),
                },
                None => Ok(()),
            };
            let result =
                verified.and_then(|()| backend.load(&path, &opts).map_err(NodeError::from));
            let _ = me.cast(WorkerMsg::Loaded { id, result });
        });
    }

    /// The model's memory estimate; when the default KV budget (a full context for every
    /// sequence slot) would not fit this device, the budget shrinks to what fits (never below
    /// one context): fewer long sequences at once rather than no model. A budget set in the
    /// configuration is kept as it is.
    fn fitted(
        &self,
        path: &std::path::Path,
        opts: &mut LoadOptions,
    ) -> Result<MemoryEstimate, InferError> {
        let estimate = self.args.backend.estimate(path, opts)?;
        if estimate.total() <= self.args.budget
            || opts.kv_budget_tokens.is_some()
            || estimate.kv_bytes_per_token == 0
        {
            return Ok(estimate);
        }
        let kv = estimate.kv_tokens as u64 * estimate.kv_bytes_per_token;
        let fixed = estimate.total().saturating_sub(kv);
        // Less one rounding block: the estimate rounds positions up to 256.
        let fits = (self.args.budget.saturating_sub(fixed) / estimate.kv_bytes_per_token)
            .saturating_sub(256);
        opts.kv_budget_tokens = Some(usize::try_from(fits).unwrap_or(usize::MAX));
        let smaller = self.args.backend.estimate(path, opts)?;
        tracing::info!(
            path = %path.display(),
            "the default KV budget of {} positions needs {} bytes, more than {} has; using {} positions",
            estimate.kv_tokens,
            estimate.total(),
            self.args.device,
            smaller.kv_tokens
        );
        Ok(smaller)
    }

    fn loaded(&mut self, id: ContentId, result: Result<Arc<dyn LoadedModel>, NodeError>) {
        let Some(Slot::Loading {
            name,
            started,
            bytes,
            waiters,
            parts,
        }) = self.slots.remove(&id)
        else {
            return;
        };
        match result {
            Ok(model) => {
                let secs = started.elapsed().as_secs_f64();
                self.args.metrics.model_loaded(secs);
                tracing::info!(model = %name, secs, device = %self.args.device, "loaded");
                for w in waiters {
                    let _ = w.send(Ok(model.clone()));
                }
                self.slots.insert(
                    id,
                    Slot::Loaded {
                        name,
                        model,
                        bytes,
                        last_used: Instant::now(),
                        parts,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(model = %name, "load failed: {e}");
                let reason = e.to_string();
                for w in waiters {
                    let _ = w.send(Err(NodeError::InvalidModel(reason.clone())));
                }
                self.slots.insert(id, Slot::Failed { name, reason });
            }
        }
    }

    fn status(&self) -> WorkerStatus {
        let models = self
            .slots
            .iter()
            .map(|(id, s)| {
                let (name, state) = match s {
                    Slot::Loading {
                        name,
                        started,
                        bytes,
                        ..
                    } => (
                        name,
                        ModelState::Loading {
                            elapsed_secs: started.elapsed().as_secs_f64(),
                            bytes: *bytes,
                        },
                    ),
                    Slot::Loaded {
                        name,
                        model,
                        bytes,
                        last_used,
                        parts,
                    } => {
                        let activity = model.activity();
                        (
                            name,
                            ModelState::Loaded {
                                bytes: *bytes,
                                idle_secs: last_used.elapsed().as_secs_f64(),
                                busy: !idle(model),
                                queue: activity.queued,
                                live: activity.live,
                                max_live: activity.max_live,
                                kv_budget_tokens: model.info().kv_budget_tokens,
                                context_length: model.info().context_length,
                                runtime: model.info().runtime.clone(),
                                host_bytes: parts.host_bytes(),
                            },
                        )
                    }
                    Slot::Failed { name, reason } => (
                        name,
                        ModelState::Failed {
                            reason: reason.clone(),
                        },
                    ),
                };
                (id.to_hex(), name.clone(), state)
            })
            .collect();
        WorkerStatus {
            device: self.args.device.clone(),
            budget_bytes: self.args.budget,
            used_bytes: self.used(),
            models,
            parts: self.args.memory.parts(),
        }
    }
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        tracing::info!(device = %args.device, budget = args.budget, "worker started");
        Ok(WorkerState {
            args,
            slots: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Acquire {
                model,
                context,
                waited,
                reply,
            } => state.acquire(&me, *model, context, waited, reply),
            WorkerMsg::Loaded { id, result } => state.loaded(id, result),
            WorkerMsg::Unload { id, reply } => {
                let was = matches!(state.slots.remove(&id), Some(Slot::Loaded { .. }));
                let _ = reply.send(Ok(was));
            }
            WorkerMsg::Status(reply) => {
                let _ = reply.send(Ok(state.status()));
            }
        }
        state.publish();
        Ok(())
    }
}

pub type WorkerHandle = Handle<WorkerMsg>;

impl WorkerHandle {
    /// The model, loaded; waits at most `wait` for a load in progress.
    pub async fn acquire(
        &self,
        model: ResolvedModel,
        wait: Duration,
    ) -> Result<Arc<dyn LoadedModel>, NodeError> {
        self.acquire_with_context(model, None, wait).await
    }

    /// [`WorkerHandle::acquire`] with at least `context` tokens of context where it fits the
    /// memory budget: a model loaded with less is reloaded when idle (busy, it serves within
    /// what it has); beyond the model's trained context it is clamped (and logged).
    pub async fn acquire_with_context(
        &self,
        model: ResolvedModel,
        context: Option<usize>,
        wait: Duration,
    ) -> Result<Arc<dyn LoadedModel>, NodeError> {
        let name = model.name().to_string();
        let started = Instant::now();
        match self
            .call(
                |reply| WorkerMsg::Acquire {
                    model: Box::new(model),
                    context,
                    waited: 0,
                    reply,
                },
                wait,
            )
            .await
        {
            Err(NodeError::Unavailable(_)) if started.elapsed() >= wait => {
                Err(NodeError::Loading {
                    model: name,
                    elapsed_secs: started.elapsed().as_secs(),
                })
            }
            other => other,
        }
    }

    pub async fn unload(&self, id: ContentId) -> Result<bool, NodeError> {
        self.call(|reply| WorkerMsg::Unload { id, reply }, QUICK)
            .await
    }

    pub async fn status(&self) -> Result<WorkerStatus, NodeError> {
        self.call(WorkerMsg::Status, QUICK).await
    }
}
