//! Plant data beside the samples: alarm transitions and the current state of every alarm
//! (ISA-18.2), the audit of every write request, and production counters and events for the
//! MES. The processor keeps its alarm and control state here, so a restart, or another
//! instance taking the line over, neither loses nor re-raises an alarm.
//!
//! One code path for MySQL/MariaDB and SQLite. Every write takes a slice of rows, checks all
//! of them before touching the database (a refused row refuses the whole call, nothing is
//! written), and stores them in one transaction with multi-row INSERTs whose unique keys make
//! a replay change nothing. Rows that carry a state (alarm state, command result, counter
//! value) never move back to an older one.

use std::{fmt, ops::Range};

pub use fieldline_core::alarm::AlarmState;
pub use fieldline_core::records::{AlarmStatus, CommandAudit, CommandStatus, DeviceProgress};
use fieldline_core::{Value, config::SqlConfig};
use fieldline_proto::v1;
use sqlx::{
    Any, AnyConnection, AnyPool, AssertSqlSafe, Row,
    any::{AnyArguments, AnyRow},
};

use crate::sinks::{
    SinkError,
    sql::{Dialect, ROWS_PER_STATEMENT, SqlSink, classify, columns, placeholders},
};

/// Longest line, device, tag, counter and alarm kind name (the `VARCHAR(63)` columns).
pub const NAME_MAX: usize = 63;
/// Longest alarm, command and event id, person and source (the `VARCHAR(128)` columns).
pub const ID_MAX: usize = 128;
/// Longest free text (messages, comments, reasons, details, string values): what a MySQL
/// `TEXT` column holds in utf8mb4.
pub const TEXT_MAX: usize = 16_383;
/// Longest saved plugin state of one device, in characters (the `MEDIUMTEXT` column holds
/// 16 MiB; the processor saves at most 256 KiB).
pub const PLUGIN_STATE_MAX: usize = 1 << 20;
/// Rows a read returns when the query does not say otherwise.
pub const DEFAULT_LIMIT: u32 = 1000;

type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments>;

/// One transition of one alarm, as in `fieldline.v1.AlarmEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    pub line: String,
    /// The alarm, unique within the line.
    pub alarm_id: String,
    /// Number of this transition of this alarm; the processor continues from
    /// [`AlarmStatus::last_seq`] after a restart. With `line` and `alarm_id` the unique key:
    /// an event whose key is stored already is left out, whatever it says.
    pub seq: u64,
    pub device: String,
    pub tag: String,
    /// e.g. "hihi", "hi", "lo", "lolo", "rate", "deviation", "discrete", "bad_quality".
    pub kind: String,
    pub priority: u32,
    pub from_state: AlarmState,
    pub to_state: AlarmState,
    /// The value that caused the transition; none for bad-quality alarms and operator actions.
    pub value: Option<Value>,
    /// The limit the value crossed, for limit alarms.
    pub limit: Option<f64>,
    pub message: String,
    /// Who acknowledged, shelved or took the alarm out of service; empty when no person did.
    pub user: String,
    /// The person's comment, if any.
    pub comment: String,
    /// Until when a shelved alarm stays shelved (ns since epoch); set exactly when `to_state`
    /// is [`AlarmState::Shelved`].
    pub shelved_until_ns: Option<i64>,
    /// When the transition happened, ns since epoch.
    pub timestamp_ns: i64,
}

/// What a production event marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProductionEventKind {
    /// `code` is the shift's name.
    ShiftStart,
    ShiftEnd,
    /// `code` is the order number.
    OrderStart,
    OrderEnd,
    /// The line or device stopped; `code` is the stop reason when known.
    StopStart,
    StopEnd,
}

impl ProductionEventKind {
    pub const ALL: [ProductionEventKind; 6] = [
        ProductionEventKind::ShiftStart,
        ProductionEventKind::ShiftEnd,
        ProductionEventKind::OrderStart,
        ProductionEventKind::OrderEnd,
        ProductionEventKind::StopStart,
        ProductionEventKind::StopEnd,
    ];

    /// The name stored in the database.
    pub fn code(self) -> &'static str {
        match self {
            ProductionEventKind::ShiftStart => "shift_start",
            ProductionEventKind::ShiftEnd => "shift_end",
            ProductionEventKind::OrderStart => "order_start",
            ProductionEventKind::OrderEnd => "order_end",
            ProductionEventKind::StopStart => "stop_start",
            ProductionEventKind::StopEnd => "stop_end",
        }
    }

    /// The value of a stored name; `None` for a name this version does not know.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for ProductionEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A discrete production event. The first row stored under an `event_id` stays; a later one
/// with the same id is left out.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductionEvent {
    pub line: String,
    /// Unique within the line.
    pub event_id: String,
    /// The device the event is about; empty for the whole line.
    pub device: String,
    pub kind: ProductionEventKind,
    /// Shift name, order number or stop reason, by `kind`.
    pub code: String,
    pub detail: String,
    /// Who entered the event; empty when it was detected automatically.
    pub user: String,
    pub timestamp_ns: i64,
}

/// A counter's value over one period (units produced, good count, runtime or downtime
/// seconds). Keyed by line, device, counter and period start; the value computed last
/// (`as_of_ns`) wins.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductionCounter {
    pub line: String,
    pub device: String,
    /// e.g. "units", "good", "runtime_s", "downtime_s".
    pub counter: String,
    /// Start of the period, ns since epoch.
    pub period_start_ns: i64,
    /// Length of the period in ns; 0 for a reading at `period_start_ns`.
    pub period_ns: i64,
    pub value: f64,
    /// When the value was computed, ns since epoch. A value of the same period computed
    /// earlier never replaces it.
    pub as_of_ns: i64,
}

/// Alarm transitions of a line, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEventQuery {
    pub line: String,
    /// Only this alarm.
    pub alarm_id: Option<String>,
    /// Transition times, start inclusive, end exclusive.
    pub time: Range<i64>,
    pub limit: u32,
}

