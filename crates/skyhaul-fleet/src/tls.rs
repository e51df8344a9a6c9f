//! TLS for the coordinator's API, where configured (`--tls-cert`/`--tls-key`): the token
//! then never crosses the network in the clear. Workers trust the system's roots and, with
//! `--tls-ca`, a CA of the user's own (a private or self-signed one).
//!
//! The handshakes run in their own tasks, so that a client that connects and says nothing
//! cannot hold up the others; `axum::serve` sees only finished TLS streams.

use skyhaul_tls::server::TlsStream;
pub use skyhaul_tls::ServerConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A server configuration from PEM files: the certificate chain (leaf first) and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    skyhaul_tls::server_config(cert, key, &[b"http/1.1"])
}

/// The CA certificates of a `--tls-ca` file, for a worker's client.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    skyhaul_tls::ca_certificates(path, "--tls-ca")?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der)
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))
        })
        .collect()
}

/// A listener whose connections are TLS streams, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let addr = tcp.local_addr()?;
        let acceptor = skyhaul_tls::TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    // Out of descriptors and the like: wait rather than spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match skyhaul_tls::accept(&acceptor, stream).await {
                        Ok(tls) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // A plain-HTTP client, a client that does not trust us, a silent
                        // one: its problem, logged for whoever debugs it.
                        Err(e) => tracing::debug!("{peer}: {e}"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            addr,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task is gone only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
