//! The plant-data tables (alarm history and state, command audit, production counters and
//! events) through the one code path, against both backends: a database of its own on the
//! MariaDB of `tests/backends.sh` (created for the test and dropped after it) and a SQLite
//! file. Every check runs on both.

use std::{future::Future, slice::from_ref};

use anyhow::{Context, ensure};
use fieldline_core::{Value, config::SqlConfig};
use fieldline_storage::{
    events::{
        AlarmEvent, AlarmEventQuery, AlarmState, AlarmStatus, AuditQuery, CommandAudit,
        CommandStatus, CounterQuery, EventStore, ProductionCounter, ProductionEvent,
        ProductionEventKind, ProductionEventQuery,
    },
    sinks::{Disposition, SinkError},
};
use fieldline_testkit as kit;
use sqlx::{AssertSqlSafe, Connection};

const T0: i64 = 1_700_000_000_000_000_000;
const ALL_TIME: std::ops::Range<i64> = i64::MIN..i64::MAX;

/// Runs `check` on a new SQLite file, then on a new MariaDB database, and drops the database
/// whatever the outcome.
async fn on_both<F, Fut>(check: F) -> anyhow::Result<()>
where
    F: Fn(EventStore) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    kit::require_mysql()?;
    let dir = tempfile::tempdir()?;
    let sqlite = EventStore::connect(&SqlConfig {
        url: format!("sqlite://{}", dir.path().join("events.db").display()),
        password: None,
    })
    .await?;
    let outcome = check(sqlite.clone()).await;
    sqlite.close().await;
    outcome.context("on SQLite")?;

    let db = kit::unique("events").replace('-', "_");
    let mut admin = sqlx::MySqlConnection::connect(kit::MYSQL_URL).await?;
    // The name is ours (letters, digits, '_'), not outside input.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{db}`")))
        .execute(&mut admin)
        .await?;
    let outcome = async {
        let store = EventStore::connect(&SqlConfig {
            url: format!("mysql://root@127.0.0.1:3306/{db}"),
            password: None,
        })
        .await?;
        let outcome = check(store.clone()).await;
        store.close().await;
        outcome
    }
    .await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(&mut admin)
        .await?;
    outcome.with_context(|| format!("on MariaDB (database {db})"))
}

fn alarm_event(line: &str, alarm: usize, seq: u64) -> AlarmEvent {
    let to_state = match seq % 4 {
        0 => AlarmState::UnackedActive,
        1 => AlarmState::AckedActive,
        2 => AlarmState::Shelved,
        _ => AlarmState::Normal,
    };
    AlarmEvent {
        line: line.into(),
        alarm_id: format!("tank{alarm}-hi"),
        seq,
        device: format!("tank{alarm}"),
        tag: "level".into(),
        kind: "hi".into(),
        priority: u32::try_from(alarm % 4).unwrap_or(0) + 1,
        from_state: AlarmState::Normal,
        to_state,
        value: match seq % 5 {
            0 => None,
            1 => Some(Value::F64(80.25 + seq as f64)),
            2 => Some(Value::I64(-(seq as i64))),
            3 => Some(Value::String(format!("level \"{seq}\" über"))),
            _ => Some(Value::U64(u64::MAX - seq)),
        },
        limit: seq.is_multiple_of(2).then_some(80.0),
        message: format!("tank {alarm} level high ({seq})"),
        user: if to_state == AlarmState::Shelved {
            "operator-a".into()
        } else {
            String::new()
        },
        comment: if to_state == AlarmState::Shelved {
            "sensor cleaning".into()
        } else {
            String::new()
        },
        shelved_until_ns: (to_state == AlarmState::Shelved).then_some(T0 + 3_600_000_000_000),
        timestamp_ns: T0 + i64::try_from(seq * 1000 + alarm as u64).unwrap_or(0),
    }
}

