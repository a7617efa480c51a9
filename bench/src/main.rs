//! Benchmarks that run a Fieldline service beside a Python implementation of the usual kind
//! on the same machine, measure both processes the same way (CPU seconds from /proc, peak
//! RSS, work done in a fixed window) and report the ratio.
//!
//! - `modbus`: Modbus TCP polling published to MQTT (`fieldline-adapter`).
//! - `opcua`: OPC UA subscriptions published to MQTT (`fieldline-adapter`).
//! - `storage`: sample batches into InfluxDB and MariaDB (`fieldline-storage`).
//! - `processor`: the processor's per-batch work on one core (no Python counterpart).

mod measure;
mod modbus;
mod opcua;
mod processor;
mod storage;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Fieldline services vs. Python implementations on the same machine")]
enum Bench {
    /// Modbus TCP polling published to MQTT.
    Modbus(modbus::ModbusArgs),
    /// OPC UA subscriptions published to MQTT.
    Opcua(opcua::OpcuaArgs),
    /// Sample batches over StorageService.Ingest into InfluxDB and MariaDB.
    Storage(storage::StorageArgs),
    /// The processor's per-batch work (plugins, alarms, rules) on one core.
    Processor(processor::ProcessorArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Modbus(args) => modbus::run(args).await,
        Bench::Opcua(args) => opcua::run(args).await,
        Bench::Storage(args) => storage::run(args).await,
        Bench::Processor(args) => processor::run(args),
    }
}
