//! Reply bytes from a Modbus device → tokio-modbus client → tag codecs, as the adapter's poller
//! sees them.
//!
//! tokio-modbus keeps its frame codecs private, so the target drives the public client, a
//! `tcp::attach_slave` or `rtu::attach_slave` context, over an in-memory duplex pipe. A fake
//! device on the other end reads each request and answers with the fuzzer's bytes. The
//! requests are the ones the adapter sends (reads of the four tables within the protocol's
//! limits, single and multiple writes), each under a timeout as in `link.rs`, and after a
//! fault the exchange goes on or stops as the adapter's link would: a TCP link is dropped, an
//! RTU bus survives garbled or foreign frames. Register replies are then decoded by tag codecs
//! at the positions the adapter would slice.
//!
//! Random bytes rarely carry the request's transaction id (TCP) or a valid CRC (RTU), so an
//! exchange may ask the device to patch those in, which lets the fuzzer reach the PDU parsers.
//!
//! The clock is paused: a reply that never completes times out at once instead of stalling.

#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use fieldline_core::codec::{ByteOrder, DataType, TagCodec, WordOrder};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_modbus::{
    Response, Slave,
    client::{Client, Context},
    slave::SlaveContext,
};

/// Each request's time limit, like the device `timeout` (1s by default) that `link.rs` applies.
const TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    RUNTIME.with(|rt| rt.block_on(run(input)));
});

#[derive(Debug)]
struct Input {
    rtu: bool,
    unit: u8,
    exchanges: Vec<Exchange>,
}

#[derive(Debug)]
struct Exchange {
    request: Request,
    /// Patch the request's transaction id, length and unit id (TCP) or slave id and CRC (RTU)
    /// into the reply.
    patch: bool,
    reply: Vec<u8>,
    /// Tags to decode from a register reply: a codec and the tag's position in the reply.
    tags: Vec<(TagCodec, u16)>,
}

#[derive(Debug, Clone)]
enum Request {
    ReadCoils(u16, u16),
    ReadDiscreteInputs(u16, u16),
    ReadHoldingRegisters(u16, u16),
    ReadInputRegisters(u16, u16),
    WriteSingleCoil(u16, bool),
    WriteMultipleCoils(u16, bool),
    WriteSingleRegister(u16, u16),
    WriteMultipleRegisters(u16, Vec<u16>),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let rtu = u.arbitrary()?;
        let unit = u.arbitrary()?;
        let mut exchanges = Vec::new();
        // The last exchange's reply takes the rest of the input.
        while exchanges.len() < 4 && !u.is_empty() {
            let request = request(u)?;
            let patch = u.ratio(3, 4)?;
            let tags = (0..u.int_in_range(0..=3)?)
                .map(|_| Ok((codec(u)?, u.int_in_range(0..=127)?)))
                .collect::<arbitrary::Result<_>>()?;
            let len = if u.ratio(1, 4)? {
                u.len()
            } else {
                u.int_in_range(0..=u.len().min(300))?
            };
            let reply = u.bytes(len)?.to_vec();
            exchanges.push(Exchange {
                request,
                patch,
                reply,
                tags,
            });
        }
        Ok(Input {
            rtu,
            unit,
            exchanges,
        })
    }
}

/// Requests within the protocol's limits, which the adapter's planner respects.
fn request(u: &mut Unstructured<'_>) -> arbitrary::Result<Request> {
    let addr = u.arbitrary()?;
    Ok(match u.int_in_range(0..=7)? {
        0 => Request::ReadCoils(addr, u.int_in_range(1..=2000)?),
        1 => Request::ReadDiscreteInputs(addr, u.int_in_range(1..=2000)?),
        2 => Request::ReadHoldingRegisters(addr, u.int_in_range(1..=125)?),
        3 => Request::ReadInputRegisters(addr, u.int_in_range(1..=125)?),
        4 => Request::WriteSingleCoil(addr, u.arbitrary()?),
        5 => Request::WriteMultipleCoils(addr, u.arbitrary()?),
        6 => Request::WriteSingleRegister(addr, u.arbitrary()?),
        _ => Request::WriteMultipleRegisters(
            addr,
            (0..u.int_in_range(1..=123)?)
                .map(|_| u.arbitrary())
                .collect::<arbitrary::Result<_>>()?,
        ),
    })
}

fn codec(u: &mut Unstructured<'_>) -> arbitrary::Result<TagCodec> {
    let data_type = match u.int_in_range(0..=9)? {
        0 => DataType::Bool,
        1 => DataType::U16,
        2 => DataType::I16,
        3 => DataType::U32,
        4 => DataType::I32,
        5 => DataType::U64,
        6 => DataType::I64,
        7 => DataType::F32,
        8 => DataType::F64,
        _ => DataType::String(u.int_in_range(1..=125)?),
    };
    Ok(TagCodec {
        word_order: if u.arbitrary()? {
            WordOrder::Little
        } else {
            WordOrder::Big
        },
        byte_order: if u.arbitrary()? {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        },
        ..TagCodec::new(data_type)
    })
}

