//! The destination gateway: accepts relay connections, authenticates and reassembles
//! requests, and runs them on the real destination store next to it. The destination's
//! credentials stay here; the wide-area link only ever carries sealed frames.

use crate::codec::Compression;
use crate::key::RelayKey;
use crate::message::{encode, is_request, Assembler, Message};
use crate::rpc::{md5_bytes, Info, ListPage, Request, Response, WireEntry, LIST_PAGE};
use crate::wire::{handshake_gateway, read_frame, Kind, Plain};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use skyhaul_store::{Entry, Error, ErrorKind, Payload, Store};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a client may take to say hello before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A message whose other chunks have not come for this long was given up by its sender.
const PARTIAL_EXPIRY: Duration = Duration::from_secs(300);
/// Response bodies (reads) are cut into chunks of this size.
const RESPONSE_CHUNK: usize = 1 << 20;

/// Where the frames of one connection go out, and what its client asked for.
#[derive(Clone)]
struct Writer {
    tx: mpsc::Sender<Plain>,
    compression: Compression,
    session: u64,
}

/// A gateway serving one destination store.
pub struct Gateway {
    store: Arc<dyn Store>,
    key: RelayKey,
    next_conn: AtomicU64,
    writers: Mutex<HashMap<u64, Writer>>,
    assembler: Mutex<Assembler>,
    /// Frames refused (failed authentication, checksum or framing), each closing its
    /// connection; the client sends what was on it again.
    pub rejected: AtomicU64,
    /// Requests run on the store.
    pub requests: AtomicU64,
}

impl Gateway {
    pub fn new(store: Arc<dyn Store>, key: RelayKey) -> Arc<Gateway> {
        Arc::new(Gateway {
            store,
            key,
            next_conn: AtomicU64::new(0),
            writers: Mutex::new(HashMap::new()),
            assembler: Mutex::new(Assembler::default()),
            rejected: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (sock, peer) = listener.accept().await?;
            crate::tune(&sock);
            tokio::spawn(self.clone().connection(sock, peer));
        }
    }

    async fn connection(self: Arc<Self>, mut sock: TcpStream, peer: SocketAddr) {
        let hello =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_gateway(&mut sock, &self.key));
        let (client, mut sealer, mut opener) = match hello.await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!("relay gateway: refused {peer}: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("relay gateway: {peer} sent no hello within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let id = self.next_conn.fetch_add(1, Relaxed);
        tracing::info!("relay gateway: relay connection from {peer}");
        let (rd, mut wr) = sock.into_split();
        let (tx, mut rx) = mpsc::channel::<Plain>(16);
        let writer = Writer {
            tx,
            compression: client.compression,
            session: client.session,
        };
        self.writers.lock().unwrap().insert(id, writer);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if wr.write_all(&sealer.seal(p)).await.is_err() {
                    break;
                }
            }
        });
        let mut rd = BufReader::with_capacity(1 << 20, rd);
        loop {
            let why = match read_frame(&mut rd, &mut opener).await {
                Ok((h, plain, _)) if h.session == client.session && is_request(h.kind) => {
                    let done = self.assembler.lock().unwrap().add(&h, plain, id);
                    match done {
                        Ok(Some(msg)) => {
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
        self.writers.lock().unwrap().remove(&id);
    }

    async fn handle(self: Arc<Self>, msg: Message) {
        self.requests.fetch_add(1, Relaxed);
        let (response, body) = match serde_json::from_slice::<Request>(&msg.meta) {
            Ok(req) => match self.execute(req, msg.body).await {
                Ok((value, body)) => (Response::Ok { value }, body),
                Err(e) => (Response::from_error(&e), Bytes::new()),
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
            let writers = self.writers.lock().unwrap();
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
            if tx.send(f).await.is_err() {
                return;
            }
        }
        self.assembler.lock().unwrap().expire(PARTIAL_EXPIRY);
    }

    async fn execute(&self, req: Request, body: Bytes) -> skyhaul_store::Result<(Value, Bytes)> {
        let s = &*self.store;
        let none = Bytes::new();
        Ok(match req {
            Request::Info { container } => {
                if !container.is_empty() && container != s.container() {
                    return Err(Error::new(
                        ErrorKind::BucketNotFound,
                        format!(
                            "this relay gateway writes to {}, not to bucket '{container}' (check --relay and the destination)",
                            s.name()
                        ),
                    ));
                }
                let l = s.limits();
                let info = Info {
                    name: s.name().to_string(),
                    container: s.container().to_string(),
                    min_part_size: l.min_part_size,
                    max_part_size: l.max_part_size,
                    max_parts: l.max_parts,
                    max_single_put: l.max_single_put,
                    etags_are_md5: s.etags_are_md5(),
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
                (json!({ "etag": f.etag }), f.data)
            }
            Request::Put { key, md5, opts } => {
                let payload = Payload {
                    data: body,
                    md5: md5_bytes(md5.as_deref()),
                };
                let w = s.put(&key, payload, &opts.into()).await?;
                (json!({ "etag": w.etag }), none)
            }
            Request::CreateMultipart { key, opts } => {
                (json!(s.create_multipart(&key, &opts.into()).await?), none)
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
                let w = s.complete_multipart(&upload, &parts, &opts.into()).await?;
                (json!({ "etag": w.etag }), none)
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
        })
    }
}
