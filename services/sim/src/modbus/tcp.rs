//! The Modbus TCP server of the device simulators (used by `fieldline up`, the tests and the
//! benchmarks): tokio-modbus's server owns the sockets and framing, and every decoded request
//! is answered from the shared registers by the pure `handler`.

use std::{future, io, net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_modbus::{
    ExceptionCode, Response, SlaveRequest,
    server::{Service, tcp::Server},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler;
use crate::{Error, Result, SimState};

/// How long to wait before listening again after the listener failed to accept.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves Modbus TCP on `addr` (use 127.0.0.1:0 in tests) until `stop` is cancelled.
/// Returns the bound address once listening. Every unit id is answered.
///
/// The task ends soon after `stop` is cancelled, closing the listener and every open
/// connection. A request the framing cannot decode (a bad header, a byte count that does not
/// match its quantity, a coil value other than 0xFF00/0x0000) closes that connection.
pub async fn serve_modbus_tcp(
    addr: SocketAddr,
    state: SimState,
    stop: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listen = |source| Error::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let local_addr = listener.local_addr().map_err(listen)?;
    debug!(addr = %local_addr, "modbus tcp simulator listening");
    let task = tokio::spawn(serve(Server::new(listener), local_addr, state, stop));
    Ok((local_addr, task))
}

async fn serve(server: Server, local_addr: SocketAddr, state: SimState, stop: CancellationToken) {
    let on_connected = |stream: tokio::net::TcpStream, peer: SocketAddr| {
        // One small response per request: do not let Nagle hold it back.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "could not set TCP_NODELAY");
        }
        debug!(%peer, "modbus tcp client connected");
        let device = Device {
            state: state.clone(),
            peer,
        };
        future::ready(Ok(Some((device, stream))))
    };
    let on_process_error = |error: io::Error| {
        debug!(%error, "modbus tcp connection closed on error");
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            // `serve` only returns when accepting failed (out of file descriptors, say); a
            // device keeps listening. Returning drops the connections it had started.
            result = server.serve(&on_connected, on_process_error) => {
                if let Err(error) = result {
                    warn!(addr = %local_addr, %error, "modbus tcp accept failed, listening again");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
    debug!(addr = %local_addr, "modbus tcp simulator stopped");
}

/// One client connection's view of the simulated device.
struct Device {
    state: SimState,
    peer: SocketAddr,
}

impl Service for Device {
    // `SlaveRequest` only to log the unit id: every unit id is answered alike.
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let SlaveRequest {
            slave: unit,
            request,
        } = request;
        let function = request.function_code().value();
        let result = self
            .state
            .with(|registers| handler::handle(registers, &request));
        match &result {
            Ok(_) => debug!(peer = %self.peer, unit, function, "modbus request served"),
            Err(exception) => debug!(
                peer = %self.peer,
                unit,
                function,
                %exception,
                "modbus request answered with an exception"
            ),
        }
        future::ready(result)
    }
}