async fn run(input: Input) {
    let rtu = input.rtu;
    let (client_io, device_io) = tokio::io::duplex(4096);
    let mut ctx = if rtu {
        tokio_modbus::client::rtu::attach_slave(client_io, Slave(input.unit))
    } else {
        tokio_modbus::client::tcp::attach_slave(client_io, Slave(input.unit))
    };
    let replies = input
        .exchanges
        .iter()
        .map(|e| (e.patch, e.reply.clone()))
        .collect();
    let poller = async move {
        for exchange in &input.exchanges {
            ctx.set_slave(Slave(input.unit));
            let outcome = tokio::time::timeout(TIMEOUT, call(&mut ctx, exchange)).await;
            let link_broken = match outcome {
                Ok(Ok(())) => false,
                // As in `link.rs`: TCP drops the link on any fault; an RTU bus only when the
                // port itself failed.
                Ok(Err(tokio_modbus::Error::Transport(e))) => {
                    !input.rtu
                        || !matches!(
                            e.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut
                        )
                }
                Ok(Err(tokio_modbus::Error::Protocol(_))) | Err(_) => !input.rtu,
            };
            if link_broken {
                break;
            }
        }
        // Dropping the context closes the pipe, which ends the device.
    };
    tokio::join!(poller, device(device_io, replies, rtu));
}

/// One request as the adapter's `link.rs` makes it: `Client::call`, then its own checks of
/// the reply against the request (counts, write echoes), then tag decoding.
async fn call(ctx: &mut Context, exchange: &Exchange) -> Result<(), tokio_modbus::Error> {
    use std::borrow::Cow;
    use tokio_modbus::Request as Wire;
    let (request, wanted) = match exchange.request.clone() {
        Request::ReadCoils(a, n) => (Wire::ReadCoils(a, n), usize::from(n)),
        Request::ReadDiscreteInputs(a, n) => (Wire::ReadDiscreteInputs(a, n), usize::from(n)),
        Request::ReadHoldingRegisters(a, n) => (Wire::ReadHoldingRegisters(a, n), usize::from(n)),
        Request::ReadInputRegisters(a, n) => (Wire::ReadInputRegisters(a, n), usize::from(n)),
        Request::WriteSingleCoil(a, on) => (Wire::WriteSingleCoil(a, on), 0),
        Request::WriteMultipleCoils(a, on) => {
            (Wire::WriteMultipleCoils(a, Cow::Owned(vec![on])), 0)
        }
        Request::WriteSingleRegister(a, w) => (Wire::WriteSingleRegister(a, w), 0),
        Request::WriteMultipleRegisters(a, words) => {
            (Wire::WriteMultipleRegisters(a, Cow::Owned(words)), 0)
        }
    };
    let Ok(response) = ctx.call(request).await? else {
        return Ok(());
    };
    match response {
        Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits) => {
            if bits.len() >= wanted {
                bits.truncate(wanted);
            }
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
            if words.len() == wanted =>
        {
            // The adapter's `decode`: a tag outside the reply is a Bad sample, not a slice panic.
            for (codec, pos) in &exchange.tags {
                let pos = usize::from(*pos);
                let width = usize::from(codec.register_count());
                if let Some(slice) = words.get(pos..pos + width) {
                    let _ = codec.decode_registers(slice);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A device that answers each request it reads with the next reply, then hangs up.
async fn device(mut io: DuplexStream, replies: Vec<(bool, Vec<u8>)>, rtu: bool) {
    let mut buf = [0u8; 512];
    for (patch, mut reply) in replies {
        let request = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => &buf[..n],
        };
        if patch {
            if rtu {
                patch_rtu(request, &mut reply);
            } else {
                patch_tcp(request, &mut reply);
            }
        }
        if io.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// MBAP header: transaction id, protocol id 0, length of what follows, unit id.
fn patch_tcp(request: &[u8], reply: &mut [u8]) {
    if reply.len() < 7 || request.len() < 7 {
        return;
    }
    reply[..2].copy_from_slice(&request[..2]);
    reply[2..4].fill(0);
    let len = u16::try_from(reply.len() - 6).unwrap_or(u16::MAX);
    reply[4..6].copy_from_slice(&len.to_be_bytes());
    reply[6] = request[6];
}

/// Slave id first, CRC-16/MODBUS last (low byte first).
fn patch_rtu(request: &[u8], reply: &mut [u8]) {
    if reply.len() < 4 || request.is_empty() {
        return;
    }
    reply[0] = request[0];
    let end = reply.len() - 2;
    let crc = crc16(&reply[..end]);
    reply[end..].copy_from_slice(&crc.to_le_bytes());
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFF_u16;
    for b in bytes {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}
