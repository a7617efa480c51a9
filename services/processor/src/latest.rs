//! The latest sample of every tag the processor has seen, and a feed of changes, for
//! PlantService.ReadLatest and Subscribe.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use fieldline_proto::v1;
use tokio::sync::broadcast;

/// (line, device) → tag → latest sample.
type Devices = BTreeMap<(String, String), BTreeMap<String, v1::TagSample>>;

#[derive(Clone)]
pub struct Latest {
    samples: Arc<RwLock<Devices>>,
    changes: broadcast::Sender<Arc<Vec<v1::TagSample>>>,
}

impl Default for Latest {
    fn default() -> Self {
        Self {
            samples: Arc::default(),
            changes: broadcast::channel(4096).0,
        }
    }
}

/// Whether a sample is selected by a filter (empty fields select everything).
pub fn matches(filter: &v1::TagFilter, s: &v1::TagSample) -> bool {
    (filter.line.is_empty() || filter.line == s.line)
        && (filter.device.is_empty() || filter.device == s.device)
        && (filter.tags.is_empty()
            || s.sample
                .as_ref()
                .is_some_and(|x| filter.tags.contains(&x.tag)))
}

impl Latest {
    /// Records a batch; samples older than what is held (a redelivery) do not replace it.
    pub fn apply(&self, batch: &v1::SampleBatch) {
        // Changes are only assembled while someone subscribes.
        let watched = self.changes.receiver_count() > 0;
        let mut changed = Vec::new();
        if let Ok(mut map) = self.samples.write() {
            let tags = map
                .entry((batch.line.clone(), batch.device.clone()))
                .or_default();
            for s in &batch.samples {
                let newer = match tags.get_mut(s.tag.as_str()) {
                    Some(held) => {
                        let newer = held
                            .sample
                            .as_ref()
                            .is_none_or(|h| s.timestamp_ns >= h.timestamp_ns);
                        if newer {
                            held.sample = Some(s.clone());
                        }
                        newer
                    }
                    None => {
                        tags.insert(
                            s.tag.clone(),
                            v1::TagSample {
                                line: batch.line.clone(),
                                device: batch.device.clone(),
                                sample: Some(s.clone()),
                            },
                        );
                        true
                    }
                };
                if newer && watched {
                    changed.push(v1::TagSample {
                        line: batch.line.clone(),
                        device: batch.device.clone(),
                        sample: Some(s.clone()),
                    });
                }
            }
        }
        if !changed.is_empty() {
            let _ = self.changes.send(Arc::new(changed));
        }
    }

    pub fn snapshot(&self, filter: &v1::TagFilter) -> Vec<v1::TagSample> {
        self.samples
            .read()
            .map(|map| {
                map.iter()
                    .filter(|((line, device), _)| {
                        (filter.line.is_empty() || &filter.line == line)
                            && (filter.device.is_empty() || &filter.device == device)
                    })
                    .flat_map(|(_, tags)| tags.values())
                    .filter(|s| matches(filter, s))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The latest value of a tag, when its latest sample has one.
    pub fn value(&self, line: &str, device: &str, tag: &str) -> Option<fieldline_core::Value> {
        let map = self.samples.read().ok()?;
        let held = map.get(&(line.to_string(), device.to_string()))?.get(tag)?;
        held.sample
            .as_ref()?
            .value
            .clone()
            .and_then(|v| fieldline_core::Value::try_from(v).ok())
    }

    pub fn changes(&self) -> broadcast::Receiver<Arc<Vec<v1::TagSample>>> {
        self.changes.subscribe()
    }
}
