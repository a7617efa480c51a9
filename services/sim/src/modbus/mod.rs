//! Modbus for the device simulators (used by `fieldline up`, the tests and the benchmarks):
//! `handler` answers one request from the register tables the way a device would, with no
//! socket in sight; `tcp` is the Modbus TCP server around it.

mod handler;
mod tcp;
#[cfg(test)]
mod tests;

pub use tcp::serve_modbus_tcp;
