//! The simulated device's memory, shared by the process models that move it and the protocol
//! servers that expose it. Part of the device simulators used by `fieldline up`, the tests and
//! the benchmarks.

use std::sync::{Arc, Mutex, PoisonError};

/// The simulated registers, shared between the process model and the server.
///
/// The four Modbus tables, each addressed from 0. A table's length is its size as the server
/// sees it: requests beyond it get the IllegalDataAddress exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    /// Read/write bits (function codes 1, 5, 15).
    pub coils: Vec<bool>,
    /// Read-only bits (function code 2).
    pub discrete: Vec<bool>,
    /// Read-only words (function code 4).
    pub input: Vec<u16>,
    /// Read/write words (function codes 3, 6, 16).
    pub holding: Vec<u16>,
    /// Largest register read the device accepts (real devices often accept fewer than the
    /// protocol's 125); larger reads get IllegalDataValue.
    pub max_read_registers: u16,
}

impl Registers {
    /// Entries in each table of [`Registers::default()`].
    pub const DEFAULT_LEN: usize = 10_000;
}

impl Default for Registers {
    fn default() -> Self {
        Self {
            coils: vec![false; Self::DEFAULT_LEN],
            discrete: vec![false; Self::DEFAULT_LEN],
            input: vec![0; Self::DEFAULT_LEN],
            holding: vec![0; Self::DEFAULT_LEN],
            max_read_registers: 125,
        }
    }
}

/// A handle on one simulated device's registers; clones share the same registers.
#[derive(Clone, Default)]
pub struct SimState(Arc<Mutex<Registers>>);

impl SimState {
    /// A device with default (all zero, [`Registers::DEFAULT_LEN`] long) tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with the registers locked. Keep `f` short and never hold the lock across an
    /// `.await`: the server answers every request through this lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut Registers) -> R) -> R {
        // A panic inside an earlier `f` leaves the registers as far as it got. A simulator is
        // more useful carrying on with them than failing every later request.
        let mut registers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut registers)
    }
}

impl From<Registers> for SimState {
    fn from(registers: Registers) -> Self {
        Self(Arc::new(Mutex::new(registers)))
    }
}
