//! The writer thread: the only connection that writes, fed by a channel, committing in batches.
//!
//! Why a thread: SQLite allows one writer at a time and a commit costs far more than an insert, so
//! 100,000 `record_done` calls from many tokio tasks each opening their own transaction would
//! serialise on the write lock and spend their time committing. Instead the callers only push a
//! message (no I/O on their thread) and this thread applies whatever has queued up in one
//! transaction, committing every [`BATCH_WINDOW`] or [`BATCH_MAX`] writes, whichever comes first,
//! or at once when someone waits for a commit (a flush or a synchronous operation).

use crate::{mtime_ns, now_ms, to_sql_i64, JournalError, Result, TransferIdentity};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a queued write waits before it is committed: what a crash may lose.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// The most writes in one transaction. Only reached when writes queue up faster than they are
/// committed (then the window no longer bounds the batch): a larger batch touches each B-tree page
/// once for more records. Measured on 100k keys arriving out of order, going from 1,000 to 10,000
/// cut the pages written several times over. It does not change what a crash loses (what is
/// queued is lost either way); it only bounds the memory of one batch.
pub(crate) const BATCH_MAX: usize = 10_000;

/// State shared by the callers and the writer thread.
#[derive(Default)]
pub(crate) struct Shared {
    /// Writes queued but not yet committed (or dropped after an error). Readers that must see
    /// earlier writes flush only when this is non-zero.
    pub(crate) outstanding: AtomicU64,
    /// Source keys with a queued, uncommitted `record_done`, per transfer, with their count.
    /// `is_done` flushes only when its key is in here, so the hot path on a resume does not wait
    /// for the writer even while other records are being written.
    pub(crate) pending_done: Mutex<HashMap<u64, HashMap<String, u32>>>,
    /// The first failure of a queued write since it was last reported.
    pub(crate) background_error: Mutex<Option<String>>,
    /// Queued writes that failed (alone, or with their batch) since the journal was opened.
    pub(crate) lost: AtomicU64,
    /// Held while an announced write ([`Write::Writing`]) is sent and counted, so that they
    /// are counted in the order sent and the number applied is always a prefix of them.
    pub(crate) announcing: Mutex<()>,
    /// Announced writes queued so far.
    pub(crate) announced: AtomicU64,
    /// Announced writes committed (or lost with their batch, which is reported) so far.
    pub(crate) announced_applied: AtomicU64,
}

impl Shared {
    pub(crate) fn take_background_error(&self) -> Option<String> {
        lock(&self.background_error).take()
    }

