//! Behaviour of the journal through its public API.

use skyhaul_journal::{Journal, JournalError, TransferId, TransferIdentity};
use skyhaul_store::{CompletedPart, MultipartUpload, ObjectMeta};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn identity(n: u32) -> TransferIdentity {
    TransferIdentity::new(format!("s3://src/{n}/"), "/data/dst/", "sync;crc64nvme")
}

fn obj(key: &str, size: u64, etag: Option<&str>, mtime_s: Option<u64>) -> ObjectMeta {
    let mut m = ObjectMeta::new(key, size);
    m.etag = etag.map(str::to_string);
    m.mtime = mtime_s.map(|s| UNIX_EPOCH + Duration::from_secs(s));
    m
}

fn open_temp() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("nested/dir/journal.sqlite")).unwrap();
    (dir, j)
}

fn part(number: u32, len: u64) -> CompletedPart {
    CompletedPart {
        number,
        len,
        etag: format!("etag-{number}"),
        opaque_etag: false,
    }
}

#[test]
fn records_round_trip_and_summaries() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    assert_eq!(id, identity(1).id());

    let a = obj("a.txt", 100, Some("e-a"), Some(1_700_000_000));
    let b = obj("dir/b.bin", 2_000, None, Some(1_700_000_001));
    j.record_done(id, &a, "dst/a.txt", Some("crc64nvme:abc"))
        .unwrap();
    j.record_done(id, &b, "dst/dir/b.bin", None).unwrap();

    // Visible at once, without an explicit flush (read-your-writes).
    let rec = j.is_done(id, &a).unwrap().expect("a is done");
    assert_eq!(rec.src_key, "a.txt");
    assert_eq!(rec.dst_key, "dst/a.txt");
    assert_eq!(rec.size, 100);
    assert_eq!(rec.etag.as_deref(), Some("e-a"));
    assert_eq!(rec.mtime, a.mtime);
    assert_eq!(rec.checksum.as_deref(), Some("crc64nvme:abc"));
    assert!(rec.done_at <= SystemTime::now());
    assert!(j.is_done(id, &b).unwrap().is_some());
    assert!(j.is_done(id, &obj("c", 1, None, None)).unwrap().is_none());
    assert_eq!(j.done_count(id).unwrap(), (2, 2_100));

    // Another transfer does not see them.
    let other = j.begin(&identity(2)).unwrap();
    assert_ne!(other, id);
    assert!(j.is_done(other, &a).unwrap().is_none());
    assert_eq!(j.done_count(other).unwrap(), (0, 0));

    let list = j.transfers().unwrap();
    assert_eq!(list.len(), 2);
    let s = list.iter().find(|s| s.id == id).unwrap();
    assert_eq!(s.source, "s3://src/1/");
    assert_eq!(s.destination, "/data/dst/");
    assert_eq!(s.options, "sync;crc64nvme");
    assert_eq!(
        (s.objects_done, s.bytes_done, s.open_uploads),
        (2, 2_100, 0)
    );
    assert_eq!(s.runs, 1);
    assert_eq!(s.status(), "in progress");
    assert!(s.created <= s.last_run);

    j.mark_complete(id, true).unwrap();
    let s = j.find(&id.to_string()).unwrap().unwrap();
    assert!(s.complete);
    assert!(s.completed.is_some());
    assert_eq!(s.status(), "complete");

    // A new run of the same transfer: same id, run count bumped, not complete any more.
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(j.begin(&identity(1)).unwrap(), id);
    let s2 = j.find(&id.to_string()).unwrap().unwrap();
    assert_eq!(s2.runs, 2);
    assert!(!s2.complete);
    assert!(s2.last_run > s.last_run);
    assert_eq!(s2.created, s.created);
    assert_eq!(j.transfers().unwrap()[0].id, id, "most recently run first");

    // The finished run's records are gone (see a_finished_transfer_run_again_starts_afresh);
    // recording again replaces.
    assert_eq!(j.done_count(id).unwrap(), (0, 0));
    j.record_done(id, &a, "dst/a.txt", None).unwrap();
    j.record_done(id, &a, "dst/a2.txt", None).unwrap();
    assert_eq!(j.is_done(id, &a).unwrap().unwrap().dst_key, "dst/a2.txt");
    assert_eq!(j.done_count(id).unwrap(), (1, 100));
    j.integrity_check().unwrap();
}

