//! The node's long-running tasks that are not actors — the servers of `/rbee/infer/2` and
//! `/rbee/shard/1`, the status publisher, and each pull — run under [`Tasks::supervise`]: one that
//! panics is restarted after a pause (so a bug in the shard server does not silently end
//! sharing for the life of the process, and a pull resumes from its verified shards), one
//! that returns has finished (its network stopped, its pull ended).
//!
//! Every supervised task is registered in [`Tasks`] by name, so `rbee-node status` can show
//! restarts and the fault-injection hook (`fault_kill_tasks`) can make one panic on purpose.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;

/// First pause before a restart; doubled after each one, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The registry of supervised tasks: names, restart counts, and a kill switch each.
#[derive(Debug, Default)]
pub struct Tasks {
    metrics: Arc<Metrics>,
    running: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    /// Tells the running instance to panic (fault injection).
    kill: Arc<tokio::sync::Notify>,
    restarts: u32,
    /// Which registration this is (a name may be reused after its task ended).
    serial: u64,
}

/// What a task that gave up reports: it panicked more times than it may restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crashed {
    pub name: String,
    pub panics: u32,
    pub last: String,
}

impl std::fmt::Display for Crashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} crashed {} time(s), last with: {}",
            self.name, self.panics, self.last
        )
    }
}

/// Removes a task's registration when its supervisor ends (returned, gave up or aborted).
struct Registered<'a> {
    tasks: &'a Tasks,
    name: String,
    serial: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self.tasks.lock();
        if map.get(&self.name).is_some_and(|e| e.serial == self.serial) {
            map.remove(&self.name);
        }
    }
}

/// Aborts the task it holds when dropped: aborting the supervisor aborts its task.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

impl Tasks {
    pub fn new(metrics: Arc<Metrics>) -> Tasks {
        Tasks {
            metrics,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervised tasks running now, with their restart counts, by name.
    pub fn list(&self) -> Vec<(String, u32)> {
        let mut all: Vec<_> = self
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.restarts))
            .collect();
        all.sort();
        all
    }

    /// Makes every running task named `name`, or named `name <something>` (`pull` kills all
    /// pulls), panic at its next await. Returns the names it reached. Fault injection only.
    pub fn kill(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name} ");
        let mut hit = Vec::new();
        for (n, e) in self.lock().iter() {
            if n == name || n.starts_with(&prefix) {
                e.kill.notify_one();
                hit.push(n.clone());
            }
        }
        hit.sort();
        hit
    }

    /// Runs `start()` until it returns, restarting it whenever it panics, at most
    /// `max_restarts` times (`None`: without limit). A task that gave up is [`Crashed`].
    pub async fn supervise<F, Fut>(
        &self,
        name: impl Into<String>,
        max_restarts: Option<u32>,
        mut start: F,
    ) -> Result<(), Crashed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(tokio::sync::Notify::new());
        self.lock().insert(
            name.clone(),
            Entry {
                kill: kill.clone(),
                restarts: 0,
                serial,
            },
        );
        let _registered = Registered {
            tasks: self,
            name: name.clone(),
            serial,
        };
        let mut pause = FIRST_PAUSE;
        let mut panics = 0;
        loop {
            let run = start();
            let kill = kill.clone();
            let label = name.clone();
            let task = tokio::spawn(async move {
                tokio::select! {
                    () = run => {}
                    () = kill.notified() => panic!("the {label} was killed (fault injection)"),
                }
            });
            let _abort = AbortOnDrop(task.abort_handle());
            match task.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_panic() => {
                    panics += 1;
                    let last = panic_message(e);
                    let restarts = self.metrics.task_restarts.fetch_add(1, Ordering::Relaxed) + 1;
                    if max_restarts.is_some_and(|max| panics > max) {
                        tracing::error!(task = %name, "the {name} panicked ({last}); giving up after {panics} panics");
                        return Err(Crashed { name, panics, last });
                    }
                    tracing::error!(
                        task = %name,
                        restarts,
                        "the {name} panicked ({last}); restarting it in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    // Counted once the next instance is about to start.
                    if let Some(e) = self.lock().get_mut(&name).filter(|e| e.serial == serial) {
                        e.restarts = panics;
                    }
                }
                // Aborted: the node is stopping.
                Err(_) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_one_that_returns_is_not() {
        let metrics = Arc::new(Metrics::default());
        let tasks = Tasks::new(metrics.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let ended = tasks
            .supervise("test server", None, move || {
                let n = counted.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 2 {
                        panic!("injected fault {n}");
                    }
                }
            })
            .await;
        assert_eq!(ended, Ok(()));
        assert_eq!(
            runs.load(Ordering::Relaxed),
            3,
            "two restarts, then it returned"
        );
        assert_eq!(metrics.task_restarts.load(Ordering::Relaxed), 2);
        assert!(
            metrics
                .render(&Default::default())
                .contains("rbee_task_restarts_total 2")
        );
        assert!(tasks.list().is_empty(), "a finished task is unregistered");
    }

    #[tokio::test]
    async fn a_task_gives_up_after_its_restarts_naming_the_panic() {
        let tasks = Tasks::default();
        let ended = tasks
            .supervise("pull x", Some(1), || async { panic!("always") })
            .await;
        assert_eq!(
            ended,
            Err(Crashed {
                name: "pull x".into(),
                panics: 2,
                last: "always".into()
            })
        );
        assert!(tasks.list().is_empty());
    }

    #[tokio::test]
    async fn a_killed_task_panics_and_comes_back() {
        let tasks = Arc::new(Tasks::default());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let t = tasks.clone();
        let supervisor = tokio::spawn(async move {
            t.supervise("shard server", None, move || {
                counted.fetch_add(1, Ordering::Relaxed);
                std::future::pending::<()>()
            })
            .await
        });
        let wait_runs = |n: u32| {
            let runs = runs.clone();
            async move {
                for _ in 0..200 {
                    if runs.load(Ordering::Relaxed) >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("never reached {n} runs");
            }
        };
        wait_runs(1).await;
        assert_eq!(tasks.kill("infer server"), Vec::<String>::new());
        assert_eq!(
            tasks.kill("shard serv"),
            Vec::<String>::new(),
            "whole words of the name"
        );
        assert_eq!(tasks.kill("shard server"), vec!["shard server".to_string()]);
        wait_runs(2).await;
        assert_eq!(tasks.list(), vec![("shard server".to_string(), 1)]);
        supervisor.abort();
        let _ = supervisor.await;
        assert!(tasks.list().is_empty(), "an aborted supervisor unregisters");
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_its_task() {
        let alive = Arc::new(());
        let held = alive.clone();
        let tasks = Arc::new(Tasks::default());
        let supervisor = tokio::spawn(async move {
            tasks
                .supervise("test server", None, move || {
                    let held = held.clone();
                    async move {
                        let _held = held;
                        std::future::pending::<()>().await;
                    }
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(Arc::strong_count(&alive), 3, "factory copy + running task");
        supervisor.abort();
        let _ = supervisor.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the task was dropped with its supervisor"
        );
    }
}
