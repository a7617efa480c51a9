//! Publishing sample batches to the telemetry bus, with nothing lost.
//!
//! Pollers hand batches to a queue bounded in bytes and never wait on the broker or the disk,
//! so neither can disturb poll timing. One task moves them into the outbox ([`Outbox`]: on
//! disk, one sync per group) and publishes from there (QoS 1) while the broker is connected.
//! A batch leaves the outbox only when the processor's watermark says storage has it; after a
//! session the broker forgot, a gap the processor reports, or a long silence, what is held is
//! sent again. When the queue is full the newest batch is dropped and counted; when the
//! outbox is full it drops its oldest or pauses polling, by configuration.
//!
//! The MQTT event loop runs in its own task and never waits for anything but the network: it
//! reports connections, watermarks and acknowledgements to the publishing task, which hands
//! the client only what its request queue takes at once.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fieldline_core::SampleBatch;
use fieldline_proto::{line_stored_filter, v1};
use fieldline_runtime::{
    CancellationToken,
    backoff::Backoff,
    health::{Readiness, Watchdog},
};
use fieldline_wal::WalError;
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing as MqttOutgoing, Packet, QoS};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::{
    metrics::AdapterMetrics,
    outbox::{Encoded, Outbox, OutboxSettings},
};

/// Requests the MQTT client queues before it refuses more.
const CLIENT_QUEUE: usize = 1024;
/// Most batches moved into the outbox with one sync.
const GROUP: usize = 512;
/// How long the first batch of a group waits for others to share its sync.
const GROUP_WINDOW: Duration = Duration::from_millis(10);
/// Longest wait between resends when nothing is acknowledged.
const RESEND_MAX: Duration = Duration::from_secs(300);

/// Where pollers send their batches.
#[derive(Clone)]
pub struct BatchSink {
    queue: mpsc::UnboundedSender<Encoded>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    paused: Arc<AtomicBool>,
    live: broadcast::Sender<Arc<v1::SampleBatch>>,
    metrics: AdapterMetrics,
    watchdog: Watchdog,
}

impl BatchSink {
    /// Queues a batch for the outbox and hands it to live gRPC subscribers. Never waits.
    pub fn send(&self, batch: SampleBatch) {
        let wire = v1::SampleBatch::from(batch);
        let encoded = Encoded::new(&wire);
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(wire));
        }
        let bytes = encoded.payload.len();
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > self.max_queued_bytes {
            self.metrics.batches_dropped.inc();
            tracing::warn!(device = %encoded.device, sequence = encoded.sequence, "publish queue full; batch dropped");
            return;
        }
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.watchdog.pending(true);
        if self.queue.send(encoded).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            tracing::debug!("publisher stopped; batch not queued");
        }
        self.metrics
            .publish_queue_bytes
            .set(self.queued_bytes.load(Ordering::Relaxed) as i64);
    }

    /// Whether polling should wait: the outbox is full and configured to pause polling.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Live batches, for AdapterService.StreamSamples.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::SampleBatch>> {
        self.live.subscribe()
    }
}

/// How the publisher keeps batches.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    pub line: String,
    pub outbox_dir: PathBuf,
    pub outbox: OutboxSettings,
    /// Pause polling instead of dropping when the outbox is full.
    pub pause_when_full: bool,
    /// Bytes of batches waiting to enter the outbox before new ones are dropped.
    pub queue_bytes: usize,
    pub resend_after: Duration,
    /// How long a stop waits for the broker to take what was published.
    pub flush_timeout: Duration,
}

/// The running publisher.
pub struct Publisher {
    pub sink: BatchSink,
    task: tokio::task::JoinHandle<()>,
}

/// The broker acknowledged a publish, which makes room in the client's queue: told to the
/// publishing task only while it waits for room.
#[derive(Default)]
struct Progress {
    waiting: AtomicBool,
    acked: Notify,
}

/// What the event loop tells the publishing task.
#[derive(Debug)]
enum Link {
    Connected { session_present: bool },
    Disconnected,
    Stored(v1::StoredUpTo),
}

