use proptest::prelude::*;

use super::*;
use crate::{
    alarm::{DiscreteValue, Limit, Priority},
    sample::{Quality, QualityReason},
};

use AlarmState::{
    AckedActive as AA, Normal as N, OutOfService as OOS, ReturnedUnacked as RU, Shelved as SH,
    UnackedActive as UA,
};

const S: i64 = 1_000_000_000;
const TAG: &str = "temperature";
const SP_TAG: &str = "temperature_sp";

fn def(condition: Condition, on_delay_s: i64, off_delay_s: i64) -> AlarmDefinition {
    AlarmDefinition {
        name: "temp-alarm".into(),
        tag: TAG.into(),
        condition,
        on_delay_ns: on_delay_s * S,
        off_delay_ns: off_delay_s * S,
        priority: Priority::High,
        message: "test".into(),
    }
}

fn limit(limit: f64, deadband: f64) -> Limit {
    Limit { limit, deadband }
}

/// High alarm at 80, no deadband, no delays.
fn high() -> AlarmDefinition {
    def(Condition::High(limit(80.0, 0.0)), 0, 0)
}

fn good(v: f64, t: i64) -> Sample {
    Sample::good(TAG, Value::F64(v), t)
}

fn bad(t: i64) -> Sample {
    Sample::bad(TAG, Quality::bad(QualityReason::CommFailure, "timeout"), t)
}

fn sp(v: f64, t: i64) -> Sample {
    Sample::good(SP_TAG, Value::F64(v), t)
}

/// (from, to, user) of each transition.
fn moves(ts: &[AlarmTransition]) -> Vec<(AlarmState, AlarmState, Option<&str>)> {
    ts.iter()
        .map(|t| (t.from, t.to, t.user.as_deref()))
        .collect()
}

fn at(ts: &[AlarmTransition]) -> Vec<(AlarmState, AlarmState, i64)> {
    ts.iter().map(|t| (t.from, t.to, t.timestamp_ns)).collect()
}

const T0: i64 = 100 * S;
const SHELF_END: i64 = 1000 * S;

/// A machine in `state` with the condition `active`, its clock at T0, 10 transitions behind it.
fn machine_in(d: AlarmDefinition, state: AlarmState, active: bool) -> AlarmMachine {
    let snapshot = AlarmSnapshot {
        state,
        condition_active: active,
        pending_since_ns: None,
        shelved_until_ns: (state == SH).then_some(SHELF_END),
        sequence: 10,
        now_ns: T0,
        last_value: Some(StoredValue::F64(if active { 90.0 } else { 70.0 })),
        last_sample_ns: Some(T0),
        previous_good: None,
        setpoint: None,
        last_setpoint_ns: None,
    };
    AlarmMachine::restore(d, snapshot).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Input {
    Active,
    Inactive,
    Bad,
    Ack,
    Shelve,
    Unshelve,
    Oos,
    Rts,
}

const OP: Option<&str> = Some("alice");

type Expect = Result<&'static [(AlarmState, AlarmState, Option<&'static str>)], &'static str>;

fn apply(m: &mut AlarmMachine, input: Input, t: i64) -> Result<Vec<AlarmTransition>, String> {
    let refused = |e: ActionRefused| e.metric_label().to_string();
    match input {
        Input::Active => Ok(m.on_sample(&good(90.0, t)).transitions),
        Input::Inactive => Ok(m.on_sample(&good(70.0, t)).transitions),
        Input::Bad => Ok(m.on_sample(&bad(t)).transitions),
        Input::Ack => m.acknowledge("alice", "seen", t).map_err(refused),
        Input::Shelve => m
            .shelve("alice", t + 3600 * S, "nuisance", t)
            .map_err(refused),
        Input::Unshelve => m.unshelve("alice", "", t).map_err(refused),
        Input::Oos => m
            .remove_from_service("alice", "sensor swap", t)
            .map_err(refused),
        Input::Rts => m.return_to_service("alice", "", t).map_err(refused),
    }
}

