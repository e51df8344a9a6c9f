//! Messages (a request or a response: JSON plus a body) cut into frames, and put back
//! together from frames that arrived over several connections, in any order, possibly more
//! than once (a re-sent chunk).

use crate::codec::Compression;
use crate::wire::{Header, Kind, Plain};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Largest message body accepted: S3's largest part or single put.
pub const MAX_MESSAGE: u64 = 5 << 30;

/// A whole request or response.
#[derive(Debug)]
pub struct Message {
    pub session: u64,
    pub stream: u64,
    /// Which connection brought the meta frame: where a response goes back.
    pub meta_conn: u64,
    pub meta: Bytes,
    pub body: Bytes,
}

#[derive(Default)]
struct Partial {
    meta: Option<(Vec<u8>, u64)>,
    body_len: Option<u64>,
    body: Vec<u8>,
    got: u64,
    /// The byte ranges received so far, by their start: each ends before the next begins.
    ranges: BTreeMap<u64, u64>,
    meta_conn: u64,
    started: Option<Instant>,
}

impl Partial {
    /// Records the chunk `start..end` as received: `false` for one received before (a
    /// re-sent chunk), an error for one that overlaps another. A sender cuts its message
    /// at fixed offsets, so overlapping chunks are no sender's: counted as received, they
    /// would complete a message with bytes that never came.
    fn received(&mut self, start: u64, end: u64) -> Result<bool, String> {
        if self.ranges.get(&start) == Some(&end) {
            return Ok(false);
        }
        let before = self.ranges.range(..=start).next_back();
        let after = self.ranges.range(start..).next();
        let overlaps =
            before.is_some_and(|(_, &e)| e > start) || after.is_some_and(|(&s, _)| s < end);
        if overlaps {
            return Err(format!("chunk {start}..{end} overlaps one received before"));
        }
        self.ranges.insert(start, end);
        Ok(true)
    }
}

/// Messages in progress, keyed by session and stream.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<(u64, u64), Partial>,
}

impl Assembler {
    /// Adds one authenticated, checked chunk that came over connection `conn`; returns the
    /// message once every byte of it is in.
    pub fn add(
        &mut self,
        h: &Header,
        chunk: Vec<u8>,
        conn: u64,
    ) -> Result<Option<Message>, String> {
        let end = h.offset.checked_add(chunk.len() as u64);
        if h.total > MAX_MESSAGE || (!h.kind.is_meta() && end.is_none_or(|end| end > h.total)) {
            return Err(format!(
                "chunk at {} of {} bytes overruns its message of {} bytes",
                h.offset,
                chunk.len(),
                h.total
            ));
        }
        let p = self.partial.entry((h.session, h.stream)).or_default();
        p.started.get_or_insert_with(Instant::now);
        if h.kind.is_meta() {
            p.meta_conn = conn;
            p.meta = Some((chunk, h.total));
        } else {
            if *p.body_len.get_or_insert(h.total) != h.total {
                return Err(format!("message {} changed its length", h.stream));
            }
            let (start, end) = (h.offset, end.expect("checked above"));
            if p.received(start, end)? {
                if p.body.is_empty() {
                    p.body = vec![0u8; h.total as usize];
                }
                p.body[start as usize..end as usize].copy_from_slice(&chunk);
                p.got += chunk.len() as u64;
            }
        }
        let complete = match &p.meta {
            Some((_, body_len)) => p.got == *body_len && p.body_len.is_none_or(|b| b == *body_len),
            None => false,
        };
        if !complete {
            return Ok(None);
        }
        let p = self
            .partial
            .remove(&(h.session, h.stream))
            .expect("present");
        let (meta, _) = p.meta.expect("complete");
        Ok(Some(Message {
            session: h.session,
            stream: h.stream,
            meta_conn: p.meta_conn,
            meta: meta.into(),
            body: p.body.into(),
        }))
    }

    /// Drops messages whose rest never came (their sender gave up and sent them again under
    /// a new stream), so a dead connection does not leak their memory.
    pub fn expire(&mut self, older_than: Duration) {
        self.partial
            .retain(|_, p| p.started.is_none_or(|t| t.elapsed() < older_than));
    }
}

