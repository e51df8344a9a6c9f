//! A store in memory that only lists, for the listing's unit tests: how the engine splits and
//! retries listings is tested here against every shape of key set and failure; the
//! integration tests (`tests/listing.rs`) check the same on the real servers.

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use skyhaul_store::{
    CompletedPart, Entry, Error, ErrorKind, Fetched, Limits, MultipartUpload, ObjectMeta, PartSpec,
    Payload, PutOptions, Result, Store, Written,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Keys listed a page at a time, a round trip (a short sleep) per page, as S3 lists them.
#[derive(Debug, Default)]
pub(crate) struct Listed {
    pub keys: Arc<Vec<String>>,
    /// Every listing fails as a busy server's would.
    pub busy: bool,
    pub by_level: bool,
    /// Starts a listing after any key by itself (see [`Store::lists_after_any_key`]).
    pub seeks: bool,
    /// A round trip: the wait before each page.
    pub latency: Duration,
    /// Listings opened.
    pub lists: AtomicUsize,
    pub open: Arc<AtomicUsize>,
    /// The most listings open at once.
    pub most_open: Arc<AtomicUsize>,
    /// The page (counted over every listing, from 0) that fails once, as a busy server's.
    pub fail_page: Option<usize>,
    pub served: Arc<AtomicUsize>,
}

const PAGE: usize = 1000;

impl Listed {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        keys.dedup();
        Listed {
            keys: Arc::new(keys),
            latency: Duration::from_millis(2),
            ..Listed::default()
        }
    }

    /// What a listing of `prefix` after `after` holds, by level or not, as S3 answers: keys
    /// after `after`, rolled up at the first `/` past the prefix when by level (so a
    /// sub-prefix holding `after` comes again).
    pub fn expected(&self, prefix: &str, after: Option<&str>, level: bool) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut at = start(&self.keys, prefix, after);
        while let Some((entry, next)) = entry_at(&self.keys, prefix, level, at) {
            out.push(entry);
            at = next;
        }
        out
    }

    fn pages(
        &self,
        prefix: &str,
        after: Option<&str>,
        level: bool,
    ) -> BoxStream<'static, Result<Entry>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        if self.busy {
            let busy = Error::new(ErrorKind::Transient, "503");
            return stream::once(async { Err(busy) }).boxed();
        }
        let open = Open::new(self.open.clone(), self.most_open.clone());
        let (keys, prefix, latency) = (self.keys.clone(), prefix.to_string(), self.latency);
        let (served, fail_page) = (self.served.clone(), self.fail_page);
        let at = start(&keys, &prefix, after);
        stream::unfold(Some((at, open)), move |state| {
            let (keys, prefix, served) = (keys.clone(), prefix.clone(), served.clone());
            async move {
                let (mut at, open) = state?;
                tokio::time::sleep(latency).await;
                if Some(served.fetch_add(1, Ordering::SeqCst)) == fail_page {
                    let busy = Error::new(ErrorKind::Transient, "503");
                    return Some((stream::iter(vec![Err(busy)]), None));
                }
                let mut page = Vec::new();
                while page.len() < PAGE {
                    let Some((entry, next)) = entry_at(&keys, &prefix, level, at) else {
                        return Some((stream::iter(page), None));
                    };
                    page.push(Ok(entry));
                    at = next;
                }
                Some((stream::iter(page), Some((at, open))))
            }
        })
        .flatten()
        .boxed()
    }
}

/// The index of the first key of `prefix` after `after`.
fn start(keys: &[String], prefix: &str, after: Option<&str>) -> usize {
    let after = after.unwrap_or("").max(prefix);
    keys.partition_point(|k| {
        k.as_str() < prefix || (k.as_str() <= after && !(after == prefix && k == prefix))
    })
}

/// The entry at `at` (rolled up to its sub-prefix when by `level`) and the index after it.
fn entry_at(keys: &[String], prefix: &str, level: bool, at: usize) -> Option<(Entry, usize)> {
    let key = keys.get(at).filter(|k| k.starts_with(prefix))?;
    match key[prefix.len()..].find('/').filter(|_| level) {
        Some(i) => {
            let sub = &key[..prefix.len() + i + 1];
            let next = at + keys[at..].partition_point(|k| k.starts_with(sub));
            Some((Entry::Prefix(sub.to_string()), next))
        }
        None => Some((Entry::Object(ObjectMeta::new(key.clone(), 1)), at + 1)),
    }
}

/// Counts a listing as open until it is dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: Arc<AtomicUsize>, most: Arc<AtomicUsize>) -> Self {
        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        Open(open)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Store for Listed {
    fn name(&self) -> &str {
        "listed"
    }
    fn limits(&self) -> Limits {
        Limits::S3
    }
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let objects = self.pages(prefix, after, false);
        objects.map_ok(|e| e.into_object().expect("flat")).boxed()
    }
    fn lists_by_level(&self) -> bool {
        self.by_level
    }
    fn lists_after_any_key(&self) -> bool {
        self.seeks
    }
    fn list_level<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
    ) -> BoxStream<'a, Result<Entry>> {
        self.pages(prefix, after, true)
    }
    async fn head(&self, _: &str) -> Result<Option<ObjectMeta>> {
        unreachable!("listings only")
    }
    async fn get(
        &self,
        _: &str,
        _: Option<std::ops::Range<u64>>,
        _: Option<&ObjectMeta>,
    ) -> Result<Fetched> {
        unreachable!("listings only")
    }
    async fn put(&self, _: &str, _: Payload, _: &PutOptions) -> Result<Written> {
        unreachable!("listings only")
    }
    async fn create_multipart(&self, _: &str, _: &PutOptions) -> Result<MultipartUpload> {
        unreachable!("listings only")
    }
    async fn put_part(
        &self,
        _: &MultipartUpload,
        _: PartSpec,
        _: Payload,
    ) -> Result<CompletedPart> {
        unreachable!("listings only")
    }
    async fn complete_multipart(
        &self,
        _: &MultipartUpload,
        _: &[CompletedPart],
        _: &PutOptions,
    ) -> Result<Written> {
        unreachable!("listings only")
    }
    async fn abort_multipart(&self, _: &MultipartUpload) -> Result<()> {
        unreachable!("listings only")
    }
    async fn delete(&self, _: &str) -> Result<()> {
        unreachable!("listings only")
    }
}