#[test]
fn every_state_and_every_input() {
    use Input::*;
    #[rustfmt::skip]
    let table: &[(AlarmState, bool, Input, AlarmState, bool, Expect)] = &[
        (N, false, Active,   UA, true,  Ok(&[(N, UA, None)])),
        (N, false, Inactive, N,  false, Ok(&[])),
        (N, false, Bad,      N,  false, Ok(&[])),
        (N, false, Ack,      N,  false, Ok(&[])),
        (N, false, Shelve,   SH, false, Ok(&[(N, SH, OP)])),
        (N, false, Unshelve, N,  false, Ok(&[])),
        (N, false, Oos,      OOS, false, Ok(&[(N, OOS, OP)])),
        (N, false, Rts,      N,  false, Ok(&[])),

        (UA, true, Active,   UA, true,  Ok(&[])),
        (UA, true, Inactive, RU, false, Ok(&[(UA, RU, None)])),
        (UA, true, Bad,      UA, true,  Ok(&[])),
        (UA, true, Ack,      AA, true,  Ok(&[(UA, AA, OP)])),
        (UA, true, Shelve,   SH, true,  Ok(&[(UA, SH, OP)])),
        (UA, true, Unshelve, UA, true,  Ok(&[])),
        (UA, true, Oos,      OOS, true, Ok(&[(UA, OOS, OP)])),
        (UA, true, Rts,      UA, true,  Ok(&[])),

        (AA, true, Active,   AA, true,  Ok(&[])),
        (AA, true, Inactive, N,  false, Ok(&[(AA, N, None)])),
        (AA, true, Bad,      AA, true,  Ok(&[])),
        (AA, true, Ack,      AA, true,  Ok(&[])),
        (AA, true, Shelve,   SH, true,  Ok(&[(AA, SH, OP)])),
        (AA, true, Unshelve, AA, true,  Ok(&[])),
        (AA, true, Oos,      OOS, true, Ok(&[(AA, OOS, OP)])),
        (AA, true, Rts,      AA, true,  Ok(&[])),

        (RU, false, Active,   UA, true,  Ok(&[(RU, UA, None)])),
        (RU, false, Inactive, RU, false, Ok(&[])),
        (RU, false, Bad,      RU, false, Ok(&[])),
        (RU, false, Ack,      N,  false, Ok(&[(RU, N, OP)])),
        (RU, false, Shelve,   SH, false, Ok(&[(RU, SH, OP)])),
        (RU, false, Unshelve, RU, false, Ok(&[])),
        (RU, false, Oos,      OOS, false, Ok(&[(RU, OOS, OP)])),
        (RU, false, Rts,      RU, false, Ok(&[])),

        (SH, false, Active,   SH, true,  Ok(&[])),
        (SH, false, Inactive, SH, false, Ok(&[])),
        (SH, false, Bad,      SH, false, Ok(&[])),
        (SH, false, Ack,      SH, false, Err("shelved")),
        (SH, false, Shelve,   SH, false, Ok(&[(SH, SH, OP)])),
        (SH, false, Unshelve, N,  false, Ok(&[(SH, N, OP)])),
        (SH, false, Oos,      OOS, false, Ok(&[(SH, OOS, OP)])),
        (SH, false, Rts,      SH, false, Ok(&[])),

        (SH, true, Active,   SH, true,  Ok(&[])),
        (SH, true, Inactive, SH, false, Ok(&[])),
        (SH, true, Bad,      SH, true,  Ok(&[])),
        (SH, true, Ack,      SH, true,  Err("shelved")),
        (SH, true, Shelve,   SH, true,  Ok(&[(SH, SH, OP)])),
        (SH, true, Unshelve, UA, true,  Ok(&[(SH, UA, OP)])),
        (SH, true, Oos,      OOS, true, Ok(&[(SH, OOS, OP)])),
        (SH, true, Rts,      SH, true,  Ok(&[])),

        (OOS, false, Active,   OOS, true,  Ok(&[])),
        (OOS, false, Inactive, OOS, false, Ok(&[])),
        (OOS, false, Bad,      OOS, false, Ok(&[])),
        (OOS, false, Ack,      OOS, false, Err("out_of_service")),
        (OOS, false, Shelve,   OOS, false, Err("out_of_service")),
        (OOS, false, Unshelve, OOS, false, Err("out_of_service")),
        (OOS, false, Oos,      OOS, false, Ok(&[])),
        (OOS, false, Rts,      N,   false, Ok(&[(OOS, N, OP)])),

        (OOS, true, Active,   OOS, true,  Ok(&[])),
        (OOS, true, Inactive, OOS, false, Ok(&[])),
        (OOS, true, Bad,      OOS, true,  Ok(&[])),
        (OOS, true, Ack,      OOS, true,  Err("out_of_service")),
        (OOS, true, Shelve,   OOS, true,  Err("out_of_service")),
        (OOS, true, Unshelve, OOS, true,  Err("out_of_service")),
        (OOS, true, Oos,      OOS, true,  Ok(&[])),
        (OOS, true, Rts,      UA,  true,  Ok(&[(OOS, UA, OP)])),
    ];
    assert_eq!(table.len(), 8 * 8, "every start × every input");
    let t = T0 + S;
    for (i, (state, active, input, end, end_active, expect)) in table.iter().enumerate() {
        let row = format!("row {i}: {state} (active {active}) + {input:?}");
        let mut m = machine_in(high(), *state, *active);
        let before = m.snapshot();
        let got = apply(&mut m, *input, t);
        match (expect, &got) {
            (Ok(want), Ok(events)) => {
                assert_eq!(moves(events), want.to_vec(), "{row}");
                for (k, e) in events.iter().enumerate() {
                    assert_eq!(e.sequence, 11 + k as u64, "{row}");
                    assert_eq!(e.timestamp_ns, t, "{row}");
                    assert_eq!(e.condition_active, *end_active, "{row}");
                }
                let last_seq = events.last().map_or(10, |e| e.sequence);
                assert_eq!(m.snapshot().sequence, last_seq, "{row}");
            }
            (Err(label), Err(got_label)) => {
                assert_eq!(got_label, label, "{row}");
                assert_eq!(
                    m.snapshot(),
                    before,
                    "{row}: a refused action changes nothing"
                );
            }
            _ => panic!("{row}: expected {expect:?}, got {got:?}"),
        }
        assert_eq!(m.state(), *end, "{row}");
        assert_eq!(m.condition_active(), *end_active, "{row}");
        assert_eq!(
            m.snapshot().shelved_until_ns.is_some(),
            *end == SH,
            "{row}: an expiry exactly while shelved"
        );
    }
}

