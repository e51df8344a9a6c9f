//! Verification: that the destination holds what a transfer wrote (run after every
//! `cp`/`sync`), and `skyhaul verify`: that two locations hold the same objects, whoever
//! copied them.
//!
//! Sizes are always compared. Checksums are compared where both sides have comparable ones:
//! ETags that are content MD5s (or equal multipart ETags), or, in deep mode, a CRC64 of the
//! bytes re-read from the store.

use crate::content::{fingerprints, head, read_sums, Side};
use crate::denials::{run_bounded, Denials};
use crate::filter::Filter;
use crate::integrity::plain_md5;
use crate::listing::{Listing, Merge, Pair};
use crate::open::Endpoint;
use crate::progress::Progress;
use crate::report::{count, thousands, Failure};
use crate::retry::RetryPolicy;
use crate::to_check::ToCheck;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{Error, ErrorKind, ObjectMeta, Result, Store};
use std::fmt;
use std::sync::Arc;

/// HEAD requests in flight when a listing lacks the ETags to compare.
const HEAD_CONCURRENCY: usize = 32;
/// Objects re-read concurrently in deep mode.
const DEEP_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    None,
    Size,
    #[default]
    Checksum,
    Deep,
}

/// What the transfer wrote for one object, as the verification pass needs it. Plain data:
/// a fleet worker sends it to the coordinator, which verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    pub dst_key: String,
    pub size: u64,
    /// CRC64-NVME of the bytes sent, when they went through this machine.
    pub crc64: Option<u64>,
    /// The ETag the destination should report, when it is predictable.
    pub etag: Option<String>,
    /// The ETag the destination answered the write with. Where a listing shows no ETags,
    /// this is compared instead of sending a HEAD per object: it is the store's own account
    /// of the bytes it received, the same a HEAD would give a moment later.
    #[serde(default)]
    pub written_etag: Option<String>,
    pub server_side: bool,
    /// Copied by an earlier run, as its journal recorded: `written_etag` is what the store
    /// answered then, which says nothing of what it holds now, so the check asks the store
    /// where its listing shows no ETags.
    #[serde(default)]
    pub earlier: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub mode: VerifyMode,
    pub objects: u64,
    pub size_ok: u64,
    pub checksum_ok: u64,
    pub not_comparable: u64,
    /// Of those not comparable, the ones whose HEAD or read failed (denied, archived): not
    /// checked although they could have been.
    pub unreadable: u64,
    pub missing: u64,
    pub extra: u64,
    pub size_mismatch: u64,
    pub checksum_mismatch: u64,
    pub problems: Vec<Failure>,
    /// The keys found missing or different, every one (`problems` keeps the first 10,000):
    /// after a copy, the journal forgets them so that a rerun copies them again. Only the
    /// check after a copy keeps them ([`verify_copied`]): `skyhaul verify` of an empty
    /// destination would hold the key of every object.
    #[serde(skip)]
    pub differing: Vec<String>,
    #[serde(skip)]
    pub(crate) keeps_differing: bool,
    /// Stopped by Ctrl-C or SIGTERM: the counts are of the objects checked before it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.wrong() == 0
    }

    /// Objects found missing, extra or different.
    pub fn wrong(&self) -> u64 {
        self.missing + self.extra + self.size_mismatch + self.checksum_mismatch
    }

    /// Whether every object was checked as far as the mode and its checksums allow: none
    /// was left unchecked because it could not be read.
    pub fn complete(&self) -> bool {
        self.unreadable == 0
    }

    /// Checksum comparisons made, whatever they found (not comparable included), as
    /// opposed to those whose HEAD or read failed.
    fn comparisons_made(&self) -> u64 {
        self.checksum_ok + self.checksum_mismatch + self.not_comparable - self.unreadable
    }

    fn problem(&mut self, key: &str, what: String) {
        if self.problems.len() < 10_000 {
            self.problems.push(Failure {
                key: key.to_string(),
                error: what,
            });
        }
    }

    /// `e`, an error that stopped the check, with what the check had found wrong before it:
    /// such an error ends the check without a report, so it says it instead.
    fn stopped(&self, e: Error) -> Error {
        let wrong = [
            (self.missing, "missing"),
            (self.extra, "extra"),
            (self.size_mismatch, "of another size"),
            (self.checksum_mismatch, "with other checksums"),
        ];
        let total: u64 = wrong.iter().map(|(n, _)| n).sum();
        if total == 0 {
            return e;
        }
        let each: Vec<String> = wrong
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        let objects = if total == 1 { "object" } else { "objects" };
        Error::new(
            e.kind,
            format!(
                "{e}; before it stopped, the check had found {total} {objects} wrong: {}",
                each.join(", ")
            ),
        )
    }

    fn missing(&mut self, key: &str) {
        self.missing += 1;
        self.differs(key);
        self.problem(key, "missing at the destination".into());
    }

    fn differs(&mut self, key: &str) {
        if self.keeps_differing {
            self.differing.push(key.to_string());
        }
    }

    /// Records the size comparison; returns whether sizes match.
    fn sizes(&mut self, key: &str, want: u64, got: u64) -> bool {
        if want == got {
            self.size_ok += 1;
            return true;
        }
        self.size_mismatch += 1;
        self.differs(key);
        self.problem(
            key,
            format!("size differs: {want} bytes expected, {got} found"),
        );
        false
    }

    /// Records a comparison that could not be made because the object could not be read or
    /// HEADed (an archived object, one these credentials may not read), as not comparable,
    /// with the reason. Errors after which nothing else can be compared either are returned;
    /// denials in a row are [`check_each`]'s to judge.
    fn unreadable(&mut self, key: &str, err: Error) -> Result<()> {
        // Credentials refused for one object, where they were accepted for the listing or
        // HEAD that found it, are that object's (see `Denials::credentials_accepted`).
        let denied = matches!(
            err.kind,
            ErrorKind::AccessDenied | ErrorKind::BadCredentials
        );
        if (err.is_fatal() && !denied) || err.kind == ErrorKind::Interrupted {
            return Err(err);
        }
        self.not_comparable += 1;
        self.unreadable += 1;
        self.problem(key, format!("not compared: {err}"));
        Ok(())
    }

    /// [`Verification::checksum`] of an outcome, or [`Verification::unreadable`] of its error.
    fn compared(&mut self, key: &str, outcome: Result<Option<(String, String)>>) -> Result<()> {
        match outcome {
            Ok(outcome) => {
                self.checksum(key, outcome);
                Ok(())
            }
            Err(e) => self.unreadable(key, e),
        }
    }

    fn checksum(&mut self, key: &str, outcome: Option<(String, String)>) {
        match outcome {
            None => self.not_comparable += 1,
            Some((a, b)) if a == b => self.checksum_ok += 1,
            Some((a, b)) => {
                self.checksum_mismatch += 1;
                self.differs(key);
                self.problem(key, format!("checksum differs: {a} expected, {b} found"));
            }
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            VerifyMode::None => "none",
            VerifyMode::Size => "size",
            VerifyMode::Checksum => "checksum",
            VerifyMode::Deep => "deep",
        };
        let interrupted = match self.interrupted {
            true => ", interrupted: the rest were not checked",
            false => "",
        };
        write!(
            f,
            "verified {} ({mode}{interrupted}): size ✓ {}",
            count(self.objects, "object", "objects"),
            thousands(self.size_ok)
        )?;
        if self.mode >= VerifyMode::Checksum {
            write!(
                f,
                ", checksum ✓ {}, not comparable {}",
                thousands(self.checksum_ok),
                thousands(self.not_comparable)
            )?;
        }
        for (n, what) in [
            (self.unreadable, "unreadable"),
            (self.missing, "missing"),
            (self.extra, "extra"),
            (self.size_mismatch, "size mismatch"),
            (self.checksum_mismatch, "checksum mismatch"),
        ] {
            if n > 0 {
                write!(f, ", {what} {}", thousands(n))?;
            }
        }
        Ok(())
    }
}

