//! Publish backpressure for when the server as a whole falls behind its subscribers.
//!
//! A publish is answered once its publication is queued for every subscriber, not once it is
//! written. A publisher faster than the server can write (every connection's queue growing
//! together, the CPU being the limit) therefore filled the queues until their limit shed
//! publications from clients that were reading as fast as the server wrote. Now a connection
//! counts as backed up while its queue holds [`BACKED_UP_SHARE`] of `client.queue_max_size`
//! or more (until it drains below half of that), and while a quarter of all connections (and
//! at least [`MIN_BACKED_UP`]) are backed up, new publishes wait for the queues to drain, at
//! most `client.publish_backpressure_wait` each (100 ms by default; zero turns it off).
//!
//! A few slow or stalled clients never hold publishers up: they are below both bounds, and are
//! shed and signalled as before (see `outbound`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The share of `client.queue_max_size` (a divisor) from which a connection counts as backed up.
pub const BACKED_UP_SHARE: usize = 4;
/// Fewer backed-up connections than this never hold publishers up, however few connections
/// there are: a handful of slow clients is what shedding is for.
pub const MIN_BACKED_UP: usize = 16;

/// Node-wide count of backed-up connections, and the publishes waiting for it to fall.
#[derive(Debug, Default)]
pub struct Congestion {
    backed_up: AtomicUsize,
    relieved: Notify,
}

impl Congestion {
    /// A connection's queue grew past its backed-up mark.
    pub fn backed_up(&self) {
        let now = self.backed_up.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::backed_up_connections(now);
    }

    /// A backed-up connection's queue drained (or the connection ended).
    pub fn drained(&self) {
        // Saturating: a count that wrapped below zero would hold every publisher up for good.
        let before = self.backed_up.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        let now = before.unwrap_or(0).saturating_sub(1);
        crate::metrics::backed_up_connections(now);
        // Waiters look again; this happens once per queue that drains, not once per write.
        self.relieved.notify_waiters();
    }

    pub fn backed_up_count(&self) -> usize {
        self.backed_up.load(Ordering::Relaxed)
    }

    /// True when so many of `connections` are backed up that the server as a whole is behind.
    pub fn is_congested(&self, connections: usize) -> bool {
        let backed_up = self.backed_up_count();
        backed_up >= MIN_BACKED_UP && backed_up * 4 >= connections
    }

    /// Waits while the server is congested, at most `max_wait`. Returns how long it waited
    /// (zero at once when it is not congested).
    pub async fn wait_for_capacity(&self, connections: impl Fn() -> usize, max_wait: Duration) -> Duration {
        if !self.is_congested(connections()) {
            return Duration::ZERO;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + max_wait;
        loop {
            let relieved = self.relieved.notified();
            tokio::pin!(relieved);
            // Registered before looking again, so a drain in between is not missed.
            relieved.as_mut().enable();
            if !self.is_congested(connections()) {
                break;
            }
            if tokio::time::timeout_at(deadline, relieved).await.is_err() {
                break;
            }
        }
        let waited = started.elapsed();
        crate::metrics::publish_backpressure(waited);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_few_backed_up_connections_never_congest() {
        let congestion = Congestion::default();
        for _ in 0..MIN_BACKED_UP - 1 {
            congestion.backed_up();
        }
        assert!(!congestion.is_congested(MIN_BACKED_UP), "below the minimum, even if all are backed up");
        congestion.backed_up();
        assert!(congestion.is_congested(MIN_BACKED_UP * 4), "a quarter of the connections");
        assert!(!congestion.is_congested(MIN_BACKED_UP * 4 + 1), "less than a quarter");
        congestion.drained();
        assert!(!congestion.is_congested(MIN_BACKED_UP));
    }

    #[tokio::test]
    async fn not_congested_means_no_wait() {
        let congestion = Congestion::default();
        let waited = congestion.wait_for_capacity(|| 100, Duration::from_secs(60)).await;
        assert_eq!(waited, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_waiting_publish_goes_on_once_queues_drain() {
        let congestion = Arc::new(Congestion::default());
        for _ in 0..MIN_BACKED_UP {
            congestion.backed_up();
        }
        let waiter = tokio::spawn({
            let congestion = congestion.clone();
            async move { congestion.wait_for_capacity(|| MIN_BACKED_UP, Duration::from_secs(60)).await }
        });
        // The waiter must still be waiting: it cannot finish while every connection is backed up.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        congestion.drained();
        let waited = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("woken by the drain");
        assert!(waited.expect("the waiter ran") < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_publish_waits_at_most_max_wait() {
        let congestion = Congestion::default();
        for _ in 0..MIN_BACKED_UP {
            congestion.backed_up();
        }
        let max_wait = Duration::from_millis(50);
        let waited = congestion.wait_for_capacity(|| MIN_BACKED_UP, max_wait).await;
        assert!(waited >= max_wait, "gave up only at the bound: {waited:?}");
        assert!(congestion.is_congested(MIN_BACKED_UP), "and went ahead while still congested");
    }
}