#[test]
fn operator_transitions_record_user_comment_value_and_expiry() {
    let mut m = machine_in(high(), UA, true);
    let ack = m.acknowledge("alice", "on it", T0 + S).unwrap();
    assert_eq!(ack[0].comment.as_deref(), Some("on it"));
    assert_eq!(ack[0].cause, Cause::Acknowledged);
    assert_eq!(ack[0].value, Some(Value::F64(90.0)));
    let shelve = m.shelve("bob", T0 + 60 * S, "", T0 + 2 * S).unwrap();
    assert_eq!(shelve[0].user.as_deref(), Some("bob"));
    assert_eq!(shelve[0].comment, None, "an empty comment is no comment");
    assert_eq!(shelve[0].shelved_until_ns, Some(T0 + 60 * S));
    let reshelve = m
        .shelve("carol", T0 + 90 * S, "longer", T0 + 3 * S)
        .unwrap();
    assert_eq!(moves(&reshelve), [(SH, SH, Some("carol"))]);
    assert_eq!(reshelve[0].shelved_until_ns, Some(T0 + 90 * S));
    let oos = m.remove_from_service("dave", "", T0 + 4 * S).unwrap();
    assert_eq!(
        oos[0].shelved_until_ns, None,
        "out of service ends the shelve"
    );
    assert_eq!(oos[0].cause, Cause::RemovedFromService);
    // The old expiry passes without effect.
    assert!(m.tick(T0 + 100 * S).is_empty());
    assert_eq!(m.state(), OOS);
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let mut m = machine_in(high(), UA, true);
    let before = m.snapshot();
    assert_eq!(m.acknowledge(" ", "", T0), Err(ActionRefused::NoUser));
    assert_eq!(
        m.shelve("alice", T0, "", T0),
        Err(ActionRefused::ExpiryNotInFuture {
            until_ns: T0,
            now_ns: T0
        })
    );
    // An action stamped before the clock is applied at the clock's time.
    assert_eq!(
        m.shelve("alice", T0 - 1, "", T0 - 10 * S),
        Err(ActionRefused::ExpiryNotInFuture {
            until_ns: T0 - 1,
            now_ns: T0
        })
    );
    assert_eq!(m.snapshot(), before);
    let late = m.acknowledge("alice", "", T0 - 10 * S).unwrap();
    assert_eq!(late[0].timestamp_ns, T0);
}

#[test]
fn a_refused_action_does_not_swallow_a_due_expiry() {
    // Shelved until T0+10s. At T0+20s a shelve until T0+15s is refused (the expiry is past);
    // the earlier expiry is still reported by the next tick.
    let mut m = machine_in(high(), SH, true);
    m.shelve("alice", T0 + 10 * S, "", T0).unwrap();
    assert_eq!(
        m.shelve("alice", T0 + 15 * S, "", T0 + 20 * S),
        Err(ActionRefused::ExpiryNotInFuture {
            until_ns: T0 + 15 * S,
            now_ns: T0 + 20 * S
        })
    );
    assert_eq!(m.state(), SH);
    assert_eq!(at(&m.tick(T0 + 20 * S)), [(SH, UA, T0 + 10 * S)]);
}

/// Start state, start condition, end state, end condition, transitions.
type TickRow = (
    AlarmState,
    bool,
    AlarmState,
    bool,
    &'static [(AlarmState, AlarmState)],
);

#[test]
fn delays_and_expiry_on_ticks_in_every_state() {
    // on_delay and off_delay 5s; a delay started at T0 is due at T0+5s.
    let due = T0 + 5 * S;
    #[rustfmt::skip]
    let table: &[TickRow] = &[
        (N,   false, UA,  true,  &[(N, UA)]),
        (UA,  true,  RU,  false, &[(UA, RU)]),
        (AA,  true,  N,   false, &[(AA, N)]),
        (RU,  false, UA,  true,  &[(RU, UA)]),
        (SH,  false, SH,  true,  &[]),
        (SH,  true,  SH,  false, &[]),
        (OOS, false, OOS, true,  &[]),
        (OOS, true,  OOS, false, &[]),
    ];
    for (state, active, end, end_active, want) in table {
        let row = format!("{state} (active {active})");
        let d = def(Condition::High(limit(80.0, 0.0)), 5, 5);
        let mut m = machine_in(d, *state, *active);
        // A sample on the other side of the limit starts the delay.
        let started = m.on_sample(&good(if *active { 70.0 } else { 90.0 }, T0));
        assert!(started.transitions.is_empty(), "{row}");
        assert_eq!(m.next_deadline(), Some(due), "{row}");
        assert!(m.tick(due - 1).is_empty(), "{row}: before the delay");
        assert_eq!(m.state(), *state, "{row}");
        assert_eq!(m.condition_active(), *active, "{row}");
        // The tick comes late; the transition carries the time the delay completed.
        let fired = m.tick(due + 3 * S);
        let want: Vec<_> = want.iter().map(|(f, t)| (*f, *t, due)).collect();
        assert_eq!(at(&fired), want, "{row}");
        assert_eq!(m.state(), *end, "{row}");
        assert_eq!(m.condition_active(), *end_active, "{row}");
        assert!(m.tick(due + 10 * S).is_empty(), "{row}: fires once");
    }
}

