//! Opening a journal database and bringing its schema up to date.
//!
//! The schema version lives in SQLite's `user_version` header field. Each entry of [`MIGRATIONS`]
//! takes the database from version `i` to `i + 1`; a journal written by a newer skyhaul (a version
//! above ours) is refused rather than misread. `application_id` marks the file as a skyhaul journal
//! so `--journal some-other.db` cannot scribble over an unrelated SQLite database.

use crate::{JournalError, Result};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// `application_id` of a skyhaul journal: "skyh" in ASCII.
pub(crate) const APPLICATION_ID: i32 = 0x736b_7968;

/// How long a statement waits for another connection (another skyhaul process, or `skyhaul status`)
/// holding the write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Schema migrations; `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
///
/// Notes on the shape of v1:
/// - Transfer ids are the 64-bit hash of the identity, stored as INTEGER (the bits reinterpreted
///   as i64): smaller keys and faster lookups than hex text.
/// - `objects`, `uploads` and `parts` are WITHOUT ROWID tables whose primary key starts with the
///   transfer: the primary key *is* the lookup index, so `is_done` is one B-tree descent and
///   `forget` / the per-transfer counts are range scans.
/// - No foreign keys: records may arrive for a transfer before `begin` commits (they are batched
///   on another path), and `forget` deletes explicitly.
/// - `objects.dst_key` is NULL when it equals `src_key` (the usual case): rows stay small.
/// - Times are Unix milliseconds; source mtimes are Unix nanoseconds (negative before 1970).
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

CREATE TABLE transfers (
    id            INTEGER PRIMARY KEY,
    source        TEXT    NOT NULL,
    destination   TEXT    NOT NULL,
    options       TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL,
    last_run_ms   INTEGER NOT NULL,
    runs          INTEGER NOT NULL DEFAULT 1,
    complete      INTEGER NOT NULL DEFAULT 0,
    completed_ms  INTEGER
);

CREATE TABLE objects (
    transfer   INTEGER NOT NULL,
    src_key    TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    etag       TEXT,
    mtime_ns   INTEGER,
    dst_key    TEXT,               -- NULL: same as src_key
    checksum   TEXT,
    done_ms    INTEGER NOT NULL,
    PRIMARY KEY (transfer, src_key)
) WITHOUT ROWID;

CREATE TABLE uploads (
    transfer   INTEGER NOT NULL,
    upload_id  TEXT    NOT NULL,
    dst_key    TEXT    NOT NULL,
    src_key    TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    etag       TEXT,
    mtime_ns   INTEGER,
    part_size  INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (transfer, upload_id)
) WITHOUT ROWID;

CREATE INDEX uploads_by_source ON uploads (transfer, src_key);

CREATE TABLE parts (
    transfer   INTEGER NOT NULL,
    upload_id  TEXT    NOT NULL,
    number     INTEGER NOT NULL,
    len        INTEGER NOT NULL,
    etag       TEXT    NOT NULL,
    checksum   TEXT,
    PRIMARY KEY (transfer, upload_id, number)
) WITHOUT ROWID;
"#,
    r#"
-- v2: multipart uploads being created. A row is committed before CreateMultipartUpload is
-- sent and removed once the new upload's id is journaled; a row left behind (a crash or a
-- lost response in between) means an upload may exist that no record names, to be found by
-- listing the destination's uploads for that key.
CREATE TABLE creating (
    transfer   INTEGER NOT NULL,
    dst_key    TEXT    NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (transfer, dst_key)
) WITHOUT ROWID;
"#,
    r#"
-- v3: a fleet coordinator's leases: which worker held which work items, and what became of
-- each (see fleet.rs). `payload` is the items as handed out, so that a restarted coordinator
-- can take back the leases still out.
CREATE TABLE fleet_leases (
    transfer   INTEGER NOT NULL,
    lease_id   INTEGER NOT NULL,
    worker     TEXT    NOT NULL,
    bytes      INTEGER NOT NULL,
    payload    TEXT    NOT NULL,
    granted_ms INTEGER NOT NULL,
    state      TEXT    NOT NULL,   -- granted, completed, expired
    ended_ms   INTEGER,
    PRIMARY KEY (transfer, lease_id)
) WITHOUT ROWID;

