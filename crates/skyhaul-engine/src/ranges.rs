//! Listings split into key ranges that are listed at once.
//!
//! A listing is a chain of round trips of up to 1,000 keys each: a flat prefix of ten million
//! keys is 10,000 of them in a row, over half an hour where each takes 200 ms, and splitting
//! at the first `/` does not help when there is none. Where a store starts a listing after
//! any key at the cost of one that starts at the beginning (S3's `start-after`, GCS's
//! `startOffset`), a range that has delivered a page keeps about one more page and hands
//! the keys past it to new listers, one per free slot of the listing, each taking about a
//! page more (see [`cuts`]), the last the rest: the guesses of where keys lie are often
//! wrong by a factor, as key shapes vary, but cheap when wrong (a range with no keys is one
//! request, and splits pause while such ranges are many), and a range that finds more than
//! a page splits again. Each range delivers into its own channel, which ends by handing
//! over the next range's, so the reader still gets one sequence in key order (sync's
//! merge-join depends on it) while the ranges ahead fill. A split's range frees its slot
//! once the reader is past it: what they hold ahead is bounded by slots × [`AHEAD`]
//! ([`Ahead`]).

use futures::{FutureExt, StreamExt, TryStreamExt};
use skyhaul_store::{Entry, Result, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Entries a range delivers before it may split: a page of S3 and GCS.
const PAGE: usize = 1000;
/// Ranges with almost nothing in them a listing may make before it has read any page.
const FREE_RANGES: usize = 16;
/// The most new ranges one split makes.
const SPLITS: usize = 16;
/// Entries a range may hold ahead of the reader: two pages, so that one of about a page
/// is complete before the reader gets to it.
const AHEAD: usize = 2 * PAGE;

/// How a range is listed.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Walk {
    /// One level ([`Store::list_level`]): objects and sub-prefixes.
    Level,
    /// Every object below the prefix ([`Store::list`]).
    Flat,
    /// By level while there are only objects, flat from the first sub-prefix on: a leaf
    /// "directory" listed by level reads one directory on file-backed servers, where a flat
    /// listing walks the whole bucket.
    LeafFirst,
}

enum Msg {
    Entry(Result<Entry>),
    /// The range is complete; the next one's entries, if any, come through `next`. The
    /// range's slot is free once the reader has read this far, which bounds what ranges
    /// listed ahead hold.
    Done {
        next: Option<mpsc::Receiver<Msg>>,
        _slot: Option<OwnedSemaphorePermit>,
    },
}

/// What one listing may list ahead of its reader, shared by its sub-prefixes' listings and
/// their ranges: slots (each a listing or range not yet read, bounding the memory they
/// hold) and the requests spent on ranges that held almost nothing.
#[derive(Clone)]
pub(crate) struct Ahead {
    slots: Arc<Semaphore>,
    spent: Arc<Spent>,
}

impl Ahead {
    pub(crate) fn new(slots: usize) -> Self {
        Ahead {
            slots: Arc::new(Semaphore::new(slots)),
            spent: Arc::default(),
        }
    }

    /// A slot, if one is free.
    pub(crate) fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// The reader's end of a listing: the entries of every range in turn, in key order. An
/// error other than an [`unlisted`](skyhaul_store::Error::unlisted) entry ends it.
pub(crate) struct Ranges {
    rx: mpsc::Receiver<Msg>,
}

impl Ranges {
    /// Lists `prefix` after `after`, split while `ahead` has slots (where the store allows
    /// it); the first range holds `permit`, if any, until the reader is past it.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        prefix: String,
        walk: Walk,
        after: Option<String>,
        ahead: Ahead,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(AHEAD);
        let first = Lister {
            store,
            prefix,
            walk,
            ahead,
            guessed: false,
            after,
            end: None,
            then: None,
            tx,
        };
        tokio::spawn(first.run(permit));
        Ranges { rx }
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            match self.rx.recv().await? {
                Msg::Entry(entry) => return Some(entry),
                Msg::Done { next, .. } => self.rx = next?,
            }
        }
    }
}

/// Full pages read, and ranges that ended with almost nothing, over one listing. A range
/// with no keys in it costs a request for nothing, so splits pause while such ranges
/// outnumber half the pages read (and [`FREE_RANGES`]): where the key shapes fool
/// [`cuts`], about one and a half times the requests of one listing at most.
#[derive(Default)]
struct Spent {
    pages: AtomicUsize,
    wasted: AtomicUsize,
}