#[test]
fn shelve_expires_by_tick_into_the_state_of_the_condition() {
    for (active, end) in [(false, N), (true, UA)] {
        let mut m = machine_in(high(), SH, active);
        assert_eq!(m.next_deadline(), Some(SHELF_END));
        assert!(m.tick(SHELF_END - 1).is_empty());
        let expired = m.tick(SHELF_END + S);
        assert_eq!(at(&expired), [(SH, end, SHELF_END)]);
        assert_eq!(expired[0].cause, Cause::ShelveExpired);
        assert_eq!(expired[0].user, None);
        assert_eq!(m.state(), end);
        assert_eq!(m.next_deadline(), None);
    }
}

#[test]
fn condition_changes_while_shelved_decide_the_state_at_expiry() {
    let mut m = AlarmMachine::new(high());
    assert_eq!(
        moves(&m.on_sample(&good(90.0, 0)).transitions),
        [(N, UA, None)]
    );
    m.shelve("alice", 60 * S, "chattering", S).unwrap();
    assert!(m.on_sample(&good(70.0, 10 * S)).transitions.is_empty());
    assert!(m.on_sample(&good(95.0, 20 * S)).transitions.is_empty());
    assert!(m.on_sample(&good(60.0, 30 * S)).transitions.is_empty());
    // Cleared while shelved: back to normal at expiry, nothing to acknowledge.
    assert_eq!(at(&m.tick(61 * S)), [(SH, N, 60 * S)]);
}

#[test]
fn delay_and_expiry_due_together_settle_the_condition_first() {
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = machine_in(d, SH, false);
    m.shelve("alice", T0 + 5 * S, "", T0).unwrap();
    m.on_sample(&good(90.0, T0));
    assert_eq!(at(&m.tick(T0 + 9 * S)), [(SH, UA, T0 + 5 * S)]);
}

#[test]
fn due_deadlines_complete_in_time_order_within_one_tick() {
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = machine_in(d, SH, false);
    m.shelve("alice", T0 + 3 * S, "", T0).unwrap();
    m.on_sample(&good(90.0, T0));
    assert_eq!(
        at(&m.tick(T0 + 9 * S)),
        [(SH, N, T0 + 3 * S), (N, UA, T0 + 5 * S)]
    );
}

#[test]
fn an_action_first_completes_what_was_due() {
    let d = def(Condition::High(limit(80.0, 0.0)), 0, 5);
    let mut m = machine_in(d, UA, true);
    m.on_sample(&good(70.0, T0));
    let ack = m.acknowledge("alice", "", T0 + 8 * S).unwrap();
    assert_eq!(at(&ack), [(UA, RU, T0 + 5 * S), (RU, N, T0 + 8 * S)]);
    assert_eq!(moves(&ack)[1].2, Some("alice"));
}

#[test]
fn deadband_gives_one_activation_and_one_clear() {
    let d = def(Condition::High(limit(80.0, 2.0)), 0, 0);
    let mut m = AlarmMachine::new(d);
    let mut all = Vec::new();
    // Hovering between 78 and 80 after activating, including exactly 78.
    for (i, v) in [
        79.0, 80.0, 79.5, 80.5, 78.5, 80.1, 78.0, 79.9, 81.0, 78.2, 77.9, 79.0, 79.99,
    ]
    .into_iter()
    .enumerate()
    {
        all.extend(m.on_sample(&good(v, i as i64 * S)).transitions);
    }
    assert_eq!(at(&all), [(N, UA, S), (UA, RU, 10 * S)]);
    assert_eq!(
        all[0].value,
        Some(Value::F64(80.0)),
        "at the limit is in alarm"
    );
    assert_eq!(all[1].value, Some(Value::F64(77.9)));
}

#[test]
fn low_limits_mirror_the_deadband() {
    for condition in [
        Condition::Low(limit(10.0, 1.0)),
        Condition::LowLow(limit(10.0, 1.0)),
    ] {
        let mut m = AlarmMachine::new(def(condition, 0, 0));
        let mut all = Vec::new();
        for (i, v) in [10.5, 10.0, 10.9, 9.0, 11.0, 10.2, 11.1, 10.5]
            .into_iter()
            .enumerate()
        {
            all.extend(m.on_sample(&good(v, i as i64 * S)).transitions);
        }
        assert_eq!(at(&all), [(N, UA, S), (UA, RU, 6 * S)]);
    }
}

#[test]
fn high_high_is_a_high_limit() {
    let mut m = AlarmMachine::new(def(Condition::HighHigh(limit(100.0, 0.0)), 0, 0));
    assert!(m.on_sample(&good(99.9, 0)).transitions.is_empty());
    assert_eq!(
        moves(&m.on_sample(&good(100.0, S)).transitions),
        [(N, UA, None)]
    );
}

#[test]
fn an_excursion_shorter_than_the_on_delay_raises_nothing() {
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = AlarmMachine::new(d);
    let mut all = Vec::new();
    all.extend(m.on_sample(&good(90.0, 0)).transitions);
    for t in 1..=4 {
        all.extend(m.tick(t * S));
    }
    all.extend(m.on_sample(&good(70.0, 4 * S + S / 2)).transitions);
    for t in 5..=20 {
        all.extend(m.tick(t * S));
    }
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(m.state(), N);

    // A long one raises exactly at start + on_delay.
    all.extend(m.on_sample(&good(90.0, 30 * S)).transitions);
    all.extend(m.on_sample(&good(91.0, 32 * S)).transitions);
    all.extend(m.tick(35 * S - 1));
    assert!(all.is_empty());
    all.extend(m.tick(35 * S));
    assert_eq!(at(&all), [(N, UA, 35 * S)]);
    assert_eq!(all[0].value, Some(Value::F64(91.0)), "the latest value");
}