#[test]
fn is_done_honours_source_changes() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();

    // With an ETag: size and ETag decide; the mtime does not matter.
    let with_etag = obj("e", 10, Some("v1"), Some(100));
    j.record_done(id, &with_etag, "e", None).unwrap();
    assert!(j.is_done(id, &with_etag).unwrap().is_some());
    assert!(j
        .is_done(id, &obj("e", 10, Some("v1"), Some(999)))
        .unwrap()
        .is_some());
    assert!(j
        .is_done(id, &obj("e", 10, Some("v2"), Some(100)))
        .unwrap()
        .is_none());
    assert!(j
        .is_done(id, &obj("e", 11, Some("v1"), Some(100)))
        .unwrap()
        .is_none());
    // ETag missing on the listing now: fall back to the mtime.
    assert!(j
        .is_done(id, &obj("e", 10, None, Some(100)))
        .unwrap()
        .is_some());
    assert!(j
        .is_done(id, &obj("e", 10, None, Some(101)))
        .unwrap()
        .is_none());

    // Without ETag (a file system source): size and mtime, to the nanosecond.
    let mut file = obj("f", 10, None, None);
    file.mtime = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
    j.record_done(id, &file, "f", None).unwrap();
    assert!(j.is_done(id, &file).unwrap().is_some());
    let mut touched = file.clone();
    touched.mtime = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_790));
    assert!(j.is_done(id, &touched).unwrap().is_none());
    let mut grown = file.clone();
    grown.size = 11;
    assert!(j.is_done(id, &grown).unwrap().is_none());
    let mut no_mtime = file.clone();
    no_mtime.mtime = None;
    assert!(j.is_done(id, &no_mtime).unwrap().is_none());

    // Nothing to compare but the size.
    let bare = obj("g", 5, None, None);
    j.record_done(id, &bare, "g", None).unwrap();
    assert!(j.is_done(id, &bare).unwrap().is_some());
    assert!(j.is_done(id, &obj("g", 6, None, None)).unwrap().is_none());

    // A changed object copied again replaces the record, and the old version no longer matches.
    let v2 = obj("e", 12, Some("v2"), Some(200));
    j.record_done(id, &v2, "e", None).unwrap();
    assert!(j.is_done(id, &v2).unwrap().is_some());
    assert!(j.is_done(id, &with_etag).unwrap().is_none());
}

