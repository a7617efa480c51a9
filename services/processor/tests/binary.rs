//! The `fieldline-processor` binary against the real MQTT broker and a storage service:
//! readiness follows both links, metrics and server reflection are served, SIGTERM exits
//! cleanly.

use fieldline_runtime::{CancellationToken, Health};
use fieldline_testkit as kit;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn becomes_ready_with_broker_and_storage_and_exits_cleanly_on_sigterm() -> anyhow::Result<()>
{
    kit::require_mqtt()?;
    let dir = tempfile::tempdir()?;
    let line = kit::unique("proc");
    let http = kit::free_addr()?;
    let grpc = kit::free_addr()?;
    let yaml = format!(
        "line: {line}\nmqtt: {{ address: \"{mqtt}\" }}\nstorage:\n  grpc_listen: 127.0.0.1:0\n  sql: {{ url: \"sqlite://{db}\" }}\nprocessor:\n  grpc_listen: {grpc}\n  http_listen: {http}\ndevices:\n  - {{ name: d1, type: t, protocol: modbus-tcp, endpoint: \"127.0.0.1:1\", tags: [ {{ name: a, address: \"holding:0\", type: u16 }} ] }}\n",
        mqtt = kit::MQTT,
        db = dir.path().join("s.db").display(),
    );
    let mut config =
        fieldline_core::config::LineConfig::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = CancellationToken::new();
    let storage = fieldline_storage::start(
        &config,
        &Health::default(),
        &mut Default::default(),
        stop.clone(),
    )
    .await?;
    config.processor.storage_url = format!("http://{}", storage.grpc_addr);
    let file = dir.path().join("line.yaml");
    std::fs::write(
        &file,
        yaml.replace(
            "processor:\n",
            &format!(
                "processor:\n  storage_url: {}\n",
                config.processor.storage_url
            ),
        ),
    )?;
    let mut processor = kit::ServiceProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_fieldline-processor")),
        &["--config", &file.display().to_string()],
        http,
    )
    .await?;
    let (status, metrics) = kit::http_get(&format!("http://{http}/metrics")).await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fieldline_processor_batches_received_total 0"),
        "{metrics}"
    );
    // Server reflection describes the MES API, so generic clients (grpcurl) need no .proto.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "fieldline.v1.PlantService".into(),
            )),
        ]))
        .await?
        .into_inner();
    match answers.message().await?.and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => assert!(
            list.service
                .iter()
                .any(|s| s.name == "fieldline.v1.PlantService"),
            "{list:?}"
        ),
        other => panic!("expected the service list, got {other:?}"),
    }
    match answers.message().await?.and_then(|a| a.message_response) {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            let described: Vec<u8> = files.file_descriptor_proto.concat();
            for method in [
                "ReadLatest",
                "Write",
                "ListAlarms",
                "Shelve",
                "GetProduction",
            ] {
                assert!(
                    described
                        .windows(method.len())
                        .any(|w| w == method.as_bytes()),
                    "reflection does not describe {method}"
                );
            }
        }
        other => panic!("expected the file descriptor, got {other:?}"),
    }
    assert_eq!(processor.terminate().await?, Some(0));
    stop.cancel();
    storage.wait().await;
    Ok(())
}
