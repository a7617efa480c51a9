//! The demo tank process model, the simulated device behind `fieldline up` that the tests and
//! the benchmarks also read: a heated tank with a cooling pump, a production counter and a
//! level. `Model::step` is the pure model (registers and elapsed time in, registers out);
//! [`run`] ticks it on a timer.
//!
//! The registers are the model's state: a client that writes the temperature registers moves
//! the simulated temperature, so tests can force a value instead of waiting for it.

use std::{f64::consts::TAU, time::Duration};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{Registers, SimState};

/// Holding 0-1: f32, big word order (ABCD), degC.
pub const TEMPERATURE: u16 = 0;
/// Holding 2: i16, tenths of degC (e.g. 450 = 45.0).
pub const SETPOINT: u16 = 2;
/// Holding 3-4: u32, big word order.
pub const UNITS_PRODUCED: u16 = 3;
/// Input 0: u16, tenths of percent.
pub const LEVEL: u16 = 0;
/// Coil 0: cooling pump on/off (written by clients).
pub const PUMP_RUN: u16 = 0;
/// Discrete 0: true while temperature > 80.0.
pub const HIGH_TEMP: u16 = 0;

const INITIAL_TEMPERATURE: f32 = 20.0;
const INITIAL_SETPOINT: i16 = 450;
const INITIAL_LEVEL: u16 = 500;

const MIN_TEMPERATURE: f64 = 15.0;
const MAX_TEMPERATURE: f64 = 95.0;
/// Above this the high temperature alarm bit is set and production stops.
const HIGH_TEMPERATURE: f32 = 80.0;
/// degC per second with the pump off.
const HEATING_RATE: f64 = 0.5;
/// degC per second with the pump on.
const COOLING_RATE: f64 = 1.0;
/// The wobble makes the trend look measured rather than drawn with a ruler.
const WOBBLE_AMPLITUDE: f64 = 0.2;
const WOBBLE_PERIOD_SECS: f64 = 13.0;
/// The level swings between 40.0 % and 60.0 % once every ten minutes.
const LEVEL_SWING: f64 = 100.0;
const LEVEL_PERIOD_SECS: f64 = 600.0;

/// A zero period would make the timer spin (and tokio panics on it).
const MIN_STEP: Duration = Duration::from_millis(1);

/// Initial registers: temperature 20.0, setpoint 450, units 0, level 500, pump off.
pub fn init(state: &SimState) {
    state.with(|registers| {
        write_u32(
            &mut registers.holding,
            TEMPERATURE,
            INITIAL_TEMPERATURE.to_bits(),
        );
        write_word(
            &mut registers.holding,
            SETPOINT,
            u16::from_be_bytes(INITIAL_SETPOINT.to_be_bytes()),
        );
        write_u32(&mut registers.holding, UNITS_PRODUCED, 0);
        write_word(&mut registers.input, LEVEL, INITIAL_LEVEL);
        write_bit(&mut registers.coils, PUMP_RUN, false);
        write_bit(&mut registers.discrete, HIGH_TEMP, false);
    });
}

/// Runs the model every `step` until `stop`: temperature rises 0.5 degC/s while the pump is off
/// and falls 1.0 degC/s while it is on, clamped to 15..=95, with a small deterministic wobble;
/// units_produced += 1 per second while temperature < 80; level drifts slowly between 40 and
/// 60 %. Rates follow the time that really passed between ticks, whatever `step` is.
pub async fn run(state: SimState, step: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(step.max(MIN_STEP));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut model = Model::default();
    let mut last = Instant::now();
    debug!(step_ms = step.as_millis(), "tank model running");
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(last);
                last = now;
                state.with(|registers| model.step(registers, elapsed));
            }
        }
    }
    debug!("tank model stopped");
}

/// What the model keeps besides the registers.
#[derive(Debug, Default)]
struct Model {
    /// Since the model started; drives the wobble and the level.
    elapsed: Duration,
    /// Production time not yet counted as a whole unit.
    unfinished_unit: Duration,
}

impl Model {
    fn step(&mut self, registers: &mut Registers, elapsed: Duration) {
        let before = self.elapsed.as_secs_f64();
        self.elapsed += elapsed;
        let now = self.elapsed.as_secs_f64();
        let seconds = elapsed.as_secs_f64();

        let pump_on = read_bit(&registers.coils, PUMP_RUN).unwrap_or(false);
        if let Some(bits) = read_u32(&registers.holding, TEMPERATURE) {
            let rate = if pump_on { -COOLING_RATE } else { HEATING_RATE };
            // Adding the wobble's change rather than the wobble keeps it bounded while the
            // temperature is read back from the registers every step.
            let next =
                f64::from(f32::from_bits(bits)) + rate * seconds + wobble(now) - wobble(before);
            let temperature = if next.is_nan() {
                INITIAL_TEMPERATURE
            } else {
                next.clamp(MIN_TEMPERATURE, MAX_TEMPERATURE) as f32
            };
            write_u32(&mut registers.holding, TEMPERATURE, temperature.to_bits());
            write_bit(
                &mut registers.discrete,
                HIGH_TEMP,
                temperature > HIGH_TEMPERATURE,
            );
            if temperature < HIGH_TEMPERATURE {
                self.produce(registers, elapsed);
            }
        }

        let level = f64::from(INITIAL_LEVEL) + LEVEL_SWING * (TAU * now / LEVEL_PERIOD_SECS).sin();
        write_word(&mut registers.input, LEVEL, level.round() as u16);
    }

