//! Listings that survive transient errors and produce the job stream.

use crate::filter::Filter;
use crate::plan::{compare_listed, Announce, Job, Listed, Mode, UpToDate};
use crate::progress::Progress;
use crate::ranges::{Ahead, Ranges, Walk};
use crate::retry::{Backoff, RetryPolicy};
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{Entry, Error, ErrorKind, ObjectMeta, Result, Store};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// A listing of `prefix` that, on a retryable error, starts again after the last key it
/// delivered, and that fails loudly if a store ever lists out of order (sync's merge-join
/// depends on the order).
struct ResilientList {
    store: Arc<dyn Store>,
    prefix: String,
    /// Try a listing by level first (see [`ResilientList::leaf_first`]).
    by_level: bool,
    retry: RetryPolicy,
    progress: Arc<Progress>,
    /// What the listing may list ahead of its reader.
    ahead: Ahead,
    pages: Option<Ranges>,
    last: Option<String>,
    backoff: Backoff,
}

impl ResilientList {
    pub fn new(
        store: Arc<dyn Store>,
        prefix: String,
        retry: RetryPolicy,
        progress: Arc<Progress>,
        ahead: Ahead,
    ) -> Self {
        ResilientList {
            store,
            prefix,
            by_level: false,
            retry,
            progress,
            ahead,
            pages: None,
            last: None,
            backoff: Backoff::default(),
        }
    }

    /// Lists by level for as long as the prefix turns out to hold objects only
    /// ([`Walk::LeafFirst`]).
    fn leaf_first(mut self) -> Self {
        self.by_level = self.store.lists_by_level();
        self
    }

    /// Starts listing before the first `next`; `permit` is held until the reader is past
    /// the listing's first range.
    fn start_ahead(&mut self, permit: OwnedSemaphorePermit) {
        self.start(Some(permit));
    }

    fn start(&mut self, permit: Option<OwnedSemaphorePermit>) {
        let walk = if self.by_level {
            Walk::LeafFirst
        } else {
            Walk::Flat
        };
        self.pages = Some(Ranges::start(
            self.store.clone(),
            self.prefix.clone(),
            walk,
            self.last.clone(),
            self.ahead.clone(),
            permit,
        ));
    }

    /// The next object, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            if self.pages.is_none() {
                self.start(None);
            }
            match self.pages.as_mut()?.next().await {
                None => return None,
                Some(Ok(Entry::Prefix(p))) => unreachable!("a flat range listed a prefix: {p}"),
                Some(Ok(Entry::Object(m))) => {
                    if self.last.as_deref().is_some_and(|l| m.key.as_str() <= l) {
                        return Some(Err(out_of_order(
                            self.store.name(),
                            &m.key,
                            self.last.as_deref(),
                        )));
                    }
                    self.last = Some(m.key.clone());
                    self.backoff.progressed();
                    return Some(Ok(m));
                }
                Some(Err(e)) => {
                    let (retry, progress) = (&self.retry, &self.progress);
                    if let Err(e) = self.backoff.after(retry, progress, None, e).await {
                        return Some(Err(e));
                    }
                    self.pages = None;
                }
            }
        }
    }
}

/// Sub-prefixes and key ranges whose listings may run ahead of the one being read.
const PREFETCH: usize = 16;

/// The recursive listing of a prefix, in key order. Where the store lists by level, the
/// prefix is split at its first level and the sub-prefixes are listed flat, several at once
/// ahead of the reader: listing is a chain of round trips, and one chain per sub-prefix is
/// what makes a million-object listing take seconds, not minutes (and on file-backed
/// servers that walk everything for each flat page, it is the difference between linear and
/// quadratic). Only one level is split so that a tree of many tiny directories (partitions
/// like `date=…/hour=…/`) does not turn into a request per directory; each sub-prefix is
/// listed by level while it looks like a leaf, flat once it has sub-prefixes of its own.
/// Where the store allows it, every listing is also split into key ranges ([`Ranges`]).
pub struct Listing {
    pub(crate) prefix: String,
    top: Option<mpsc::Receiver<Result<Piece>>>,
    flat: Option<ResilientList>,
    last: Option<String>,
    name: String,
}

