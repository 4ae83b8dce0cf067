//! Long-running jobs (imports, loads, inference) and their event streams.
//!
//! Every job keeps its events so far (bounded) and broadcasts new ones, so a subscriber that
//! arrives late gets the history first and then live events, with nothing lost in between:
//! the snapshot and the subscription are taken under the same lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{Notify, broadcast};

/// Jobs kept after they finish, for `GET /v1/jobs`.
const MAX_JOBS: usize = 256;
/// Events kept per job; progress events beyond it are dropped from the history (the latest
/// always goes to live subscribers).
const MAX_EVENTS: usize = 10_000;
const LIVE_BUFFER: usize = 1024;

/// One event of a job's stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    Phase {
        phase: String,
    },
    Progress {
        done: u64,
        total: u64,
        rate_bytes_per_sec: f64,
        eta_secs: Option<f64>,
        /// The peers a pool pull is fetching from right now.
        #[serde(skip_serializing_if = "Option::is_none")]
        peers: Option<Vec<String>>,
    },
    Token {
        text: String,
    },
    Done {
        result: serde_json::Value,
    },
    Error {
        message: String,
    },
}

impl JobEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobEvent::Done { .. } | JobEvent::Error { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Phase { .. } => "phase",
            JobEvent::Progress { .. } => "progress",
            JobEvent::Token { .. } => "token",
            JobEvent::Done { .. } => "done",
            JobEvent::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug)]
struct JobState {
    events: Vec<JobEvent>,
    status: JobStatus,
}

/// A job: its id, what it does, its events, and a cancel flag.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub operation: String,
    pub created_at: u64,
    state: Mutex<JobState>,
    live: broadcast::Sender<JobEvent>,
    cancelled: AtomicBool,
    cancel_notify: Notify,
}

/// See [`Job::fail_unless_ended`].
#[derive(Debug)]
pub struct FailUnlessEnded<'a> {
    job: &'a Job,
    message: &'static str,
}

impl Drop for FailUnlessEnded<'_> {
    fn drop(&mut self) {
        // A no-op for a job that already ended (`emit` ignores events after the last).
        self.job.fail(self.message);
    }
}

