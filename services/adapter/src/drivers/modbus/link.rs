//! The physical link to one or more Modbus slaves: a TCP connection (a device, or a gateway
//! routing by unit id) or a serial port carrying an RTU bus.
//!
//! The link decides what a fault means. On TCP any transport fault (timeout, I/O error,
//! mismatched reply) leaves the connection in an unknown state, so the link is dropped and
//! reconnected with backoff. On an RTU bus a timeout, a CRC error or a reply from the wrong
//! slave concerns only the slave that was asked; the port is reopened only when the port
//! itself fails (unplugged adapter, vanished pty). Between RTU frames the link keeps the
//! 3.5-character silence the protocol requires.

use std::{borrow::Cow, time::Duration};

use fieldline_core::{
    codec::Table,
    config::{Parity, SerialConfig},
};
use fieldline_runtime::backoff::Backoff;
use tokio::time::Instant;
use tokio_modbus::{
    ExceptionCode, Request, Response, Slave,
    client::{Client, Context},
};

use crate::{Error, Result};

/// What a reply carried.
pub enum Reply {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    /// A write was confirmed.
    Done,
}

/// Outcome of one request: data, a device exception, or a transport fault.
pub enum Outcome {
    Data(Reply),
    Exception(ExceptionCode),
    /// The request failed on the way. `link_broken` says whether the link itself must be
    /// re-established (TCP: always; RTU: only when the port failed).
    Transport {
        error: Error,
        link_broken: bool,
    },
}

/// One write request on the wire.
pub enum WriteOp<'a> {
    Coil { on: bool, multiple: bool },
    Registers { words: &'a [u16], multiple: bool },
}

/// How to reach the slaves.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkKind {
    Tcp { endpoint: String },
    Rtu { port: String, serial: SerialConfig },
}

impl LinkKind {
    pub fn describe(&self) -> String {
        match self {
            LinkKind::Tcp { endpoint } => endpoint.clone(),
            LinkKind::Rtu { port, serial } => {
                let parity = match serial.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                };
                format!(
                    "{port} {}{}{}{}",
                    serial.baud_rate, serial.data_bits, parity, serial.stop_bits
                )
            }
        }
    }

    fn is_rtu(&self) -> bool {
        matches!(self, LinkKind::Rtu { .. })
    }
}

/// A link and its connection state.
pub struct Link {
    pub kind: LinkKind,
    connection: Option<Context>,
    backoff: Backoff,
    retry_at: Instant,
    /// Silence kept between RTU frames.
    frame_gap: Duration,
    last_frame: Instant,
}

impl Link {
    pub fn new(kind: LinkKind, max_backoff: Duration) -> Self {
        let frame_gap = match &kind {
            // 3.5 characters of 11 bits, and at least 1.75 ms above 19200 baud (the spec's
            // fixed value for fast lines).
            LinkKind::Rtu { serial, .. } => {
                let char_time = 11.0 / f64::from(serial.baud_rate.max(1));
                Duration::from_secs_f64((3.5 * char_time).max(0.00175))
            }
            LinkKind::Tcp { .. } => Duration::ZERO,
        };
        Self {
            kind,
            connection: None,
            backoff: Backoff::new(Duration::from_millis(250), max_backoff),
            retry_at: Instant::now(),
            frame_gap,
            last_frame: Instant::now(),
        }
    }

    pub fn is_rtu(&self) -> bool {
        self.kind.is_rtu()
    }