impl AlarmEventQuery {
    pub fn new(line: impl Into<String>, time: Range<i64>) -> Self {
        Self {
            line: line.into(),
            alarm_id: None,
            time,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Audited write requests of a line, newest request first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    pub line: String,
    pub device: Option<String>,
    pub tag: Option<String>,
    /// Request times, start inclusive, end exclusive.
    pub time: Range<i64>,
    pub limit: u32,
}

impl AuditQuery {
    pub fn new(line: impl Into<String>, time: Range<i64>) -> Self {
        Self {
            line: line.into(),
            device: None,
            tag: None,
            time,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Counter values of a line, oldest period first.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterQuery {
    pub line: String,
    pub device: Option<String>,
    pub counter: Option<String>,
    /// Period starts, start inclusive, end exclusive.
    pub time: Range<i64>,
    pub limit: u32,
}

impl CounterQuery {
    pub fn new(line: impl Into<String>, time: Range<i64>) -> Self {
        Self {
            line: line.into(),
            device: None,
            counter: None,
            time,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Production events of a line, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductionEventQuery {
    pub line: String,
    /// Only events of this device ("" for the line's own events).
    pub device: Option<String>,
    pub kind: Option<ProductionEventKind>,
    /// Event times, start inclusive, end exclusive.
    pub time: Range<i64>,
    pub limit: u32,
}

impl ProductionEventQuery {
    pub fn new(line: impl Into<String>, time: Range<i64>) -> Self {
        Self {
            line: line.into(),
            device: None,
            kind: None,
            time,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Plant records of one line in row form, as `fieldline.v1.PlantRecords` carries them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlantRecords {
    pub alarm_events: Vec<AlarmEvent>,
    pub alarm_states: Vec<AlarmStatus>,
    pub commands: Vec<CommandAudit>,
    pub progress: Vec<DeviceProgress>,
}

impl PlantRecords {
    /// The rows a wire message describes; the first record that cannot be one refuses all.
    pub fn from_wire(w: v1::PlantRecords) -> Result<Self, SinkError> {
        let refuse = |what: &str, index: usize, e: fieldline_proto::Error| SinkError::Invalid {
            place: format!("{what} {index}"),
            problem: e.to_string(),
        };
        let line = w.line;
        let mut alarm_events = Vec::with_capacity(w.alarm_events.len());
        for (index, e) in w.alarm_events.iter().enumerate() {
            alarm_events.push(alarm_row(&line, e).ok_or_else(|| SinkError::Invalid {
                place: format!("alarm event {index}"),
                problem: format!(
                    "tag {:?} is not line/device/tag or a state is unknown",
                    e.tag
                ),
            })?);
        }
        let alarm_states = w
            .alarm_states
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                fieldline_proto::alarm_status(&line, s).map_err(|e| refuse("alarm state", i, e))
            })
            .collect::<Result<_, _>>()?;
        let commands = w
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                fieldline_proto::command_audit(&line, c).map_err(|e| refuse("command", i, e))
            })
            .collect::<Result<_, _>>()?;
        let progress = w
            .progress
            .into_iter()
            .map(|p| fieldline_proto::device_progress(&line, p))
            .collect();
        Ok(Self {
            alarm_events,
            alarm_states,
            commands,
            progress,
        })
    }

    /// Refuses the records if any row could not be stored.
    pub fn check(&self) -> Result<(), SinkError> {
        check_all(&self.alarm_events)?;
        check_all(&self.alarm_states)?;
        check_all(&self.commands)?;
        check_all(&self.progress)
    }

    pub fn is_empty(&self) -> bool {
        self.alarm_events.is_empty()
            && self.alarm_states.is_empty()
            && self.commands.is_empty()
            && self.progress.is_empty()
    }

    /// Takes `other`'s records after this one's.
    pub fn append(&mut self, other: PlantRecords) {
        self.alarm_events.extend(other.alarm_events);
        self.alarm_states.extend(other.alarm_states);
        self.commands.extend(other.commands);
        self.progress.extend(other.progress);
    }
}

/// An alarm event as its `alarm_events` row; `None` when its tag is not a
/// `{line}/{device}/{tag}` path or a state is unknown.
pub fn alarm_row(line: &str, e: &v1::AlarmEvent) -> Option<AlarmEvent> {
    let state = |s: i32| {
        v1::AlarmState::try_from(s)
            .ok()
            .and_then(|s| AlarmState::try_from(s).ok())
    };
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

/// The plant-data tables of a MySQL/MariaDB or SQLite database.
#[derive(Clone)]
pub struct EventStore {
    pool: AnyPool,
    dialect: Dialect,
}

impl EventStore {
    /// Uses the database of a connected SQL sink (migrations are applied already).
    pub fn new(sink: &SqlSink) -> Self {
        Self {
            pool: sink.pool().clone(),
            dialect: sink.dialect(),
        }
    }

    /// Connects and applies migrations. Fails (transiently) while the server is unreachable.
    pub async fn connect(config: &SqlConfig) -> Result<Self, SinkError> {
        Ok(Self::new(&SqlSink::connect(config).await?))
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores alarm transitions; those already stored (same line, alarm and seq) are left out.
    pub async fn record_alarm_events(&self, events: &[AlarmEvent]) -> Result<(), SinkError> {
        self.record_alarm_transitions(events, &[]).await
    }

    /// Saves the current state of alarms; a state older than the stored one (lower
    /// `last_seq`) changes nothing.
    pub async fn save_alarm_states(&self, states: &[AlarmStatus]) -> Result<(), SinkError> {
        self.record_alarm_transitions(&[], states).await
    }

    /// Stores transitions and the states they led to in one transaction, so the history and
    /// the state a restart loads always agree.
    pub async fn record_alarm_transitions(
        &self,
        events: &[AlarmEvent],
        states: &[AlarmStatus],
    ) -> Result<(), SinkError> {
        check_all(events)?;
        check_all(states)?;
        if events.is_empty() && states.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        self.insert(&mut tx, events).await?;
        self.insert(&mut tx, states).await?;
        tx.commit().await.map_err(classify)
    }

    /// Stores plant records of every kind in one transaction; replaying them changes nothing.
    pub async fn record(&self, records: &PlantRecords) -> Result<(), SinkError> {
        records.check()?;
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        self.insert(&mut tx, &records.alarm_events).await?;
        self.insert(&mut tx, &records.alarm_states).await?;
        self.insert(&mut tx, &records.commands).await?;
        self.insert(&mut tx, &records.progress).await?;
        tx.commit().await.map_err(classify)
    }

    /// Records write requests and their results, one row per `command_id`. A record at a later
    /// stage than the stored one fills in the result (fields it leaves empty keep what is
    /// stored); one at the same or an earlier stage changes nothing. The request fields are
    /// those of the first record.
    pub async fn record_commands(&self, commands: &[CommandAudit]) -> Result<(), SinkError> {
        self.write(commands).await
    }

    /// Stores counter values; a value computed earlier than the stored one (`as_of_ns`) for
    /// the same period changes nothing.
    pub async fn record_counters(&self, counters: &[ProductionCounter]) -> Result<(), SinkError> {
        self.write(counters).await
    }

    /// Stores production events; those already stored (same line and event id) are left out.
    pub async fn record_production_events(
        &self,
        events: &[ProductionEvent],
    ) -> Result<(), SinkError> {
        self.write(events).await
    }

    /// Saves how far the processor has taken each device's batches.
    pub async fn save_progress(&self, progress: &[DeviceProgress]) -> Result<(), SinkError> {
        self.write(progress).await
    }

    /// How far the processor has taken each device's batches of a line.
    pub async fn load_progress(&self, line: &str) -> Result<Vec<DeviceProgress>, SinkError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE line = ? ORDER BY device",
            DeviceProgress::COLUMNS.join(", "),
            DeviceProgress::TABLE
        );
        let rows = sqlx::query::<Any>(AssertSqlSafe(sql))
            .bind(line)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(DeviceProgress::from_row).collect()
    }

    /// The current state of every alarm of a line, by alarm id.
    pub async fn load_alarm_states(&self, line: &str) -> Result<Vec<AlarmStatus>, SinkError> {
        let sql = format!(
            "SELECT {} FROM alarm_state WHERE line = ? ORDER BY alarm_id",
            AlarmStatus::COLUMNS.join(", ")
        );
        let rows = sqlx::query::<Any>(AssertSqlSafe(sql))
            .bind(line)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(AlarmStatus::from_row).collect()
    }

    /// Alarm transitions, newest first (then by alarm id and seq, descending).
    pub async fn alarm_events(&self, q: &AlarmEventQuery) -> Result<Vec<AlarmEvent>, SinkError> {
        let mut filter = Filter::new(&q.line, "ts_ns", &q.time);
        filter.eq("alarm_id", q.alarm_id.as_deref());
        self.select(filter, "ts_ns DESC, alarm_id DESC, seq DESC", q.limit)
            .await
    }

    /// Audit rows, newest request first (then by command id, descending).
    pub async fn command_audit(&self, q: &AuditQuery) -> Result<Vec<CommandAudit>, SinkError> {
        let mut filter = Filter::new(&q.line, "requested_ns", &q.time);
        filter.eq("device", q.device.as_deref());
        filter.eq("tag", q.tag.as_deref());
        self.select(filter, "requested_ns DESC, command_id DESC", q.limit)
            .await
    }

    /// Counter values, oldest period first (then by device and counter).
    pub async fn production_counters(
        &self,
        q: &CounterQuery,
    ) -> Result<Vec<ProductionCounter>, SinkError> {
        let mut filter = Filter::new(&q.line, "period_start_ns", &q.time);
        filter.eq("device", q.device.as_deref());
        filter.eq("counter", q.counter.as_deref());
        self.select(filter, "period_start_ns, device, counter", q.limit)
            .await
    }

    /// Production events, oldest first (then by event id).
    pub async fn production_events(
        &self,
        q: &ProductionEventQuery,
    ) -> Result<Vec<ProductionEvent>, SinkError> {
        let mut filter = Filter::new(&q.line, "ts_ns", &q.time);
        filter.eq("device", q.device.as_deref());
        filter.eq("kind", q.kind.map(ProductionEventKind::code));
        self.select(filter, "ts_ns, event_id", q.limit).await
    }

    async fn write<T: Record>(&self, rows: &[T]) -> Result<(), SinkError> {
        check_all(rows)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        self.insert(&mut tx, rows).await?;
        tx.commit().await.map_err(classify)
    }

    /// Multi-row upserts of checked rows, in chunks.
    async fn insert<T: Record>(
        &self,
        conn: &mut AnyConnection,
        rows: &[T],
    ) -> Result<(), SinkError> {
        let on_conflict = T::on_conflict(self.dialect);
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}{on_conflict}",
                T::TABLE,
                T::COLUMNS.join(", "),
                placeholders(chunk.len(), T::COLUMNS.len()),
            );
            // Built only from fixed names and `?` placeholders; every value is bound.
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
            for row in chunk {
                query = row.bind(query);
            }
            query.execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn select<T: Record>(
        &self,
        filter: Filter<'_>,
        order: &str,
        limit: u32,
    ) -> Result<Vec<T>, SinkError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {order} LIMIT ?",
            T::COLUMNS.join(", "),
            T::TABLE,
            filter.conditions.join(" AND "),
        );
        // Built only from fixed names and `?` placeholders; every value is bound.
        let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
        for value in filter.values {
            query = match value {
                Param::Text(s) => query.bind(s),
                Param::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(T::from_row).collect()
    }
}

/// `WHERE` conditions of a read: fixed column names, values bound.
struct Filter<'a> {
    conditions: Vec<String>,
    values: Vec<Param<'a>>,
}

enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

impl<'a> Filter<'a> {
    fn new(line: &'a str, time_column: &'static str, time: &Range<i64>) -> Self {
        Self {
            conditions: vec![
                "line = ?".into(),
                format!("{time_column} >= ?"),
                format!("{time_column} < ?"),
            ],
            values: vec![
                Param::Text(line),
                Param::Int(time.start),
                Param::Int(time.end),
            ],
        }
    }

    fn eq(&mut self, column: &'static str, value: Option<&'a str>) {
        if let Some(v) = value {
            self.conditions.push(format!("{column} = ?"));
            self.values.push(Param::Text(v));
        }
    }
}

/// A row type of one table: how it is checked, bound, upserted and read back.
trait Record: Sized {
    const TABLE: &'static str;
    /// Columns in bind order.
    const COLUMNS: &'static [&'static str];
    /// What to do when the unique key is stored already, after `VALUES (…)`.
    fn on_conflict(dialect: Dialect) -> String;
    /// Names the row in messages.
    fn describe(&self, index: usize) -> String;
    /// Every problem the database would refuse, or silently truncate, found before writing.
    fn check(&self, at: &Place) -> Result<(), SinkError>;
    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q>;
    fn from_row(row: &AnyRow) -> Result<Self, SinkError>;
}

fn check_all<T: Record>(rows: &[T]) -> Result<(), SinkError> {
    for (index, row) in rows.iter().enumerate() {
        row.check(&Place(row.describe(index)))?;
    }
    Ok(())
}

/// Where in a write a problem is, e.g. `alarm event 3 ("line-1", alarm "tank-hi", seq 7)`.
struct Place(String);

impl Place {
    fn refuse(&self, what: impl fmt::Display) -> SinkError {
        SinkError::Invalid {
            place: self.0.clone(),
            problem: what.to_string(),
        }
    }

    /// A key or name: not empty, at most `max` characters, no surrounding spaces or control
    /// characters (MySQL ignores trailing spaces in comparisons, SQLite does not).
    fn key(&self, field: &str, value: &str, max: usize) -> Result<(), SinkError> {
        if value.is_empty() {
            return Err(self.refuse(format_args!("{field} must not be empty")));
        }
        self.name(field, value, max)
    }

    /// Like [`Place::key`] but may be empty.
    fn name(&self, field: &str, value: &str, max: usize) -> Result<(), SinkError> {
        self.text(field, value, max)?;
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(self.refuse(format_args!(
                "{field} {} has surrounding spaces or control characters",
                shown(value)
            )));
        }
        Ok(())
    }

    fn text(&self, field: &str, value: &str, max: usize) -> Result<(), SinkError> {
        let len = value.chars().count();
        if len > max {
            return Err(self.refuse(format_args!(
                "{field} {} is {len} characters long, at most {max} are allowed",
                shown(value)
            )));
        }
        Ok(())
    }

    fn value(&self, field: &str, value: Option<&Value>) -> Result<(), SinkError> {
        match value {
            Some(Value::String(s)) => self.text(field, s, TEXT_MAX),
            _ => Ok(()),
        }
    }

    fn finite(&self, field: &str, value: Option<f64>) -> Result<(), SinkError> {
        match value {
            Some(v) if !v.is_finite() => Err(self.refuse(format_args!(
                "{field} is {v}, only finite numbers are stored"
            ))),
            _ => Ok(()),
        }
    }

    fn seq(&self, field: &str, value: u64) -> Result<(), SinkError> {
        if i64::try_from(value).is_err() {
            return Err(self.refuse(format_args!(
                "{field} {value} is above the largest storable {}",
                i64::MAX
            )));
        }
        Ok(())
    }

    fn shelving(&self, state: AlarmState, until: Option<i64>) -> Result<(), SinkError> {
        match (state == AlarmState::Shelved, until) {
            (true, None) => Err(self.refuse("a shelved alarm needs shelved_until_ns")),
            (false, Some(_)) => Err(self.refuse(format_args!(
                "shelved_until_ns is set but the state is {state}"
            ))),
            _ => Ok(()),
        }
    }
}

/// The start of a value for a message, so a refused megabyte is not repeated in the log.
fn shown(value: &str) -> String {
    const SHOWN: usize = 40;
    if value.chars().count() > SHOWN {
        let start: String = value.chars().take(SHOWN).collect();
        format!("{start:?}…")
    } else {
        format!("{value:?}")
    }
}

/// A u64 checked by [`Place::seq`].
fn stored_seq(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `INSERT … ON DUPLICATE KEY UPDATE`/`ON CONFLICT` that keeps the stored row.
fn keep_stored(dialect: Dialect, key: &[&str]) -> String {
    match dialect {
        Dialect::MySql => format!(" ON DUPLICATE KEY UPDATE {0} = {0}", key[0]),
        Dialect::Sqlite => format!(" ON CONFLICT ({}) DO NOTHING", key.join(", ")),
    }
}

/// An upsert that replaces the stored row only with one whose `order` column is at least as
/// high. MySQL applies the assignments left to right, so `order` is assigned last and every
/// condition before it still sees the stored value.
fn newer_wins(
    dialect: Dialect,
    table: &str,
    key: &[&str],
    columns: &[&str],
    order: &str,
) -> String {
    let updated = columns.iter().filter(|c| !key.contains(c) && **c != order);
    match dialect {
        Dialect::MySql => {
            let mut sets: Vec<String> = updated
                .map(|c| format!("{c} = IF(VALUES({order}) >= {order}, VALUES({c}), {c})"))
                .collect();
            sets.push(format!("{order} = GREATEST({order}, VALUES({order}))"));
            format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
        }
        Dialect::Sqlite => {
            let mut sets: Vec<String> = updated.map(|c| format!("{c} = excluded.{c}")).collect();
            sets.push(format!("{order} = excluded.{order}"));
            format!(
                " ON CONFLICT ({}) DO UPDATE SET {} WHERE excluded.{order} >= {table}.{order}",
                key.join(", "),
                sets.join(", ")
            )
        }
    }
}

/// Column access with messages that name the table and column.
fn get<'r, T>(row: &'r AnyRow, table: &str, column: &str) -> Result<T, SinkError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(column).map_err(|source| SinkError::Column {
        table: table.to_string(),
        column: column.to_string(),
        source,
    })
}

/// A stored column that holds what its row type cannot represent.
fn unreadable(table: &str, column: &str, problem: impl fmt::Display) -> SinkError {
    SinkError::Unreadable {
        table: table.to_string(),
        column: column.to_string(),
        problem: problem.to_string(),
    }
}

fn get_seq(row: &AnyRow, table: &str, column: &str) -> Result<u64, SinkError> {
    let v: i64 = get(row, table, column)?;
    u64::try_from(v).map_err(|_| unreadable(table, column, format_args!("negative ({v})")))
}

fn get_priority(row: &AnyRow, table: &str) -> Result<u32, SinkError> {
    let v: i64 = get(row, table, "priority")?;
    u32::try_from(v).map_err(|_| unreadable(table, "priority", format_args!("{v} out of range")))
}

fn get_flag(row: &AnyRow, table: &str, column: &str) -> Result<bool, SinkError> {
    Ok(get::<i64>(row, table, column)? != 0)
}

fn get_code<T>(
    row: &AnyRow,
    table: &str,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, SinkError> {
    let code: String = get(row, table, column)?;
    parse(&code).ok_or_else(|| unreadable(table, column, format_args!("unknown value {code:?}")))
}

/// A value stored as (type, exact text) by [`columns`], read back.
fn get_value(row: &AnyRow, table: &str, prefix: &str) -> Result<Option<Value>, SinkError> {
    let type_column = format!("{prefix}_type");
    let text_column = format!("{prefix}_text");
    let value_type: Option<String> = get(row, table, &type_column)?;
    let text: Option<String> = get(row, table, &text_column)?;
    let (Some(value_type), Some(text)) = (value_type, text) else {
        return Ok(None);
    };
    parse_value(table, &text_column, &value_type, &text).map(Some)
}

/// The value that `value_type` and `text` (the columns of [`columns`]) stand for.
fn parse_value(
    table: &str,
    column: &str,
    value_type: &str,
    text: &str,
) -> Result<Value, SinkError> {
    let bad = |e: &dyn fmt::Display| {
        unreadable(
            table,
            column,
            format_args!("{text:?} is not a {value_type}: {e}"),
        )
    };
    Ok(match value_type {
        "bool" => Value::Bool(text.parse().map_err(|e| bad(&e))?),
        "int" => Value::I64(text.parse().map_err(|e| bad(&e))?),
        "uint" => Value::U64(text.parse().map_err(|e| bad(&e))?),
        "float" => Value::F64(text.parse().map_err(|e| bad(&e))?),
        "string" => Value::String(text.to_string()),
        other => {
            return Err(unreadable(
                table,
                column,
                format_args!("unknown value type {other:?}"),
            ));
        }
    })
}

fn bind_value<'q>(query: AnyQuery<'q>, value: Option<&Value>) -> AnyQuery<'q> {
    let (value_type, text, num) = columns(value);
    query.bind(value_type).bind(text).bind(num)
}

impl Record for AlarmEvent {
    const TABLE: &'static str = "alarm_events";
    const COLUMNS: &'static [&'static str] = &[
        "line",
        "alarm_id",
        "seq",
        "device",
        "tag",
        "kind",
        "priority",
        "from_state",
        "to_state",
        "value_type",
        "value_text",
        "value_num",
        "limit_value",
        "message",
        "user_name",
        "comment",
        "shelved_until_ns",
        "ts_ns",
    ];

