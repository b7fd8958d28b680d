//! Long actions — checkpoint, restore, migrate — run on a thread of their own while the page
//! follows them: each step and byte count they report goes out on the live feed as a `job`
//! event, and so does how they ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feather_vm::checkpoint::Progress;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Byte counts are sent at most this often (a transfer reports every frame).
const BYTES_EVERY: Duration = Duration::from_millis(200);

/// What the page is told about a job.
#[derive(Debug, Clone, Serialize)]
struct JobEvent<'a> {
    id: u64,
    vm: &'a str,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
    finished: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

pub struct Jobs {
    next: AtomicU64,
    feed: broadcast::Sender<Arc<String>>,
}

/// Why a job's work failed: the library's own error, shown with its causes.
pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// What a job's work gets to report its steps with.
pub type Report<'a> = &'a mut dyn FnMut(Progress);

impl Jobs {
    pub fn new() -> Jobs {
        Jobs {
            next: AtomicU64::new(1),
            feed: broadcast::channel(256).0,
        }
    }

    pub fn feed(&self) -> broadcast::Receiver<Arc<String>> {
        self.feed.subscribe()
    }

    /// Starts `work` for `action` on VM `vm`; its id, which its events carry.
    pub fn start(
        &self,
        vm: String,
        action: &'static str,
        work: impl FnOnce(Report<'_>) -> Result<Value, JobError> + Send + 'static,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let feed = self.feed.clone();
        std::thread::spawn(move || {
            let send = |event: JobEvent<'_>| {
                if let Ok(json) = serde_json::to_string(&event) {
                    // No page listening is not an error: the job runs on.
                    let _ = feed.send(Arc::new(json));
                }
            };
            let step = JobEvent {
                id,
                vm: &vm,
                action,
                phase: None,
                done: None,
                total: None,
                finished: false,
                error: None,
                result: None,
            };
            send(JobEvent {
                phase: Some("starting"),
                ..step.clone()
            });
            let mut last_bytes = Instant::now() - BYTES_EVERY;
            let outcome = work(&mut |progress| match progress {
                Progress::Phase(phase) => send(JobEvent {
                    phase: Some(phase),
                    ..step.clone()
                }),
                Progress::Bytes { done, total } => {
                    if last_bytes.elapsed() >= BYTES_EVERY {
                        last_bytes = Instant::now();
                        send(JobEvent {
                            done: Some(done),
                            total: Some(total),
                            ..step.clone()
                        });
                    }
                }
                // The web view shows phases and bytes only.
                Progress::Frozen
                | Progress::Resumed
                | Progress::EstimatedFreeze(_)
                | Progress::Pages { .. } => {}
            });
            let (error, result) = match outcome {
                Ok(result) => (None, Some(result)),
                Err(error) => (Some(feather_core::error::causes(&*error)), None),
            };
            send(JobEvent {
                finished: true,
                error,
                result,
                ..step
            });
        });
        id
    }
}

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs::new()
    }
}
