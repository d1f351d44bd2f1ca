//! How an attempt at a backend failed, as a type every path maps its own
//! errors to, and what the request does next. The retry rules (README
//! "When backends fail"):
//!
//! - a pooled connection the backend had already closed ([`Failure::Stale`]:
//!   closed or reset before any response byte) never processed the request:
//!   it is sent again, any method, on a fresh connection to the same backend;
//! - any method goes to another backend when nothing reached the backend
//!   (connect refused or timed out); idempotent ones also after timeouts,
//!   resets and malformed answers; a POST that reached a backend is never
//!   sent twice;
//! - a failure that only shows the backend is gone (refused, or closed before
//!   a response head) does not use up an attempt while an untried backend is
//!   left ([`super::Ctx::backend_gone`]);
//! - lb's own shortage ([`Failure::Local`]) is never charged to the backend.

use super::ctx::Outcome;

/// Why an attempt produced no response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The backend refused the connection (or there was no route to it).
    ConnectRefused,
    /// The connection was not established within `timeouts.connect`.
    ConnectTimeout,
    /// lb could not open a connection for a reason of its own (EMFILE,
    /// ENFILE, EADDRNOTAVAIL, ENOBUFS, ENOMEM): the `errno`.
    Local(i32),
    /// A reused idle connection turned out closed before any response byte.
    Stale,
    /// Writing the request or reading the response head exceeded
    /// `timeouts.response`.
    Timeout,
    /// The connection closed or reset before a whole response head.
    Closed,
    /// The response head was malformed or its framing ambiguous.
    BadResponse,
}

impl Failure {
    /// The connection closed (or reset) before a whole response head: on a
    /// `reused` connection with no response byte (`partial` false) the
    /// backend had closed it idle ([`Failure::Stale`]), else [`Failure::Closed`].
    pub fn closed(reused: bool, partial: bool) -> Failure {
        if reused && !partial {
            Failure::Stale
        } else {
            Failure::Closed
        }
    }

    /// The attempt's outcome for the backend's accounting (`None`: not the
    /// backend's doing, nothing is recorded against it).
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Failure::ConnectRefused | Failure::ConnectTimeout => Some(Outcome::Connect),
            Failure::Local(_) => None,
            Failure::Timeout => Some(Outcome::Timeout),
            Failure::Stale | Failure::Closed | Failure::BadResponse => Some(Outcome::Reset),
        }
    }

    /// A connect error: lb's own shortages (descriptors, local ports,
    /// buffers, memory) are [`Failure::Local`], never the backend's.
    pub fn of_connect(e: &std::io::Error) -> Failure {
        match e.raw_os_error() {
            Some(
                errno @ (libc::EMFILE
                | libc::ENFILE
                | libc::EADDRNOTAVAIL
                | libc::ENOBUFS
                | libc::ENOMEM),
            ) => Failure::Local(errno),
            _ => Failure::ConnectRefused,
        }
    }

    /// Could the backend have processed (part of) the request?
    pub fn reached_backend(self) -> bool {
        !matches!(
            self,
            Failure::ConnectRefused | Failure::ConnectTimeout | Failure::Local(_) | Failure::Stale
        )
    }

    /// Does it only show that the backend cannot answer (refused, or closed
    /// before a response head)? Timeouts and garbage answers are verdicts.
    pub fn backend_gone(self) -> bool {
        matches!(self, Failure::ConnectRefused | Failure::Closed)
    }

    /// Whether it was a timeout (`504` rather than `502` if it is the last).
    pub fn timed_out(self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::Timeout)
    }

    /// The status answered when this failure ends the request.
    pub fn status(self) -> u16 {
        match self {
            Failure::Local(_) => 503,
            f if f.timed_out() => 504,
            _ => 502,
        }
    }

    /// The message of lb's error reply when this failure ends the request.
    pub fn message(self) -> &'static str {
        match self {
            Failure::Local(_) => "local resource shortage",
            f if f.timed_out() => "upstream timed out",
            _ => "upstream failed",
        }
    }

    /// The access log's `error` field (Pingora's error type names).
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::ConnectRefused => "ConnectRefused",
            Failure::ConnectTimeout => "ConnectTimedout",
            Failure::Local(_) => "LocalError",
            Failure::Stale | Failure::Closed => "ConnectionClosed",
            Failure::Timeout => "ReadTimedout",
            Failure::BadResponse => "InvalidHTTPHeader",
        }
    }
}