    fn on_conflict(dialect: Dialect) -> String {
        keep_stored(dialect, &["line", "alarm_id", "seq"])
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "alarm event {index} ({}, alarm {}, seq {})",
            shown(&self.line),
            shown(&self.alarm_id),
            self.seq
        )
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("line", &self.line, NAME_MAX)?;
        at.key("alarm_id", &self.alarm_id, ID_MAX)?;
        at.seq("seq", self.seq)?;
        at.key("device", &self.device, NAME_MAX)?;
        at.key("tag", &self.tag, NAME_MAX)?;
        at.name("kind", &self.kind, NAME_MAX)?;
        at.value("value", self.value.as_ref())?;
        at.finite("limit", self.limit)?;
        at.text("message", &self.message, TEXT_MAX)?;
        at.name("user", &self.user, ID_MAX)?;
        at.text("comment", &self.comment, TEXT_MAX)?;
        at.shelving(self.to_state, self.shelved_until_ns)
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        let query = query
            .bind(self.line.as_str())
            .bind(self.alarm_id.as_str())
            .bind(stored_seq(self.seq))
            .bind(self.device.as_str())
            .bind(self.tag.as_str())
            .bind(self.kind.as_str())
            .bind(i64::from(self.priority))
            .bind(self.from_state.code())
            .bind(self.to_state.code());
        bind_value(query, self.value.as_ref())
            .bind(self.limit)
            .bind(self.message.as_str())
            .bind(self.user.as_str())
            .bind(self.comment.as_str())
            .bind(self.shelved_until_ns)
            .bind(self.timestamp_ns)
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        Ok(Self {
            line: get(row, t, "line")?,
            alarm_id: get(row, t, "alarm_id")?,
            seq: get_seq(row, t, "seq")?,
            device: get(row, t, "device")?,
            tag: get(row, t, "tag")?,
            kind: get(row, t, "kind")?,
            priority: get_priority(row, t)?,
            from_state: get_code(row, t, "from_state", AlarmState::from_code)?,
            to_state: get_code(row, t, "to_state", AlarmState::from_code)?,
            value: get_value(row, t, "value")?,
            limit: get(row, t, "limit_value")?,
            message: get(row, t, "message")?,
            user: get(row, t, "user_name")?,
            comment: get(row, t, "comment")?,
            shelved_until_ns: get(row, t, "shelved_until_ns")?,
            timestamp_ns: get(row, t, "ts_ns")?,
        })
    }
}

