//! From the telemetry bus to storage, with nothing lost and nothing stored twice.
//!
//! The MQTT session is persistent and acks are manual: a batch is acknowledged to the broker
//! only after storage acknowledged it, so a crash anywhere in between makes the broker deliver
//! it again. Batches are taken per device in order ([`Progress`]): a redelivery is dropped, and
//! a batch that overtook a lost one is dropped too while the adapter is told to send again.
//! When the storage link breaks, every unacknowledged batch is sent again, in order, on the
//! new link. A batch's alarm transitions travel in the same request, so storage acknowledges
//! both at once. Whenever a device's stored mark moves, it is saved (through storage into SQL,
//! so a restart does not process a batch twice) and then announced retained on the device's
//! `stored` topic, where the adapter releases what it covers from its outbox.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use fieldline_proto::{
    line_samples_filter, stored_topic, v1, v1::storage_service_client::StorageServiceClient,
};
use fieldline_runtime::{
    CancellationToken,
    backoff::Backoff,
    health::{Readiness, Watchdog},
};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    intake::{self, Limits},
    latest::Latest,
    line::LineHandle,
    metrics::ProcessorMetrics,
    progress::{Admission, Progress},
};

/// How often moved stored marks are saved and announced.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(250);

type Shared = Arc<Mutex<Progress>>;

fn lock(progress: &Shared) -> std::sync::MutexGuard<'_, Progress> {
    // The marks stay consistent whatever panicked while holding them: each update is one
    // assignment or queue operation.
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct InFlight {
    id: u64,
    publish: Publish,
    batch: v1::SampleBatch,
    /// What processing the batch decided, stored with it.
    records: Option<v1::PlantRecords>,
}

impl InFlight {
    fn request(&self) -> v1::IngestRequest {
        v1::IngestRequest {
            request_id: self.id,
            batch: Some(self.batch.clone()),
            records: self.records.clone(),
        }
    }
}

/// A batch taken from the bus on its way to storage, with its records.
type Taken = (Publish, v1::SampleBatch, Option<v1::PlantRecords>);

/// Everything the two forwarding tasks share.
pub struct Forwarder {
    pub line: String,
    pub client: AsyncClient,
    pub metrics: ProcessorMetrics,
    pub latest: Latest,
    /// Alarms and control rules, run on every new batch.
    pub engine: Option<LineHandle>,
    pub storage_url: String,
    pub mqtt_ready: Readiness,
    pub storage_ready: Readiness,
    /// What one message from the bus may be.
    pub limits: Limits,
    /// Each device's watermarks, resumed from `progress_store`.
    pub progress: Progress,
    /// Where stored marks are saved (storage, into the line's SQL database), if anywhere.
    pub progress_store: Option<tonic::transport::Channel>,
    /// Stuck when messages from the bus wait and none is handled (acknowledging them waits
    /// for a client queue nobody drains), or batches wait for storage and nothing moves.
    pub bus_watchdog: Watchdog,
    pub storage_watchdog: Watchdog,
}

