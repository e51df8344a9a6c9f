//! [`RelayStore`]: the destination store as seen from the source side. Every call is a
//! request to a gateway near the real destination; bodies go out as compressed, encrypted
//! chunks that the gateway's K connections take from one [`Outbox`] as each is free. A
//! connection that breaks, or a gateway that rejects a frame and closes it, fails only the
//! requests that had frames on it, and those are sent again, through another gateway when
//! there is one.

use crate::codec::Compression;
use crate::key::RelayKey;
use crate::message::{encode, is_request, Assembler, Message};
use crate::outbox::Outbox;
use crate::rpc::{
    is_own_refusal, md5_hex, Info, ListPage, ReadAnswer, Request, Response, WireEntry,
};
use crate::stats::{RelayStats, RelaySummary};
use crate::wire::{handshake_client, read_frame, write_frame, ClientHello, Kind, WireError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use skyhaul_store::{
    CompletedPart, Entry, Error, ErrorKind, Fetched, Limits, MultipartUpload, ObjectMeta, PartSpec,
    Payload, PutOptions, Result, Store, Written,
};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// Tries of one request (over all gateways) before the engine sees an error.
const ATTEMPTS: u32 = 6;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A gateway that could not be reached is skipped for this long.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The wait for an answer: this, plus a second per MiB queued for the gateway when the
/// request's frames were (its own and those sent before it: a very slow link).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one try of a request failed.
enum TryError {
    /// Worth another try: another connection, another gateway, a gateway back up.
    Again(String),
    /// The gateway's TLS certificate is not trusted here, which no retry changes.
    Untrusted(String),
    /// The gateway cannot serve this transfer, which no retry changes either: it speaks
    /// another relay protocol version, holds another transfer key, or writes to another
    /// store than the others. It is left out; the error kind is for when all are.
    LeftOut(ErrorKind, String),
}

impl From<String> for TryError {
    fn from(e: String) -> Self {
        TryError::Again(e)
    }
}

impl From<&str> for TryError {
    fn from(e: &str) -> Self {
        TryError::Again(e.to_string())
    }
}

/// How to reach the destination gateways.
#[derive(Clone)]
pub struct RelayOptions {
    /// `host:port` of each destination gateway.
    pub gateways: Vec<String>,
    /// TCP connections per gateway (at most 64).
    pub connections: usize,
    pub compression: Compression,
    /// Plaintext bytes per frame.
    pub chunk_size: usize,
    pub key: RelayKey,
    /// The bucket the transfer writes to; the gateway must serve it.
    pub container: String,
    /// TLS around every connection (the gateways then need a certificate), on top of the
    /// frames' own encryption: the hellos and frame headers are hidden too.
    pub tls: Option<Arc<skyhaul_tls::ClientConfig>>,
    /// The name every gateway's certificate must carry, instead of the host dialed: for
    /// gateways known by addresses no certificate could name in advance (a cloud's IPs).
    pub tls_name: Option<String>,
    /// TCP congestion control of the connections (`None`: the system's default).
    pub congestion: Option<String>,
}

impl fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayOptions")
            .field("gateways", &self.gateways)
            .field("connections", &self.connections)
            .field("compression", &self.compression)
            .field("tls", &self.tls.is_some())
            .field("tls_name", &self.tls_name)
            .field("congestion", &self.congestion)
            .finish_non_exhaustive()
    }
}

/// The destination store, reached through relay gateways.
pub struct RelayStore {
    shared: Arc<Shared>,
    info: Info,
    name: String,
}

impl fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayStore")
            .field("name", &self.name)
            .field("gateways", &self.shared.opts.gateways)
            .finish()
    }
}

struct Shared {
    opts: RelayOptions,
    session: u64,
    next_stream: AtomicU64,
    next_link: AtomicUsize,
    links: Vec<Link>,
    stats: Arc<RelayStats>,
    /// What the gateways that answered at connect time agreed they write to; every other
    /// must write to the same store, or a share of the objects would land elsewhere.
    destination: std::sync::OnceLock<Destination>,
}