#[test]
fn a_sample_past_the_on_delay_completes_it_before_being_evaluated() {
    // No tick came; the next sample shows the condition held until it. Its own value then
    // clears the alarm.
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = AlarmMachine::new(d);
    m.on_sample(&good(90.0, 0));
    let out = m.on_sample(&good(70.0, 7 * S));
    assert_eq!(at(&out.transitions), [(N, UA, 5 * S), (UA, RU, 7 * S)]);
}

#[test]
fn off_delay_keeps_the_alarm_through_short_returns() {
    let d = def(Condition::High(limit(80.0, 0.0)), 0, 5);
    let mut m = AlarmMachine::new(d);
    let mut all = m.on_sample(&good(90.0, 0)).transitions;
    all.extend(m.on_sample(&good(70.0, 10 * S)).transitions);
    all.extend(m.tick(13 * S));
    all.extend(m.on_sample(&good(85.0, 14 * S)).transitions);
    all.extend(m.tick(30 * S));
    assert_eq!(at(&all), [(N, UA, 0)], "returned for 4s only");
    all.extend(m.on_sample(&good(70.0, 40 * S)).transitions);
    all.extend(m.tick(44 * S));
    assert_eq!(all.len(), 1);
    all.extend(m.tick(46 * S));
    assert_eq!(at(&all)[1], (UA, RU, 45 * S));
}

#[test]
fn bad_quality_holds_a_limit_alarm_in_every_state() {
    for (state, active) in [
        (N, false),
        (UA, true),
        (AA, true),
        (RU, false),
        (SH, true),
        (OOS, false),
    ] {
        let d = def(Condition::High(limit(80.0, 0.0)), 5, 5);
        let mut m = machine_in(d, state, active);
        let mut all = Vec::new();
        for k in 1..=30 {
            all.extend(m.on_sample(&bad(T0 + k * S)).transitions);
            all.extend(m.tick(T0 + k * S + S / 2));
        }
        assert!(all.is_empty(), "{state}: {all:?}");
        assert_eq!((m.state(), m.condition_active()), (state, active));
        assert_eq!(m.snapshot().last_value, None, "a Bad sample has no value");
    }
}

#[test]
fn bad_quality_restarts_a_running_delay() {
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = AlarmMachine::new(d);
    m.on_sample(&good(90.0, 0));
    m.on_sample(&bad(2 * S));
    assert_eq!(m.next_deadline(), None);
    assert!(m.tick(10 * S).is_empty(), "unknown data does not raise");
    m.on_sample(&good(90.0, 12 * S));
    assert!(m.tick(16 * S).is_empty());
    assert_eq!(at(&m.tick(17 * S)), [(N, UA, 17 * S)]);
}

#[test]
fn unusable_values_hold_the_condition_and_say_why() {
    let mut m = machine_in(high(), UA, true);
    let cases = [
        (
            Sample::good(TAG, Value::String("hot".into()), T0 + S),
            "temperature: value \"hot\" is not a usable number",
        ),
        (
            good(f64::NAN, T0 + 2 * S),
            "temperature: value NaN is not a usable number",
        ),
        (
            Sample {
                tag: TAG.into(),
                value: None,
                quality: Quality::Good,
                timestamp_ns: T0 + 3 * S,
                server_timestamp_ns: None,
            },
            "temperature: sample has no value though its quality is good",
        ),
        (good(10.0, T0 - S), "is older than the one at"),
    ];
    for (sample, why) in cases {
        let out = m.on_sample(&sample);
        assert!(out.transitions.is_empty());
        let problem = out.problem.unwrap_or_default();
        assert!(problem.contains(why), "{problem:?} should say {why:?}");
        assert_eq!(m.state(), UA);
    }
    // Bad quality is not a problem of the input; it is what bad_quality alarms are for.
    assert_eq!(m.on_sample(&bad(T0 + 4 * S)).problem, None);
}

#[test]
fn uncertain_values_are_evaluated() {
    let mut m = AlarmMachine::new(high());
    let sample = Sample {
        tag: TAG.into(),
        value: Some(Value::F64(85.0)),
        quality: Quality::Uncertain {
            reason: QualityReason::Stale,
            detail: String::new(),
        },
        timestamp_ns: 0,
        server_timestamp_ns: None,
    };
    assert_eq!(moves(&m.on_sample(&sample).transitions), [(N, UA, None)]);
}

#[test]
fn bad_quality_alarms_annunciate_bad_samples() {
    let mut m = AlarmMachine::new(def(Condition::BadQuality, 10, 0));
    let mut all = m.on_sample(&good(1.0, 0)).transitions;
    all.extend(m.on_sample(&bad(S)).transitions);
    all.extend(m.on_sample(&bad(6 * S)).transitions);
    all.extend(m.tick(10 * S));
    assert!(all.is_empty(), "on-delay of 10s not over");
    all.extend(m.tick(11 * S));
    assert_eq!(at(&all), [(N, UA, 11 * S)]);
    assert_eq!(all[0].value, None);
    let uncertain = Sample {
        tag: TAG.into(),
        value: Some(Value::F64(3.0)),
        quality: Quality::Uncertain {
            reason: QualityReason::Stale,
            detail: String::new(),
        },
        timestamp_ns: 12 * S,
        server_timestamp_ns: None,
    };
    let cleared = m.on_sample(&uncertain).transitions;
    assert_eq!(at(&cleared), [(UA, RU, 12 * S)]);
    assert_eq!(cleared[0].value, Some(Value::F64(3.0)));
}

