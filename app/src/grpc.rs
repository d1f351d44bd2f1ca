//! The gRPC echo service `lb.demo.Echo`, served over h2c on the app's HTTP port
//! (an axum route, so the fault delay, counters and `x-served-by` apply), and
//! the client lb's integration tests use to call it.
//!
//! Methods (wire contract in `app/proto/echo.proto`):
//! - `Unary`: one [`EchoReply`] with the request's message;
//! - `ServerStream`: `count` replies, `interval_ms` apart;
//! - `ClientStream`: reads every request, then one reply (messages concatenated);
//! - `Bidi`: one reply per request, as each arrives.
//!
//! Every reply names the serving container. A request with a non-zero
//! `fail_code` ends its call with that status and `fail_message` (after a
//! stream's replies, so the status travels in real trailers; a failing `Unary`
//! is a trailers-only response), which lets lb's tests check that
//! `grpc-status`/`grpc-message` pass through.
//!
//! From a test: `app::grpc::connect("http://127.0.0.1:PORT").await?.unary(req)`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::App;

/// Re-exported so lb's tests can name `Code`, `Status`, `Request` and the
/// transport types without a tonic dependency of their own.
pub use tonic;

pub use generated::echo_client::EchoClient;
pub use generated::echo_server::{Echo, EchoServer};

/// The code tonic-build writes from `build.rs` (client and server glue only).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/lb.demo.Echo.rs"));
}

/// Most replies one `ServerStream` call may ask for.
pub const MAX_COUNT: u32 = 10_000;
/// Longest `interval_ms` a `ServerStream` call may ask for.
pub const MAX_INTERVAL_MS: u32 = 60_000;
/// `grpc-message` of a failure asked for without a `fail_message`.
pub const DEFAULT_FAIL_MESSAGE: &str = "injected failure";

/// The request of every method (`lb.demo.EchoRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back in the reply.
    #[prost(string, tag = "1")]
    pub message: String,
    /// `ServerStream`: how many replies, at most [`MAX_COUNT`].
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// `ServerStream`: pause before every reply after the first, at most
    /// [`MAX_INTERVAL_MS`].
    #[prost(uint32, tag = "3")]
    pub interval_ms: u32,
    /// Non-zero: end the call with this gRPC status code (unknown codes count
    /// as `UNKNOWN`) instead of OK.
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    /// The `grpc-message` of that failure; empty: [`DEFAULT_FAIL_MESSAGE`].
    #[prost(string, tag = "5")]
    pub fail_message: String,
}

/// The reply of every method (`lb.demo.EchoReply`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message (`ClientStream`: all of them, concatenated).
    #[prost(string, tag = "1")]
    pub message: String,
    /// The serving app's container id.
    #[prost(string, tag = "2")]
    pub container: String,
    /// Position in the stream, from 0; `ClientStream`: requests read.
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

impl EchoRequest {
    /// A request carrying `message` and nothing else.
    pub fn new(message: impl Into<String>) -> Self {
        EchoRequest {
            message: message.into(),
            ..EchoRequest::default()
        }
    }

    /// The status this request asks to end its call with, if any.
    fn failure(&self) -> Option<Status> {
        if self.fail_code == 0 {
            return None;
        }
        let message = if self.fail_message.is_empty() {
            DEFAULT_FAIL_MESSAGE
        } else {
            &self.fail_message
        };
        Some(Status::new(Code::from_i32(self.fail_code), message))
    }
}

/// The echo client on an h2c channel, as [`connect`] returns it.
pub type Client = EchoClient<tonic::transport::Channel>;

/// Opens an h2c channel to an app (`url` like `http://127.0.0.1:3000`, or lb
/// in front of it) and returns the echo client on it.
pub async fn connect(url: impl Into<String>) -> Result<Client, tonic::transport::Error> {
    EchoClient::connect(url.into()).await
}

/// The `lb.demo.Echo` implementation of one app.
#[derive(Clone)]
pub(crate) struct EchoService {
    app: Arc<App>,
}

/// The streams the streaming methods answer with.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

impl EchoService {
    /// The tower service to route `/lb.demo.Echo/*` to.
    pub(crate) fn server(app: &Arc<App>) -> EchoServer<EchoService> {
        EchoServer::new(EchoService {
            app: Arc::clone(app),
        })
    }

    fn reply(&self, message: String, index: u32) -> EchoReply {
        EchoReply {
            message,
            container: self.app.id.clone(),
            index,
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        match req.failure() {
            Some(status) => Err(status),
            None => Ok(Response::new(self.reply(req.message, 0))),
        }
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let req = req.into_inner();
        if req.count > MAX_COUNT {
            return Err(Status::invalid_argument(format!(
                "count must be at most {MAX_COUNT}"
            )));
        }
        if req.interval_ms > MAX_INTERVAL_MS {
            return Err(Status::invalid_argument(format!(
                "interval_ms must be at most {MAX_INTERVAL_MS}"
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        // A task per call; it ends as soon as the client goes away (send fails).
        tokio::spawn(async move {
            let interval = Duration::from_millis(u64::from(req.interval_ms));
            for index in 0..req.count {
                if index > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                if tx
                    .send(Ok(this.reply(req.message.clone(), index)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(status) = req.failure() {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut stream = req.into_inner();
        let mut joined = String::new();
        let mut read = 0u32;
        let mut failure = None;
        while let Some(item) = stream.message().await? {
            joined.push_str(&item.message);
            read += 1;
            failure = item.failure().or(failure);
        }
        match failure {
            Some(status) => Err(status),
            None => Ok(Response::new(self.reply(joined, read))),
        }
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let this = self.clone();
        let mut index = 0u32;
        let replies = req.into_inner().map(move |item| {
            let item = item?;
            if let Some(status) = item.failure() {
                return Err(status);
            }
            let reply = this.reply(item.message, index);
            index += 1;
            Ok(reply)
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