/// Whether `key` falls in a deterministic `percent` sample (the same keys every run).
pub fn sampled(key: &str, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let h = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, key.as_bytes());
    (h % 10_000) as f64 / 100.0 < percent
}

/// The end of a verification whose checks were run by [`check_each`] with `denials`:
/// the first denial, if every request was denied and nothing else was learnt (nothing
/// compared, nothing found wrong). Many denials in a row stop the checks themselves; both
/// are exit 4.
fn end_of_checks(denials: &Denials, v: &Verification) -> Result<()> {
    let learnt = v.comparisons_made() > 0 || !v.passed();
    match denials.only_denied().filter(|_| !learnt) {
        Some(denied) => Err(denied),
        None => Ok(()),
    }
}

/// One [`Checked`] into `v`, and a comparison's outcome into `denials` (which may stop
/// the checks).
fn record_checked(v: &mut Verification, denials: &Denials, checked: Checked) -> Result<()> {
    match checked {
        Checked::Pair {
            key,
            sizes: (want, got),
            outcome,
        } => {
            // Cut off by the stop: not checked, so not counted.
            if let Some(Err(e)) = &outcome {
                if e.kind == ErrorKind::Interrupted {
                    return Err(e.clone());
                }
            }
            v.objects += 1;
            let same_size = v.sizes(&key, want, got);
            match outcome {
                Some(outcome) if same_size => record_comparison(v, denials, &key, outcome),
                _ => Ok(()),
            }
        }
        Checked::Listed(Verdict::Missing(key)) => {
            v.objects += 1;
            v.missing(&key);
            Ok(())
        }
        Checked::Listed(Verdict::Extra(key)) => {
            v.extra += 1;
            v.problem(&key, "only at the destination".into());
            Ok(())
        }
        Checked::Listed(Verdict::Unchecked { key, error, object }) => {
            v.objects += u64::from(object);
            v.unreadable(&key, error)
        }
    }
}