    fn set_background_error(&self, message: String) {
        tracing::warn!(error = %message, "journal: a batched write failed");
        let mut slot = lock(&self.background_error);
        if slot.is_none() {
            *slot = Some(message);
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What callers send to the writer.
pub(crate) enum Cmd {
    /// Applied in the next batch; nobody waits.
    Write(Write),
    /// Commits everything queued before it (and the operation, if any), then replies.
    Barrier(Barrier),
}

pub(crate) enum Write {
    Done {
        transfer: u64,
        src_key: String,
        size: u64,
        etag: Option<String>,
        mtime_ns: Option<i64>,
        dst_key: String,
        checksum: Option<String>,
        at_ms: i64,
        /// Kept alive until the record is committed (or lost with its batch), then dropped.
        until_committed: Option<Box<dyn Send>>,
    },
    Part {
        transfer: u64,
        upload_id: String,
        number: u32,
        len: u64,
        etag: String,
        checksum: Option<String>,
    },
    UploadFinished {
        transfer: u64,
        upload_id: String,
    },
    Created {
        transfer: u64,
        dst_key: String,
    },
    /// A sync's write of `dst_key` planned (see `Journal::writing`).
    Writing {
        transfer: u64,
        dst_key: String,
    },
    /// A fleet coordinator's lease records (see `fleet.rs`).
    Fleet(crate::fleet::FleetWrite),
}

pub(crate) struct Barrier {
    pub(crate) op: Option<Op>,
    /// Commit with `synchronous=FULL` so the commit (and all before it) survives power loss.
    pub(crate) durable: bool,
    pub(crate) reply: Sender<Result<()>>,
}

/// Operations whose caller waits until they are committed.
pub(crate) enum Op {
    Begin {
        id: u64,
        identity: TransferIdentity,
    },
    Forget {
        id: u64,
    },
    MarkComplete {
        id: u64,
        complete: bool,
    },
    Undone {
        id: u64,
        dst_keys: Vec<String>,
    },
    UploadStarted {
        transfer: u64,
        upload_id: String,
        dst_key: String,
        src_key: String,
        size: u64,
        etag: Option<String>,
        mtime: Option<std::time::SystemTime>,
        part_size: u64,
    },
    Creating {
        transfer: u64,
        dst_key: String,
    },
}

/// The writer thread's loop. Returns when every sender is gone, after committing what was queued.
pub(crate) fn run(conn: Connection, rx: Receiver<Cmd>, shared: Arc<Shared>) {
    let mut writer = Writer {
        conn,
        shared,
        unsynced: false,
    };
    let mut disconnected = false;
    while !disconnected {
        let first = match rx.recv() {
            Ok(cmd) => cmd,
            Err(_) => break,
        };
        let mut writes = Vec::new();
        let mut barrier = None;
        match first {
            Cmd::Write(w) => writes.push(w),
            Cmd::Barrier(b) => barrier = Some(b),
        }
        if barrier.is_none() {
            // The window is slept out in `park_timeout` rather than waited out on the channel:
            // a blocked receiver costs every queued write a wake-up of this thread (a futex
            // call and a context switch, thousands a second on small objects), while a parked
            // one is woken only when it is waited for: by a barrier, a full batch or the
            // journal's drop (`Journal::wake_writer`).
            let deadline = Instant::now() + BATCH_WINDOW;
            'window: while writes.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(Cmd::Write(w)) => writes.push(w),
                    Ok(Cmd::Barrier(b)) => {
                        barrier = Some(b);
                        break 'window;
                    }
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break 'window;
                    }
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break 'window;
                        }
                        std::thread::park_timeout(deadline - now);
                    }
                }
            }
        }
        writer.apply_batch(writes, barrier, false);
    }
    // The journal was dropped: make everything durable, so a clean exit keeps all records even
    // through a later power loss.
    writer.apply_batch(Vec::new(), None, true);
    // Fold the WAL back into the database so the journal is a single file at rest. Best effort;
    // SQLite also tries when it closes the last connection.
    if let Err(e) = writer.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
        tracing::debug!(error = %e, "journal: final checkpoint failed");
    }
}

struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    /// Whether a commit made with `synchronous=NORMAL` may not be on disk yet.
    unsynced: bool,
}

impl Writer {
    fn apply_batch(&mut self, writes: Vec<Write>, barrier: Option<Barrier>, last: bool) {
        let durable = last || barrier.as_ref().is_some_and(|b| b.durable);
        let (reply, op) = match barrier {
            Some(b) => (Some(b.reply), b.op),
            None => (None, None),
        };
        let outcome = if writes.is_empty() && op.is_none() && !(durable && self.unsynced) {
            // Nothing to write and nothing to sync: everything before is committed.
            Ok((None, Ok(())))
        } else {
            if durable {
                set_synchronous(&self.conn, "FULL");
            }
            let outcome = transact(&mut self.conn, &writes, op, durable);
            if durable {
                set_synchronous(&self.conn, "NORMAL");
            }
            if outcome.is_ok() {
                // A FULL commit syncs the whole WAL, earlier NORMAL commits included.
                self.unsynced = !durable;
            }
            outcome
        };

        // Bookkeeping before replying, so a woken caller sees the counters already updated.
        let shared = &self.shared;
        shared
            .outstanding
            .fetch_sub(writes.len() as u64, Ordering::AcqRel);
        let announced = writes
            .iter()
            .filter(|w| matches!(w, Write::Writing { .. }))
            .count();
        shared
            .announced_applied
            .fetch_add(announced as u64, Ordering::AcqRel);
        let mut pending = lock(&shared.pending_done);
        for w in &writes {
            if let Write::Done {
                transfer, src_key, ..
            } = w
            {
                if let Some(keys) = pending.get_mut(transfer) {
                    if let Some(n) = keys.get_mut(src_key.as_str()) {
                        *n -= 1;
                        if *n == 0 {
                            keys.remove(src_key.as_str());
                        }
                    }
                    if keys.is_empty() {
                        pending.remove(transfer);
                    }
                }
            }
        }
        drop(pending);

        let op_result = match outcome {
            Ok((write_error, op_result)) => {
                if let Some((failed, e)) = write_error {
                    shared.lost.fetch_add(failed, Ordering::AcqRel);
                    shared.set_background_error(e.to_string());
                }
                op_result
            }
            Err(e) => {
                if !writes.is_empty() {
                    shared.lost.fetch_add(writes.len() as u64, Ordering::AcqRel);
                    shared.set_background_error(format!(
                        "{} journal records lost: {e}",
                        writes.len()
                    ));
                }
                Err(e)
            }
        };
        if let Some(reply) = reply {
            // The caller may have gone away (its thread panicked); nothing to do then.
            let _ = reply.send(op_result);
        }
        // Only now, with the batch committed (or lost), is what the records held released.
        for w in writes {
            if let Write::Done {
                until_committed, ..
            } = w
            {
                drop(until_committed);
            }
        }
    }
}

