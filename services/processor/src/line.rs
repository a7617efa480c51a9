//! The processor's view of its line while running: the engine behind a lock, the latest
//! values, and the effects task that publishes and streams alarm transitions and carries out
//! the writes control rules ask for. Transitions are stored by whoever caused them: a batch's
//! go to storage with the batch, an operator action's and a timer's through the [`Recorder`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldline_proto::{alarms_topic, v1};
use fieldline_runtime::CancellationToken;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{broadcast, mpsc};

use fieldline_core::{
    alarm::{AlarmEvent, LineAlarms},
    rules::Intent,
};

use crate::{
    engine::Engine, latest::Latest, metrics::ProcessorMetrics, records::Recorder, writes::WritePath,
};

/// How far ahead of its deadline a rule's write is given up.
const RULE_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What the engine asks to be done outside the batch path.
#[derive(Debug)]
pub enum Effect {
    Alarms(Vec<v1::AlarmEvent>),
    /// What rules asked for on the batch with this sequence number.
    Writes {
        intents: Vec<Intent>,
        sequence: u64,
    },
}

/// Shared by the MQTT consumer, PlantService and the write path.
#[derive(Clone)]
pub struct LineHandle {
    pub line: String,
    pub engine: Arc<Mutex<Engine>>,
    pub latest: Latest,
    pub effects: mpsc::UnboundedSender<Effect>,
    pub alarm_feed: broadcast::Sender<v1::AlarmEvent>,
    /// Where transitions that belong to no batch are stored; none without a SQL database.
    pub recorder: Option<Recorder>,
}

/// What processing a batch gave besides the values it added to the batch.
#[derive(Debug, Default)]
pub struct Processed {
    /// Records to store with the batch (its alarm transitions and the states they led to).
    pub records: Option<v1::PlantRecords>,
    /// The device's plugin state right after the batch, when asked for and its type has
    /// plugins.
    pub plugin_state: Option<String>,
}

impl LineHandle {
    /// Runs plugins (adding their values to the batch), alarms and rules on a new batch,
    /// before `latest` and storage take it. `checked` is the same batch, already checked and
    /// in domain types; with `checkpoint` the device's plugin state after it is returned too.
    pub fn process(
        &self,
        batch: &mut v1::SampleBatch,
        checked: fieldline_core::SampleBatch,
        metrics: &ProcessorMetrics,
        checkpoint: bool,
    ) -> Processed {
        let now = fieldline_runtime::now_ns();
        let (line, device) = (batch.line.clone(), batch.device.clone());
        let effects = {
            let Ok(mut engine) = self.engine.lock() else {
                // A panic left the engine's state unusable: alarms and rules cannot run (writes
                // are refused too). Say so loudly; the batch is still stored.
                metrics.error("engine_unavailable");
                tracing::error!(device = %device, "alarms and rules are unavailable: the engine's state is poisoned");
                return Processed::default();
            };
            let effects = engine.process(
                batch,
                checked,
                |tag| self.latest.value(&line, &device, tag),
                now,
            );
            let records = (self.recorder.is_some() && !effects.alarm_events.is_empty())
                .then(|| self.records(&engine, &effects.alarm_events));
            let plugin_state = if checkpoint {
                engine.plugin_state(&device)
            } else {
                None
            };
            (
                effects,
                Processed {
                    records,
                    plugin_state,
                },
            )
        };
        let (effects, processed) = effects;
        if effects.from_the_future > 0 {
            metrics.error("clock_ahead");
            tracing::debug!(device = %device, samples = effects.from_the_future, "samples stamped in the future, processed at their arrival");
        }
        for failure in &effects.plugin_failures {
            metrics.error(&format!("plugin_{}", failure.kind.metric_label()));
        }
        for event in &effects.plugin_events {
            tracing::info!(device = %event.device, plugin = %event.plugin, kind = %event.kind, message = %event.message, "plugin event");
        }
        for problem in &effects.problems {
            metrics.error("alarm_input");
            tracing::debug!(device = %batch.device, %problem, "alarm input");
        }
        if !effects.alarm_events.is_empty() {
            let _ = self.effects.send(Effect::Alarms(effects.alarm_events));
        }
        if !effects.intents.is_empty() {
            let _ = self.effects.send(Effect::Writes {
                intents: effects.intents,
                sequence: batch.sequence,
            });
        }
        processed
    }

