//! A fault-injecting HTTP/1.1 proxy for integrity and resilience tests.
//!
//! No off-the-shelf fault proxy (toxiproxy…) can be installed on these machines, and a TCP-level
//! one could not corrupt a *body* without corrupting framing anyway. This proxy understands just
//! enough HTTP/1.1 to find message boundaries, and otherwise forwards bytes untouched: request heads
//! are sent upstream byte-for-byte (S3 SigV4 signs the Host header and others, so any rewrite would
//! break the signature), and bodies stream through in 64 KiB pieces, so objects of tens of MiB pass
//! without being buffered.
//!
//! Each downstream (client) connection gets its own upstream connection, so keep-alive on one side
//! maps to keep-alive on the other. At most one fault is injected per request; rates are
//! probabilities in `[0, 1]` sampled per request, and can be changed while the proxy runs.
//!
//! ```no_run
//! use skyhaul_testkit::{FaultProxy, Faults};
//! let proxy = FaultProxy::start("http://127.0.0.1:9000", Faults::default());
//! proxy.set_faults(Faults { flip_response_body: 0.1, ..Faults::default() });
//! // point the client under test at proxy.endpoint() …
//! assert!(proxy.injected().flip_response_body > 0);
//! ```

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Fault rates, each a probability in `[0, 1]` sampled independently per request; the first one
/// drawn (in field order) is the request's only fault.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Close the client connection with a TCP RST as soon as the request head has arrived, before
    /// forwarding or answering anything.
    pub reset_connection: f64,
    /// Answer `503 SlowDown` (S3's throttling error) without forwarding the request.
    pub slow_down_503: f64,
    /// Answer `500 InternalError` without forwarding the request.
    pub internal_error_500: f64,
    /// Answer `403 AccessDenied` without forwarding the request: what S3 says of an object
    /// the credentials may not read (another account's, or under a KMS key they may not
    /// use) while the rest of the bucket is theirs. Aim it with `path_contains`.
    pub access_denied_403: f64,
    /// Answer `403 SignatureDoesNotMatch` without forwarding the request: what S3 says when
    /// it computes another signature than the client did, for a wrong secret key or for a
    /// request it reads otherwise than the client signed it. Aim it with `path_contains`.
    pub signature_mismatch_403: f64,
    /// Flip one random byte of the request body before forwarding it (an upload corrupted in
    /// flight: the server must reject it if a checksum was sent, or the copier's verify must catch
    /// it). Not counted for requests without a body.
    pub flip_request_body: f64,
    /// Send the response head with the original `Content-Length`, then only part of the body, then
    /// close the connection (a download cut short). Not counted for empty bodies.
    pub truncate_response_body: f64,
    /// Cut a truncated body at its middle instead of at a random byte: for a test that needs
    /// the read well under way when it fails (a cut in the first bytes can fail it before the
    /// client has started anything that depends on it).
    pub truncate_halfway: bool,
    /// Flip one random byte of the response body (a download corrupted in flight, same length). Not
    /// counted for empty bodies. With chunked responses the byte is in the first chunk. Any
    /// response with a body qualifies, listings and XML errors included: aim it with
    /// `only_methods` / `path_contains`.
    pub flip_response_body: f64,
    /// Only requests with one of these methods (e.g. `["GET"]`) get faults; empty means all.
    pub only_methods: Vec<String>,
    /// Only requests whose target (path and query) contains this string get faults.
    pub path_contains: Option<String>,
    /// Only requests signed (SigV4) with this access key id get faults: one client among
    /// several, such as a fleet worker whose credentials lack a permission the others have
    /// (a 403 answered here never reaches the server, which need not know the key). Read
    /// from the `Authorization` header; a presigned URL's `X-Amz-Credential` is not.
    pub access_key: Option<String>,
    /// Stop injecting once this many faults (of all kinds) have been injected, e.g. `Some(1)` for
    /// "fail exactly once, then behave".
    pub max_faults: Option<u64>,
    /// Let this many selected requests through untouched before injecting: "behave, then
    /// fail", e.g. a destination's first listing answered and every later one failed.
    pub skip_first: u64,
    /// Hold every request that `only_methods`, `path_contains` and `access_key` select this long before any
    /// of it goes upstream (a slow store: the server sees nothing of it until then). Not a
    /// fault: it is not drawn, nor counted by `max_faults`; a request answered by a fault
    /// instead of the server is not held.
    pub delay: Option<Duration>,
    /// Hold the server's answer to every selected request this long before passing it on:
    /// the server has done the request (a write is stored) while the client still waits to
    /// hear of it. Not a fault, like [`Faults::delay`].
    pub delay_answer: Option<Duration>,
    /// Count the requests that carry this header (any case) and, of those, the ones whose
    /// SigV4 `Authorization` signs it ([`FaultCounts::watched`]). Not a fault.
    pub watch_header: Option<String>,
    /// Count [`Faults::watch_header`] only where it has this value (exactly).
    pub watch_value: Option<String>,
}

