//! What this node tells the pool about itself: its status (devices, loaded and stored
//! models, tokens/s), published on change and periodically, and cached for the router.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbee_net::Client;
use rbee_proto::pool::{DeviceStatus, DiskModel, LoadedModel, NodeStatus, PresetStatus};
use rbee_proto::{ContentId, ModelSource};

use crate::NodeContext;
use crate::actors::worker::ModelState;
use crate::error::NodeError;

/// The node's latest status, shared by the publisher and the router.
pub type StatusCache = Arc<Mutex<Option<NodeStatus>>>;

fn source_ref(source: &ModelSource) -> Option<String> {
    match source {
        ModelSource::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let rev = if revision == "main" {
                String::new()
            } else {
                format!("@{revision}")
            };
            let file = file.as_ref().map(|f| format!(":{f}")).unwrap_or_default();
            Some(format!("{repo}{rev}{file}"))
        }
        ModelSource::Ollama { name } => Some(format!("ollama:{name}")),
        ModelSource::Local { .. } => None,
    }
}

/// The models in this node's store, as the pool sees them.
pub(crate) async fn disk_models(ctx: &NodeContext) -> Result<Vec<DiskModel>, NodeError> {
    let records = ctx.catalog.list().await?;
    Ok(records
        .iter()
        .take(rbee_proto::pool::MAX_STATUS_MODELS)
        .map(|r| DiskModel {
            content_id: r.entry.content_id,
            names: std::iter::once(&r.entry.name)
                .chain(&r.entry.aliases)
                .take(rbee_proto::pool::MAX_MODEL_NAMES)
                .cloned()
                .collect(),
            source: source_ref(&r.manifest.source),
            size: r.manifest.total_size(),
            shared: !ctx.config.not_shared.iter().any(|n| r.entry.answers_to(n)),
        })
        .collect())
}

/// The presets this node shares: every stored one that parses and whose name is not in
/// `not_shared`, with the content ids of its definition and its base.
pub(crate) async fn shared_presets(ctx: &NodeContext) -> Result<Vec<PresetStatus>, NodeError> {
    Ok(crate::preset::all_async(&ctx.store)
        .await?
        .into_iter()
        .filter(|(name, _)| !ctx.config.not_shared.iter().any(|n| n == name))
        .filter_map(|(name, preset)| {
            Some(PresetStatus {
                base: preset.base_id()?,
                id: preset.id(),
                name,
            })
        })
        .filter(|p| p.name.len() <= rbee_proto::pool::MAX_STATUS_STRING)
        .take(rbee_proto::pool::MAX_STATUS_PRESETS)
        .collect())
}

/// What a node stores, as its status lists it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stored {
    pub models: Vec<DiskModel>,
    pub presets: Vec<PresetStatus>,
}

impl Stored {
    pub(crate) async fn read(ctx: &NodeContext) -> Result<Stored, NodeError> {
        Ok(Stored {
            models: disk_models(ctx).await?,
            presets: shared_presets(ctx).await?,
        })
    }
}

/// This node as its peers should see it.
pub(crate) async fn local_status(
    ctx: &NodeContext,
    tokens_per_sec: f32,
    stored: Stored,
) -> Result<NodeStatus, NodeError> {
    let workers = ctx.workers.status().await?;
    let loaded = workers
        .iter()
        .flat_map(|w| w.models.iter().map(move |m| (w, m)))
        .filter_map(|(worker, (id, _, state))| match state {
            ModelState::Loaded {
                queue,
                live,
                max_live,
                busy,
                ..
            } => Some(LoadedModel {
                content_id: id.parse::<ContentId>().ok()?,
                device: worker.device.clone(),
                // Counts as the engine keeps them: waiting for a batch slot, and generating.
                queue: u32::try_from(*queue).unwrap_or(u32::MAX),
                queue_capacity: u32::try_from(ctx.config.queue_capacity).unwrap_or(u32::MAX),
                busy: *busy,
                live: u32::try_from(*live).unwrap_or(u32::MAX),
                max_live: u32::try_from(*max_live).unwrap_or(u32::MAX),
            }),
            _ => None,
        })
        .take(rbee_proto::pool::MAX_STATUS_MODELS)
        .collect();
    Ok(NodeStatus {
        name: ctx.name.clone(),
        api_addr: Some(ctx.api_addr.to_string()),
        seq: 0,
        devices: workers
            .iter()
            .map(|w| DeviceStatus {
                name: w.device.clone(),
                budget_bytes: w.budget_bytes,
                used_bytes: w.used_bytes,
            })
            .collect(),
        loaded,
        on_disk: stored.models,
        tokens_per_sec,
        presets: stored.presets,
    })
}

/// Keeps the status cache fresh and hands every status to the network, which publishes it
/// when it changed and once per interval regardless.
pub async fn publish_status(ctx: Arc<NodeContext>, net: Client) {
    let interval = Duration::from_millis(ctx.config.status_interval_ms);
    let mut tick = tokio::time::interval(interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Recent throughput: generated tokens over a sliding window of about ten seconds.
    let mut window = (
        Instant::now(),
        ctx.metrics.tokens_generated.load(Ordering::Relaxed),
    );
    let mut rate = 0f32;
    // The worker's state changes by the moment and is asked every tick; the catalog (files
    // on disk) changes rarely and is read once per interval.
    let mut on_disk: Option<(Instant, Stored)> = None;
    loop {
        tick.tick().await;
        if on_disk
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= interval)
        {
            match Stored::read(&ctx).await {
                Ok(stored) => on_disk = Some((Instant::now(), stored)),
                Err(e) => tracing::debug!("catalog not available: {e}"),
            }
        }
        let models = on_disk.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(10) {
            let now = ctx.metrics.tokens_generated.load(Ordering::Relaxed);
            rate = (now.saturating_sub(window.1)) as f32 / elapsed.as_secs_f32();
            window = (Instant::now(), now);
        }
        match local_status(&ctx, rate, models).await {
            Ok(status) => {
                if let Ok(mut cache) = ctx.status.lock() {
                    *cache = Some(status.clone());
                }
                if net.publish_status(status).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!("status not available: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_sources_are_published_in_reference_form() {
        let s = ModelSource::HuggingFace {
            repo: "org/r".into(),
            revision: "main".into(),
            file: Some("f.gguf".into()),
        };
        assert_eq!(source_ref(&s).as_deref(), Some("org/r:f.gguf"));
        let s = ModelSource::HuggingFace {
            repo: "org/r".into(),
            revision: "abc".into(),
            file: None,
        };
        assert_eq!(source_ref(&s).as_deref(), Some("org/r@abc"));
    }
}