impl Spent {
    fn may_split(&self) -> bool {
        let (pages, wasted) = (
            self.pages.load(Ordering::SeqCst),
            self.wasted.load(Ordering::SeqCst),
        );
        wasted <= pages / 2 + FREE_RANGES
    }
}

/// One range: the keys after `after` up to and including `end`.
struct Lister {
    store: Arc<dyn Store>,
    prefix: String,
    walk: Walk,
    ahead: Ahead,
    /// Made by a split, whose guess a range with nothing in it was (a small listing is
    /// no waste).
    guessed: bool,
    /// The last key delivered, or the one the range starts after.
    after: Option<String>,
    /// `None`: the rest of the listing.
    end: Option<String>,
    /// The next range's entries, handed to the reader once this range is complete.
    then: Option<mpsc::Receiver<Msg>>,
    tx: mpsc::Sender<Msg>,
}

impl Lister {
    async fn run(mut self, slot: Option<OwnedSemaphorePermit>) {
        let mut delivered = 0;
        let (store, prefix) = (self.store.clone(), self.prefix.clone());
        let splits = store.lists_after_any_key();
        // A start below a deeper sub-prefix (a listing gone flat, started again after its
        // last key): listed by level, S3 names that sub-prefix again, but s3s-fs and GCS
        // leave it out, and the rest of it would be lost.
        let below = |a: &str| a.get(prefix.len()..).is_some_and(|rest| rest.contains('/'));
        if self.walk == Walk::LeafFirst && self.after.as_deref().is_some_and(below) {
            self.walk = Walk::Flat;
        }
        loop {
            let start = self.after.clone();
            let mut entries = match self.walk {
                Walk::Flat => store
                    .list(&prefix, start.as_deref())
                    .map_ok(Entry::Object)
                    .boxed(),
                Walk::Level | Walk::LeafFirst => store.list_level(&prefix, start.as_deref()),
            }
            .peekable();
            let mut page = Page::default();
            let mut to_flat = false;
            while let Some(item) = entries.next().await {
                let entry = match item {
                    Ok(entry) => entry,
                    Err(e) => {
                        // The next range would follow a gap: the reader starts again instead.
                        let ends = e.unlisted.is_none();
                        if self.tx.send(Msg::Entry(Err(e))).await.is_err() || ends {
                            return;
                        }
                        continue;
                    }
                };
                let key = entry.key();
                if self.end.as_deref().is_some_and(|end| key > end) {
                    break;
                }
                // Before the check below: the sub-prefix named again because it holds the
                // start (a restart, or a cut inside it) still has keys after it.
                if self.walk == Walk::LeafFirst && matches!(entry, Entry::Prefix(_)) {
                    to_flat = true;
                    break;
                }
                // A level listing names again the sub-prefix that holds its start, which an
                // earlier range or run listed whole.
                if self.after.as_deref().is_some_and(|a| key <= a) {
                    continue;
                }
                page.add(key, prefix.len());
                delivered += 1;
                self.after = Some(key.to_string());
                if self.tx.send(Msg::Entry(Ok(entry))).await.is_err() {
                    return;
                }
                // Split only if the listing goes on: a store answers the end of its last page at
                // once, and fetches another when there is one (most prefixes fit a page).
                if splits && page.entries == PAGE {
                    let next = std::pin::Pin::new(&mut entries).peek().now_or_never();
                    if next.is_none_or(|next| next.is_some()) {
                        self.split(&std::mem::take(&mut page));
                    }
                }
            }
            if !to_flat {
                break;
            }
            self.walk = Walk::Flat;
        }
        if self.guessed && delivered < PAGE / 10 {
            self.ahead.spent.wasted.fetch_add(1, Ordering::SeqCst);
        }
        // A split's range keeps its slot until the reader is past it: nothing else bounds
        // how many finished ranges wait. A listing's own first range frees it now, as its
        // owner bounds how many listings wait (sub-prefixes a few dozen ahead at most).
        let slot = slot.filter(|_| self.guessed);
        let next = self.then.take();
        let _ = self.tx.send(Msg::Done { next, _slot: slot }).await;
    }