impl Forwarder {
    /// Runs until `stop`; then waits (up to `drain`) for storage to ack what is in flight,
    /// acks those messages to the broker and disconnects.
    pub async fn run(self, eventloop: EventLoop, stop: CancellationToken, drain: Duration) {
        let progress: Shared = Arc::new(Mutex::new(self.progress));
        let (to_storage, from_mqtt) = mpsc::unbounded_channel();
        let announcing = CancellationToken::new();
        let announce = tokio::spawn(announce(
            self.client.clone(),
            self.line.clone(),
            progress.clone(),
            self.progress_store,
            self.metrics.clone(),
            announcing.clone(),
        ));
        let mqtt_done = CancellationToken::new();
        let consume = tokio::spawn(consume(
            eventloop,
            self.client.clone(),
            self.line.clone(),
            self.limits,
            to_storage,
            progress.clone(),
            self.metrics.clone(),
            self.latest.clone(),
            self.engine.clone(),
            self.mqtt_ready.clone(),
            self.bus_watchdog,
            stop.clone(),
            mqtt_done.clone(),
        ));
        forward(
            from_mqtt,
            self.client.clone(),
            self.line.clone(),
            self.storage_url,
            progress,
            self.metrics,
            self.storage_ready,
            self.storage_watchdog,
            stop,
            drain,
        )
        .await;
        // The last marks go out before the connection closes.
        announcing.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), announce).await;
        let _ = self.client.try_disconnect();
        // Let the event loop send the last acks and the DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_done.cancelled()).await;
        consume.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    mut eventloop: EventLoop,
    client: AsyncClient,
    line: String,
    limits: Limits,
    to_storage: mpsc::UnboundedSender<Taken>,
    progress: Shared,
    metrics: ProcessorMetrics,
    latest: Latest,
    engine: Option<LineHandle>,
    ready: Readiness,
    watchdog: Watchdog,
    stop: CancellationToken,
    done: CancellationToken,
) {
    let filter = line_samples_filter(&line);
    // The event loop is only ever polled here, and this task never waits for the client's
    // request queue: acks and dead letters from the handler fill that queue, and only polling
    // empties it. Messages go to the handler unbounded, which the broker bounds: with manual
    // acks it sends no more than its in-flight limit ahead of them.
    let (incoming, mut received) = mpsc::unbounded_channel::<Publish>();
    let handler = {
        let client = client.clone();
        let stop = stop.clone();
        let watchdog = watchdog.clone();
        tokio::spawn(async move {
            while let Some(publish) = received.recv().await {
                if stop.is_cancelled() {
                    // Not acked: the broker keeps it for the next session.
                    continue;
                }
                handle(
                    publish,
                    &client,
                    &line,
                    limits,
                    &to_storage,
                    &progress,
                    &metrics,
                    &latest,
                    engine.as_ref(),
                )
                .await;
                watchdog.beat();
                watchdog.pending(!received.is_empty());
            }
        })
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        fieldline_runtime::mqtt::RECONNECT_MAX,
    );
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                tracing::info!(filter = %filter, "connected to MQTT broker; subscribing");
                let (client, filter) = (client.clone(), filter.clone());
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        tracing::error!(%error, "cannot subscribe");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => ready.set(true),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                watchdog.pending(true);
                let _ = incoming.send(publish);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                ready.set(false);
                if stop.is_cancelled() {
                    break;
                }
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "MQTT connection failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
    // The handler ends once it has taken what was already received.
    drop(incoming);
    drop(handler);
    done.cancel();
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    publish: Publish,
    client: &AsyncClient,
    line: &str,
    limits: Limits,
    to_storage: &mpsc::UnboundedSender<Taken>,
    progress: &Shared,
    metrics: &ProcessorMetrics,
    latest: &Latest,
    engine: Option<&LineHandle>,
) {
    metrics.received.inc();
    let accepted = match intake::accept(&publish.payload, limits) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            // Retrying cannot help, and holding it would stop the line: refuse, keep a copy.
            metrics.invalid.inc();
            metrics.dead_letter(refusal.kind());
            tracing::warn!(topic = %publish.topic, kind = refusal.kind(), reason = %refusal, bytes = publish.payload.len(), "refused a message from the samples topic");
            let letter = intake::dead_letter(
                &publish.topic,
                refusal.kind(),
                refusal.to_string(),
                &publish.payload,
                fieldline_runtime::now_ns(),
            );
            send_dead_letter(client, line, letter).await;
            let _ = client.ack(&publish).await;
            return;
        }
    };
    let intake::Accepted {
        wire: mut batch,
        checked,
        dropped,
    } = accepted;
    if !dropped.is_empty() {
        metrics.dead_letter("invalid_sample");
        metrics.dropped_samples.inc_by(dropped.len() as u64);
        let reason = dropped
            .iter()
            .map(|(tag, why)| format!("{tag:?}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(device = %batch.device, sequence = batch.sequence, dropped = dropped.len(), %reason, "dropped invalid samples of a batch");
        let letter = intake::dead_letter(
            &publish.topic,
            "invalid_sample",
            reason,
            &publish.payload,
            fieldline_runtime::now_ns(),
        );
        send_dead_letter(client, line, letter).await;
    }
    let admission = lock(progress).admit(
        &batch.device,
        batch.sequence,
        batch.previous_sequence,
        std::time::Instant::now(),
    );
    match admission {
        Admission::Take => {}
        Admission::Duplicate => {
            metrics.duplicates.inc();
            tracing::debug!(device = %batch.device, sequence = batch.sequence, "redelivery of a batch already taken dropped");
            let _ = client.ack(&publish).await;
            return;
        }
        Admission::Gap { durable, notify } => {
            // Taking it now would store it before the batch it follows, which could then never
            // be taken: drop it, and ask the adapter (which still holds both) to send again.
            metrics.gaps.inc();
            tracing::debug!(device = %batch.device, sequence = batch.sequence, previous = batch.previous_sequence, "batch overtook one not yet received; dropped until it is sent again");
            if notify {
                tracing::info!(device = %batch.device, durable, "a batch is missing; asking the adapter to send again");
                let notice = v1::StoredUpTo {
                    line: line.to_string(),
                    device: batch.device.clone(),
                    sequence: durable,
                    gap: true,
                    published_ns: fieldline_runtime::now_ns(),
                };
                let topic = stored_topic(line, &batch.device);
                if let Err(error) = client
                    .publish(topic, QoS::AtLeastOnce, false, notice.encode_to_vec())
                    .await
                {
                    tracing::warn!(%error, "cannot ask the adapter to send again");
                }
            }
            let _ = client.ack(&publish).await;
            return;
        }
    }
    let now = std::time::Instant::now();
    let (device, sequence) = (batch.device.clone(), batch.sequence);
    let checkpoint = lock(progress).checkpoint_due(&device, sequence, now);
    let processed = engine
        .map(|engine| engine.process(&mut batch, checked, metrics, checkpoint))
        .unwrap_or_default();
    if checkpoint {
        lock(progress).checkpoint(&device, sequence, processed.plugin_state, now);
    }
    let records = processed.records;
    latest.apply(&batch);
    if to_storage.send((publish, batch, records)).is_err() {
        lock(progress).abandon(&device, sequence);
        tracing::debug!("forwarder stopped; batch left for redelivery");
    }
}

/// Publishes `letter` on the line's dead-letter topic. The copy is best effort: the refusal is
/// already counted and logged.
async fn send_dead_letter(client: &AsyncClient, line: &str, letter: v1::DeadLetter) {
    let topic = fieldline_proto::dead_letter_topic(line);
    if let Err(error) = client
        .publish(topic, QoS::AtLeastOnce, false, letter.encode_to_vec())
        .await
    {
        tracing::warn!(%error, "cannot publish a dead letter");
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut from_mqtt: mpsc::UnboundedReceiver<Taken>,
    client: AsyncClient,
    line: String,
    storage_url: String,
    progress: Shared,
    metrics: ProcessorMetrics,
    ready: Readiness,
    watchdog: Watchdog,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut next_id: u64 = 1;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut draining_until: Option<tokio::time::Instant> = None;
    'connect: loop {
        if draining_until.is_some_and(|t| tokio::time::Instant::now() >= t)
            || (stop.is_cancelled() && in_flight.is_empty())
        {
            break;
        }
        // Trying to reach storage is progress; only a link that hangs is stuck.
        watchdog.beat();
        let mut storage = match StorageServiceClient::connect(storage_url.clone()).await {
            Ok(c) => c
                .max_encoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES)
                .max_decoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES),
            Err(error) => {
                ready.set(false);
                metrics.error("storage_connect");
                let delay = backoff.next_delay();
                tracing::warn!(url = %storage_url, %error, retry_in = ?delay, "storage unreachable");
                if stop.is_cancelled() && draining_until.is_none() {
                    draining_until = Some(tokio::time::Instant::now() + drain);
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled(), if !stop.is_cancelled() => {}
                }
                continue;
            }
        };
        let (requests, request_rx) = mpsc::channel::<v1::IngestRequest>(1024);
        // Everything not yet acknowledged goes again, in order.
        let resend: Vec<v1::IngestRequest> = in_flight.iter().map(InFlight::request).collect();
        let sender = requests.clone();
        tokio::spawn(async move {
            for r in resend {
                if sender.send(r).await.is_err() {
                    return;
                }
            }
        });
        let mut acks = match storage.ingest(ReceiverStream::new(request_rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                metrics.error("storage_ingest");
                let delay = backoff.next_delay();
                tracing::warn!(%status, retry_in = ?delay, "storage refused the ingest stream");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        ready.set(true);
        backoff.reset();
        tracing::info!(url = %storage_url, resent = in_flight.len(), "storage link up");
        loop {
            if stop.is_cancelled() && draining_until.is_none() {
                draining_until = Some(tokio::time::Instant::now() + drain);
                from_mqtt.close();
            }
            if draining_until.is_some() && in_flight.is_empty() && from_mqtt.is_empty() {
                break 'connect;
            }
            let deadline = draining_until
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = from_mqtt.recv() => {
                    let Some((publish, batch, records)) = received else { continue };
                    let id = next_id;
                    next_id += 1;
                    let taken = InFlight { id, publish, batch, records };
                    let request = taken.request();
                    in_flight.push_back(taken);
                    metrics.in_flight.set(in_flight.len() as i64);
                    watchdog.pending(true);
                    if requests.send(request).await.is_err() {
                        continue 'connect;
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => {
                        let Some(pos) = in_flight.iter().position(|f| f.id == ack.request_id) else { continue };
                        let Some(done) = in_flight.remove(pos) else { continue };
                        metrics.in_flight.set(in_flight.len() as i64);
                        watchdog.beat();
                        watchdog.pending(!in_flight.is_empty());
                        if ack.stored {
                            metrics.stored.inc();
                        } else {
                            // Refused for good: sending it again cannot help. It is
                            // acknowledged below, counted, and kept on the dead-letter topic.
                            metrics.error("refused_by_storage");
                            metrics.dead_letter("refused_by_storage");
                            tracing::warn!(device = %done.batch.device, sequence = done.batch.sequence, detail = %ack.detail, "storage refused a batch; copied to the dead-letter topic");
                            let letter = intake::dead_letter(
                                &done.publish.topic,
                                "refused_by_storage",
                                ack.detail.clone(),
                                &done.publish.payload,
                                fieldline_runtime::now_ns(),
                            );
                            send_dead_letter(&client, &line, letter).await;
                        }
                        if !ack.records_refused.is_empty() {
                            metrics.error("records_refused");
                            tracing::error!(device = %done.batch.device, sequence = done.batch.sequence, reason = %ack.records_refused, "storage refused the alarm records of a batch");
                        }
                        if ack.rejected_samples > 0 {
                            metrics.rejected_samples.inc_by(u64::from(ack.rejected_samples));
                        }
                        lock(&progress).done(&done.batch.device, done.batch.sequence);
                        if let Err(error) = client.ack(&done.publish).await {
                            tracing::warn!(%error, "cannot ack to the broker; it will redeliver");
                        }
                    }
                    Ok(None) | Err(_) => {
                        ready.set(false);
                        metrics.error("storage_link");
                        tracing::warn!(in_flight = in_flight.len(), "storage link lost; reconnecting");
                        continue 'connect;
                    }
                },
                _ = stop.cancelled(), if draining_until.is_none() => {}
                _ = tokio::time::sleep_until(deadline), if draining_until.is_some() => {
                    tracing::warn!(in_flight = in_flight.len(), "storage did not acknowledge everything before shutdown; the broker will redeliver");
                    break 'connect;
                }
            }
        }
    }
}

/// Saves and announces moved stored marks every [`ANNOUNCE_EVERY`], until `stop` (then once
/// more). A mark is saved before it is announced: once the adapter releases a batch, a restart
/// of this processor must still know it was taken. A mark that cannot be saved is not
/// announced; the adapter keeps those batches and sends them again later.
async fn announce(
    client: AsyncClient,
    line: String,
    progress: Shared,
    store: Option<tonic::transport::Channel>,
    metrics: ProcessorMetrics,
    stop: CancellationToken,
) {
    let mut storage = store.map(StorageServiceClient::new);
    let mut failing = false;
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let changes = lock(&progress).take_changes();
        if !changes.is_empty() {
            let now = fieldline_runtime::now_ns();
            if let Some(storage) = &mut storage {
                if let Err(status) = save_marks(storage, &line, &changes, now).await {
                    metrics.error("progress_save");
                    if !failing {
                        tracing::warn!(%status, "cannot save durable marks; announcing them once they are saved");
                    }
                    failing = true;
                    lock(&progress).unannounced(changes.iter().map(|m| m.device.as_str()));
                    if last {
                        return;
                    }
                    continue;
                }
                if std::mem::take(&mut failing) {
                    tracing::info!("durable marks saved again");
                }
            }
            // At most once: each mark is superseded by the next, and the broker keeps the
            // newest retained for an adapter that connects later.
            for mark in &changes {
                let notice = v1::StoredUpTo {
                    line: line.clone(),
                    device: mark.device.clone(),
                    sequence: mark.sequence,
                    gap: false,
                    published_ns: now,
                };
                if client
                    .try_publish(
                        stored_topic(&line, &mark.device),
                        QoS::AtMostOnce,
                        true,
                        notice.encode_to_vec(),
                    )
                    .is_err()
                {
                    // The client's queue is full (the broker is away): next round.
                    lock(&progress).unannounced([mark.device.as_str()]);
                }
            }
        }
        if last {
            return;
        }
    }
}

