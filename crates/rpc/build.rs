//! Compiles `proto/` with protox (pure Rust): no system `protoc` needed.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../proto");
    let files = [
        "mailroom/admin/v1/admin.proto",
        "mailroom/queue/v1/queue.proto",
        "mailroom/delivery/v1/delivery.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds =
        protox::compile(files, [&root]).unwrap_or_else(|e| panic!("proto compilation failed: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // Reflection serves the same descriptors the code was generated from.
    std::fs::write(
        out.join("mailroom_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .expect("write the descriptor set");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generate gRPC code");
}