fn sorted(mut events: Vec<AlarmEvent>) -> Vec<AlarmEvent> {
    events.sort_by(|a, b| (&a.alarm_id, a.seq).cmp(&(&b.alarm_id, b.seq)));
    events
}

#[tokio::test]
async fn alarm_events_replayed_change_nothing_and_large_writes_cross_chunks() -> anyhow::Result<()>
{
    on_both(|store| async move {
        let line = "packaging-1";
        // 12 alarms × 100 transitions: 1200 rows, more than two statements' worth.
        let events: Vec<AlarmEvent> = (0..12)
            .flat_map(|a| (0..100).map(move |s| alarm_event(line, a, s)))
            .collect();
        store.record_alarm_events(&events).await?;
        store
            .record_alarm_events(&[alarm_event("other-line", 0, 0)])
            .await?;
        let all = AlarmEventQuery {
            limit: 5000,
            ..AlarmEventQuery::new(line, ALL_TIME)
        };
        let first = store.alarm_events(&all).await?;
        ensure!(
            first.len() == 1200,
            "{} rows after the first write",
            first.len()
        );
        ensure!(
            sorted(first.clone()) == sorted(events.clone()),
            "stored rows differ from written"
        );

        // A replay, including one event that now says something else: nothing changes.
        let mut replay = events.clone();
        replay[7].message = "rewritten".into();
        store.record_alarm_events(&replay).await?;
        let second = store.alarm_events(&all).await?;
        ensure!(second == first, "a replay changed the stored events");

        // Newest first, limited, filtered by alarm and time.
        let newest = store
            .alarm_events(&AlarmEventQuery {
                limit: 3,
                ..AlarmEventQuery::new(line, ALL_TIME)
            })
            .await?;
        let seqs: Vec<(String, u64)> = newest.iter().map(|e| (e.alarm_id.clone(), e.seq)).collect();
        ensure!(
            seqs == [
                ("tank11-hi".into(), 99),
                ("tank10-hi".into(), 99),
                ("tank9-hi".into(), 99)
            ],
            "{seqs:?}"
        );
        let one = store
            .alarm_events(&AlarmEventQuery {
                alarm_id: Some("tank3-hi".into()),
                ..AlarmEventQuery::new(line, T0 + 10_000..T0 + 20_000)
            })
            .await?;
        let seqs: Vec<u64> = one.iter().map(|e| e.seq).collect();
        ensure!(seqs == (10..20).rev().collect::<Vec<_>>(), "{seqs:?}");
        Ok(())
    })
    .await
}

fn status(line: &str, alarm: &str, seq: u64, state: AlarmState) -> AlarmStatus {
    let (active, acked) = match state {
        AlarmState::Normal => (false, true),
        AlarmState::UnackedActive => (true, false),
        AlarmState::AckedActive => (true, true),
        AlarmState::ReturnedUnacked => (false, false),
        AlarmState::Shelved | AlarmState::OutOfService => (true, false),
    };
    AlarmStatus {
        line: line.into(),
        alarm_id: alarm.into(),
        device: "pump".into(),
        tag: "pressure".into(),
        kind: "hihi".into(),
        priority: 1,
        state,
        active,
        acked,
        shelved_until_ns: (state == AlarmState::Shelved).then_some(T0 + 900),
        value: Some(Value::F64(3.25)),
        message: format!("{alarm} at seq {seq}"),
        last_seq: seq,
        changed_ns: T0 + i64::try_from(seq).unwrap_or(0),
        snapshot: Some(format!("{{\"seq\":{seq}}}")),
    }
}