/// Bytes of plugin state sent to storage in one call at most (a mark's state is bounded by
/// [`crate::plugin_host::STATE_MAX_BYTES`]).
const SAVE_BYTES: usize = 4 << 20;

/// Saves `marks` (each device's durable mark and plugin state) in storage, in calls of at most
/// [`SAVE_BYTES`] of state.
async fn save_marks(
    storage: &mut StorageServiceClient<tonic::transport::Channel>,
    line: &str,
    marks: &[crate::progress::Mark],
    now: i64,
) -> Result<(), tonic::Status> {
    let mut rest = marks;
    while !rest.is_empty() {
        let mut bytes = 0;
        let take = rest
            .iter()
            .position(|m| {
                bytes += m.plugin_state.as_ref().map_or(0, String::len);
                bytes > SAVE_BYTES
            })
            .unwrap_or(rest.len())
            .max(1);
        let (chunk, after) = rest.split_at(take);
        rest = after;
        let records = v1::PlantRecords {
            line: line.to_string(),
            progress: chunk
                .iter()
                .map(|m| v1::DeviceProgress {
                    device: m.device.clone(),
                    stored_seq: m.sequence,
                    updated_ns: now,
                    plugin_state: m.plugin_state.clone().unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        };
        storage.record(records).await?;
    }
    Ok(())
}