fn set_synchronous(conn: &Connection, level: &str) {
    if let Err(e) = conn.pragma_update(None, "synchronous", level) {
        tracing::warn!(error = %e, level, "journal: cannot set synchronous");
    }
}

/// How many writes of a batch failed, and the first one's error.
type FailedWrites = (u64, JournalError);

/// One transaction: all queued writes, then the waited-for operation (in a savepoint, so its
/// failure does not take the batch with it). Returns how many writes failed with the first
/// one's error, and the operation's result; `Err` when the transaction itself could not be
/// begun or committed.
fn transact(
    conn: &mut Connection,
    writes: &[Write],
    op: Option<Op>,
    durable: bool,
) -> Result<(Option<FailedWrites>, Result<()>)> {
    // IMMEDIATE takes the write lock up front, so a concurrent writer in another process makes
    // us wait (busy_timeout) at BEGIN instead of failing half-way with SQLITE_BUSY.
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut write_error: Option<FailedWrites> = None;
    for w in writes {
        if let Err(e) = apply_write(&tx, w) {
            write_error.get_or_insert((0, e)).0 += 1;
        }
    }
    let op_result = match op {
        Some(op) => {
            let mut sp = tx.savepoint()?;
            match apply_op(&sp, op) {
                Ok(()) => sp.commit().map_err(JournalError::from),
                Err(e) => {
                    sp.rollback()?;
                    Err(e)
                }
            }
        }
        None => Ok(()),
    };
    if durable {
        // A transaction that writes nothing appends nothing to the WAL, and then its commit
        // syncs nothing; this one-row write makes sure a durable commit really reaches the disk.
        tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_sync_ms', ?1)")?
            .execute([now_ms()])?;
    }
    tx.commit()?;
    Ok((write_error, op_result))
}

fn apply_write(tx: &Transaction<'_>, w: &Write) -> Result<()> {
    match w {
        Write::Done {
            transfer,
            src_key,
            size,
            etag,
            mtime_ns,
            dst_key,
            checksum,
            at_ms,
            ..
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO objects
                     (transfer, src_key, size, etag, mtime_ns, dst_key, checksum, done_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                *transfer as i64,
                src_key,
                to_sql_i64(*size),
                etag,
                mtime_ns,
                // Usually the same key: not stored twice (NULL means "as src_key").
                (dst_key != src_key).then_some(dst_key),
                checksum,
                at_ms
            ])?;
            tx.prepare_cached("DELETE FROM writing WHERE transfer = ?1 AND dst_key = ?2")?
                .execute(params![*transfer as i64, dst_key])?;
        }
        Write::Part {
            transfer,
            upload_id,
            number,
            len,
            etag,
            checksum,
        } => {
            // Only for an upload still open: a late part of an upload already completed or
            // aborted must not leave an orphan row behind.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO parts (transfer, upload_id, number, len, etag, checksum)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE EXISTS (SELECT 1 FROM uploads WHERE transfer = ?1 AND upload_id = ?2)",
            )?
            .execute(params![
                *transfer as i64,
                upload_id,
                number,
                to_sql_i64(*len),
                etag,
                checksum
            ])?;
        }
        Write::UploadFinished {
            transfer,
            upload_id,
        } => {
            let t = *transfer as i64;
            tx.prepare_cached("DELETE FROM parts WHERE transfer = ?1 AND upload_id = ?2")?
                .execute(params![t, upload_id])?;
            tx.prepare_cached("DELETE FROM uploads WHERE transfer = ?1 AND upload_id = ?2")?
                .execute(params![t, upload_id])?;
        }
        Write::Created { transfer, dst_key } => {
            tx.prepare_cached("DELETE FROM creating WHERE transfer = ?1 AND dst_key = ?2")?
                .execute(params![*transfer as i64, dst_key])?;
        }
        Write::Writing { transfer, dst_key } => {
            tx.prepare_cached("INSERT OR IGNORE INTO writing (transfer, dst_key) VALUES (?1, ?2)")?
                .execute(params![*transfer as i64, dst_key])?;
        }
        Write::Fleet(w) => crate::fleet::apply(tx, w)?,
    }
    Ok(())
}

