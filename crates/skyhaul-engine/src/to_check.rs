//! What a transfer wrote, kept for the check at its end ([`crate::verify::verify_copied`]).
//!
//! A record is about half a KiB with its key and ETags: held in memory for a whole run, ten
//! million objects took some 5 GiB, where the memory budget promises a bound whatever the
//! count. So past [`IN_MEMORY`] records they go to temporary files, each run of them sorted
//! by key, and the check reads them back merged, in key order, as it walks the
//! destination's listing: memory holds one run and one record per file.

use crate::verify::Copied;
use skyhaul_store::{Error, ErrorKind, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};

/// Records kept in memory before they are written out, sorted, as one run.
const IN_MEMORY: usize = 100_000;

/// The records of what a transfer wrote, for the check after it.
#[derive(Default)]
pub(crate) struct ToCheck {
    memory: Vec<Copied>,
    /// Runs written out, each sorted by key; the files are deleted once closed.
    runs: Vec<File>,
    /// Set once a run could not be written (no space in the temporary directory): from
    /// then on the records stay in memory, as they did before there were runs.
    unwritable: bool,
}

impl ToCheck {
    pub(crate) fn push(&mut self, copied: Copied) {
        self.memory.push(copied);
        if self.memory.len() >= IN_MEMORY && !self.unwritable {
            if let Err(e) = self.write_run() {
                self.unwritable = true;
                tracing::warn!(
                    "cannot write the list of copied objects to a temporary file ({e}): it stays \
                     in memory; set TMPDIR to a directory with space"
                );
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.runs.is_empty()
    }

    fn write_run(&mut self) -> io::Result<()> {
        self.memory.sort_by(|a, b| a.dst_key.cmp(&b.dst_key));
        let mut out = BufWriter::new(tempfile::tempfile()?);
        for c in &self.memory {
            serde_json::to_writer(&mut out, c)?;
            out.write_all(b"\n")?;
        }
        let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.rewind()?;
        self.runs.push(file);
        self.memory.clear();
        Ok(())
    }

    /// Every record, in key order.
    pub(crate) fn into_sorted(mut self) -> Sorted {
        self.memory.sort_by(|a, b| a.dst_key.cmp(&b.dst_key));
        let mut sources: Vec<Source> = self
            .runs
            .into_iter()
            .map(|f| Source::Run(BufReader::new(f).lines()))
            .collect();
        sources.push(Source::Memory(self.memory.into_iter()));
        let mut sorted = Sorted {
            heads: vec![None; sources.len()],
            order: BinaryHeap::new(),
            sources,
            failed: None,
        };
        for i in 0..sorted.sources.len() {
            sorted.advance(i);
        }
        sorted
    }
}

enum Source {
    Run(io::Lines<BufReader<File>>),
    Memory(std::vec::IntoIter<Copied>),
}

impl Source {
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

    /// Runs written out and the records still in memory come back as one list in key
    /// order, every record once, whole.
    #[test]
    fn runs_and_memory_merge_in_key_order() {
        let mut to_check = ToCheck::default();
        let keys: Vec<String> = (0..2 * IN_MEMORY + 5)
            .map(|i| format!("k/{:08}", (i * 7_919) % (2 * IN_MEMORY + 5)))
            .collect();
        for k in &keys {
            to_check.push(copied(k));
        }
        assert_eq!(to_check.runs.len(), 2, "two runs written out");
        assert_eq!(to_check.memory.len(), 5);
        let back: Vec<Copied> = to_check.into_sorted().map(Result::unwrap).collect();
        let mut want = keys.clone();
        want.sort();
        let got: Vec<&str> = back.iter().map(|c| c.dst_key.as_str()).collect();
        assert_eq!(got, want);
        assert_eq!(back[0], copied(&want[0]));
    }

    #[test]
    fn nothing_pushed_is_empty() {
        let to_check = ToCheck::default();
        assert!(to_check.is_empty());
        assert_eq!(to_check.into_sorted().count(), 0);
    }
}