#[test]
fn multipart_uploads_resume_only_the_same_version_and_part_size() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    let src = obj("big.bin", 100 << 20, Some("big-v1"), Some(1_000));
    let up = MultipartUpload {
        key: "dst/big.bin".into(),
        upload_id: "upload-1".into(),
    };
    j.upload_started(id, &src, &up, 8 << 20).unwrap();
    // Out of order, and one part sent twice (a retry): the last record wins.
    j.part_done(id, "upload-1", &part(3, 8 << 20), Some("c3"))
        .unwrap();
    j.part_done(id, "upload-1", &part(1, 8 << 20), None)
        .unwrap();
    j.part_done(id, "upload-1", &part(2, 8 << 20), None)
        .unwrap();
    j.part_done(id, "upload-1", &part(2, 8 << 20), Some("c2"))
        .unwrap();
    // A part for an upload the journal does not know is dropped.
    j.part_done(id, "unknown", &part(1, 1), None).unwrap();

    let r = j.resumable_upload(id, &src, 8 << 20).unwrap().unwrap();
    assert_eq!(r.upload, up);
    assert_eq!(r.part_size, 8 << 20);
    let numbers: Vec<u32> = r.parts.iter().map(|p| p.part.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(r.parts[1].checksum.as_deref(), Some("c2"));
    assert_eq!(r.completed_parts()[2], part(3, 8 << 20));

    // Another part size, or another source version: nothing to resume.
    assert!(j.resumable_upload(id, &src, 16 << 20).unwrap().is_none());
    let changed = obj("big.bin", 100 << 20, Some("big-v2"), Some(1_000));
    assert!(j.resumable_upload(id, &changed, 8 << 20).unwrap().is_none());
    let resized = obj("big.bin", 101 << 20, Some("big-v1"), Some(1_000));
    assert!(j.resumable_upload(id, &resized, 8 << 20).unwrap().is_none());
    let mut by_mtime = obj("big.bin", 100 << 20, None, Some(1_000));
    assert!(j
        .resumable_upload(id, &by_mtime, 8 << 20)
        .unwrap()
        .is_some());
    by_mtime.mtime = Some(UNIX_EPOCH + Duration::from_secs(1_001));
    assert!(j
        .resumable_upload(id, &by_mtime, 8 << 20)
        .unwrap()
        .is_none());
    // Another transfer: nothing.
    let other = j.begin(&identity(2)).unwrap();
    assert!(j.resumable_upload(other, &src, 8 << 20).unwrap().is_none());

    // The changed source gets a new upload; both are open until one is finished.
    let up2 = MultipartUpload {
        key: "dst/big.bin".into(),
        upload_id: "upload-2".into(),
    };
    j.upload_started(id, &changed, &up2, 8 << 20).unwrap();
    j.part_done(id, "upload-2", &part(1, 8 << 20), None)
        .unwrap();
    let open = j.open_uploads(id).unwrap();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].upload, up);
    assert_eq!(open[0].src_key, "big.bin");
    assert_eq!(open[0].parts_done, 3);
    assert_eq!(open[0].bytes_done, 24 << 20);
    assert_eq!(open[1].upload, up2);
    assert_eq!(open[1].parts_done, 1);
    let s = j.find(&id.to_string()).unwrap().unwrap();
    assert_eq!(s.open_uploads, 2);
    assert_eq!(s.upload_bytes_done, 32 << 20);
    assert!(j.open_uploads(other).unwrap().is_empty());

    // The old one is aborted, the new one completed: both gone with their parts.
    j.upload_finished(id, "upload-1").unwrap();
    assert!(j.resumable_upload(id, &src, 8 << 20).unwrap().is_none());
    assert_eq!(j.open_uploads(id).unwrap().len(), 1);
    j.upload_finished(id, "upload-2").unwrap();
    j.record_done(id, &changed, "dst/big.bin", None).unwrap();
    assert!(j.open_uploads(id).unwrap().is_empty());
    assert_eq!(
        j.find(&id.to_string()).unwrap().unwrap().upload_bytes_done,
        0
    );
    // A straggling part after the upload finished leaves nothing behind.
    j.part_done(id, "upload-2", &part(2, 8 << 20), None)
        .unwrap();
    j.flush().unwrap();
    assert!(j.open_uploads(id).unwrap().is_empty());
    assert_eq!(
        j.find(&id.to_string()).unwrap().unwrap().upload_bytes_done,
        0
    );
}

#[test]
fn undone_objects_are_no_longer_done_whatever_their_key_mapping() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    let other = j.begin(&identity(2)).unwrap();
    let same = obj("same.txt", 1, None, Some(1));
    let mapped = obj("in/mapped.txt", 2, None, Some(2));
    let kept = obj("kept.txt", 3, None, Some(3));
    j.record_done(id, &same, "same.txt", None).unwrap();
    j.record_done(id, &mapped, "out/mapped.txt", None).unwrap();
    j.record_done(id, &kept, "kept.txt", None).unwrap();
    j.record_done(other, &same, "same.txt", None).unwrap();
    // Still queued when the undo comes: it must land after them.
    j.undo_done(
        id,
        vec![
            "same.txt".into(),
            "out/mapped.txt".into(),
            "never.txt".into(),
        ],
    )
    .unwrap();
    assert!(j.is_done(id, &same).unwrap().is_none());
    assert!(j.is_done(id, &mapped).unwrap().is_none());
    assert!(j.is_done(id, &kept).unwrap().is_some());
    assert!(
        j.is_done(other, &same).unwrap().is_some(),
        "another transfer's"
    );
    assert_eq!(j.done_count(id).unwrap(), (1, 3));
    // Remembered as found different, by their destination keys, for this transfer only.
    assert!(j.copy_again(id, "out/mapped.txt").unwrap());
    assert!(j.copy_again(id, "never.txt").unwrap());
    assert!(!j.copy_again(id, "kept.txt").unwrap());
    assert!(!j.copy_again(other, "same.txt").unwrap());
}