impl Publisher {
    /// Opens the outbox and starts the MQTT client. `stop` ends it after every queued batch
    /// is in the outbox and the broker took what was published (or `flush_timeout` passed).
    pub fn start(
        options: MqttOptions,
        settings: PublisherSettings,
        metrics: AdapterMetrics,
        ready: Readiness,
        watchdog: Watchdog,
        stop: CancellationToken,
    ) -> Result<Self, WalError> {
        let (outbox, recovered) = Outbox::open(&settings.outbox_dir, &settings.outbox)?;
        if recovered.batches > 0 || recovered.cut_bytes > 0 || recovered.unreadable > 0 {
            tracing::info!(
                dir = %settings.outbox_dir.display(),
                batches = recovered.batches,
                cut_bytes = recovered.cut_bytes,
                unreadable = recovered.unreadable,
                "outbox holds batches from before; sending them again"
            );
        }
        metrics.outbox_batches.set(outbox.pending() as i64);
        metrics.outbox_bytes.set(outbox.used_bytes() as i64);
        let (queue, rx) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(1024);
        let (client, eventloop) = AsyncClient::new(options, CLIENT_QUEUE);
        let (links, link_rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress::default());
        let unacked = Arc::new(AtomicI64::new(0));
        let connection = CancellationToken::new();
        tokio::spawn(drive(
            eventloop,
            client.clone(),
            line_stored_filter(&settings.line),
            ready,
            links,
            progress.clone(),
            unacked.clone(),
            connection.clone(),
        ));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let sink = BatchSink {
            queue,
            queued_bytes: queued_bytes.clone(),
            max_queued_bytes: settings.queue_bytes,
            paused: paused.clone(),
            live,
            metrics: metrics.clone(),
            watchdog: watchdog.clone(),
        };
        let pump = Pump {
            watchdog,
            refused: false,
            room: progress.clone(),
            outbox: Arc::new(Mutex::new(outbox)),
            client,
            metrics,
            queued_bytes,
            paused,
            waiting: Vec::new(),
            connected: false,
            unacked,
            resend_after: settings.resend_after,
            resend_wait: settings.resend_after,
            pause_when_full: settings.pause_when_full,
        };
        let task = tokio::spawn(pump.run(
            rx,
            link_rx,
            progress,
            stop,
            connection,
            settings.flush_timeout,
        ));
        Ok(Publisher { sink, task })
    }

    /// Waits until the publisher has flushed and disconnected.
    pub async fn join(self) {
        drop(self.sink);
        let _ = self.task.await;
    }
}

struct Pump {
    room: Arc<Progress>,
    /// Stuck when batches wait and none moves: the client's queue stays full while connected
    /// (its event loop does not drain it), or the outbox does not take any.
    watchdog: Watchdog,
    /// The client refused a batch in the last round (its queue was full) and took none.
    refused: bool,
    outbox: Arc<Mutex<Outbox>>,
    client: AsyncClient,
    metrics: AdapterMetrics,
    queued_bytes: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    /// Batches taken from the queue that the outbox had no room for yet (pause polling).
    waiting: Vec<Encoded>,
    connected: bool,
    /// Publishes the broker has not acknowledged.
    unacked: Arc<AtomicI64>,
    resend_after: Duration,
    resend_wait: Duration,
    pause_when_full: bool,
}

