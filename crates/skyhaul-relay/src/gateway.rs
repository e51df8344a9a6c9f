//! The destination gateway: accepts relay connections, authenticates and reassembles
//! requests, and runs them on the real destination store next to it. The destination's
//! credentials stay here; the wide-area link only ever carries sealed frames.

use crate::codec::Compression;
use crate::key::RelayKey;
use crate::message::{encode, is_request, Assembler, Message};
use crate::rpc::{
    is_own_refusal, md5_bytes, Info, ListPage, ReadAnswer, Request, Response, WireEntry, LIST_PAGE,
    OWN_REFUSAL,
};
use crate::wire::{
    handshake_gateway, read_frame, write_frame, ClientHello, Kind, Opener, Plain, Sealer, MAGIC,
};
use crate::{Reader, Writer};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use skyhaul_store::{Entry, Error, ErrorKind, Payload, Store};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// How long a client may take to set up its connection (TLS and the relay hello) before it
/// is dropped: a silent client holds its task and socket no longer than this.
const HANDSHAKE_TIMEOUT: Duration = skyhaul_tls::HANDSHAKE_TIMEOUT;
/// A message whose other chunks have not come for this long was given up by its sender.
const PARTIAL_EXPIRY: Duration = Duration::from_secs(300);
/// Response bodies (reads) are cut into chunks of this size.
const RESPONSE_CHUNK: usize = 1 << 20;
/// Connections setting up (TLS and the hello) past which each address may have at most
/// [`SETTING_UP_PER_PEER`] of them: a flood of silent connections, which needs no key, is
/// then held to that per address for [`HANDSHAKE_TIMEOUT`] and cannot use up the gateway's
/// open files nor keep senders from other addresses out, while a whole fleet behind one
/// NAT address may still connect at once when nobody floods.
const SETTING_UP_BUSY: usize = 256;
/// See [`SETTING_UP_BUSY`]. IPv6 addresses count by their /64, which one host may hold whole.
const SETTING_UP_PER_PEER: usize = 64;
/// The pause after an `accept` failure for want of descriptors or memory (see
/// [`accept_failed`]).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// After a stop, the longest wait for answers still being written (a client that stopped
/// reading must not keep the gateway, and its bill, alive).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// When a gateway ends by itself, besides a failing listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifetime {
    /// Exit when a client with the transfer key sends [`Request::Stop`] (the coordinator of
    /// a launched fleet, once its transfer is over); without it such a request is refused.
    pub exit_on_stop: bool,
    /// Exit after this long without an authenticated relay connection: the safety net for a
    /// sender that died before it could say stop. Connections that never complete the relay
    /// hello (health probes, scanners) do not count.
    pub idle_exit: Option<Duration>,
}

/// Why [`Gateway::serve`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A client with the transfer key said the transfer is over.
    Stopped,
    /// No relay connection for the [`Lifetime::idle_exit`] given.
    Idle(Duration),
}

/// Relay connections open now, and since when that number last changed.
struct Activity {
    open: usize,
    since: Instant,
}

/// Where the frames of one connection go out, and what its client asked for.
#[derive(Clone)]
struct Outgoing {
    tx: mpsc::Sender<Plain>,
    compression: Compression,
    session: u64,
}

/// A gateway serving one destination store.
pub struct Gateway {
    store: Arc<dyn Store>,
    key: RelayKey,
    /// TLS around every connection, where the gateway has a certificate.
    tls: Option<skyhaul_tls::TlsAcceptor>,
    next_conn: AtomicU64,
    writers: Mutex<HashMap<u64, Outgoing>>,
    assembler: Mutex<Assembler>,
    /// Connections setting up, by peer address ([`SETTING_UP_PER_PEER`]).
    setting_up: Mutex<HashMap<IpAddr, usize>>,
    /// Frames refused (failed authentication, checksum or framing), each closing its
    /// connection; the client sends what was on it again.
    pub rejected: AtomicU64,
    /// Requests run on the store.
    pub requests: AtomicU64,
    lifetime: Lifetime,
    activity: Mutex<Activity>,
    /// Requests being run plus answer frames not yet written: a stop waits for none.
    busy: Arc<AtomicU64>,
    stop: Notify,
    /// Set by an accepted stop: what is in progress is finished, nothing new is started (a
    /// request sent after the stop could be cut off by the exit half-way).
    stopping: AtomicBool,
}