/// What a request does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send it again to the same backend on a fresh connection.
    Resend,
    /// Go through admission again for another attempt.
    Retry,
    /// Answer the client with this status.
    Answer(u16),
}

/// The decision after `failure`. `reused`: the attempt ran on a pooled
/// connection; `attempts_left`: see [`super::Ctx::attempts_left`].
pub fn after_failure(
    failure: Failure,
    idempotent: bool,
    reused: bool,
    attempts_left: bool,
) -> Next {
    if failure == Failure::Stale && reused {
        return Next::Resend;
    }
    let may_resend = idempotent || !failure.reached_backend();
    if may_resend && attempts_left {
        Next::Retry
    } else {
        Next::Answer(failure.status())
    }
}

/// Is `status` from a backend retried elsewhere? Only one of
/// `retry.statuses`, for an idempotent request, with attempts and an untried
/// backend left, and before anything reached the client.
pub fn retry_status(
    status: u16,
    statuses: &[u16],
    idempotent: bool,
    attempts_left: bool,
    untried_left: bool,
) -> bool {
    statuses.contains(&status) && idempotent && attempts_left && untried_left
}

/// Idempotent methods (RFC 9110 §9.2.2): safe to send again.
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_each_failure() {
        use Failure::*;
        // A stale pooled connection: resent to the same backend, any method.
        assert_eq!(after_failure(Stale, false, true, false), Next::Resend);
        // Nothing reached the backend: any method goes elsewhere.
        for f in [ConnectRefused, ConnectTimeout, Local(24)] {
            assert_eq!(after_failure(f, false, false, true), Next::Retry, "{f:?}");
        }
        // It may have been processed: only idempotent requests go again.
        for f in [Timeout, Closed, BadResponse] {
            assert_eq!(after_failure(f, true, true, true), Next::Retry, "{f:?}");
            assert_eq!(
                after_failure(f, false, true, true),
                Next::Answer(f.status())
            );
        }
        // Out of attempts: answered.
        assert_eq!(
            after_failure(Timeout, true, false, false),
            Next::Answer(504)
        );
        assert_eq!(after_failure(Closed, true, false, false), Next::Answer(502));
        assert_eq!(
            after_failure(Local(24), true, false, false),
            Next::Answer(503)
        );
    }

    #[test]
    fn accounting_of_each_failure() {
        use Failure::*;
        assert_eq!(
            Local(23).outcome(),
            None,
            "lb's own shortage is not the backend's"
        );
        assert_eq!(ConnectRefused.outcome(), Some(Outcome::Connect));
        assert_eq!(Timeout.outcome(), Some(Outcome::Timeout));
        assert!(ConnectRefused.backend_gone() && Closed.backend_gone());
        assert!(!Timeout.backend_gone() && !BadResponse.backend_gone());
        assert!(!Stale.reached_backend() && Closed.reached_backend());
        assert_eq!(Failure::closed(true, false), Stale);
        assert_eq!(Failure::closed(true, true), Closed);
        assert_eq!(Failure::closed(false, false), Closed);
        let io = |errno| std::io::Error::from_raw_os_error(errno);
        assert_eq!(Failure::of_connect(&io(libc::EMFILE)), Local(libc::EMFILE));
        assert_eq!(
            Failure::of_connect(&io(libc::EADDRNOTAVAIL)),
            Local(libc::EADDRNOTAVAIL)
        );
        assert_eq!(Failure::of_connect(&io(libc::ECONNREFUSED)), ConnectRefused);
    }

    #[test]
    fn retry_statuses_only_when_allowed() {
        let s = [502, 503, 504];
        assert!(retry_status(503, &s, true, true, true));
        assert!(!retry_status(500, &s, true, true, true));
        assert!(!retry_status(503, &s, false, true, true), "POST");
        assert!(
            !retry_status(503, &s, true, false, true),
            "no attempts left"
        );
        assert!(!retry_status(503, &s, true, true, false), "nothing untried");
        assert!(idempotent(b"PUT") && !idempotent(b"POST") && !idempotent(b"get"));
    }
}
