//! Modbus TCP and RTU driver: `planner` groups tags into requests, `link` owns a TCP
//! connection or serial port and classifies faults, `poller` schedules every device on a
//! link, decodes with the core codecs and performs writes.

pub mod link;
pub mod planner;
pub mod poller;

pub use poller::{ModbusBus, ModbusDevice};
