//! Spans reach an OTLP collector, and one trace continues across a gRPC hop.
//! The collector is a real OTLP/gRPC server in this test, on port 0.

use std::time::Duration;

use mailroom_telemetry::{TelemetryOptions, grpc_server_span, init, inject};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_and_the_trace_crosses_a_grpc_hop() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let telemetry = init(&TelemetryOptions {
        json: false,
        filter: "info".into(),
        otlp_endpoint: Some(format!("http://{addr}")),
        service_name: "mailroom-test".into(),
    })
    .unwrap();

    // The client side of a call: its span's context goes into the metadata.
    let client_span = tracing::info_span!("submit");
    let mut metadata = MetadataMap::new();
    client_span.in_scope(|| inject(&mut metadata));
    let client_ctx = client_span.context().span().span_context().clone();
    assert!(client_ctx.is_valid());
    assert!(metadata.get("traceparent").is_some(), "no traceparent sent");

    // The server side: the request span continues the caller's trace.
    let mut request = tonic::codegen::http::Request::builder()
        .uri("/mailroom.queue.v1.Queue/Enqueue")
        .body(())
        .unwrap();
    *request.headers_mut() = metadata.into_headers();
    let server_span = grpc_server_span(&request);
    let server_ctx = server_span.context().span().span_context().clone();
    assert_eq!(
        server_ctx.trace_id(),
        client_ctx.trace_id(),
        "the trace did not continue"
    );
    drop(server_span);
    drop(client_span);

    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the collector received no spans")
            .unwrap();
        for rs in batch.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.clone())
                .map(|v| format!("{:?}", v.value));
            assert!(service.unwrap_or_default().contains("mailroom-test"));
            for ss in rs.scope_spans {
                seen.extend(ss.spans);
            }
        }
    }
    let submit = seen
        .iter()
        .find(|s| s.name == "submit")
        .expect("client span exported");
    let grpc = seen
        .iter()
        .find(|s| s.name == "Queue.Enqueue")
        .expect("server span exported, named after its service and method");
    assert_eq!(grpc.trace_id, submit.trace_id);
    assert_eq!(
        grpc.parent_span_id, submit.span_id,
        "the server span is the client span's child"
    );
}
