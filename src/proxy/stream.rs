//! A client connection after the front door negotiated it: TLS terminated by
//! lb (rustls), or HTTP/2 with prior knowledge on the plain listener (h2c).
//!
//! It is a Pingora [`Stream`] like the accepted TCP one, so lb's HTTP/1 path
//! and Pingora's HTTP/1 and HTTP/2 servers take it unchanged: it reports the
//! negotiated protocol (ALPN) and TLS version to them, and can put bytes
//! already read back in front of the rest (the hand-over, as Pingora's TCP
//! stream's `rewind`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The transport under a [`ClientStream`].
enum Io {
    Tls(Box<tokio_rustls::server::TlsStream<Stream>>),
    Plain(Stream),
}

/// A negotiated client connection (see the module doc).
pub struct ClientStream {
    io: Io,
    /// Bytes put back by [`ClientStream::rewind`], served before `io`'s.
    rewound: Vec<u8>,
    pos: usize,
    alpn: Option<ALPN>,
    ssl: Option<Arc<SslDigest>>,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("tls", &self.ssl.as_ref().map(|d| d.version.clone()))
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl ClientStream {
    /// A TLS connection whose handshake is done.
    pub fn tls(tls: tokio_rustls::server::TlsStream<Stream>) -> ClientStream {
        let conn = tls.get_ref().1;
        let alpn = conn.alpn_protocol().and_then(|p| match p {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        });
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("");
        let ssl = SslDigest::new(cipher, version, None, None, Vec::new());
        ClientStream {
            io: Io::Tls(Box::new(tls)),
            rewound: Vec::new(),
            pos: 0,
            alpn,
            ssl: Some(Arc::new(ssl)),
        }
    }

    /// A plain connection that opened with the HTTP/2 preface (h2c with
    /// prior knowledge); `read` (the bytes taken from it so far) is put back.
    pub fn h2c(stream: Stream, read: &[u8]) -> ClientStream {
        ClientStream {
            io: Io::Plain(stream),
            rewound: read.to_vec(),
            pos: 0,
            alpn: Some(ALPN::H2),
            ssl: None,
        }
    }

    /// Puts `data` back in front of what is still to be read.
    pub fn rewind(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut v = data.to_vec();
        v.extend_from_slice(&self.rewound[self.pos..]);
        self.rewound = v;
        self.pos = 0;
    }

    fn inner(&self) -> &Stream {
        match &self.io {
            Io::Tls(t) => t.get_ref().0,
            Io::Plain(s) => s,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.rewound.len() {
            let n = (this.rewound.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.rewound[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.rewound.len() {
                this.rewound = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(t) => t.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        // TLS: close_notify, then the TCP write side; a peer already gone
        // is not an error worth a line.
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner().id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner().get_timing_digest()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner().get_proxy_digest()
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner().get_socket_digest()
    }
}

#[async_trait]
impl Peek for ClientStream {}