/// One checksum comparison's outcome into `v`, and how it went into `denials` (which may
/// stop the checks).
fn record_comparison(
    v: &mut Verification,
    denials: &Denials,
    key: &str,
    outcome: Result<Option<(String, String)>>,
) -> Result<()> {
    match &outcome {
        Ok(_) => denials.done(),
        Err(e) => {
            if let Some(stop) = denials.failed(e) {
                return Err(stop);
            }
        }
    }
    v.compared(key, outcome)
}

/// The checksum comparison for a copied object from what the destination reports: its
/// ETag where that is predictable, else the full-object CRC recorded with it (a HEAD), else
/// for an earlier run's copy the ETag the store answered that run's write with.
async fn recorded_outcome(
    store: &dyn Store,
    c: &Copied,
    listed: ObjectMeta,
    retry: &RetryPolicy,
    progress: &Progress,
) -> Result<Option<(String, String)>> {
    let mut m = listed;
    // The store's answer to this run's write stands in for a listing without ETags; an
    // earlier run's says nothing of what the store holds now.
    if m.etag.is_none() && !c.earlier {
        m.etag = c.written_etag.clone();
    }
    let mut headed = c.etag.is_some() && m.etag.is_none();
    if headed {
        m = head(store, &c.dst_key, retry, progress).await?.unwrap_or(m);
    }
    let by_etag_of = |m: &ObjectMeta| {
        let got = m.etag.as_deref().filter(|_| !m.opaque_etag);
        c.etag
            .as_deref()
            .zip(got)
            .and_then(|(want, got)| same_form(want, got))
    };
    let mut by_etag = by_etag_of(&m);
    // A listed ETag that differs may be one the store calls no MD5 (SSE-KMS, after the
    // object was written over by another tool): only a HEAD says so.
    if !headed && by_etag.as_ref().is_some_and(|(want, got)| want != got) {
        m = head(store, &c.dst_key, retry, progress).await?.unwrap_or(m);
        headed = true;
        by_etag = by_etag_of(&m);
    }
    if by_etag.is_some() {
        return Ok(by_etag);
    }
    if c.crc64.is_some() || c.earlier {
        if !headed {
            m = head(store, &c.dst_key, retry, progress).await?.unwrap_or(m);
        }
        if let Some((want, got)) = c.crc64.zip(m.crc64nvme()) {
            return Ok(Some((
                format!("crc64nvme:{want:016x}"),
                format!("crc64nvme:{got:016x}"),
            )));
        }
    }
    // Last, for an object an earlier run copied that shows neither the form of ETag
    // predicted nor a CRC (a single write over a striped object since leaves an MD5 and no
    // CRC): the ETag the store answered that write with is what it should still show. Not
    // for this run's copies, where a store that lists another ETag than it answered with
    // (rclone's server, for multipart objects) would always differ.
    let got = m.etag.as_deref().filter(|_| !m.opaque_etag);
    let written = c.written_etag.as_deref().filter(|_| c.earlier);
    Ok(written
        .zip(got)
        .map(|(w, g)| same_form(w, g).unwrap_or((w.to_string(), g.to_string()))))
}

