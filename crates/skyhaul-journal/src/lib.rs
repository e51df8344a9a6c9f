//! The transfer journal: what an interrupted transfer needs to resume, in embedded SQLite.
//!
//! A transfer is interrupted by Ctrl-C, `kill -9`, a power loss or a network outage, and resumed
//! by running the same command again. For that the journal remembers, per transfer:
//! - which source objects are done (with the source size and version, so a source changed since
//!   is copied again, and the checksum written);
//! - which multipart uploads are open and which of their parts are finished, so a large object
//!   continues where it stopped and uploads no longer needed can be aborted.
//!
//! A transfer is identified by a [`TransferIdentity`] (source, destination and the options that
//! change what is copied); its [`TransferId`] is a hash of that, so rerunning the same command
//! finds the same records without the user naming anything.
//!
//! # Threads, blocking and flushing
//! The engine is async and calls this from many tokio tasks; every call here is synchronous, so
//! it matters which ones can wait:
//! - **Never wait for I/O** (they only queue a message): [`Journal::record_done`],
//!   [`Journal::part_done`], [`Journal::upload_finished`]. They block only if 65,536 writes are
//!   already queued (the writer is stuck, e.g. on another process's lock), as back-pressure.
//! - **Wait for a durable commit** (one batch commit plus an fsync, typically well under 10 ms,
//!   up to the 30 s busy timeout if another process holds the write lock): [`Journal::begin`],
//!   [`Journal::upload_started`], [`Journal::mark_complete`], [`Journal::forget`],
//!   [`Journal::flush`], and dropping the last handle. Call them from `spawn_blocking` where a
//!   stall of a worker thread matters; they are rare (per run, or per multipart upload).
//! - **Reads** ([`Journal::is_done`], [`Journal::done_count`], [`Journal::resumable_upload`],
//!   [`Journal::open_uploads`], [`Journal::transfers`], [`Journal::find`]) run one indexed
//!   query on a pooled read connection (microseconds; `transfers` scans the objects of each
//!   transfer). They see every write made before them by this process: when such writes are
//!   still queued they first wait for the writer to commit them (not durably). `is_done` waits
//!   only if that very key has a queued record, so a resume's lookups do not stall behind the
//!   records being written.
//!
//! # Durability
//! Queued writes are committed in batches, at most 50 ms after the first write of a batch or at
//! 10,000 writes. A crash of the process (`kill -9`) loses only what was not committed yet (the
//! last ~50 ms, more only if writes arrive faster than ~200,000/s); a power loss may also lose
//! commits made since the last durable one (WAL with `synchronous=NORMAL`). Either way the
//! database stays consistent (SQLite's WAL), and a lost record only means an object or part is
//! copied again. What must not be lost is committed durably before the call returns: the start
//! of a multipart upload (or else the upload would leak), a transfer's creation, `flush()`.
//!
//! Errors of queued writes (disk full, say) are reported by the next queued write or `flush`.

mod fleet;
mod schema;
mod writer;

pub use fleet::{
    FleetLease, LEASE_COMPLETED, LEASE_EXPIRED, LEASE_GRANTED, LEASE_RETURNED, LEASE_SUPERSEDED,
};

pub use schema::SCHEMA_VERSION;

use rusqlite::{params, Connection, OptionalExtension, Row};
use sha2::{Digest, Sha256};
use skyhaul_store::{CompletedPart, MultipartUpload, ObjectMeta};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use writer::{lock, Barrier, Cmd, Op, Shared, Write};

/// Environment variable naming the journal file (what `--journal PATH` overrides).
pub const JOURNAL_ENV: &str = "SKYHAUL_JOURNAL";

/// Queued writes beyond which the queueing calls block (back-pressure on a stuck writer).
const QUEUE_CAPACITY: usize = 1 << 16;

/// Read connections kept for reuse; more are opened when more threads read at once.
const MAX_IDLE_READERS: usize = 8;

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal: {0}")]
    Io(#[from] std::io::Error),
    /// A file or directory the journal keeps beside its database, by its path.
    #[error("journal: {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a skyhaul journal (another application's SQLite database?)")]
    NotAJournal,
    #[error("journal schema version {found} is newer than this skyhaul supports ({supported}); upgrade skyhaul")]
    TooNew { found: i64, supported: i64 },
    #[error("journal: an earlier batched write failed: {0}")]
    Background(String),
    #[error("journal writer thread is gone")]
    Closed,
    #[error("transfer id prefix {prefix:?} matches several transfers: {}", matches.join(", "))]
    AmbiguousId {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("{0:?} is not a transfer id (hex digits)")]
    InvalidId(String),
    #[error("transfer id {0} already belongs to another transfer (hash collision)")]
    IdCollision(String),
    #[error("journal integrity check failed: {0}")]
    Corrupt(String),
    #[error(
        "transfer {0} is running in another skyhaul process (`skyhaul status` shows it): \
         wait for it to end, or stop it first; two runs of one transfer would take each \
         other's uploads for leftovers"
    )]
    Running(String),
}