/// A gateway's destination store, as its [`Info`] names it. Two are the same store when
/// their place ([`skyhaul_store::Store::place`]: kind, endpoint, account) and bucket are,
/// whatever the names say (`az://c` and its https URL); a store without a place (a file
/// system) is known by its name.
#[derive(Debug, Clone)]
struct Destination {
    name: String,
    container: String,
    place: Option<String>,
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Destination {
    /// What tells two stores apart: place (else name) and bucket.
    fn identity(&self) -> (&str, &str) {
        (self.place.as_deref().unwrap_or(&self.name), &self.container)
    }

    fn of(info: &Info) -> Destination {
        Destination {
            name: info.name.clone(),
            container: info.container.clone(),
            place: info.place.clone(),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match &self.place {
            // `s3|https://host` reads as `at s3 https://host`.
            Some(place) => write!(f, " at {}", place.replace('|', " ")),
            None => Ok(()),
        }
    }
}

/// One gateway: its connections and the requests waiting for its answers.
struct Link {
    addr: String,
    conns: tokio::sync::Mutex<Vec<Option<Arc<Conn>>>>,
    /// Open connections; when the last one ends, no queued frame can leave.
    live: Arc<AtomicUsize>,
    outbox: Arc<Outbox>,
    /// Dropped with the link (the store): its connections' writers, which otherwise wait on
    /// the outbox for ever, then end and close their side.
    closed: tokio::sync::watch::Sender<()>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    assembler: Arc<Mutex<Assembler>>,
    down_until: Mutex<Option<Instant>>,
    /// Why the gateway cannot serve this transfer ([`TryError::LeftOut`]), once found: it
    /// is not used again. The others may (one gateway of another version during an
    /// upgrade, one started with another key or destination by mistake).
    left_out: std::sync::OnceLock<(ErrorKind, String)>,
    /// Set once the gateway has said that it writes to [`Shared::destination`].
    checked: tokio::sync::OnceCell<()>,
    /// A request is asking it that: others go to other gateways rather than queue behind
    /// the question, one after another, should the gateway not answer.
    checking: AtomicBool,
    /// The last handshake failed its key proof. One failure may be a byte flipped on the
    /// way (the proofs cover both hellos); a second with no success between means another
    /// key.
    key_refused: AtomicBool,
}

struct Conn {
    alive: Arc<AtomicBool>,
}

struct Waiter {
    /// Bit i: a frame of this request went over connection i (set by the connection's
    /// writer as it takes the frame).
    mask: u64,
    tx: oneshot::Sender<Message>,
}

/// What a connection's writer does with a frame it took from the outbox.
enum Claim {
    Send,
    /// Its request has failed or been answered already.
    Skip,
    /// The connection has ended: the request is failed, as it would have been had the frame
    /// gone out a moment earlier.
    Dead,
}

/// Marks `stream`'s request as having a frame on connection `index`. Under the waiters' lock,
/// as a connection's end clears the requests with frames on it under the same lock: a
/// request is either marked before the end and cleared by it, or sees the end here.
fn claim(
    waiters: &Mutex<HashMap<u64, Waiter>>,
    alive: &AtomicBool,
    stream: u64,
    index: usize,
) -> Claim {
    let mut waiters = waiters.lock().unwrap();
    if !alive.load(Relaxed) {
        waiters.remove(&stream);
        return Claim::Dead;
    }
    match waiters.get_mut(&stream) {
        Some(w) => {
            w.mask |= 1 << index;
            Claim::Send
        }
        None => Claim::Skip,
    }
}

/// Tells every gateway of `opts` that the transfer is over ([`Request::Stop`]), each over
/// connections of its own; gateways started with `--exit-on-stop` then exit. Returns each
/// gateway's address with its answer (an error when it refused or could not be reached).
pub async fn stop_gateways(opts: RelayOptions) -> Vec<(String, Result<()>)> {
    // One connection each is enough for one small request.
    let shared = Shared::new(RelayOptions {
        connections: 1,
        ..opts
    });
    let stops = shared.links.iter().map(|link| async {
        let answer = shared.call_via(&Request::Stop, Bytes::new(), Some(link));
        (link.addr.clone(), answer.await.map(drop))
    });
    futures::future::join_all(stops).await
}

impl Shared {
    fn new(opts: RelayOptions) -> Arc<Shared> {
        let mut session = [0u8; 8];
        crate::key::random(&mut session);
        let links = opts
            .gateways
            .iter()
            .map(|addr| Link {
                addr: addr.clone(),
                conns: tokio::sync::Mutex::new(vec![None; opts.connections.clamp(1, 64)]),
                live: Arc::default(),
                outbox: Arc::default(),
                closed: tokio::sync::watch::channel(()).0,
                waiters: Arc::default(),
                assembler: Arc::default(),
                down_until: Mutex::new(None),
                left_out: std::sync::OnceLock::new(),
                checked: tokio::sync::OnceCell::new(),
                checking: AtomicBool::new(false),
                key_refused: AtomicBool::new(false),
            })
            .collect();
        Arc::new(Shared {
            session: u64::from_be_bytes(session),
            next_stream: AtomicU64::new(1),
            next_link: AtomicUsize::new(0),
            links,
            stats: Arc::new(RelayStats::with_connections(opts.connections.clamp(1, 64))),
            destination: std::sync::OnceLock::new(),
            opts,
        })
    }
}

impl RelayStore {
    /// Connects to the gateways and asks what they serve.
    pub async fn connect(opts: RelayOptions) -> Result<RelayStore> {
        if opts.gateways.is_empty() {
            return Err(Error::new(ErrorKind::Other, "--relay: no gateway address"));
        }
        let shared = Shared::new(opts);
        let info = match shared.agree().await? {
            Some(info) => info,
            // None answered at once: the same question with retries, which says why.
            None => {
                let container = shared.opts.container.clone();
                let (value, _) = shared
                    .call(&Request::Info { container }, Bytes::new())
                    .await?;
                parse(value)?
            }
        };
        let _ = shared.destination.set(Destination::of(&info));
        Ok(RelayStore {
            name: format!("{} (via relay)", info.name),
            shared,
            info,
        })
    }

    /// The byte counts so far.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.shared.stats.clone()
    }

    /// The byte counts so far, with the compression they were made with.
    pub fn summary(&self) -> RelaySummary {
        self.shared
            .stats
            .summary(self.shared.opts.compression.to_string())
    }

    async fn call_parse<T: DeserializeOwned>(&self, req: Request, body: Bytes) -> Result<T> {
        let (value, _) = self.shared.call(&req, body).await?;
        parse(value)
    }

    fn list_pages<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        by_level: bool,
    ) -> BoxStream<'a, Result<Entry>> {
        let first = (start_after.map(str::to_string), true);
        futures::stream::try_unfold(first, move |(after, more)| async move {
            if !more {
                return Ok(None);
            }
            let req = Request::List {
                prefix: prefix.to_string(),
                start_after: after,
                by_level,
            };
            let page: ListPage = self.call_parse(req, Bytes::new()).await?;
            let last = page.entries.last().map(|e| match e {
                WireEntry::Object(m) => m.key.clone(),
                WireEntry::Prefix(p) => p.clone(),
            });
            let more = page.more && last.is_some();
            let entries = page.entries.into_iter().map(|e| Ok(Entry::from(e)));
            Ok(Some((futures::stream::iter(entries), (last, more))))
        })
        .try_flatten()
        .boxed()
    }
}