fn apply_op(tx: &Connection, op: Op) -> Result<()> {
    match op {
        Op::Begin { id, identity } => {
            let t = id as i64;
            let existing: Option<(String, String, String, bool)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT source, destination, options, complete FROM transfers WHERE id = ?1",
                )?;
                let mut rows = stmt.query([t])?;
                match rows.next()? {
                    Some(r) => Some((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    None => None,
                }
            };
            let now = now_ms();
            match existing {
                Some((source, destination, options, complete)) => {
                    if source != identity.source
                        || destination != identity.destination
                        || options != identity.options
                    {
                        return Err(JournalError::IdCollision(format!("{id:016x}")));
                    }
                    // A finished transfer run again is a new run: what it copied may have
                    // been deleted or replaced at the destination since, so nothing is
                    // skipped for having been done. (Open uploads and announced creations
                    // stay: a sweep still needs them.)
                    if complete {
                        for table in [
                            "objects",
                            "differing",
                            "writing",
                            "fleet_items",
                            "fleet_leases",
                        ] {
                            tx.execute(&format!("DELETE FROM {table} WHERE transfer = ?1"), [t])?;
                        }
                    }
                    // Running again: not complete until this run says so.
                    tx.execute(
                        "UPDATE transfers SET last_run_ms = ?2, runs = runs + 1, complete = 0
                         WHERE id = ?1",
                        params![t, now],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO transfers
                             (id, source, destination, options, created_ms, last_run_ms, runs)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
                        params![
                            t,
                            identity.source,
                            identity.destination,
                            identity.options,
                            now
                        ],
                    )?;
                }
            }
        }
        Op::Forget { id } => {
            let t = id as i64;
            for table in [
                "parts",
                "uploads",
                "creating",
                "objects",
                "differing",
                "writing",
                "fleet_items",
                "fleet_leases",
            ] {
                tx.execute(&format!("DELETE FROM {table} WHERE transfer = ?1"), [t])?;
            }
            tx.execute("DELETE FROM transfers WHERE id = ?1", [t])?;
        }
        Op::Undone { id, dst_keys } => {
            // One pass over the transfer's records, whatever the number of keys.
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS undone (key TEXT PRIMARY KEY) WITHOUT ROWID;
                 DELETE FROM temp.undone;",
            )?;
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO temp.undone VALUES (?1)")?;
            for key in &dst_keys {
                insert.execute([key])?;
            }
            tx.execute(
                "DELETE FROM objects WHERE transfer = ?1
                 AND coalesce(dst_key, src_key) IN (SELECT key FROM temp.undone)",
                [id as i64],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO differing SELECT ?1, key FROM temp.undone",
                [id as i64],
            )?;
        }
        Op::MarkComplete { id, complete } => {
            tx.execute(
                "UPDATE transfers SET complete = ?2, completed_ms = ?3 WHERE id = ?1",
                params![id as i64, complete, complete.then(now_ms)],
            )?;
        }
        Op::UploadStarted {
            transfer,
            upload_id,
            dst_key,
            src_key,
            size,
            etag,
            mtime,
            part_size,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO uploads
                     (transfer, upload_id, dst_key, src_key, size, etag, mtime_ns, part_size,
                      started_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                transfer as i64,
                upload_id,
                dst_key,
                src_key,
                to_sql_i64(size),
                etag,
                mtime_ns(mtime),
                to_sql_i64(part_size),
                now_ms()
            ])?;
        }
        Op::Creating { transfer, dst_key } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO creating (transfer, dst_key, started_ms)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![transfer as i64, dst_key, now_ms()])?;
        }
    }
    Ok(())
}