enum Piece {
    Object(ObjectMeta),
    Prefix(ResilientList),
}

impl Listing {
    pub fn new(
        store: Arc<dyn Store>,
        prefix: String,
        retry: RetryPolicy,
        progress: Arc<Progress>,
    ) -> Self {
        let name = store.name().to_string();
        let ahead = Ahead::new(PREFETCH);
        if !store.lists_by_level() {
            return Listing {
                prefix: prefix.clone(),
                top: None,
                flat: Some(ResilientList::new(store, prefix, retry, progress, ahead)),
                last: None,
                name,
            };
        }
        let (tx, rx) = mpsc::channel(PREFETCH * 2);
        tokio::spawn(list_top(store, prefix.clone(), retry, progress, ahead, tx));
        Listing {
            prefix,
            top: Some(rx),
            flat: None,
            last: None,
            name,
        }
    }

    /// The next object, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        if self.top.is_none() {
            // Not split: the one flat listing checks its own order.
            return self.flat.as_mut()?.next().await;
        }
        let m = loop {
            if let Some(flat) = self.flat.as_mut() {
                match flat.next().await {
                    Some(Ok(m)) => break m,
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.flat = None,
                }
            }
            match self.top.as_mut()?.recv().await? {
                Ok(Piece::Object(m)) => break m,
                Ok(Piece::Prefix(list)) => self.flat = Some(list),
                Err(e) => return Some(Err(e)),
            }
        };
        if self.last.as_deref().is_some_and(|l| m.key.as_str() <= l) {
            return Some(Err(out_of_order(&self.name, &m.key, self.last.as_deref())));
        }
        self.last = Some(m.key.clone());
        Some(Ok(m))
    }

    /// The next object, `None` at the end, with the entries before it that the listing
    /// could not include ([`Error::unlisted`]) added to `unlisted`.
    pub async fn next_object(&mut self, unlisted: &mut Vec<Error>) -> Result<Option<ObjectMeta>> {
        loop {
            match self.next().await {
                Some(Err(e)) if e.unlisted.is_some() => unlisted.push(e),
                next => return next.transpose(),
            }
        }
    }
}

/// Lists the first level of `prefix` (resuming after the last entry on a retryable error)
/// and sends its objects and, for each sub-prefix, a flat listing of it, started at once
/// while one of the listing's slots is free.
async fn list_top(
    store: Arc<dyn Store>,
    prefix: String,
    retry: RetryPolicy,
    progress: Arc<Progress>,
    ahead: Ahead,
    tx: mpsc::Sender<Result<Piece>>,
) {
    let top = Ahead::new(PREFETCH);
    let mut last: Option<String> = None;
    let mut backoff = Backoff::default();
    loop {
        let after = last.clone();
        // Slots of its own: ranges of the first level, held until the reader is through
        // their sub-prefixes, would leave none for those sub-prefixes' listings.
        let mut level = Ranges::start(
            store.clone(),
            prefix.clone(),
            Walk::Level,
            after,
            top.clone(),
            None,
        );
        let failed = loop {
            let piece = match level.next().await {
                None => return,
                Some(Err(e)) => break e,
                Some(Ok(e)) if last.as_deref().is_some_and(|l| e.key() <= l) => continue,
                Some(Ok(Entry::Object(m))) => {
                    last = Some(m.key.clone());
                    Piece::Object(m)
                }
                Some(Ok(Entry::Prefix(p))) => {
                    last = Some(p.clone());
                    let mut list = ResilientList::new(
                        store.clone(),
                        p,
                        retry,
                        progress.clone(),
                        ahead.clone(),
                    )
                    .leaf_first();
                    if let Some(permit) = ahead.slot() {
                        list.start_ahead(permit);
                    }
                    Piece::Prefix(list)
                }
            };
            backoff.progressed();
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        };
        if let Err(e) = backoff.after(&retry, &progress, None, failed).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
    }
}

fn out_of_order(store: &str, key: &str, last: Option<&str>) -> Error {
    Error::new(
        ErrorKind::Other,
        format!(
            "{store}: the listing is not in key order ('{key}' after '{}'); cannot compare with the other side",
            last.unwrap_or("")
        ),
    )
}

