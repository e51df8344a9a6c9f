//! Relay mode: the wide-area hop of a transfer as a compressed, encrypted, framed stream
//! between the source side and gateways near the destination.
//!
//! The engine already plans, journals, checksums and verifies a copy over the narrow
//! [`skyhaul_store::Store`] trait, so relay mode is a store: [`RelayStore`] runs on the source
//! side (the `skyhaul cp` process, or fleet workers placed near the source) and turns every
//! store call into a request to a destination [`Gateway`], which runs it on the real
//! destination store beside it. Object bodies cross the link as chunks that are compressed
//! (zstd by default, lz4, or none; a chunk that does not shrink is sent as it is), sealed
//! with AES-256-GCM and spread over K TCP connections per gateway. Egress is paid on what
//! crosses the link, so compressible data costs a fraction; the destination's credentials
//! never leave its side.
//!
//! # Wire protocol, version 2
//!
//! A connection starts with two 32-byte hellos, client first, both in clear:
//! `SKHR`, version (2), role (`C` or `G`), compression code and level (client), the client's
//! session id (8 bytes, random per [`RelayStore`]), 16 random bytes. A gateway answers the
//! hello of a client of another version too, and then closes the connection, so that the
//! client can name both versions (and not retry: nothing will change). Each side then derives
//! the connection key `HKDF-SHA256(salt = client hello ‖ gateway hello, ikm = transfer key,
//! info = "skyhaul-relay v1 connection key")`. The transfer key is 32 random bytes per
//! transfer ([`RelayKey`]), handed out of band.
//!
//! Before any frame both ends prove that they hold the transfer key: the gateway sends
//! 32 bytes derived like the connection key with info `"skyhaul-relay v2 gateway proof"`
//! right after its hello, the client 32 bytes with `"skyhaul-relay v2 client proof"` once
//! it has read that hello, and each checks the other's. A peer with another key is thus
//! named at once, at both ends (version 1 had only the first frame fail, which a sender
//! could not tell from a broken connection); the sender leaves such a gateway out. The
//! proofs are derived for another purpose than the connection key, so they tell nothing
//! of it.
//!
//! Then frames, each a 64-byte [header](wire::Header) followed by `wire_len` bytes of
//! AES-256-GCM ciphertext and its 16-byte tag. The nonce is the direction (4 bytes: 0 towards
//! the gateway, 1 back) and the frame's sequence number on that connection (8 bytes); the
//! whole header is the additional authenticated data. So:
//!
//! - a changed byte anywhere in a frame fails the tag;
//! - a replayed, dropped, reordered or spliced frame fails: the receiver accepts only the
//!   next sequence number of its connection, and another connection has another key;
//! - a recorded connection cannot be replayed to a gateway: the gateway's random half of
//!   the key differs each time.
//!
//! After decryption the chunk is decompressed and checked against the CRC64-NVME of its
//! plaintext in the header: a fault between compression and encryption is caught too. A
//! receiver closes a connection at the first frame it refuses (its framing cannot be
//! trusted after that); the client sends every request that had a frame on it again, to
//! another gateway if there is one.
//!
//! A message (request or response) is a meta frame (its JSON, see [`rpc::Request`]; `total`
//! is the body length) and data frames (`offset`, `total`) that may travel over different
//! connections of the same session and arrive in any order; the receiver reassembles by
//! `(session, stream, offset)`. The gateway sends a response's meta frame on the connection
//! its request's meta frame came on, and the response's data frames (a read's body) in turn
//! over all of that session's connections to it, as the client spreads a request's: one read
//! is not bound by one connection's window. A client therefore accepts response frames on any
//! of its connections to a gateway, and counts a read in flight as lost when any of them
//! breaks (other requests only when a connection that carried their frames does).
//!
//! Every gateway of a transfer must write to one store. A sender asks every gateway what it
//! writes to ([`rpc::Info`]: bucket and [`skyhaul_store::Store::place`]) when it connects:
//! if those that answer disagree, it stops, since it cannot tell which is set up right. One
//! that did not answer then is asked before the first request that reads or writes through
//! it, and left out if it names another store.
//!
//! # Ending a gateway
//!
//! A [`rpc::Request::Stop`] (no body) tells a gateway that the transfer is over. It travels
//! like any request, sealed with the transfer key, so only a holder of the key can send it;
//! a gateway started to exit on it ([`Lifetime::exit_on_stop`]) answers, stops accepting,
//! finishes the requests in progress (a write held up by the store included) and writes their
//! answers, refuses any request that comes after the stop (an `Unreachable` error, which a
//! sender with other gateways retries there) and ends; any other answers with an error and keeps
//! serving (as a gateway from before this request does: it cannot read it). A gateway may
//! also end after a time without relay connections ([`Lifetime::idle_exit`]).
//!
//! # TLS
//!
//! Optionally each connection is a TLS stream (rustls; ALPN [`TLS_ALPN`]) and all of the above
//! runs inside it unchanged: the gateway's certificate is checked against the system's roots
//! and a CA the sender names, and the hellos and frame headers are hidden too. The frames keep
//! their own sealing, so the transfer key still authenticates both ends. A certificate the
//! client does not trust fails its request at once (no retry can change it); a gateway gives a
//! connection [`skyhaul_tls::HANDSHAKE_TIMEOUT`] for TLS and the hello together.

