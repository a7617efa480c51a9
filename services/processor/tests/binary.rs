//! The `fieldline-processor` binary against the real MQTT broker and a storage service:
//! readiness follows both links, metrics and server reflection are served, SIGTERM exits
//! cleanly.

mod common;

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
    let mut processor = common::start("proc", dir.path()).await?;
    let (http, grpc) = (processor.http, processor.grpc);
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
    assert_eq!(processor.process.terminate().await?, Some(0));
    let log = processor.process.stdout().await;
    assert!(log.contains("processor started"), "{log}");
    assert!(kit::warnings_and_errors(&log).is_empty(), "{log}");
    processor.stop_storage().await;
    Ok(())
}
