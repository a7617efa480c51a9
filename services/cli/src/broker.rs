//! The embedded MQTT broker of `fieldline up` (rumqttd, MQTT 3.1.1), so the demo needs no
//! server installed. It runs on its own threads for the life of the process.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts the broker on `listen` and returns once it accepts connections.
pub async fn start(listen: SocketAddr) -> crate::Result<()> {
    // Fail early and clearly when the port is taken (rumqttd would only log it).
    drop(
        std::net::TcpListener::bind(listen).map_err(|source| crate::Error::PortTaken {
            addr: listen,
            flag: "--mqtt-listen",
            source,
        })?,
    );
    let server = ServerSettings {
        name: "fieldline-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 16 * 1024 * 1024,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 1024,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 8,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("fieldline-v4".to_string(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(|source| crate::Error::Io {
            what: "starting the embedded MQTT broker".into(),
            source,
        })?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(crate::Error::BrokerNotListening(listen))
}
