//! Retries with exponential backoff and jitter, the same for every backend.

use crate::limiter::{AdaptiveLimit, Slot};
use crate::progress::Progress;
use skyhaul_store::{Error, ErrorKind, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long a request may still take once the run was asked to stop: bytes in flight
/// finish, but an endpoint that accepts connections and never answers cannot hold a stopped
/// run for the minutes its timeouts add up to. Under the 30 s that Kubernetes and SLURM
/// leave between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

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
        let mut tries = self.tries(limit, progress);
        loop {
            let slot = limit.acquire().await;
            match tries.attempt(op()).await {
                Ok(v) => {
                    limit.on_success();
                    return Ok((v, slot));
                }
                Err(e) => {
                    drop(slot);
                    tries.after(e).await?;
                }
            }
        }
    }

    /// The retry state of one operation through `limit`, for loops that cannot be one
    /// closure (a streamed copy opens its source before it takes a destination slot).
    pub fn tries<'a>(&'a self, limit: &'a AdaptiveLimit, progress: &'a Progress) -> Tries<'a> {
        Tries {
            policy: self,
            limit,
            progress,
            backoff: Backoff::default(),
        }
    }
}

/// See [`RetryPolicy::tries`].
pub struct Tries<'a> {
    policy: &'a RetryPolicy,
    limit: &'a AdaptiveLimit,
    progress: &'a Progress,
    backoff: Backoff,
}

impl Tries<'_> {
    /// One try: what `attempt` answers, or [`ErrorKind::Interrupted`] when it is still
    /// unanswered [`STOP_GRACE`] after the run was asked to stop (one begun after the stop,
    /// such as an abort, gets what is left of the grace).
    pub async fn attempt<T>(&self, attempt: impl Future<Output = Result<T>>) -> Result<T> {
        let stop = self.progress.stop();
        let given_up = async {
            stop.cancelled().await;
            tokio::time::sleep_until(self.progress.stopped_at() + STOP_GRACE).await;
        };
        tokio::select! {
            answer = attempt => answer,
            () = given_up => Err(Error::new(
                ErrorKind::Interrupted,
                format!(
                    "interrupted: a request still had no answer {} s after the stop; run the \
                     same command again to resume",
                    STOP_GRACE.as_secs()
                ),
            )),
        }
    }

    /// After a failed try: see [`Backoff::after`]. The caller holds no slot meanwhile.
    pub async fn after(&mut self, e: Error) -> Result<()> {
        let (policy, progress) = (self.policy, self.progress);
        self.backoff
            .after(policy, progress, Some(self.limit), e)
            .await
    }
}

/// Where the retries of one operation stand: the tries made so far, and among them those
/// that found no endpoint at all (counted apart: a 503 followed by one reset is a busy
/// server, not a wrong address). Owned, so that a listing can keep it between the pages it
/// delivers; [`Tries`] holds one for a request.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
    unreachable: u32,
}

impl Backoff {
    /// After a failed try: waits out the backoff and returns `Ok` when the operation is worth
    /// another try, else gives the error back. A throttled try tells `limit`, where requests
    /// share one. Once the run is asked to stop, nothing is tried again: the error becomes
    /// [`ErrorKind::Interrupted`], for the rerun to try.
    pub async fn after(
        &mut self,
        policy: &RetryPolicy,
        progress: &Progress,
        limit: Option<&AdaptiveLimit>,
        e: Error,
    ) -> Result<()> {
        let retry = e.is_retryable()
            && self.attempt < policy.retries
            && (e.kind != ErrorKind::Unreachable || self.unreachable < policy.unreachable_retries);
        if !retry {
            return Err(e);
        }
        let stop = progress.stop();
        let interrupted = || Error::new(ErrorKind::Interrupted, format!("interrupted: {e}"));
        if stop.is_cancelled() {
            return Err(interrupted());
        }
        self.unreachable += u32::from(e.kind == ErrorKind::Unreachable);
        if let Some(limit) = limit.filter(|_| e.kind == ErrorKind::Throttled) {
            limit.on_throttle();
        }
        tracing::debug!("retrying after: {e}");
        progress.add_retry();
        tokio::select! {
            () = tokio::time::sleep(policy.backoff(self.attempt)) => {}
            () = stop.cancelled() => return Err(interrupted()),
        }
        self.attempt += 1;
        Ok(())
    }

    /// The operation got somewhere (a listing delivered an entry): a later failure starts
    /// its tries afresh.
    pub fn progressed(&mut self) {
        *self = Backoff::default();
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

    /// Once the run is asked to stop, a failure is not tried again, and a wait for the
    /// next try ends at the stop: the operation is interrupted, for the rerun.
    #[tokio::test]
    async fn a_stopped_run_tries_nothing_again() {
        let stop = tokio_util::sync::CancellationToken::new();
        let progress = Progress::stopped_by(stop.clone());
        let limit = AdaptiveLimit::new(4);
        let slow = RetryPolicy {
            base: Duration::from_secs(600),
            cap: Duration::from_secs(600),
            ..fast()
        };
        let calls = AtomicU32::new(0);
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        };
        let (err, ()) = tokio::join!(
            slow.run(&limit, &progress, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::Transient, "500"))
            }),
            stopper
        );
        let err = err.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Interrupted, "{err}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the backoff ended at the stop"
        );
        let err = fast()
            .run(&limit, &progress, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::Transient, "500"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Interrupted, "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one try, none again");
    }
}
