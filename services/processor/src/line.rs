//! The processor's view of its line while running: the engine behind a lock, the latest
//! values, and the effects task that publishes, streams and persists alarm transitions and
//! carries out the writes control rules ask for.

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
    engine::Engine, latest::Latest, metrics::ProcessorMetrics, persist::Record, writes::WritePath,
};

/// How far ahead of its deadline a rule's write is given up.
const RULE_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What the engine asks to be done outside the batch path.
#[derive(Debug)]
pub enum Effect {
    Alarms(Vec<v1::AlarmEvent>),
    Writes(Vec<Intent>),
}

/// Shared by the MQTT consumer, PlantService and the write path.
#[derive(Clone)]
pub struct LineHandle {
    pub line: String,
    pub engine: Arc<Mutex<Engine>>,
    pub latest: Latest,
    pub effects: mpsc::UnboundedSender<Effect>,
    pub alarm_feed: broadcast::Sender<v1::AlarmEvent>,
}

impl LineHandle {
    /// Runs plugins (adding their values to the batch), alarms and rules on a new batch,
    /// before `latest` and storage take it.
    /// `checked` is the same batch, already checked and in domain types.
    pub fn process(
        &self,
        batch: &mut v1::SampleBatch,
        checked: fieldline_core::SampleBatch,
        metrics: &ProcessorMetrics,
    ) {
        let now = fieldline_runtime::now_ns();
        let (line, device) = (batch.line.clone(), batch.device.clone());
        let effects = {
            let Ok(mut engine) = self.engine.lock() else {
                // A panic left the engine's state unusable: alarms and rules cannot run (writes
                // are refused too). Say so loudly; the batch is still stored.
                metrics.error("engine_unavailable");
                tracing::error!(device = %device, "alarms and rules are unavailable: the engine's state is poisoned");
                return;
            };
            engine.process(
                batch,
                checked,
                |tag| self.latest.value(&line, &device, tag),
                now,
            )
        };
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
            let _ = self.effects.send(Effect::Writes(effects.intents));
        }
    }

    /// Runs an operator action and hands its transitions on.
    pub fn act(
        &self,
        action: impl FnOnce(&mut LineAlarms) -> fieldline_core::Result<Vec<AlarmEvent>>,
    ) -> fieldline_core::Result<Vec<v1::AlarmEvent>> {
        let events = self
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .act(action)?;
        if !events.is_empty() {
            let _ = self.effects.send(Effect::Alarms(events.clone()));
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
    persist: Option<mpsc::UnboundedSender<Record>>,
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
                let statuses = handle
                    .engine
                    .lock()
                    .map(|e| e.statuses(&events))
                    .unwrap_or_default();
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
                if let Some(persist) = &persist {
                    let _ = persist.send(Record::Alarms { events, statuses });
                }
            }
            Effect::Writes(intents) => {
                for intent in intents {
                    let writes = writes.clone();
                    let now = fieldline_runtime::now_ns();
                    let command = v1::Command {
                        ttl_ns: 0,
                        id: format!("{}-{}-{}-{now}", intent.rule, intent.device, intent.tag),
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
            Ok(mut engine) if engine.next_deadline().is_some_and(|d| d <= now) => engine.tick(now),
            _ => continue,
        };
        if !events.is_empty() {
            let _ = handle.effects.send(Effect::Alarms(events));
        }
    }
}