#[tokio::test]
async fn alarm_state_keeps_the_newest_transition_and_reloads_exactly() -> anyhow::Result<()> {
    on_both(|store| async move {
        let line = "filling";
        store
            .save_alarm_states(&[status(line, "p-hihi", 5, AlarmState::UnackedActive)])
            .await?;
        store
            .save_alarm_states(&[status(line, "p-hihi", 7, AlarmState::Shelved)])
            .await?;
        // An older transition replayed after a newer one.
        store
            .save_alarm_states(&[status(line, "p-hihi", 6, AlarmState::AckedActive)])
            .await?;
        // Several states of one alarm in one write, newest first: the newest still wins.
        let event = alarm_event(line, 1, 9);
        store
            .record_alarm_transitions(
                from_ref(&event),
                &[
                    status(line, "q-lo", 9, AlarmState::OutOfService),
                    status(line, "q-lo", 8, AlarmState::ReturnedUnacked),
                    status(line, "r-rate", 1, AlarmState::Normal),
                ],
            )
            .await?;
        store
            .save_alarm_states(&[status("other-line", "p-hihi", 99, AlarmState::Normal)])
            .await?;

        let loaded = store.load_alarm_states(line).await?;
        let expected = vec![
            status(line, "p-hihi", 7, AlarmState::Shelved),
            status(line, "q-lo", 9, AlarmState::OutOfService),
            status(line, "r-rate", 1, AlarmState::Normal),
        ];
        ensure!(loaded == expected, "loaded {loaded:#?}");
        ensure!(loaded[1].out_of_service() && loaded[1].active && !loaded[1].acked);
        let history = store
            .alarm_events(&AlarmEventQuery::new(line, ALL_TIME))
            .await?;
        ensure!(
            history == [event],
            "the transition stored with its state: {history:?}"
        );

        // A state that contradicts its own flags is refused, and nothing of its write is kept.
        let mut wrong = status(line, "s-dev", 1, AlarmState::AckedActive);
        wrong.acked = false;
        let err = store
            .save_alarm_states(&[status(line, "t-ok", 1, AlarmState::Normal), wrong])
            .await
            .err()
            .context("an acked_active state with acked=false was stored")?;
        ensure!(err.disposition() == Disposition::Permanent, "{err:?}");
        ensure!(err.to_string().contains("alarm state 1"), "{err}");
        ensure!(store.load_alarm_states(line).await? == expected);
        Ok(())
    })
    .await
}

fn request(id: &str, device: &str, tag: &str, at: i64) -> CommandAudit {
    CommandAudit {
        command_id: id.into(),
        line: "mixing".into(),
        device: device.into(),
        tag: tag.into(),
        value: Value::F64(42.5),
        source: "rule:level-hysteresis".into(),
        requested_by: "processor-1".into(),
        reason: "level below 20 %".into(),
        deadline_ns: at + 5_000_000_000,
        requested_ns: at,
        status: CommandStatus::Requested,
        rejected_by: None,
        old_value: None,
        read_back: None,
        detail: None,
        finished_ns: None,
    }
}