impl Record for AlarmStatus {
    const TABLE: &'static str = "alarm_state";
    const COLUMNS: &'static [&'static str] = &[
        "line",
        "alarm_id",
        "device",
        "tag",
        "kind",
        "priority",
        "state",
        "active",
        "acked",
        "shelved_until_ns",
        "value_type",
        "value_text",
        "value_num",
        "message",
        "last_seq",
        "changed_ns",
        "snapshot",
    ];

    fn on_conflict(dialect: Dialect) -> String {
        newer_wins(
            dialect,
            Self::TABLE,
            &["line", "alarm_id"],
            Self::COLUMNS,
            "last_seq",
        )
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "alarm state {index} ({}, alarm {})",
            shown(&self.line),
            shown(&self.alarm_id)
        )
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("line", &self.line, NAME_MAX)?;
        at.key("alarm_id", &self.alarm_id, ID_MAX)?;
        at.key("device", &self.device, NAME_MAX)?;
        at.key("tag", &self.tag, NAME_MAX)?;
        at.name("kind", &self.kind, NAME_MAX)?;
        at.value("value", self.value.as_ref())?;
        at.text("message", &self.message, TEXT_MAX)?;
        at.seq("last_seq", self.last_seq)?;
        at.shelving(self.state, self.shelved_until_ns)?;
        if let Some((active, acked)) = self.state.implied_flags()
            && (active, acked) != (self.active, self.acked)
        {
            return Err(at.refuse(format_args!(
                "state {} means active={active} acked={acked}, the row says active={} acked={}",
                self.state, self.active, self.acked
            )));
        }
        Ok(())
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        let query = query
            .bind(self.line.as_str())
            .bind(self.alarm_id.as_str())
            .bind(self.device.as_str())
            .bind(self.tag.as_str())
            .bind(self.kind.as_str())
            .bind(i64::from(self.priority))
            .bind(self.state.code())
            .bind(i16::from(self.active))
            .bind(i16::from(self.acked))
            .bind(self.shelved_until_ns);
        bind_value(query, self.value.as_ref())
            .bind(self.message.as_str())
            .bind(stored_seq(self.last_seq))
            .bind(self.changed_ns)
            .bind(self.snapshot.clone())
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        Ok(Self {
            line: get(row, t, "line")?,
            alarm_id: get(row, t, "alarm_id")?,
            device: get(row, t, "device")?,
            tag: get(row, t, "tag")?,
            kind: get(row, t, "kind")?,
            priority: get_priority(row, t)?,
            state: get_code(row, t, "state", AlarmState::from_code)?,
            active: get_flag(row, t, "active")?,
            acked: get_flag(row, t, "acked")?,
            shelved_until_ns: get(row, t, "shelved_until_ns")?,
            value: get_value(row, t, "value")?,
            message: get(row, t, "message")?,
            last_seq: get_seq(row, t, "last_seq")?,
            changed_ns: get(row, t, "changed_ns")?,
            snapshot: get(row, t, "snapshot")?,
        })
    }
}

