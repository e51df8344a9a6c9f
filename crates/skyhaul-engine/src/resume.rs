//! The engine's side of the journal: what to skip, what to continue, what to clean up.
//!
//! Every call is a no-op without a journal (`--no-journal`), so the copy code reads the
//! same either way. Journal errors never fail a copy: the worst a lost record can do is
//! make a rerun copy an object or a part again, so they are logged and the copy goes on.

use crate::integrity::ChunkSums;
use crate::retry::RetryPolicy;
use crate::verify::Copied;
use crate::{limiter::AdaptiveLimit, progress::Progress};
use skyhaul_journal::{Held, Journal, ResumableUpload, TransferId, TransferIdentity};
use skyhaul_store::{CompletedPart, ErrorKind, MultipartUpload, ObjectMeta, Store};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

pub struct Resume {
    journal: Option<(Arc<Journal>, TransferId)>,
    /// The transfer, held by this process while it runs (`Journal::hold`).
    _held: Option<Held>,
    /// Whether an earlier run left the transfer unfinished. On a first run, or the rerun of
    /// a finished transfer (which starts afresh), nothing can be done before this run does
    /// it, and this run asks about each object once, before copying it (a listing names it
    /// once; a fleet coordinator only takes work back from an earlier run), so the lookup —
    /// one SQLite query for each of millions of objects — is skipped.
    ran_before: bool,
    /// Uploads this run created or resumed; any other open upload is no longer needed.
    used: Mutex<HashSet<String>>,
    /// Held while announced writes are being committed ([`Resume::announced`]).
    committing: tokio::sync::Mutex<()>,
    /// The journal's lost writes when this run began ([`Journal::writes_lost`]).
    lost_before: u64,
}

/// How the journal records what an object was written with:
/// `crc64nvme:HEX written:ETAG etag:ETAG`, its CRC64-NVME where the bytes passed through
/// here, and the ETag the destination should show where that is predictable (`etag:`),
/// with the one the store answered the write with where that differs (`written:`, empty
/// when there was none). A rerun checks an object an earlier run copied with these, as that
/// run would have: a streamed or server-side copy between buckets has no CRC, only its ETag
/// to be checked by, and where the store shows that in another form than predicted (a GCS
/// composite, a multipart object at rclone), only the store's own answer tells.
fn encode_done(copied: &Copied) -> Option<String> {
    let crc = copied.crc64.map(|c| format!("crc64nvme:{c:016x}"));
    let written = match (&copied.etag, &copied.written_etag) {
        (Some(e), w) if w.as_ref() != Some(e) => {
            Some(format!("written:{}", w.as_deref().unwrap_or("")))
        }
        _ => None,
    };
    // Last, and taken to the end: an ETag holds no space, but one that did would still
    // read back whole.
    let etag = copied.etag.as_ref().map(|e| format!("etag:{e}"));
    let fields: Vec<String> = [crc, written, etag].into_iter().flatten().collect();
    (!fields.is_empty()).then(|| fields.join(" "))
}

/// [`encode_done`]'s CRC64-NVME, expected ETag and written ETag (the expected one where
/// the record names none). Journals of earlier versions hold the CRC alone, or no
/// `written:`.
fn decode_done(s: &str) -> (Option<u64>, Option<String>, Option<String>) {
    let (sums, etag) = match s.split_once("etag:") {
        Some((sums, etag)) => (sums.trim_end(), Some(etag.to_string())),
        None => (s, None),
    };
    let (sums, written) = match sums.split_once("written:") {
        Some((sums, w)) => (sums.trim_end(), Some(w).filter(|w| !w.is_empty())),
        None => (sums, etag.as_deref()),
    };
    let written = written.map(str::to_string);
    (decode_sums(sums).map(|s| s.crc64), etag, written)
}

/// Logs a journal's failure, naming its file, and goes on without: the copy itself is right,
/// only a rerun may redo more.
fn warn<T>(j: &Journal, what: &str, r: Result<T, skyhaul_journal::JournalError>) -> Option<T> {
    r.map_err(|e| tracing::warn!("{}: {what}: {e}", j.path().display()))
        .ok()
}

/// `crc64nvme:HEX md5:HEX`: a chunk's checksums as the journal keeps them.
pub fn encode_sums(s: &ChunkSums) -> String {
    match s.md5 {
        Some(m) => format!("crc64nvme:{:016x} md5:{}", s.crc64, hex::encode(m)),
        None => format!("crc64nvme:{:016x}", s.crc64),
    }
}