/// A sync's announced write is a key to copy again until the object's record removes it:
/// a run stopped between the two leaves the key named.
#[test]
fn an_announced_write_is_copied_again_until_its_record_is_committed() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    let other = j.begin(&identity(2)).unwrap();
    let done = obj("in/done", 1, None, Some(1));
    j.writing(id, "out/done").unwrap();
    j.writing(id, "out/lost").unwrap();
    j.writing(id, "out/lost").unwrap();
    // Queued; committed before any write begins.
    j.commit_announced().unwrap();
    assert!(j.copy_again(id, "out/done").unwrap());
    assert!(
        !j.copy_again(other, "out/done").unwrap(),
        "another transfer's"
    );
    // Recorded under its source key; the announcement goes by its destination key.
    j.record_done(id, &done, "out/done", None).unwrap();
    j.flush().unwrap();
    assert!(!j.copy_again(id, "out/done").unwrap());
    assert!(j.copy_again(id, "out/lost").unwrap());
    j.undo_done(id, vec!["out/other".into()]).unwrap();
    assert_eq!(
        sorted(j.copy_again_keys(id).unwrap()),
        ["out/lost", "out/other"]
    );
    // A rerun of the interrupted transfer still sees it; a finished one's rerun does not.
    j.begin(&identity(1)).unwrap();
    assert!(j.copy_again(id, "out/lost").unwrap());
    j.mark_complete(id, true).unwrap();
    j.begin(&identity(1)).unwrap();
    assert!(j.copy_again_keys(id).unwrap().is_empty());
    j.writing(id, "out/lost").unwrap();
    j.commit_announced().unwrap();
    assert!(j.copy_again(id, "out/lost").unwrap());
    j.forget(id).unwrap();
    assert!(!j.copy_again(id, "out/lost").unwrap());
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_finished_transfer_run_again_starts_afresh() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    let a = obj("a", 1, None, None);
    j.record_done(id, &a, "a", None).unwrap();
    j.creating(id, "announced").unwrap();
    j.undo_done(id, vec!["b".into()]).unwrap();
    // Interrupted: the rerun continues, and what was done stays done.
    assert!(j.resumable(id).unwrap());
    j.begin(&identity(1)).unwrap();
    assert!(j.is_done(id, &a).unwrap().is_some());
    assert!(j.copy_again(id, "b").unwrap());

    // Finished: the rerun copies again, since the destination may have changed since.
    j.mark_complete(id, true).unwrap();
    assert!(!j.resumable(id).unwrap());
    j.begin(&identity(1)).unwrap();
    assert!(j.is_done(id, &a).unwrap().is_none());
    assert!(!j.copy_again(id, "b").unwrap());
    assert_eq!(j.done_count(id).unwrap(), (0, 0));
    assert!(j.resumable(id).unwrap(), "running, not finished");
    let announced = j.unconfirmed_creates(id).unwrap();
    assert_eq!(announced.len(), 1, "a sweep still needs {announced:?}");
}

