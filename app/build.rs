//! Generates the client and server glue of the gRPC service `lb.demo.Echo`
//! (`$OUT_DIR/lb.demo.Echo.rs`, included by `src/grpc.rs`) with tonic-build's
//! manual builder: the messages are hand-written prost structs in `src/grpc.rs`,
//! so nothing here needs `protoc`. `proto/echo.proto` describes the same wire
//! contract for clients in other languages (grpcurl, ghz).

use tonic_build::manual::{Builder, Method, MethodBuilder, Service};

/// A method of `lb.demo.Echo`: every one takes `EchoRequest`s and answers
/// `EchoReply`s; streaming is added by the caller.
fn method(name: &str, route: &str) -> MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type("crate::grpc::EchoRequest")
        .output_type("crate::grpc::EchoReply")
        .codec_path("tonic_prost::ProstCodec")
}

fn main() {
    let echo = Service::builder()
        .name("Echo")
        .package("lb.demo")
        .method(method("unary", "Unary").build())
        .method(
            method("server_stream", "ServerStream")
                .server_streaming()
                .build(),
        )
        .method(
            method("client_stream", "ClientStream")
                .client_streaming()
                .build(),
        )
        .method(
            method("bidi", "Bidi")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[echo]);
    println!("cargo:rerun-if-changed=build.rs");
}
