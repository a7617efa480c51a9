//! Publishing sample batches to the telemetry bus.
//!
//! Pollers hand batches to a bounded queue and never wait on the broker, so a slow or absent
//! broker cannot disturb poll timing. One task drains the queue into the MQTT client (QoS 1,
//! persistent session: the client resends unacknowledged messages after a reconnect). When
//! the queue is full the newest batch is dropped and counted. On shutdown the queue is
//! drained and the task waits for the broker's acknowledgements before disconnecting.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use fieldline_core::SampleBatch;
use fieldline_proto::{samples_topic, v1};
use fieldline_runtime::{CancellationToken, backoff::Backoff, health::Readiness};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{broadcast, mpsc};

use crate::{commands::CommandRouter, metrics::AdapterMetrics};

/// Batches that may wait for the broker before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 10_000;

/// Where pollers send their batches.
#[derive(Clone)]
pub struct BatchSink {
    queue: mpsc::Sender<SampleBatch>,
    live: broadcast::Sender<Arc<v1::SampleBatch>>,
    metrics: AdapterMetrics,
    capacity: usize,
}

impl BatchSink {
    /// Queues a batch for MQTT and hands it to live gRPC subscribers. Never waits.
    pub fn send(&self, batch: SampleBatch) {
        // Converting for live streams costs a copy of the batch: only when someone listens.
        if self.live.receiver_count() > 0 {
            let _ = self
                .live
                .send(Arc::new(v1::SampleBatch::from(batch.clone())));
        }
        match self.queue.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                self.metrics.batches_dropped.inc();
                tracing::warn!(device = %batch.device, sequence = batch.sequence, "publish queue full; batch dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("publisher stopped; batch not queued");
            }
        }
        self.metrics
            .publish_queue
            .set((self.capacity - self.queue.capacity()) as i64);
    }

    /// Live batches, for AdapterService.StreamSamples.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::SampleBatch>> {
        self.live.subscribe()
    }
}

/// The running publisher.
pub struct Publisher {
    pub sink: BatchSink,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Starts the MQTT client. `stop` ends it after everything queued before was acknowledged
    /// by the broker (or `flush_timeout` passed).
    pub fn start(
        options: MqttOptions,
        capacity: usize,
        metrics: AdapterMetrics,
        ready: Readiness,
        stop: CancellationToken,
        flush_timeout: Duration,
        commands: Arc<CommandRouter>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let (live, _) = broadcast::channel(1024);
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let unacked = Arc::new(AtomicI64::new(0));
        let connection = CancellationToken::new();
        tokio::spawn(drive(
            eventloop,
            client.clone(),
            commands,
            ready,
            unacked.clone(),
            connection.clone(),
        ));
        let task = tokio::spawn(drain(
            rx,
            client,
            metrics.clone(),
            unacked,
            stop,
            connection,
            flush_timeout,
        ));
        Publisher {
            sink: BatchSink {
                queue,
                live,
                metrics,
                capacity: capacity.max(1),
            },
            task,
        }
    }

    /// Waits until the publisher has flushed and disconnected.
    pub async fn join(self) {
        drop(self.sink);
        let _ = self.task.await;
    }
}

async fn drain(
    mut rx: mpsc::Receiver<SampleBatch>,
    client: AsyncClient,
    metrics: AdapterMetrics,
    unacked: Arc<AtomicI64>,
    stop: CancellationToken,
    connection: CancellationToken,
    flush_timeout: Duration,
) {
    loop {
        let batch = tokio::select! {
            batch = rx.recv() => batch,
            _ = stop.cancelled() => None,
        };
        let Some(batch) = batch else { break };
        publish(&client, &metrics, &unacked, batch).await;
    }
    // Shutdown: publish what is still queued, then wait for the broker's acks.
    rx.close();
    while let Some(batch) = rx.recv().await {
        publish(&client, &metrics, &unacked, batch).await;
    }
    let deadline = tokio::time::Instant::now() + flush_timeout;
    while unacked.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = unacked.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            unacknowledged = left,
            "stopping with batches the broker has not acknowledged"
        );
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    connection.cancel();
}

async fn publish(
    client: &AsyncClient,
    metrics: &AdapterMetrics,
    unacked: &AtomicI64,
    batch: SampleBatch,
) {
    let topic = samples_topic(&batch.line, &batch.device);
    let payload = v1::SampleBatch::from(batch).encode_to_vec();
    unacked.fetch_add(1, Ordering::Relaxed);
    match client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        Ok(()) => {
            metrics.batches_published.inc();
        }
        Err(error) => {
            unacked.fetch_sub(1, Ordering::Relaxed);
            metrics.batches_dropped.inc();
            tracing::error!(%error, "MQTT client refused a batch");
        }
    }
}

/// Polls the MQTT event loop: connects, reconnects with backoff, counts acknowledgements.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    commands: Arc<CommandRouter>,
    ready: Readiness,
    unacked: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to MQTT broker");
                backoff.reset();
                // Never wait for the request queue here: the batches queued in it leave only
                // while this loop polls.
                let (client, filter) = (client.clone(), commands.filter());
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(filter, QoS::AtLeastOnce).await {
                        tracing::error!(%error, "cannot subscribe to commands");
                    }
                });
            }
            // Ready once batches can be published and commands received.
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                ready.set(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish)))
                if commands.is_command(&publish.topic) =>
            {
                tokio::spawn(commands.clone().handle(client.clone(), publish));
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                unacked.fetch_sub(1, Ordering::Relaxed);
            }
            // Stopping: the broker closes the connection next, which is no failure.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                ready.set(false);
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "MQTT connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