CREATE TABLE fleet_items (
    transfer   INTEGER NOT NULL,
    lease_id   INTEGER NOT NULL,
    item       TEXT    NOT NULL,
    outcome    TEXT,               -- NULL while leased; done, duplicate, failed, expired
    PRIMARY KEY (transfer, lease_id, item)
) WITHOUT ROWID;
"#,
    r#"
-- v4: objects the check after a copy found missing or different at the destination, until
-- the transfer finishes. Their `objects` rows are gone (so `cp` copies them again); a sync's
-- listing may still find them up to date (another writer's newer object of the same size),
-- and this is how its rerun knows to copy them anyway.
CREATE TABLE differing (
    transfer   INTEGER NOT NULL,
    dst_key    TEXT    NOT NULL,
    PRIMARY KEY (transfer, dst_key)
) WITHOUT ROWID;
"#,
    r#"
-- v5: a sync's writes, each committed before its write begins and removed with the object's
-- `objects` row. A row left behind names a key the store may hold although no record says so
-- (the run stopped between the write and its record, which are committed in batches). A `cp`
-- rerun copies such an object again for want of a record; a sync's listing finds it up to
-- date, and this is how its rerun knows to copy it anyway.
CREATE TABLE writing (
    transfer   INTEGER NOT NULL,
    dst_key    TEXT    NOT NULL,
    PRIMARY KEY (transfer, dst_key)
) WITHOUT ROWID;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn base_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Opens the connection the writer thread owns: WAL, `synchronous=NORMAL`, schema up to date.
pub(crate) fn open_writer(path: &Path) -> Result<Connection> {
    let mut conn = base_connection(path)?;
    // WAL: readers never block the writer and a crash at any moment leaves a consistent
    // database (the WAL is replayed or ignored on the next open).
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Happens on file systems without shared memory support (some network file systems).
        // Rollback journaling is still crash-safe, only slower and with more lock contention.
        tracing::warn!(path = %path.display(), mode, "journal: WAL mode unavailable");
    }
    // NORMAL in WAL mode: a commit does not fsync, so a power loss may lose the last commits, but
    // never corrupts. Lost records only mean some objects are copied again. Commits that must
    // survive power loss (begin, upload_started, flush) switch to FULL for their transaction.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Out-of-order keys touch pages all over the objects B-tree; with SQLite's default 2 MiB
    // cache each batch re-reads most of them. 64 MiB holds the hot part of a million-object
    // transfer (the memory is only taken as it is used).
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Checkpoint (copy the WAL into the database, with two fsyncs) every ~40 MiB of WAL instead
    // of SQLite's ~4 MiB: a batch of scattered keys alone can write 4 MiB of pages.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a connection for reads: same file, never writes.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let conn = base_connection(path)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Opens a connection that can only read, for a journal this process may not write (on a
/// read-only mount): `status` still shows it. Nothing is migrated; a file that is not a
/// journal of a version this build reads is refused. SQLite reads a WAL database only if it
/// can create the WAL's shared-memory file, or else as immutable (nothing can write it).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let checked = |target: &str| -> Result<Connection> {
        let conn = Connection::open_with_flags(target, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        // Version 0 is a journal not yet made, which only a writer makes.
        if app_id != APPLICATION_ID || version == 0 {
            return Err(JournalError::NotAJournal);
        }
        readable(version)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    };
    let plain = path.to_string_lossy();
    match checked(&plain) {
        Err(JournalError::Sqlite(_)) => {
            let uri = plain
                .replace('%', "%25")
                .replace('?', "%3F")
                .replace('#', "%23");
            checked(&format!("file:{uri}?immutable=1"))
        }
        r => r,
    }
}

/// Whether this build can read a journal of schema `version` (an upgrade where it is older).
fn readable(version: i64) -> Result<()> {
    if version < 0 {
        return Err(JournalError::NotAJournal);
    }
    if version > SCHEMA_VERSION {
        return Err(JournalError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    // IMMEDIATE: two processes opening a fresh journal at once must not both create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let app_id: i32 = tx.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app_id != APPLICATION_ID {
        let has_tables: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table')",
            [],
            |r| r.get(0),
        )?;
        if app_id != 0 || has_tables {
            return Err(JournalError::NotAJournal);
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    readable(version)?;
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.execute_batch(sql)?;
    }
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}
