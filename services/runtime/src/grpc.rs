//! Serving a gRPC service: bind, add server reflection in both protocol versions (`v1`, and
//! the `v1alpha` that grpcio-reflection and older tools speak), so generic clients call the
//! API without the `.proto` files; serve until shutdown.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;

/// Binds `addr` and serves `router` plus reflection until `stop`. Returns the bound address
/// (useful with port 0) and the task, which ends once open calls have finished.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    name: &'static str,
    stop: CancellationToken,
) -> crate::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(fieldline_proto::v1::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::Error::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        let served = router
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            tracing::error!(service = name, %error, "gRPC server stopped");
        }
    });
    tracing::info!(service = name, addr = %bound, "serving gRPC");
    Ok((bound, task))
}