/// Result columns of `command_audit`, each group filled in by a later stage only when the new
/// record has it (the first column says whether it does).
const AUDIT_RESULT_GROUPS: &[&[&str]] = &[
    &["rejected_by"],
    &["old_type", "old_text", "old_num"],
    &["read_back_type", "read_back_text", "read_back_num"],
    &["detail"],
    &["finished_ns"],
];

impl Record for CommandAudit {
    const TABLE: &'static str = "command_audit";
    const COLUMNS: &'static [&'static str] = &[
        "command_id",
        "line",
        "device",
        "tag",
        "value_type",
        "value_text",
        "value_num",
        "source",
        "requested_by",
        "reason",
        "deadline_ns",
        "requested_ns",
        "status",
        "stage",
        "rejected_by",
        "old_type",
        "old_text",
        "old_num",
        "read_back_type",
        "read_back_text",
        "read_back_num",
        "detail",
        "finished_ns",
    ];

    /// Only a later stage updates, and only the status and result columns. As in
    /// [`newer_wins`], MySQL sees the stored `stage` until it is assigned last.
    fn on_conflict(dialect: Dialect) -> String {
        let mut sets = Vec::new();
        match dialect {
            Dialect::MySql => {
                sets.push("status = IF(VALUES(stage) > stage, VALUES(status), status)".into());
                for group in AUDIT_RESULT_GROUPS {
                    let has = group[0];
                    for c in *group {
                        sets.push(format!(
                            "{c} = IF(VALUES(stage) > stage AND VALUES({has}) IS NOT NULL, VALUES({c}), {c})"
                        ));
                    }
                }
                sets.push("stage = GREATEST(stage, VALUES(stage))".into());
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            Dialect::Sqlite => {
                sets.push("status = excluded.status".to_string());
                for group in AUDIT_RESULT_GROUPS {
                    let has = group[0];
                    for c in *group {
                        sets.push(format!(
                            "{c} = CASE WHEN excluded.{has} IS NULL THEN command_audit.{c} ELSE excluded.{c} END"
                        ));
                    }
                }
                sets.push("stage = excluded.stage".into());
                format!(
                    " ON CONFLICT (line, command_id) DO UPDATE SET {} WHERE excluded.stage > command_audit.stage",
                    sets.join(", ")
                )
            }
        }
    }

    fn describe(&self, index: usize) -> String {
        format!("command {index} ({})", shown(&self.command_id))
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("command_id", &self.command_id, ID_MAX)?;
        at.key("line", &self.line, NAME_MAX)?;
        at.key("device", &self.device, NAME_MAX)?;
        at.key("tag", &self.tag, NAME_MAX)?;
        at.value("value", Some(&self.value))?;
        at.name("source", &self.source, ID_MAX)?;
        at.name("requested_by", &self.requested_by, ID_MAX)?;
        at.text("reason", &self.reason, TEXT_MAX)?;
        if let Some(r) = &self.rejected_by {
            at.name("rejected_by", r, NAME_MAX)?;
        }
        at.value("old_value", self.old_value.as_ref())?;
        at.value("read_back", self.read_back.as_ref())?;
        if let Some(d) = &self.detail {
            at.text("detail", d, TEXT_MAX)?;
        }
        Ok(())
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        let query = query
            .bind(self.command_id.as_str())
            .bind(self.line.as_str())
            .bind(self.device.as_str())
            .bind(self.tag.as_str());
        let query = bind_value(query, Some(&self.value))
            .bind(self.source.as_str())
            .bind(self.requested_by.as_str())
            .bind(self.reason.as_str())
            .bind(self.deadline_ns)
            .bind(self.requested_ns)
            .bind(self.status.code())
            .bind(self.status.stage())
            .bind(self.rejected_by.as_deref());
        let query = bind_value(query, self.old_value.as_ref());
        bind_value(query, self.read_back.as_ref())
            .bind(self.detail.as_deref())
            .bind(self.finished_ns)
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        let value = get_value(row, t, "value")?
            .ok_or_else(|| unreadable(t, "value_text", "no requested value"))?;
        Ok(Self {
            command_id: get(row, t, "command_id")?,
            line: get(row, t, "line")?,
            device: get(row, t, "device")?,
            tag: get(row, t, "tag")?,
            value,
            source: get(row, t, "source")?,
            requested_by: get(row, t, "requested_by")?,
            reason: get(row, t, "reason")?,
            deadline_ns: get(row, t, "deadline_ns")?,
            requested_ns: get(row, t, "requested_ns")?,
            status: get_code(row, t, "status", CommandStatus::from_code)?,
            rejected_by: get(row, t, "rejected_by")?,
            old_value: get_value(row, t, "old")?,
            read_back: get_value(row, t, "read_back")?,
            detail: get(row, t, "detail")?,
            finished_ns: get(row, t, "finished_ns")?,
        })
    }
}