impl Job {
    pub fn emit(&self, event: JobEvent) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.status != JobStatus::Running {
            return;
        }
        let keep = st.events.len() < MAX_EVENTS || !matches!(event, JobEvent::Progress { .. });
        if event.is_terminal() {
            st.status = match (&event, self.is_cancelled()) {
                (JobEvent::Done { .. }, _) => JobStatus::Done,
                (_, true) => JobStatus::Cancelled,
                _ => JobStatus::Failed,
            };
        }
        if keep {
            st.events.push(event.clone());
        }
        // No receiver is fine: nobody is watching live.
        let _ = self.live.send(event);
    }

    pub fn phase(&self, phase: &str) {
        self.emit(JobEvent::Phase {
            phase: phase.to_string(),
        });
    }

    pub fn fail(&self, message: impl std::fmt::Display) {
        self.emit(JobEvent::Error {
            message: message.to_string(),
        });
    }

    pub fn done(&self, result: serde_json::Value) {
        self.emit(JobEvent::Done { result });
    }

    /// A guard that fails the job with `message` when dropped, unless it ended before: every
    /// early return of the code that owns the job ends it, so none is left `running`.
    pub fn fail_unless_ended(&self, message: &'static str) -> FailUnlessEnded<'_> {
        FailUnlessEnded { job: self, message }
    }

    /// The history so far and a receiver for what comes next, with no gap between them.
    pub fn subscribe(&self) -> (Vec<JobEvent>, Option<broadcast::Receiver<JobEvent>>) {
        match self.state.lock() {
            Ok(st) => {
                let rx = (st.status == JobStatus::Running).then(|| self.live.subscribe());
                (st.events.clone(), rx)
            }
            Err(_) => (Vec::new(), None),
        }
    }

    pub fn status(&self) -> JobStatus {
        self.state
            .lock()
            .map(|s| s.status)
            .unwrap_or(JobStatus::Failed)
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.cancel_notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        let notified = self.cancel_notify.notified();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    /// What `GET /v1/jobs` shows: with the error of a failed job and the result of a finished
    /// one, so nobody has to replay the stream to learn why a job failed.
    pub fn summary(&self) -> serde_json::Value {
        let (status, events, last) = self
            .state
            .lock()
            .map(|s| (s.status, s.events.len(), s.events.last().cloned()))
            .unwrap_or((JobStatus::Failed, 0, None));
        let (error, result) = match last {
            Some(JobEvent::Error { message }) => (Some(message), None),
            Some(JobEvent::Done { result }) => (None, Some(result)),
            _ => (None, None),
        };
        serde_json::json!({
            "job_id": self.id,
            "operation": self.operation,
            "status": status,
            "created_at": self.created_at,
            "events": events,
            "error": error,
            "result": result,
        })
    }
}

/// Jobs by id, and their ids in creation order.
type JobTable = (HashMap<String, Arc<Job>>, VecDeque<String>);

/// All jobs of this node.
#[derive(Debug, Default)]
pub struct Jobs {
    inner: Mutex<JobTable>,
    counter: AtomicU64,
}

impl Jobs {
    pub fn create(&self, operation: &str) -> Arc<Job> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let job = Arc::new(Job {
            id: format!("job-{now:x}-{n}"),
            operation: operation.to_string(),
            created_at: now,
            state: Mutex::new(JobState {
                events: Vec::new(),
                status: JobStatus::Running,
            }),
            live,
            cancelled: AtomicBool::new(false),
            cancel_notify: Notify::new(),
        });
        if let Ok(mut inner) = self.inner.lock() {
            let (map, order) = &mut *inner;
            map.insert(job.id.clone(), job.clone());
            order.push_back(job.id.clone());
            // Forget the oldest finished jobs beyond the cap; running ones stay.
            while order.len() > MAX_JOBS {
                let Some(pos) = order
                    .iter()
                    .position(|id| map.get(id).is_none_or(|j| j.status() != JobStatus::Running))
                else {
                    break;
                };
                if let Some(id) = order.remove(pos) {
                    map.remove(&id);
                }
            }
        }
        job
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.inner.lock().ok()?.0.get(id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .1
            .iter()
            .rev()
            .filter_map(|id| inner.0.get(id).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_subscriber_gets_history_then_live_events() {
        let jobs = Jobs::default();
        let job = jobs.create("infer");
        job.phase("loading");
        job.emit(JobEvent::Token { text: "a".into() });
        let (history, rx) = job.subscribe();
        assert_eq!(history.len(), 2);
        let mut rx = rx.unwrap();
        job.emit(JobEvent::Token { text: "b".into() });
        job.done(serde_json::json!({}));
        assert_eq!(
            rx.recv().await.unwrap(),
            JobEvent::Token { text: "b".into() }
        );
        assert!(rx.recv().await.unwrap().is_terminal());
        // After the end: history only, nothing live, and nothing more is recorded.
        job.emit(JobEvent::Token {
            text: "late".into(),
        });
        let (history, rx) = job.subscribe();
        assert_eq!(history.len(), 4);
        assert!(rx.is_none());
        assert_eq!(job.status(), JobStatus::Done);
    }

    #[test]
    fn a_dropped_guard_ends_a_running_job_and_leaves_an_ended_one() {
        let jobs = Jobs::default();
        let job = jobs.create("infer");
        drop(job.fail_unless_ended("the peer went away"));
        assert_eq!(job.status(), JobStatus::Failed);
        assert!(job.summary().to_string().contains("the peer went away"));
        let job = jobs.create("infer");
        {
            let _guard = job.fail_unless_ended("the peer went away");
            job.done(serde_json::json!({"ok": true}));
        }
        assert_eq!(job.status(), JobStatus::Done);
    }

    #[tokio::test]
    async fn cancel_wakes_waiters_and_marks_the_job() {
        let jobs = Jobs::default();
        let job = jobs.create("model_import");
        let waiter = {
            let job = job.clone();
            tokio::spawn(async move { job.cancelled().await })
        };
        tokio::task::yield_now().await;
        job.cancel();
        waiter.await.unwrap();
        job.fail("cancelled");
        assert_eq!(job.status(), JobStatus::Cancelled);
    }

    #[test]
    fn old_finished_jobs_are_forgotten() {
        let jobs = Jobs::default();
        let first = jobs.create("x");
        first.done(serde_json::json!(null));
        for _ in 0..MAX_JOBS {
            jobs.create("y");
        }
        assert!(jobs.get(&first.id).is_none());
        assert_eq!(jobs.list().len(), MAX_JOBS);
    }
}
