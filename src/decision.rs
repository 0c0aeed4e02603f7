//! What happens after a call, in one place: a pure function from the call's
//! result, the attempt's position in the retry schedule and the policy, to
//! the attempt's outcome and the delay before the next attempt. No clock,
//! no I/O, no randomness of its own.
//!
//! * 2xx: succeeded.
//! * Connection, DNS and TLS errors, timeouts, an answer that is not HTTP,
//!   408, 429 and 5xx: retried while the schedule has a next step, then
//!   failed. (A 2xx whose body is cut off afterwards is a success.)
//! * Other 4xx, every 3xx (redirects are never followed), a refused target
//!   and a request we could not build: failed at once.

use std::time::Duration;

use crate::delivery::{CallRecord, ErrorKind};

/// `webhooks.attempt_outcome`, as the worker records it. (`abandoned` is
/// written by lease recovery in SQL, never by a call.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Retrying,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// The outcome of one attempt and, for `Retrying`, the delay before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub retry_in: Option<Duration>,
}

impl Decision {
    const SUCCEEDED: Self = Self {
        outcome: Outcome::Succeeded,
        retry_in: None,
    };
    const FAILED: Self = Self {
        outcome: Outcome::Failed,
        retry_in: None,
    };
}

/// The retry schedule (`[retry]` in config.toml).
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

/// Decides what follows a call. `position` is the attempt's place in the
/// retry schedule (1-based; it restarts at a redelivery); `unit` is a
/// uniform random number in [0, 1) for the jitter.
pub fn decide(call: &CallRecord, position: u32, policy: &RetryPolicy, unit: f64) -> Decision {
    let Some(failure) = &call.failure else {
        return Decision::SUCCEEDED;
    };
    let status = call.response.as_ref().map(|r| r.status);
    if !is_retryable(failure.kind, status) {
        return Decision::FAILED;
    }
    let asked = call.response.as_ref().and_then(|r| r.retry_after);
    match policy.next_delay(position, asked, unit) {
        Some(delay) => Decision {
            outcome: Outcome::Retrying,
            retry_in: Some(delay),
        },
        None => Decision::FAILED,
    }
}

/// Whether a failure of this kind (with this response status, if any) is
/// worth another attempt.
fn is_retryable(kind: ErrorKind, status: Option<u16>) -> bool {
    match kind {
        ErrorKind::Status => status.is_none_or(|s| matches!(s, 408 | 429 | 500..=599)),
        ErrorKind::Timeout
        | ErrorKind::Dns
        | ErrorKind::Connect
        | ErrorKind::Tls
        | ErrorKind::Protocol
        | ErrorKind::Body => true,
        ErrorKind::Redirect | ErrorKind::RefusedTarget | ErrorKind::Internal => false,
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after a retryable failure of attempt
    /// `position`, or `None` when that was the last attempt. A receiver's
    /// `Retry-After` replaces the scheduled delay, within bounds, but never
    /// adds an attempt.
    fn next_delay(
        &self,
        position: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let index = usize::try_from(position.checked_sub(1)?).ok()?;
        let base = *self.schedule.get(index)?;
        if let Some(asked) = retry_after {
            // The receiver knows its own load: wait as long as it asked, within bounds.
            return Some(asked.min(self.max_retry_after));
        }
        let spread = self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Some(base.mul_f64((1.0 + spread).max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::delivery::{Failure, ResponseRecord};

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

    fn call(status: Option<u16>, kind: Option<ErrorKind>, retry_after: Option<u64>) -> CallRecord {
        CallRecord {
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
            url: "https://example.com/hook".to_owned(),
            request: None,
            response: status.map(|status| ResponseRecord {
                status,
                headers: serde_json::Value::Null,
                body: String::new(),
                truncated: false,
                retry_after: retry_after.map(Duration::from_secs),
                cut_off: None,
            }),
            failure: kind.map(|kind| Failure {
                kind,
                message: String::new(),
            }),
        }
    }

    fn status(code: u16) -> CallRecord {
        let kind = match code {
            200..=299 => None,
            300..=399 => Some(ErrorKind::Redirect),
            _ => Some(ErrorKind::Status),
        };
        call(Some(code), kind, None)
    }

    fn retrying(secs: u64) -> Decision {
        Decision {
            outcome: Outcome::Retrying,
            retry_in: Some(Duration::from_secs(secs)),
        }
    }

    #[test]
    fn a_2xx_succeeds_whatever_the_position() {
        for code in [200, 204, 299] {
            assert_eq!(
                decide(&status(code), 1, &policy(), 0.5),
                Decision::SUCCEEDED
            );
            assert_eq!(
                decide(&status(code), 99, &policy(), 0.5),
                Decision::SUCCEEDED
            );
        }
    }

    #[test]
    fn retryable_statuses_follow_the_schedule_then_fail() {
        let p = policy();
        for code in [408, 429, 500, 503, 599] {
            assert_eq!(decide(&status(code), 1, &p, 0.5), retrying(5), "{code}");
        }
        assert_eq!(decide(&status(503), 2, &p, 0.5), retrying(300));
        assert_eq!(decide(&status(503), 7, &p, 0.5), retrying(36000));
        // Eight attempts in all: the eighth failure is final.
        assert_eq!(decide(&status(503), 8, &p, 0.5), Decision::FAILED);
        assert_eq!(decide(&status(503), 0, &p, 0.5), Decision::FAILED);
    }

    #[test]
    fn final_statuses_and_kinds_fail_at_once() {
        let p = policy();
        for code in [301, 302, 400, 401, 404, 410, 422] {
            assert_eq!(
                decide(&status(code), 1, &p, 0.5),
                Decision::FAILED,
                "{code}"
            );
        }
        for kind in [ErrorKind::RefusedTarget, ErrorKind::Internal] {
            assert_eq!(
                decide(&call(None, Some(kind), None), 1, &p, 0.5),
                Decision::FAILED
            );
        }
    }

    #[test]
    fn transport_failures_are_retried() {
        let p = policy();
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Dns,
            ErrorKind::Connect,
            ErrorKind::Tls,
            ErrorKind::Protocol,
            ErrorKind::Body,
        ] {
            assert_eq!(
                decide(&call(None, Some(kind), None), 1, &p, 0.5),
                retrying(5),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = policy();
        assert_eq!(decide(&status(500), 2, &p, 0.0), retrying(240));
        let high = decide(&status(500), 2, &p, 0.999_999)
            .retry_in
            .expect("delay");
        assert!(high <= Duration::from_secs(360) && high > Duration::from_secs(359));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds_and_adds_no_attempt() {
        let p = policy();
        assert_eq!(
            decide(
                &call(Some(429), Some(ErrorKind::Status), Some(42)),
                1,
                &p,
                0.5
            ),
            retrying(42)
        );
        assert_eq!(
            decide(
                &call(Some(503), Some(ErrorKind::Status), Some(86_400)),
                1,
                &p,
                0.5
            ),
            retrying(3600)
        );
        assert_eq!(
            decide(
                &call(Some(503), Some(ErrorKind::Status), Some(1)),
                8,
                &p,
                0.5
            ),
            Decision::FAILED
        );
    }
}
