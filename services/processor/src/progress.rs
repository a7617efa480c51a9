//! How far the processor has taken each device's batches.
//!
//! Two watermarks per device: *accepted* (processed, on its way to storage or stored) and
//! *stored* (every batch up to it acknowledged by storage). A batch is taken only in order:
//! its sequence must be above the accepted mark, and the batch it names as its predecessor
//! (`previous_sequence`, 0 when none) must not be above it; otherwise it is a redelivery
//! (dropped) or it overtook a lost batch (dropped too, and the adapter is told to send again
//! from the stored mark). The stored mark moves only over an unbroken run of acknowledged
//! batches, so when the adapter releases what it covers, nothing before it is still in
//! flight.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

/// How often a device's gap is announced at most.
const GAP_NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What to do with an arriving batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// New and in order: process and store it.
    Take,
    /// Taken before (processed, stored or on its way): acknowledge and drop.
    Duplicate,
    /// Its predecessor has not arrived: drop it; when `notify`, tell the adapter to send
    /// again what follows `stored`.
    Gap { stored: u64, notify: bool },
}

#[derive(Debug, Default)]
struct Device {
    accepted: u64,
    stored: u64,
    /// Taken batches not yet acknowledged by storage, in order, and whether each is done.
    in_flight: VecDeque<(u64, bool)>,
    /// The stored mark moved since it was last announced.
    changed: bool,
    last_gap_notice: Option<Instant>,
}

/// The watermarks of every device of a line.
#[derive(Debug, Default)]
pub struct Progress {
    devices: HashMap<String, Device>,
}

impl Progress {
    /// Resumes from saved stored marks.
    pub fn restore(saved: impl IntoIterator<Item = (String, u64)>) -> Self {
        let devices = saved
            .into_iter()
            .map(|(device, stored)| {
                (
                    device,
                    Device {
                        accepted: stored,
                        stored,
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
                stored: d.stored,
                notify,
            };
        }
        d.accepted = sequence;
        d.in_flight.push_back((sequence, false));
        Admission::Take
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
            if s > d.stored {
                d.stored = s;
                d.changed = true;
            }
        }
    }

    /// A batch taken but never sent to storage (the processor is stopping): it no longer
    /// holds the stored mark back, and its redelivery will be taken again.
    pub fn abandon(&mut self, device: &str, sequence: u64) {
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        d.in_flight.retain(|(s, _)| *s != sequence);
        d.accepted = d.in_flight.back().map_or(d.stored, |(s, _)| *s);
    }

    /// Stored marks that moved since the last call.
    pub fn take_changes(&mut self) -> Vec<(String, u64)> {
        self.devices
            .iter_mut()
            .filter_map(|(name, d)| {
                std::mem::take(&mut d.changed).then(|| (name.clone(), d.stored))
            })
            .collect()
    }

    /// Puts marks back that could not be announced, to try again.
    pub fn unannounced(&mut self, changes: &[(String, u64)]) {
        for (device, _) in changes {
            if let Some(d) = self.devices.get_mut(device) {
                d.changed = true;
            }
        }
    }

    /// The stored mark of `device`.
    pub fn stored(&self, device: &str) -> u64 {
        self.devices.get(device).map_or(0, |d| d.stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                stored: 0,
                notify: true
            }
        );
        assert_eq!(
            p.admit("d", 14, 13, now),
            Admission::Gap {
                stored: 0,
                notify: false
            }
        );
        assert_eq!(
            p.admit("d", 14, 13, now + GAP_NOTICE_EVERY),
            Admission::Gap {
                stored: 0,
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
        assert_eq!(p.take_changes(), vec![("d".to_string(), 2)]);
        assert!(p.take_changes().is_empty());
        p.done("d", 3);
        assert_eq!(p.take_changes(), vec![("d".to_string(), 3)]);
    }

    #[test]
    fn a_restart_resumes_from_the_saved_mark() {
        let now = Instant::now();
        let mut p = Progress::restore([("d".to_string(), 7)]);
        assert_eq!(p.admit("d", 7, 6, now), Admission::Duplicate);
        assert_eq!(p.admit("d", 8, 7, now), Admission::Take);
        // An abandoned batch is taken again when it comes back.
        p.abandon("d", 8);
        assert_eq!(p.admit("d", 8, 7, now), Admission::Take);
    }
}
