//! When to retry a failed call.

use std::time::Duration;

use tonic::Code;

/// Retry policy: UNAVAILABLE is retried for every call, DEADLINE_EXCEEDED only for
/// idempotent reads, nothing else ever. Backoff doubles from `initial_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, including the first. 1 disables retries.
    pub max_attempts: u32,
    /// Pause before the second attempt; doubled before each further one.
    pub initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::ZERO,
        }
    }

    /// Whether a call that failed with `code` on attempt number `attempt` (1-based)
    /// should be tried again. `idempotent_read` marks calls that change nothing.
    pub fn should_retry(&self, code: Code, idempotent_read: bool, attempt: u32) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        match code {
            Code::Unavailable => true,
            Code::DeadlineExceeded => idempotent_read,
            _ => false,
        }
    }

    /// The pause after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.initial_backoff.saturating_mul(1 << doublings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_unavailable_for_any_call() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(Code::Unavailable, false, 1));
        assert!(p.should_retry(Code::Unavailable, true, 2));
    }

    #[test]
    fn retries_deadline_exceeded_only_for_reads() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(Code::DeadlineExceeded, true, 1));
        assert!(!p.should_retry(Code::DeadlineExceeded, false, 1));
    }

    #[test]
    fn never_retries_other_codes() {
        let p = RetryPolicy::default();
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            assert!(!p.should_retry(code, true, 1), "{code:?}");
        }
    }

    #[test]
    fn stops_after_max_attempts() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(Code::Unavailable, true, 2));
        assert!(!p.should_retry(Code::Unavailable, true, 3));
        assert!(!RetryPolicy::none().should_retry(Code::Unavailable, true, 1));
    }

    #[test]
    fn backoff_doubles() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
    }
}