fn parse<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        Error::new(
            ErrorKind::Other,
            format!("relay: unexpected answer from the gateway: {e}"),
        )
    })
}

impl Shared {
    /// Sends `req` until a gateway answers it; the answer may still be the store's error.
    async fn call(&self, req: &Request, body: Bytes) -> Result<(Value, Bytes)> {
        self.call_via(req, body, None).await
    }

    /// [`Shared::call`], through `only` this gateway when given.
    async fn call_via(
        &self,
        req: &Request,
        body: Bytes,
        only: Option<&Link>,
    ) -> Result<(Value, Bytes)> {
        let meta = serde_json::to_vec(req).expect("requests serialise");
        // Only a read is answered with a body, which the gateway spreads over all connections.
        let read = matches!(req, Request::Get { .. });
        let op = op_name(req);
        let mut last = String::new();
        // No gateway can serve this transfer: nothing to try.
        if let Some((kind, why)) = self.all_left_out() {
            return Err(Error::new(kind, format!("relay: {why}")));
        }
        // Only what reads or writes the store needs the gateway to write where the others do.
        let touches_store = !matches!(req, Request::Info { .. } | Request::Stop);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                RelayStats::add(&self.stats.resent, 1);
                let backoff = Duration::from_millis(50 << attempt.min(5));
                tokio::time::sleep(backoff).await;
            }
            let link = only.unwrap_or_else(|| self.pick(attempt));
            let tried = match touches_store {
                true => self.check(link).await,
                false => Ok(()),
            };
            let tried = match tried {
                Ok(()) => self.try_call(link, &meta, &body, read).await,
                Err(e) => Err(e),
            };
            match tried {
                Ok(msg) => return answer(msg).map_err(|e| from_gateway(e, link)),
                Err(TryError::Untrusted(why)) => return Err(untrusted(link, &why)),
                Err(TryError::LeftOut(kind, why)) => {
                    let first = link.left_out.set((kind, why.clone())).is_ok();
                    last = format!("gateway {}: {why}", link.addr);
                    if only.is_some() || self.all_left_out().is_some() {
                        return Err(Error::new(kind, format!("relay: {last}")));
                    }
                    if first {
                        tracing::warn!("relay: {last}; sending through the other gateways");
                    }
                }
                Err(TryError::Again(e)) => {
                    tracing::warn!(
                        "relay: {op} via gateway {}: {e}; sending it again",
                        link.addr
                    );
                    last = format!("gateway {}: {e}", link.addr);
                }
            }
        }
        Err(Error::new(
            ErrorKind::Unreachable,
            format!(
                "relay: no gateway answered {op} after {ATTEMPTS} tries (last: {last}); check that the gateways run, have the same {}, and use TLS (--tls-cert) exactly when this side does (--relay-tls)",
                crate::KEY_ENV
            ),
        ))
    }

    /// Why no gateway can be used, when every one is left out: the last one's reason.
    fn all_left_out(&self) -> Option<(ErrorKind, String)> {
        let mut why = None;
        for l in &self.links {
            let (kind, reason) = l.left_out.get()?;
            why = Some((*kind, format!("gateway {}: {reason}", l.addr)));
        }
        why
    }

    /// Asks every gateway at once what it writes to: those that answer must all write to
    /// one store, else the transfer stops before anything is written (which of them is set
    /// up right, this side cannot tell). One that serves another bucket than the
    /// transfer's is left out. Those that do not answer now are asked before their first
    /// use ([`Shared::check`]). `None` when no gateway answered.
    async fn agree(&self) -> Result<Option<Info>> {
        let asked = futures::future::join_all(self.links.iter().map(|l| self.ask(l))).await;
        let mut answered: Vec<(&Link, Info)> = Vec::new();
        for (link, asked) in self.links.iter().zip(asked) {
            match asked {
                Ok(info) => answered.push((link, info)),
                Err(TryError::Untrusted(why)) => return Err(untrusted(link, &why)),
                Err(TryError::LeftOut(kind, why)) => {
                    tracing::warn!("relay: gateway {}: {why}; left out", link.addr);
                    let _ = link.left_out.set((kind, why));
                }
                Err(TryError::Again(_)) => {}
            }
        }
        let Some((first, info)) = answered.first() else {
            return Ok(None);
        };
        let want = Destination::of(info);
        if let Some((other, found)) = answered.iter().find(|(_, i)| Destination::of(i) != want) {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "relay: the gateways write to different stores: {} to {want}, {} to {}; start every gateway with the same destination, endpoint spelling included",
                    first.addr,
                    other.addr,
                    Destination::of(found)
                ),
            ));
        }
        for (link, _) in &answered {
            let _ = link.checked.set(());
        }
        Ok(Some(info.clone()))
    }

    /// One try of asking `link`'s gateway what it writes to. A gateway that serves another
    /// bucket than the transfer's cannot serve it.
    async fn ask(&self, link: &Link) -> std::result::Result<Info, TryError> {
        let req = Request::Info {
            container: self.opts.container.clone(),
        };
        let meta = serde_json::to_vec(&req).expect("requests serialise");
        let msg = self.try_call(link, &meta, &Bytes::new(), false).await?;
        match answer(msg) {
            Ok((value, _)) => parse(value).map_err(|e| TryError::Again(e.message)),
            // The error names the bucket it serves.
            Err(e) if e.kind == ErrorKind::BucketNotFound => {
                Err(TryError::LeftOut(e.kind, e.message))
            }
            Err(e) => Err(TryError::Again(e.message)),
        }
    }

    /// Asks `link`'s gateway what it writes to, once, before anything that reads or writes
    /// the store goes through it, when it did not answer at connect time: one started with
    /// another endpoint, account or bucket would otherwise get its share of the objects.
    async fn check(&self, link: &Link) -> std::result::Result<(), TryError> {
        let Some(want) = self.destination.get() else {
            return Ok(());
        };
        link.checked
            .get_or_try_init(|| async {
                // Found by a request queued ahead of this one.
                if let Some((kind, why)) = link.left_out.get() {
                    return Err(TryError::LeftOut(*kind, why.clone()));
                }
                let _checking = Raised::new(&link.checking);
                let found = Destination::of(&self.ask(link).await?);
                match found == *want {
                    true => Ok(()),
                    false => Err(TryError::LeftOut(
                        ErrorKind::Other,
                        format!("it writes to {found}, this transfer to {want}: start every gateway with the same destination"),
                    )),
                }
            })
            .await
            .map(drop)
    }

    /// The next gateway in turn that is not known to be down nor being asked what it writes
    /// to (else one not down; any, if all are), of those that can serve this transfer.
    fn pick(&self, attempt: u32) -> &Link {
        let n = self.links.len();
        let start = self.next_link.fetch_add(1, Relaxed) + attempt as usize;
        let now = Instant::now();
        let usable = || {
            (0..n)
                .map(move |i| &self.links[(start + i) % n])
                .filter(|l| l.left_out.get().is_none())
        };
        let up = |l: &&Link| l.down_until.lock().unwrap().is_none_or(|t| t <= now);
        usable()
            .find(|l| up(l) && !l.checking.load(Relaxed))
            .or_else(|| usable().find(up))
            .or_else(|| usable().next())
            .unwrap_or(&self.links[start % n])
    }

    async fn try_call(
        &self,
        link: &Link,
        meta: &[u8],
        body: &Bytes,
        read: bool,
    ) -> std::result::Result<Message, TryError> {
        if let Err(e) = link.connect(self).await {
            *link.down_until.lock().unwrap() = Some(Instant::now() + DOWN_FOR);
            return Err(e);
        }
        let stream = self.next_stream.fetch_add(1, Relaxed);
        // A read's answer may come over any connection: losing any of them loses it.
        let mask = if read { u64::MAX } else { 0 };
        let (tx, rx) = oneshot::channel();
        link.waiters
            .lock()
            .unwrap()
            .insert(stream, Waiter { mask, tx });
        // The wait allows for this body and for what is queued ahead of it, at a MiB/s.
        let wait = ANSWER_TIMEOUT
            + Duration::from_secs((body.len() + link.outbox.queued_bytes()) as u64 >> 20);
        // Each frame is queued as soon as it is compressed: the connections start on a
        // large body while the rest of it is compressed. A request that failed meanwhile (its
        // connection ended) stops there.
        let (meta, body) = (meta.to_vec(), body.clone());
        let (session, comp, chunk) = (self.session, self.opts.compression, self.opts.chunk_size);
        let (outbox, stats, waiters) = (
            link.outbox.clone(),
            self.stats.clone(),
            link.waiters.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let frames = encode(
                Kind::RequestMeta,
                session,
                stream,
                &meta,
                &body,
                comp,
                chunk,
            );
            for f in frames {
                if !waiters.lock().unwrap().contains_key(&stream) {
                    outbox.remove(stream);
                    return;
                }
                RelayStats::add(&stats.logical_sent, f.header.plain_len as usize);
                outbox.push(f);
            }
        })
        .await
        .expect("encoding does not panic");
        // The gateway's last connection ended since `connect`: nothing will send the frames.
        // (Once this sees one open, its end fails the request in turn.)
        if link.live.load(Relaxed) == 0 {
            link.abandon(stream);
            return Err("connection closed while sending".into());
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err("connection lost before the answer".into()),
            Err(_) => {
                link.abandon(stream);
                Err(format!("no answer within {wait:?}").into())
            }
        }
    }
}

