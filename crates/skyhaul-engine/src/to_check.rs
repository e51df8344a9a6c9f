//! What a transfer wrote, kept for the check at its end ([`crate::verify::verify_copied`]).
//!
//! A record is about half a KiB with its key and ETags: held in memory for a whole run, ten
//! million objects took some 5 GiB, where the memory budget promises a bound whatever the
//! count. So past [`RUN_LEN`] records they go to temporary files, each run of them sorted
//! by key, and the check reads them back merged, in key order, as it walks the
//! destination's listing: memory holds one run and one record per file. Runs are merged as
//! they pile up ([`FAN_IN`] of a size into one of the next), so the files open stay few
//! (about 30 for 50 million objects), and the records go through the disk a few times
//! (once per size: three times for 50 million).
//!
//! The files are written and merged by the task that filled a run, outside the lock the
//! others push under, and off the async runtime's threads where it can ([`off_runtime`]).

use crate::verify::Copied;
use skyhaul_store::{Error, ErrorKind, Result};
use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::sync::Mutex;

/// Records kept in memory before they are written out, sorted, as one run.
const RUN_LEN: usize = 100_000;
/// Runs of one size merged into one of the next size.
const FAN_IN: usize = 16;

/// The records of what a transfer wrote, for the check after it.
pub(crate) struct ToCheck {
    memory: Vec<Copied>,
    /// Runs written out, each sorted by key; the files are deleted once closed.
    runs: Vec<Run>,
    /// Set once a run could not be written or merged (no space in the temporary
    /// directory): from then on the records stay in memory, as before there were runs.
    unwritable: bool,
    run_len: usize,
    fan_in: usize,
}

/// A sorted run in a temporary file, and how many merges made it (0: written from memory).
pub(crate) struct Run {
    file: File,
    level: u32,
}

/// Work a push leaves for its caller to do outside the lock ([`keep`]): a run's worth of
/// records to write, or runs of one size to merge.
pub(crate) enum Work {
    Write(Vec<Copied>),
    Merge(Vec<Run>),
}

/// A run written or merged, or the work back with why it could not be done.
type Done = std::result::Result<Run, (io::Error, Work)>;

/// Keeps `copied` in `to_check`, writing and merging runs outside the lock as they fill,
/// so that other objects' records go on meanwhile.
pub(crate) fn keep(to_check: &Mutex<ToCheck>, copied: Copied) {
    let mut work = to_check.lock().expect("lock").push(copied);
    while let Some(w) = work {
        let done = off_runtime(|| w.run());
        work = to_check.lock().expect("lock").add(done);
    }
}

impl Default for ToCheck {
    fn default() -> Self {
        ToCheck::with_sizes(RUN_LEN, FAN_IN)
    }
}

impl ToCheck {
    fn with_sizes(run_len: usize, fan_in: usize) -> ToCheck {
        ToCheck {
            memory: Vec::new(),
            runs: Vec::new(),
            unwritable: false,
            run_len,
            fan_in,
        }
    }

    /// Keeps `copied`; once a run's worth is in memory, hands it back to be written.
    fn push(&mut self, copied: Copied) -> Option<Work> {
        self.memory.push(copied);
        let full = self.memory.len() >= self.run_len && !self.unwritable;
        full.then(|| Work::Write(std::mem::take(&mut self.memory)))
    }

    /// A run written or merged, or the work back when it could not be done; then the runs
    /// to merge, when a size has [`FAN_IN`] of them.
    fn add(&mut self, done: Done) -> Option<Work> {
        match done {
            Ok(run) => self.runs.push(run),
            Err((e, back)) => {
                self.give_up(&e);
                match back {
                    Work::Write(records) => self.memory.extend(records),
                    Work::Merge(runs) => self.runs.extend(runs),
                }
            }
        }
        self.take_merge()
    }