    /// Transitions and the states they led to, as records of this line.
    fn records(&self, engine: &Engine, events: &[v1::AlarmEvent]) -> v1::PlantRecords {
        v1::PlantRecords {
            line: self.line.clone(),
            alarm_events: events.to_vec(),
            alarm_states: engine.statuses(events).iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Stores transitions that belong to no batch, without waiting.
    fn record(&self, engine: &Engine, events: &[v1::AlarmEvent]) {
        if let Some(recorder) = &self.recorder {
            recorder.record(self.records(engine, events));
        }
    }

    /// Runs an operator action, hands its transitions on and returns once they are stored
    /// (when storage keeps plant records).
    pub async fn act(
        &self,
        action: impl FnOnce(&mut LineAlarms) -> fieldline_core::Result<Vec<AlarmEvent>>,
    ) -> fieldline_core::Result<Vec<v1::AlarmEvent>> {
        let (events, records) = {
            let mut engine = self
                .engine
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let events = engine.act(action)?;
            let records = (!events.is_empty()).then(|| self.records(&engine, &events));
            (events, records)
        };
        if events.is_empty() {
            return Ok(events);
        }
        let _ = self.effects.send(Effect::Alarms(events.clone()));
        if let (Some(recorder), Some(records)) = (&self.recorder, records)
            && !recorder.record_durably(records).await
        {
            tracing::error!(
                events = events.len(),
                "an operator action took effect but its transitions could not be stored"
            );
        }
        Ok(events)
    }
}

/// Carries out effects until the channel closes or `stop`.
pub async fn run_effects(
    handle: LineHandle,
    mut effects: mpsc::UnboundedReceiver<Effect>,
    client: AsyncClient,
    writes: Arc<WritePath>,
    metrics: ProcessorMetrics,
    stop: CancellationToken,
) {
    let topic = alarms_topic(&handle.line);
    loop {
        let effect = tokio::select! {
            e = effects.recv() => e,
            _ = stop.cancelled() => None,
        };
        let Some(effect) = effect else { return };
        match effect {
            Effect::Alarms(events) => {
                metrics.alarm_events.inc_by(events.len() as u64);
                for e in &events {
                    tracing::info!(alarm = %e.alarm_id, from = ?v1::AlarmState::try_from(e.from_state).unwrap_or_default(), to = ?v1::AlarmState::try_from(e.to_state).unwrap_or_default(), user = %e.user, "alarm");
                    let _ = handle.alarm_feed.send(e.clone());
                    if let Err(error) = client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, e.encode_to_vec())
                        .await
                    {
                        metrics.error("alarm_publish");
                        tracing::warn!(%error, "cannot publish an alarm event");
                    }
                }
            }
            Effect::Writes { intents, sequence } => {
                for intent in intents {
                    let writes = writes.clone();
                    let now = fieldline_runtime::now_ns();
                    let command = v1::Command {
                        ttl_ns: 0,
                        // Named after the batch that asked: if a restart processes that batch
                        // again, the adapter recognises the command and does not write twice.
                        id: format!(
                            "{}-{}-{}-b{sequence}",
                            intent.rule, intent.device, intent.tag
                        ),
                        tag: format!("{}/{}/{}", handle.line, intent.device, intent.tag),
                        value: Some(intent.value.clone().into()),
                        deadline_ns: now
                            + i64::try_from(RULE_WRITE_DEADLINE.as_nanos()).unwrap_or(i64::MAX),
                        requested_by: format!("rule:{}", intent.rule),
                        reason: intent.reason.clone(),
                    };
                    tokio::spawn(async move {
                        writes.write(command, &intent.rule).await;
                    });
                }
            }
        }
    }
}

/// Runs due alarm delays and shelve expiries.
pub async fn run_ticks(handle: LineHandle, stop: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = fieldline_runtime::now_ns();
        let events = match handle.engine.lock() {
            Ok(mut engine) if engine.next_deadline().is_some_and(|d| d <= now) => {
                let events = engine.tick(now);
                if !events.is_empty() {
                    handle.record(&engine, &events);
                }
                events
            }
            _ => continue,
        };
        if !events.is_empty() {
            let _ = handle.effects.send(Effect::Alarms(events));
        }
    }
}
