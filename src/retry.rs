//! The retry schedule as pure functions: no clock, no randomness of its own.

use std::time::{Duration, SystemTime};

/// What the HTTP result says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Connection errors, timeouts, 408, 429, 5xx.
    Retryable,
    /// Other 4xx, 3xx (redirects are never followed), refused targets.
    Final,
}

/// The verdict for a response status.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        408 | 429 | 500..=599 => Verdict::Retryable,
        _ => Verdict::Final,
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before retry n (n = 1..): `schedule[n - 1]`. Attempts in all:
    /// `schedule.len() + 1`.
    pub schedule: Vec<Duration>,
    /// Spread of each delay, as a fraction (0.2 = +/- 20 %).
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn max_attempts(&self) -> usize {
        self.schedule.len() + 1
    }

    /// Delay before the next attempt after a retryable failure of attempt
    /// `position` (1-based, counted from the start of the schedule), or `None`
    /// when that was the last attempt. `unit` is a uniform random number in
    /// [0, 1) for the jitter; `retry_after` is what the receiver asked for.
    pub fn next_delay(
        &self,
        position: usize,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let base = *self.schedule.get(position.checked_sub(1)?)?;
        if let Some(asked) = retry_after {
            // The receiver knows its own load: wait as long as it asked, within bounds.
            return Some(asked.min(self.max_retry_after));
        }
        let spread = self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64((1.0 + spread).max(0.0)))
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: [5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let p = policy();
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.next_delay(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(2, None, 0.5), Some(Duration::from_secs(300)));
        assert_eq!(p.next_delay(7, None, 0.5), Some(Duration::from_secs(36000)));
        assert_eq!(p.next_delay(8, None, 0.5), None);
        assert_eq!(p.next_delay(0, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy();
        assert_eq!(p.next_delay(2, None, 0.0), Some(Duration::from_secs(240)));
        let high = p.next_delay(2, None, 0.999_999).expect("delay");
        assert!(high <= Duration::from_secs(360) && high > Duration::from_secs(359));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(42)), 0.5),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(86_400)), 0.5),
            Some(Duration::from_secs(3600))
        );
        // Retry-After never extends the number of attempts.
        assert_eq!(p.next_delay(8, Some(Duration::from_secs(1)), 0.5), None);
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(classify_status(204), Verdict::Success);
        assert_eq!(classify_status(408), Verdict::Retryable);
        assert_eq!(classify_status(429), Verdict::Retryable);
        assert_eq!(classify_status(503), Verdict::Retryable);
        assert_eq!(classify_status(301), Verdict::Final);
        assert_eq!(classify_status(400), Verdict::Final);
        assert_eq!(classify_status(410), Verdict::Final);
    }
}