fn op_name(req: &Request) -> String {
    let v = serde_json::to_value(req).unwrap_or_default();
    let op = v.get("op").and_then(Value::as_str).unwrap_or("request");
    match v.get("key").and_then(Value::as_str) {
        Some(key) => format!("{op} '{key}'"),
        None => op.to_string(),
    }
}

fn answer(msg: Message) -> Result<(Value, Bytes)> {
    match serde_json::from_slice::<Response>(&msg.meta) {
        Ok(Response::Ok { value }) => Ok((value, msg.body)),
        Ok(Response::Err { kind, message }) => Err(Error::new(kind, message)),
        Err(e) => Err(Error::new(
            ErrorKind::Other,
            format!("relay: unreadable answer from the gateway: {e}"),
        )),
    }
}

/// A flag raised while it lives, lowered also when its future is dropped half-way.
struct Raised<'a>(&'a AtomicBool);

impl<'a> Raised<'a> {
    fn new(flag: &'a AtomicBool) -> Raised<'a> {
        flag.store(true, Relaxed);
        Raised(flag)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

fn untrusted(link: &Link, why: &str) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        format!(
            "relay: gateway {} presented a certificate this side does not trust ({why}): pass its CA with --relay-tls-ca",
            link.addr
        ),
    )
}

/// Names the gateway in an error its store gave that is about how the gateway was set up
/// (its credentials, endpoint or bucket): the sender's `--dst-*` flags, which its hints
/// would name, do not reach it.
fn from_gateway(e: Error, link: &Link) -> Error {
    let set_up = matches!(
        e.kind,
        ErrorKind::AccessDenied | ErrorKind::BadCredentials | ErrorKind::Unreachable
    );
    // A bucket the gateway does not serve, or the gateway stopping, is not about its set-up:
    // its own message says what to do.
    if !set_up || is_own_refusal(&e) {
        return e;
    }
    Error::new(
        e.kind,
        format!(
            "relay: gateway {}: {} (the gateway's destination: check the credentials, endpoint and bucket it was started with)",
            link.addr, e.message
        ),
    )
}

impl Link {
    /// Gives up on request `stream`: no answer is awaited and its frames not yet sent go.
    fn abandon(&self, stream: u64) {
        self.waiters.lock().unwrap().remove(&stream);
        self.outbox.remove(stream);
    }