    /// Hands the keys past about a page from here to new listers, one per free slot.
    fn split(&mut self, page: &Page) {
        self.ahead.spent.pages.fetch_add(1, Ordering::SeqCst);
        if !self.ahead.spent.may_split() {
            return;
        }
        let last = self.after.as_deref().expect("delivered");
        let mut cuts = cuts(page, last, self.prefix.len(), self.end.as_deref());
        let permits: Vec<_> = std::iter::from_fn(|| self.ahead.slot())
            .take(cuts.len())
            .collect();
        cuts.truncate(permits.len());
        // From the last new range back: each takes this range's end and successor.
        for (at, permit) in cuts.into_iter().zip(permits).rev() {
            let (tx, rx) = mpsc::channel(AHEAD);
            let rest = Lister {
                store: self.store.clone(),
                prefix: self.prefix.clone(),
                walk: self.walk,
                ahead: self.ahead.clone(),
                guessed: true,
                after: Some(at.clone()),
                end: self.end.replace(at),
                then: self.then.replace(rx),
                tx,
            };
            tokio::spawn(rest.run(Some(permit)));
        }
    }
}

/// What a range has read since it last split.
#[derive(Default)]
struct Page {
    first: Option<String>,
    /// The printable ASCII bytes seen in its keys past the listing's prefix.
    seen: u128,
    entries: usize,
}

impl Page {
    fn add(&mut self, key: &str, prefix: usize) {
        self.first.get_or_insert_with(|| key.to_string());
        for &b in key.as_bytes().get(prefix..).unwrap_or_default() {
            // Not control characters: no cut carries one to the store.
            if b.is_ascii_graphic() || b == b' ' {
                self.seen |= 1 << b;
            }
        }
        self.entries += 1;
    }
}

/// The longest key S3, GCS and Azure take, in bytes.
const MAX_KEY: usize = 1024;

/// Digits below the first that differs between a page's first and last keys.
const PRECISION: usize = 4;

/// Where a range that has read `page`, up to `last`, should be cut: one, two, three… pages
/// on at that page's density, in increasing order, all past `last` and before `end`. Keys
/// are read as numbers whose digits are the characters the page's keys use (decimal
/// numbers in a page of `shard-000123.tar` are 10 of its 18), from past the listing's
/// `prefix` bytes, so that past `…0999` comes `…1000` and past the last sample of a class
/// come the next classes. Wherever keys are spread unevenly a guess falls short or goes
/// far, which costs a request for a range with no keys, or splits of a range with many.
/// Empty when the page's keys differ only where the digits cannot tell.
fn cuts(page: &Page, last: &str, prefix: usize, end: Option<&str>) -> Vec<String> {
    let alphabet: Vec<u8> = (0..128u8).filter(|&b| page.seen & (1 << b) != 0).collect();
    let Some(first) = page.first.as_deref().filter(|_| alphabet.len() > 1) else {
        return Vec::new();
    };
    let radix = alphabet.len() as u128;
    let width = (1..)
        .take_while(|&n| radix.checked_pow(n).is_some_and(|r| r < 1 << 120))
        .last()
        .unwrap_or(1) as usize;
    let differ = shared(first, last);
    // The digits start past any character of the shared part they cannot be.
    let readable = last[..differ]
        .rfind(|c: char| !(c.is_ascii_graphic() || c == ' '))
        .map_or(prefix, |i| {
            i + last[i..].chars().next().map_or(1, char::len_utf8)
        });
    let from = (prefix.max(readable)
        ..=differ
            .saturating_sub(width - PRECISION)
            .max(prefix.max(readable)))
        .rev()
        .find(|&i| last.is_char_boundary(i))
        .unwrap_or(prefix);
    let number = |key: &str| {
        (0..width).fold(0u128, |n, i| {
            let rank = key.as_bytes().get(from + i).map_or(0, |&b| {
                alphabet.partition_point(|&a| a <= b).saturating_sub(1)
            });
            n * radix + rank as u128
        })
    };
    let (f, l) = (number(first), number(last));
    let step = l.saturating_sub(f);
    if step == 0 {
        return Vec::new();
    }
    let room = radix.pow(width as u32);
    let mut cuts: Vec<String> = (0..SPLITS as u32)
        .map_while(|i| {
            l.checked_add(step.checked_mul(u128::from(i) + 1)?)
                .filter(|&n| n < room)
        })
        .map(|mut n| {
            let mut digits = vec![0u8; width];
            for d in digits.iter_mut().rev() {
                *d = alphabet[(n % radix) as usize];
                n /= radix;
            }
            let mut key = last[..from].to_string();
            key.extend(digits.iter().map(|&b| char::from(b)));
            key
        })
        // Keys are at most 1,024 bytes: a longer start would be refused.
        .filter(|cut| cut.len() <= MAX_KEY)
        .filter(|cut| last < cut.as_str() && end.is_none_or(|end| cut.as_str() < end))
        .collect();
    cuts.dedup();
    cuts
}