/// The key of the entry a listing of a prefix `dir` bytes long could not include, relative
/// to that prefix.
fn unlisted_rel_key(error: &Error, dir: usize) -> String {
    let key = error.unlisted.as_deref().unwrap_or_default();
    key.get(dir..).unwrap_or(key).to_string()
}

/// One step of a merge-join of two sorted listings by key relative to their prefixes.
pub enum Pair {
    Left(ObjectMeta),
    Right(ObjectMeta),
    Both(ObjectMeta, ObjectMeta),
    /// An entry either listing could not include ([`Error::unlisted`]), with its key
    /// relative to that listing's prefix. Its objects, if any, are in neither listing: it
    /// comes before any object of the other side under it, so that the caller can tell
    /// those apart.
    Unlisted {
        left: bool,
        rel_key: String,
        error: Error,
    },
}

/// Walks two listings in step, in constant memory, pairing objects with the same
/// relative key: the heart of sync, of the verification pass and of `skyhaul verify`.
pub struct Merge {
    left: Listing,
    right: Listing,
    left_dir: usize,
    right_dir: usize,
    l: Option<ObjectMeta>,
    r: Option<ObjectMeta>,
    started: bool,
    /// Entries the listings could not include, not yet handed out.
    unlisted: VecDeque<Pair>,
}

impl Merge {
    pub fn new(left: Listing, right: Listing) -> Self {
        let (left_dir, right_dir) = (left.prefix.len(), right.prefix.len());
        Merge {
            left,
            right,
            left_dir,
            right_dir,
            l: None,
            r: None,
            started: false,
            unlisted: VecDeque::new(),
        }
    }

    pub async fn next(&mut self) -> Result<Option<Pair>> {
        if !self.started {
            self.started = true;
            self.l = pull(&mut self.left, true, self.left_dir, &mut self.unlisted).await?;
            self.r = pull(&mut self.right, false, self.right_dir, &mut self.unlisted).await?;
        }
        if let Some(unlisted) = self.unlisted.pop_front() {
            return Ok(Some(unlisted));
        }
        let order = match (&self.l, &self.r) {
            (None, None) => return Ok(None),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.key[self.left_dir..].cmp(&b.key[self.right_dir..]),
        };
        Ok(Some(match order {
            Ordering::Less => {
                let a = self.l.take().expect("left present");
                self.l = pull(&mut self.left, true, self.left_dir, &mut self.unlisted).await?;
                Pair::Left(a)
            }
            Ordering::Greater => {
                let b = self.r.take().expect("right present");
                self.r = pull(&mut self.right, false, self.right_dir, &mut self.unlisted).await?;
                Pair::Right(b)
            }
            Ordering::Equal => {
                let (a, b) = (
                    self.l.take().expect("left present"),
                    self.r.take().expect("right present"),
                );
                self.l = pull(&mut self.left, true, self.left_dir, &mut self.unlisted).await?;
                self.r = pull(&mut self.right, false, self.right_dir, &mut self.unlisted).await?;
                Pair::Both(a, b)
            }
        }))
    }
}

/// The next object of `listing` (the `left` one or not), of a prefix `dir` bytes long,
/// with the entries before it that the listing could not include added to `unlisted`.
async fn pull(
    listing: &mut Listing,
    left: bool,
    dir: usize,
    unlisted: &mut VecDeque<Pair>,
) -> Result<Option<ObjectMeta>> {
    let mut errors = Vec::new();
    let next = listing.next_object(&mut errors).await?;
    unlisted.extend(errors.into_iter().map(|error| Pair::Unlisted {
        left,
        rel_key: unlisted_rel_key(&error, dir),
        error,
    }));
    Ok(next)
}

