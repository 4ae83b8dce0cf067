//! Counters for `/metrics`, in Prometheus text format. Plain atomics: the hot path pays one
//! relaxed add per event.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub loads: AtomicU64,
    load_millis: AtomicU64,
    pub evictions: AtomicU64,
    /// Shards sent to peers, and their bytes.
    pub shards_served: AtomicU64,
    pub shard_bytes_served: AtomicU64,
    /// Background tasks (peer servers, status publisher) restarted after a panic.
    pub task_restarts: AtomicU64,
}

/// Point-in-time values the metrics endpoint asks the actors for.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// (device, used bytes, budget bytes)
    pub memory: Vec<(String, u64, u64)>,
    /// (model name, requests waiting for the model thread)
    pub queue_depth: Vec<(String, u64)>,
    /// (model name, sequences being generated)
    pub live_sequences: Vec<(String, u64)>,
    pub models_loaded: u64,
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    pub fn model_loaded(&self, secs: f64) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_millis
            .fetch_add((secs * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rbee_requests_total HTTP requests by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE rbee_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "rbee_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "rbee_tokens_generated_total",
            "Completion tokens generated.",
            self.tokens_generated.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_shards_served_total",
            "Model shards sent to peers.",
            self.shards_served.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_shard_bytes_served_total",
            "Bytes of model shards sent to peers.",
            self.shard_bytes_served.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_task_restarts_total",
            "Background tasks (peer servers, status publisher) restarted after a panic.",
            self.task_restarts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rbee_model_evictions_total",
            "Models unloaded to make room.",
            self.evictions.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP rbee_model_load_seconds Time spent loading models.\n# TYPE rbee_model_load_seconds summary"
        );
        let _ = writeln!(
            out,
            "rbee_model_load_seconds_sum {:.3}",
            self.load_millis.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "rbee_model_load_seconds_count {}",
            self.loads.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rbee_memory_used_bytes Model memory in use per device.\n# TYPE rbee_memory_used_bytes gauge"
        );
        for (device, used, _) in &gauges.memory {
            let _ = writeln!(out, "rbee_memory_used_bytes{{device=\"{device}\"}} {used}");
        }
        let _ = writeln!(
            out,
            "# HELP rbee_memory_budget_bytes Model memory budget per device.\n# TYPE rbee_memory_budget_bytes gauge"
        );
        for (device, _, budget) in &gauges.memory {
            let _ = writeln!(
                out,
                "rbee_memory_budget_bytes{{device=\"{device}\"}} {budget}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rbee_queue_depth Requests waiting for the model thread, per model.\n# TYPE rbee_queue_depth gauge"
        );
        for (model, depth) in &gauges.queue_depth {
            let _ = writeln!(out, "rbee_queue_depth{{model=\"{model}\"}} {depth}");
        }
        let _ = writeln!(
            out,
            "# HELP rbee_live_sequences Sequences being generated now, per model.\n# TYPE rbee_live_sequences gauge"
        );
        for (model, live) in &gauges.live_sequences {
            let _ = writeln!(out, "rbee_live_sequences{{model=\"{model}\"}} {live}");
        }
        let _ = writeln!(
            out,
            "# HELP rbee_models_loaded Models loaded now.\n# TYPE rbee_models_loaded gauge\nrbee_models_loaded {}",
            gauges.models_loaded
        );
        out
    }
}