/// Checks what a transfer wrote against the destination as it lists now. The error, if
/// the check could not be finished, comes with what it found until then: the objects found
/// missing or different must not stay "done" in the journal either way.
pub(crate) async fn verify_copied(
    dst: &Endpoint,
    recursive: bool,
    copied: ToCheck,
    mode: VerifyMode,
    retry: RetryPolicy,
    progress: Arc<Progress>,
) -> (Verification, Result<()>) {
    let mut v = Verification {
        mode,
        keeps_differing: true,
        ..Default::default()
    };
    if copied.is_empty() {
        // Nothing was written (a sync with nothing to do): no listing to pay for.
        return (v, Ok(()));
    }
    let checked = check_copied(&mut v, dst, recursive, copied, retry, progress).await;
    (v, checked)
}

async fn check_copied(
    v: &mut Verification,
    dst: &Endpoint,
    recursive: bool,
    copied: ToCheck,
    retry: RetryPolicy,
    progress: Arc<Progress>,
) -> Result<()> {
    let mode = v.mode;
    // A store without content ETags (a file system) can only be checked by re-reading.
    let reread = mode == VerifyMode::Deep || !dst.store.etags_are_md5();
    // HEADs many at once, re-reads of whole objects fewer.
    let rereads = Arc::new(tokio::sync::Semaphore::new(DEEP_CONCURRENCY));
    let found = look_up(dst, recursive, copied, retry, progress.clone());
    let store = dst.store.clone();
    let compare = |looked: Looked| {
        let (store, progress, rereads) = (store.clone(), progress.clone(), rereads.clone());
        async move {
            let (c, m) = match looked {
                Ok(found) => found,
                Err(verdict) => return Checked::Listed(verdict),
            };
            let sizes = (c.size, m.size);
            let outcome = if sizes.0 != sizes.1 || mode < VerifyMode::Checksum {
                None
            } else if let Some(want) = c.crc64.filter(|_| reread) {
                let _turn = rereads.acquire().await.expect("never closed");
                let got = read_sums(store.as_ref(), &m, false, &retry, &progress).await;
                Some(got.map(|(got, _)| {
                    Some((
                        format!("crc64nvme:{want:016x}"),
                        format!("crc64nvme:{got:016x}"),
                    ))
                }))
            } else {
                Some(recorded_outcome(store.as_ref(), &c, m, &retry, &progress).await)
            };
            Checked::Pair {
                key: c.dst_key,
                sizes,
                outcome,
            }
        }
    };
    let checked = check_each(v, found, HEAD_CONCURRENCY, compare).await;
    checked.map_err(|e| v.stopped(e))
}

/// Runs `compare` on each of `found`, `limit` at a time, and records what each found in
/// `v`. A denied object is not comparable and the others are still compared, as a
/// transfer fails a denied object alone; many denials in a row with nothing compared
/// between them stop the checks (see `denials`).
async fn check_each<T, Fut>(
    v: &mut Verification,
    found: impl futures::Stream<Item = Result<T>>,
    limit: usize,
    compare: impl FnMut(T) -> Fut,
) -> Result<()>
where
    Fut: futures::Future<Output = Checked>,
{
    let denials = Denials::default();
    // Every object compared was listed (or HEADed) with these credentials.
    denials.credentials_accepted();
    let record = |checked| record_checked(v, &denials, checked);
    let then = "so the verification stopped";
    run_bounded(&denials, found, limit, then, compare, record).await?;
    end_of_checks(&denials, v)
}

/// A copied object and what the destination lists under its key, or what was found instead.
type Looked = std::result::Result<(Copied, ObjectMeta), Verdict>;