#[tokio::test]
async fn command_audit_keeps_one_row_per_command_and_never_reverts() -> anyhow::Result<()> {
    on_both(|store| async move {
        let asked = request("cmd-1", "valve", "setpoint", T0);
        store.record_commands(from_ref(&asked)).await?;
        let accepted = CommandAudit {
            status: CommandStatus::Accepted,
            old_value: Some(Value::F64(40.0)),
            ..asked.clone()
        };
        let verified = CommandAudit {
            status: CommandStatus::Verified,
            read_back: Some(Value::F64(42.5)),
            detail: Some("read back equal".into()),
            finished_ns: Some(T0 + 80_000_000),
            // A later record that differs in the request fields does not rewrite them.
            reason: "changed".into(),
            ..asked.clone()
        };
        store.record_commands(&[accepted]).await?;
        store.record_commands(&[verified]).await?;
        let expected = CommandAudit {
            status: CommandStatus::Verified,
            old_value: Some(Value::F64(40.0)),
            read_back: Some(Value::F64(42.5)),
            detail: Some("read back equal".into()),
            finished_ns: Some(T0 + 80_000_000),
            ..asked.clone()
        };
        let all = AuditQuery::new("mixing", ALL_TIME);
        ensure!(store.command_audit(&all).await? == from_ref(&expected));

        // Replays of the request and of an earlier stage, and a second final result: no change.
        let failed = CommandAudit {
            status: CommandStatus::Failed,
            detail: Some("timeout".into()),
            ..asked.clone()
        };
        let written = CommandAudit {
            status: CommandStatus::Written,
            ..asked.clone()
        };
        store
            .record_commands(&[asked.clone(), written, failed])
            .await?;
        ensure!(store.command_audit(&all).await? == from_ref(&expected));

        // A result whose request was never recorded makes the row on its own.
        let rejected = CommandAudit {
            status: CommandStatus::Rejected,
            rejected_by: Some("max".into()),
            detail: Some("42.5 is above the maximum 40".into()),
            finished_ns: Some(T0 + 1_000),
            ..request("cmd-2", "valve", "setpoint", T0 + 1_000)
        };
        store.record_commands(from_ref(&rejected)).await?;
        store
            .record_commands(&[request("cmd-2", "valve", "setpoint", T0 + 1_000)])
            .await?;

        // More requests on other tags, devices and times, then the range queries.
        let others = [
            request("cmd-3", "valve", "mode", T0 + 2_000),
            request("cmd-4", "pump", "speed", T0 + 3_000),
            request("cmd-5", "valve", "setpoint", T0 + 4_000),
            CommandAudit {
                line: "other-line".into(),
                ..request("cmd-6", "valve", "setpoint", T0 + 5_000)
            },
        ];
        store.record_commands(&others).await?;
        let ids =
            |rows: Vec<CommandAudit>| rows.into_iter().map(|r| r.command_id).collect::<Vec<_>>();
        ensure!(
            ids(store.command_audit(&all).await?) == ["cmd-5", "cmd-4", "cmd-3", "cmd-2", "cmd-1"]
        );
        let setpoint = AuditQuery {
            device: Some("valve".into()),
            tag: Some("setpoint".into()),
            ..all.clone()
        };
        let rows = store.command_audit(&setpoint).await?;
        ensure!(rows[1] == rejected, "{:?}", rows[1]);
        ensure!(ids(rows) == ["cmd-5", "cmd-2", "cmd-1"]);
        let window = AuditQuery {
            device: Some("valve".into()),
            limit: 1,
            ..AuditQuery::new("mixing", T0 + 1_000..T0 + 4_000)
        };
        ensure!(ids(store.command_audit(&window).await?) == ["cmd-3"]);

        // A command id is unique within its line only: another line's cmd-1 is its own row,
        // and leaves this line's alone.
        let elsewhere = CommandAudit {
            line: "other-line".into(),
            status: CommandStatus::Rejected,
            rejected_by: Some("interlock".into()),
            finished_ns: Some(T0 + 6_000),
            ..request("cmd-1", "pump", "run", T0 + 6_000)
        };
        store.record_commands(from_ref(&elsewhere)).await?;
        let other = store
            .command_audit(&AuditQuery::new("other-line", ALL_TIME))
            .await?;
        ensure!(ids(other.clone()) == ["cmd-1", "cmd-6"], "{other:?}");
        ensure!(other[0] == elsewhere, "{:?}", other[0]);
        let mine = store.command_audit(&all).await?;
        ensure!(mine.last() == Some(&expected), "{mine:?}");
        Ok(())
    })
    .await
}

fn counter(device: &str, name: &str, minute: i64, value: f64, as_of: i64) -> ProductionCounter {
    ProductionCounter {
        line: "press-line".into(),
        device: device.into(),
        counter: name.into(),
        period_start_ns: T0 + minute * 60_000_000_000,
        period_ns: 60_000_000_000,
        value,
        as_of_ns: as_of,
    }
}

fn production_event(id: &str, device: &str, kind: ProductionEventKind, at: i64) -> ProductionEvent {
    ProductionEvent {
        line: "press-line".into(),
        event_id: id.into(),
        device: device.into(),
        kind,
        code: "E-17".into(),
        detail: format!("{kind} at {at}"),
        user: "shift-lead".into(),
        timestamp_ns: at,
    }
}

