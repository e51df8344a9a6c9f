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
//! another object still succeeds was about its object. Once [`SUSPECT_AFTER`] denials came
//! in a row, the transfer starts nothing new until the objects in flight are over: denials
//! are answered at once while a good object may take minutes, so a run of denials proves
//! nothing while good objects are still on their way. If none of them succeeded either,
//! the credentials are what is denied, and the transfer stops (exit 4); this also stops a
//! transfer whose credentials lose their permission half-way. A transfer that ends with
//! nothing done or skipped and nothing but denials failed ends with the denial as its
//! error, whatever its size: the one object of a single-object copy, say.
//!
//! A fleet worker keeps its own [`Denials`]: one with a hundred denials in a row leaves the
//! fleet, and the coordinator hands each denied item to another worker once before it
//! counts it as failed (a worker's credentials may lack what the others have).

use futures::stream::FusedStream;
use futures::stream::FuturesUnordered;
use futures::{Future, Stream, StreamExt};
use skyhaul_store::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// Denials in a row after which the transfer waits for the objects in flight to decide.
pub(crate) const SUSPECT_AFTER: u32 = 100;

/// The denials of one transfer (or of one fleet worker), and whether anything succeeded
/// between them.
#[derive(Default)]
pub struct Denials {
    in_a_row: AtomicU32,
    other_failure: AtomicBool,
    first: Mutex<Option<Error>>,
    last: Mutex<Option<Error>>,
    /// Whether the checks before the transfer found both sides' credentials accepted
    /// ([`Denials::credentials_accepted`]).
    accepted: AtomicBool,
}

impl Denials {
    /// Records an object done (copied, found identical at the destination, deleted): the
    /// denials before it were about their own objects.
    pub fn done(&self) {
        self.in_a_row.store(0, Ordering::Relaxed);
    }

    /// The checks before the transfer found both sides' credentials accepted. A refusal of
    /// them later may then be one object's (a signature that a header of its breaks, as the
    /// store reads it), and is weighed as a denial; credentials never seen accepted (a drop
    /// box, whose listing was denied) stop the transfer at their first refusal.
    pub fn credentials_accepted(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }

    /// Records an object's failure. Returns the error that must stop the transfer at once,
    /// if this one must: a fatal one (a missing bucket, a full disk, credentials refused
    /// that were never seen accepted). Denials only count.
    pub fn failed(&self, err: &Error) -> Option<Error> {
        if !self.weighs(err) {
            self.other_failure.store(true, Ordering::Relaxed);
            return err.is_fatal().then(|| err.clone());
        }
        self.first
            .lock()
            .expect("denials lock")
            .get_or_insert_with(|| err.clone());
        *self.last.lock().expect("denials lock") = Some(err.clone());
        self.in_a_row.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Whether `err` is weighed as a denial: an access denied, or credentials refused
    /// after they were seen accepted.
    pub fn weighs(&self, err: &Error) -> bool {
        match err.kind {
            ErrorKind::AccessDenied => true,
            ErrorKind::BadCredentials => self.accepted.load(Ordering::Relaxed),
            _ => false,
        }
    }

    /// Records a failure that is no denial and stops nothing, whatever its kind: then the
    /// transfer was not denied everything.
    pub fn failed_otherwise(&self) {
        self.other_failure.store(true, Ordering::Relaxed);
    }

    /// Whether so many denials came in a row that nothing new should start until the
    /// objects in flight are over ([`Denials::stop`] then decides).
    pub fn suspect(&self) -> bool {
        self.in_a_row.load(Ordering::Relaxed) >= SUSPECT_AFTER
    }

    /// With nothing in flight any more: the error that stops the work, if the denials still
    /// came in a row (no object in flight succeeded). `then` says what stopped and what the
    /// user can do.
    pub fn stop(&self, then: &str) -> Option<Error> {
        let in_a_row = self.in_a_row.load(Ordering::Relaxed);
        if in_a_row < SUSPECT_AFTER {
            return None;
        }
        let last = self.last.lock().expect("denials lock").clone()?;
        Some(Error::new(
            last.kind,
            format!(
                "{last} ({in_a_row} objects in a row were denied, none done between them, {then})"
            ),
        ))
    }

    /// The first denial, when it and other denials are all that failed: the error of a
    /// transfer that did nothing else, whose credentials, not its objects, were denied.
    pub(crate) fn only_denied(&self) -> Option<Error> {
        if self.other_failure.load(Ordering::Relaxed) {
            return None;
        }
        self.first.lock().expect("denials lock").clone()
    }
}

/// Runs `work` on each of `items`, at most `limit` at once, and hands each outcome to
/// `record` as it comes; `record` tells `denials` how it went (and may end the run with an
/// error). While denials are suspect nothing new starts, and once nothing is in flight
/// [`Denials::stop`] decides whether the rest may start (`then` says what stopped, for its
/// error). Denials at the very end stop nothing: everything was tried.
///
/// `items` is a stream so that work can start on a listing's first entries while it goes
/// on (a verification of millions of objects holds only those in flight); an error from
/// it ends the run.
pub(crate) async fn run_bounded<T, R, Fut>(
    denials: &Denials,
    items: impl Stream<Item = Result<T>>,
    limit: usize,
    then: &str,
    mut work: impl FnMut(T) -> Fut,
    mut record: impl FnMut(R) -> Result<()>,
) -> Result<()>
where
    Fut: Future<Output = R>,
{
    let mut items = std::pin::pin!(items.fuse().peekable());
    let mut running = FuturesUnordered::new();
    loop {
        let may_start = running.len() < limit.max(1) && !denials.suspect();
        tokio::select! {
            // Free slots filled first, as far as items are at hand: work that started
            // together is judged together (denials coming back at once from the first
            // few must not hold back the rest of what could start with them).
            biased;
            item = items.next(), if may_start && !items.is_terminated() => match item {
                Some(item) => running.push(work(item?)),
                None => continue,
            },
            Some(outcome) = running.next(), if !running.is_empty() => record(outcome)?,
            else => {
                // Nothing in flight, and nothing may start: the end, if nothing is left;
                // else denials are suspect, and whether the rest may start.
                if items.as_mut().peek().await.is_none() {
                    return Ok(());
                }
                if let Some(stop) = denials.stop(then) {
                    return Err(stop);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSFER: &str = "so the transfer stopped; leave them out with --exclude";

    fn denied(key: &str) -> Error {
        Error::new(
            ErrorKind::AccessDenied,
            format!("s3://b/{key}: get: AccessDenied"),
        )
    }

    #[test]
    fn a_denial_among_successes_is_the_objects_alone() {
        let d = Denials::default();
        for i in 0..SUSPECT_AFTER - 1 {
            assert!(d.failed(&denied(&format!("k{i}"))).is_none());
        }
        d.done();
        for i in 0..SUSPECT_AFTER - 1 {
            assert!(d.failed(&denied(&format!("j{i}"))).is_none());
        }
        assert!(!d.suspect());
        assert!(d.stop(TRANSFER).is_none());
    }

    #[test]
    fn denials_in_a_row_are_suspect_until_an_object_succeeds() {
        let d = Denials::default();
        for i in 0..SUSPECT_AFTER {
            assert!(
                d.failed(&denied(&format!("k{i}"))).is_none(),
                "denials only count"
            );
        }
        assert!(d.suspect());
        // An object in flight succeeds: the denials were the objects'.
        d.done();
        assert!(!d.suspect());
        assert!(d.stop(TRANSFER).is_none());

        for i in 0..SUSPECT_AFTER + 5 {
            d.failed(&denied(&format!("m{i}")));
        }
        let stop = d.stop(TRANSFER).expect("nothing succeeded between them");
        assert_eq!(stop.kind, ErrorKind::AccessDenied);
        assert!(
            stop.message
                .starts_with("s3://b/m104: get: AccessDenied (105 objects in a row"),
            "{}",
            stop.message
        );
        assert!(stop.message.contains("--exclude"), "{}", stop.message);
    }

    /// A signature the store refuses for one object (a header it reads otherwise than it
    /// was signed) reads as refused credentials; where the credentials were good for the
    /// checks before the transfer, such refusals are weighed as denials are.
    #[test]
    fn refused_credentials_count_as_denials() {
        let refused = |key: &str| {
            Error::new(
                ErrorKind::BadCredentials,
                format!("s3://b/{key}: put: SignatureDoesNotMatch"),
            )
        };
        let unchecked = Denials::default();
        let first = unchecked
            .failed(&refused("k0"))
            .expect("never seen accepted");
        assert_eq!(first.kind, ErrorKind::BadCredentials);

        let d = Denials::default();
        d.credentials_accepted();
        assert!(d.failed(&refused("odd")).is_none(), "one object's");
        d.done();
        for i in 0..SUSPECT_AFTER {
            assert!(d.failed(&refused(&format!("k{i}"))).is_none());
        }
        let stop = d.stop(TRANSFER).expect("nothing succeeded between them");
        assert_eq!(stop.kind, ErrorKind::BadCredentials, "exit 4 all the same");
    }

    #[test]
    fn only_denials_failing_is_the_credentials() {
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

    /// `run_bounded` over `n` objects that are all denied, `limit` at a time: what it
    /// returned and how many it started.
    async fn all_denied(n: usize, limit: usize) -> (Result<()>, usize) {
        let d = Denials::default();
        let mut started = 0;
        let outcome = run_bounded(
            &d,
            futures::stream::iter((0..n).map(Ok)),
            limit,
            TRANSFER,
            |i| {
                started += 1;
                async move { denied(&format!("k{i}")) }
            },
            |e| {
                d.failed(&e);
                Ok(())
            },
        )
        .await;
        (outcome, started)
    }

    #[tokio::test]
    async fn denials_in_a_row_stop_what_has_not_started() {
        let (outcome, started) = all_denied(300, 10).await;
        let stop = outcome.unwrap_err();
        assert!(
            stop.message.ends_with(&format!("{TRANSFER})")),
            "{}",
            stop.message
        );
        assert!(
            (usize::try_from(SUSPECT_AFTER).unwrap()..300).contains(&started),
            "{started} started"
        );
    }

    /// Outcomes of the work started from the first items are recorded while the stream
    /// waits for its next item (a listing's next page), and no item is lost.
    #[tokio::test]
    async fn work_goes_on_while_the_stream_waits() {
        let d = Denials::default();
        let items = futures::stream::iter(0..3).then(|i| async move {
            if i == 2 {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Ok(i)
        });
        let start = std::time::Instant::now();
        let mut recorded = Vec::new();
        let record = |i| {
            recorded.push((i, start.elapsed()));
            Ok(())
        };
        run_bounded(&d, items, 8, TRANSFER, |i| async move { i }, record)
            .await
            .unwrap();
        let items: Vec<i32> = recorded.iter().map(|(i, _)| *i).collect();
        assert_eq!(items, [0, 1, 2]);
        let early = recorded[..2].iter().all(|(_, at)| at.as_secs_f64() < 1.0);
        assert!(early, "recorded only once the stream went on: {recorded:?}");
    }

    #[tokio::test]
    async fn denials_at_the_very_end_stop_nothing() {
        // Everything had started before the denials came: nothing is left to hold back.
        let (outcome, started) = all_denied(150, 200).await;
        assert!(outcome.is_ok());
        assert_eq!(started, 150);
    }

    #[test]
    fn fatal_errors_stop_at_once() {
        let d = Denials::default();
        let full = Error::new(ErrorKind::NoSpace, "/dst/k: no space left on device");
        assert_eq!(d.failed(&full).unwrap().message, full.message);
        let missing = Error::new(ErrorKind::BucketNotFound, "s3://gone: NoSuchBucket");
        assert_eq!(d.failed(&missing).unwrap().kind, ErrorKind::BucketNotFound);
    }
}