/// How many requests the proxy saw and how many faults of each kind it injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received (faulted or not).
    pub requests: u64,
    /// The part of `requests` that were HEADs.
    pub head_requests: u64,
    /// Bytes of request bodies (with a Content-Length) forwarded upstream in full: what a
    /// client really uploaded, to measure how much it sends again after an interruption.
    pub request_body_bytes: u64,
    /// The part of `request_body_bytes` sent with PUT: object and part uploads, the data
    /// itself, without the XML of other requests (such as a multipart completion).
    pub put_body_bytes: u64,
    /// Requests, or answers, held by [`Faults::delay`] or [`Faults::delay_answer`] (counted
    /// when the hold starts).
    pub delayed: u64,
    /// Requests that carried [`Faults::watch_header`].
    pub watched: u64,
    /// The part of `watched` whose signature covers the header.
    pub watched_signed: u64,
    pub reset_connection: u64,
    pub slow_down_503: u64,
    pub internal_error_500: u64,
    pub access_denied_403: u64,
    pub signature_mismatch_403: u64,
    pub flip_request_body: u64,
    pub truncate_response_body: u64,
    pub flip_response_body: u64,
}

impl FaultCounts {
    /// All faults injected, of every kind.
    pub fn total(&self) -> u64 {
        self.reset_connection
            + self.slow_down_503
            + self.internal_error_500
            + self.access_denied_403
            + self.signature_mismatch_403
            + self.flip_request_body
            + self.truncate_response_body
            + self.flip_response_body
    }

    fn slot(&mut self, kind: FaultKind) -> &mut u64 {
        match kind {
            FaultKind::Reset => &mut self.reset_connection,
            FaultKind::SlowDown => &mut self.slow_down_503,
            FaultKind::Internal => &mut self.internal_error_500,
            FaultKind::Denied => &mut self.access_denied_403,
            FaultKind::BadSignature => &mut self.signature_mismatch_403,
            FaultKind::FlipRequest => &mut self.flip_request_body,
            FaultKind::TruncateResponse => &mut self.truncate_response_body,
            FaultKind::FlipResponse => &mut self.flip_response_body,
        }
    }
}

