//! Plant records that belong to no batch (operator actions on alarms, timed alarm
//! transitions, the write audit) go to storage's StorageService.Record, in order, and are
//! retried until storage has them durably. A batch's own alarm transitions travel with the
//! batch instead (see the forwarder), so they are acknowledged together.
//!
//! The queue is bounded: while storage is away for long, records beyond it are refused
//! loudly (counted in `errors_total{kind="records_queue_full"}`) rather than held without
//! limit. On stop the queue is drained for [`DRAIN`], and what is left is reported.

use std::time::Duration;

use fieldline_proto::v1::{self, storage_service_client::StorageServiceClient};
use fieldline_runtime::{CancellationToken, backoff::Backoff};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, transport::Channel};

use crate::metrics::ProcessorMetrics;

/// Sets of records waiting for storage at most.
pub const QUEUE: usize = 10_000;
/// How long records still queued at stop are given to reach storage.
pub const DRAIN: Duration = Duration::from_secs(5);
/// Most sets sent in one call.
const PER_CALL: usize = 256;

struct Job {
    records: v1::PlantRecords,
    done: Option<oneshot::Sender<bool>>,
}

/// Hands plant records to storage. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    line: String,
    jobs: mpsc::Sender<Job>,
    metrics: ProcessorMetrics,
}

impl Recorder {
    /// Starts the task that sends the records; it runs until `stop` and then drains.
    pub fn start(
        line: &str,
        storage: Channel,
        metrics: ProcessorMetrics,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let client = StorageServiceClient::new(storage)
            .max_encoding_message_size(fieldline_proto::MAX_MESSAGE_BYTES);
        let task = run(client, queue, metrics.clone(), stop);
        (
            Self {
                line: line.to_string(),
                jobs,
                metrics,
            },
            task,
        )
    }

    /// Empty records of this recorder's line.
    pub fn empty(&self) -> v1::PlantRecords {
        v1::PlantRecords {
            line: self.line.clone(),
            ..Default::default()
        }
    }

    /// Queues records and returns at once.
    pub fn record(&self, records: v1::PlantRecords) {
        self.queue(records, None);
    }

    /// Queues records and waits until storage has them durably; `false` when they were
    /// refused or the recorder stopped first.
    pub async fn record_durably(&self, records: v1::PlantRecords) -> bool {
        let (done, stored) = oneshot::channel();
        self.queue(records, Some(done));
        stored.await.unwrap_or(false)
    }

    fn queue(&self, records: v1::PlantRecords, done: Option<oneshot::Sender<bool>>) {
        match self.jobs.try_send(Job { records, done }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.metrics.error("records_queue_full");
                tracing::error!(
                    alarm_events = job.records.alarm_events.len(),
                    commands = job.records.commands.len(),
                    "plant records not stored: storage has been away so long that {QUEUE} sets wait already"
                );
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                tracing::error!(
                    alarm_events = job.records.alarm_events.len(),
                    commands = job.records.commands.len(),
                    "plant records not stored: the processor is stopping"
                );
            }
        }
    }
}

async fn run(
    mut client: StorageServiceClient<Channel>,
    mut queue: mpsc::Receiver<Job>,
    metrics: ProcessorMetrics,
    stop: CancellationToken,
) {
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let first = match drain_until {
            None => tokio::select! {
                job = queue.recv() => job,
                _ = stop.cancelled() => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN);
                    continue;
                }
            },
            Some(_) => queue.try_recv().ok(),
        };
        let Some(first) = first else { break };
        let mut jobs = vec![first];
        while jobs.len() < PER_CALL {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let stored = send(&mut client, &jobs, &metrics, &stop, &mut drain_until).await;
        for (job, stored) in jobs.into_iter().zip(stored) {
            if let Some(done) = job.done {
                let _ = done.send(stored);
            }
        }
    }
    queue.close();
    let mut left = 0usize;
    while let Ok(job) = queue.try_recv() {
        left += 1;
        if let Some(done) = job.done {
            let _ = done.send(false);
        }
    }
    if left > 0 {
        tracing::error!(
            sets = left,
            "stopping with plant records not stored (alarm transitions or write audit)"
        );
    }
}

/// Sends `jobs` as one call, retrying while storage is unavailable; a call that storage
/// refuses for good is split so that only the bad set is lost. Whether each set is stored.
async fn send(
    client: &mut StorageServiceClient<Channel>,
    jobs: &[Job],
    metrics: &ProcessorMetrics,
    stop: &CancellationToken,
    drain_until: &mut Option<tokio::time::Instant>,
) -> Vec<bool> {
    let mut merged = v1::PlantRecords {
        line: jobs
            .first()
            .map(|j| j.records.line.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    for job in jobs {
        let r = &job.records;
        merged.alarm_events.extend(r.alarm_events.iter().cloned());
        merged.alarm_states.extend(r.alarm_states.iter().cloned());
        merged.commands.extend(r.commands.iter().cloned());
        merged.progress.extend(r.progress.iter().cloned());
    }
    match call(client, merged, metrics, stop, drain_until).await {
        Sent::Stored => vec![true; jobs.len()],
        Sent::GaveUp => vec![false; jobs.len()],
        Sent::Refused if jobs.len() > 1 => {
            let mut stored = Vec::with_capacity(jobs.len());
            for job in jobs {
                let sent = call(client, job.records.clone(), metrics, stop, drain_until).await;
                stored.push(matches!(sent, Sent::Stored));
            }
            stored
        }
        Sent::Refused => vec![false],
    }
}

enum Sent {
    Stored,
    Refused,
    GaveUp,
}

async fn call(
    client: &mut StorageServiceClient<Channel>,
    records: v1::PlantRecords,
    metrics: &ProcessorMetrics,
    stop: &CancellationToken,
    drain_until: &mut Option<tokio::time::Instant>,
) -> Sent {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client.record(records.clone()).await {
            Ok(_) => return Sent::Stored,
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::FailedPrecondition
                ) =>
            {
                metrics.error("records_refused");
                tracing::error!(%status, "storage refused plant records for good");
                return Sent::Refused;
            }
            Err(status) => {
                metrics.error("records_retry");
                let delay = backoff.next_delay();
                if backoff.attempts() <= 1 || backoff.attempts().is_power_of_two() {
                    tracing::warn!(%status, retry_in = ?delay, "cannot store plant records yet; retrying");
                }
                if drain_until.is_none() && stop.is_cancelled() {
                    *drain_until = Some(tokio::time::Instant::now() + DRAIN);
                }
                let wake = tokio::time::Instant::now() + delay;
                match *drain_until {
                    Some(until) if wake >= until => return Sent::GaveUp,
                    Some(_) => tokio::time::sleep_until(wake).await,
                    None => tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = stop.cancelled() => {
                            *drain_until = Some(tokio::time::Instant::now() + DRAIN);
                        }
                    },
                }
            }
        }
    }
}