impl Pump {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Encoded>,
        mut links: mpsc::UnboundedReceiver<Link>,
        progress: Arc<Progress>,
        stop: CancellationToken,
        connection: CancellationToken,
        flush_timeout: Duration,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv(), if self.waiting.is_empty() => match batch {
                    Some(batch) => {
                        // What arrives within a moment goes in with the same sync (and
                        // wakes nobody meanwhile).
                        tokio::time::sleep(GROUP_WINDOW).await;
                        let mut group = vec![batch];
                        while group.len() < GROUP {
                            match rx.try_recv() {
                                Ok(b) => group.push(b),
                                Err(_) => break,
                            }
                        }
                        self.store(group).await;
                    }
                    None => break,
                },
                link = links.recv() => match link {
                    Some(link) => self.on_link(link),
                    None => break,
                },
                _ = progress.acked.notified() => {}
                _ = tick.tick() => {
                    if !self.waiting.is_empty() {
                        let group = std::mem::take(&mut self.waiting);
                        self.store(group).await;
                    }
                    self.resend_if_silent();
                }
                _ = stop.cancelled() => break,
            }
            self.publish();
            let waiting = self.queued_bytes.load(Ordering::Relaxed) > 0
                || !self.waiting.is_empty()
                || self.refused;
            // A full outbox that pauses polling waits for storage, which is no fault here.
            if !self.refused || self.paused.load(Ordering::Relaxed) {
                self.watchdog.beat();
            }
            self.watchdog.pending(waiting);
        }
        // Stopping: everything queued goes into the outbox, so nothing accepted is lost;
        // then the broker gets a moment to take what was published.
        rx.close();
        let mut group = std::mem::take(&mut self.waiting);
        while let Some(batch) = rx.recv().await {
            group.push(batch);
        }
        self.store(group).await;
        if !self.waiting.is_empty() {
            tracing::error!(
                batches = self.waiting.len(),
                "stopping with batches the full outbox could not take"
            );
        }
        self.publish();
        let deadline = tokio::time::Instant::now() + flush_timeout;
        while self.connected
            && self.unacked.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::select! {
                link = links.recv() => match link {
                    Some(link) => self.on_link(link),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            self.publish();
        }
        let held = {
            let mut outbox = lock(&self.outbox);
            if let Err(error) = outbox.commit() {
                tracing::warn!(%error, "cannot write the outbox checkpoint; stored batches will be sent again");
            }
            outbox.pending()
        };
        if held > 0 {
            tracing::info!(
                batches = held,
                "stopping with batches storage has not acknowledged; they stay in the outbox"
            );
        }
        // Never wait for room in the client's queue here: with the broker away nothing drains
        // it, and the batches are safe in the outbox anyway.
        if self.client.try_disconnect().is_err() {
            tracing::debug!("the client's queue is full; closing without a DISCONNECT");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        connection.cancel();
    }

    /// Moves batches from the queue into the outbox.
    async fn store(&mut self, group: Vec<Encoded>) {
        if group.is_empty() {
            return;
        }
        let bytes: usize = group.iter().map(|b| b.payload.len()).sum();
        let (group, result) = {
            let outbox = self.outbox.clone();
            tokio::task::spawn_blocking(move || {
                let mut outbox = lock(&outbox);
                let result = outbox.append(&group);
                (
                    group,
                    result.map(|a| (a, outbox.pending(), outbox.used_bytes())),
                )
            })
            .await
            .unwrap_or_else(|join| {
                (
                    Vec::new(),
                    Err(WalError::Io {
                        path: PathBuf::from("outbox"),
                        source: std::io::Error::other(join.to_string()),
                    }),
                )
            })
        };
        match result {
            Ok((appended, pending, used)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.paused.store(false, Ordering::Relaxed);
                if appended.dropped > 0 {
                    self.metrics.outbox_dropped.inc_by(appended.dropped as u64);
                }
                self.metrics.outbox_batches.set(pending as i64);
                self.metrics.outbox_bytes.set(used as i64);
            }
            Err(WalError::Full { used, max }) if self.pause_when_full => {
                if !self.paused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        used,
                        max,
                        "outbox full; polling pauses until storage catches up"
                    );
                }
                self.waiting = group;
            }
            Err(error) => {
                // The disk refused (full, gone): these batches cannot be kept. Counted, loud.
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.metrics.outbox_dropped.inc_by(group.len() as u64);
                self.metrics
                    .errors
                    .get_or_create(&vec![
                        ("device", String::new()),
                        ("kind", error.kind().to_string()),
                    ])
                    .inc();
                tracing::error!(%error, batches = group.len(), "cannot keep batches in the outbox; they are dropped");
            }
        }
        self.metrics
            .publish_queue_bytes
            .set(self.queued_bytes.load(Ordering::Relaxed) as i64);
    }

    fn on_link(&mut self, link: Link) {
        let mut outbox = lock(&self.outbox);
        match link {
            Link::Connected { session_present } => {
                self.connected = true;
                if !session_present && outbox.pending() > 0 {
                    // The broker holds nothing of ours (a new session, a broker that forgot):
                    // everything not stored goes again.
                    tracing::info!(
                        batches = outbox.pending(),
                        "new broker session; sending again what storage does not have"
                    );
                    outbox.resend_all();
                }
            }
            Link::Disconnected => self.connected = false,
            Link::Stored(mark) => {
                let released = match outbox.acknowledge(&mark.device, mark.sequence) {
                    Ok(released) => released,
                    Err(error) => {
                        tracing::error!(%error, "cannot release stored batches from the outbox");
                        0
                    }
                };
                if released > 0 {
                    self.resend_wait = self.resend_after;
                }
                if mark.gap {
                    let again = outbox.resend_device(&mark.device, mark.sequence);
                    if again > 0 {
                        tracing::info!(device = %mark.device, stored = mark.sequence, batches = again, "the processor missed a batch; sending again");
                    }
                }
                self.metrics.outbox_batches.set(outbox.pending() as i64);
                self.metrics.outbox_bytes.set(outbox.used_bytes() as i64);
            }
        }
    }

    /// Probes when nothing was acknowledged for a while: the oldest batch of each device goes
    /// again, which finds a batch lost with nothing after it to reveal the gap, without
    /// flooding a broker that is only waiting for a slow processor. The wait doubles each time.
    fn resend_if_silent(&mut self) {
        if !self.connected {
            return;
        }
        let mut outbox = lock(&self.outbox);
        let Some(sent) = outbox.oldest_sent_at() else {
            return;
        };
        if sent.elapsed() >= self.resend_wait {
            let probes = outbox.resend_oldest();
            tracing::info!(held = outbox.pending(), probes, waited = ?self.resend_wait, "storage acknowledged nothing for a while; sending the oldest batches again");
            self.resend_wait = (self.resend_wait * 2).min(RESEND_MAX);
        }
    }

    /// Hands the client what its queue takes now.
    fn publish(&mut self) {
        self.refused = false;
        if !self.connected {
            return;
        }
        let mut outbox = lock(&self.outbox);
        let now = Instant::now();
        let mut handed = 0;
        loop {
            let batch = match outbox.next_to_send() {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "cannot read a batch back from the outbox");
                    break;
                }
            };
            let mut batch = batch;
            let payload = std::mem::take(&mut batch.payload);
            match self
                .client
                .try_publish(batch.topic.as_ref(), QoS::AtLeastOnce, false, payload)
            {
                Ok(()) => {
                    self.unacked.fetch_add(1, Ordering::Relaxed);
                    self.metrics.batches_published.inc();
                    outbox.sent(&batch, now);
                    handed += 1;
                }
                Err(_) => {
                    // The client's queue is full: this one and the rest wait for the next turn.
                    outbox.put_back(batch);
                    self.refused = handed == 0;
                    self.room.waiting.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// The outbox behind its lock. A panic elsewhere while it was held leaves it usable (each of
/// its operations leaves it consistent), so a poisoned lock is taken over.
fn lock(outbox: &Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    outbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls the MQTT event loop: connects, reconnects with backoff, and reports to the
/// publishing task without ever waiting for it.
#[allow(clippy::too_many_arguments)]
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    stored_filter: String,
    ready: Readiness,
    links: mpsc::UnboundedSender<Link>,
    progress: Arc<Progress>,
    unacked: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        fieldline_runtime::mqtt::RECONNECT_MAX,
    );
    let mut connected = false;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                backoff.reset();
                connected = true;
                unacked.store(0, Ordering::Relaxed);
                let _ = links.send(Link::Connected {
                    session_present: ack.session_present,
                });
                // Never wait for the request queue here: it empties only while this loop polls.
                // Watermarks at most once: each is superseded by the next, and the broker
                // keeps the newest retained. The adapter takes no commands from the bus:
                // writes reach it only from the processor, through the safe write path.
                let (client, stored_filter) = (client.clone(), stored_filter.clone());
                tokio::spawn(async move {
                    if let Err(error) = client.subscribe(stored_filter, QoS::AtMostOnce).await {
                        tracing::error!(%error, "cannot subscribe to watermarks");
                    }
                });
            }
            // Ready once batches can be published and watermarks received.
            Ok(Event::Incoming(Packet::SubAck(_))) => ready.set(true),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic.ends_with("/stored") {
                    match v1::StoredUpTo::decode(publish.payload.as_ref()) {
                        Ok(mark) => {
                            let _ = links.send(Link::Stored(mark));
                        }
                        Err(error) => {
                            tracing::warn!(topic = %publish.topic, %error, "undecodable watermark ignored");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                let _ = unacked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n - 1).max(0))
                });
                // Only a publisher the client's queue turned away waits for this.
                if progress.waiting.swap(false, Ordering::Relaxed) {
                    progress.acked.notify_one();
                }
            }
            // Stopping: the broker closes the connection next, which is no failure.
            Ok(Event::Outgoing(MqttOutgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                ready.set(false);
                if connected {
                    connected = false;
                    let _ = links.send(Link::Disconnected);
                }
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