/// Missing, unless it lies under an entry the listing could not include (`unlisted`):
/// then only unchecked, with that entry's error.
fn missing_or_hidden(key: String, unlisted: &[Error]) -> Verdict {
    let hidden = unlisted
        .iter()
        .find(|e| lies_under(&key, e.unlisted.as_deref().unwrap_or_default()));
    match hidden {
        Some(e) => Verdict::Unchecked {
            key,
            error: e.clone(),
            object: true,
        },
        None => Verdict::Missing(key),
    }
}

/// Each of `copied` (in key order) with what the destination has under its key: one
/// listing of it alongside, where `recursive`, else a HEAD each. One under an entry the
/// listing could not include is that entry's error: not missing, only unchecked.
fn look_up(
    dst: &Endpoint,
    recursive: bool,
    copied: ToCheck,
    retry: RetryPolicy,
    progress: Arc<Progress>,
) -> impl futures::Stream<Item = Result<Looked>> + Send + '_ {
    let listing = recursive.then(|| {
        Listing::new(
            dst.store.clone(),
            dir_form(&dst.path),
            retry,
            progress.clone(),
        )
    });
    struct Walk {
        copied: crate::to_check::Sorted,
        listing: Option<Listing>,
        next: Option<ObjectMeta>,
        started: bool,
        unlisted: Vec<Error>,
    }
    let walk = Walk {
        copied: copied.into_sorted(),
        listing,
        next: None,
        started: false,
        unlisted: Vec::new(),
    };
    futures::stream::unfold(walk, move |mut w| {
        let progress = progress.clone();
        async move {
            let c = match w.copied.next()? {
                Ok(c) => c,
                Err(e) => return Some((Err(e), w)),
            };
            let found = async {
                let Some(listing) = w.listing.as_mut() else {
                    return head(dst.store.as_ref(), &c.dst_key, &retry, &progress).await;
                };
                if !w.started {
                    w.started = true;
                    w.next = listing.next_object(&mut w.unlisted).await?;
                }
                while w.next.as_ref().is_some_and(|m| m.key < c.dst_key) {
                    w.next = listing.next_object(&mut w.unlisted).await?;
                }
                Ok(w.next.as_ref().filter(|m| m.key == c.dst_key).cloned())
            }
            .await;
            let item = found.map(|m| match m {
                Some(m) => Ok((c, m)),
                None => Err(missing_or_hidden(c.dst_key, &w.unlisted)),
            });
            Some((item, w))
        }
    })
}

/// What the walk of both locations found for one entry, in listing order.
enum Found {
    /// On both sides: sizes, then checksums, to compare.
    Both(ObjectMeta, ObjectMeta),
    /// Found without a request to make.
    Listed(Verdict),
}

enum Verdict {
    Missing(String),
    Extra(String),
    /// Not checked: the entry a listing could not include (`object` unless a directory),
    /// or an object under a directory the other side could not list.
    Unchecked {
        key: String,
        error: Error,
        object: bool,
    },
}

/// A [`Found`] once compared: `outcome` is the checksum comparison, where sizes matched
/// and the mode asks for one.
enum Checked {
    Pair {
        key: String,
        sizes: (u64, u64),
        outcome: Option<Result<Option<(String, String)>>>,
    },
    Listed(Verdict),
}