    fn produce(&mut self, registers: &mut Registers, elapsed: Duration) {
        // Whole durations rather than float seconds, so ten steps of 100 ms make exactly a unit.
        self.unfinished_unit += elapsed;
        let finished = self.unfinished_unit.as_secs();
        if finished == 0 {
            return;
        }
        self.unfinished_unit -= Duration::from_secs(finished);
        let units = read_u32(&registers.holding, UNITS_PRODUCED).unwrap_or(0);
        let finished = u32::try_from(finished).unwrap_or(u32::MAX);
        write_u32(
            &mut registers.holding,
            UNITS_PRODUCED,
            units.wrapping_add(finished),
        );
    }
}

fn wobble(seconds: f64) -> f64 {
    WOBBLE_AMPLITUDE * (TAU * seconds / WOBBLE_PERIOD_SECS).sin()
}

// The accessors skip entries a (deliberately) short table does not have: a simulator with a
// missing register just does not simulate it.

fn read_bit(table: &[bool], address: u16) -> Option<bool> {
    table.get(usize::from(address)).copied()
}

fn write_bit(table: &mut [bool], address: u16, value: bool) {
    if let Some(entry) = table.get_mut(usize::from(address)) {
        *entry = value;
    }
}

fn write_word(table: &mut [u16], address: u16, value: u16) {
    if let Some(entry) = table.get_mut(usize::from(address)) {
        *entry = value;
    }
}

/// Big word order (ABCD): the high word at `address`.
fn read_u32(table: &[u16], address: u16) -> Option<u32> {
    let start = usize::from(address);
    match table.get(start..start + 2)? {
        [high, low] => Some(u32::from(*high) << 16 | u32::from(*low)),
        _ => None,
    }
}