    fn take_merge(&mut self) -> Option<Work> {
        if self.unwritable {
            return None;
        }
        let level = self.runs.iter().map(|r| r.level).min()?;
        let of_level = self.runs.iter().filter(|r| r.level == level).count();
        if of_level < self.fan_in {
            return None;
        }
        let (merge, keep) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|r| r.level == level);
        self.runs = keep;
        Some(Work::Merge(merge))
    }

    fn give_up(&mut self, e: &io::Error) {
        if !self.unwritable {
            tracing::warn!(
                "cannot write the list of copied objects to a temporary file ({e}): it stays \
                 in memory; set TMPDIR to a directory with space"
            );
        }
        self.unwritable = true;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.runs.is_empty()
    }

    /// Every record, in key order.
    pub(crate) fn into_sorted(mut self) -> Sorted {
        self.memory.sort_by(|a, b| a.dst_key.cmp(&b.dst_key));
        let mut sources: Vec<Source> = self.runs.into_iter().map(Source::run).collect();
        sources.push(Source::Memory(self.memory.into_iter()));
        Sorted::of(sources)
    }
}

impl Work {
    fn run(self) -> Done {
        match self {
            Work::Write(records) => write_sorted(records),
            Work::Merge(runs) => merge(runs),
        }
    }
}

/// `records` as a sorted run in a new temporary file; themselves back on failure.
fn write_sorted(mut records: Vec<Copied>) -> Done {
    records.sort_by(|a, b| a.dst_key.cmp(&b.dst_key));
    let written = write_run(records.iter().map(Ok), 0);
    written.map_err(|e| (e, Work::Write(records)))
}

/// One run of the next size from `runs`; themselves back on failure.
fn merge(runs: Vec<Run>) -> Done {
    let level = runs.iter().map(|r| r.level).max().unwrap_or(0) + 1;
    let mut files = Vec::with_capacity(runs.len());
    for run in &runs {
        match run.file.try_clone() {
            Ok(file) => files.push(file),
            Err(e) => return Err((e, Work::Merge(runs))),
        }
    }
    let sources = files
        .into_iter()
        .map(|file| Source::run(Run { file, level }))
        .collect();
    let merged = Sorted::of(sources).map(|r| r.map_err(io::Error::other));
    write_run(merged, level).map_err(|e| {
        // The clones shared the originals' offsets: back to the start for a retry.
        for run in &runs {
            let mut file = &run.file;
            let _ = file.rewind();
        }
        (e, Work::Merge(runs))
    })
}

/// Writes `records` (in key order) to a new temporary file, rewound for reading.
fn write_run<C: Borrow<Copied>>(
    records: impl Iterator<Item = io::Result<C>>,
    level: u32,
) -> io::Result<Run> {
    let mut out = BufWriter::new(tempfile::tempfile()?);
    for c in records {
        serde_json::to_writer(&mut out, c?.borrow())?;
        out.write_all(b"\n")?;
    }
    finish(out, level)
}

fn finish(out: BufWriter<File>, level: u32) -> io::Result<Run> {
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.rewind()?;
    Ok(Run { file, level })
}

/// Runs `f`, which blocks on files, without holding up the async runtime's other tasks
/// where the runtime has threads to spare.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

enum Source {
    Run(io::Lines<BufReader<File>>),
    Memory(std::vec::IntoIter<Copied>),
}

impl Source {
    fn run(run: Run) -> Source {
        Source::Run(BufReader::new(run.file).lines())
    }

    fn next(&mut self) -> Option<Result<Copied>> {
        let unreadable = |e: String| {
            Error::new(
                ErrorKind::Other,
                format!("cannot read back the list of copied objects for the check: {e}"),
            )
        };
        match self {
            Source::Memory(records) => records.next().map(Ok),
            Source::Run(lines) => lines.next().map(|line| {
                let line = line.map_err(|e| unreadable(e.to_string()))?;
                serde_json::from_str(&line).map_err(|e| unreadable(e.to_string()))
            }),
        }
    }
}