/// A running proxy on a free port of 127.0.0.1. It has its own tokio runtime (2 threads), so it
/// works the same from sync tests, `#[tokio::test]`s and benches; dropping it stops it and closes
/// every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint())
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy forwarding to `upstream` (`http://HOST:PORT`, plain HTTP only).
    ///
    /// # Panics
    /// If `upstream` is not an `http://host:port` URL or no port can be bound.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| {
                panic!("FaultProxy upstream must be http://HOST:PORT, got {upstream}")
            })
            .trim_end_matches('/');
        let upstream_addr = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("FaultProxy: cannot resolve upstream {upstream}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("build fault proxy runtime");
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy local addr");
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            state: Mutex::new(State {
                faults,
                counts: FaultCounts::default(),
                selected: 0,
            }),
        });
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener).expect("register proxy listener")
        };
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    // Any I/O error just ends the connection, as a real network would.
                    let _ = serve_connection(shared, stream).await;
                });
            }
        });
        FaultProxy {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT`: use it as the S3 endpoint of the client under test.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the fault rates; applies to requests whose head arrives from now on (and
    /// [`Faults::skip_first`] counts from now).
    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.shared.state.lock().unwrap();
        st.faults = faults;
        st.selected = 0;
    }

    /// The current fault rates.
    pub fn faults(&self) -> Faults {
        self.shared.state.lock().unwrap().faults.clone()
    }

    /// Requests seen and faults injected so far.
    pub fn injected(&self) -> FaultCounts {
        self.shared.state.lock().unwrap().counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // shutdown_background, unlike dropping a Runtime, is allowed inside another runtime (the
        // proxy is usually dropped at the end of a #[tokio::test]).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Reset,
    SlowDown,
    Internal,
    Denied,
    BadSignature,
    FlipRequest,
    TruncateResponse,
    FlipResponse,
}

struct State {
    faults: Faults,
    counts: FaultCounts,
    /// Requests the faults selected so far (see [`Faults::skip_first`]).
    selected: u64,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
}

impl Faults {
    /// Whether `only_methods`, `path_contains` and `access_key` select this request.
    fn selects(&self, req: &Head) -> bool {
        (self.only_methods.is_empty()
            || self
                .only_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&req.method)))
            && self
                .path_contains
                .as_ref()
                .is_none_or(|p| req.target.contains(p.as_str()))
            && self
                .access_key
                .as_ref()
                .is_none_or(|k| req.access_key.as_ref() == Some(k))
    }
}

impl Shared {
    /// Counts the request and draws its fault, counting it right away so `max_faults` holds under
    /// concurrency; [`Shared::unreserve`] takes it back if it turns out not to apply.
    fn draw(&self, req: &Head) -> Option<FaultKind> {
        let mut st = self.state.lock().unwrap();
        st.counts.requests += 1;
        if req.method.eq_ignore_ascii_case("HEAD") {
            st.counts.head_requests += 1;
        }
        if !st.faults.selects(req) {
            return None;
        }
        st.selected += 1;
        let f = &st.faults;
        if st.selected <= f.skip_first {
            return None;
        }
        if let Some(max) = f.max_faults {
            if st.counts.total() >= max {
                return None;
            }
        }
        let table = [
            (f.reset_connection, FaultKind::Reset),
            (f.slow_down_503, FaultKind::SlowDown),
            (f.internal_error_500, FaultKind::Internal),
            (f.access_denied_403, FaultKind::Denied),
            (f.signature_mismatch_403, FaultKind::BadSignature),
            (f.flip_request_body, FaultKind::FlipRequest),
            (f.truncate_response_body, FaultKind::TruncateResponse),
            (f.flip_response_body, FaultKind::FlipResponse),
        ];
        let kind = table
            .into_iter()
            .find(|&(rate, _)| rate > 0.0 && (rate >= 1.0 || rand::random::<f64>() < rate))
            .map(|(_, k)| k)?;
        *st.counts.slot(kind) += 1;
        Some(kind)
    }

    /// Counts a request (its raw head) if it carries [`Faults::watch_header`], and whether
    /// its signature covers it. Parsed again only while a header is watched.
    fn watch(&self, head: &[u8]) {
        let (name, value) = {
            let faults = &self.state.lock().unwrap().faults;
            match &faults.watch_header {
                Some(name) => (name.clone(), faults.watch_value.clone()),
                None => return,
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        if req.parse(head).is_err()
            || !req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case(&name)
                    && value.as_ref().is_none_or(|v| h.value == v.as_bytes())
            })
        {
            return;
        }
        let signed = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("authorization"))
            .flat_map(|h| signed_headers(h.value))
            .any(|h| h.eq_ignore_ascii_case(&name));
        let mut st = self.state.lock().unwrap();
        st.counts.watched += 1;
        if signed {
            st.counts.watched_signed += 1;
        }
    }

    /// How long to hold this request, or its answer, where `which` of the faults
    /// ([`Faults::delay`] or [`Faults::delay_answer`]) selects it; counted.
    fn hold(&self, req: &Head, which: fn(&Faults) -> Option<Duration>) -> Option<Duration> {
        let mut st = self.state.lock().unwrap();
        let delay = which(&st.faults).filter(|_| st.faults.selects(req))?;
        st.counts.delayed += 1;
        Some(delay)
    }

    fn unreserve(&self, kind: FaultKind) {
        let mut st = self.state.lock().unwrap();
        let slot = st.counts.slot(kind);
        *slot = slot.saturating_sub(1);
    }
}

const BUF_SIZE: usize = 64 * 1024;
const MAX_HEAD: usize = 1024 * 1024;

/// A socket with a read buffer (bytes read past a message boundary belong to the next message).
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        let _ = stream.set_nodelay(true);
        Peer {
            stream,
            buf: vec![0; BUF_SIZE],
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF. Cancel-safe.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Reads up to and including `delim`; `Ok(None)` on EOF before any byte. Cancel-safe.
    async fn read_until(&mut self, delim: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut searched = 0;
        loop {
            let data = self.buffered();
            if let Some(pos) = find(&data[searched..], delim) {
                let len = searched + pos + delim.len();
                let out = data[..len].to_vec();
                self.start += len;
                return Ok(Some(out));
            }
            searched = data.len().saturating_sub(delim.len() - 1);
            if data.len() > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP head too long",
                ));
            }
            if self.fill().await? == 0 {
                return if self.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Reads a message head (through the blank line), skipping stray CRLFs before it.
    async fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            while self.buffered().starts_with(b"\r\n") {
                self.start += 2;
            }
            if self.buffered() == b"\r" || self.buffered().is_empty() {
                if self.fill().await? == 0 {
                    return if self.buffered().is_empty() {
                        Ok(None)
                    } else {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    };
                }
                continue;
            }
            return self.read_until(b"\r\n\r\n").await;
        }
    }

    /// Takes up to `max` buffered bytes (reading if none are buffered); empty only at EOF.
    async fn take(&mut self, max: usize) -> io::Result<&mut [u8]> {
        if self.start == self.end {
            self.fill().await?;
        }
        let n = max.min(self.end - self.start);
        let s = self.start;
        self.start += n;
        Ok(&mut self.buf[s..s + n])
    }

    /// True if this idle connection cannot be reused (closed by the peer, or unexpected data).
    fn is_stale(&self) -> bool {
        if self.start != self.end {
            return true;
        }
        let mut b = [0u8; 1];
        !matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The bits of a message head the proxy needs.
struct Head {
    method: String,
    target: String,
    /// The access key id a request is signed with (SigV4 `Credential=KEY/...`).
    access_key: Option<String>,
    status: u16,
    framing: Framing,
    close: bool,
    expect_continue: bool,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn header_framing(headers: &[httparse::Header<'_>]) -> io::Result<Option<Framing>> {
    let mut framing = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            return Ok(Some(if v.trim_end().ends_with("chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| bad("bad Content-Length"))?;
            framing = Some(if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            });
        }
    }
    Ok(framing)
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && String::from_utf8_lossy(h.value)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// The access key id of a SigV4 `Authorization` value (`Credential=KEY/date/region/...`).
fn access_key(authorization: &[u8]) -> Option<String> {
    let value = String::from_utf8_lossy(authorization);
    let credential = value
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("Credential="))?;
    Some(credential.split('/').next()?.to_string())
}

/// The `SignedHeaders=a;b;c` list of a SigV4 `Authorization` value.
fn signed_headers(authorization: &[u8]) -> Vec<String> {
    let value = String::from_utf8_lossy(authorization);
    value
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("SignedHeaders="))
        .flat_map(|list| list.split(';'))
        .map(str::to_string)
        .collect()
}

fn parse_request(head: &[u8]) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("bad request head")),
    }
    let version = req.version.unwrap_or(1);
    let framing = match header_framing(req.headers)? {
        Some(Framing::UntilClose) => return Err(bad("unsupported request Transfer-Encoding")),
        Some(f) => f,
        None => Framing::Empty,
    };
    let close = has_token(req.headers, "connection", "close")
        || (version == 0 && !has_token(req.headers, "connection", "keep-alive"));
    Ok(Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        access_key: req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| access_key(h.value)),
        status: 0,
        framing,
        close,
        expect_continue: has_token(req.headers, "expect", "100-continue"),
    })
}

fn parse_response(head: &[u8], request_method: &str) -> io::Result<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("bad response head")),
    }
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let framing = if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Framing::Empty
    } else {
        header_framing(resp.headers)?.unwrap_or(Framing::UntilClose)
    };
    let close = has_token(resp.headers, "connection", "close")
        || (version == 0 && !has_token(resp.headers, "connection", "keep-alive"));
    Ok(Head {
        method: String::new(),
        target: String::new(),
        access_key: None,
        status,
        framing,
        close,
        expect_continue: false,
    })
}

/// What to do to a body in transit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    None,
    Flip,
    /// Cut the body short: at its middle if `halfway`, else at a random byte.
    Truncate {
        halfway: bool,
    },
}

/// Whether the body fault was applied, and whether the body was cut short.
#[derive(Debug, Default)]
struct Copied {
    applied: bool,
    truncated: bool,
}

/// Copies `len` bytes; `fault` hits the byte at a random offset (flip it / stop before it), or
/// the middle one for a halfway cut.
async fn copy_exact<W: AsyncWrite + Unpin>(
    src: &mut Peer,
    dst: &mut W,
    len: u64,
    fault: BodyFault,
) -> io::Result<Copied> {
    let at = match fault {
        _ if len == 0 => None,
        BodyFault::None => None,
        BodyFault::Truncate { halfway: true } => Some(len / 2),
        _ => Some(rand::random_range(0..len)),
    };
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(BUF_SIZE as u64) as usize;
        let piece = src.take(want).await?;
        if piece.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = piece.len() as u64;
        if let Some(at) = at.filter(|&a| a >= done && a < done + n) {
            let i = (at - done) as usize;
            if let BodyFault::Truncate { .. } = fault {
                dst.write_all(&piece[..i]).await?;
                dst.flush().await?;
                return Ok(Copied {
                    applied: true,
                    truncated: true,
                });
            }
            piece[i] ^= rand::random_range(1..=255u8);
        }
        dst.write_all(piece).await?;
        done += n;
    }
    Ok(Copied {
        applied: at.is_some(),
        truncated: false,
    })
}

/// Copies a body according to its framing, applying `fault` once (in the first non-empty chunk
/// for chunked and close-delimited bodies, whose length is not known up front).
async fn copy_body<W: AsyncWrite + Unpin>(
    src: &mut Peer,
    dst: &mut W,
    framing: Framing,
    fault: BodyFault,
) -> io::Result<Copied> {
    let copied = match framing {
        Framing::Empty => Copied::default(),
        Framing::Length(n) => copy_exact(src, dst, n, fault).await?,
        Framing::Chunked => {
            let mut pending = fault;
            let mut result = Copied::default();
            loop {
                let line = src
                    .read_until(b"\r\n")
                    .await?
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                dst.write_all(&line).await?;
                let text = String::from_utf8_lossy(&line);
                let size_hex = text.split(';').next().unwrap_or("").trim();
                let size =
                    u64::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size line"))?;
                if size == 0 {
                    // Trailer fields, then the final blank line.
                    loop {
                        let l = src
                            .read_until(b"\r\n")
                            .await?
                            .ok_or(io::ErrorKind::UnexpectedEof)?;
                        dst.write_all(&l).await?;
                        if l == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let c = copy_exact(src, dst, size, pending).await?;
                if c.applied {
                    pending = BodyFault::None;
                    result.applied = true;
                }
                if c.truncated {
                    result.truncated = true;
                    return Ok(result);
                }
                let crlf = src
                    .read_until(b"\r\n")
                    .await?
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                dst.write_all(&crlf).await?;
            }
            result
        }
        Framing::UntilClose => {
            let mut pending = fault;
            let mut result = Copied::default();
            loop {
                let piece = src.take(BUF_SIZE).await?;
                if piece.is_empty() {
                    break;
                }
                if pending != BodyFault::None {
                    let i = match pending {
                        BodyFault::Truncate { halfway: true } => piece.len() / 2,
                        _ => rand::random_range(0..piece.len()),
                    };
                    result.applied = true;
                    if let BodyFault::Truncate { .. } = pending {
                        dst.write_all(&piece[..i]).await?;
                        result.truncated = true;
                        break;
                    }
                    piece[i] ^= rand::random_range(1..=255u8);
                    pending = BodyFault::None;
                }
                dst.write_all(piece).await?;
            }
            result
        }
    };
    dst.flush().await?;
    Ok(copied)
}

/// An S3-style XML error response made up by the proxy.
fn error_response(status: u16, code: &str, message: &str, head_only: bool, close: bool) -> Vec<u8> {
    let reason = match status {
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>skyhaul-fault-proxy</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
         x-amz-request-id: skyhaul-fault-proxy\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        if head_only { 0 } else { body.len() },
        if close { "close" } else { "keep-alive" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Closes with a TCP RST (SO_LINGER 0) rather than a FIN: the client sees "connection reset".
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Serves one client connection: requests in order, each forwarded over this connection's own
/// upstream connection (opened lazily, reopened if the server closed it).
async fn serve_connection(shared: Arc<Shared>, client: TcpStream) -> io::Result<()> {
    let mut down = Peer::new(client);
    let mut up: Option<Peer> = None;
    loop {
        let Some(head) = down.read_head().await? else {
            return Ok(());
        };
        let req = match parse_request(&head) {
            Ok(r) => r,
            Err(_) => {
                let resp = error_response(400, "BadRequest", "proxy could not parse", false, true);
                down.stream.write_all(&resp).await?;
                return Ok(());
            }
        };
        shared.watch(&head);
        let fault = shared.draw(&req);
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        match fault {
            Some(FaultKind::Reset) => {
                reset(down.stream);
                return Ok(());
            }
            Some(
                k @ (FaultKind::SlowDown
                | FaultKind::Internal
                | FaultKind::Denied
                | FaultKind::BadSignature),
            ) => {
                let (status, code, msg) = match k {
                    FaultKind::SlowDown => (503, "SlowDown", "Please reduce your request rate."),
                    FaultKind::Denied => (403, "AccessDenied", "Access Denied"),
                    FaultKind::BadSignature => (
                        403,
                        "SignatureDoesNotMatch",
                        "The request signature we calculated does not match the signature \
                         you provided. Check your key and signing method.",
                    ),
                    _ => (
                        500,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ),
                };
                // With Expect: 100-continue the client may or may not send its body now: answer
                // and close rather than guess where the next request starts.
                let close = req.close || req.expect_continue;
                if !close {
                    copy_body(
                        &mut down,
                        &mut tokio::io::sink(),
                        req.framing,
                        BodyFault::None,
                    )
                    .await?;
                }
                let resp = error_response(status, code, msg, head_only, close);
                down.stream.write_all(&resp).await?;
                if close {
                    return Ok(());
                }
                continue;
            }
            _ => {}
        }
        if let Some(delay) = shared.hold(&req, |f| f.delay) {
            tokio::time::sleep(delay).await;
        }

        if up.as_ref().is_some_and(Peer::is_stale) {
            up = None;
        }
        if up.is_none() {
            match TcpStream::connect(shared.upstream).await {
                Ok(s) => up = Some(Peer::new(s)),
                Err(e) => {
                    let msg = format!("proxy cannot connect to upstream: {e}");
                    let resp = error_response(502, "BadGateway", &msg, head_only, true);
                    down.stream.write_all(&resp).await?;
                    return Ok(());
                }
            }
        }
        let u = up.as_mut().expect("upstream connected");
        u.stream.write_all(&head).await?;

        let mut early_final: Option<Vec<u8>> = None;
        if req.expect_continue && req.framing != Framing::Empty {
            // Wait (briefly: some servers never send 100) for the server's go-ahead.
            match tokio::time::timeout(Duration::from_secs(1), u.read_head()).await {
                Err(_) => {}
                Ok(r) => {
                    let h = r?.ok_or(io::ErrorKind::UnexpectedEof)?;
                    let status = parse_response(&h, &req.method)?.status;
                    if (100..200).contains(&status) {
                        down.stream.write_all(&h).await?;
                    } else {
                        early_final = Some(h);
                    }
                }
            }
        }

        let req_fault = if fault == Some(FaultKind::FlipRequest) {
            BodyFault::Flip
        } else {
            BodyFault::None
        };
        let body_skipped = early_final.is_some();
        let resp_head = match early_final {
            Some(h) => h,
            None => {
                let c = copy_body(&mut down, &mut u.stream, req.framing, req_fault).await?;
                if req_fault != BodyFault::None && !c.applied {
                    shared.unreserve(FaultKind::FlipRequest);
                }
                if let Framing::Length(n) = req.framing {
                    let counts = &mut shared.state.lock().unwrap().counts;
                    counts.request_body_bytes += n;
                    if req.method.eq_ignore_ascii_case("PUT") {
                        counts.put_body_bytes += n;
                    }
                }
                // Forward interim responses (100 Continue…) until the final one.
                loop {
                    let h = u.read_head().await?.ok_or(io::ErrorKind::UnexpectedEof)?;
                    let status = parse_response(&h, &req.method)?.status;
                    if (100..200).contains(&status) && status != 101 {
                        down.stream.write_all(&h).await?;
                        continue;
                    }
                    break h;
                }
            }
        };
        let resp = parse_response(&resp_head, &req.method)?;
        if let Some(delay) = shared.hold(&req, |f| f.delay_answer) {
            tokio::time::sleep(delay).await;
        }
        down.stream.write_all(&resp_head).await?;
        let (resp_fault, kind) = match fault {
            Some(FaultKind::TruncateResponse) => {
                let halfway = shared.state.lock().unwrap().faults.truncate_halfway;
                (BodyFault::Truncate { halfway }, FaultKind::TruncateResponse)
            }
            Some(FaultKind::FlipResponse) => (BodyFault::Flip, FaultKind::FlipResponse),
            _ => (BodyFault::None, FaultKind::FlipResponse),
        };
        let c = copy_body(u, &mut down.stream, resp.framing, resp_fault).await?;
        if resp_fault != BodyFault::None && !c.applied {
            shared.unreserve(kind);
        }
        if c.truncated {
            // Both connections are mid-body: close them (FIN to the client).
            let _ = down.stream.shutdown().await;
            return Ok(());
        }
        // A request whose body was never sent leaves the client connection in an unknown state.
        let close_down =
            req.close || resp.close || resp.framing == Framing::UntilClose || body_skipped;
        if close_down || resp.status == 101 {
            let _ = down.stream.shutdown().await;
            return Ok(());
        }
    }
}
