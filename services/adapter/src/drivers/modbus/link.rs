//! The physical link to one or more Modbus slaves: a TCP connection (a device, or a gateway
//! routing by unit id) or a serial port carrying an RTU bus.
//!
//! The link decides what a fault means. On TCP any transport fault (timeout, I/O error,
//! mismatched reply) leaves the connection in an unknown state, so the link is dropped and
//! reconnected with backoff. On an RTU bus a timeout, a CRC error or a reply from the wrong
//! slave concerns only the slave that was asked; the port is reopened only when the port
//! itself fails (unplugged adapter, vanished pty). Between RTU frames the link keeps the
//! 3.5-character silence the protocol requires.

use std::time::Duration;

use fieldline_core::{
    codec::Table,
    config::{Parity, SerialConfig},
};
use fieldline_runtime::backoff::Backoff;
use tokio::time::Instant;
use tokio_modbus::{
    ExceptionCode, Slave,
    client::{Client, Context, Reader, Writer},
};

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
        reason: String,
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

/// Why a request was not sent: the link is waiting out its reconnect backoff.
pub const WAITING: &str = "waiting to reconnect";

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

    /// Connects (or opens the port) if needed and the backoff allows an attempt now.
    pub async fn ensure_open(&mut self, timeout: Duration) -> Result<(), String> {
        if self.connection.is_some() {
            return Ok(());
        }
        if Instant::now() < self.retry_at {
            return Err(WAITING.into());
        }
        match open(&self.kind, timeout).await {
            Ok(ctx) => {
                tracing::info!(link = %self.kind.describe(), "connected");
                self.connection = Some(ctx);
                self.backoff.reset();
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
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

    /// Reads `count` entries of `table` from `unit`.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Outcome {
        self.call(unit, timeout, move |ctx| {
            Box::pin(async move {
                match table {
                    Table::Coil => ctx
                        .read_coils(start, count)
                        .await
                        .map(|r| r.map(Reply::Bits)),
                    Table::Discrete => ctx
                        .read_discrete_inputs(start, count)
                        .await
                        .map(|r| r.map(Reply::Bits)),
                    Table::Input => ctx
                        .read_input_registers(start, count)
                        .await
                        .map(|r| r.map(Reply::Words)),
                    Table::Holding => ctx
                        .read_holding_registers(start, count)
                        .await
                        .map(|r| r.map(Reply::Words)),
                }
            })
        })
        .await
    }

    /// Writes at `offset` of `unit`.
    pub async fn write(
        &mut self,
        unit: u8,
        offset: u16,
        op: WriteOp<'_>,
        timeout: Duration,
    ) -> Outcome {
        let words: Vec<u16> = match &op {
            WriteOp::Registers { words, .. } => words.to_vec(),
            WriteOp::Coil { .. } => Vec::new(),
        };
        let (coil, multiple, is_coil) = match op {
            WriteOp::Coil { on, multiple } => (on, multiple, true),
            WriteOp::Registers { multiple, .. } => (false, multiple, false),
        };
        self.call(unit, timeout, move |ctx| {
            Box::pin(async move {
                let done = match (is_coil, words.as_slice(), multiple) {
                    (true, _, false) => ctx.write_single_coil(offset, coil).await,
                    (true, _, true) => ctx.write_multiple_coils(offset, &[coil]).await,
                    (false, [word], false) => ctx.write_single_register(offset, *word).await,
                    (false, words, _) => ctx.write_multiple_registers(offset, words).await,
                };
                done.map(|r| r.map(|()| Reply::Done))
            })
        })
        .await
    }

    async fn call<F>(&mut self, unit: u8, timeout: Duration, request: F) -> Outcome
    where
        F: for<'c> FnOnce(
            &'c mut Context,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = tokio_modbus::Result<Reply>> + Send + 'c>,
        >,
    {
        let rtu = self.is_rtu();
        if rtu {
            tokio::time::sleep_until(self.last_frame + self.frame_gap).await;
        }
        let Some(ctx) = self.connection.as_mut() else {
            return Outcome::Transport {
                reason: "not connected".into(),
                link_broken: true,
            };
        };
        tokio_modbus::slave::SlaveContext::set_slave(ctx, Slave(unit));
        let result = tokio::time::timeout(timeout, request(ctx)).await;
        self.last_frame = Instant::now();
        match result {
            Err(_) => Outcome::Transport {
                reason: format!("no response within {}ms", timeout.as_millis()),
                link_broken: !rtu,
            },
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                // On a serial line, garbled or foreign frames are the slave's problem; only a
                // failing port breaks the link.
                let port_failed = !matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::TimedOut
                );
                Outcome::Transport {
                    reason: e.to_string(),
                    link_broken: !rtu || port_failed,
                }
            }
            Ok(Err(e @ tokio_modbus::Error::Protocol(_))) => Outcome::Transport {
                reason: e.to_string(),
                link_broken: !rtu,
            },
            Ok(Ok(Err(code))) => Outcome::Exception(code),
            Ok(Ok(Ok(reply))) => Outcome::Data(reply),
        }
    }
}

async fn open(kind: &LinkKind, timeout: Duration) -> Result<Context, String> {
    match kind {
        LinkKind::Tcp { endpoint } => {
            let addr = tokio::net::lookup_host(endpoint)
                .await
                .map_err(|e| format!("cannot resolve {endpoint}: {e}"))?
                .next()
                .ok_or_else(|| format!("{endpoint} resolves to no address"))?;
            match tokio::time::timeout(
                timeout,
                tokio_modbus::client::tcp::connect_slave(addr, Slave(1)),
            )
            .await
            {
                Ok(Ok(ctx)) => Ok(ctx),
                Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
                Err(_) => Err(format!(
                    "cannot connect to {addr} within {}ms",
                    timeout.as_millis()
                )),
            }
        }
        LinkKind::Rtu { port, serial } => {
            use tokio_serial::SerialPortBuilderExt;
            let builder = tokio_serial::new(port, serial.baud_rate)
                .data_bits(if serial.data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .stop_bits(if serial.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .parity(match serial.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                });
            let stream = builder
                .open_native_async()
                .map_err(|e| format!("cannot open {port}: {e}"))?;
            Ok(tokio_modbus::client::rtu::attach_slave(stream, Slave(1)))
        }
    }
}
