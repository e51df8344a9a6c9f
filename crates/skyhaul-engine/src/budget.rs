//! The memory budget: every byte buffered between a read and its write holds a permit.
//!
//! Bounding bytes rather than task counts keeps memory flat whether the transfer is a
//! million 1 KiB objects or one 1 TiB object.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB so that a 5 GiB part still fits the semaphore's `u32` acquire.
const UNIT: u64 = 1024;

#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let units = (bytes / UNIT).clamp(1, u32::MAX as u64) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until `bytes` may be buffered. A request larger than the whole budget takes
    /// the whole budget rather than waiting forever.
    pub async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes.div_ceil(UNIT).clamp(1, self.units as u64) as u32;
        self.sem
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("budget semaphore is never closed")
    }

    pub fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_released_bytes() {
        let b = Budget::new(10 * 1024);
        let first = b.reserve(8 * 1024).await;
        assert_eq!(b.available_bytes(), 2 * 1024);
        let pending = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(4 * 1024).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !pending.is_finished(),
            "4 KiB must wait while only 2 KiB are free"
        );
        drop(first);
        let _second = pending.await.unwrap();
        // Oversized requests take the whole budget instead of deadlocking.
        drop(_second);
        let all = b.reserve(1 << 40).await;
        assert_eq!(b.available_bytes(), 0);
        drop(all);
    }
}