/// Big word order (ABCD): the high word at `address`.
fn write_u32(table: &mut [u16], address: u16, value: u32) {
    let start = usize::from(address);
    if let Some([high, low]) = table.get_mut(start..start + 2) {
        let [a, b, c, d] = value.to_be_bytes();
        *high = u16::from_be_bytes([a, b]);
        *low = u16::from_be_bytes([c, d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(100);

    fn temperature(registers: &Registers) -> f32 {
        f32::from_bits(read_u32(&registers.holding, TEMPERATURE).unwrap_or_default())
    }

    fn set_temperature(registers: &mut Registers, degrees: f32) {
        write_u32(&mut registers.holding, TEMPERATURE, degrees.to_bits());
    }

    fn units(registers: &Registers) -> u32 {
        read_u32(&registers.holding, UNITS_PRODUCED).unwrap_or_default()
    }

    fn high_temp(registers: &Registers) -> bool {
        registers.discrete[usize::from(HIGH_TEMP)]
    }

    /// Steps `model` for `duration` in `STEP`s.
    fn advance(model: &mut Model, registers: &mut Registers, duration: Duration) {
        for _ in 0..duration.div_duration_f64(STEP).round() as u32 {
            model.step(registers, STEP);
        }
    }

    fn started() -> (Model, Registers) {
        let state = SimState::new();
        init(&state);
        (Model::default(), state.with(|registers| registers.clone()))
    }

    #[test]
    fn f32_is_stored_in_big_word_order() {
        // IEEE 754 single precision: 12.5 = 0x4148_0000, 20.0 = 0x41A0_0000.
        let mut holding = [0; 2];
        write_u32(&mut holding, 0, 12.5_f32.to_bits());
        assert_eq!(holding, [0x4148, 0x0000]);
        write_u32(&mut holding, 0, 20.0_f32.to_bits());
        assert_eq!(holding, [0x41A0, 0x0000]);
        assert_eq!(
            read_u32(&[0x4148, 0x0000], 0).map(f32::from_bits),
            Some(12.5)
        );
    }

    #[test]
    fn init_sets_the_documented_start_values() {
        let (_, registers) = started();
        // 20.0 degC, 45.0 degC setpoint, 0 units.
        assert_eq!(registers.holding[..5], [0x41A0, 0x0000, 450, 0, 0]);
        assert_eq!(registers.input[usize::from(LEVEL)], 500);
        assert!(!registers.coils[usize::from(PUMP_RUN)]);
        assert!(!high_temp(&registers));
    }

    #[test]
    fn temperature_rises_with_the_pump_off_and_falls_with_it_on() {
        let (mut model, mut registers) = started();

        advance(&mut model, &mut registers, Duration::from_secs(20));
        let heated = temperature(&registers);
        assert!(
            (29.5..=30.5).contains(&heated),
            "{heated} after 20 s at 0.5 degC/s"
        );

        registers.coils[usize::from(PUMP_RUN)] = true;
        advance(&mut model, &mut registers, Duration::from_secs(5));
        let cooled = temperature(&registers);
        assert!(
            (heated - 5.5..=heated - 4.5).contains(&cooled),
            "{heated} -> {cooled} after 5 s at -1 degC/s"
        );
    }

    #[test]
    fn temperature_stays_between_15_and_95() {
        let (mut model, mut registers) = started();
        advance(&mut model, &mut registers, Duration::from_secs(300));
        assert!((94.5..=95.0).contains(&temperature(&registers)));

        registers.coils[usize::from(PUMP_RUN)] = true;
        advance(&mut model, &mut registers, Duration::from_secs(300));
        assert!((15.0..=15.5).contains(&temperature(&registers)));
    }

    #[test]
    fn high_temp_follows_temperature_above_80() {
        let (mut model, mut registers) = started();
        set_temperature(&mut registers, 79.0);
        model.step(&mut registers, STEP);
        assert!(!high_temp(&registers));

        advance(&mut model, &mut registers, Duration::from_secs(4));
        assert!(temperature(&registers) > 80.0);
        assert!(high_temp(&registers));

        registers.coils[usize::from(PUMP_RUN)] = true;
        advance(&mut model, &mut registers, Duration::from_secs(3));
        assert!(temperature(&registers) < 80.0);
        assert!(!high_temp(&registers));
    }

    #[test]
    fn a_unit_is_produced_each_second_below_80_only() {
        let (mut model, mut registers) = started();
        advance(&mut model, &mut registers, Duration::from_secs(10));
        assert_eq!(units(&registers), 10);

        set_temperature(&mut registers, 85.0);
        advance(&mut model, &mut registers, Duration::from_secs(5));
        assert_eq!(units(&registers), 10, "no production while hot");
    }

    #[test]
    fn level_drifts_between_40_and_60_percent() {
        let (mut model, mut registers) = started();
        let mut seen = Vec::new();
        for _ in 0..20 * 60 {
            model.step(&mut registers, Duration::from_secs(1));
            seen.push(registers.input[usize::from(LEVEL)]);
        }
        assert!(seen.iter().all(|level| (400..=600).contains(level)));
        assert_eq!(seen.iter().min(), Some(&400));
        assert_eq!(seen.iter().max(), Some(&600));
        let biggest_jump = seen.windows(2).map(|w| w[0].abs_diff(w[1])).max();
        assert!(
            biggest_jump <= Some(2),
            "slowly: {biggest_jump:?} per second"
        );
    }

    #[test]
    fn a_nan_temperature_restarts_from_the_initial_value() {
        let (mut model, mut registers) = started();
        set_temperature(&mut registers, f32::NAN);
        model.step(&mut registers, STEP);
        assert_eq!(temperature(&registers), INITIAL_TEMPERATURE);
    }

    #[test]
    fn short_tables_are_skipped_not_indexed() {
        let short = Registers {
            coils: Vec::new(),
            discrete: Vec::new(),
            input: Vec::new(),
            holding: vec![0; 1],
            max_read_registers: 125,
        };
        let state = SimState::from(short.clone());
        init(&state);
        state.with(|registers| Model::default().step(registers, STEP));
        assert_eq!(state.with(|registers| registers.clone()), short);
    }

    #[tokio::test(start_paused = true)]
    async fn run_moves_the_registers_until_stopped() {
        let state = SimState::new();
        init(&state);
        let stop = CancellationToken::new();
        let model = tokio::spawn(run(state.clone(), STEP, stop.clone()));

        // A little past the tick so the model's tick at 10 s has certainly run.
        tokio::time::sleep(Duration::from_millis(10_050)).await;
        let (heated, produced) = state.with(|registers| (temperature(registers), units(registers)));
        assert!((24.5..=25.5).contains(&heated), "{heated} after 10 s");
        assert_eq!(produced, 10);

        state.with(|registers| registers.coils[usize::from(PUMP_RUN)] = true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cooled = state.with(|registers| temperature(registers));
        assert!(
            cooled < heated - 4.0,
            "{heated} -> {cooled} with the pump on"
        );

        stop.cancel();
        assert!(model.await.is_ok());
        let frozen = state.with(|registers| registers.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(state.with(|registers| registers.clone()), frozen);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_step_does_not_spin_or_panic() {
        let state = SimState::new();
        init(&state);
        let stop = CancellationToken::new();
        let model = tokio::spawn(run(state.clone(), Duration::ZERO, stop.clone()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(state.with(|registers| temperature(registers)) > 20.5);
        stop.cancel();
        assert!(model.await.is_ok());
    }
}
