//! What lb's HTTP/1 path reads requests from and writes responses to: the
//! accepted TCP socket itself, or a connection the front door negotiated
//! (TLS) as a Pingora [`Stream`].
//!
//! A plain connection stays a bare tokio socket for as long as lb's own path
//! serves it: no box, no socket digest and no per-poll time accounting
//! (Pingora's stream keeps all three). That is what an idle kept-alive
//! connection holds, so it is most of lb's memory per idle connection. It
//! becomes Pingora's stream only when the rest of the connection goes to the
//! Pingora path ([`Client::into_stream`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client connection on lb's HTTP/1 path (see the module doc).
pub enum Client {
    /// Plain TCP, nothing between lb and the socket; `peer` is the client
    /// (the PROXY header's source where one was read).
    Tcp { tcp: TcpStream, peer: SocketAddr },
    /// A negotiated connection (TLS).
    Stream(Stream),
}

impl Client {
    /// The client's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Client::Tcp { peer, .. } => Some(*peer),
            Client::Stream(s) => s
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied()),
        }
    }

    /// Whether lb terminated TLS on this connection.
    pub fn is_tls(&self) -> bool {
        match self {
            Client::Tcp { .. } => false,
            Client::Stream(s) => s.get_ssl_digest().is_some(),
        }
    }

    /// The socket, when the connection is plain TCP (long bodies are
    /// spliced to it).
    pub fn tcp_fd(&self) -> Option<RawFd> {
        match self {
            Client::Tcp { tcp, .. } => Some(tcp.as_raw_fd()),
            Client::Stream(_) => None,
        }
    }

    /// The connection as Pingora's stream, with `read` (bytes taken from it
    /// and not consumed) put back in front of the rest, and its peer as lb
    /// saw it: for the Pingora path, or a TLS handshake.
    pub fn into_stream(self, read: &[u8]) -> Option<Stream> {
        match self {
            Client::Tcp { tcp, peer } => {
                let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
                let _ = digest.peer_addr.set(Some(peer.into()));
                let mut s = L4Stream::from(tcp);
                s.set_socket_digest(digest);
                if !read.is_empty() {
                    s.rewind(read);
                }
                Some(Box::new(s))
            }
            Client::Stream(s) if read.is_empty() => Some(s),
            Client::Stream(s) => {
                // Pingora's TCP stream and lb's TLS stream can put bytes
                // back; the front door makes nothing else.
                let any = s.into_any();
                let any = match any.downcast::<L4Stream>() {
                    Ok(mut s) => {
                        s.rewind(read);
                        return Some(s);
                    }
                    Err(other) => other,
                };
                match any.downcast::<super::stream::ClientStream>() {
                    Ok(mut s) => {
                        s.rewind(read);
                        Some(s)
                    }
                    Err(_) => None,
                }
            }
        }
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Tcp { tcp, .. } => Pin::new(tcp).poll_read(cx, buf),
            Client::Stream(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Client::Tcp { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Client::Stream(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Client::Tcp { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Client::Stream(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Client::Tcp { tcp, .. } => tcp.is_write_vectored(),
            Client::Stream(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Tcp { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Client::Stream(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Client::Tcp { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Client::Stream(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
