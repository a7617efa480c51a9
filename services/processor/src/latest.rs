//! The latest sample of every tag the processor has seen, and a feed of changes, for
//! PlantService.ReadLatest and Subscribe.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use fieldline_proto::v1;
use tokio::sync::broadcast;

type Key = (String, String, String);

#[derive(Clone)]
pub struct Latest {
    samples: Arc<RwLock<BTreeMap<Key, v1::TagSample>>>,
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
        let mut changed = Vec::with_capacity(batch.samples.len());
        if let Ok(mut map) = self.samples.write() {
            for s in &batch.samples {
                let key = (batch.line.clone(), batch.device.clone(), s.tag.clone());
                let newer = map
                    .get(&key)
                    .and_then(|held| held.sample.as_ref())
                    .is_none_or(|held| s.timestamp_ns >= held.timestamp_ns);
                if newer {
                    let tagged = v1::TagSample {
                        line: batch.line.clone(),
                        device: batch.device.clone(),
                        sample: Some(s.clone()),
                    };
                    map.insert(key, tagged.clone());
                    changed.push(tagged);
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
                map.values()
                    .filter(|s| matches(filter, s))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn changes(&self) -> broadcast::Receiver<Arc<Vec<v1::TagSample>>> {
        self.changes.subscribe()
    }
}