/// Cuts a message into frames: the meta frame (the JSON) first, then the body in chunks of
/// `chunk` bytes, each checksummed and compressed on its own as the iterator reaches it, so
/// the first frames can be on their way while the rest are compressed. CPU-bound: run it
/// off the async threads for large bodies.
pub fn encode<'a>(
    meta_kind: Kind,
    session: u64,
    stream: u64,
    meta: &'a [u8],
    body: &'a [u8],
    compression: Compression,
    chunk: usize,
) -> impl Iterator<Item = Plain> + 'a {
    let data_kind = match meta_kind {
        Kind::RequestMeta => Kind::RequestData,
        _ => Kind::ResponseData,
    };
    let total = body.len() as u64;
    let chunk = chunk.max(1);
    let meta = std::iter::once_with(move || {
        Plain::new(meta_kind, session, stream, 0, total, meta, compression)
    });
    let data = body.chunks(chunk).enumerate().map(move |(i, piece)| {
        let offset = (i * chunk) as u64;
        Plain::new(
            data_kind,
            session,
            stream,
            offset,
            total,
            piece,
            compression,
        )
    });
    meta.chain(data)
}

/// Whether a frame of this kind belongs to a request (what a gateway accepts).
pub fn is_request(kind: Kind) -> bool {
    matches!(kind, Kind::RequestMeta | Kind::RequestData)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kind: Kind, offset: u64, total: u64) -> Header {
        Header {
            kind,
            flags: 0,
            session: 1,
            stream: 2,
            offset,
            total,
            plain_len: 0,
            wire_len: 0,
            plain_crc: 0,
            seq: 0,
        }
    }

    #[test]
    fn any_order_with_duplicates() {
        let mut a = Assembler::default();
        assert!(a
            .add(&h(Kind::RequestData, 3, 6), b"def".to_vec(), 1)
            .unwrap()
            .is_none());
        assert!(a
            .add(&h(Kind::RequestData, 3, 6), b"def".to_vec(), 2)
            .unwrap()
            .is_none());
        assert!(a
            .add(&h(Kind::RequestMeta, 0, 6), b"{}".to_vec(), 3)
            .unwrap()
            .is_none());
        let m = a
            .add(&h(Kind::RequestData, 0, 6), b"abc".to_vec(), 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            (&m.body[..], &m.meta[..], m.meta_conn),
            (&b"abcdef"[..], &b"{}"[..], 3)
        );
        // A message without a body is complete with its meta frame.
        assert!(a
            .add(&h(Kind::RequestMeta, 0, 0), b"{}".to_vec(), 1)
            .unwrap()
            .is_some());
    }

    #[test]
    fn encode_then_assemble() {
        let body: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_be_bytes()).collect();
        let frames = encode(
            Kind::ResponseMeta,
            1,
            2,
            b"{\"a\":1}",
            &body,
            Compression::Lz4,
            3000,
        )
        .collect::<Vec<_>>();
        assert_eq!(frames.len(), 1 + 14);
        let mut a = Assembler::default();
        let mut done = None;
        for f in frames.into_iter().rev() {
            let plain =
                crate::codec::decompress(f.header.flags, f.payload, f.header.plain_len as usize)
                    .unwrap();
            done = a.add(&f.header, plain, 0).unwrap();
        }
        let m = done.expect("complete after the last frame");
        assert_eq!((&m.body[..], &m.meta[..]), (&body[..], &b"{\"a\":1}"[..]));
    }

    #[test]
    fn overruns_are_refused() {
        let mut a = Assembler::default();
        assert!(a
            .add(&h(Kind::RequestData, 4, 6), b"abc".to_vec(), 1)
            .is_err());
        // An offset whose end lies past 2^64 is an overrun, not a wrap to a small one.
        assert!(a
            .add(&h(Kind::RequestData, u64::MAX - 1, 16), b"abcd".to_vec(), 1)
            .is_err());
    }

    /// Chunks that overlap would add up to the message's length with a hole in it: refused,
    /// not written as zeros.
    #[test]
    fn overlapping_chunks_are_refused() {
        let mut a = Assembler::default();
        a.add(&h(Kind::RequestMeta, 0, 8), b"{}".to_vec(), 1)
            .unwrap();
        a.add(&h(Kind::RequestData, 0, 8), b"AAAA".to_vec(), 1)
            .unwrap();
        let overlap = a.add(&h(Kind::RequestData, 1, 8), b"BBBB".to_vec(), 1);
        assert!(overlap.unwrap_err().contains("overlaps"));
        let before = a
            .add(&h(Kind::RequestData, 6, 8), b"CC".to_vec(), 1)
            .unwrap();
        assert!(before.is_none(), "2 bytes are still missing");
        let overlap = a.add(&h(Kind::RequestData, 3, 8), b"DD".to_vec(), 1);
        assert!(overlap.is_err(), "overlaps the first chunk");
        let m = a
            .add(&h(Kind::RequestData, 4, 8), b"EE".to_vec(), 1)
            .unwrap();
        assert_eq!(&m.unwrap().body[..], b"AAAAEECC");
    }
}
