//! The gRPC contracts of Mailroom (generated from `proto/` at build time by
//! protox and tonic-prost-build, with no system `protoc`) and the server
//! plumbing every gRPC service shares: health, reflection, and a request span
//! that continues the caller's trace.

#![allow(missing_docs, clippy::all)]

use std::error::Error;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

pub mod internal;

/// `mailroom.admin.v1`
pub mod admin {
    tonic::include_proto!("mailroom.admin.v1");
}
/// `mailroom.queue.v1`
pub mod queue {
    tonic::include_proto!("mailroom.queue.v1");
}
/// `mailroom.delivery.v1`
pub mod delivery {
    tonic::include_proto!("mailroom.delivery.v1");
}

/// The encoded descriptors of every contract, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mailroom_descriptor.bin"));

/// Serves `routes` plus health (each of `names` reported SERVING) and
/// reflection on `listener`, until `shutdown` fires; in-flight calls finish.
pub async fn serve(
    mut routes: RoutesBuilder,
    names: &[&str],
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    routes.add_service(health).add_service(reflection);
    Server::builder()
        .trace_fn(mailroom_telemetry::grpc_server_span)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(
            // Small request/response exchanges must not wait for Nagle's
            // algorithm (a 40 ms tail on every delivery without it).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}