mod client;
pub mod codec;
mod gateway;
mod key;
pub mod message;
mod outbox;
pub mod rpc;
mod stats;
pub mod wire;

pub use client::{stop_gateways, RelayOptions, RelayStore};
pub use codec::Compression;
pub use gateway::{Ended, Gateway, Lifetime};
pub use key::{RelayKey, KEY_ENV};
pub use stats::{RelayCounts, RelayStats, RelaySummary};

/// Default plaintext bytes per frame: large enough that the 80 bytes of header and tag are
/// noise, small enough to spread one part over all connections.
pub const DEFAULT_CHUNK: usize = 1 << 20;

/// The ALPN protocol of a relay connection over TLS: a relay client that reaches some other
/// TLS server (or the reverse) fails at the handshake, not at the first frame.
pub const TLS_ALPN: &[u8] = b"skyhaul-relay/1";

/// The halves of a connection, each driven by its own task: a TCP socket's own halves, or
/// those of a TLS stream over one.
pub(crate) type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

pub(crate) fn tcp_halves(sock: tokio::net::TcpStream) -> (Reader, Writer) {
    let (r, w) = sock.into_split();
    (Box::new(r), Box::new(w))
}

pub(crate) fn tls_halves<S>(stream: S) -> (Reader, Writer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (Box::new(r), Box::new(w))
}

/// Socket settings for a long fat pipe: no Nagle delay on the small request frames, and
/// keep-alives so a peer that vanished without closing its connections (a machine gone) is
/// noticed within about two minutes rather than the kernel's two hours: a gateway's
/// `--idle-exit` waits for its open connections. Buffer sizes are left to the kernel:
/// setting SO_RCVBUF switches Linux's receive autotuning off, and autotuning grows the
/// window to the bandwidth-delay product (up to `net.ipv4.tcp_rmem`) by itself.
///
/// `congestion` is the sender's congestion control ([`congestion_available`] checked it).
pub(crate) fn tune(sock: &tokio::net::TcpStream, congestion: Option<&str>) {
    let _ = sock.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let sock = socket2::SockRef::from(sock);
    let _ = sock.set_tcp_keepalive(&keepalive);
    if let Some(name) = congestion {
        let _ = set_congestion(&sock, name);
    }
}

/// Whether this system lets a socket use congestion control `name` (Linux: built in or
/// loaded, and listed in `net.ipv4.tcp_allowed_congestion_control` for an unprivileged
/// process).
pub fn congestion_available(name: &str) -> std::io::Result<()> {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    set_congestion(&probe, name)
}

#[cfg(target_os = "linux")]
fn set_congestion(sock: &socket2::Socket, name: &str) -> std::io::Result<()> {
    sock.set_tcp_congestion(name.as_bytes())
}

#[cfg(not(target_os = "linux"))]
fn set_congestion(_: &socket2::Socket, _: &str) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relay_connections_use_the_congestion_control_asked_for() {
        // reno and cubic are built into every Linux kernel, and allowed to every process.
        congestion_available("cubic").unwrap();
        assert!(congestion_available("no-such-algorithm").is_err());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for name in ["reno", "cubic"] {
            let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            tune(&sock, Some(name));
            let got = socket2::SockRef::from(&sock).tcp_congestion().unwrap();
            assert_eq!(String::from_utf8_lossy(&got).trim_end_matches('\0'), name);
        }
    }
}