impl Record for DeviceProgress {
    const TABLE: &'static str = "processor_progress";
    const COLUMNS: &'static [&'static str] =
        &["line", "device", "stored_seq", "updated_ns", "plugin_state"];

    fn on_conflict(dialect: Dialect) -> String {
        newer_wins(
            dialect,
            Self::TABLE,
            &["line", "device"],
            Self::COLUMNS,
            "stored_seq",
        )
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "progress {index} ({}, {})",
            shown(&self.line),
            shown(&self.device)
        )
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("line", &self.line, NAME_MAX)?;
        at.key("device", &self.device, NAME_MAX)?;
        at.seq("stored_seq", self.stored_seq)?;
        match &self.plugin_state {
            Some(state) => at.text("plugin_state", state, PLUGIN_STATE_MAX),
            None => Ok(()),
        }
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        query
            .bind(self.line.as_str())
            .bind(self.device.as_str())
            .bind(stored_seq(self.stored_seq))
            .bind(self.updated_ns)
            .bind(self.plugin_state.clone())
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        Ok(Self {
            line: get(row, t, "line")?,
            device: get(row, t, "device")?,
            stored_seq: get_seq(row, t, "stored_seq")?,
            updated_ns: get(row, t, "updated_ns")?,
            plugin_state: get(row, t, "plugin_state")?,
        })
    }
}