/// Compares two locations: missing, extra, size- and checksum-mismatched objects. What
/// `filter` leaves out is not compared (for one object, by its base name), so that a
/// filtered `cp` or `sync` verifies with the same filter.
///
/// The comparisons run while the listings go on, so memory holds the objects in flight,
/// not the locations. Once `progress` is stopped (Ctrl-C), nothing new is compared and
/// what was found so far comes back marked [`Verification::interrupted`].
pub async fn verify_locations(
    src: &Endpoint,
    dst: &Endpoint,
    recursive: bool,
    mode: VerifyMode,
    filter: &Filter,
    retry: RetryPolicy,
    progress: Arc<Progress>,
) -> Result<Verification> {
    let mut v = Verification {
        mode,
        ..Default::default()
    };
    let found = if recursive {
        walk(src, dst, filter, retry, progress.clone()).boxed()
    } else {
        let one = one_object(src, dst, filter, retry, &progress);
        match progress.unless_stopped(one).await {
            Ok(Some(found)) => futures::stream::iter([Ok(found)]).boxed(),
            Ok(None) => return Ok(v),
            Err(e) if e.kind == ErrorKind::Interrupted => {
                v.interrupted = true;
                return Ok(v);
            }
            Err(e) => return Err(e),
        }
    };
    let deep = mode == VerifyMode::Deep;
    let limit = if deep {
        DEEP_CONCURRENCY
    } else {
        HEAD_CONCURRENCY
    };
    let compare = |found: Found| {
        let (s, d, progress) = (src.store.clone(), dst.store.clone(), progress.clone());
        async move {
            let (a, b) = match found {
                Found::Both(a, b) => (a, b),
                Found::Listed(verdict) => return Checked::Listed(verdict),
            };
            let (key, sizes) = (a.key.clone(), (a.size, b.size));
            let outcome = if sizes.0 == sizes.1 && mode >= VerifyMode::Checksum {
                let (a, b) = (Side::listed(s.as_ref(), a), Side::listed(d.as_ref(), b));
                // Only reads are in flight: a stop need not wait for their answers.
                let outcome = fingerprints(a, b, deep, &retry, &progress);
                Some(progress.unless_stopped(outcome).await)
            } else {
                None
            };
            Checked::Pair {
                key,
                sizes,
                outcome,
            }
        }
    };
    match check_each(&mut v, found, limit, compare).await {
        Err(e) if e.kind == ErrorKind::Interrupted => v.interrupted = true,
        Err(e) => return Err(v.stopped(e)),
        Ok(()) => {}
    }
    Ok(v)
}

/// The one object of a [`verify_locations`] without `-r`, and what the destination has
/// where `cp` put it; `None` when the filter leaves it out.
async fn one_object(
    src: &Endpoint,
    dst: &Endpoint,
    filter: &Filter,
    retry: RetryPolicy,
    progress: &Progress,
) -> Result<Option<Found>> {
    // A prefix named without -r is told so, as `cp` tells it.
    let limit = crate::limiter::AdaptiveLimit::new(1);
    let a = crate::run::single_source(&src.store, &src.path, &retry, &limit, progress).await?;
    if !filter.selects_one(&a) {
        return Ok(None);
    }
    // Where `cp` put it: a destination in directory form takes the base name.
    let dst_key =
        map_key(&src.path, &src.path, &dst.path, false).expect("single-object mapping always maps");
    Ok(Some(
        match head(dst.store.as_ref(), &dst_key, &retry, progress).await? {
            Some(b) => Found::Both(a, b),
            None => Found::Listed(Verdict::Missing(dst_key)),
        },
    ))
}

/// The walk of both listings for [`verify_locations`]: each entry the filter selects, as
/// the comparison needs it, until `progress` is stopped.
fn walk<'a>(
    src: &Endpoint,
    dst: &Endpoint,
    filter: &'a Filter,
    retry: RetryPolicy,
    progress: Arc<Progress>,
) -> impl futures::Stream<Item = Result<Found>> + Send + 'a {
    let list = |ep: &Endpoint| {
        Listing::new(
            ep.store.clone(),
            dir_form(&ep.path),
            retry,
            progress.clone(),
        )
    };
    let (src_dir, dst_dir) = (dir_form(&src.path).len(), dir_form(&dst.path).len());
    let merge = Merge::new(list(src), list(dst));
    // Directories either side could not list, by relative key: the other side's objects
    // under them are not checked, rather than missing or extra.
    let unlisted: Vec<(String, Error)> = Vec::new();
    futures::stream::unfold((merge, unlisted), move |(mut merge, mut unlisted)| {
        let progress = progress.clone();
        async move {
            let hidden = |unlisted: &[(String, Error)], rel: &str| {
                unlisted
                    .iter()
                    .find(|(dir, _)| lies_under(rel, dir))
                    .map(|(_, e)| e.clone())
            };
            let found = loop {
                // A listing page still on its way does not hold a stop.
                let pair = match progress.unless_stopped(merge.next()).await {
                    Ok(Some(pair)) => pair,
                    Ok(None) => return None,
                    Err(e) => break Err(e),
                };
                // What the filter leaves out, as `cp` and `sync` with it leave it out: a
                // source object it does not select, a destination-only key a sync would
                // not delete, an entry it provably leaves out.
                let left_out = match &pair {
                    Pair::Left(a) | Pair::Both(a, _) => !filter.selects(&a.key[src_dir..], a),
                    Pair::Right(b) => !filter.may_delete(&b.key[dst_dir..]),
                    Pair::Unlisted { rel_key, .. } => filter.leaves_out(rel_key),
                };
                if left_out {
                    continue;
                }
                let under_unlisted = |key: String, rel: &str, otherwise: fn(String) -> Verdict| {
                    Found::Listed(match hidden(&unlisted, rel) {
                        Some(error) => Verdict::Unchecked {
                            key,
                            error,
                            object: true,
                        },
                        None => otherwise(key),
                    })
                };
                break Ok(match pair {
                    Pair::Left(a) => {
                        let rel = a.key[src_dir..].to_string();
                        under_unlisted(a.key, &rel, Verdict::Missing)
                    }
                    Pair::Right(b) => {
                        let rel = b.key[dst_dir..].to_string();
                        under_unlisted(b.key, &rel, Verdict::Extra)
                    }
                    Pair::Both(a, b) => Found::Both(a, b),
                    Pair::Unlisted { rel_key, error, .. } => {
                        let key = error.unlisted.clone().unwrap_or_default();
                        // A directory is no object; the objects under it count where the
                        // other side has them.
                        let object = !rel_key.ends_with('/');
                        if !object {
                            unlisted.push((rel_key, error.clone()));
                        }
                        Found::Listed(Verdict::Unchecked { key, error, object })
                    }
                });
            };
            Some((found, (merge, unlisted)))
        }
    })
}

