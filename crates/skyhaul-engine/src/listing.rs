//! Listings that survive transient errors and produce the job stream.

use crate::filter::Filter;
use crate::plan::{compare_listed, Job, Listed, Mode};
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use futures::StreamExt;
use skyhaul_location::{dir_form, map_key};
use skyhaul_store::{Error, ErrorKind, ObjectMeta, Result, Store};
use std::cmp::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A listing of `prefix` that, on a retryable error, starts again after the last key it
/// delivered, and that fails loudly if a store ever lists out of order (sync's merge-join
/// depends on the order).
pub struct ResilientList {
    store: Arc<dyn Store>,
    pub(crate) prefix: String,
    retry: RetryPolicy,
    progress: Arc<Progress>,
    pages: Option<mpsc::Receiver<Result<ObjectMeta>>>,
    last: Option<String>,
    attempts: u32,
}

impl ResilientList {
    pub fn new(
        store: Arc<dyn Store>,
        prefix: String,
        retry: RetryPolicy,
        progress: Arc<Progress>,
    ) -> Self {
        ResilientList {
            store,
            prefix,
            retry,
            progress,
            pages: None,
            last: None,
            attempts: 0,
        }
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel(1024);
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        let after = self.last.clone();
        tokio::spawn(async move {
            let mut s = store.list(&prefix, after.as_deref());
            while let Some(item) = s.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        self.pages = Some(rx);
    }

    /// The next object, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            if self.pages.is_none() {
                self.start();
            }
            match self.pages.as_mut()?.recv().await {
                None => return None,
                Some(Ok(m)) => {
                    if self.last.as_deref().is_some_and(|l| m.key.as_str() <= l) {
                        return Some(Err(Error::new(
                            ErrorKind::Other,
                            format!(
                                "{}: the listing is not in key order ('{}' after '{}'); cannot compare with the other side",
                                self.store.name(),
                                m.key,
                                self.last.as_deref().unwrap_or("")
                            ),
                        )));
                    }
                    self.last = Some(m.key.clone());
                    self.attempts = 0;
                    return Some(Ok(m));
                }
                Some(Err(e)) if e.is_retryable() && self.attempts < self.retry.retries => {
                    tracing::debug!("listing retry after: {e}");
                    self.progress.add_retry();
                    tokio::time::sleep(self.retry.backoff(self.attempts)).await;
                    self.attempts += 1;
                    self.pages = None;
                }
                Some(Err(e)) => return Some(Err(e)),
            }
        }
    }
}

/// One step of a merge-join of two sorted listings by key relative to their prefixes.
pub enum Pair {
    Left(ObjectMeta),
    Right(ObjectMeta),
    Both(ObjectMeta, ObjectMeta),
}

/// Walks two listings in step, in constant memory, pairing objects with the same
/// relative key: the heart of sync, of the verification pass and of `skyhaul verify`.
pub struct Merge {
    left: ResilientList,
    right: ResilientList,
    left_dir: usize,
    right_dir: usize,
    l: Option<ObjectMeta>,
    r: Option<ObjectMeta>,
    started: bool,
}

impl Merge {
    pub fn new(left: ResilientList, right: ResilientList) -> Self {
        let (left_dir, right_dir) = (left.prefix.len(), right.prefix.len());
        Merge {
            left,
            right,
            left_dir,
            right_dir,
            l: None,
            r: None,
            started: false,
        }
    }

    pub async fn next(&mut self) -> Result<Option<Pair>> {
        if !self.started {
            self.started = true;
            self.l = self.left.next().await.transpose()?;
            self.r = self.right.next().await.transpose()?;
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
                self.l = self.left.next().await.transpose()?;
                Pair::Left(a)
            }
            Ordering::Greater => {
                let b = self.r.take().expect("right present");
                self.r = self.right.next().await.transpose()?;
                Pair::Right(b)
            }
            Ordering::Equal => {
                let (a, b) = (
                    self.l.take().expect("left present"),
                    self.r.take().expect("right present"),
                );
                self.l = self.left.next().await.transpose()?;
                self.r = self.right.next().await.transpose()?;
                Pair::Both(a, b)
            }
        }))
    }
}

/// Streams the jobs of a recursive copy or sync into `tx`, counting planned and skipped
/// work as it goes. Source objects the filter does not select are not planned (and, in a
/// sync, neither copied nor counted as skipped); a destination-only object is deleted only
/// when the filter allows it. Returns how many source objects were listed, selected or not.
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
    tx: mpsc::Sender<Job>,
) -> Result<u64> {
    let src_dir = dir_form(&src_prefix);
    let dst_dir = dir_form(&dst_prefix);
    let mut sources = ResilientList::new(src, src_dir.clone(), retry, progress.clone());
    let mut listed = 0u64;
    let copy = |m: ObjectMeta| {
        let dst_key = map_key(&src_dir, &m.key, &dst_dir, true)
            .expect("listed keys lie under the listed prefix");
        progress.add_planned(m.size);
        Job::Copy { src: m, dst_key }
    };
    let selected = |m: &ObjectMeta| filter.selects(&m.key[src_dir.len()..], m);
    let Mode::Sync { delete, compare } = mode else {
        while let Some(m) = sources.next().await {
            listed += 1;
            let m = m?;
            if !selected(&m) {
                continue;
            }
            if tx.send(copy(m)).await.is_err() {
                break;
            }
        }
        return Ok(listed);
    };
    let dests = ResilientList::new(dst, dst_dir.clone(), retry, progress.clone());
    let mut merge = Merge::new(sources, dests);
    while let Some(pair) = merge.next().await? {
        let job = match pair {
            Pair::Left(a) => {
                listed += 1;
                selected(&a).then(|| copy(a))
            }
            Pair::Right(b) => (delete && filter.may_delete(&b.key[dst_dir.len()..]))
                .then_some(Job::Delete { dst_key: b.key }),
            Pair::Both(a, b) => {
                listed += 1;
                if !selected(&a) {
                    None
                } else {
                    match compare_listed(&a, &b, compare) {
                        Listed::Copy => Some(copy(a)),
                        Listed::Skip => {
                            progress.add_skipped(a.size);
                            None
                        }
                        Listed::CompareContent => {
                            let dst_key = b.key.clone();
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
                break;
            }
        }
    }
    Ok(listed)
}
