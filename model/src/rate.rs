//! The rate limit's arithmetic (GCRA): a pure function of the stored theoretical arrival
//! time, which the store runs inside the transaction that updates it.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What a check decided, with what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests per minute.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the next request is allowed.
    pub retry_after: Duration,
}

/// The GCRA step: given the stored theoretical arrival time, decide at `now`.
/// Returns the decision and the new TAT when allowed.
pub fn gcra(
    limit: u32,
    tat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (Decision, Option<DateTime<Utc>>) {
    let period = chrono::Duration::milliseconds(60_000 / i64::from(limit.max(1)));
    let burst = period * (limit.max(1) as i32 - 1);
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat + period;
    let allow_at = new_tat - period - burst;
    let millis = |d: chrono::Duration| Duration::from_millis(d.num_milliseconds().max(0) as u64);
    if allow_at > now {
        let decision = Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset: millis(tat - now),
            retry_after: millis(allow_at - now),
        };
        return (decision, None);
    }
    let used = ((new_tat - now).num_milliseconds() + period.num_milliseconds() - 1)
        / period.num_milliseconds().max(1);
    let decision = Decision {
        allowed: true,
        limit,
        remaining: (i64::from(limit) - used).max(0) as u32,
        reset: millis(new_tat - now),
        retry_after: Duration::ZERO,
    };
    (decision, Some(new_tat))
}