/// Whether `key` is the entry a listing could not include, or lies under it (a directory's
/// key ends in `/`).
fn lies_under(key: &str, entry: &str) -> bool {
    key == entry || (entry.ends_with('/') && key.starts_with(entry))
}

/// An expected ETag is comparable with a listed one only in the same form: content MD5
/// with content MD5, multipart `-N` with multipart (some servers, e.g. rclone serve s3,
/// give multipart objects ETags of their own making).
fn same_form(want: &str, got: &str) -> Option<(String, String)> {
    match (plain_md5(Some(want)), plain_md5(Some(got))) {
        (Some(w), Some(g)) => Some((w.to_ascii_lowercase(), g.to_ascii_lowercase())),
        (None, None) if want.contains('-') && got.contains('-') => {
            Some((want.to_string(), got.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check after a copy walks the destination's listing alongside the records in
    /// key order: a key recorded twice is checked twice against the one object, and keys
    /// before, between and past the listed ones are missing.
    #[tokio::test]
    async fn the_check_after_a_copy_pairs_records_with_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("a", "aaa"), ("c", "ccc"), ("e", "eee")] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let dst = Endpoint {
            store: Arc::new(skyhaul_store::LocalStore::new(dir.path())),
            path: String::new(),
            display: "dst".into(),
            locator: "dst".into(),
        };
        let to_check = std::sync::Mutex::new(ToCheck::default());
        for (key, size) in [("0", 1), ("a", 3), ("a", 3), ("b", 3), ("c", 5), ("z", 3)] {
            let copied = Copied {
                dst_key: key.into(),
                size,
                crc64: None,
                etag: None,
                written_etag: None,
                server_side: false,
                earlier: false,
            };
            crate::to_check::keep(&to_check, copied);
        }
        let to_check = to_check.into_inner().unwrap();
        let progress = Arc::new(Progress::default());
        let retry = RetryPolicy::default();
        let (v, checked) =
            verify_copied(&dst, true, to_check, VerifyMode::Size, retry, progress).await;
        checked.unwrap();
        assert_eq!(
            (v.objects, v.size_ok, v.missing, v.size_mismatch, v.extra),
            (6, 2, 3, 1, 0),
            "{v:?}"
        );
        assert_eq!(v.differing, ["0", "b", "c", "z"]);
    }

    #[test]
    fn sampling_is_deterministic_and_roughly_proportional() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("k/{i}")).collect();
        let n = keys.iter().filter(|k| sampled(k, 10.0)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(keys.iter().all(|k| sampled(k, 100.0)));
        assert_eq!(keys.iter().filter(|k| sampled(k, 10.0)).count(), n);
    }
}