#[test]
fn rate_of_change_uses_the_previous_good_sample() {
    let d = def(Condition::RateOfChange(limit(2.0, 0.5)), 0, 0);
    let mut m = AlarmMachine::new(d);
    let mut log = Vec::new();
    fn feed(m: &mut AlarmMachine, log: &mut Vec<AlarmTransition>, s: Sample) {
        log.extend(m.on_sample(&s).transitions);
    }
    feed(&mut m, &mut log, good(10.0, 0)); // first: nothing to compare with
    feed(&mut m, &mut log, good(11.0, S)); // 1/s
    assert!(log.is_empty());
    feed(&mut m, &mut log, good(14.0, 2 * S)); // 3/s
    feed(&mut m, &mut log, good(15.8, 3 * S)); // 1.8/s: within the deadband
    feed(&mut m, &mut log, good(15.8, 3 * S)); // same time: says nothing
    assert_eq!(at(&log), [(N, UA, 2 * S)]);
    feed(&mut m, &mut log, good(17.0, 4 * S)); // 1.2/s
    assert_eq!(at(&log)[1], (UA, RU, 4 * S));
    feed(&mut m, &mut log, bad(5 * S));
    feed(&mut m, &mut log, good(11.0, 6 * S)); // falling 6 over 2s: 3/s across the Bad sample
    assert_eq!(at(&log)[2], (RU, UA, 6 * S));
    assert_eq!(log.len(), 3);
}

