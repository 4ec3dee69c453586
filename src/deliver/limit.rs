//! Politeness and self-protection per destination: a request-rate limiter and a circuit breaker. Both use
//! tokio's clock, so tests can pause and advance time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces requests at least `1 / rate` seconds apart, across all of a destination's workers.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn per_second(rate: f64) -> Self {
        Self { interval: Duration::from_secs_f64(1.0 / rate.max(0.001)), next: Mutex::new(None) }
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Opens after `threshold` consecutive failed batches; stays open for `cooldown`, then lets one trial through.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    opened_at: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, state: Mutex::new(BreakerState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a batch may be sent now.
    pub fn allows(&self) -> bool {
        self.lock().open_until.is_none_or(|until| Instant::now() >= until)
    }

    pub fn success(&self) {
        *self.lock() = BreakerState::default();
    }

    /// Records a failed batch; returns true when this failure opened the circuit.
    pub fn failure(&self) -> bool {
        let mut s = self.lock();
        s.failures += 1;
        if s.failures >= self.threshold {
            let now = Instant::now();
            let newly = s.open_until.is_none();
            s.open_until = Some(now + self.cooldown);
            s.opened_at.get_or_insert(now);
            return newly;
        }
        false
    }

    /// Since when the circuit has been open, if it is.
    pub fn open_since(&self) -> Option<Instant> {
        let s = self.lock();
        s.open_until.and(s.opened_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_requests() {
        let l = RateLimiter::per_second(10.0);
        let start = Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_and_cools_down() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert!(!b.failure() && !b.failure());
        assert!(b.failure(), "third failure opens");
        assert!(!b.allows() && b.open_since().is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(b.allows(), "half-open after the cooldown");
        b.success();
        assert!(b.open_since().is_none());
    }
}