/// Streams the jobs of a recursive copy or sync into `tx`, counting planned and skipped
/// work as it goes. Source objects the filter does not select are not planned (and, in a
/// sync, neither copied nor counted as skipped); a destination-only object is deleted only
/// when the filter allows it. Returns how many source objects were listed, selected or not
/// (in a filtered `sync --delete`, only those its name rules select), and source entries
/// that could not be listed unless the filter leaves them out. `up_to_date` and
/// `announce` are a sync's hooks ([`UpToDate`], [`Announce`]).
#[allow(clippy::too_many_arguments)]
pub async fn plan_recursive(
    src: Arc<dyn Store>,
    src_prefix: String,
    dst: Arc<dyn Store>,
    dst_prefix: String,
    mode: Mode,
    filter: Arc<Filter>,
    retry: RetryPolicy,
    progress: Arc<Progress>,
    up_to_date: Option<UpToDate>,
    announce: Option<Announce>,
    tx: mpsc::Sender<Job>,
) -> Result<u64> {
    let src_dir = dir_form(&src_prefix);
    let dst_dir = dir_form(&dst_prefix);
    let mut sources = Listing::new(src, src_dir.clone(), retry, progress.clone());
    let mut listed = 0u64;
    let announce = |dst_key: &str| {
        if let Some(f) = &announce {
            f(dst_key);
        }
    };
    let copy = |m: ObjectMeta| {
        let dst_key = map_key(&src_dir, &m.key, &dst_dir, true)
            .expect("listed keys lie under the listed prefix");
        progress.add_planned(m.size);
        announce(&dst_key);
        Job::Copy { src: m, dst_key }
    };
    let selected = |m: &ObjectMeta| filter.selects(&m.key[src_dir.len()..], m);
    let fails = |rel_key: &str, error: Error| {
        if filter.leaves_out(rel_key) {
            tracing::debug!("left out by the filter: {error}");
            return None;
        }
        let key = error.unlisted.clone().unwrap_or_default();
        Some(Job::Unlisted { key, error })
    };
    let Mode::Sync { delete, compare } = mode else {
        let mut unlisted = Vec::new();
        loop {
            let next = sources.next_object(&mut unlisted).await?;
            for error in unlisted.drain(..) {
                let rel_key = unlisted_rel_key(&error, src_dir.len());
                if let Some(job) = fails(&rel_key, error) {
                    listed += 1;
                    if tx.send(job).await.is_err() {
                        return Ok(listed);
                    }
                }
            }
            let Some(m) = next else {
                progress.set_listing_done();
                return Ok(listed);
            };
            listed += 1;
            if selected(&m) && tx.send(copy(m)).await.is_err() {
                return Ok(listed);
            }
        }
    };
    // By name only, as deletions go: a size or time rule that selects nothing today
    // (`--newer-than 7d` after a quiet week) leaves the source what it is.
    let by_selection = crate::run::deletes_by_selection(mode, &filter);
    let counted = |a: &ObjectMeta| !by_selection || filter.may_delete(&a.key[src_dir.len()..]);
    let dests = Listing::new(dst, dst_dir.clone(), retry, progress.clone());
    let mut merge = Merge::new(sources, dests);
    while let Some(pair) = merge.next().await? {
        let job = match pair {
            Pair::Left(a) => {
                listed += u64::from(counted(&a));
                selected(&a).then(|| copy(a))
            }
            Pair::Right(b) => (delete && filter.may_delete(&b.key[dst_dir.len()..]))
                .then_some(Job::Delete { dst_key: b.key }),
            Pair::Unlisted {
                left,
                rel_key,
                error,
            } => {
                // Only the source's failures count: a source that is empty but for what
                // the filter leaves out is refused, whatever the destination holds.
                let job = fails(&rel_key, error);
                listed += u64::from(left && job.is_some());
                job
            }
            Pair::Both(a, b) => {
                listed += u64::from(counted(&a));
                if !selected(&a) {
                    None
                } else {
                    match compare_listed(&a, &b, compare) {
                        Listed::Copy => Some(copy(a)),
                        Listed::Skip if up_to_date.as_ref().is_some_and(|f| f(&a, &b.key)) => {
                            Some(copy(a))
                        }
                        Listed::Skip => {
                            progress.add_skipped(a.size);
                            None
                        }
                        // Planned once its content is compared and found different.
                        Listed::CompareContent => {
                            let dst_key = b.key.clone();
                            announce(&dst_key);
                            Some(Job::CopyUnlessSame {
                                src: a,
                                dst: b,
                                dst_key,
                            })
                        }
                    }
                }
            }
        };
        if let Some(job) = job {
            if tx.send(job).await.is_err() {
                return Ok(listed);
            }
        }
    }
    progress.set_listing_done();
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listed::Listed;
    use std::time::Duration;

    /// A listing that fails once inside a sub-prefix below a sub-prefix, where it lists
    /// flat, starts again after its last key and lists the rest of that sub-prefix: started
    /// again by level, it had taken the sub-prefix named again (it holds the start) for one
    /// listed already, and lost the rest of it.
    #[tokio::test]
    async fn a_retry_inside_a_deeper_sub_prefix_lists_the_rest_of_it() {
        let keys: Vec<String> = (0..1500)
            .map(|i| format!("data/2024/11/f{i:04}"))
            .chain((0..2500).map(|i| format!("data/2024/12/f{i:04}")))
            .collect();
        let quick = RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        for seeks in [false, true] {
            // Pages: the top level, data/ by level, then data/ flat: the fifth is in 12/.
            let store = Arc::new(Listed {
                by_level: true,
                seeks,
                fail_page: Some(4),
                ..Listed::new(keys.clone())
            });
            let progress = Arc::new(Progress::default());
            let mut listing = Listing::new(store.clone(), String::new(), quick, progress.clone());
            let mut got = Vec::new();
            while let Some(m) = listing.next().await {
                got.push(m.unwrap().key);
            }
            assert_eq!(got.len(), keys.len(), "seeks: {seeks}");
            assert_eq!(got, keys, "seeks: {seeks}");
            assert_eq!(progress.snapshot().retries, 1, "seeks: {seeks}");
        }
    }

    /// A first level of thousands of sub-prefixes (partitions) lists whole, their listings
    /// run ahead of the reader, many at once. (The first level's ranges had taken every
    /// slot until the reader was through them: 4.9 s here against 2.7 s before ranges and
    /// after the fix, a difference this test does not see.)
    #[tokio::test]
    async fn sub_prefixes_list_ahead_under_a_wide_first_level() {
        let keys = (0..3000).flat_map(|p| (0..3).map(move |k| format!("date={p:05}/part-{k}")));
        let store = Arc::new(Listed {
            by_level: true,
            seeks: true,
            ..Listed::new(keys)
        });
        let retry = RetryPolicy::default();
        let mut listing = Listing::new(store.clone(), String::new(), retry, Arc::default());
        let mut n = 0;
        while let Some(m) = listing.next().await {
            m.unwrap();
            n += 1;
        }
        assert_eq!(n, 9000);
        let most = store.most_open.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most >= 8, "{most} listings at once");
    }

    /// A listing failing again and again ends at the stop, interrupted, whether it lists
    /// flat or by level (the fleet's coordinator waits on it: it had gone on retrying for
    /// minutes after Ctrl-C), and it retried in the meantime.
    #[tokio::test]
    async fn a_failing_listing_ends_at_the_stop() {
        let slow = RetryPolicy {
            base: Duration::from_secs(600),
            cap: Duration::from_secs(600),
            ..RetryPolicy::default()
        };
        for by_level in [false, true] {
            let stop = tokio_util::sync::CancellationToken::new();
            let progress = Arc::new(Progress::stopped_by(stop.clone()));
            let store = Arc::new(Listed {
                busy: true,
                by_level,
                ..Listed::default()
            });
            let mut listing = Listing::new(store, "p/".into(), slow, progress.clone());
            let stopper = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop.cancel();
            };
            let listed =
                async { tokio::time::timeout(Duration::from_secs(60), listing.next()).await };
            let (listed, ()) = tokio::join!(listed, stopper);
            let err = listed
                .expect("ended within a minute of the stop")
                .expect("an answer")
                .unwrap_err();
            assert_eq!(
                err.kind,
                ErrorKind::Interrupted,
                "by level: {by_level}: {err}"
            );
            assert_eq!(progress.snapshot().retries, 1, "by level: {by_level}");
        }
    }
}