    /// Connects (or opens the port) if needed and the backoff allows an attempt now;
    /// [`Error::Waiting`] while the backoff does not.
    pub async fn ensure_open(&mut self, timeout: Duration) -> Result<()> {
        if self.connection.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err(Error::Waiting);
        }
        match open(&self.kind, timeout).await {
            Ok(ctx) => {
                tracing::info!(link = %self.kind.describe(), "connected");
                self.connection = Some(ctx);
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                self.fail(&e.to_string());
                Err(e)
            }
        }
    }

    /// Drops the connection and schedules the next attempt.
    pub fn fail(&mut self, reason: &str) {
        self.connection = None;
        let delay = self.backoff.next_delay();
        self.retry_at = Instant::now() + delay;
        tracing::warn!(link = %self.kind.describe(), error = %reason, retry_in = ?delay, "link down");
    }

    pub async fn close(&mut self) {
        if let Some(mut ctx) = self.connection.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.disconnect()).await;
        }
    }

    /// Reads `count` entries of `table` from `unit`. The reply is checked against the
    /// request: a device that answers with fewer or more entries than asked is at fault, and
    /// its reply is not used.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Outcome {
        let request = match table {
            Table::Coil => Request::ReadCoils(start, count),
            Table::Discrete => Request::ReadDiscreteInputs(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
            Table::Holding => Request::ReadHoldingRegisters(start, count),
        };
        let wanted = usize::from(count);
        match self.call(unit, timeout, request).await {
            Ok(response) => match response {
                Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits) => {
                    // Bits arrive padded to whole bytes; fewer than asked is a faulty reply.
                    if bits.len() < wanted {
                        return self.faulty(format!(
                            "asked for {count} bits, the reply holds {}",
                            bits.len()
                        ));
                    }
                    bits.truncate(wanted);
                    Outcome::Data(Reply::Bits(bits))
                }
                Response::ReadInputRegisters(words) | Response::ReadHoldingRegisters(words) => {
                    if words.len() != wanted {
                        return self.faulty(format!(
                            "asked for {count} registers, the reply holds {}",
                            words.len()
                        ));
                    }
                    Outcome::Data(Reply::Words(words))
                }
                other => self.faulty(format!("the reply {other:?} does not answer a read")),
            },
            Err(outcome) => outcome,
        }
    }

    /// Writes at `offset` of `unit`; the device's echo must confirm exactly what was sent.
    pub async fn write(
        &mut self,
        unit: u8,
        offset: u16,
        op: WriteOp<'_>,
        timeout: Duration,
    ) -> Outcome {
        let (request, expected) = match op {
            WriteOp::Coil {
                on,
                multiple: false,
            } => (
                Request::WriteSingleCoil(offset, on),
                Response::WriteSingleCoil(offset, on),
            ),
            WriteOp::Coil { on, multiple: true } => (
                Request::WriteMultipleCoils(offset, Cow::Owned(vec![on])),
                Response::WriteMultipleCoils(offset, 1),
            ),
            WriteOp::Registers {
                words: [word],
                multiple: false,
            } => (
                Request::WriteSingleRegister(offset, *word),
                Response::WriteSingleRegister(offset, *word),
            ),
            WriteOp::Registers { words, .. } => {
                let n = u16::try_from(words.len()).unwrap_or(u16::MAX);
                (
                    Request::WriteMultipleRegisters(offset, Cow::Owned(words.to_vec())),
                    Response::WriteMultipleRegisters(offset, n),
                )
            }
        };
        match self.call(unit, timeout, request).await {
            Ok(echo) if echo == expected => Outcome::Data(Reply::Done),
            Ok(echo) => self.faulty(format!("the device confirmed {echo:?}, not {expected:?}")),
            Err(outcome) => outcome,
        }
    }

    /// A reply that arrived intact but says something other than what was asked: the slave is
    /// at fault, the link is fine.
    fn faulty(&self, detail: String) -> Outcome {
        Outcome::Transport {
            error: Error::FaultyReply { detail },
            link_broken: false,
        }
    }

    /// Sends one request to `unit`, keeping the RTU inter-frame silence. `Err` carries the
    /// outcome of a request that produced no usable reply.
    async fn call(
        &mut self,
        unit: u8,
        timeout: Duration,
        request: Request<'_>,
    ) -> Result<Response, Outcome> {
        let rtu = self.is_rtu();
        if rtu {
            tokio::time::sleep_until(self.last_frame + self.frame_gap).await;
        }
        let Some(ctx) = self.connection.as_mut() else {
            return Err(Outcome::Transport {
                error: Error::NotConnected,
                link_broken: true,
            });
        };
        tokio_modbus::slave::SlaveContext::set_slave(ctx, Slave(unit));
        let result = tokio::time::timeout(timeout, ctx.call(request)).await;
        self.last_frame = Instant::now();
        match result {
            Err(_) => Err(Outcome::Transport {
                error: Error::NoResponse(timeout),
                link_broken: !rtu,
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                // On a serial line, garbled or foreign frames are the slave's problem; only a
                // failing port breaks the link.
                let port_failed = !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut
                );
                Err(Outcome::Transport {
                    error: Error::ModbusTransport(e),
                    link_broken: !rtu || port_failed,
                })
            }
            Ok(Err(e @ tokio_modbus::Error::Protocol(_))) => Err(Outcome::Transport {
                error: Error::ModbusProtocol(e),
                link_broken: !rtu,
            }),
            Ok(Ok(Err(code))) => Err(Outcome::Exception(code)),
            Ok(Ok(Ok(response))) => Ok(response),
        }
    }
}

async fn open(kind: &LinkKind, timeout: Duration) -> Result<Context> {
    match kind {
        LinkKind::Tcp { endpoint } => {
            let addr = tokio::net::lookup_host(endpoint)
                .await
                .map_err(|source| Error::Resolve {
                    endpoint: endpoint.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| Error::NoAddress {
                    endpoint: endpoint.clone(),
                })?;
            match tokio::time::timeout(
                timeout,
                tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
            )
            .await
            {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(source)) => Err(Error::Connect { addr, source }),
                Err(_) => Err(Error::ConnectTimeout {
                    addr,
                    after: timeout,
                }),
            }
        }
        LinkKind::Rtu { port, serial } => {
            let stream = crate::serial::open(port, serial)?;
            Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(1)))
        }
    }
}