#[test]
fn forget_removes_everything_of_one_transfer() {
    let (_dir, j) = open_temp();
    assert!(!j.resumable(identity(1).id()).unwrap());
    let id = j.begin(&identity(1)).unwrap();
    let keep = j.begin(&identity(2)).unwrap();
    assert!(j.resumable(id).unwrap());
    for t in [id, keep] {
        for i in 0..50 {
            j.record_done(t, &obj(&format!("k{i}"), i, None, None), "d", None)
                .unwrap();
        }
        let up = MultipartUpload {
            key: "big".into(),
            upload_id: format!("up-{t}"),
        };
        j.upload_started(t, &obj("big", 1 << 30, None, None), &up, 64 << 20)
            .unwrap();
        j.part_done(t, &up.upload_id, &part(1, 64 << 20), None)
            .unwrap();
        j.creating(t, "unconfirmed").unwrap();
    }
    j.forget(id).unwrap();
    assert!(!j.resumable(id).unwrap());
    assert!(j.resumable(keep).unwrap());
    assert!(j.find(&id.to_string()).unwrap().is_none());
    assert_eq!(j.done_count(id).unwrap(), (0, 0));
    assert!(j.open_uploads(id).unwrap().is_empty());
    assert!(j
        .resumable_upload(id, &obj("big", 1 << 30, None, None), 64 << 20)
        .unwrap()
        .is_none());
    assert!(j.is_done(id, &obj("k1", 1, None, None)).unwrap().is_none());
    let ids: Vec<TransferId> = j.transfers().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(ids, [keep]);

    // The other transfer is untouched.
    assert_eq!(j.done_count(keep).unwrap().0, 50);
    assert_eq!(j.open_uploads(keep).unwrap().len(), 1);

    // Checked in the file itself: no row of the forgotten transfer is left in any table.
    j.flush().unwrap();
    let conn = rusqlite::Connection::open(j.path()).unwrap();
    for table in ["objects", "uploads", "parts", "creating"] {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE transfer = ?1"),
                [id.as_u64() as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
}

#[test]
fn find_by_prefix() {
    let (_dir, j) = open_temp();
    let ids: Vec<TransferId> = (0..40).map(|n| j.begin(&identity(n)).unwrap()).collect();
    let id = ids[7];
    let full = id.to_string();
    assert_eq!(j.find(&full).unwrap().unwrap().id, id);
    assert_eq!(j.find(&full.to_uppercase()).unwrap().unwrap().id, id);
    // The shortest prefix unique among the 40.
    let unique = (1..=16)
        .map(|n| &full[..n])
        .find(|p| ids.iter().filter(|i| i.to_string().starts_with(p)).count() == 1)
        .unwrap();
    assert_eq!(j.find(unique).unwrap().unwrap().id, id);
    // A one-digit prefix shared by several (40 ids over 16 digits must share one).
    let shared = (0..16u32)
        .map(|d| char::from_digit(d, 16).unwrap().to_string())
        .find(|p| ids.iter().filter(|i| i.to_string().starts_with(p)).count() > 1)
        .unwrap();
    assert!(matches!(
        j.find(&shared),
        Err(JournalError::AmbiguousId { .. })
    ));
    assert!(matches!(j.find("zz"), Err(JournalError::InvalidId(_))));
    assert!(matches!(j.find(""), Err(JournalError::InvalidId(_))));
    let absent = (0..16u64)
        .map(|d| format!("{:016x}", d * 0x1111_1111_1111_1111))
        .find(|s| !ids.iter().any(|i| i.to_string() == *s))
        .unwrap();
    assert!(j.find(&absent).unwrap().is_none());
}

#[test]
fn reopened_journal_keeps_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite");
    let id;
    {
        let j = Journal::open(&path).unwrap();
        id = j.begin(&identity(1)).unwrap();
        for i in 0..3000u64 {
            j.record_done(id, &obj(&format!("k{i}"), i, None, None), "d", None)
                .unwrap();
        }
        // No flush: dropping commits what was queued.
    }
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.done_count(id).unwrap().0, 3000);
    assert_eq!(j.find(&id.to_string()).unwrap().unwrap().runs, 1);
    j.integrity_check().unwrap();
}

