//! TLS on skyhaul's own sockets: the fleet coordinator's API and the relay gateways. Both
//! serve a certificate chain and key from PEM files (`--tls-cert`/`--tls-key`), and their
//! clients trust the system's roots plus, where given, a CA of the user's own (a private or
//! self-signed one). What the two need is here once, so that they load, trust and time out
//! alike.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

pub use rustls::pki_types::CertificateDer;
pub use rustls::{ClientConfig, ServerConfig};
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// How long a peer has to finish its handshake: a client that connects and says nothing is
/// dropped after this, so it cannot hold a server's task (or file descriptor) for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One crypto provider for both sides (aws-lc-rs, as the rest of skyhaul's crypto), chosen
/// here rather than by a process-wide default that another dependency might set first.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration from PEM files: the certificate chain (leaf first) and its key.
/// Errors name the flag and the file, never the key's contents.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    // The key's own error would not say which file: name it, never its contents.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "--tls-key {}: no PEM private key in it ({e})",
            key.display()
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The CA certificates in the PEM file of `flag` (e.g. `--tls-ca`).
pub fn ca_certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    ca_certificates_pem(&pem, &format!("{flag} {}", path.display()))
}

/// The CA certificates in PEM text; `what` says where it came from, for errors.
pub fn ca_certificates_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// A client configuration that trusts the system's roots and `extra_roots`.
pub fn client_config(
    extra_roots: Vec<CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider())
            .map_err(|e| format!("TLS: the system's certificate roots: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server side of a handshake, given up after [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    acceptor: &TlsAcceptor,
    sock: TcpStream,
) -> Result<server::TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
    }
}

/// The client side of a handshake with `host` (a name or an IP address, which the server's
/// certificate must name), given up after [`HANDSHAKE_TIMEOUT`].
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    sock: TcpStream,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .to_owned();
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(name, sock),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

/// The certificate error under an error, if that is what it is: the peer's certificate is
/// not trusted here, which no retry can change. Typed where the chain keeps rustls's error,
/// by its text ("invalid peer certificate: …") where layers in between (an HTTP client, the
/// platform verifier) do not.
pub fn untrusted(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        // `io::Error::source` skips the error it wraps: look at that one too.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(c)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(format!("invalid peer certificate: {c:?}"));
            }
            let text = candidate.to_string();
            if let Some(i) = text.find("invalid peer certificate") {
                return Some(text[i..].to_string());
            }
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn files(
        dir: &Path,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let f = skyhaul_testkit::tls::files(dir, name, &["127.0.0.1"]);
        (f.ca, f.cert, f.key)
    }

    async fn serve_once(
        config: Arc<ServerConfig>,
    ) -> (String, tokio::task::JoinHandle<Result<(), String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let mut tls = accept(&TlsAcceptor::from(config), sock).await?;
            let mut b = [0u8; 5];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            tls.write_all(&b).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_trusted_ca_connects_and_another_is_refused_as_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path(), "good");
        let (other, _, _) = files(dir.path(), "other");
        let server = server_config(&cert, &key, &[]).unwrap();

        let (addr, task) = serve_once(server.clone()).await;
        let roots = ca_certificates(&ca, "--ca").unwrap();
        let client = client_config(roots, &[]).unwrap();
        let sock = TcpStream::connect(&addr).await.unwrap();
        let mut tls = connect(client, "127.0.0.1", sock).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        tls.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");
        task.await.unwrap().unwrap();

        for roots in [Vec::new(), ca_certificates(&other, "--ca").unwrap()] {
            let (addr, task) = serve_once(server.clone()).await;
            let sock = TcpStream::connect(&addr).await.unwrap();
            let e = connect(client_config(roots, &[]).unwrap(), "127.0.0.1", sock)
                .await
                .unwrap_err();
            let why = untrusted(&e).unwrap_or_else(|| panic!("not seen as untrusted: {e}"));
            // No roots: an unknown issuer; another CA of the same name: a bad signature.
            assert!(why.starts_with("invalid peer certificate: "), "{why}");
            assert!(task.await.unwrap().is_err());
        }
        // Any other failure is not a trust problem.
        let e = std::io::Error::other("connection reset");
        assert_eq!(untrusted(&e), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = files(dir.path(), "s");
        let (addr, task) = serve_once(server_config(&cert, &key, &[]).unwrap()).await;
        let _silent = TcpStream::connect(&addr).await.unwrap();
        let e = task.await.unwrap().unwrap_err();
        assert!(e.contains("no TLS handshake within"), "{e}");
    }

    #[test]
    fn bad_files_are_named_and_the_key_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path(), "f");
        let key_text = std::fs::read_to_string(&key).unwrap();
        // A certificate where the key should be: the error names the file only.
        let e = server_config(&cert, &cert, &[]).unwrap_err();
        assert!(
            e.starts_with("--tls-key ") && e.contains("f-cert.pem"),
            "{e}"
        );
        // The key where the certificate should be.
        let e = server_config(&key, &key, &[]).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(!e.contains(&key_text[40..80]), "{e}");
        let e = ca_certificates(&key, "--relay-tls-ca").unwrap_err();
        assert!(
            e.starts_with("--relay-tls-ca ") && !e.contains(&key_text[40..80]),
            "{e}"
        );
        let e = ca_certificates(&dir.path().join("missing.pem"), "--tls-ca").unwrap_err();
        assert!(e.starts_with("--tls-ca "), "{e}");
        assert_eq!(ca_certificates(&ca, "--tls-ca").unwrap().len(), 1);
    }
}