impl Gateway {
    /// A gateway for `store`; with `tls`, clients must connect over TLS (see
    /// [`crate::TLS_ALPN`]).
    pub fn new(
        store: Arc<dyn Store>,
        key: RelayKey,
        tls: Option<Arc<skyhaul_tls::ServerConfig>>,
        lifetime: Lifetime,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            store,
            key,
            tls: tls.map(skyhaul_tls::TlsAcceptor::from),
            next_conn: AtomicU64::new(0),
            writers: Mutex::new(HashMap::new()),
            assembler: Mutex::new(Assembler::default()),
            setting_up: Mutex::new(HashMap::new()),
            rejected: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            lifetime,
            activity: Mutex::new(Activity {
                open: 0,
                since: Instant::now(),
            }),
            busy: Arc::new(AtomicU64::new(0)),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
        })
    }

    /// Accepts connections until its [`Lifetime`] says to end. A failed `accept` (no
    /// descriptor left, a peer that reset first) ends nothing: whoever can reach the port
    /// must not be able to stop the gateway.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Ended {
        loop {
            let idle = match self.lifetime.idle_exit {
                Some(limit) => {
                    let a = lock(&self.activity);
                    if a.open == 0 && a.since.elapsed() >= limit {
                        return Ended::Idle(limit);
                    }
                    // With connections open, look again after a whole period.
                    Some(match a.open {
                        0 => limit.saturating_sub(a.since.elapsed()),
                        _ => limit,
                    })
                }
                None => None,
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) => match SettingUp::enter(&self, peer.ip()) {
                        Some(setting_up) => {
                            crate::tune(&sock, None);
                            tokio::spawn(self.clone().connection(sock, peer, setting_up));
                        }
                        None => tracing::debug!(
                            "relay gateway: closed a connection from {peer}: busy, and \
                             {SETTING_UP_PER_PEER} from there are setting up already"
                        ),
                    },
                    Err(e) => accept_failed(e).await,
                },
                _ = self.stop.notified() => {
                    drop(listener);
                    self.drain().await;
                    return Ended::Stopped;
                }
                _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => {}
            }
        }
    }

    /// Waits until the requests in progress have run and their answers are written (the
    /// stop's own answer among them), for at most [`DRAIN_LIMIT`].
    async fn drain(&self) {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.busy.load(Relaxed) > 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "relay gateway: answers still unwritten after {DRAIN_LIMIT:?}; exiting anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts a relay connection opening (`+1`) or closing (`-1`) for [`Lifetime::idle_exit`].
    fn active(&self, change: isize) {
        let mut a = lock(&self.activity);
        a.open = a.open.saturating_add_signed(change);
        a.since = Instant::now();
    }

    /// TLS where configured, then the relay's hello: the connection's halves and keys.
    async fn set_up(
        &self,
        sock: TcpStream,
    ) -> Result<(ClientHello, Sealer, Opener, Reader, Writer), String> {
        let (rd, wr) = match &self.tls {
            Some(acceptor) => {
                // A client without TLS starts with the relay's hello: say so, rather than
                // leave its operator with a TLS parser's complaint.
                let mut first = [0u8; 4];
                if sock.peek(&mut first).await.is_ok_and(|n| n == 4) && first == MAGIC {
                    return Err("it connected without TLS, and this gateway has --tls-cert (give the sending side --relay-tls or --relay-tls-ca)".into());
                }
                crate::tls_halves(skyhaul_tls::accept(acceptor, sock).await?)
            }
            None => crate::tcp_halves(sock),
        };
        let mut io = tokio::io::join(rd, wr);
        let (client, sealer, opener) = handshake_gateway(&mut io, &self.key)
            .await
            .map_err(|e| e.to_string())?;
        let (rd, wr) = io.into_inner();
        Ok((client, sealer, opener, rd, wr))
    }

    async fn connection(self: Arc<Self>, sock: TcpStream, peer: SocketAddr, setting_up: SettingUp) {
        let set_up = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.set_up(sock)).await;
        drop(setting_up);
        let (client, mut sealer, mut opener, rd, mut wr) = match set_up {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!("relay gateway: refused {peer}: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                        "relay gateway: {peer} did not set up its connection within {HANDSHAKE_TIMEOUT:?}"
                    );
                return;
            }
        };
        let id = self.next_conn.fetch_add(1, Relaxed);
        let over = if self.tls.is_some() { " over TLS" } else { "" };
        tracing::info!("relay gateway: relay connection from {peer}{over}");
        self.active(1);
        let (tx, mut rx) = mpsc::channel::<Plain>(16);
        let writer = Outgoing {
            tx,
            compression: client.compression,
            session: client.session,
        };
        lock(&self.writers).insert(id, writer);
        let busy = self.busy.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let written = write_frame(&mut wr, &sealer.seal(p), !rx.is_empty()).await;
                busy.fetch_sub(1, Relaxed);
                if written.is_err() {
                    break;
                }
            }
            // What is still queued will never be written: it keeps no stop waiting.
            rx.close();
            while rx.try_recv().is_ok() {
                busy.fetch_sub(1, Relaxed);
            }
        });
        let mut rd = BufReader::with_capacity(1 << 20, rd);
        loop {
            let why = match read_frame(&mut rd, &mut opener).await {
                Ok((h, plain, _)) if h.session == client.session && is_request(h.kind) => {
                    let done = lock(&self.assembler).add(&h, plain, id);
                    match done {
                        Ok(Some(msg)) => {
                            self.busy.fetch_add(1, Relaxed);
                            tokio::spawn(self.clone().handle(msg));
                            continue;
                        }
                        Ok(None) => continue,
                        Err(e) => e,
                    }
                }
                Ok(_) => "frame of another session or a response".to_string(),
                Err(e) if e.is_rejection() => e.to_string(),
                Err(e) => {
                    tracing::debug!("relay gateway: {peer} closed: {e}");
                    break;
                }
            };
            self.rejected.fetch_add(1, Relaxed);
            tracing::warn!(
                "relay gateway: rejected a frame from {peer}: {why}; closing the connection (the client sends its requests again)"
            );
            break;
        }
        lock(&self.writers).remove(&id);
        self.active(-1);
    }

    /// Runs one request and queues its answer; `busy` was counted up for it.
    async fn handle(self: Arc<Self>, msg: Message) {
        self.answer(msg).await;
        self.busy.fetch_sub(1, Relaxed);
    }

    async fn answer(&self, msg: Message) {
        self.requests.fetch_add(1, Relaxed);
        let (response, body) = match serde_json::from_slice::<Request>(&msg.meta) {
            Ok(req) => match self.execute(req, msg.body).await {
                Ok((value, body)) => (Response::Ok { value }, body),
                Err(e) => {
                    // This side's set-up is at fault, which only its operator can mend: the
                    // sender sees the error too, but may not run here. The gateway's own
                    // refusals (stopping, another bucket) are the sender's to mend.
                    if !is_own_refusal(&e)
                        && matches!(
                            e.kind,
                            ErrorKind::AccessDenied
                                | ErrorKind::BadCredentials
                                | ErrorKind::Unreachable
                                | ErrorKind::BucketNotFound
                        )
                    {
                        tracing::warn!("relay gateway: {e}");
                    }
                    (Response::from_error(&e), Bytes::new())
                }
            },
            Err(e) => (
                Response::from_error(&Error::new(
                    ErrorKind::Other,
                    format!("relay gateway: unreadable request: {e}"),
                )),
                Bytes::new(),
            ),
        };
        let (writer, spread) = {
            let writers = lock(&self.writers);
            let writer = writers.get(&msg.meta_conn).cloned();
            // A body (a read) goes out over all the client's connections here, as its
            // requests' bodies come in: one read is not bound by one connection's window.
            let mut spread: Vec<(u64, mpsc::Sender<Plain>)> = Vec::new();
            if !body.is_empty() {
                spread = writers
                    .iter()
                    .filter(|(_, w)| w.session == msg.session)
                    .map(|(&id, w)| (id, w.tx.clone()))
                    .collect();
                spread.sort_by_key(|(id, _)| *id);
            }
            (writer, spread)
        };
        // The connection the request came on is gone: the client has sent it again.
        let Some(writer) = writer else {
            return;
        };
        let meta = serde_json::to_vec(&response).expect("responses serialise");
        let compression = writer.compression;
        let frames = tokio::task::spawn_blocking(move || {
            encode(
                Kind::ResponseMeta,
                msg.session,
                msg.stream,
                &meta,
                &body,
                compression,
                RESPONSE_CHUNK,
            )
            .collect::<Vec<_>>()
        })
        .await
        .expect("encoding does not panic");
        for (i, f) in frames.into_iter().enumerate() {
            // The meta frame on the request's connection, the data frames in turn over all,
            // starting at a different one for each message.
            let tx = match i {
                0 => &writer.tx,
                _ => &spread[(msg.stream as usize + i) % spread.len()].1,
            };
            self.busy.fetch_add(1, Relaxed);
            if tx.send(f).await.is_err() {
                self.busy.fetch_sub(1, Relaxed);
                return;
            }
        }
        lock(&self.assembler).expire(PARTIAL_EXPIRY);
    }

    async fn execute(&self, req: Request, body: Bytes) -> skyhaul_store::Result<(Value, Bytes)> {
        if self.stopping.load(Relaxed) && !matches!(req, Request::Stop) {
            tracing::warn!("relay gateway: refused a request that came after the stop");
            // Unreachable, as the gateway soon is: a sender with another gateway retries there.
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!("{OWN_REFUSAL} is stopping (a sender with the transfer key said the transfer is over): it takes no new requests"),
            ));
        }
        let s = &*self.store;
        let none = Bytes::new();
        Ok(match req {
            Request::Info { container } => {
                if !container.is_empty() && container != s.container() {
                    return Err(Error::new(
                        ErrorKind::BucketNotFound,
                        format!(
                            "{OWN_REFUSAL} writes to {}, not to bucket '{container}' (check --relay and the destination)",
                            s.name()
                        ),
                    ));
                }
                let l = s.limits();
                let info = Info {
                    name: s.name().to_string(),
                    container: s.container().to_string(),
                    place: s.place(),
                    min_part_size: l.min_part_size,
                    max_part_size: l.max_part_size,
                    max_parts: l.max_parts,
                    max_single_put: l.max_single_put,
                    etags_are_md5: s.etags_are_md5(),
                    keeps_headers: s.keeps_headers(),
                    lists_by_level: s.lists_by_level(),
                };
                (json!(info), none)
            }
            Request::Preflight { for_write } => {
                s.preflight(for_write).await?;
                (Value::Null, none)
            }
            Request::Head { key } => (json!(s.head(&key).await?), none),
            Request::List {
                prefix,
                start_after,
                by_level,
            } => {
                let mut entries = Vec::new();
                let mut listing = if by_level {
                    s.list_level(&prefix, start_after.as_deref())
                } else {
                    s.list(&prefix, start_after.as_deref())
                        .map(|m| m.map(Entry::Object))
                        .boxed()
                };
                while entries.len() < LIST_PAGE {
                    match listing.next().await {
                        Some(e) => entries.push(WireEntry::from(e?)),
                        None => break,
                    }
                }
                let more = entries.len() == LIST_PAGE;
                (json!(ListPage { entries, more }), none)
            }
            Request::Get { key, range, expect } => {
                let f = s
                    .get(&key, range.map(|(a, b)| a..b), expect.as_ref())
                    .await?;
                let read = ReadAnswer {
                    etag: f.etag,
                    opaque_etag: f.opaque_etag,
                    headers: f.headers,
                    metadata: f.metadata,
                    checksum: f.checksum,
                };
                (json!(read), f.data)
            }
            Request::Put { key, md5, opts } => {
                let payload = Payload {
                    data: body,
                    md5: md5_bytes(md5.as_deref()),
                };
                let w = s.put(&key, payload, &opts).await?;
                (json!(w), none)
            }
            Request::CreateMultipart { key, opts } => {
                (json!(s.create_multipart(&key, &opts).await?), none)
            }
            Request::PutPart { upload, part, md5 } => {
                let payload = Payload {
                    data: body,
                    md5: md5_bytes(md5.as_deref()),
                };
                (json!(s.put_part(&upload, part, payload).await?), none)
            }
            Request::CompleteMultipart {
                upload,
                parts,
                opts,
            } => {
                let w = s.complete_multipart(&upload, &parts, &opts).await?;
                (json!(w), none)
            }
            Request::AbortMultipart { upload } => {
                s.abort_multipart(&upload).await?;
                (Value::Null, none)
            }
            Request::ListUploads { prefix } => (json!(s.list_uploads(&prefix).await?), none),
            Request::Delete { key } => {
                s.delete(&key).await?;
                (Value::Null, none)
            }
            Request::Stop => {
                if !self.lifetime.exit_on_stop {
                    tracing::warn!(
                        "relay gateway: a sender asked it to stop; it keeps serving (it was started without --exit-on-stop)"
                    );
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{OWN_REFUSAL} was started without --exit-on-stop: it keeps serving"
                        ),
                    ));
                }
                tracing::info!(
                    "relay gateway: the transfer is over (stop from a sender with the transfer key); exiting once its answers are written"
                );
                self.stopping.store(true, Relaxed);
                self.stop.notify_one();
                (Value::Null, none)
            }
        })
    }
}
/// `m`, also after a panic while another connection held it: one connection's fault
/// must not stop the gateway serving the others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// After a failed `accept`: said, and unless only that connection failed (its peer reset
/// it first), a pause: descriptors or memory ran out (a flood of connections), and some
/// must close before an `accept` can succeed; an immediate retry would only spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    tracing::warn!("relay gateway: cannot accept a connection: {e}");
    if !matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// One connection from `peer` setting up, counted in [`Gateway::setting_up`] until dropped.
struct SettingUp {
    gateway: Arc<Gateway>,
    peer: IpAddr,
}

impl SettingUp {
    /// Counts one more connection from `peer` setting up, unless the gateway is busy
    /// ([`SETTING_UP_BUSY`]) and [`SETTING_UP_PER_PEER`] from there are already.
    fn enter(gateway: &Arc<Gateway>, peer: IpAddr) -> Option<SettingUp> {
        let peer = match peer {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        };
        let mut counts = lock(&gateway.setting_up);
        let busy = counts.values().sum::<usize>() >= SETTING_UP_BUSY;
        let n = counts.entry(peer).or_default();
        if busy && *n >= SETTING_UP_PER_PEER {
            return None;
        }
        *n += 1;
        Some(SettingUp {
            gateway: gateway.clone(),
            peer,
        })
    }
}

impl Drop for SettingUp {
    fn drop(&mut self) {
        let mut counts = lock(&self.gateway.setting_up);
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}