/// The records of [`ToCheck`] in key order: a merge of its runs.
pub(crate) struct Sorted {
    sources: Vec<Source>,
    /// Each source's next record.
    heads: Vec<Option<Copied>>,
    /// The sources with a next record, by its key.
    order: BinaryHeap<Reverse<(String, usize)>>,
    failed: Option<Error>,
}

impl Sorted {
    fn of(sources: Vec<Source>) -> Sorted {
        let mut sorted = Sorted {
            heads: (0..sources.len()).map(|_| None).collect(),
            order: BinaryHeap::new(),
            sources,
            failed: None,
        };
        for i in 0..sorted.sources.len() {
            sorted.advance(i);
        }
        sorted
    }

    fn advance(&mut self, i: usize) {
        match self.sources[i].next() {
            Some(Ok(c)) => {
                self.order.push(Reverse((c.dst_key.clone(), i)));
                self.heads[i] = Some(c);
            }
            Some(Err(e)) => {
                self.failed.get_or_insert(e);
            }
            None => {}
        }
    }
}

impl Iterator for Sorted {
    type Item = Result<Copied>;

    fn next(&mut self) -> Option<Result<Copied>> {
        if let Some(e) = self.failed.take() {
            // One failure ends the list: what follows could be out of order.
            self.order.clear();
            return Some(Err(e));
        }
        let Reverse((_, i)) = self.order.pop()?;
        let next = self.heads[i].take();
        self.advance(i);
        next.map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(key: &str) -> Copied {
        Copied {
            dst_key: key.to_string(),
            size: key.len() as u64,
            crc64: Some(7),
            etag: Some("e".into()),
            written_etag: None,
            server_side: false,
            earlier: false,
        }
    }

    /// Keeps every one of `keys`, as `Ctx::to_check` does.
    fn keep_all(to_check: &Mutex<ToCheck>, keys: &[String]) {
        for k in keys {
            keep(to_check, copied(k));
        }
    }

    /// Runs written out, merged, and the records still in memory come back as one list in
    /// key order, every record once, whole; the runs stay few.
    #[test]
    fn runs_and_memory_merge_in_key_order() {
        let n = 10 * 4 * 4 + 3;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("k/{:08}", (i * 7_919) % n))
            .collect();
        let to_check = Mutex::new(ToCheck::with_sizes(10, 4));
        keep_all(&to_check, &keys);
        let to_check = to_check.into_inner().unwrap();
        // 16 runs of 10 became 4 of 40, then one of 160; 3 records are in memory.
        let levels: Vec<u32> = to_check.runs.iter().map(|r| r.level).collect();
        assert_eq!(levels, [2]);
        assert_eq!(to_check.memory.len(), 3);
        let back: Vec<Copied> = to_check.into_sorted().map(Result::unwrap).collect();
        let mut want = keys.clone();
        want.sort();
        let got: Vec<&str> = back.iter().map(|c| c.dst_key.as_str()).collect();
        assert_eq!(got, want);
        assert_eq!(back[0], copied(&want[0]));
    }

    /// A run that cannot be written leaves its records in memory: none is lost.
    #[test]
    fn a_run_that_cannot_be_written_stays_in_memory() {
        let mut to_check = ToCheck::with_sizes(3, 4);
        let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        for k in &keys[..3] {
            if let Some(work) = to_check.push(copied(k)) {
                let failed = Err((io::Error::other("disk full"), work));
                assert!(to_check.add(failed).is_none());
            }
        }
        let to_check = Mutex::new(to_check);
        keep_all(&to_check, &keys[3..]);
        let to_check = to_check.into_inner().unwrap();
        assert!(to_check.runs.is_empty(), "no run written after a failure");
        let back: Vec<String> = to_check.into_sorted().map(|c| c.unwrap().dst_key).collect();
        assert_eq!(back, keys);
    }

    #[test]
    fn nothing_pushed_is_empty() {
        let to_check = ToCheck::default();
        assert!(to_check.is_empty());
        assert_eq!(to_check.into_sorted().count(), 0);
    }
}
