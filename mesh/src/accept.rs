//! Accepting connections without ever stopping: a server's accept loop outlives any one failed
//! accept.
//!
//! `accept(2)` fails for reasons that concern one connection (`ECONNABORTED`: a peer reset a
//! connection still in the queue, as a peer VM powered off mid-handshake does) or a passing
//! shortage (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`). Returning the error from the loop, as a
//! bare `listener.accept().await?` does, ends the server for good while the port stays open:
//! every later client sees its TLS handshake cut. (A KMS VM test saw exactly that: after its
//! peer powered off, a KMS's attestation endpoint cut every handshake for a minute; with this
//! loop the test passes. The failing accept was not captured.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failure that is not the connection's own (a shortage of file
/// descriptors or memory), so the loop does not spin while it lasts.
const BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`, whatever failed before it.
pub async fn next_connection(listener: &TcpListener, server: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) if connection_error(&e) => {
                tracing::debug!(server, error = %e, "a connection failed before it was accepted");
            }
            Err(e) => {
                tracing::warn!(server, error = %e, "cannot accept a connection now; retrying");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Whether `e` concerns only the connection being accepted.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_told_apart_from_shortages() {
        use std::io::{Error, ErrorKind};
        assert!(connection_error(&Error::from(ErrorKind::ConnectionAborted)));
        assert!(connection_error(&Error::from(ErrorKind::ConnectionReset)));
        assert!(!connection_error(&Error::from_raw_os_error(24))); // EMFILE
        assert!(!connection_error(&Error::from(ErrorKind::OutOfMemory)));
    }
}
