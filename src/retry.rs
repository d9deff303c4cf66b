//! How failed attempts are retried: exponential backoff with jitter.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How often, and after how long, a line whose task failed is tried again.
///
/// The delay before attempt `n + 1` is `initial_delay * 2^(n - 1)`, capped at
/// `max_delay`, then multiplied by a random factor between 0.5 and 1 (jitter,
/// so that many workers failing together do not retry together). A task's
/// [`retry_after`](crate::Task::retry_after) hint replaces the backoff for
/// that attempt, capped at `max_delay` too.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use linemark::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .max_attempts(5)
///     .initial_delay(Duration::from_millis(10));
/// assert_eq!(policy.attempts(), 5);
/// let delay = policy.delay(3, None);
/// assert!(delay >= Duration::from_millis(20) && delay <= Duration::from_millis(40));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// 3 attempts, 500 ms first delay, 30 s longest delay, with jitter.
    #[must_use]
    pub fn new() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: true,
        }
    }

    /// A single attempt: failures are recorded at once.
    #[must_use]
    pub fn never() -> RetryPolicy {
        RetryPolicy::new().max_attempts(1)
    }

    /// Attempts per line in all, the first one included (at least 1).
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    #[must_use = "a builder method returns the changed builder"]
    pub fn initial_delay(mut self, delay: Duration) -> RetryPolicy {
        self.initial_delay = delay;
        self
    }

    /// The longest delay, for backoff and hints alike.
    #[must_use = "a builder method returns the changed builder"]
    pub fn max_delay(mut self, delay: Duration) -> RetryPolicy {
        self.max_delay = delay;
        self
    }

    /// Whether delays are randomised (default: yes).
    #[must_use = "a builder method returns the changed builder"]
    pub fn jitter(mut self, jitter: bool) -> RetryPolicy {
        self.jitter = jitter;
        self
    }

    /// Attempts per line in all.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1-based), given the
    /// task's hint.
    #[must_use]
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_delay);
        }
        let exponent = attempt.saturating_sub(1).min(32);
        let backoff = self
            .initial_delay
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.max_delay);
        if self.jitter {
            backoff.mul_f64(0.5 + 0.5 * random_unit())
        } else {
            backoff
        }
    }
}

/// A random number in [0, 1), from the standard library's randomly seeded
/// hasher: good enough to spread retries, with no dependency.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(350))
            .jitter(false);
        let delays: Vec<_> = (1..=5).map(|n| policy.delay(n, None).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350, 350]);
        assert_eq!(policy.delay(1000, None).as_millis(), 350);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let policy = RetryPolicy::new().initial_delay(Duration::from_millis(1000));
        let delays: Vec<_> = (0..200).map(|_| policy.delay(1, None)).collect();
        assert!(
            delays
                .iter()
                .all(|d| d.as_millis() >= 500 && d.as_millis() <= 1000)
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 100,
            "jitter is not random: {}",
            distinct.len()
        );
    }

    #[test]
    fn hints_replace_backoff_but_respect_the_cap() {
        let policy = RetryPolicy::new().max_delay(Duration::from_secs(10));
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(99))),
            Duration::from_secs(10)
        );
    }
}
