//! The operations endpoint of every service: `/healthz` (the process answers and no watched
//! loop is stuck), `/readyz`
//! (every component is ready) and `/metrics` (Prometheus text format).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Health;

#[derive(Clone)]
struct Ops {
    health: Health,
    registry: Arc<Registry>,
}

/// Binds `addr` and serves until `shutdown` is cancelled. Returns the bound address (useful
/// with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> crate::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::Error::Bind { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops { health, registry });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "operations endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(bound)
}

async fn healthz(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.health.liveness() {
        (true, _) => (StatusCode::OK, "ok\n".to_string()),
        (false, stuck) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: {}\n", stuck.join("; ")),
        ),
    }
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.health.report() {
        (true, _) => (StatusCode::OK, "ready\n".to_string()),
        (false, waiting) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        ),
    }
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &ops.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot encode metrics: {error}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let health = Health::default();
        let ready = health.component("bus");
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("fieldline_test_things", "Things counted", counter.clone());
        counter.inc_by(3);
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            health,
            Arc::new(registry),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let get = |path: &str| reqwest::get(format!("http://{addr}{path}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let not_ready = get("/readyz").await.unwrap();
        assert_eq!(not_ready.status(), 503);
        assert!(not_ready.text().await.unwrap().contains("bus"));
        ready.set(true);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let text = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(text.contains("fieldline_test_things_total 3"), "{text}");
        shutdown.cancel();
    }
}
