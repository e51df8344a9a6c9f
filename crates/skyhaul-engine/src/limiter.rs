//! Adaptive concurrency per side: additive increase, multiplicative decrease.
//!
//! S3 answers 503 SlowDown when a prefix gets more requests than it can take; hammering it
//! with the same concurrency makes things worse. On a throttle the limit halves; every
//! `limit` successes it grows by one, back up to the configured maximum.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct AdaptiveLimit {
    max: usize,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    successes: AtomicUsize,
    notify: Notify,
}

/// One request slot; freed on drop.
pub struct Slot {
    owner: Arc<AdaptiveLimit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.owner.notify.notify_one();
    }
}

impl AdaptiveLimit {
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(AdaptiveLimit {
            max,
            limit: AtomicUsize::new(max),
            in_flight: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
            notify: Notify::new(),
        })
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let limit = self.limit.load(Ordering::Acquire);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                owner: self.clone(),
            })
    }

    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(slot) = self.try_take() {
                // Pass a wake-up on: another waiter may fit too.
                self.notify.notify_one();
                return slot;
            }
            notified.await;
        }
    }

    pub fn current(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub fn on_throttle(&self) {
        let _ = self
            .limit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some((l / 2).max(1))
            });
        self.successes.store(0, Ordering::Release);
    }

    pub fn on_success(&self) {
        let limit = self.limit.load(Ordering::Acquire);
        if limit >= self.max {
            return;
        }
        if self.successes.fetch_add(1, Ordering::AcqRel) + 1 >= limit {
            self.successes.store(0, Ordering::Release);
            let _ =
                self.limit
                    .compare_exchange(limit, limit + 1, Ordering::AcqRel, Ordering::Acquire);
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_on_throttle_and_ramps_back() {
        let l = AdaptiveLimit::new(8);
        l.on_throttle();
        assert_eq!(l.current(), 4);
        l.on_throttle();
        l.on_throttle();
        l.on_throttle();
        assert_eq!(l.current(), 1, "never below one");
        for _ in 0..1 + 2 + 3 + 4 + 5 + 6 + 7 {
            l.on_success();
        }
        assert_eq!(l.current(), 8);
        for _ in 0..100 {
            l.on_success();
        }
        assert_eq!(l.current(), 8, "never above the maximum");
    }

    #[tokio::test]
    async fn acquire_respects_the_current_limit() {
        let l = AdaptiveLimit::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
    }
}