#[test]
fn rate_of_change_resumes_after_restart() {
    let d = def(Condition::RateOfChange(limit(2.0, 0.0)), 0, 0);
    let mut m = AlarmMachine::new(d.clone());
    m.on_sample(&good(10.0, 0));
    let json = serde_json::to_string(&m.snapshot()).unwrap();
    let mut r = AlarmMachine::restore(d, serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(
        moves(&r.on_sample(&good(13.0, S)).transitions),
        [(N, UA, None)]
    );
}

fn deviation_tag() -> AlarmDefinition {
    def(
        Condition::Deviation {
            setpoint: Setpoint::Tag(SP_TAG.into()),
            limit: limit(10.0, 1.0),
        },
        0,
        0,
    )
}

#[test]
fn deviation_follows_the_setpoint_tag() {
    let mut m = AlarmMachine::new(deviation_tag());
    let mut log = Vec::new();
    log.extend(m.on_sample(&good(100.0, 0)).transitions);
    assert!(log.is_empty(), "no setpoint yet: held");
    log.extend(m.on_setpoint(&sp(100.0, S)).transitions);
    log.extend(m.on_sample(&good(109.5, 2 * S)).transitions);
    assert!(log.is_empty());
    log.extend(m.on_sample(&good(110.0, 3 * S)).transitions);
    assert_eq!(at(&log), [(N, UA, 3 * S)]);
    log.extend(m.on_setpoint(&sp(101.0, 4 * S)).transitions); // 9: within the deadband
    assert_eq!(log.len(), 1);
    log.extend(m.on_setpoint(&sp(101.5, 5 * S)).transitions); // 8.5: clears
    assert_eq!(at(&log)[1], (UA, RU, 5 * S));
    assert_eq!(log[1].value, Some(Value::F64(110.0)), "the process value");
    // A setpoint step alone raises the alarm; below is as bad as above.
    log.extend(m.on_setpoint(&sp(125.0, 6 * S)).transitions);
    assert_eq!(at(&log)[2], (RU, UA, 6 * S));
    // A Bad setpoint holds the condition, whatever the process value does.
    let bad_sp = Sample::bad(SP_TAG, Quality::bad(QualityReason::Stale, ""), 7 * S);
    log.extend(m.on_setpoint(&bad_sp).transitions);
    log.extend(m.on_sample(&good(125.0, 8 * S)).transitions);
    assert_eq!(log.len(), 3);
    assert_eq!(m.state(), UA);
    log.extend(m.on_setpoint(&sp(124.0, 9 * S)).transitions);
    assert_eq!(at(&log)[3], (UA, RU, 9 * S));
    // An unusable setpoint is reported and held.
    let text = Sample::good(SP_TAG, Value::String("auto".into()), 10 * S);
    let out = m.on_setpoint(&text);
    assert!(out.transitions.is_empty());
    assert!(
        out.problem
            .unwrap_or_default()
            .contains("not a usable number")
    );
}

#[test]
fn deviation_from_a_fixed_setpoint() {
    let d = def(
        Condition::Deviation {
            setpoint: Setpoint::Fixed(180.0),
            limit: limit(10.0, 0.0),
        },
        0,
        0,
    );
    let mut m = AlarmMachine::new(d);
    let mut log = Vec::new();
    for (i, v) in [185.0, 170.0, 171.0, 190.0, 189.9].into_iter().enumerate() {
        log.extend(m.on_sample(&good(v, i as i64 * S)).transitions);
    }
    assert_eq!(
        at(&log),
        [
            (N, UA, S),
            (UA, RU, 2 * S),
            (RU, UA, 3 * S),
            (UA, RU, 4 * S)
        ]
    );
    let out = m.on_setpoint(&sp(1.0, 10 * S));
    assert!(
        out.problem
            .unwrap_or_default()
            .contains("has no setpoint tag")
    );
}

#[test]
fn discrete_alarms_compare_the_value() {
    let d = def(
        Condition::Discrete {
            active_when: DiscreteValue::Bool(false),
        },
        0,
        0,
    );
    let mut m = AlarmMachine::new(d);
    let door = |closed: bool, t: i64| Sample::good(TAG, Value::Bool(closed), t);
    let mut log = m.on_sample(&door(true, 0)).transitions;
    log.extend(m.on_sample(&door(false, S)).transitions);
    log.extend(m.on_sample(&door(false, 2 * S)).transitions);
    log.extend(m.on_sample(&door(true, 3 * S)).transitions);
    assert_eq!(at(&log), [(N, UA, S), (UA, RU, 3 * S)]);
    let out = m.on_sample(&Sample::good(TAG, Value::String("open".into()), 4 * S));
    assert!(out.transitions.is_empty());
    assert!(
        out.problem
            .unwrap_or_default()
            .contains("string value \"open\" cannot be compared with false")
    );
}

#[test]
fn restart_with_the_condition_still_active_does_not_raise_again() {
    for ack in [false, true] {
        let mut m = AlarmMachine::new(high());
        m.on_sample(&good(90.0, 0));
        if ack {
            m.acknowledge("alice", "", S).unwrap();
        }
        let json = serde_json::to_string(&m.snapshot()).unwrap();
        let mut r = AlarmMachine::restore(high(), serde_json::from_str(&json).unwrap()).unwrap();
        let state = if ack { AA } else { UA };
        assert_eq!(r.state(), state);
        assert!(r.on_sample(&good(95.0, 60 * S)).transitions.is_empty());
        assert!(r.tick(120 * S).is_empty());
        assert_eq!(r.state(), state);
    }
}

#[test]
fn restart_after_the_condition_cleared_reports_the_clear_once() {
    for (ack, want) in [(false, (UA, RU)), (true, (AA, N))] {
        let mut m = AlarmMachine::new(high());
        m.on_sample(&good(90.0, 0));
        if ack {
            m.acknowledge("alice", "", S).unwrap();
        }
        let snapshot = m.snapshot();
        let mut r = AlarmMachine::restore(high(), snapshot.clone()).unwrap();
        let first = r.on_sample(&good(60.0, 60 * S)).transitions;
        assert_eq!(at(&first), [(want.0, want.1, 60 * S)]);
        assert_eq!(first[0].sequence, snapshot.sequence + 1);
        assert!(r.on_sample(&good(61.0, 61 * S)).transitions.is_empty());
    }
}

#[test]
fn restart_resumes_delays_and_expiries() {
    let d = def(Condition::High(limit(80.0, 0.0)), 5, 0);
    let mut m = AlarmMachine::new(d.clone());
    m.on_sample(&good(90.0, 0));
    m.shelve("alice", 30 * S, "", S).unwrap();
    let mut r = AlarmMachine::restore(d, m.snapshot()).unwrap();
    // Down for a minute: the delay completed while shelved, then the shelve expired.
    assert_eq!(at(&r.tick(90 * S)), [(SH, UA, 30 * S)]);
}

#[test]
fn a_value_that_is_not_a_number_survives_a_restart_as_unknown() {
    let mut m = machine_in(high(), UA, true);
    m.on_sample(&good(f64::NAN, T0 + S));
    let json = serde_json::to_string(&m.snapshot()).unwrap();
    let mut r = AlarmMachine::restore(high(), serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(r.state(), UA);
    let ack = r.acknowledge("alice", "", T0 + 2 * S).unwrap();
    assert_eq!(ack[0].value, None);
}

#[test]
fn inconsistent_snapshots_are_refused() {
    let base = AlarmSnapshot::initial();
    let cases = [
        AlarmSnapshot {
            condition_active: true,
            ..base.clone()
        },
        AlarmSnapshot {
            state: UA,
            ..base.clone()
        },
        AlarmSnapshot {
            state: SH,
            ..base.clone()
        },
        AlarmSnapshot {
            shelved_until_ns: Some(5),
            ..base.clone()
        },
        AlarmSnapshot {
            pending_since_ns: Some(10),
            now_ns: 5,
            ..base.clone()
        },
        AlarmSnapshot {
            setpoint: Some(f64::INFINITY),
            ..base.clone()
        },
    ];
    for snapshot in cases {
        assert!(
            AlarmMachine::restore(high(), snapshot.clone()).is_err(),
            "{snapshot:?}"
        );
    }
    assert!(AlarmMachine::restore(high(), base).is_ok());
}

#[test]
fn snapshots_load_with_fields_left_out() {
    let json = r#"{"state":"acked_active","condition_active":true,"sequence":7}"#;
    let snapshot: AlarmSnapshot = serde_json::from_str(json).unwrap();
    let mut m = AlarmMachine::restore(high(), snapshot).unwrap();
    let cleared = m.on_sample(&good(10.0, S)).transitions;
    assert_eq!(moves(&cleared), [(AA, N, None)]);
    assert_eq!(cleared[0].sequence, 8);
}

// Property: whatever arrives, the machine never panics, its transitions chain (each starts
// where the previous ended), sequence numbers count up by one, time never goes back, the
// state agrees with the condition, and a restart from a snapshot at any point changes nothing.

#[derive(Debug, Clone)]
enum Op {
    Sample { dt: i64, value: Option<f64> },
    Setpoint { dt: i64, value: Option<f64> },
    Tick { dt: i64 },
    Ack,
    Shelve { for_s: i64 },
    Unshelve,
    Oos,
    Rts,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        4 => (0.0..200.0f64).prop_map(Some),
        1 => Just(None),
        1 => Just(Some(f64::NAN)),
    ];
    let dt = prop_oneof![4 => 0..10 * S, 1 => Just(0), 1 => -3 * S..0];
    prop_oneof![
        6 => (dt.clone(), value.clone()).prop_map(|(dt, value)| Op::Sample { dt, value }),
        2 => (dt.clone(), value).prop_map(|(dt, value)| Op::Setpoint { dt, value }),
        3 => dt.prop_map(|dt| Op::Tick { dt }),
        2 => Just(Op::Ack),
        1 => (-5..120i64).prop_map(|for_s| Op::Shelve { for_s }),
        1 => Just(Op::Unshelve),
        1 => Just(Op::Oos),
        1 => Just(Op::Rts),
        1 => Just(Op::Restart),
    ]
}

fn any_definition() -> impl Strategy<Value = AlarmDefinition> {
    let lim = (0.0..200.0f64, 0.0..20.0f64).prop_map(|(l, d)| limit(l, d));
    let small = (0.1..50.0f64, 0.0..1.0f64).prop_map(|(l, f)| limit(l, l * f * 0.9));
    let condition = prop_oneof![
        lim.clone().prop_map(Condition::High),
        lim.clone().prop_map(Condition::HighHigh),
        lim.clone().prop_map(Condition::Low),
        lim.prop_map(Condition::LowLow),
        small.clone().prop_map(Condition::RateOfChange),
        small.clone().prop_map(|limit| Condition::Deviation {
            setpoint: Setpoint::Tag(SP_TAG.into()),
            limit
        }),
        (0.0..200.0f64, small).prop_map(|(sp, limit)| Condition::Deviation {
            setpoint: Setpoint::Fixed(sp),
            limit
        }),
        Just(Condition::Discrete {
            active_when: DiscreteValue::Number(100.0)
        }),
        Just(Condition::BadQuality),
    ];
    (condition, 0..8i64, 0..8i64).prop_map(|(c, on, off)| def(c, on, off))
}

fn run(m: &mut AlarmMachine, op: &Op, now: &mut i64) -> Vec<AlarmTransition> {
    let sample = |tag: &str, value: Option<f64>, t: i64| match value {
        Some(v) => Sample::good(tag, Value::F64(v.round()), t),
        None => Sample::bad(tag, Quality::bad(QualityReason::CommFailure, ""), t),
    };
    let step = |now: &mut i64, dt: i64| {
        *now += dt;
        *now
    };
    match op {
        Op::Sample { dt, value } => {
            let t = step(now, *dt);
            m.on_sample(&sample(TAG, *value, t)).transitions
        }
        Op::Setpoint { dt, value } => {
            let t = step(now, *dt);
            m.on_setpoint(&sample(SP_TAG, *value, t)).transitions
        }
        Op::Tick { dt } => {
            let t = step(now, *dt);
            m.tick(t)
        }
        Op::Ack => m.acknowledge("op", "", *now).unwrap_or_default(),
        Op::Shelve { for_s } => m
            .shelve("op", *now + for_s * S, "", *now)
            .unwrap_or_default(),
        Op::Unshelve => m.unshelve("op", "", *now).unwrap_or_default(),
        Op::Oos => m.remove_from_service("op", "", *now).unwrap_or_default(),
        Op::Rts => m.return_to_service("op", "", *now).unwrap_or_default(),
        Op::Restart => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_inputs_keep_the_machine_consistent(
        d in any_definition(),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut steady = AlarmMachine::new(d.clone());
        let mut restarted = AlarmMachine::new(d.clone());
        let (mut now_a, mut now_b) = (0i64, 0i64);
        let mut state = N;
        let mut sequence = 0u64;
        let mut last_time = i64::MIN;
        for op in &ops {
            if let Op::Restart = op {
                let json = serde_json::to_string(&restarted.snapshot()).unwrap();
                let snapshot: AlarmSnapshot = serde_json::from_str(&json).unwrap();
                restarted = AlarmMachine::restore(d.clone(), snapshot).unwrap();
            }
            let a = run(&mut steady, op, &mut now_a);
            let b = run(&mut restarted, op, &mut now_b);
            prop_assert_eq!(&a, &b, "a restart changed the outcome of {:?}", op);
            for t in &a {
                prop_assert_eq!(t.from, state, "{:?} does not start where the last ended", t);
                prop_assert_eq!(t.sequence, sequence + 1);
                prop_assert!(t.timestamp_ns >= last_time, "time went back: {:?}", t);
                prop_assert_eq!(t.user.is_some(), !matches!(t.cause, Cause::Condition | Cause::ShelveExpired));
                state = t.to;
                sequence = t.sequence;
                last_time = t.timestamp_ns;
            }
            prop_assert_eq!(steady.state(), state);
            if let Some(implied) = state.implied_condition() {
                prop_assert_eq!(steady.condition_active(), implied, "state {} disagrees with the condition", state);
            }
            prop_assert_eq!(steady.snapshot().shelved_until_ns.is_some(), state == SH);
        }
    }
}