#[tokio::test]
async fn production_counters_and_events_are_idempotent_and_queryable() -> anyhow::Result<()> {
    on_both(|store| async move {
        // Minute 0 written as a partial value, then final; minute 1 written out of order.
        let partial = counter("press", "units", 0, 30.0, 10);
        let full = counter("press", "units", 0, 61.0, 20);
        store.record_counters(from_ref(&partial)).await?;
        store.record_counters(from_ref(&full)).await?;
        store.record_counters(from_ref(&partial)).await?;
        let rows = [
            counter("press", "units", 1, 58.0, 30),
            counter("press", "good", 1, 57.0, 30),
            counter("press", "runtime_s", 1, 59.5, 30),
            counter("press", "units", 1, 12.0, 25),
            counter("oven", "units", 1, 5.0, 30),
            ProductionCounter {
                line: "other-line".into(),
                ..counter("press", "units", 1, 1.0, 30)
            },
        ];
        store.record_counters(&rows).await?;
        store.record_counters(&rows).await?;
        let units = CounterQuery {
            device: Some("press".into()),
            counter: Some("units".into()),
            ..CounterQuery::new("press-line", ALL_TIME)
        };
        ensure!(store.production_counters(&units).await? == [full.clone(), rows[0].clone()]);
        let minute_1 = CounterQuery::new("press-line", T0 + 60_000_000_000..T0 + 120_000_000_000);
        let got = store.production_counters(&minute_1).await?;
        ensure!(
            got == [
                rows[4].clone(),
                rows[1].clone(),
                rows[2].clone(),
                rows[0].clone()
            ],
            "{got:#?}"
        );

        let events = [
            production_event("shift-7", "", ProductionEventKind::ShiftStart, T0),
            production_event("order-4711", "", ProductionEventKind::OrderStart, T0 + 10),
            production_event("stop-1", "press", ProductionEventKind::StopStart, T0 + 20),
            production_event("stop-1-end", "press", ProductionEventKind::StopEnd, T0 + 30),
            production_event("stop-2", "oven", ProductionEventKind::StopStart, T0 + 40),
        ];
        store.record_production_events(&events).await?;
        let mut replay = events.clone();
        replay[2].code = "E-99".into();
        store.record_production_events(&replay).await?;
        let all = ProductionEventQuery::new("press-line", ALL_TIME);
        ensure!(store.production_events(&all).await? == events);
        let press_stops = ProductionEventQuery {
            device: Some("press".into()),
            kind: Some(ProductionEventKind::StopStart),
            ..all.clone()
        };
        ensure!(store.production_events(&press_stops).await? == [events[2].clone()]);
        let line_wide = ProductionEventQuery {
            device: Some(String::new()),
            limit: 1,
            ..all.clone()
        };
        ensure!(store.production_events(&line_wide).await? == [events[0].clone()]);
        let window = ProductionEventQuery::new("press-line", T0 + 10..T0 + 40);
        ensure!(store.production_events(&window).await? == events[1..4]);
        Ok(())
    })
    .await
}