    /// Opens the connections that are missing or broken; fails when none is open.
    async fn connect(&self, shared: &Shared) -> std::result::Result<(), TryError> {
        let mut conns = self.conns.lock().await;
        let missing: Vec<usize> = (0..conns.len())
            .filter(|&i| conns[i].as_ref().is_none_or(|c| !c.alive.load(Relaxed)))
            .collect();
        let opened = futures::future::join_all(missing.iter().map(|&i| self.open(shared, i))).await;
        let mut last = None;
        for (&i, r) in missing.iter().zip(opened) {
            match r {
                Ok(c) => conns[i] = Some(Arc::new(c)),
                Err(e @ (TryError::Untrusted(_) | TryError::LeftOut(..))) => return Err(e),
                Err(e) => {
                    conns[i] = None;
                    last = Some(e);
                }
            }
        }
        match (conns.iter().all(Option::is_none), last) {
            (true, Some(e)) => Err(e),
            (true, None) => Err("no connection".into()),
            _ => Ok(()),
        }
    }

    async fn open(&self, shared: &Shared, index: usize) -> std::result::Result<Conn, TryError> {
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("connect: {e}"))?;
        crate::tune(&sock, shared.opts.congestion.as_deref());
        let (rd, wr) = match &shared.opts.tls {
            Some(config) => {
                let dialed = self.addr.rsplit_once(':').map_or(&*self.addr, |(h, _)| h);
                let host = shared.opts.tls_name.as_deref().unwrap_or(dialed);
                let tls = skyhaul_tls::connect(config.clone(), host, sock)
                    .await
                    .map_err(|e| match skyhaul_tls::untrusted(&e) {
                        Some(why) => TryError::Untrusted(why),
                        None => TryError::Again(format!("TLS: {e}")),
                    })?;
                crate::tls_halves(tls)
            }
            None => crate::tcp_halves(sock),
        };
        let hello = ClientHello {
            session: shared.session,
            compression: shared.opts.compression,
        };
        let mut io = tokio::io::join(rd, wr);
        let (mut sealer, mut opener) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            handshake_client(&mut io, &shared.opts.key, hello),
        )
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| match e {
            WireError::Version(_) => {
                TryError::LeftOut(ErrorKind::Unreachable, format!("handshake: {e}"))
            }
            WireError::Key if self.key_refused.swap(true, Relaxed) => {
                TryError::LeftOut(ErrorKind::BadCredentials, format!("handshake: {e}"))
            }
            e => TryError::Again(format!("handshake: {e}")),
        })?;
        self.key_refused.store(false, Relaxed);
        let (rd, mut wr) = io.into_inner();
        let alive = Arc::new(AtomicBool::new(true));
        let dead = Arc::new(Notify::new());
        self.live.fetch_add(1, Relaxed);
        // Run by whichever of the connection's two tasks stops first: fails the requests
        // with frames on it, or all of them when it was the gateway's last connection.
        let ended = {
            let (alive, dead, live) = (alive.clone(), dead.clone(), self.live.clone());
            let (waiters, outbox) = (self.waiters.clone(), self.outbox.clone());
            move || {
                if alive.swap(false, Relaxed) {
                    dead.notify_one();
                    // Under the waiters' lock, as a request's waiter goes in under it after
                    // its `connect`: none slips in between this count and the clearing.
                    let mut waiters = waiters.lock().unwrap();
                    let last = live.fetch_sub(1, Relaxed) == 1;
                    waiters.retain(|_, w| !last && w.mask & (1 << index) == 0);
                    if last {
                        // Their requests just failed; the frames would hold their memory
                        // until the gateway is back.
                        outbox.clear();
                    }
                }
            }
        };
        let stats = shared.stats.clone();
        let (outbox, waiters) = (self.outbox.clone(), self.waiters.clone());
        let (alive_w, ended_w) = (alive.clone(), ended.clone());
        let mut closed = self.closed.subscribe();
        tokio::spawn(async move {
            loop {
                let p = tokio::select! {
                    biased;
                    _ = dead.notified() => break,
                    _ = closed.changed() => break,
                    p = outbox.take() => p,
                };
                match claim(&waiters, &alive_w, p.header.stream, index) {
                    Claim::Send => {}
                    Claim::Skip => continue,
                    Claim::Dead => break,
                }
                let bytes = sealer.seal(p);
                // Flushed every time: the next frame may go out on another connection.
                if write_frame(&mut wr, &bytes, false).await.is_err() {
                    break;
                }
                RelayStats::add(&stats.wire_sent, bytes.len());
            }
            ended_w();
            // Tells the gateway (a FIN, or TLS's close_notify): it closes its side, and this
            // connection's reader ends.
            let _ = tokio::time::timeout(Duration::from_secs(5), wr.shutdown()).await;
        });
        let (stats, waiters, assembler) = (
            shared.stats.clone(),
            self.waiters.clone(),
            self.assembler.clone(),
        );
        let (session, addr) = (shared.session, self.addr.clone());
        tokio::spawn(async move {
            let mut rd = BufReader::with_capacity(1 << 20, rd);
            loop {
                let why = match read_frame(&mut rd, &mut opener).await {
                    Ok((h, plain, n)) if h.session == session && !is_request(h.kind) => {
                        RelayStats::add(&stats.wire_received, n);
                        if let Some(c) = stats.wire_received_by_connection.get(index) {
                            RelayStats::add(c, n);
                        }
                        RelayStats::add(&stats.logical_received, plain.len());
                        match assembler.lock().unwrap().add(&h, plain, index as u64) {
                            Ok(Some(msg)) => {
                                if let Some(w) = waiters.lock().unwrap().remove(&msg.stream) {
                                    let _ = w.tx.send(msg);
                                }
                                continue;
                            }
                            Ok(None) => continue,
                            Err(e) => e,
                        }
                    }
                    Ok(_) => "frame of another session or a request".to_string(),
                    Err(e) if e.is_rejection() => e.to_string(),
                    Err(_) => break,
                };
                RelayStats::add(&stats.rejected, 1);
                tracing::warn!("relay: rejected a frame from gateway {addr}: {why}");
                break;
            }
            ended();
        });
        Ok(Conn { alive })
    }
}

