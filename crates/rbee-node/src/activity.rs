//! What the dashboard's Activity view shows: the recent requests that ran (or tried to run) a
//! model, the recent errors among them, and a sampled history of this node's tokens/s and
//! memory. Everything is a fixed-size ring, so a busy node holds the same few kilobytes as an
//! idle one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::NodeContext;

/// Requests kept, newest first out.
pub const MAX_REQUESTS: usize = 200;
/// Failed requests kept apart, so that a burst of successes cannot push them out.
pub const MAX_ERRORS: usize = 50;
/// History samples kept: ten minutes at one sample every [`SAMPLE_EVERY`].
pub const MAX_SAMPLES: usize = 300;
/// How often the history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One request to a model route, as the Activity view lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The route, e.g. `/v1/chat/completions`.
    pub route: String,
    /// The `model` the client asked for (`null` when the body named none).
    pub model: Option<String>,
    /// The node that ran it (the response's `x-rbee-node`), when one did.
    pub node: Option<String>,
    /// The HTTP status; 200 for a stream that later carried an error event (see `error`).
    pub status: u16,
    /// From arrival to the last byte of the response.
    pub duration_ms: u64,
    /// From arrival to the first byte of the response body: the time to first token for a
    /// stream (the first generation starts before the response does).
    pub first_byte_ms: u64,
    /// Completion tokens, from the response's `usage` (`completion_tokens`, or Ollama's
    /// `eval_count`) when it carried one.
    pub completion_tokens: Option<u64>,
    /// The error message, for a failed request or a stream that ended with an error event.
    pub error: Option<String>,
}

/// One history sample of this node.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    /// Tokens generated on this node per second over the sample interval.
    pub tokens_per_sec: f64,
    pub used_bytes: u64,
    pub budget_bytes: u64,
}

#[derive(Debug, Default)]
struct Rings {
    requests: VecDeque<RequestRecord>,
    errors: VecDeque<RequestRecord>,
    history: VecDeque<Sample>,
}

/// The rings; cheap to share (`Arc` inside the node context).
#[derive(Debug, Default)]
pub struct Activity {
    rings: Mutex<Rings>,
}

/// What `GET /v1/activity` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Newest first.
    pub requests: Vec<RequestRecord>,
    /// Newest first.
    pub errors: Vec<RequestRecord>,
    /// Oldest first.
    pub history: Vec<Sample>,
    pub sample_every_secs: u64,
}

fn push<T>(ring: &mut VecDeque<T>, cap: usize, item: T) {
    if ring.len() >= cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Activity {
    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, r: RequestRecord) {
        let mut rings = self.rings();
        if r.error.is_some() || r.status >= 400 {
            push(&mut rings.errors, MAX_ERRORS, r.clone());
        }
        push(&mut rings.requests, MAX_REQUESTS, r);
    }

    pub fn sample(&self, s: Sample) {
        push(&mut self.rings().history, MAX_SAMPLES, s);
    }

    /// Tokens/s of the latest history sample (0 before the first).
    pub fn latest_rate(&self) -> f64 {
        self.rings()
            .history
            .back()
            .map_or(0.0, |s| s.tokens_per_sec)
    }

    pub fn snapshot(&self) -> Snapshot {
        let rings = self.rings();
        Snapshot {
            requests: rings.requests.iter().rev().cloned().collect(),
            errors: rings.errors.iter().rev().cloned().collect(),
            history: rings.history.iter().copied().collect(),
            sample_every_secs: SAMPLE_EVERY.as_secs(),
        }
    }
}

/// Samples this node's tokens/s and memory every [`SAMPLE_EVERY`] into the history (a
/// supervised task for the node's lifetime).
pub async fn sample_history(ctx: Arc<NodeContext>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (
        std::time::Instant::now(),
        ctx.metrics.tokens_generated.load(Ordering::Relaxed),
    );
    loop {
        tick.tick().await;
        let tokens = ctx.metrics.tokens_generated.load(Ordering::Relaxed);
        let secs = last.0.elapsed().as_secs_f64().max(1e-3);
        let rate = tokens.saturating_sub(last.1) as f64 / secs;
        last = (std::time::Instant::now(), tokens);
        // Memory over every device of the node.
        let (used_bytes, budget_bytes) = ctx
            .workers
            .status()
            .await
            .unwrap_or_default()
            .iter()
            .fold((0, 0), |(u, b), w| (u + w.used_bytes, b + w.budget_bytes));
        ctx.activity.sample(Sample {
            at_ms: now_ms(),
            tokens_per_sec: rate,
            used_bytes,
            budget_bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16, error: Option<&str>) -> RequestRecord {
        RequestRecord {
            at_ms: 0,
            route: "/v1/chat/completions".into(),
            model: Some("m".into()),
            node: None,
            status,
            duration_ms: 1,
            first_byte_ms: 1,
            completion_tokens: None,
            error: error.map(String::from),
        }
    }

    #[test]
    fn rings_stay_bounded_and_errors_survive_a_burst_of_successes() {
        let a = Activity::default();
        a.record(record(500, Some("boom")));
        for _ in 0..MAX_REQUESTS + 10 {
            a.record(record(200, None));
        }
        for i in 0..MAX_SAMPLES + 5 {
            a.sample(Sample {
                at_ms: i as u64,
                tokens_per_sec: 0.0,
                used_bytes: 0,
                budget_bytes: 0,
            });
        }
        let s = a.snapshot();
        assert_eq!(s.requests.len(), MAX_REQUESTS);
        assert!(s.requests.iter().all(|r| r.status == 200));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].error.as_deref(), Some("boom"));
        assert_eq!(s.history.len(), MAX_SAMPLES);
        assert_eq!(s.history[0].at_ms, 5, "the oldest samples go first");
    }
}
