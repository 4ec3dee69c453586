//! [`Clock`]: the wall time schedules are evaluated against, tied to tokio's clock.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Gives "now" as a UTC wall time, and turns wall times into tokio deadlines.
///
/// [`Clock::starting_at`] counts from a given wall time along tokio's clock, so a test with a paused
/// runtime (`#[tokio::test(start_paused = true)]`) moves through days of schedules in milliseconds.
/// [`Clock::system`] reads the system's wall clock each time instead of counting from the moment it was
/// made: tokio's monotonic clock stops while a machine is suspended and ignores clock steps, and a daemon
/// that runs for months would drift from the times an admin wrote. The scheduler never sleeps longer than a
/// minute at a time, so a step of the system clock is noticed within a minute.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    System,
    Anchored { wall: DateTime<Utc>, instant: Instant },
}

impl Clock {
    /// A clock that reads `wall` now and then advances with tokio's clock (paused or not).
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self { source: Source::Anchored { wall, instant: Instant::now() } }
    }

    /// The system's wall clock.
    pub fn system() -> Self {
        Self { source: Source::System }
    }

    /// The current wall time.
    pub fn now(&self) -> DateTime<Utc> {
        match self.source {
            Source::System => Utc::now(),
            Source::Anchored { wall, instant } => {
                let elapsed = Instant::now().saturating_duration_since(instant);
                // A clock running for more than chrono's range (hundreds of thousands of years) saturates.
                chrono::Duration::from_std(elapsed)
                    .ok()
                    .and_then(|d| wall.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }

    /// The tokio instant at which this clock will read `at` (now, if `at` has passed).
    pub fn deadline(&self, at: DateTime<Utc>) -> Instant {
        let now = Instant::now();
        let ahead = (at - self.now()).to_std().unwrap_or_default();
        now.checked_add(ahead).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn anchored_clock_follows_paused_tokio_time() {
        let start = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let clock = Clock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(clock.now(), start + chrono::Duration::days(1));

        let target = start + chrono::Duration::days(1) + chrono::Duration::minutes(5);
        let deadline = clock.deadline(target);
        tokio::time::sleep_until(deadline).await;
        assert_eq!(clock.now(), target);
        // A wall time in the past is due at once.
        assert_eq!(clock.deadline(start), Instant::now());
    }

    #[test]
    fn system_clock_reads_the_wall_clock() {
        let clock = Clock::system();
        let before = Utc::now();
        let now = clock.now();
        assert!(now >= before && now - before < chrono::Duration::seconds(5));
    }
}
