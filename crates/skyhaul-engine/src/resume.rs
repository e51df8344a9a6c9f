//! The engine's side of the journal: what to skip, what to continue, what to clean up.
//!
//! Every call is a no-op without a journal (`--no-journal`), so the copy code reads the
//! same either way. Journal errors never fail a copy: the worst a lost record can do is
//! make a rerun copy an object or a part again, so they are logged and the copy goes on.

use crate::integrity::ChunkSums;
use crate::retry::RetryPolicy;
use crate::{limiter::AdaptiveLimit, progress::Progress};
use skyhaul_journal::{Journal, ResumableUpload, TransferId, TransferIdentity};
use skyhaul_store::{CompletedPart, MultipartUpload, ObjectMeta, Store};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub struct Resume {
    journal: Option<(Arc<Journal>, TransferId)>,
    /// Uploads this run created or resumed; any other open upload is no longer needed.
    used: Mutex<HashSet<String>>,
}

fn warn<T>(what: &str, r: Result<T, skyhaul_journal::JournalError>) -> Option<T> {
    r.map_err(|e| tracing::warn!("journal: {what}: {e}")).ok()
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
            Some(("md5", v)) => md5 = hex::decode(v).ok().and_then(|b| b.try_into().ok()),
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
            used: Mutex::new(HashSet::new()),
        }
    }

    pub fn begin(
        journal: Arc<Journal>,
        identity: &TransferIdentity,
    ) -> Result<Self, skyhaul_journal::JournalError> {
        let id = journal.begin(identity)?;
        Ok(Resume {
            journal: Some((journal, id)),
            used: Mutex::new(HashSet::new()),
        })
    }

    pub fn id(&self) -> Option<TransferId> {
        self.journal.as_ref().map(|(_, id)| *id)
    }

    /// Whether an earlier run already copied this version of the object.
    pub fn is_done(&self, src: &ObjectMeta) -> bool {
        let Some((j, id)) = &self.journal else {
            return false;
        };
        warn("lookup", j.is_done(*id, src)).flatten().is_some()
    }

    pub fn done(&self, src: &ObjectMeta, dst_key: &str, crc64: Option<u64>) {
        if let Some((j, id)) = &self.journal {
            let sum = crc64.map(|c| format!("crc64nvme:{c:016x}"));
            warn("record", j.record_done(*id, src, dst_key, sum.as_deref()));
        }
    }

    /// An upload of this object version and part size that an earlier run left open.
    pub fn resumable(&self, src: &ObjectMeta, part_size: u64) -> Option<ResumableUpload> {
        let (j, id) = self.journal.as_ref()?;
        let r = warn("lookup upload", j.resumable_upload(*id, src, part_size)).flatten()?;
        self.used
            .lock()
            .expect("lock")
            .insert(r.upload.upload_id.clone());
        Some(r)
    }

    /// Records a new upload durably before any part is sent, so it can never leak.
    pub fn started(&self, src: &ObjectMeta, upload: &MultipartUpload, part_size: u64) {
        if let Some((j, id)) = &self.journal {
            self.used
                .lock()
                .expect("lock")
                .insert(upload.upload_id.clone());
            warn(
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
                "record part",
                j.part_done(id, &upload_id, &part, sums.as_deref()),
            );
            warn("commit part", j.flush());
        })
        .await;
    }

    pub fn finished(&self, upload: &MultipartUpload) {
        if let Some((j, id)) = &self.journal {
            warn(
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
        let open = warn("list uploads", j.open_uploads(*id)).unwrap_or_default();
        let limit = AdaptiveLimit::new(4);
        let mut aborted = 0;
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

    /// Marks the transfer complete (or not) and makes everything recorded durable.
    pub fn finish(&self, complete: bool) {
        if let Some((j, id)) = &self.journal {
            warn("mark complete", j.mark_complete(*id, complete));
            warn("flush", j.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
