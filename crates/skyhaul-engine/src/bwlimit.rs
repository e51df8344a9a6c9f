//! `--bwlimit`: one token bucket that every byte moved through this process draws from.
//!
//! Why one shared bucket and not one per connection: the limit is what the user's link,
//! or the neighbours on it, can spare, whatever the concurrency; adaptive connection limits
//! and striped parts must not multiply it.
//!
//! Each byte moved counts once: the copy path takes tokens for a body before reading it
//! from the source, and the same bytes are then written without taking more (a byte read
//! and a byte sent are the same byte moved). Server-side copies never pass through here and
//! take nothing.
//!
//! The bucket is kept as the time at which everything taken so far has drained at the
//! limit's rate: taking `n` bytes moves it `n / rate` seconds on, and the caller waits
//! until it is no more than `burst` ahead of now. Paying before moving makes the bound
//! strict: by any moment `t` after the first take, at most `rate × (t + burst)` bytes
//! were let through. A request larger than the burst (a 16 MiB part at 1 MiB/s) is never
//! refused: it waits for its share of time instead, whatever the chunk sizes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared rate limit in bytes per second.
#[derive(Debug)]
pub struct BandwidthLimit {
    bytes_per_second: f64,
    burst: Duration,
    /// When the bytes taken so far will have drained at the limit's rate.
    drained_at: Mutex<Option<Instant>>,
}

impl BandwidthLimit {
    /// A limit of `bytes_per_second`, allowing a burst of a quarter of a second's worth:
    /// small enough that a few seconds already show the rate, large enough that many small
    /// objects do not each wait for a timer tick.
    pub fn new(bytes_per_second: u64) -> Self {
        Self::with_burst(bytes_per_second, Duration::from_millis(250))
    }

    pub fn with_burst(bytes_per_second: u64, burst: Duration) -> Self {
        BandwidthLimit {
            bytes_per_second: bytes_per_second.max(1) as f64,
            burst,
            drained_at: Mutex::new(None),
        }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second as u64
    }

    /// How long the caller must wait before moving `bytes`, booking them as of `now`.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let mut drained_at = self.drained_at.lock().expect("bwlimit lock");
        let start = drained_at.map_or(now, |t| t.max(now));
        let end = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
        *drained_at = Some(end);
        // The bytes may go once they, and all taken before them, drain within the burst.
        end.saturating_duration_since(now + self.burst)
    }

    /// Waits until `bytes` may be moved. Cancel-safe in the sense that matters: a dropped
    /// waiter has already booked its bytes, which only makes later callers wait a little
    /// longer, never exceed the rate.
    pub async fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_the_bytes_taken() {
        let l = BandwidthLimit::with_burst(1000, Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(
            l.reserve(500, t0),
            Duration::from_millis(500),
            "even the first bytes pay"
        );
        assert_eq!(l.reserve(500, t0), Duration::from_secs(1));
        assert_eq!(l.reserve(2000, t0), Duration::from_secs(3));
        assert_eq!(l.reserve(1, t0), Duration::from_millis(3001));
        // Time passing pays the debt off.
        assert_eq!(
            l.reserve(1000, t0 + Duration::from_secs(10)),
            Duration::from_secs(1),
            "an idle limit does not save up"
        );
    }

    #[test]
    fn the_burst_lets_a_little_ahead_and_no_more() {
        let l = BandwidthLimit::with_burst(1000, Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(l.reserve(50, t0).is_zero());
        assert!(l.reserve(50, t0).is_zero(), "exactly the burst");
        assert_eq!(l.reserve(50, t0), Duration::from_millis(50));
        assert_eq!(l.reserve(50, t0), Duration::from_millis(100));
    }

    #[test]
    fn idle_time_is_not_banked() {
        let l = BandwidthLimit::with_burst(1000, Duration::from_millis(500));
        let t0 = Instant::now();
        l.reserve(1000, t0);
        // An hour later, only the burst goes at once, not an hour's worth.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.reserve(500, later).is_zero());
        assert_eq!(l.reserve(1000, later), Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_takers_share_one_rate() {
        let rate = 400_000u64;
        let l = std::sync::Arc::new(BandwidthLimit::with_burst(rate, Duration::ZERO));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        // 8 takers × 10 chunks × 5,000 bytes = 400,000 bytes: 1 s at the limit.
        for _ in 0..8 {
            let l = l.clone();
            tasks.spawn(async move {
                for _ in 0..10 {
                    l.take(5_000).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed().as_secs_f64();
        let expected = 400_000.0 / rate as f64;
        assert!(elapsed >= expected * 0.95, "{elapsed} s < {expected} s");
        assert!(
            elapsed < expected * 3.0,
            "{elapsed} s: far slower than the limit"
        );
    }
}