pub fn decode_sums(s: &str) -> Option<ChunkSums> {
    let mut crc64 = None;
    let mut md5 = None;
    for field in s.split(' ') {
        match field.split_once(':') {
            Some(("crc64nvme", v)) => crc64 = u64::from_str_radix(v, 16).ok(),
            Some(("md5", v)) => md5 = crate::integrity::md5_bytes(v),
            _ => {}
        }
    }
    Some(ChunkSums { crc64: crc64?, md5 })
}

impl Resume {
    /// Without a journal: remembers nothing.
    pub fn none() -> Self {
        Resume {
            journal: None,
            _held: None,
            ran_before: false,
            used: Mutex::new(HashSet::new()),
            committing: tokio::sync::Mutex::new(()),
            lost_before: 0,
        }
    }

    pub fn begin(
        journal: Arc<Journal>,
        identity: &TransferIdentity,
    ) -> Result<Self, skyhaul_journal::JournalError> {
        let held = journal.hold(identity.id())?;
        // When in doubt, look objects up: slower, never wrong.
        let ran_before = warn(&journal, "lookup", journal.resumable(identity.id())).unwrap_or(true);
        let id = journal.begin(identity)?;
        Ok(Resume {
            lost_before: journal.writes_lost(),
            journal: Some((journal, id)),
            _held: Some(held),
            ran_before,
            used: Mutex::new(HashSet::new()),
            committing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn id(&self) -> Option<TransferId> {
        self.journal.as_ref().map(|(_, id)| *id)
    }

    /// What an earlier run recorded of copying this version of the object, if it did.
    pub fn done_earlier(&self, src: &ObjectMeta) -> Option<Copied> {
        let (j, id) = self.journal.as_ref().filter(|_| self.ran_before)?;
        let rec = warn(j, "lookup", j.is_done(*id, src)).flatten()?;
        let (crc64, etag, written_etag) =
            rec.checksum.as_deref().map(decode_done).unwrap_or_default();
        Some(Copied {
            crc64,
            dst_key: rec.dst_key,
            size: rec.size,
            etag,
            written_etag,
            server_side: false,
            earlier: true,
        })
    }

    /// Whether a sync's rerun copies `dst_key` although its listing finds it up to date
    /// ([`Journal::copy_again`]): an earlier run's check found it different, or an earlier
    /// run stopped between writing it and recording it.
    pub fn copy_again(&self, dst_key: &str) -> bool {
        let Some((j, id)) = self.journal.as_ref().filter(|_| self.ran_before) else {
            return false;
        };
        // When in doubt, copy: slower, never wrong.
        warn(j, "lookup", j.copy_again(*id, dst_key)).unwrap_or(true)
    }

    /// Announces a sync's write of `dst_key`, planned ([`Journal::writing`]). Queued.
    pub fn announce(&self, dst_key: &str) {
        if let Some((j, id)) = &self.journal {
            warn(j, "announce write", j.writing(*id, dst_key));
        }
    }

    /// Waits until the writes announced so far are committed ([`Journal::commit_announced`]):
    /// call it before a write begins. Usually they are, and this returns at once; otherwise
    /// the commit waits for the disk, off the async threads.
    pub async fn announced(&self) {
        let Some((j, _)) = &self.journal else { return };
        if j.announcements_committed() {
            return;
        }
        // One commit at a time: the writes waiting meanwhile are all covered by it (or by
        // the next), and need no thread of their own to wait on.
        let _one = self.committing.lock().await;
        if j.announcements_committed() {
            return;
        }
        let j = j.clone();
        let _ = tokio::task::spawn_blocking(move || {
            warn(&j, "announce write", j.commit_announced());
        })
        .await;
    }

    pub fn done(&self, src: &ObjectMeta, copied: &Copied) {
        if let Some((j, id)) = &self.journal {
            let done = encode_done(copied);
            warn(
                j,
                "record",
                j.record_done(*id, src, &copied.dst_key, done.as_deref()),
            );
        }
    }

    /// [`done`](Self::done) for an object whose bytes hold `memory` of the budget: the
    /// budget is released when the record is committed, so bytes sent but not yet journaled
    /// never exceed the budget — the most a crash can make the rerun send again.
    pub fn done_holding(&self, src: &ObjectMeta, copied: &Copied, memory: OwnedSemaphorePermit) {
        if let Some((j, id)) = &self.journal {
            let (done, hold) = (encode_done(copied), Box::new(memory));
            warn(
                j,
                "record",
                j.record_done_holding(*id, src, &copied.dst_key, done.as_deref(), hold),
            );
        }
    }

    /// An upload of this object version and part size that an earlier run left open.
    pub fn resumable(&self, src: &ObjectMeta, part_size: u64) -> Option<ResumableUpload> {
        let (j, id) = self.journal.as_ref()?;
        let r = warn(j, "lookup upload", j.resumable_upload(*id, src, part_size)).flatten()?;
        self.used
            .lock()
            .expect("lock")
            .insert(r.upload.upload_id.clone());
        Some(r)
    }

    /// Announces, durably, an upload about to be created for `dst_key` (see
    /// [`Journal::creating`]): a crash before its id is journaled leaves the key named.
    pub async fn creating(&self, dst_key: &str) {
        let Some((j, id)) = &self.journal else { return };
        let (j, id, key) = (j.clone(), *id, dst_key.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            warn(&j, "announce upload", j.creating(id, &key));
        })
        .await;
    }

    /// The announced upload is journaled, and it is the only one created (the request was
    /// not retried, so no lost response can have created another).
    pub fn created(&self, dst_key: &str) {
        if let Some((j, id)) = &self.journal {
            warn(j, "confirm upload", j.created(*id, dst_key));
        }
    }

    /// Aborts the uploads that announced creations never confirmed may have left (see
    /// [`sweep_unconfirmed`]), sparing the ones this run uses. Returns how many.
    pub async fn sweep(&self, dst: &dyn Store, retry: &RetryPolicy, progress: &Progress) -> usize {
        let Some((j, id)) = &self.journal else {
            return 0;
        };
        let spare = self.used.lock().expect("lock").clone();
        sweep_unconfirmed(j, *id, dst, &spare, retry, progress).await
    }

    /// Records a new upload durably before any part is sent, so it can never leak.
    pub fn started(&self, src: &ObjectMeta, upload: &MultipartUpload, part_size: u64) {
        if let Some((j, id)) = &self.journal {
            self.used
                .lock()
                .expect("lock")
                .insert(upload.upload_id.clone());
            warn(
                j,
                "record upload",
                j.upload_started(*id, src, upload, part_size),
            );
        }
    }

    /// Records a finished part and commits it at once: a part is up to gigabytes of
    /// work, worth a commit of its own, so that an interruption re-sends at most what
    /// was in flight, not also the last batching interval's parts.
    pub async fn part(
        &self,
        upload: &MultipartUpload,
        part: &CompletedPart,
        sums: Option<&ChunkSums>,
    ) {
        let Some((j, id)) = &self.journal else { return };
        let (j, id, upload_id, part) = (j.clone(), *id, upload.upload_id.clone(), part.clone());
        let sums = sums.map(encode_sums);
        // The commit waits for the disk: keep it off the async worker threads.
        let _ = tokio::task::spawn_blocking(move || {
            warn(
                &j,
                "record part",
                j.part_done(id, &upload_id, &part, sums.as_deref()),
            );
            warn(&j, "commit part", j.flush());
        })
        .await;
    }

    pub fn finished(&self, upload: &MultipartUpload) {
        if let Some((j, id)) = &self.journal {
            warn(
                j,
                "record upload end",
                j.upload_finished(*id, &upload.upload_id),
            );
        }
    }

    /// Aborts the uploads earlier runs left open that this run did not continue (the
    /// object was finished another way, or its source changed). Returns how many.
    pub async fn abort_unused(
        &self,
        dst: &dyn Store,
        retry: &RetryPolicy,
        progress: &Progress,
    ) -> usize {
        let Some((j, id)) = &self.journal else {
            return 0;
        };
        let open = warn(j, "list uploads", j.open_uploads(*id)).unwrap_or_default();
        let limit = AdaptiveLimit::new(4);
        let mut aborted = self.sweep(dst, retry, progress).await;
        for u in open {
            if self
                .used
                .lock()
                .expect("lock")
                .contains(&u.upload.upload_id)
            {
                continue;
            }
            match retry
                .run(&limit, progress, || dst.abort_multipart(&u.upload))
                .await
            {
                Ok(()) => {
                    aborted += 1;
                    warn(
                        j,
                        "record upload end",
                        j.upload_finished(*id, &u.upload.upload_id),
                    );
                }
                Err(e) => tracing::warn!(
                    "could not abort the leftover upload of {}: {e}",
                    u.upload.key
                ),
            }
        }
        aborted
    }

    /// Forgets that the objects at `dst_keys` are done: the check after the copy found them
    /// missing or different, and a rerun must copy them again instead of skipping them.
    pub fn undo(&self, dst_keys: Vec<String>) {
        if let Some((j, id)) = &self.journal {
            warn(
                j,
                "forget objects found different",
                j.undo_done(*id, dst_keys),
            );
        }
    }

    /// Marks the transfer complete (or not) and makes everything recorded durable. A run
    /// whose records the journal lost (its disk full) does not mark it complete: `status`
    /// would show a finished transfer with fewer objects than were copied. Left unfinished,
    /// it shows what was recorded, and a rerun copies the rest again and records it.
    pub fn finish(&self, complete: bool) {
        if let Some((j, id)) = &self.journal {
            // The records still queued are written first: their failures count too.
            warn(j, "flush", j.flush());
            let lost = j.writes_lost().saturating_sub(self.lost_before);
            if complete && lost > 0 {
                tracing::warn!(
                    "{}: {lost} journal writes of this run were lost (see above): the \
                     transfer is left unfinished there, so that a rerun of the same command \
                     records what they held (copying again what no record names)",
                    j.path().display()
                );
            }
            warn(
                j,
                "mark complete",
                j.mark_complete(*id, complete && lost == 0),
            );
        }
    }
}

/// For each key whose upload creation was announced but never confirmed, lists the uploads
/// the destination holds open for that very key, and aborts those no journal record names:
/// nobody can ever complete them. The key is this transfer's to write, so an unnamed upload
/// to it is a leftover whenever it began (servers' upload dates cannot be trusted to tell:
/// moto reports the same date in 2010 for every upload). `spare` names uploads not to touch. Stores that cannot list uploads
/// (s3s-fs) are told about once; a bucket lifecycle rule is then the remedy. Returns how
/// many uploads were aborted.
pub async fn sweep_unconfirmed(
    j: &Journal,
    id: TransferId,
    dst: &dyn Store,
    spare: &HashSet<String>,
    retry: &RetryPolicy,
    progress: &Progress,
) -> usize {
    let pending = warn(j, "list announced uploads", j.unconfirmed_creates(id)).unwrap_or_default();
    if pending.is_empty() {
        return 0;
    }
    let mut known = spare.clone();
    for u in warn(j, "list uploads", j.open_uploads(id)).unwrap_or_default() {
        known.insert(u.upload.upload_id);
    }
    let limit = AdaptiveLimit::new(4);
    let mut aborted = 0;
    for (key, _) in pending {
        let listed = retry.run(&limit, progress, || dst.list_uploads(&key)).await;
        let open = match listed {
            Ok(open) => open,
            Err(e) if e.kind == ErrorKind::Unsupported => {
                tracing::warn!(
                    "{e}: an upload interrupted before it was journaled cannot be found and \
                     may remain (a lifecycle rule that expires incomplete uploads removes it)"
                );
                for (key, _) in
                    warn(j, "list announced uploads", j.unconfirmed_creates(id)).unwrap_or_default()
                {
                    warn(j, "confirm upload", j.created(id, &key));
                }
                return aborted;
            }
            Err(e) => {
                tracing::warn!("{e}: will look for leftover uploads again on the next run");
                continue;
            }
        };
        let orphans = open
            .iter()
            .filter(|u| u.key == key && !known.contains(&u.upload_id));
        let mut all_gone = true;
        for u in orphans {
            match retry.run(&limit, progress, || dst.abort_multipart(u)).await {
                Ok(()) => aborted += 1,
                Err(e) => {
                    all_gone = false;
                    tracing::warn!("could not abort the leftover upload of {key}: {e}");
                }
            }
        }
        if all_gone {
            warn(j, "confirm upload", j.created(id, &key));
        }
    }
    aborted
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyhaul_journal::JournalError;

    #[test]
    fn sums_round_trip() {
        let s = ChunkSums {
            crc64: 0xdead_beef,
            md5: Some([7; 16]),
        };
        assert_eq!(decode_sums(&encode_sums(&s)), Some(s));
        let s = ChunkSums {
            crc64: 1,
            md5: None,
        };
        assert_eq!(decode_sums(&encode_sums(&s)), Some(s));
        assert_eq!(decode_sums("garbage"), None);
    }

    fn copied(key: &str, crc64: Option<u64>, etag: Option<&str>) -> Copied {
        Copied {
            dst_key: key.to_string(),
            size: 1,
            crc64,
            etag: etag.map(str::to_string),
            written_etag: Some("\"what the store answered\"".into()),
            server_side: false,
            earlier: false,
        }
    }

    #[test]
    fn a_done_record_keeps_the_crc_and_the_expected_etag() {
        for (crc64, etag) in [
            (Some(7), Some("\"5d41402abc4b2a76b9719d911017c592\"")),
            (None, Some("\"9b2cf535f27731c974343645a3985328-3\"")),
            (Some(u64::MAX), None),
            (None, None),
            // No space belongs in an ETag, but one would not cut it short.
            (Some(1), Some("\"a b\"")),
        ] {
            let mut c = copied("k", crc64, etag);
            for written in [c.written_etag.clone(), c.etag.clone(), None] {
                c.written_etag = written;
                let read = encode_done(&c).as_deref().map(decode_done);
                // Without an expected ETag, what was written is not kept.
                let written = c.written_etag.clone().filter(|_| c.etag.is_some());
                let want = (crc64, c.etag.clone(), written);
                assert_eq!(read.unwrap_or_default(), want, "{c:?}");
            }
        }
        // What earlier versions journaled: the CRC alone, or no written ETag (the expected
        // one stands for it).
        assert_eq!(
            decode_done("crc64nvme:00000000000000ff"),
            (Some(255), None, None)
        );
        let e = Some("x-2".to_string());
        assert_eq!(decode_done("etag:x-2"), (None, e.clone(), e));
    }

    /// Records the journal could not write (its disk full) leave the transfer unfinished:
    /// `status` must not call it complete with fewer objects than were copied.
    #[test]
    fn a_run_whose_records_were_lost_is_not_marked_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let journal = Arc::new(Journal::open(&path).unwrap());
        let identity = TransferIdentity::new("s3://a/", "s3://b/", "cp");
        let complete = |j: &Journal| j.transfers().unwrap()[0].complete;

        let run = Resume::begin(journal.clone(), &identity).unwrap();
        run.done(&ObjectMeta::new("a", 1), &copied("a", Some(1), None));
        run.finish(true);
        assert!(complete(&journal));
        drop(run);

        // What a full disk does to each record, as SQLite would: the write fails.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON objects \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            )
            .unwrap();
        let run = Resume::begin(journal.clone(), &identity).unwrap();
        run.done(&ObjectMeta::new("b", 1), &copied("b", Some(2), None));
        run.finish(true);
        assert_eq!(journal.writes_lost(), 1);
        assert!(!complete(&journal), "complete, though a record was lost");
    }

    #[test]
    fn only_a_transfer_that_ran_before_looks_objects_up() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(Journal::open(&dir.path().join("j.sqlite")).unwrap());
        let identity = TransferIdentity::new("s3://a/", "s3://b/", "cp");
        let a = ObjectMeta::new("a", 1);

        let first = Resume::begin(journal.clone(), &identity).unwrap();
        assert!(!first.ran_before);
        first.done(&a, &copied("a", Some(3), Some("\"e\"")));
        // A first run asks about each object once, before copying it: not after.
        assert!(first.done_earlier(&a).is_none());
        // A run holds its transfer: another cannot begin it until it is done.
        let busy = Resume::begin(journal.clone(), &identity).err().unwrap();
        assert!(matches!(busy, JournalError::Running(_)), "{busy}");
        drop(first);

        let second = Resume::begin(journal.clone(), &identity).unwrap();
        assert!(second.ran_before);
        let earlier = second.done_earlier(&a).unwrap();
        assert_eq!(earlier.dst_key, "a");
        // Checked as the first run would have: by its CRC and the ETag it expected, or
        // the store's answer where it shows another form; but that answer is no stand-in
        // for a listing without ETags.
        let checked_by = (earlier.crc64, earlier.etag.as_deref(), earlier.earlier);
        assert_eq!(checked_by, (Some(3), Some("\"e\""), true));
        let written = earlier.written_etag.as_deref();
        assert_eq!(written, Some("\"what the store answered\""));
        let other = ObjectMeta::new("a", 2);
        assert!(second.done_earlier(&other).is_none(), "another version");

        // A run that recorded nothing still counts: a restarted fleet coordinator must look
        // up what its workers reported for the leases it took back.
        let idle = TransferIdentity::new("s3://a/", "s3://c/", "cp");
        drop(Resume::begin(journal.clone(), &idle).unwrap());
        assert!(Resume::begin(journal, &idle).unwrap().ran_before);
    }
}