/// What makes two runs the same transfer. Rerunning with the same identity resumes; anything that
/// changes what ends up at the destination must be in here, or a resume would skip objects the new
/// options would copy differently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransferIdentity {
    /// The source location, normalised (e.g. `s3://bucket/prefix/`).
    pub source: String,
    /// The destination location, normalised.
    pub destination: String,
    /// A canonical string of the options that change what is copied (filters, sync mode,
    /// checksum algorithm, …), in a fixed order. Options that only change how fast (concurrency,
    /// part size) must not be in here: the part size is checked per upload instead.
    pub options: String,
}

impl TransferIdentity {
    pub fn new(
        source: impl Into<String>,
        destination: impl Into<String>,
        options: impl Into<String>,
    ) -> Self {
        TransferIdentity {
            source: source.into(),
            destination: destination.into(),
            options: options.into(),
        }
    }

    /// The transfer's id: the first 64 bits of a SHA-256 over the three fields (length-prefixed,
    /// so no two different identities serialise alike). Stable across versions and platforms:
    /// the journal is keyed by it.
    pub fn id(&self) -> TransferId {
        let mut h = Sha256::new();
        h.update(b"skyhaul transfer v1\0");
        for field in [&self.source, &self.destination, &self.options] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        TransferId(u64::from_be_bytes(first))
    }
}

/// A transfer's short stable id; shown and parsed as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(u64);

impl TransferId {
    pub fn from_u64(v: u64) -> Self {
        TransferId(v)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    fn sql(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for TransferId {
    type Err = JournalError;

    /// Parses a full id (16 hex digits). For prefixes use [`Journal::find`].
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JournalError::InvalidId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(TransferId)
            .map_err(|_| JournalError::InvalidId(s.to_string()))
    }
}

/// A source object recorded as copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneRecord {
    pub src_key: String,
    pub dst_key: String,
    /// Source size and version when it was copied.
    pub size: u64,
    pub etag: Option<String>,
    pub mtime: Option<SystemTime>,
    /// The checksum written with the object, as the engine gave it (e.g. `crc64nvme:…`).
    pub checksum: Option<String>,
    pub done_at: SystemTime,
}

/// A finished part of a multipart upload, with the checksum the engine computed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledPart {
    pub part: CompletedPart,
    pub checksum: Option<String>,
}

/// An open multipart upload of the same source version and part size as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableUpload {
    pub upload: MultipartUpload,
    pub part_size: u64,
    /// Finished parts, by part number.
    pub parts: Vec<JournaledPart>,
}

impl ResumableUpload {
    /// The finished parts as the store's `complete` wants them.
    pub fn completed_parts(&self) -> Vec<CompletedPart> {
        self.parts.iter().map(|p| p.part.clone()).collect()
    }
}

/// A multipart upload the journal knows to be open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub upload: MultipartUpload,
    pub src_key: String,
    pub part_size: u64,
    pub parts_done: u64,
    pub bytes_done: u64,
    pub started: SystemTime,
}

/// One transfer as `skyhaul status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSummary {
    pub id: TransferId,
    pub source: String,
    pub destination: String,
    pub options: String,
    pub created: SystemTime,
    pub last_run: SystemTime,
    pub runs: u64,
    /// Set by [`Journal::mark_complete`]; cleared by the next [`Journal::begin`].
    pub complete: bool,
    pub completed: Option<SystemTime>,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub open_uploads: u64,
    /// Bytes in the finished parts of open uploads (progress not yet in `bytes_done`).
    pub upload_bytes_done: u64,
}

impl TransferSummary {
    /// "complete" or "in progress" (which includes interrupted: the journal cannot tell a run
    /// that is going on from one that was killed).
    pub fn status(&self) -> &'static str {
        if self.complete {
            "complete"
        } else {
            "in progress"
        }
    }
}

/// A transfer this process holds while it runs or is cleaned ([`Journal::hold`]): let go
/// when dropped, and when the process ends however it ends (an OS file lock, which a
/// `kill -9` releases too). `None`: the file system has no locks, and nothing is held.
#[derive(Debug)]
pub struct Held {
    _lock: Option<std::fs::File>,
}

