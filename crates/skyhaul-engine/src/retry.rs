//! Retries with exponential backoff and jitter, the same for every backend.

use crate::limiter::{AdaptiveLimit, Slot};
use crate::progress::Progress;
use skyhaul_store::{ErrorKind, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// Retries after failures to reach the endpoint at all (counted apart from other
    /// failures, within `retries`): a first
    /// contact gives up quickly on a mistyped endpoint, a running transfer rides out an
    /// outage.
    pub unreachable_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 10 retries reach the 30 s cap after ~7 tries: a transfer rides out a few minutes
        // of network trouble before an object is given up.
        RetryPolicy {
            retries: 10,
            unreachable_retries: 10,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `n` (0-based): half of the exponential step plus a random
    /// part of the other half, so that many workers hit by one outage spread out.
    pub fn backoff(&self, n: u32) -> Duration {
        let step = self.base.saturating_mul(1u32 << n.min(20)).min(self.cap);
        step / 2 + step.mul_f64(rand::random::<f64>() / 2.0)
    }

    /// Runs `op` through `limit` until it succeeds, fails for good, or runs out of tries.
    pub async fn run<T, F, Fut>(
        &self,
        limit: &Arc<AdaptiveLimit>,
        progress: &Progress,
        op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (value, _slot) = self.run_holding(limit, progress, op).await?;
        Ok(value)
    }

    /// As [`RetryPolicy::run`], but the caller keeps the successful try's slot: for a
    /// request whose connection stays busy after it returns (a body still being read).
    pub async fn run_holding<T, F, Fut>(
        &self,
        limit: &Arc<AdaptiveLimit>,
        progress: &Progress,
        mut op: F,
    ) -> Result<(T, Slot)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        // Counted apart: a 503 followed by one reset is a busy server, not a wrong address.
        let mut unreachable = 0;
        loop {
            let slot = limit.acquire().await;
            let e = match op().await {
                Ok(v) => {
                    limit.on_success();
                    return Ok((v, slot));
                }
                Err(e) => e,
            };
            drop(slot);
            match e {
                e if e.is_retryable()
                    && attempt < self.retries
                    && (e.kind != ErrorKind::Unreachable
                        || unreachable < self.unreachable_retries) =>
                {
                    unreachable += u32::from(e.kind == ErrorKind::Unreachable);
                    if e.kind == ErrorKind::Throttled {
                        limit.on_throttle();
                    }
                    tracing::debug!("retrying after: {e}");
                    progress.add_retry();
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                e => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyhaul_store::Error;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            unreachable_retries: 1,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for n in 0..30 {
            let d = p.backoff(n);
            let step = p.base.saturating_mul(1 << n.min(20)).min(p.cap);
            assert!(d >= step / 2 && d <= step, "retry {n}: {d:?}");
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let progress = Progress::default();
        let limit = AdaptiveLimit::new(4);
        let out = fast()
            .run(&limit, &progress, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::new(ErrorKind::Throttled, "slow down"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(progress.snapshot().retries, 2);
        // 4 halved twice is 1; the success that follows earns one more slot.
        assert_eq!(limit.current(), 2);
    }

    #[tokio::test]
    async fn gives_up_after_the_budget_and_never_retries_permanent_errors() {
        let calls = AtomicU32::new(0);
        let progress = Progress::default();
        let limit = AdaptiveLimit::new(4);
        let err = fast()
            .run(&limit, &progress, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::Transient, "500"))
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, calls.load(Ordering::SeqCst)),
            (ErrorKind::Transient, 4)
        );
        calls.store(0, Ordering::SeqCst);
        fast()
            .run(&limit, &progress, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::AccessDenied, "403"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // An endpoint that cannot be reached at all gets its own, smaller allowance.
        calls.store(0, Ordering::SeqCst);
        fast()
            .run(&limit, &progress, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::Unreachable, "refused"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_failures_do_not_use_up_the_unreachable_allowance() {
        // 503, 503, reset, then success: a busy server that dropped one connection.
        let calls = AtomicU32::new(0);
        let limit = AdaptiveLimit::new(4);
        let out = fast()
            .run(&limit, &Progress::default(), || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Error::new(ErrorKind::Throttled, "503")),
                    2 => Err(Error::new(ErrorKind::Unreachable, "reset")),
                    _ => Ok(1),
                }
            })
            .await;
        assert_eq!(out.unwrap(), 1);
    }
}