#[async_trait::async_trait]
impl Store for RelayStore {
    async fn preflight(&self, for_write: bool) -> Result<()> {
        self.call_parse::<Value>(Request::Preflight { for_write }, Bytes::new())
            .await
            .map(drop)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn limits(&self) -> Limits {
        self.info.limits()
    }

    fn keeps_headers(&self) -> bool {
        self.info.keeps_headers
    }

    fn etags_are_md5(&self) -> bool {
        self.info.etags_are_md5
    }

    fn container(&self) -> &str {
        &self.info.container
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        self.list_pages(prefix, start_after, false)
            .try_filter_map(|e| async move { Ok(e.into_object()) })
            .boxed()
    }

    fn lists_by_level(&self) -> bool {
        self.info.lists_by_level
    }

    fn list_level<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> BoxStream<'a, Result<Entry>> {
        self.list_pages(prefix, start_after, true)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let key = key.to_string();
        self.call_parse(Request::Head { key }, Bytes::new()).await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        expect: Option<&ObjectMeta>,
    ) -> Result<Fetched> {
        let req = Request::Get {
            key: key.to_string(),
            range: range.map(|r| (r.start, r.end)),
            expect: expect.cloned(),
        };
        let (value, data) = self.shared.call(&req, Bytes::new()).await?;
        let read: ReadAnswer = parse(value)?;
        Ok(Fetched {
            data,
            etag: read.etag,
            opaque_etag: read.opaque_etag,
            headers: read.headers,
            metadata: read.metadata,
            checksum: read.checksum,
        })
    }

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<Written> {
        let req = Request::Put {
            key: key.to_string(),
            md5: md5_hex(body.md5),
            opts: opts.clone(),
        };
        let (value, _) = self.shared.call(&req, body.data).await?;
        parse(value)
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<MultipartUpload> {
        let req = Request::CreateMultipart {
            key: key.to_string(),
            opts: opts.clone(),
        };
        self.call_parse(req, Bytes::new()).await
    }

    async fn put_part(
        &self,
        upload: &MultipartUpload,
        part: PartSpec,
        body: Payload,
    ) -> Result<CompletedPart> {
        let req = Request::PutPart {
            upload: upload.clone(),
            part,
            md5: md5_hex(body.md5),
        };
        self.call_parse(req, body.data).await
    }

    async fn complete_multipart(
        &self,
        upload: &MultipartUpload,
        parts: &[CompletedPart],
        opts: &PutOptions,
    ) -> Result<Written> {
        let req = Request::CompleteMultipart {
            upload: upload.clone(),
            parts: parts.to_vec(),
            opts: opts.clone(),
        };
        let (value, _) = self.shared.call(&req, Bytes::new()).await?;
        parse(value)
    }

    async fn abort_multipart(&self, upload: &MultipartUpload) -> Result<()> {
        let req = Request::AbortMultipart {
            upload: upload.clone(),
        };
        self.call_parse::<Value>(req, Bytes::new()).await.map(drop)
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let req = Request::ListUploads {
            prefix: prefix.to_string(),
        };
        self.call_parse(req, Bytes::new()).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let req = Request::Delete {
            key: key.to_string(),
        };
        self.call_parse::<Value>(req, Bytes::new()).await.map(drop)
    }
}