/// How long [`Journal::hold`] waits for another holder to let go: `status` looks for a
/// moment, a running transfer does not let go.
const HOLD_WAIT: Duration = Duration::from_secs(2);

/// The journal. `Send + Sync`: open it once and share it (`Arc<Journal>`) between tasks.
///
/// Writes go through one writer thread (see the crate docs); reads use a small pool of read
/// connections. Dropping the last handle commits everything queued, durably, and waits for it.
pub struct Journal {
    path: PathBuf,
    tx: Option<SyncSender<Cmd>>,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Connection>>,
    writer: Option<JoinHandle<()>>,
    /// Opened by [`Journal::open_read_only`]: no writer, and readers open the file so.
    read_only: bool,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Opens the writer connection, waiting while another process holds the database in a way
/// SQLite's busy handler does not cover (switching a new file to WAL, a lock upgrade): two
/// skyhaul processes started together must both get their journal.
fn open_writer_waiting(path: &Path) -> Result<Connection> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match schema::open_writer(path) {
            Err(JournalError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20 + rand_jitter()));
            }
            r => return r,
        }
    }
}

/// A few milliseconds of jitter so that processes retrying together spread out.
fn rand_jitter() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % 30)
        .unwrap_or(7)
}

impl Journal {
    /// Opens (creating it and its parent directories if needed) the journal at `path`, in WAL
    /// mode, upgrading its schema if it was written by an older skyhaul. Several processes may
    /// open the same journal; they take turns writing (30 s busy timeout).
    pub fn open(path: &Path) -> Result<Journal> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let conn = open_writer_waiting(path)?;
        // Open one reader now so a problem shows here rather than on the first read.
        let reader = schema::open_reader(path)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("skyhaul-journal".into())
                .spawn(move || writer::run(conn, rx, shared))?
        };
        Ok(Journal {
            path: path.to_path_buf(),
            tx: Some(tx),
            shared,
            readers: Mutex::new(vec![reader]),
            writer: Some(writer),
            read_only: false,
        })
    }

    /// Opens the journal at `path` to read only, as a journal this process may not write
    /// (on a read-only mount) can be: every write fails with [`JournalError::Closed`].
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        let reader = schema::open_read_only(path)?;
        Ok(Journal {
            path: path.to_path_buf(),
            tx: None,
            shared: Arc::default(),
            readers: Mutex::new(vec![reader]),
            writer: None,
            read_only: true,
        })
    }

    /// Where the journal lives by default: `$SKYHAUL_JOURNAL` if set, else
    /// `<user data dir>/skyhaul/journal.sqlite` (`~/.local/share` on Linux, `~/Library/Application
    /// Support` on macOS, `%APPDATA%` on Windows).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os(JOURNAL_ENV).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        dirs::data_dir()
            .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("share")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("skyhaul")
            .join("journal.sqlite")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file of transfer `id`, beside the journal: every process that shares the
    /// journal sees it. Never removed, not even when the transfer is forgotten: a process
    /// waiting on a removed file would take it while the next one takes a new file of the
    /// same name, and both would run.
    fn lock_path(&self, id: TransferId) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".running");
        PathBuf::from(dir).join(id.to_string())
    }

    /// Holds transfer `id` for this process until the [`Held`] is dropped. Another process
    /// that holds it (running or cleaning it) is an error, [`JournalError::Running`]: two
    /// runs of one transfer would each abort the uploads the other is creating.
    pub fn hold(&self, id: TransferId) -> Result<Held> {
        let path = self.lock_path(id);
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::File { path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(at(dir))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(at(&path))?;
        let deadline = std::time::Instant::now() + HOLD_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Held { _lock: Some(file) }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(JournalError::Running(id.to_string()))
                }
                // A file system without locks (some network ones) keeps a transfer from
                // nobody: said, and not a reason to stop.
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(
                        "{}: cannot lock ({e}): two runs of this transfer at once would not \
                         be told apart",
                        path.display()
                    );
                    return Ok(Held { _lock: None });
                }
            }
        }
    }

    /// Whether another process holds transfer `id` now ([`Journal::hold`]): runs it, or
    /// cleans it. Creates nothing.
    pub fn running(&self, id: TransferId) -> bool {
        std::fs::File::open(self.lock_path(id))
            .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
    }

    /// Starts a run of a transfer: creates it the first time, else bumps its run count and last
    /// run time and clears its complete mark. A transfer marked complete starts afresh: its
    /// objects are no longer done (the destination may have changed since). Returns its id.
    /// Waits for a durable commit.
    pub fn begin(&self, identity: &TransferIdentity) -> Result<TransferId> {
        let id = identity.id();
        self.barrier(
            Some(Op::Begin {
                id: id.0,
                identity: identity.clone(),
            }),
            true,
        )?;
        Ok(id)
    }

    /// Whether an earlier run left work a rerun continues from: a run began (and was not
    /// forgotten since) and did not finish. Otherwise the run about to begin can skip
    /// looking up what is done: nothing is, as [`begin`](Self::begin) starts a finished
    /// transfer afresh.
    pub fn resumable(&self, id: TransferId) -> Result<bool> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM transfers WHERE id = ?1 AND complete = 0)",
            )?;
            Ok(stmt.query_row([id.sql()], |r| r.get(0))?)
        })
    }

    /// Marks the transfer complete (or not). Waits for a durable commit.
    pub fn mark_complete(&self, id: TransferId, complete: bool) -> Result<()> {
        self.barrier(Some(Op::MarkComplete { id: id.0, complete }), true)
    }

    /// Forgets that the objects written to `dst_keys` are done, so that a rerun copies them
    /// again: the check after a copy found them missing or different at the destination.
    /// They are remembered as such ([`copy_again`](Self::copy_again)) until the transfer
    /// finishes. Waits for a durable commit (after the records queued before it).
    pub fn undo_done(&self, id: TransferId, dst_keys: Vec<String>) -> Result<()> {
        self.barrier(Some(Op::Undone { id: id.0, dst_keys }), true)
    }

    /// Announces a sync's write of `dst_key`, planned. Queued: returns at once; the write
    /// must not begin before [`commit_announced`](Self::commit_announced) has returned. The
    /// object's record ([`record_done`](Self::record_done)) removes the announcement; until
    /// then the key is one to [`copy_again`](Self::copy_again), for the store may hold a
    /// write that no record names.
    pub fn writing(&self, id: TransferId, dst_key: &str) -> Result<()> {
        let in_order = lock(&self.shared.announcing);
        self.send(Write::Writing {
            transfer: id.0,
            dst_key: dst_key.to_string(),
        })?;
        self.shared.announced.fetch_add(1, Ordering::AcqRel);
        drop(in_order);
        self.check_background()
    }

    /// Waits until every write announced so far ([`writing`](Self::writing)) is committed:
    /// at once where it already is, as when the announcements run ahead of the writes by
    /// more than the batch window. Committed, not synced: an announcement outlives the
    /// process, as the records do, not a power cut.
    pub fn commit_announced(&self) -> Result<()> {
        match self.announcements_committed() {
            true => Ok(()),
            false => self.barrier(None, false),
        }
    }

    /// Whether every write announced so far is committed: where it is,
    /// [`commit_announced`](Self::commit_announced) would return at once.
    pub fn announcements_committed(&self) -> bool {
        let announced = self.shared.announced.load(Ordering::Acquire);
        self.shared.announced_applied.load(Ordering::Acquire) >= announced
    }

    /// Whether a sync's rerun copies `dst_key` although its listing finds it up to date: a
    /// check after a copy of this unfinished transfer found it missing or different
    /// ([`undo_done`](Self::undo_done)) and no run has finished the transfer since, or a run
    /// announced a write of it ([`writing`](Self::writing)) and stopped before recording it.
    pub fn copy_again(&self, id: TransferId, dst_key: &str) -> Result<bool> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM differing WHERE transfer = ?1 AND dst_key = ?2)
                     OR EXISTS(SELECT 1 FROM writing WHERE transfer = ?1 AND dst_key = ?2)",
            )?;
            Ok(stmt.query_row(params![id.sql(), dst_key], |r| r.get(0))?)
        })
    }

    /// Every destination key [`copy_again`](Self::copy_again) is true of, for a dry run
    /// that must show them as the next run treats them.
    pub fn copy_again_keys(&self, id: TransferId) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT dst_key FROM differing WHERE transfer = ?1
                 UNION SELECT dst_key FROM writing WHERE transfer = ?1",
            )?;
            let rows = stmt.query_map([id.sql()], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Deletes everything the journal knows about a transfer. Abort its open uploads first (see
    /// [`Journal::open_uploads`]): once forgotten, nothing remembers them. Must not run while the
    /// transfer is being written, or the writes after it recreate records. Waits for a durable
    /// commit.
    pub fn forget(&self, id: TransferId) -> Result<()> {
        self.barrier(Some(Op::Forget { id: id.0 }), true)
    }

    /// Commits everything queued so far, durably (fsync), and reports a failed queued write.
    /// Call it when a run ends or is interrupted; dropping the journal does it too.
    pub fn flush(&self) -> Result<()> {
        self.barrier(None, true)?;
        self.check_background()
    }

    /// All transfers, most recently run first.
    pub fn transfers(&self) -> Result<Vec<TransferSummary>> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "{SUMMARY_SELECT} ORDER BY t.last_run_ms DESC, t.id"
            ))?;
            let rows = stmt.query_map([], summary_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The transfer whose hex id is `id_or_prefix` or starts with it (case-insensitive).
    /// `Ok(None)` if none matches; [`JournalError::AmbiguousId`] if several do.
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<TransferSummary>> {
        let prefix = id_or_prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(JournalError::InvalidId(id_or_prefix.to_string()));
        }
        self.sync_reads()?;
        let matches: Vec<TransferId> = self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT id FROM transfers")?;
            let ids = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            let mut found = Vec::new();
            for id in ids {
                let id = TransferId(id? as u64);
                if id.to_string().starts_with(&prefix) {
                    found.push(id);
                }
            }
            Ok(found)
        })?;
        match matches.as_slice() {
            [] => Ok(None),
            [id] => self.summary(*id),
            _ => Err(JournalError::AmbiguousId {
                prefix,
                matches: matches.iter().map(|id| id.to_string()).collect(),
            }),
        }
    }

    fn summary(&self, id: TransferId) -> Result<Option<TransferSummary>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!("{SUMMARY_SELECT} WHERE t.id = ?1"))?;
            Ok(stmt.query_row([id.sql()], summary_from_row).optional()?)
        })
    }

    /// The record of `src.key` if it was copied *from the version listed now*: same size, and
    /// same ETag when both have one, else same mtime. A source that changed since is not done
    /// (it must be copied again). Fast: one primary-key lookup on a pooled connection.
    pub fn is_done(&self, id: TransferId, src: &ObjectMeta) -> Result<Option<DoneRecord>> {
        let queued = lock(&self.shared.pending_done)
            .get(&id.0)
            .is_some_and(|keys| keys.contains_key(src.key.as_str()));
        if queued {
            self.barrier(None, false)?;
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT size, etag, mtime_ns, coalesce(dst_key, src_key), checksum, done_ms
                 FROM objects
                 WHERE transfer = ?1 AND src_key = ?2",
            )?;
            let rec = stmt
                .query_row(params![id.sql(), src.key], |r| {
                    Ok(DoneRecord {
                        src_key: src.key.clone(),
                        size: r.get::<_, i64>(0)? as u64,
                        etag: r.get(1)?,
                        mtime: r.get::<_, Option<i64>>(2)?.map(from_ns),
                        dst_key: r.get(3)?,
                        checksum: r.get(4)?,
                        done_at: from_ms(r.get(5)?),
                    })
                })
                .optional()?;
            Ok(rec.filter(|r| same_version(r.size, r.etag.as_deref(), r.mtime, src)))
        })
    }

    /// Records that `src` (as listed: size and version) was copied to `dst_key`. Queued: returns
    /// at once; committed within 50 ms. Recording a key again replaces its record.
    pub fn record_done(
        &self,
        id: TransferId,
        src: &ObjectMeta,
        dst_key: &str,
        checksum: Option<&str>,
    ) -> Result<()> {
        self.queue_done(id, src, dst_key, checksum, None)
    }

    /// [`record_done`](Self::record_done), keeping `hold` alive until the record is committed.
    /// The engine passes the object's memory-budget permit: bytes uploaded but not yet durable
    /// then still count against the budget, so what a crash makes the rerun send again stays
    /// within the budget even though records are committed in batches.
    pub fn record_done_holding(
        &self,
        id: TransferId,
        src: &ObjectMeta,
        dst_key: &str,
        checksum: Option<&str>,
        hold: Box<dyn Send>,
    ) -> Result<()> {
        self.queue_done(id, src, dst_key, checksum, Some(hold))
    }

    fn queue_done(
        &self,
        id: TransferId,
        src: &ObjectMeta,
        dst_key: &str,
        checksum: Option<&str>,
        until_committed: Option<Box<dyn Send>>,
    ) -> Result<()> {
        *lock(&self.shared.pending_done)
            .entry(id.0)
            .or_default()
            .entry(src.key.clone())
            .or_insert(0) += 1;
        self.queue(Write::Done {
            transfer: id.0,
            src_key: src.key.clone(),
            size: src.size,
            etag: src.etag.clone(),
            mtime_ns: mtime_ns(src.mtime),
            dst_key: dst_key.to_string(),
            checksum: checksum.map(str::to_string),
            at_ms: now_ms(),
            until_committed,
        })
    }

    /// Objects and bytes recorded done for the transfer.
    pub fn done_count(&self, id: TransferId) -> Result<(u64, u64)> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE transfer = ?1",
            )?;
            Ok(stmt.query_row([id.sql()], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?)
        })
    }

    /// Records a multipart upload just created for `src` (as listed) with parts of `part_size`.
    /// Waits for a durable commit: call it right after creating the upload and before sending
    /// parts, so that a crash at any later moment leaves the upload known (to resume or abort)
    /// rather than leaked.
    pub fn upload_started(
        &self,
        id: TransferId,
        src: &ObjectMeta,
        upload: &MultipartUpload,
        part_size: u64,
    ) -> Result<()> {
        self.barrier(
            Some(Op::UploadStarted {
                transfer: id.0,
                upload_id: upload.upload_id.clone(),
                dst_key: upload.key.clone(),
                src_key: src.key.clone(),
                size: src.size,
                etag: src.etag.clone(),
                mtime: src.mtime,
                part_size,
            }),
            true,
        )
    }

    /// Records, durably, that a multipart upload to `dst_key` is about to be created: if the
    /// new upload's id never reaches the journal (a crash, or a lost response and a retry
    /// that creates another), [`Journal::unconfirmed_creates`] still names the key.
    pub fn creating(&self, id: TransferId, dst_key: &str) -> Result<()> {
        self.barrier(
            Some(Op::Creating {
                transfer: id.0,
                dst_key: dst_key.to_string(),
            }),
            true,
        )
    }

    /// The upload [`Journal::creating`] announced is journaled and no other was created.
    /// Queued: returns at once.
    pub fn created(&self, id: TransferId, dst_key: &str) -> Result<()> {
        self.queue(Write::Created {
            transfer: id.0,
            dst_key: dst_key.to_string(),
        })
    }

    /// Keys with an announced upload creation that was never confirmed, and when it began.
    pub fn unconfirmed_creates(&self, id: TransferId) -> Result<Vec<(String, SystemTime)>> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT dst_key, started_ms FROM creating WHERE transfer = ?1 ORDER BY dst_key",
            )?;
            let rows = stmt.query_map([id.sql()], |r| Ok((r.get(0)?, from_ms(r.get(1)?))))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Records a part the store accepted. Queued: returns at once. Ignored if the upload is not
    /// (or no longer) recorded as open.
    pub fn part_done(
        &self,
        id: TransferId,
        upload_id: &str,
        part: &CompletedPart,
        checksum: Option<&str>,
    ) -> Result<()> {
        self.queue(Write::Part {
            transfer: id.0,
            upload_id: upload_id.to_string(),
            number: part.number,
            len: part.len,
            etag: part.etag.clone(),
            checksum: checksum.map(str::to_string),
        })
    }

    /// An open upload of this very source version (size, and ETag or mtime as in
    /// [`Journal::is_done`]) cut in parts of `part_size`, with its finished parts: the parts
    /// to reuse. The most recently started one if there are several. Open uploads of `src.key`
    /// that do not match are left to [`Journal::open_uploads`] (to be aborted).
    pub fn resumable_upload(
        &self,
        id: TransferId,
        src: &ObjectMeta,
        part_size: u64,
    ) -> Result<Option<ResumableUpload>> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT upload_id, dst_key, size, etag, mtime_ns FROM uploads
                 WHERE transfer = ?1 AND src_key = ?2 AND part_size = ?3
                 ORDER BY started_ms DESC, upload_id",
            )?;
            let mut rows = stmt.query(params![id.sql(), src.key, to_sql_i64(part_size)])?;
            let mut found = None;
            while let Some(r) = rows.next()? {
                let size = r.get::<_, i64>(2)? as u64;
                let etag: Option<String> = r.get(3)?;
                let mtime = r.get::<_, Option<i64>>(4)?.map(from_ns);
                if same_version(size, etag.as_deref(), mtime, src) {
                    found = Some(MultipartUpload {
                        upload_id: r.get(0)?,
                        key: r.get(1)?,
                    });
                    break;
                }
            }
            drop(rows);
            let Some(upload) = found else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT number, len, etag, checksum FROM parts
                 WHERE transfer = ?1 AND upload_id = ?2 ORDER BY number",
            )?;
            let parts = stmt
                .query_map(params![id.sql(), upload.upload_id], |r| {
                    Ok(JournaledPart {
                        part: CompletedPart {
                            number: r.get(0)?,
                            len: r.get::<_, i64>(1)? as u64,
                            etag: r.get(2)?,
                            opaque_etag: false,
                        },
                        checksum: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(ResumableUpload {
                upload,
                part_size,
                parts,
            }))
        })
    }

    /// Forgets an upload that was completed or aborted, with its parts. Queued: returns at once.
    /// If the record is lost to a crash, the next run sees the upload as open: aborting or
    /// resuming it then fails with "no such upload", which the engine should treat as gone.
    pub fn upload_finished(&self, id: TransferId, upload_id: &str) -> Result<()> {
        self.queue(Write::UploadFinished {
            transfer: id.0,
            upload_id: upload_id.to_string(),
        })
    }

    /// Every upload the journal holds as open for the transfer, oldest first: after a run has
    /// resumed the ones it needs, the rest are to be aborted (and `skyhaul clean` aborts all).
    pub fn open_uploads(&self, id: TransferId) -> Result<Vec<OpenUpload>> {
        self.sync_reads()?;
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.upload_id, u.dst_key, u.src_key, u.part_size, u.started_ms,
                        count(p.number), coalesce(sum(p.len), 0)
                 FROM uploads u
                 LEFT JOIN parts p ON p.transfer = u.transfer AND p.upload_id = u.upload_id
                 WHERE u.transfer = ?1
                 GROUP BY u.upload_id
                 ORDER BY u.started_ms, u.upload_id",
            )?;
            let rows = stmt.query_map([id.sql()], |r| {
                Ok(OpenUpload {
                    upload: MultipartUpload {
                        upload_id: r.get(0)?,
                        key: r.get(1)?,
                    },
                    src_key: r.get(2)?,
                    part_size: r.get::<_, i64>(3)? as u64,
                    started: from_ms(r.get(4)?),
                    parts_done: r.get::<_, i64>(5)? as u64,
                    bytes_done: r.get::<_, i64>(6)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Runs SQLite's full integrity check (reads the whole file: for tests and `status --check`).
    pub fn integrity_check(&self) -> Result<()> {
        self.flush()?;
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let lines = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if lines.len() == 1 && lines[0] == "ok" {
                Ok(())
            } else {
                Err(JournalError::Corrupt(lines.join("; ")))
            }
        })
    }

    // --- plumbing ---

    fn sender(&self) -> Result<&SyncSender<Cmd>> {
        self.tx.as_ref().ok_or(JournalError::Closed)
    }

    /// Queues a write for the writer thread and reports an earlier queued write's failure.
    fn queue(&self, w: Write) -> Result<()> {
        self.send(w)?;
        self.check_background()
    }

    /// [`queue`](Self::queue) without reporting an earlier write's failure: `Ok` when `w`
    /// is on its way to the writer.
    fn send(&self, w: Write) -> Result<()> {
        let queued = self.shared.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
        if self.sender()?.send(Cmd::Write(w)).is_err() {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(JournalError::Closed);
        }
        // About a full batch is waiting (the count includes writes being committed, so it is
        // a hint): no reason to sleep out the rest of the window, which bounds the wait anyway.
        if queued.is_multiple_of(writer::BATCH_MAX as u64) {
            self.wake_writer();
        }
        Ok(())
    }

    /// How many queued writes (records, announcements, parts) failed since the journal was
    /// opened, each reported once as it happened: the journal then knows less than was done.
    pub fn writes_lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Acquire)
    }

    fn check_background(&self) -> Result<()> {
        match self.shared.take_background_error() {
            Some(e) => Err(JournalError::Background(e)),
            None => Ok(()),
        }
    }

    /// Sends a barrier (with an operation, or a bare flush) and waits until it is committed.
    fn barrier(&self, op: Option<Op>, durable: bool) -> Result<()> {
        let (reply, wait) = mpsc::channel();
        self.sender()?
            .send(Cmd::Barrier(Barrier { op, durable, reply }))
            .map_err(|_| JournalError::Closed)?;
        self.wake_writer();
        wait.recv().map_err(|_| JournalError::Closed)?
    }

    /// Ends the writer's batch window early: it sleeps through the window without watching
    /// the queue (see `writer::run`), so whoever waits on it must wake it.
    fn wake_writer(&self) {
        if let Some(writer) = &self.writer {
            writer.thread().unpark();
        }
    }

    /// Makes the writes this process queued before now visible to reads.
    fn sync_reads(&self) -> Result<()> {
        if self.shared.outstanding.load(Ordering::Acquire) > 0 {
            self.barrier(None, false)?;
        }
        Ok(())
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = lock(&self.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None if self.read_only => schema::open_read_only(&self.path)?,
            None => schema::open_reader(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = lock(&self.readers);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

impl Drop for Journal {
    /// Commits everything queued, durably, and waits for the writer thread to finish.
    fn drop(&mut self) {
        drop(self.tx.take());
        self.wake_writer();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("journal writer thread panicked");
            }
        }
    }
}

const SUMMARY_SELECT: &str = "
    SELECT t.id, t.source, t.destination, t.options, t.created_ms, t.last_run_ms, t.runs,
           t.complete, t.completed_ms,
           (SELECT count(*) FROM objects o WHERE o.transfer = t.id),
           (SELECT coalesce(sum(o.size), 0) FROM objects o WHERE o.transfer = t.id),
           (SELECT count(*) FROM uploads u WHERE u.transfer = t.id),
           (SELECT coalesce(sum(p.len), 0) FROM parts p WHERE p.transfer = t.id)
    FROM transfers t";

fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<TransferSummary> {
    Ok(TransferSummary {
        id: TransferId(r.get::<_, i64>(0)? as u64),
        source: r.get(1)?,
        destination: r.get(2)?,
        options: r.get(3)?,
        created: from_ms(r.get(4)?),
        last_run: from_ms(r.get(5)?),
        runs: r.get::<_, i64>(6)? as u64,
        complete: r.get(7)?,
        completed: r.get::<_, Option<i64>>(8)?.map(from_ms),
        objects_done: r.get::<_, i64>(9)? as u64,
        bytes_done: r.get::<_, i64>(10)? as u64,
        open_uploads: r.get::<_, i64>(11)? as u64,
        upload_bytes_done: r.get::<_, i64>(12)? as u64,
    })
}

/// Whether a journaled source version is the one listed now: same size, and same ETag when both
/// have one, else same mtime (both absent counts as the same: size is all there is to compare).
fn same_version(
    size: u64,
    etag: Option<&str>,
    mtime: Option<SystemTime>,
    now: &ObjectMeta,
) -> bool {
    if size != now.size {
        return false;
    }
    match (etag, now.etag.as_deref()) {
        (Some(a), Some(b)) => a == b,
        // Compare at the journal's resolution (nanoseconds), which is what was stored.
        _ => mtime_ns(mtime) == mtime_ns(now.mtime),
    }
}

pub(crate) fn to_sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

pub(crate) fn mtime_ns(t: Option<SystemTime>) -> Option<i64> {
    t.map(|t| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    })
}

