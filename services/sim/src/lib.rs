//! Device simulators: the stand-ins for the field devices at the head of the pipeline, so the
//! adapter always has a real protocol peer on 127.0.0.1. `fieldline up` (the demo line), the
//! tests and the benchmarks use them. A simulated device is a register table ([`SimState`])
//! that a process model such as the [`tank`] moves over time and a protocol server such as
//! [`serve_modbus_tcp`] exposes to clients; [`serial`] is an Arduino-style board on a serial
//! port.

mod error;
mod modbus;
pub mod serial;
mod state;
pub mod tank;

pub use error::{Error, Result};
pub use modbus::serve_modbus_tcp;
pub use serial::{SerialBoard, SerialSimConfig, serve_serial};
pub use state::{Registers, SimState};
