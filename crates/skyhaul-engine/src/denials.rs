//! Telling a denied object from denied credentials.
//!
//! Stores answer "access denied" both when the credentials may not touch the bucket at all
//! and when they may not touch one object: one that another account uploaded without
//! granting the bucket's owner access, one encrypted with a KMS key they may not use, one
//! unreadable file. The first must stop the transfer with one clear error instead of
//! failing every object in turn; the second must fail that object alone and let the rest be
//! copied, as rclone, s5cmd and the AWS CLI do.
//!
//! Nothing in the answer tells the two apart, so the pattern does. A denial after which
//! other objects still succeed was about its object. [`STOP_AFTER`] denials in a row, with
//! no object done between them, stop the transfer: denials are answered at once, so that
//! costs a moment, and it also stops a transfer whose credentials lose their permission
//! half-way. A transfer that ends with nothing done and nothing but denials failed ends
//! with the denial as its error, as if it had been stopped: exit 4, whatever its size.

use skyhaul_store::{Error, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// Denials in a row that stop a transfer: more than a side's connections (64 by default), so
/// that the first wave of requests, answered together, decides nothing alone.
pub(crate) const STOP_AFTER: u32 = 100;

/// The denials of one transfer, and whether anything succeeded between them.
#[derive(Default)]
pub(crate) struct Denials {
    in_a_row: AtomicU32,
    anything_done: AtomicBool,
    other_failure: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Denials {
    /// Records an object done (copied, found identical, deleted): the denials before it were
    /// about their own objects.
    pub(crate) fn done(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
        self.anything_done.store(true, Ordering::Relaxed);
    }

    /// Records an object's failure. Returns the error that must stop the transfer, if this
    /// one must: a fatal one (a missing bucket, a full disk), or the denial that completes
    /// [`STOP_AFTER`] in a row.
    pub(crate) fn failed(&self, err: &Error) -> Option<Error> {
        if err.kind != ErrorKind::AccessDenied {
            self.other_failure.store(true, Ordering::Relaxed);
            return err.is_fatal().then(|| err.clone());
        }
        self.first
            .lock()
            .expect("denials lock")
            .get_or_insert_with(|| err.clone());
        let in_a_row = self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        (in_a_row == STOP_AFTER).then(|| {
            Error::new(
                ErrorKind::AccessDenied,
                format!(
                    "{err} ({STOP_AFTER} objects in a row were denied, none done between them, \
                     so the transfer stopped; if only some objects are off limits to these \
                     credentials, leave them out with --exclude)"
                ),
            )
        })
    }

    /// The first denial, when the transfer is over and it failed every object that failed,
    /// and nothing was done: the credentials, not the objects, are what was denied.
    pub(crate) fn only_denied(&self) -> Option<Error> {
        if self.anything_done.load(Ordering::Relaxed) || self.other_failure.load(Ordering::Relaxed)
        {
            return None;
        }
        self.first.lock().expect("denials lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(key: &str) -> Error {
        Error::new(
            ErrorKind::AccessDenied,
            format!("s3://b/{key}: get: AccessDenied"),
        )
    }

    #[test]
    fn a_denial_among_successes_is_the_objects_alone() {
        let d = Denials::default();
        d.done();
        for i in 0..STOP_AFTER - 1 {
            assert!(d.failed(&denied(&format!("k{i}"))).is_none());
        }
        d.done();
        for i in 0..STOP_AFTER - 1 {
            assert!(d.failed(&denied(&format!("j{i}"))).is_none());
        }
        assert!(d.only_denied().is_none(), "objects were done");
    }

    #[test]
    fn denials_in_a_row_stop_the_transfer_once() {
        let d = Denials::default();
        let stops: Vec<Error> = (0..STOP_AFTER * 2)
            .filter_map(|i| d.failed(&denied(&format!("k{i}"))))
            .collect();
        assert_eq!(stops.len(), 1, "one error stops the transfer");
        let stop = &stops[0];
        assert_eq!(stop.kind, ErrorKind::AccessDenied);
        assert!(
            stop.message
                .starts_with("s3://b/k99: get: AccessDenied (100 objects in a row"),
            "{}",
            stop.message
        );
        assert!(stop.message.contains("--exclude"), "{}", stop.message);
    }

    #[test]
    fn nothing_done_and_only_denials_is_the_credentials() {
        let d = Denials::default();
        assert!(d.only_denied().is_none(), "nothing failed");
        assert!(d.failed(&denied("a")).is_none());
        assert!(d.failed(&denied("b")).is_none());
        assert_eq!(
            d.only_denied().unwrap().message,
            "s3://b/a: get: AccessDenied"
        );

        let other = Denials::default();
        assert!(other.failed(&denied("a")).is_none());
        let corrupt = Error::new(ErrorKind::Corrupt, "s3://b/c: checksum mismatch");
        assert!(other.failed(&corrupt).is_none(), "not fatal");
        assert!(
            other.only_denied().is_none(),
            "another failure is not a denial"
        );
    }

    #[test]
    fn fatal_errors_stop_at_once() {
        let d = Denials::default();
        d.done();
        let full = Error::new(ErrorKind::NoSpace, "/dst/k: no space left on device");
        assert_eq!(d.failed(&full).unwrap().message, full.message);
        let missing = Error::new(ErrorKind::BucketNotFound, "s3://gone: NoSuchBucket");
        assert_eq!(d.failed(&missing).unwrap().kind, ErrorKind::BucketNotFound);
    }
}
