//! A batch storage refuses for good is not sent again: it is acknowledged, counted and copied
//! to the line's dead-letter topic, and the line goes on.
//!
//! Storage here is a stand-in that refuses every batch: the real storage refuses only batches
//! the processor's own intake refuses first (they never reach it), so no message on the bus
//! can make it refuse one. The broker is the real Mosquitto.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use fieldline_core::config::LineConfig;
use fieldline_proto::{
    dead_letter_topic, samples_topic,
    v1::{self, storage_service_server::StorageService},
};
use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

/// Answers every ingest request with "refused for good", counting them.
struct Refusing {
    requests: Arc<AtomicU64>,
}

type Acks = tokio_stream::wrappers::ReceiverStream<Result<v1::IngestAck, Status>>;

#[tonic::async_trait]
impl StorageService for Refusing {
    type IngestStream = Acks;

    async fn ingest(
        &self,
        request: Request<Streaming<v1::IngestRequest>>,
    ) -> Result<Response<Acks>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                requests.fetch_add(1, Ordering::SeqCst);
                let ack = v1::IngestAck {
                    request_id: r.request_id,
                    stored: false,
                    rejected_samples: 0,
                    detail: "refused by the stand-in storage".into(),
                    records_refused: String::new(),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Acks::new(rx)))
    }

    async fn query_history(
        &self,
        _: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn record(
        &self,
        _: Request<v1::PlantRecords>,
    ) -> Result<Response<v1::RecordAck>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn load_plant_state(
        &self,
        _: Request<v1::PlantStateRequest>,
    ) -> Result<Response<v1::PlantState>, Status> {
        Err(Status::unimplemented("stand-in"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_storage_refuses_for_good_is_dead_lettered_not_retried() -> anyhow::Result<()> {
    kit::require_mqtt()?;
    let requests = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let storage_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    {
        let service = v1::storage_service_server::StorageServiceServer::new(Refusing {
            requests: requests.clone(),
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
        });
    }
    let line = kit::unique("refused");
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nprocessor: {{ grpc_listen: \"127.0.0.1:0\", http_listen: \"{http}\", storage_url: \"http://{storage_addr}\" }}\ndevices:\n  - {{ name: d1, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: n, address: \"holding:0\", type: u16 }} ] }}\n",
        mqtt = kit::MQTT,
        http = kit::free_addr()?,
    );
    let config = LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let health = Health::default();
    let mut registry = Registry::default();
    let _processor =
        fieldline_processor::start(&config, &health, &mut registry, stop.clone()).await?;
    kit::wait_for(
        Duration::from_secs(15),
        "the processor to be ready",
        || async { health.report().0.then_some(()) },
    )
    .await?;

    let (bus, mut letters) = kit::subscribe_many(&[dead_letter_topic(&line)]).await?;
    let batch = v1::SampleBatch {
        line: line.clone(),
        device: "d1".into(),
        adapter_id: "refused-test".into(),
        sequence: 1,
        samples: vec![v1::Sample::from(fieldline_core::Sample::good(
            "n",
            fieldline_core::Value::U64(7),
            fieldline_runtime::now_ns(),
        ))],
        previous_sequence: 0,
    };
    let payload = batch.encode_to_vec();
    bus.publish(
        samples_topic(&line, "d1"),
        rumqttc::QoS::AtLeastOnce,
        false,
        payload.clone(),
    )
    .await?;
    let (_, letter) = tokio::time::timeout(Duration::from_secs(15), letters.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter"))?;
    let letter = v1::DeadLetter::decode(letter.as_slice())?;
    assert_eq!(letter.kind, "refused_by_storage", "{letter:?}");
    assert_eq!(letter.reason, "refused by the stand-in storage");
    assert_eq!(letter.topic, samples_topic(&line, "d1"));
    assert_eq!(letter.payload, payload, "the batch as it came from the bus");

    // Acknowledged and not sent again: storage saw it once, however long it waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry)?;
    assert_eq!(
        kit::metric_value(
            &page,
            "fieldline_processor_dead_letters_total{kind=\"refused_by_storage\"} "
        ),
        Some(1.0),
        "{page}"
    );
    stop.cancel();
    Ok(())
}