impl Record for ProductionCounter {
    const TABLE: &'static str = "production_counters";
    const COLUMNS: &'static [&'static str] = &[
        "line",
        "device",
        "counter",
        "period_start_ns",
        "period_ns",
        "value",
        "as_of_ns",
    ];

    fn on_conflict(dialect: Dialect) -> String {
        newer_wins(
            dialect,
            Self::TABLE,
            &["line", "device", "counter", "period_start_ns"],
            Self::COLUMNS,
            "as_of_ns",
        )
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "counter {index} ({}, {}, {}, period {})",
            shown(&self.line),
            shown(&self.device),
            shown(&self.counter),
            self.period_start_ns
        )
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("line", &self.line, NAME_MAX)?;
        at.key("device", &self.device, NAME_MAX)?;
        at.key("counter", &self.counter, NAME_MAX)?;
        at.finite("value", Some(self.value))?;
        if self.period_ns < 0 {
            return Err(at.refuse(format_args!(
                "period_ns is {}, a period cannot be negative",
                self.period_ns
            )));
        }
        Ok(())
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        query
            .bind(self.line.as_str())
            .bind(self.device.as_str())
            .bind(self.counter.as_str())
            .bind(self.period_start_ns)
            .bind(self.period_ns)
            .bind(self.value)
            .bind(self.as_of_ns)
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        Ok(Self {
            line: get(row, t, "line")?,
            device: get(row, t, "device")?,
            counter: get(row, t, "counter")?,
            period_start_ns: get(row, t, "period_start_ns")?,
            period_ns: get(row, t, "period_ns")?,
            value: get(row, t, "value")?,
            as_of_ns: get(row, t, "as_of_ns")?,
        })
    }
}

