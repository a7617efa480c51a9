//! Liveness and readiness. A service is live while its process answers; it is ready when
//! every component it registered (broker link, database, downstream service) says so.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

type Components = Arc<Mutex<Vec<(String, Arc<AtomicBool>)>>>;

/// Shared readiness state of one process.
#[derive(Clone, Default)]
pub struct Health {
    components: Components,
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
}