fn expect_refusal(result: Result<(), SinkError>, wanted: &str) -> anyhow::Result<()> {
    match result {
        Err(error) if error.disposition() == Disposition::Permanent => {
            let message = error.to_string();
            ensure!(
                message.contains(wanted),
                "message {message:?} lacks {wanted:?}"
            );
            Ok(())
        }
        other => anyhow::bail!("expected a permanent refusal mentioning {wanted:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn overlong_names_are_refused_before_the_database_sees_them() -> anyhow::Result<()> {
    on_both(|store| async move {
        let long = "d".repeat(64);
        let good = alarm_event("l", 0, 1);
        let bad = AlarmEvent {
            device: long.clone(),
            ..alarm_event("l", 0, 2)
        };
        expect_refusal(
            store.record_alarm_events(&[good, bad]).await,
            "alarm event 1 (\"l\", alarm \"tank0-hi\", seq 2): device \"dddddddddddddddddddddddddddddddddddddddd\"… is 64 characters long, at most 63 are allowed",
        )?;
        ensure!(
            store.alarm_events(&AlarmEventQuery::new("l", ALL_TIME)).await?.is_empty(),
            "the valid event of a refused write was stored"
        );

        let mut state = status("l", "a", 1, AlarmState::Normal);
        state.alarm_id = "a".repeat(129);
        expect_refusal(store.save_alarm_states(&[state]).await, "at most 128 are allowed")?;

        let command = CommandAudit {
            tag: long.clone(),
            ..request("cmd-x", "valve", "t", T0)
        };
        expect_refusal(store.record_commands(&[command]).await, "tag \"ddd")?;
        let spaced = request("cmd-y ", "valve", "t", T0);
        expect_refusal(
            store.record_commands(&[spaced]).await,
            "surrounding spaces or control characters",
        )?;
        ensure!(store.command_audit(&AuditQuery::new("mixing", ALL_TIME)).await?.is_empty());

        expect_refusal(
            store
                .record_counters(&[counter(&long, "units", 0, 1.0, 1)])
                .await,
            "device",
        )?;
        expect_refusal(
            store
                .record_counters(&[counter("press", "units", 0, f64::NAN, 1)])
                .await,
            "value is NaN, only finite numbers are stored",
        )?;
        let text = "x".repeat(16_384);
        expect_refusal(
            store
                .record_production_events(&[ProductionEvent {
                    detail: text,
                    ..production_event("e", "", ProductionEventKind::ShiftEnd, T0)
                }])
                .await,
            "at most 16383 are allowed",
        )?;
        // The longest allowed values are stored whole.
        let longest = AlarmEvent {
            device: "d".repeat(63),
            alarm_id: "ü".repeat(128),
            message: "m".repeat(16_383),
            ..alarm_event("l", 0, 3)
        };
        store.record_alarm_events(from_ref(&longest)).await?;
        ensure!(store.alarm_events(&AlarmEventQuery::new("l", ALL_TIME)).await? == [longest]);
        Ok(())
    })
    .await
}

/// Why the writer checks lengths itself: a MariaDB session without strict mode cuts an
/// overlong name to the column's length and stores it, with only a warning.
#[tokio::test]
async fn mariadb_without_strict_mode_would_truncate_what_the_writer_refuses() -> anyhow::Result<()>
{
    kit::require_mysql()?;
    let db = kit::unique("events").replace('-', "_");
    let mut admin = sqlx::MySqlConnection::connect(kit::MYSQL_URL).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{db}`")))
        .execute(&mut admin)
        .await?;
    let outcome = async {
        let url = format!("mysql://root@127.0.0.1:3306/{db}");
        let store = EventStore::connect(&SqlConfig {
            url: url.clone(),
            password: None,
        })
        .await?;
        let mut loose = sqlx::MySqlConnection::connect(&url).await?;
        sqlx::query("SET SESSION sql_mode = ''")
            .execute(&mut loose)
            .await?;
        let long = "p".repeat(70);
        sqlx::query(
            "INSERT INTO production_events (line, event_id, device, kind, code, detail, user_name, ts_ns) VALUES ('l', 'e1', ?, 'stop_start', '', '', '', 0)",
        )
        .bind(&long)
        .execute(&mut loose)
        .await?;
        let (stored,): (String,) = sqlx::query_as("SELECT device FROM production_events")
            .fetch_one(&mut loose)
            .await?;
        ensure!(stored.len() == 63, "non-strict MariaDB kept {} characters", stored.len());

        let refused = store
            .record_production_events(&[ProductionEvent {
                device: long,
                ..production_event("e2", "", ProductionEventKind::StopStart, 0)
            }])
            .await;
        store.close().await;
        expect_refusal(refused, "is 70 characters long, at most 63 are allowed")
    }
    .await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(&mut admin)
        .await?;
    outcome
}
