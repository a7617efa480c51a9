//! The Modbus TCP simulator against tokio-modbus's real client on 127.0.0.1: the behaviour the
//! adapter's driver and error handling are tested against in `fieldline up`, the tests and the
//! benchmarks.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_modbus::{
    client::{Context, tcp},
    prelude::*,
};
use tokio_util::sync::CancellationToken;

use crate::{Registers, SimState, serve_modbus_tcp, tank};

const LAST: u16 = (Registers::DEFAULT_LEN - 1) as u16;
/// Bounds every wait, so a hang fails the test instead of stalling the run.
const TIMEOUT: Duration = Duration::from_secs(5);

struct Sim {
    addr: SocketAddr,
    state: SimState,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start() -> anyhow::Result<Sim> {
    let state = SimState::new();
    let stop = CancellationToken::new();
    let (addr, task) = serve_modbus_tcp(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        state.clone(),
        stop.clone(),
    )
    .await?;
    Ok(Sim {
        addr,
        state,
        stop,
        task,
    })
}

async fn connect(sim: &Sim, unit: u8) -> anyhow::Result<Context> {
    Ok(tcp::connect_slave(sim.addr, Slave(unit)).await?)
}

#[tokio::test]
async fn reads_and_writes_each_table() -> anyhow::Result<()> {
    let sim = start().await?;
    sim.state.with(|registers| {
        registers.discrete[7..10].copy_from_slice(&[true, false, true]);
        registers.input[LAST as usize - 1..].copy_from_slice(&[0x1234, 0xABCD]);
    });
    let mut client = connect(&sim, 1).await?;

    client.write_single_coil(3, true).await??;
    client
        .write_multiple_coils(10, &[true, false, true])
        .await??;
    assert_eq!(
        client.read_coils(2, 11).await??,
        [
            false, true, false, false, false, false, false, false, true, false, true
        ]
    );

    assert_eq!(
        client.read_discrete_inputs(7, 3).await??,
        [true, false, true]
    );
    assert_eq!(
        client.read_input_registers(LAST - 1, 2).await??,
        [0x1234, 0xABCD]
    );

    client.write_single_register(100, 0xBEEF).await??;
    client.write_multiple_registers(101, &[1, 2, 3]).await??;
    assert_eq!(
        client.read_holding_registers(100, 4).await??,
        [0xBEEF, 1, 2, 3]
    );

    // The writes reached the shared registers the process model sees.
    sim.state.with(|registers| {
        assert!(registers.coils[3]);
        assert_eq!(registers.holding[100..104], [0xBEEF, 1, 2, 3]);
    });
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn reads_and_writes_at_the_protocol_limits() -> anyhow::Result<()> {
    let sim = start().await?;
    let mut client = connect(&sim, 1).await?;
    assert_eq!(client.read_coils(0, 2000).await??.len(), 2000);
    assert_eq!(client.read_discrete_inputs(0, 2000).await??.len(), 2000);
    assert_eq!(client.read_holding_registers(0, 125).await??.len(), 125);
    assert_eq!(client.read_input_registers(0, 125).await??.len(), 125);
    client.write_multiple_coils(0, &[true; 1968]).await??;
    client.write_multiple_registers(0, &[7; 123]).await??;
    assert_eq!(client.read_holding_registers(122, 2).await??, [7, 0]);
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn out_of_range_requests_get_illegal_data_address() -> anyhow::Result<()> {
    let sim = start().await?;
    let mut client = connect(&sim, 1).await?;
    let illegal = Some(ExceptionCode::IllegalDataAddress);

    assert_eq!(client.read_coils(LAST, 2).await?.err(), illegal);
    assert_eq!(
        client.read_discrete_inputs(LAST + 1, 1).await?.err(),
        illegal
    );
    assert_eq!(client.read_holding_registers(LAST, 2).await?.err(), illegal);
    assert_eq!(
        client.read_input_registers(u16::MAX, 1).await?.err(),
        illegal
    );
    assert_eq!(
        client.write_single_coil(LAST + 1, true).await?.err(),
        illegal
    );
    assert_eq!(
        client.write_single_register(LAST + 1, 1).await?.err(),
        illegal
    );
    assert_eq!(
        client
            .write_multiple_coils(LAST, &[true, true])
            .await?
            .err(),
        illegal
    );
    assert_eq!(
        client.write_multiple_registers(LAST, &[1, 2]).await?.err(),
        illegal
    );

    // An exception is a device answer, not a broken connection: the next request is served.
    assert_eq!(client.read_holding_registers(LAST, 1).await??, [0]);
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn bad_quantities_get_illegal_data_value() -> anyhow::Result<()> {
    let sim = start().await?;
    let mut client = connect(&sim, 1).await?;
    let illegal = Some(ExceptionCode::IllegalDataValue);

    assert_eq!(client.read_coils(0, 0).await?.err(), illegal);
    assert_eq!(client.read_coils(0, 2001).await?.err(), illegal);
    assert_eq!(client.read_discrete_inputs(0, 2001).await?.err(), illegal);
    assert_eq!(client.read_holding_registers(0, 0).await?.err(), illegal);
    assert_eq!(client.read_holding_registers(0, 126).await?.err(), illegal);
    assert_eq!(client.read_input_registers(0, 126).await?.err(), illegal);
    assert_eq!(client.write_multiple_coils(0, &[]).await?.err(), illegal);
    assert_eq!(
        client.write_multiple_coils(0, &[true; 1969]).await?.err(),
        illegal
    );
    assert_eq!(
        client.write_multiple_registers(0, &[]).await?.err(),
        illegal
    );
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn other_functions_get_illegal_function() -> anyhow::Result<()> {
    let sim = start().await?;
    let mut client = connect(&sim, 1).await?;
    let illegal = Some(ExceptionCode::IllegalFunction);

    assert_eq!(
        client.masked_write_register(0, 0xFF00, 0x0012).await?.err(),
        illegal
    );
    assert_eq!(
        client
            .read_write_multiple_registers(0, 1, 1, &[1])
            .await?
            .err(),
        illegal
    );
    assert_eq!(
        client
            .call(Request::Custom(0x41, vec![0x00, 0x01].into()))
            .await?
            .err(),
        illegal
    );
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn every_unit_id_is_answered() -> anyhow::Result<()> {
    let sim = start().await?;
    sim.state.with(|registers| registers.holding[0] = 42);
    for unit in [0, 1, 17, 247, 255] {
        let mut client = connect(&sim, unit).await?;
        assert_eq!(
            client.read_holding_registers(0, 1).await??,
            [42],
            "unit {unit}"
        );
    }
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn the_tank_is_readable_as_documented() -> anyhow::Result<()> {
    let sim = start().await?;
    tank::init(&sim.state);
    let mut client = connect(&sim, 1).await?;

    // 20.0 degC as f32 ABCD (0x41A0_0000), setpoint 45.0 degC in tenths, 0 units as u32 ABCD.
    assert_eq!(
        client
            .read_holding_registers(tank::TEMPERATURE, 5)
            .await??,
        [0x41A0, 0x0000, 450, 0, 0]
    );
    assert_eq!(client.read_input_registers(tank::LEVEL, 1).await??, [500]);
    assert_eq!(
        client.read_discrete_inputs(tank::HIGH_TEMP, 1).await??,
        [false]
    );

    // 12.5 degC written by a client is 0x4148_0000, high word first.
    client
        .write_multiple_registers(tank::TEMPERATURE, &[0x4148, 0x0000])
        .await??;
    client.write_single_coil(tank::PUMP_RUN, true).await??;
    sim.state.with(|registers| {
        assert_eq!(
            f32::from_bits(u32::from(registers.holding[0]) << 16 | u32::from(registers.holding[1])),
            12.5
        );
        assert!(registers.coils[usize::from(tank::PUMP_RUN)]);
    });
    sim.stop.cancel();
    Ok(())
}

#[tokio::test]
async fn the_tank_model_is_seen_through_the_server() -> anyhow::Result<()> {
    let sim = start().await?;
    tank::init(&sim.state);
    let model = tokio::spawn(tank::run(
        sim.state.clone(),
        Duration::from_millis(10),
        sim.stop.clone(),
    ));
    let mut client = connect(&sim, 1).await?;
    let temperature = async |client: &mut Context| -> anyhow::Result<f32> {
        let words = client
            .read_holding_registers(tank::TEMPERATURE, 2)
            .await??;
        Ok(f32::from_bits(
            u32::from(words[0]) << 16 | u32::from(words[1]),
        ))
    };

    // Hot enough for the alarm bit: the model reads the temperature back from the registers.
    client
        .write_multiple_registers(tank::TEMPERATURE, &[0x42A2, 0x0000]) // 81.0
        .await??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hot = temperature(&mut client).await?;
    assert!(hot > 81.0, "{hot} with the pump off");
    assert_eq!(
        client.read_discrete_inputs(tank::HIGH_TEMP, 1).await??,
        [true]
    );

    client.write_single_coil(tank::PUMP_RUN, true).await??;
    tokio::time::timeout(TIMEOUT, async {
        while temperature(&mut client).await? > 79.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    // The model writes the alarm bit in the same locked step as the temperature.
    assert_eq!(
        client.read_discrete_inputs(tank::HIGH_TEMP, 1).await??,
        [false]
    );

    sim.stop.cancel();
    tokio::time::timeout(TIMEOUT, model).await??;
    Ok(())
}

#[tokio::test]
async fn stop_closes_the_listener_and_the_connections() -> anyhow::Result<()> {
    let sim = start().await?;
    let mut client = connect(&sim, 1).await?;
    client.read_holding_registers(0, 1).await??;

    sim.stop.cancel();
    tokio::time::timeout(TIMEOUT, sim.task).await??;

    assert!(
        TcpStream::connect(sim.addr).await.is_err(),
        "still listening"
    );
    let after = tokio::time::timeout(TIMEOUT, client.read_holding_registers(0, 1)).await?;
    assert!(after.is_err(), "open connection still served: {after:?}");
    Ok(())
}

/// Frames the framing layer cannot decode close that connection (tokio-modbus decodes before
/// our handler sees anything) and must leave the server serving everyone else.
#[tokio::test]
async fn undecodable_frames_close_only_their_connection() -> anyhow::Result<()> {
    let sim = start().await?;
    let frames: [&[u8]; 4] = [
        // Protocol id 0x0001 instead of 0 in the MBAP header.
        &[0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1],
        // FC 5 with a coil value other than 0xFF00/0x0000.
        &[0, 1, 0, 0, 0, 6, 1, 5, 0, 0, 0x12, 0x34],
        // FC 16 whose byte count (2) does not match its quantity (2 registers).
        &[0, 1, 0, 0, 0, 9, 1, 0x10, 0, 0, 0, 2, 2, 0, 1],
        // FC 15 claiming 16 coils in one byte: tokio-modbus 0.17's decoder indexes past the
        // data and panics, which ends only that connection's task.
        &[0, 1, 0, 0, 0, 8, 1, 0x0F, 0, 0, 0, 16, 1, 0xFF],
    ];
    for frame in frames {
        let mut raw = TcpStream::connect(sim.addr).await?;
        raw.write_all(frame).await?;
        let mut buf = [0; 64];
        let read = tokio::time::timeout(TIMEOUT, raw.read(&mut buf)).await?;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{frame:02X?} should close the connection, got {read:?} {:02X?}",
            &buf[..*read.as_ref().unwrap_or(&0)]
        );
    }

    let mut client = connect(&sim, 1).await?;
    assert_eq!(client.read_holding_registers(0, 1).await??, [0]);
    sim.stop.cancel();
    Ok(())
}