fn from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Journal>();
    }

    #[test]
    fn transfer_id_is_stable_and_parses() {
        let id = TransferIdentity::new("s3://a/", "/tmp/b/", "").id();
        // Pinned: journals on disk are keyed by this; changing the hash orphans them.
        assert_eq!(id.to_string(), "480f8fd970ca5219");
        assert_eq!(id, TransferIdentity::new("s3://a/", "/tmp/b/", "").id());
        assert_eq!(id.to_string().parse::<TransferId>().unwrap(), id);
        assert_ne!(id, TransferIdentity::new("s3://a", "//tmp/b/", "").id());
        assert_ne!(id, TransferIdentity::new("s3://a/", "/tmp/b", "/").id());
        assert!("xyz".parse::<TransferId>().is_err());
    }

    #[test]
    fn time_conversions_round_trip() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(mtime_ns(Some(from_ns(ns))), Some(ns));
        }
        for ms in [0i64, 1_700_000_000_123, -1234] {
            let t = from_ms(ms);
            assert_eq!(t, from_ms(ms));
        }
        assert_eq!(mtime_ns(None), None);
    }

    #[test]
    fn version_rule() {
        let mut now = ObjectMeta::new("k", 10);
        now.etag = Some("e1".into());
        now.mtime = Some(from_ns(1_000));
        // ETag on both sides decides, whatever the mtime.
        assert!(same_version(10, Some("e1"), Some(from_ns(2_000)), &now));
        assert!(!same_version(10, Some("e2"), Some(from_ns(1_000)), &now));
        // Size always counts.
        assert!(!same_version(11, Some("e1"), Some(from_ns(1_000)), &now));
        // No ETag on one side: the mtime decides.
        assert!(same_version(10, None, Some(from_ns(1_000)), &now));
        assert!(!same_version(10, None, Some(from_ns(1_001)), &now));
        assert!(!same_version(10, None, None, &now));
    }
}