impl Record for ProductionEvent {
    const TABLE: &'static str = "production_events";
    const COLUMNS: &'static [&'static str] = &[
        "line",
        "event_id",
        "device",
        "kind",
        "code",
        "detail",
        "user_name",
        "ts_ns",
    ];

    fn on_conflict(dialect: Dialect) -> String {
        keep_stored(dialect, &["line", "event_id"])
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "production event {index} ({}, {})",
            shown(&self.line),
            shown(&self.event_id)
        )
    }

    fn check(&self, at: &Place) -> Result<(), SinkError> {
        at.key("line", &self.line, NAME_MAX)?;
        at.key("event_id", &self.event_id, ID_MAX)?;
        at.name("device", &self.device, NAME_MAX)?;
        at.name("code", &self.code, ID_MAX)?;
        at.text("detail", &self.detail, TEXT_MAX)?;
        at.name("user", &self.user, ID_MAX)
    }

    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        query
            .bind(self.line.as_str())
            .bind(self.event_id.as_str())
            .bind(self.device.as_str())
            .bind(self.kind.code())
            .bind(self.code.as_str())
            .bind(self.detail.as_str())
            .bind(self.user.as_str())
            .bind(self.timestamp_ns)
    }

    fn from_row(row: &AnyRow) -> Result<Self, SinkError> {
        let t = Self::TABLE;
        Ok(Self {
            line: get(row, t, "line")?,
            event_id: get(row, t, "event_id")?,
            device: get(row, t, "device")?,
            kind: get_code(row, t, "kind", ProductionEventKind::from_code)?,
            code: get(row, t, "code")?,
            detail: get(row, t, "detail")?,
            user: get(row, t, "user_name")?,
            timestamp_ns: get(row, t, "ts_ns")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::Disposition;

    #[test]
    fn codes_round_trip_and_match_the_wire_names() {
        for s in AlarmState::ALL {
            assert_eq!(AlarmState::from_code(s.code()), Some(s));
            let wire = v1::AlarmState::from(s);
            assert_eq!(
                wire.as_str_name(),
                format!("ALARM_STATE_{}", s.code().to_uppercase())
            );
            assert_eq!(AlarmState::try_from(wire), Ok(s));
        }
        assert!(AlarmState::try_from(v1::AlarmState::Unspecified).is_err());
        for s in CommandStatus::ALL {
            assert_eq!(CommandStatus::from_code(s.code()), Some(s));
        }
        for k in ProductionEventKind::ALL {
            assert_eq!(ProductionEventKind::from_code(k.code()), Some(k));
        }
        assert_eq!(AlarmState::from_code("rtn_unack"), None);
    }

    #[test]
    fn command_stages_only_move_forward_to_one_final_result() {
        use CommandStatus::*;
        assert!(Requested.stage() < Accepted.stage());
        assert!(Accepted.stage() < Written.stage());
        for f in [Verified, Rejected, Failed, ReadbackMismatch] {
            assert!(f.is_final() && Written.stage() < f.stage(), "{f}");
        }
        assert_eq!(
            v1::CommandStatus::from(Verified),
            v1::CommandStatus::Written
        );
        assert_eq!(
            v1::CommandStatus::from(Accepted),
            v1::CommandStatus::Unspecified
        );
    }

    #[test]
    fn stored_values_read_back_as_the_same_value() {
        for v in [
            Value::Bool(true),
            Value::I64(-42),
            Value::U64(u64::MAX),
            Value::F64(0.1),
            Value::F64(f64::NAN),
            Value::F64(f64::NEG_INFINITY),
            Value::String("a \"quoted\" ünïcode".into()),
        ] {
            let (Some(ty), Some(text), _) = columns(Some(&v)) else {
                panic!("{v:?} stored nothing");
            };
            let back = parse_value("t", "value_text", &ty, &text).unwrap();
            match (&v, &back) {
                (Value::F64(a), Value::F64(b)) if a.is_nan() => assert!(b.is_nan()),
                _ => assert_eq!(back, v),
            }
        }
        let refused = |ty: &str, text: &str| {
            parse_value("t", "value_text", ty, text)
                .unwrap_err()
                .to_string()
        };
        assert!(refused("int", "1.5").contains("not a int"));
        assert!(refused("blob", "x").contains("unknown value type"));
    }

    #[test]
    fn places_refuse_what_a_column_cannot_hold() {
        let at = Place("alarm event 0".into());
        let long = "x".repeat(64);
        let Err(refused @ SinkError::Invalid { .. }) = at.key("device", &long, NAME_MAX) else {
            panic!("a 64-character name passed");
        };
        assert_eq!(refused.disposition(), Disposition::Permanent);
        let m = refused.to_string();
        assert!(m.starts_with("alarm event 0: device \"xxxx"), "{m}");
        assert!(
            m.ends_with("is 64 characters long, at most 63 are allowed"),
            "{m}"
        );
        // Characters, not bytes, as MySQL counts VARCHAR lengths.
        assert!(at.key("device", &"ü".repeat(63), NAME_MAX).is_ok());
        assert!(at.key("device", "", NAME_MAX).is_err());
        assert!(at.key("device", "pump ", NAME_MAX).is_err());
        assert!(at.name("user", "", ID_MAX).is_ok());
        assert!(at.finite("limit", Some(f64::NAN)).is_err());
        assert!(at.seq("seq", u64::MAX).is_err());
        assert!(at.shelving(AlarmState::Shelved, None).is_err());
        assert!(at.shelving(AlarmState::Normal, Some(1)).is_err());
    }

    #[test]
    fn upserts_keep_the_newer_row_in_both_dialects() {
        let mysql = newer_wins(Dialect::MySql, "t", &["k"], &["k", "a", "o"], "o");
        assert_eq!(
            mysql,
            " ON DUPLICATE KEY UPDATE a = IF(VALUES(o) >= o, VALUES(a), a), o = GREATEST(o, VALUES(o))"
        );
        let sqlite = newer_wins(Dialect::Sqlite, "t", &["k"], &["k", "a", "o"], "o");
        assert_eq!(
            sqlite,
            " ON CONFLICT (k) DO UPDATE SET a = excluded.a, o = excluded.o WHERE excluded.o >= t.o"
        );
    }
}
