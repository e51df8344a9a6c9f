//! Frames waiting for a connection, taken by whichever connection is free first, in an
//! order that keeps the link full.
//!
//! Frames used to be dealt out in turn, each connection with a queue of its own. TCP flows
//! on a shared long fat pipe do not keep equal shares, so a slow connection's queue was
//! still full when the others had run dry: the last megabytes of a transfer crawled over a
//! few connections while the link stood mostly idle (two of 25 seconds on the emulated
//! link). With one queue, each connection's writer takes the next frame when it has handed
//! its last to the kernel, so a faster connection carries more and all of them run dry
//! together.
//!
//! The order is not first come, first served:
//! - Messages without a body (a HEAD, a listing, a multipart completion) go before any
//!   body, so a small request never waits behind megabytes of others' data.
//! - Bodies go oldest message first, not interleaved. Interleaved, every message in flight
//!   finished at the same moment, and the engine, whose memory budget they all held, had
//!   nothing queued to send while it read the next ones: the link idled between waves.
//!   One message after another, they finish one at a time, and each finish makes room for
//!   the next read while the link carries the rest.

use crate::wire::Plain;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Default)]
struct Queue {
    frames: BinaryHeap<Queued>,
    /// Frames pushed so far: keeps a message's frames in the order they were pushed.
    pushed: u64,
    /// Payload bytes queued.
    bytes: usize,
}

struct Queued {
    /// Sort key, smallest first: bulk (has a body), message, push order.
    key: (bool, u64, u64),
    frame: Plain,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: reversed, it pops the smallest key.
        other.key.cmp(&self.key)
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Queued {}

impl Outbox {
    /// Queues a frame. The queue is not bounded: its frames are the compressed copies of
    /// bodies the engine holds within its memory budget.
    pub fn push(&self, frame: Plain) {
        {
            let mut q = self.queue.lock().unwrap();
            q.pushed += 1;
            q.bytes += frame.payload.len();
            let key = (frame.header.total > 0, frame.header.stream, q.pushed);
            q.frames.push(Queued { key, frame });
        }
        self.ready.notify_one();
    }

    /// Drops the frames of message `stream` still waiting: its request has failed.
    pub fn remove(&self, stream: u64) {
        let mut q = self.queue.lock().unwrap();
        let mut dropped = 0;
        q.frames.retain(|f| {
            let gone = f.frame.header.stream == stream;
            if gone {
                dropped += f.frame.payload.len();
            }
            !gone
        });
        q.bytes -= dropped;
    }

    fn pop(&self) -> Option<Plain> {
        let mut q = self.queue.lock().unwrap();
        let next = q.frames.pop()?;
        q.bytes -= next.frame.payload.len();
        Some(next.frame)
    }

    /// Drops every queued frame: for when no connection is left to send them, and their
    /// requests have failed.
    pub fn clear(&self) {
        let mut q = self.queue.lock().unwrap();
        q.frames.clear();
        q.bytes = 0;
    }

    /// Payload bytes waiting (a message queued now may have fewer ahead of it: those without
    /// a body, and older messages, go first).
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().unwrap().bytes
    }

    /// The frame that should go next, waiting for one if there is none. Cancel-safe: a take
    /// dropped while waiting loses no frame (and passes on its wake-up).
    pub async fn take(&self) -> Plain {
        loop {
            let notified = self.ready.notified();
            if let Some(frame) = self.pop() {
                return frame;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Compression;
    use crate::message::encode;
    use crate::wire::Kind;
    use std::time::Duration;

    fn frames(stream: u64, body: usize) -> Vec<Plain> {
        let body = vec![7u8; body];
        encode(
            Kind::RequestMeta,
            1,
            stream,
            b"{}",
            &body,
            Compression::None,
            1024,
        )
        .collect()
    }

    fn order(outbox: &Outbox) -> Vec<(u64, u64)> {
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| outbox.pop())
            .map(|f| (f.header.stream, f.header.offset))
            .collect();
        assert_eq!(outbox.queued_bytes(), 0, "every byte queued was taken");
        order
    }

    #[test]
    fn small_requests_first_then_one_body_after_another() {
        let outbox = Outbox::default();
        // Two bodies pushed interleaved, as concurrent requests push them, then a HEAD.
        let (a, b) = (frames(5, 3000), frames(6, 2000));
        let mut b = b.into_iter();
        for f in a {
            outbox.push(f);
            if let Some(f) = b.next() {
                outbox.push(f);
            }
        }
        b.for_each(|f| outbox.push(f));
        frames(9, 0).into_iter().for_each(|f| outbox.push(f));
        let got = order(&outbox);
        assert_eq!(got[0], (9, 0), "the bodiless request goes first: {got:?}");
        let streams: Vec<u64> = got[1..].iter().map(|(s, _)| *s).collect();
        assert_eq!(streams, [5, 5, 5, 5, 6, 6, 6], "{got:?}");
        // Within a message, the frames keep their order: meta, then data by offset.
        let offsets: Vec<u64> = got[1..5].iter().map(|(_, o)| *o).collect();
        assert_eq!(offsets, [0, 0, 1024, 2048], "{got:?}");
    }

    #[test]
    fn a_failed_request_s_frames_can_be_dropped() {
        let outbox = Outbox::default();
        frames(1, 3000).into_iter().for_each(|f| outbox.push(f));
        frames(2, 2000).into_iter().for_each(|f| outbox.push(f));
        outbox.remove(1);
        assert_eq!(
            outbox.queued_bytes(),
            2 + 2000,
            "message 2's meta and body remain"
        );
        let streams: Vec<u64> = order(&outbox).iter().map(|(s, _)| *s).collect();
        assert_eq!(streams, [2, 2, 2]);
    }

    #[tokio::test]
    async fn a_waiting_take_gets_the_next_push_and_a_dropped_one_loses_nothing() {
        let outbox = std::sync::Arc::new(Outbox::default());
        // A take abandoned while it waits must not swallow a later frame.
        let abandoned = tokio::time::timeout(Duration::from_millis(20), outbox.take()).await;
        assert!(abandoned.is_err());
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.take().await.header.stream }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        frames(3, 0).into_iter().for_each(|f| outbox.push(f));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("the waiting take was woken").unwrap(), 3);
    }
}