#[test]
fn flushed_records_survive_an_abandoned_handle() {
    // A handle that is never dropped (as in a process killed while it holds the journal):
    // another handle opened on the same file sees everything flushed before.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite");
    let j = Journal::open(&path).unwrap();
    let id = j.begin(&identity(1)).unwrap();
    for i in 0..500u64 {
        j.record_done(id, &obj(&format!("k{i}"), 1, None, None), "d", None)
            .unwrap();
    }
    j.flush().unwrap();
    for i in 500..600u64 {
        j.record_done(id, &obj(&format!("k{i}"), 1, None, None), "d", None)
            .unwrap();
    }
    std::mem::forget(j);

    let again = Journal::open(&path).unwrap();
    let (n, _) = again.done_count(id).unwrap();
    assert!((500..=600).contains(&n), "{n}");
    assert!(again
        .is_done(id, &obj("k499", 1, None, None))
        .unwrap()
        .is_some());
    again.integrity_check().unwrap();
}

#[test]
fn many_threads_record_and_read_their_own_writes() {
    let (_dir, j) = open_temp();
    let j = Arc::new(j);
    let id = j.begin(&identity(1)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let o = obj(&format!("t{t}/k{i}"), i, Some("e"), None);
                    assert!(j.is_done(id, &o).unwrap().is_none());
                    j.record_done(id, &o, "d", None).unwrap();
                    if i.is_multiple_of(97) {
                        // Read-your-writes under load: the record just queued is seen.
                        assert!(j.is_done(id, &o).unwrap().is_some());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expected_bytes = 8 * (0..2_000u64).sum::<u64>();
    assert_eq!(j.done_count(id).unwrap(), (16_000, expected_bytes));
    for t in 0..8 {
        assert!(j
            .is_done(id, &obj(&format!("t{t}/k1999"), 1999, Some("e"), None))
            .unwrap()
            .is_some());
    }
    j.integrity_check().unwrap();
}

#[test]
fn two_handles_on_one_file_take_turns() {
    // As two skyhaul processes sharing the default journal would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite");
    let a = Journal::open(&path).unwrap();
    let b = Journal::open(&path).unwrap();
    let ia = a.begin(&identity(1)).unwrap();
    let ib = b.begin(&identity(2)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..3_000u64 {
                a.record_done(ia, &obj(&format!("{i}"), 1, None, None), "d", None)
                    .unwrap();
            }
            a.flush().unwrap();
        });
        s.spawn(|| {
            for i in 0..3_000u64 {
                b.record_done(ib, &obj(&format!("{i}"), 1, None, None), "d", None)
                    .unwrap();
            }
            b.flush().unwrap();
        });
    });
    assert_eq!(a.done_count(ib).unwrap().0, 3_000);
    assert_eq!(b.done_count(ia).unwrap().0, 3_000);
    assert_eq!(a.transfers().unwrap().len(), 2);
}

/// Released by the writer: it looks, from another connection, whether its record is
/// already committed at that moment.
struct CommittedWhenReleased {
    path: std::path::PathBuf,
    id: TransferId,
    src: ObjectMeta,
    seen: std::sync::mpsc::Sender<bool>,
}

impl Drop for CommittedWhenReleased {
    fn drop(&mut self) {
        let other = Journal::open(&self.path).unwrap();
        let _ = self
            .seen
            .send(other.is_done(self.id, &self.src).unwrap().is_some());
    }
}

#[test]
fn what_a_record_holds_is_released_only_once_it_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let j = Journal::open(&path).unwrap();
    let id = j.begin(&identity(1)).unwrap();
    let (seen, released) = std::sync::mpsc::channel();
    for n in 0..20 {
        let src = obj(&format!("k{n}"), 10, None, None);
        let hold = CommittedWhenReleased {
            path: path.clone(),
            id,
            src: src.clone(),
            seen: seen.clone(),
        };
        j.record_done_holding(id, &src, &src.key, None, Box::new(hold))
            .unwrap();
    }
    drop(seen);
    // Without any flush: the batch window alone commits and releases them.
    let committed: Vec<bool> = released.iter().take(20).collect();
    assert_eq!(committed, vec![true; 20], "released before committed");
}

