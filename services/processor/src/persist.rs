//! Writes alarm transitions, alarm state and the command audit to MySQL/SQLite, in order,
//! retrying while the database is unreachable, so nothing the processor decided is lost to a
//! database outage.

use std::time::Duration;

use fieldline_core::Value;
use fieldline_proto::v1;
use fieldline_runtime::{CancellationToken, backoff::Backoff};
use fieldline_storage::events::{AlarmEvent, AlarmState, AlarmStatus, CommandAudit, EventStore};
use tokio::sync::mpsc;

use crate::metrics::ProcessorMetrics;

/// Something to persist.
#[derive(Debug)]
pub enum Record {
    Alarms {
        events: Vec<v1::AlarmEvent>,
        statuses: Vec<AlarmStatus>,
    },
    Audit(Box<CommandAudit>),
}

/// Persists records until `stop` and the queue is empty (or, once stopped, until the
/// database refuses to answer).
pub async fn run(
    store: EventStore,
    line: String,
    mut records: mpsc::UnboundedReceiver<Record>,
    metrics: ProcessorMetrics,
    stop: CancellationToken,
) {
    while let Some(record) = records.recv().await {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let result = match &record {
                Record::Alarms { events, statuses } => {
                    let rows: Vec<AlarmEvent> =
                        events.iter().filter_map(|e| alarm_row(&line, e)).collect();
                    store.record_alarm_transitions(&rows, statuses).await
                }
                Record::Audit(audit) => {
                    store
                        .record_commands(std::slice::from_ref(audit.as_ref()))
                        .await
                }
            };
            match result {
                Ok(()) => break,
                Err(error) if !error.is_transient() => {
                    metrics.error("persist_refused");
                    tracing::error!(%error, "the database refused a record; it is left out");
                    break;
                }
                Err(error) => {
                    metrics.error("persist_retry");
                    let delay = backoff.next_delay();
                    if backoff.attempts() <= 1 || backoff.attempts().is_power_of_two() {
                        tracing::warn!(%error, retry_in = ?delay, "cannot persist alarms or audit yet; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => {
                            tracing::error!(%error, "stopping with alarm or audit records not persisted");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// An alarm event as its `alarm_events` row.
pub fn alarm_row(line: &str, e: &v1::AlarmEvent) -> Option<AlarmEvent> {
    let state = |s: i32| {
        v1::AlarmState::try_from(s)
            .ok()
            .and_then(|s| AlarmState::try_from(s).ok())
    };
    // Tag path `{line}/{device}/{tag}`.
    let mut parts = e.tag.splitn(3, '/');
    let (_, device, tag) = (parts.next()?, parts.next()?, parts.next()?);
    Some(AlarmEvent {
        line: line.to_string(),
        alarm_id: e.alarm_id.clone(),
        seq: e.sequence,
        device: device.to_string(),
        tag: tag.to_string(),
        kind: e.kind.clone(),
        priority: e.priority,
        from_state: state(e.from_state)?,
        to_state: state(e.to_state)?,
        value: e.value.clone().and_then(|v| Value::try_from(v).ok()),
        limit: None,
        message: e.message.clone(),
        user: e.user.clone(),
        comment: e.comment.clone(),
        shelved_until_ns: (e.shelved_until_ns != 0).then_some(e.shelved_until_ns),
        timestamp_ns: e.timestamp_ns,
    })
}
