//! Modbus TCP driver: `planner` groups tags into requests, `poller` owns the connection,
//! polls, decodes with the core codecs and performs writes.

pub mod planner;
pub mod poller;

pub use poller::ModbusDevice;