#[test]
fn announced_creations_stay_until_confirmed() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    j.creating(id, "a/big").unwrap();
    j.creating(id, "b/big").unwrap();
    j.created(id, "a/big").unwrap();
    let left = j.unconfirmed_creates(id).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "b/big");
    assert!(left[0].1 >= before, "the start time is recorded");
    // Durable: another handle on the file sees it without a flush of this one.
    let again = Journal::open(j.path()).unwrap();
    assert_eq!(again.unconfirmed_creates(id).unwrap().len(), 1);
}

#[test]
fn a_version_1_journal_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.sqlite");
    let id = {
        let j = Journal::open(&path).unwrap();
        let id = j.begin(&identity(1)).unwrap();
        j.record_done(id, &obj("k", 1, None, None), "k", None)
            .unwrap();
        j.flush().unwrap();
        id
    };
    // Back to what version 1 wrote: no `creating` table (v2), no fleet tables (v3), no
    // `differing` (v4), no `writing` (v5).
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP TABLE creating; DROP TABLE fleet_items; DROP TABLE fleet_leases;
             DROP TABLE differing; DROP TABLE writing; PRAGMA user_version = 1;",
        )
        .unwrap();
    let j = Journal::open(&path).unwrap();
    assert_eq!(
        j.done_count(id).unwrap().0,
        1,
        "records survive the upgrade"
    );
    j.creating(id, "x").unwrap();
    assert_eq!(j.unconfirmed_creates(id).unwrap().len(), 1);
    j.lease_granted(id, 1, "w", 10, "[]", vec!["object k".into()])
        .unwrap();
    assert_eq!(j.fleet_leases(id).unwrap()[0].items.len(), 1);
    j.undo_done(id, vec!["k".into()]).unwrap();
    assert!(j.copy_again(id, "k").unwrap());
    j.writing(id, "w").unwrap();
    j.commit_announced().unwrap();
    assert!(j.copy_again(id, "w").unwrap());
}

#[test]
fn refuses_foreign_and_newer_databases() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("other.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE things (x)")
        .unwrap();
    assert!(matches!(
        Journal::open(&foreign),
        Err(JournalError::NotAJournal)
    ));

    let newer = dir.path().join("newer.sqlite");
    drop(Journal::open(&newer).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 999")
        .unwrap();
    assert!(matches!(
        Journal::open(&newer),
        Err(JournalError::TooNew { found: 999, .. })
    ));
    // Opened to read only, they are refused alike.
    assert!(matches!(
        Journal::open_read_only(&foreign),
        Err(JournalError::NotAJournal)
    ));
    assert!(matches!(
        Journal::open_read_only(&newer),
        Err(JournalError::TooNew { found: 999, .. })
    ));

    // Reopening a current one is fine, and the file is in WAL mode.
    let current = dir.path().join("current.sqlite");
    drop(Journal::open(&current).unwrap());
    let j = Journal::open(&current).unwrap();
    let mode: String = rusqlite::Connection::open(j.path())
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = rusqlite::Connection::open(j.path())
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, skyhaul_journal::SCHEMA_VERSION);
}

#[test]
fn a_journal_opened_to_read_only_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite");
    let id = {
        let j = Journal::open(&path).unwrap();
        let id = j.begin(&identity(1)).unwrap();
        j.record_done(id, &obj("k", 3, None, None), "k", None)
            .unwrap();
        id
    };
    let j = Journal::open_read_only(&path).unwrap();
    let all = j.transfers().unwrap();
    assert_eq!((all.len(), all[0].id, all[0].objects_done), (1, id, 1));
    assert!(matches!(
        j.mark_complete(id, true),
        Err(JournalError::Closed)
    ));
    assert!(!Journal::open_read_only(&path).unwrap().transfers().unwrap()[0].complete);
}