/// The length of the prefix `a` and `b` share, at a character boundary.
fn shared(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    (0..=n).rev().find(|&i| a.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listed::Listed;
    use std::sync::atomic::Ordering;

    /// Numbered keys, as training data sets name their shards.
    fn numbered(n: usize) -> String {
        format!("train/shard-{n:07}.tar")
    }

    /// The first key of `n` numbered keys past `cut`.
    fn past(cut: &str, n: std::ops::Range<usize>) -> usize {
        n.clone()
            .find(|&n| numbered(n).as_str() > cut)
            .unwrap_or(n.end)
    }

    /// A page of `keys` read under the prefix `train/`.
    fn read(keys: impl IntoIterator<Item = String>) -> Page {
        let mut page = Page::default();
        keys.into_iter().for_each(|k| page.add(&k, "train/".len()));
        page
    }

    #[test]
    fn cuts_step_about_a_page_at_a_time() {
        let cuts = cuts(&read((0..1000).map(numbered)), &numbered(999), 6, None);
        assert_eq!(cuts.len(), SPLITS, "{cuts:?}");
        assert!(cuts.windows(2).all(|w| w[0] < w[1]), "{cuts:?}");
        // Decimal digits are 10 of the 18 characters the page uses, so steps fall short
        // or long of a page (1111, 2000, 2221, 3000…), half a page on average.
        let last = past(&cuts[SPLITS - 1], 999..10_000_000) - 999;
        assert!(
            (SPLITS * 250..=SPLITS * 2000).contains(&last),
            "{last}: {cuts:?}"
        );
    }

    #[test]
    fn cuts_stay_inside_the_range() {
        let end = numbered(5_000);
        let cuts = cuts(
            &read((0..1000).map(numbered)),
            &numbered(999),
            6,
            Some(&end),
        );
        assert!(!cuts.is_empty() && cuts.len() < SPLITS, "{cuts:?}");
        assert!(
            cuts.iter().all(|c| numbered(999) < *c && *c < end),
            "{cuts:?}"
        );
    }

    #[test]
    fn cuts_carry_into_the_shared_part() {
        // A page within one class of an ImageNet-like set: cuts go on into the class number
        // (the classes are far apart, so these ranges hold nothing: waste that splits stop
        // for).
        let class = |c: usize, n: usize| format!("train/n{:08}_{n}.JPEG", 1_440_764 + c * 7_919);
        let page = read((0..1000).map(|n| class(0, n)));
        let cuts = cuts(&page, &class(0, 999), 6, None);
        assert!(
            cuts.iter().any(|c| c.starts_with("train/n01440765")),
            "{cuts:?}"
        );
    }

    #[test]
    fn no_cut_where_no_key_between_can_be_told() {
        // Next door: nothing fits between the last key and the end.
        let page = read(["train/a".to_string(), "train/b".to_string()]);
        assert_eq!(
            cuts(&page, "train/b", 6, Some("train/b ")),
            Vec::<String>::new()
        );
        // One character used: no digits to count in.
        let page = read(["train/a".to_string(), "train/aa".to_string()]);
        assert_eq!(cuts(&page, "train/aa", 6, None), Vec::<String>::new());
    }

    #[test]
    fn cuts_keep_multibyte_characters_whole() {
        let keys = (0..1000).map(|n| format!("train/données/é-{n:04}"));
        let cuts = cuts(&read(keys), "train/données/é-0999", 6, None);
        assert!(!cuts.is_empty());
        for cut in &cuts {
            assert!(
                cut.starts_with("train/données/é-") && cut.as_str() > "train/données/é-0999",
                "{cut}"
            );
        }
        // A shared part ending inside a character is cut before it.
        assert_eq!(shared("aé", "aè"), 1);
    }

    /// Keys of every shape a bucket holds: numbered shards, hashes, a few under
    /// sub-prefixes, non-ASCII and odd characters.
    fn bucket() -> Vec<String> {
        let mut keys: Vec<String> = (0..12_000).map(numbered).collect();
        keys.extend((0u64..6_000).map(|n| {
            let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            format!("train/{h:016x}")
        }));
        keys.extend((0..3_000).map(|n| format!("train/sub{}/{n}", n % 7)));
        keys.extend((0..500).map(|n| format!("train/é{n}+% ü/{n}")));
        keys.extend(["train/~", "train/\u{1F600}"].map(String::from));
        keys
    }

    async fn listed(store: &Arc<Listed>, walk: Walk, after: Option<&str>) -> Vec<Entry> {
        let after = after.map(String::from);
        let ahead = Ahead::new(16);
        let mut ranges = Ranges::start(store.clone(), "train/".into(), walk, after, ahead, None);
        let mut out = Vec::new();
        while let Some(entry) = ranges.next().await {
            out.push(entry.unwrap());
        }
        out
    }

    /// However a listing is split, the reader gets exactly what one listing gives, in order,
    /// and the split listings did run at once.
    #[tokio::test]
    async fn split_ranges_deliver_what_one_listing_does() {
        for walk in [Walk::Flat, Walk::Level, Walk::LeafFirst] {
            for after in [None, Some("train/shard-0000999.tar"), Some("train/sub3/")] {
                let store = Arc::new(Listed {
                    by_level: true,
                    seeks: true,
                    ..Listed::new(bucket())
                });
                let got = listed(&store, walk, after).await;
                // Leaf first: by level up to the first sub-prefix, flat from there on.
                let want = store.expected("train/", after, walk == Walk::Level);
                // Not the sub-prefix that holds the start: it was listed before.
                let want: Vec<&str> = want
                    .iter()
                    .map(Entry::key)
                    .filter(|k| after.is_none_or(|a| *k > a))
                    .collect();
                let got: Vec<&str> = got.iter().map(Entry::key).collect();
                assert_eq!(got.len(), want.len(), "{after:?}");
                if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                    panic!("{after:?}: at {i}, {} for {}", got[i], want[i]);
                }
                let (lists, most) = (
                    store.lists.load(Ordering::SeqCst),
                    store.most_open.load(Ordering::SeqCst),
                );
                if want.len() > 3 * PAGE {
                    assert!(
                        lists > 4 && most > 2,
                        "{after:?}: {lists} listings, {most} at once"
                    );
                }
            }
        }
    }

    /// A store that would read every key before the start of each range is listed once.
    #[tokio::test]
    async fn listings_that_cannot_seek_are_not_split() {
        let store = Arc::new(Listed::new(bucket()));
        let got = listed(&store, Walk::Flat, None).await;
        assert_eq!(got.len(), bucket().len());
        assert_eq!(store.lists.load(Ordering::SeqCst), 1);
    }

    /// How much faster split listings are where each page takes 50 ms (S3's list latency
    /// is of that order), for four shapes of 200,000 keys; prints a table. A measurement,
    /// not a test: `cargo test -p skyhaul-engine --lib listing_speed -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn listing_speed() {
        let n = 200_000u64;
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        type Shape = (&'static str, Box<dyn Fn(u64) -> String>);
        let shapes: [Shape; 4] = [
            (
                "numbered shards",
                Box::new(|i| format!("train/shard-{i:07}.tar")),
            ),
            (
                "hex hashes",
                Box::new(move |i| format!("train/{:016x}", hash(i))),
            ),
            (
                "UUID-like",
                Box::new(move |i| {
                    let h = hash(i);
                    format!(
                        "train/{:08x}-{:04x}-4{:03x}",
                        h >> 32,
                        (h >> 16) & 0xffff,
                        h & 0xfff
                    )
                }),
            ),
            (
                "classes without '/'",
                Box::new(|i| {
                    format!(
                        "train/n{:08}_{}.JPEG",
                        1_440_764 + (i / 1300) * 7_919,
                        i % 1300 * 13
                    )
                }),
            ),
        ];
        println!("| keys | one listing | split | faster | requests |");
        println!("|---|---|---|---|---|");
        for (name, key) in shapes {
            let mut times = Vec::new();
            let mut requests = 0;
            for seeks in [false, true] {
                let store = Arc::new(Listed {
                    seeks,
                    latency: std::time::Duration::from_millis(50),
                    ..Listed::new((0..n).map(&key))
                });
                let started = std::time::Instant::now();
                assert_eq!(listed(&store, Walk::Flat, None).await.len() as u64, n);
                times.push(started.elapsed().as_secs_f64());
                requests = store.lists.load(Ordering::SeqCst);
            }
            println!(
                "| {name} | {:.1} s | {:.1} s | {:.1}x | {requests} listings for {} pages |",
                times[0],
                times[1],
                times[0] / times[1],
                n / PAGE as u64
            );
        }
    }
}
