//! Liveness and readiness. A service is ready when every component it registered (broker
//! link, database, downstream service) says so. It is live while its process answers and no
//! watched loop is stuck: a [`Watchdog`] that has work pending and has not made progress for
//! its `stall_after` makes `/healthz` fail, so Kubernetes restarts the pod.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

type Components = Arc<Mutex<Vec<(String, Arc<AtomicBool>)>>>;
type Watched = Arc<Mutex<Vec<(String, Watchdog)>>>;

/// Shared readiness state of one process.
#[derive(Clone, Default)]
pub struct Health {
    components: Components,
    watched: Watched,
}

/// Progress of one loop that must never get stuck (an event loop, a forwarding task).
#[derive(Clone)]
pub struct Watchdog {
    started: Instant,
    /// Milliseconds since `started` of the last progress.
    last_beat_ms: Arc<AtomicI64>,
    pending: Arc<AtomicBool>,
    stall_after: Duration,
}

impl Watchdog {
    /// The loop made progress.
    pub fn beat(&self) {
        let ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the loop has work waiting; only then can it be stuck.
    pub fn pending(&self, pending: bool) {
        if pending && !self.pending.swap(true, Ordering::Relaxed) {
            // Work arriving at an idle loop starts its clock.
            self.beat();
        } else if !pending {
            self.pending.store(false, Ordering::Relaxed);
        }
    }

    /// How long the loop has been stuck, if it is.
    pub fn stalled(&self) -> Option<Duration> {
        if !self.pending.load(Ordering::Relaxed) {
            return None;
        }
        let last = u64::try_from(self.last_beat_ms.load(Ordering::Relaxed)).unwrap_or(0);
        let since = self
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last));
        (since >= self.stall_after).then_some(since)
    }
}

/// One component's readiness flag.
#[derive(Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Health {
    /// Registers a component, not ready until it says so.
    pub fn component(&self, name: impl Into<String>) -> Readiness {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut components) = self.components.lock() {
            components.push((name.into(), flag.clone()));
        }
        Readiness(flag)
    }

    /// Watches a loop: `/healthz` fails once it has had work pending for `stall_after`
    /// without progress.
    pub fn watchdog(&self, name: impl Into<String>, stall_after: Duration) -> Watchdog {
        let dog = Watchdog {
            started: Instant::now(),
            last_beat_ms: Arc::new(AtomicI64::new(0)),
            pending: Arc::new(AtomicBool::new(false)),
            stall_after,
        };
        if let Ok(mut watched) = self.watched.lock() {
            watched.push((name.into(), dog.clone()));
        }
        dog
    }

    /// Whether no watched loop is stuck, and a description of each one that is.
    pub fn liveness(&self) -> (bool, Vec<String>) {
        let Ok(watched) = self.watched.lock() else {
            return (false, vec!["health state poisoned".into()]);
        };
        let stuck: Vec<String> = watched
            .iter()
            .filter_map(|(name, dog)| {
                dog.stalled().map(|since| {
                    format!(
                        "{name}: no progress for {}s with work pending",
                        since.as_secs()
                    )
                })
            })
            .collect();
        (stuck.is_empty(), stuck)
    }

    /// Whether every component is ready, and the names of those that are not.
    pub fn report(&self) -> (bool, Vec<String>) {
        let Ok(components) = self.components.lock() else {
            return (false, vec!["health state poisoned".into()]);
        };
        let waiting: Vec<String> = components
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect();
        (waiting.is_empty(), waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let health = Health::default();
        let a = health.component("mqtt");
        let b = health.component("storage");
        assert_eq!(
            health.report(),
            (false, vec!["mqtt".to_string(), "storage".to_string()])
        );
        a.set(true);
        b.set(true);
        assert_eq!(health.report(), (true, vec![]));
        a.set(false);
        assert_eq!(health.report(), (false, vec!["mqtt".to_string()]));
    }

    #[test]
    fn a_loop_is_stuck_only_with_work_pending_and_no_progress() {
        let health = Health::default();
        let dog = health.watchdog("publisher", Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(health.liveness().0, "idle is not stuck");
        dog.pending(true);
        assert!(
            health.liveness().0,
            "work that just arrived starts the clock"
        );
        std::thread::sleep(Duration::from_millis(40));
        let (live, stuck) = health.liveness();
        assert!(!live);
        assert!(stuck[0].starts_with("publisher: no progress"), "{stuck:?}");
        dog.beat();
        assert!(health.liveness().0, "progress");
        dog.pending(false);
        std::thread::sleep(Duration::from_millis(40));
        assert!(health.liveness().0, "done");
    }
}
