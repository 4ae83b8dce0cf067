//! The node's long-running tasks that are not actors — the servers of `/rbee/infer/1` and
//! `/rbee/shard/1` and the status publisher — run under [`supervise`]: one that panics is
//! restarted after a pause (so a bug in the shard server does not silently end sharing for
//! the life of the process), one that returns has finished (its network stopped).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::metrics::Metrics;

/// First pause before a restart; doubled after each one, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Aborts the task it holds when dropped: aborting the supervisor aborts its task.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `start()` until it returns, restarting it whenever it panics.
pub async fn supervise<F, Fut>(name: &'static str, metrics: Arc<Metrics>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = FIRST_PAUSE;
    loop {
        let task = tokio::spawn(start());
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let restarts = metrics.task_restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    task = name,
                    restarts,
                    "the {name} panicked; restarting it in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            // Aborted: the node is stopping.
            Err(_) => return,
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
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        supervise("test server", metrics.clone(), move || {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 2 {
                    panic!("injected fault {n}");
                }
            }
        })
        .await;
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
    }

    #[tokio::test]
    async fn aborting_the_supervisor_stops_its_task() {
        let alive = Arc::new(());
        let held = alive.clone();
        let supervisor = tokio::spawn(supervise("test server", Arc::default(), move || {
            let held = held.clone();
            async move {
                let _held = held;
                std::future::pending::<()>().await;
            }
        }));
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
