//! Rates: a token bucket, which paces what a limit allows per second, and a
//! log throttle, which keeps a limit that acts under a flood from writing
//! one log line per event.
//!
//! Both take the time as an argument (or read tokio's clock), so tests can
//! drive them without sleeping.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Allows `rate` units per second on average and bursts of up to `burst`.
///
/// [`take`](Self::take) spends first and says how long to wait before the
/// next spend: the bytes of a read are known only after reading them, so
/// the bucket may go into debt, and whoever spends waits it off.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Units per second.
    rate: f64,
    burst: f64,
    /// Below 0 while in debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` units per second (at least 1), bursts of
    /// `burst` (at least 1, so one unit always passes).
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Spends `amount`, into debt if need be; `Some(wait)` when the bucket
    /// is now in debt: nothing more should be spent for `wait`.
    pub(crate) fn take(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= amount as f64;
        (self.tokens < 0.0).then(|| self.wait_for(0.0))
    }

    /// How long until the bucket holds `level` tokens (rounded up to a
    /// millisecond, so a timer set for it never fires early).
    fn wait_for(&self, level: f64) -> Duration {
        let millis = ((level - self.tokens) * 1000.0 / self.rate).ceil();
        Duration::from_millis((millis as u64).max(1))
    }
}

/// Lets a log line through at most once per interval, and counts the ones
/// held back so the next line can say how many there were.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            state: Mutex::new(LogState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock();
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

/// How often a limit that keeps acting is logged again.
pub(crate) const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_paces_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 10, start);
        for _ in 0..10 {
            assert_eq!(bucket.take(1, start), None);
        }
        // Empty: the eleventh puts it one token in debt, 1/10 s to repay.
        assert_eq!(bucket.take(1, start), Some(ms(100)));
        assert_eq!(bucket.take(0, start + ms(50)), Some(ms(50)));
        assert_eq!(bucket.take(1, start + ms(200)), None);
        assert_eq!(bucket.take(1, start + ms(200)), Some(ms(100)));
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 5, start);
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(bucket.take(1, later), None);
        }
        assert!(bucket.take(1, later).is_some());
    }

    #[test]
    fn spending_into_debt_says_how_long_to_wait_it_off() {
        let start = Instant::now();
        // 1000 bytes per second, 1000 at once.
        let mut bucket = TokenBucket::new(1000, 1000, start);
        assert_eq!(bucket.take(600, start), None);
        // 1,500 read at once: 1,100 in debt, 1.1 s to pay off.
        assert_eq!(bucket.take(1500, start), Some(ms(1100)));
        // Half a second later, still 600 in debt.
        assert_eq!(bucket.take(0, start + ms(500)), Some(ms(600)));
        assert_eq!(bucket.take(0, start + ms(1100)), None);
    }

    #[test]
    fn the_average_rate_holds_over_many_spends() {
        // 50 units per second, spent one at a time as soon as allowed:
        // after 10 s of simulated time, about 50 * 10 + the burst.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(50, 5, start);
        let mut now = start;
        let mut spent = 0u64;
        while now < start + Duration::from_secs(10) {
            spent += 1;
            if let Some(wait) = bucket.take(1, now) {
                now += wait;
            }
        }
        assert!((500..=507).contains(&spent), "{spent}");
    }

    #[test]
    fn zero_rates_and_bursts_still_let_one_unit_through() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, 0, start);
        assert_eq!(bucket.take(1, start), None);
        assert_eq!(bucket.take(1, start), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_throttled_log_writes_once_per_interval_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow_at(start), Some(0));
        assert_eq!(throttle.allow_at(start + ms(1)), None);
        assert_eq!(throttle.allow_at(start + Duration::from_secs(9)), None);
        assert_eq!(
            throttle.allow_at(start + Duration::from_secs(10)),
            Some(2),
            "the next line says two were held back"
        );
        assert_eq!(throttle.allow_at(start + Duration::from_secs(11)), None);
    }
}
