//! How far the processor has taken each device's batches.
//!
//! Two watermarks per device: *accepted* (processed, on its way to storage or stored) and
//! *stored* (every batch up to it acknowledged by storage). A batch is taken only in order:
//! its sequence must be above the accepted mark, and the batch it names as its predecessor
//! (`previous_sequence`, 0 when none) must not be above it; otherwise it is a redelivery
//! (dropped) or it overtook a lost batch (dropped too, and the adapter is told to send again
//! from the durable mark). The stored mark moves only over an unbroken run of acknowledged
//! batches, so when the adapter releases what it covers, nothing before it is still in
//! flight.
//!
//! A device whose type has plugins also has *checkpoints*: the plugins' state right after a
//! batch, taken at most once per [`CHECKPOINT_EVERY`]. What is saved and announced is the
//! *durable* mark, the newest checkpoint at or below the stored mark, with its state. A
//! restart resumes there: the batches after it are sent again by the adapter (which still
//! holds them) and processed from that exact state, so every derived value comes out as it
//! did the first time. A device without plugins has nothing to resume, and its durable mark is
//! its stored mark.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// How often a device's gap is announced at most.
const GAP_NOTICE_EVERY: Duration = Duration::from_secs(1);
/// How often a device's plugin state is taken at most.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Checkpoints kept per device while storage has not caught up. When full, every second one
/// is let go (the newest stays), so a long storage outage thins them rather than losing the
/// recent ones.
const CHECKPOINTS_MAX: usize = 32;

/// What to do with an arriving batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// New and in order: process and store it.
    Take,
    /// Taken before (processed, stored or on its way): acknowledge and drop.
    Duplicate,
    /// Its predecessor has not arrived: drop it; when `notify`, tell the adapter to send
    /// again what follows `durable`.
    Gap { durable: u64, notify: bool },
}

/// A device's saved progress: every batch up to `sequence` is stored, and `plugin_state`
/// (for a device whose type has plugins) is its plugins' state right after that batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub device: String,
    pub sequence: u64,
    pub plugin_state: Option<String>,
}

#[derive(Debug, Default)]
struct Device {
    accepted: u64,
    stored: u64,
    /// Taken batches not yet acknowledged by storage, in order, and whether each is done.
    in_flight: VecDeque<(u64, bool)>,
    /// Plugin states after batches not yet stored, oldest first. Empty, and `durable` the
    /// stored mark, for a device without plugins.
    checkpoints: VecDeque<(u64, String)>,
    stateful: bool,
    last_checkpoint: Option<Instant>,
    durable: u64,
    durable_state: Option<String>,
    /// The durable mark moved since it was last announced.
    changed: bool,
    last_gap_notice: Option<Instant>,
}

impl Device {
    /// Moves the durable mark to the newest checkpoint the stored mark covers.
    fn settle(&mut self) {
        if !self.stateful {
            if self.durable != self.stored {
                self.durable = self.stored;
                self.durable_state = None;
                self.changed = true;
            }
            return;
        }
        while let Some((s, _)) = self.checkpoints.front()
            && *s <= self.stored
        {
            if let Some((s, state)) = self.checkpoints.pop_front()
                && s > self.durable
            {
                self.durable = s;
                self.durable_state = Some(state);
                self.changed = true;
            }
        }
    }
}

/// The watermarks of every device of a line.
#[derive(Debug, Default)]
pub struct Progress {
    devices: HashMap<String, Device>,
}

impl Progress {
    /// Resumes from saved marks.
    pub fn restore(saved: impl IntoIterator<Item = Mark>) -> Self {
        let devices = saved
            .into_iter()
            .map(|mark| {
                (
                    mark.device,
                    Device {
                        accepted: mark.sequence,
                        stored: mark.sequence,
                        durable: mark.sequence,
                        stateful: mark.plugin_state.is_some(),
                        durable_state: mark.plugin_state,
                        ..Device::default()
                    },
                )
            })
            .collect();
        Self { devices }
    }

    /// Decides about batch `sequence` of `device`, which names `previous` as its predecessor.
    /// An unnumbered batch (sequence 0) is always taken and not tracked.
    pub fn admit(&mut self, device: &str, sequence: u64, previous: u64, now: Instant) -> Admission {
        if sequence == 0 {
            return Admission::Take;
        }
        let d = self.devices.entry(device.to_string()).or_default();
        if sequence <= d.accepted {
            return Admission::Duplicate;
        }
        if previous > d.accepted {
            let notify = d
                .last_gap_notice
                .is_none_or(|at| now.duration_since(at) >= GAP_NOTICE_EVERY);
            if notify {
                d.last_gap_notice = Some(now);
            }
            return Admission::Gap {
                durable: d.durable,
                notify,
            };
        }
        d.accepted = sequence;
        d.in_flight.push_back((sequence, false));
        Admission::Take
    }