#[test]
fn default_path_follows_the_environment() {
    // The only test that touches this variable.
    std::env::set_var("SKYHAUL_JOURNAL", "/tmp/somewhere/j.sqlite");
    assert_eq!(
        Journal::default_path(),
        std::path::PathBuf::from("/tmp/somewhere/j.sqlite")
    );
    std::env::remove_var("SKYHAUL_JOURNAL");
    let p = Journal::default_path();
    assert!(p.ends_with("skyhaul/journal.sqlite"), "{}", p.display());
}

#[test]
fn a_failed_batched_write_is_reported_by_the_next_call() {
    let (_dir, j) = open_temp();
    let id = j.begin(&identity(1)).unwrap();
    // Make one insert fail inside the writer thread, as a full disk would.
    rusqlite::Connection::open(j.path())
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON objects WHEN NEW.src_key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();
    j.record_done(id, &obj("fine-1", 1, None, None), "d", None)
        .unwrap();
    j.record_done(id, &obj("poison", 1, None, None), "d", None)
        .unwrap();
    j.record_done(id, &obj("fine-2", 1, None, None), "d", None)
        .unwrap();
    match j.flush() {
        Err(JournalError::Background(msg)) => assert!(msg.contains("poisoned"), "{msg}"),
        other => panic!("expected a background error, got {other:?}"),
    }
    // Reported once; the rest of the batch was kept.
    j.flush().unwrap();
    assert!(j
        .is_done(id, &obj("fine-1", 1, None, None))
        .unwrap()
        .is_some());
    assert!(j
        .is_done(id, &obj("fine-2", 1, None, None))
        .unwrap()
        .is_some());
    assert!(j
        .is_done(id, &obj("poison", 1, None, None))
        .unwrap()
        .is_none());
}

#[test]
fn fleet_lease_records_follow_each_item() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.sqlite")).unwrap();
    let id = j.begin(&identity(1)).unwrap();
    let items = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    j.lease_granted(id, 1, "w1", 30, "[1]", items(&["a", "b"]))
        .unwrap();
    j.lease_granted(id, 2, "w2", 10, "[2]", items(&["c"]))
        .unwrap();
    j.lease_item(id, 1, "a", "done").unwrap();
    // w1 dies: its lease expires; the item it never reported is marked so.
    j.lease_ended(id, 1, skyhaul_journal::LEASE_EXPIRED)
        .unwrap();
    j.lease_granted(id, 3, "w2", 20, "[3]", items(&["b"]))
        .unwrap();
    j.lease_item(id, 3, "b", "done").unwrap();
    j.lease_ended(id, 3, skyhaul_journal::LEASE_COMPLETED)
        .unwrap();
    let leases = j.fleet_leases(id).unwrap();
    assert_eq!(leases.len(), 3);
    let (l1, l2, l3) = (&leases[0], &leases[1], &leases[2]);
    assert_eq!(
        (l1.worker.as_str(), l1.state.as_str(), l1.bytes),
        ("w1", "expired", 30)
    );
    assert_eq!(l1.items["a"].as_deref(), Some("done"));
    assert_eq!(l1.items["b"].as_deref(), Some("expired"));
    assert_eq!((l2.state.as_str(), l2.payload.as_str()), ("granted", "[2]"));
    assert_eq!(l2.items["c"], None, "still out");
    assert_eq!(l3.items["b"].as_deref(), Some("done"));
    // Forgetting the transfer forgets its leases.
    j.forget(id).unwrap();
    assert!(j.fleet_leases(id).unwrap().is_empty());
}

/// A lock that cannot be made (a file where the lock directory must go) names its path.
#[test]
fn a_lock_that_cannot_be_made_is_named() {
    let (_dir, j) = open_temp();
    let running = format!("{}.running", j.path().display());
    std::fs::write(&running, b"").unwrap();
    let id = j.begin(&identity(1)).unwrap();
    let e = j.hold(id).unwrap_err().to_string();
    assert!(e.starts_with(&format!("journal: {running}: ")), "{e}");
}