    /// Whether the plugin state after taken batch `sequence` of `device` should be kept: the
    /// first batch, then once per [`CHECKPOINT_EVERY`].
    pub fn checkpoint_due(&self, device: &str, sequence: u64, now: Instant) -> bool {
        sequence != 0
            && self.devices.get(device).is_some_and(|d| {
                d.last_checkpoint
                    .is_none_or(|at| now.duration_since(at) >= CHECKPOINT_EVERY)
            })
    }

    /// Keeps the plugin state after taken batch `sequence` of `device`; `None` for a device
    /// without plugins.
    pub fn checkpoint(
        &mut self,
        device: &str,
        sequence: u64,
        plugin_state: Option<String>,
        now: Instant,
    ) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        d.last_checkpoint = Some(now);
        match plugin_state {
            Some(state) if sequence > d.durable => {
                d.stateful = true;
                if d.checkpoints.len() >= CHECKPOINTS_MAX {
                    let mut odd = false;
                    d.checkpoints.retain(|_| {
                        odd = !odd;
                        !odd
                    });
                }
                d.checkpoints.push_back((sequence, state));
            }
            Some(_) => {}
            None => {
                d.stateful = false;
                d.checkpoints.clear();
            }
        }
        d.settle();
    }

    /// Storage acknowledged (stored, or refused for good) batch `sequence` of `device`.
    pub fn done(&mut self, device: &str, sequence: u64) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        if let Some(slot) = d.in_flight.iter_mut().find(|(s, _)| *s == sequence) {
            slot.1 = true;
        }
        while let Some(&(s, true)) = d.in_flight.front() {
            d.in_flight.pop_front();
            d.stored = d.stored.max(s);
        }
        d.settle();
    }

    /// A batch taken but never sent to storage (the processor is stopping): it no longer
    /// holds the stored mark back, and its redelivery will be taken again. No checkpoint from
    /// it on can be resumed from.
    pub fn abandon(&mut self, device: &str, sequence: u64) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        d.in_flight.retain(|(s, _)| *s != sequence);
        d.checkpoints.retain(|(s, _)| *s < sequence);
        d.accepted = d.in_flight.back().map_or(d.stored, |(s, _)| *s);
    }

    /// Durable marks that moved since the last call.
    pub fn take_changes(&mut self) -> Vec<Mark> {
        self.devices
            .iter_mut()
            .filter_map(|(name, d)| {
                std::mem::take(&mut d.changed).then(|| Mark {
                    device: name.clone(),
                    sequence: d.durable,
                    plugin_state: d.durable_state.clone(),
                })
            })
            .collect()
    }

    /// Puts marks back that could not be announced, to try again.
    pub fn unannounced<'a>(&mut self, devices: impl IntoIterator<Item = &'a str>) {
        for device in devices {
            if let Some(d) = self.devices.get_mut(device) {
                d.changed = true;
            }
        }
    }

    /// The stored mark of `device`.
    pub fn stored(&self, device: &str) -> u64 {
        self.devices.get(device).map_or(0, |d| d.stored)
    }

    /// The durable mark of `device`: where a restart resumes.
    pub fn durable(&self, device: &str) -> u64 {
        self.devices.get(device).map_or(0, |d| d.durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(device: &str, sequence: u64, state: Option<&str>) -> Mark {
        Mark {
            device: device.to_string(),
            sequence,
            plugin_state: state.map(str::to_string),
        }
    }

    #[test]
    fn batches_are_taken_in_order_once() {
        let now = Instant::now();
        let mut p = Progress::default();
        assert_eq!(p.admit("d", 10, 0, now), Admission::Take);
        assert_eq!(p.admit("d", 10, 0, now), Admission::Duplicate);
        assert_eq!(p.admit("d", 11, 10, now), Admission::Take);
        // 13 names 12, which never came: it waits, and the adapter is told once a second.
        assert_eq!(
            p.admit("d", 13, 12, now),
            Admission::Gap {
                durable: 0,
                notify: true
            }
        );
        assert_eq!(
            p.admit("d", 14, 13, now),
            Admission::Gap {
                durable: 0,
                notify: false
            }
        );
        assert_eq!(
            p.admit("d", 14, 13, now + GAP_NOTICE_EVERY),
            Admission::Gap {
                durable: 0,
                notify: true
            }
        );
        assert_eq!(p.admit("d", 12, 11, now), Admission::Take);
        assert_eq!(p.admit("d", 13, 12, now), Admission::Take);
        // Unnumbered batches are always taken; other devices are apart.
        assert_eq!(p.admit("d", 0, 0, now), Admission::Take);
        assert_eq!(p.admit("e", 1, 0, now), Admission::Take);
    }

    #[test]
    fn the_stored_mark_moves_only_over_an_unbroken_run() {
        let now = Instant::now();
        let mut p = Progress::default();
        for s in 1..=3 {
            assert_eq!(p.admit("d", s, s - 1, now), Admission::Take);
        }
        p.done("d", 2);
        assert_eq!(p.stored("d"), 0, "1 is still in flight");
        assert!(p.take_changes().is_empty());
        p.done("d", 1);
        assert_eq!(p.stored("d"), 2);
        assert_eq!(p.take_changes(), vec![mark("d", 2, None)]);
        assert!(p.take_changes().is_empty());
        p.done("d", 3);
        assert_eq!(p.take_changes(), vec![mark("d", 3, None)]);
    }

    #[test]
    fn a_restart_resumes_from_the_saved_mark() {
        let now = Instant::now();
        let mut p = Progress::restore([mark("d", 7, None)]);
        assert_eq!(p.admit("d", 7, 6, now), Admission::Duplicate);
        assert_eq!(p.admit("d", 8, 7, now), Admission::Take);
        // An abandoned batch is taken again when it comes back.
        p.abandon("d", 8);
        assert_eq!(p.admit("d", 8, 7, now), Admission::Take);
    }

    #[test]
    fn the_durable_mark_is_the_newest_checkpoint_storage_has_covered() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        for s in 1..=5 {
            assert_eq!(p.admit("d", s, s - 1, t0), Admission::Take);
        }
        // State after 1, then nothing due until a second has passed, then state after 4.
        assert!(p.checkpoint_due("d", 1, t0));
        p.checkpoint("d", 1, Some("after 1".into()), t0);
        assert!(!p.checkpoint_due("d", 2, t0 + Duration::from_millis(500)));
        assert!(p.checkpoint_due("d", 4, t0 + CHECKPOINT_EVERY));
        p.checkpoint("d", 4, Some("after 4".into()), t0 + CHECKPOINT_EVERY);
        for s in 1..=3 {
            p.done("d", s);
        }
        assert_eq!(p.stored("d"), 3);
        assert_eq!(p.durable("d"), 1, "no state after 2 or 3 to resume from");
        assert_eq!(p.take_changes(), vec![mark("d", 1, Some("after 1"))]);
        // A gap asks for everything after the durable mark: the stored batches after it must
        // be processed again to rebuild the state.
        assert_eq!(
            p.admit("d", 7, 6, t0),
            Admission::Gap {
                durable: 1,
                notify: true
            }
        );
        p.done("d", 4);
        p.done("d", 5);
        assert_eq!(p.durable("d"), 4);
        assert_eq!(p.take_changes(), vec![mark("d", 4, Some("after 4"))]);
    }

    #[test]
    fn a_device_without_plugins_is_durable_where_it_is_stored() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        assert_eq!(p.admit("d", 1, 0, t0), Admission::Take);
        assert_eq!(p.admit("d", 2, 1, t0), Admission::Take);
        p.checkpoint("d", 1, None, t0);
        p.done("d", 1);
        p.done("d", 2);
        assert_eq!(p.durable("d"), 2);
        assert_eq!(p.take_changes(), vec![mark("d", 2, None)]);
    }

    #[test]
    fn a_long_wait_for_storage_thins_the_checkpoints_and_keeps_the_newest() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        let taken = CHECKPOINTS_MAX as u64 * 3;
        for s in 1..=taken {
            assert_eq!(p.admit("d", s, s - 1, t0), Admission::Take);
            p.checkpoint("d", s, Some(format!("after {s}")), t0);
        }
        let kept = p.devices["d"].checkpoints.len();
        assert!(kept <= CHECKPOINTS_MAX, "{kept} checkpoints kept");
        for s in 1..=taken {
            p.done("d", s);
        }
        assert_eq!(
            p.durable("d"),
            taken,
            "the newest checkpoint is always kept"
        );
        let mark = p.take_changes().pop();
        assert_eq!(
            mark.and_then(|m| m.plugin_state),
            Some(format!("after {taken}"))
        );
    }

    #[test]
    fn a_restart_resumes_from_the_saved_state() {
        let t0 = Instant::now();
        let mut p = Progress::restore([mark("d", 7, Some("after 7"))]);
        assert_eq!(p.admit("d", 8, 7, t0), Admission::Take);
        p.done("d", 8);
        assert_eq!(p.stored("d"), 8);
        assert_eq!(p.durable("d"), 7, "stateful: waits for a checkpoint");
        assert!(p.take_changes().is_empty());
        // A batch abandoned at shutdown takes the checkpoints from it with it.
        assert_eq!(p.admit("d", 9, 8, t0), Admission::Take);
        p.checkpoint("d", 9, Some("after 9".into()), t0);
        p.abandon("d", 9);
        assert!(p.devices["d"].checkpoints.is_empty());
    }
}
