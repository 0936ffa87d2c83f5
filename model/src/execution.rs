//! Domain types of executions, step attempts and their events.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// The state of an execution.
    ExecutionStatus {
        Pending = "pending",
        Queued = "queued",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
    }
);

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed
                | ExecutionStatus::Failed
                | ExecutionStatus::Cancelled
                | ExecutionStatus::TimedOut
        )
    }
}

string_enum!(
    /// The state of one step attempt.
    StepStatus {
        Pending = "pending",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Skipped = "skipped",
        Cancelled = "cancelled",
    }
);

/// An execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub workflow: String,
    pub version: i64,
    pub status: ExecutionStatus,
    pub inputs: Value,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub trigger: Value,
    pub create_time: DateTime<Utc>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub generation: i32,
    pub cancel_requested: bool,
}

/// One attempt of one step: the unit of checkpointing.
#[derive(Debug, Clone, PartialEq)]
pub struct StepAttempt {
    pub execution_id: Uuid,
    pub step_name: String,
    pub attempt: i32,
    pub generation: i32,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    /// A pending retry's start time, or a running durable sleep's end time.
    pub wake_time: Option<DateTime<Utc>>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// Ended because the daemon running it stopped (its status is `cancelled`): not the
    /// step's outcome, and the step gets a new attempt.
    pub interrupted: bool,
}

/// One piece of a running attempt's progress, kept so that a later attempt (after a crash,
/// or a retry) goes on from it instead of doing it again: an `ai/completion` step's model
/// answers and tool results. Numbered by `seq` from 1 per step and generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub step_name: String,
    pub generation: i32,
    pub seq: i32,
    /// The attempt that made it.
    pub attempt: i32,
    pub time: DateTime<Utc>,
    /// What it records (`model`, `tool`), for the action that reads it back.
    pub kind: String,
    /// A model call's model and usage: what budgets and usage reports add up.
    pub usage: Option<ModelUsage>,
    pub body: Value,
}

/// What one model call used.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelUsage {
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// In USD, by the price table; 0 when the model has no price.
    pub cost_usd: f64,
}

/// Model usage added up (an execution's, a tenant's day).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UsageTotal {
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

impl UsageTotal {
    pub fn tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }
}

/// One entry of an execution's event log; `seq` orders them from 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub execution_id: Uuid,
    pub seq: i64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub step_name: Option<String>,
    pub attempt: Option<i32>,
    /// The execution's or step's status after the event.
    pub status: Option<String>,
    pub message: Option<String>,
}

string_enum!(
    /// What an event records.
    EventKind {
        ExecutionStatus = "execution_status",
        StepStatus = "step_status",
        Log = "log",
    }
);

/// What StartExecution stores.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub workflow: String,
    pub version: i64,
    pub inputs: Value,
    pub trigger: Value,
    pub deadline: Option<DateTime<Utc>>,
    /// The daemon that starts driving it at once.
    pub owner: String,
    pub lease_ms: u64,
    pub now: DateTime<Utc>,
    /// Makes the start idempotent within the tenant.
    pub idempotency: Option<IdempotencyKey>,
    /// The tenant's concurrency caps, when it has any.
    pub concurrency: Option<Concurrency>,
    /// The trigger fire it records: the start is refused as [`Created::Existing`] when
    /// that time of that trigger already started an execution.
    pub fire: Option<crate::trigger::Fire>,
}

/// A tenant's concurrency caps as they apply to one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Pending and running executions at once; beyond, new ones are queued.
    pub max_active: u32,
    /// Queued executions at most; beyond, starts are refused.
    pub max_queued: Option<u32>,
}

/// An idempotency key with the fingerprint of the request that used it.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the request (workflow, version, inputs): a reuse must match it.
    pub request_hash: String,
    pub expire_time: DateTime<Utc>,
}

/// What storing a new execution did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Stored, leased by its creator.
    New(Lease),
    /// The idempotency key was used before with the same request: this execution.
    Existing(Uuid),
    /// Stored as queued: the tenant is at its concurrency cap.
    Queued(Uuid),
}

/// A lease on an execution: the fencing token every write must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub execution_id: Uuid,
    pub epoch: i64,
}

/// Changes to the execution row inside a transition.
#[derive(Debug, Clone)]
pub struct ExecutionUpdate {
    pub status: ExecutionStatus,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// Give up the lease (terminal, or waiting long for a timer).
    pub release: bool,
    /// When an released execution needs work again.
    pub wake_time: Option<DateTime<Utc>>,
}

/// One atomic step of an execution's progress: written in one transaction, only while the
/// writer still holds the lease.
#[derive(Debug, Clone, Default)]
pub struct Transition {
    pub attempts: Vec<StepAttempt>,
    pub events: Vec<Event>,
    pub execution: Option<ExecutionUpdate>,
    /// A webhook delivery announcing the execution's end, queued in the same transaction.
    pub webhook: Option<NewDelivery>,
    /// Progress of running attempts (a model's answer, a tool's result), each durable
    /// before the attempt goes on.
    pub checkpoints: Vec<Checkpoint>,
}

impl Transition {
    pub fn is_empty(&self) -> bool {
        self.attempts.is_empty()
            && self.events.is_empty()
            && self.checkpoints.is_empty()
            && self.execution.is_none()
            && self.webhook.is_none()
    }
}

/// The outcome of one queued transition, which the next transition of the same execution
/// can be queued behind before it is known (see [`Order`]).
#[derive(Debug, Clone, Default)]
pub struct Ticket(std::sync::Arc<TicketState>);

#[derive(Debug, Default)]
struct TicketState {
    /// 0: not known yet; 1: committed; 2: not written.
    outcome: std::sync::atomic::AtomicU8,
    settled: tokio::sync::Notify,
}

impl Ticket {
    /// Records the transition's outcome, once it is durable or known to be lost.
    pub fn resolve(&self, committed: bool) {
        let outcome = if committed { 1 } else { 2 };
        self.0
            .outcome
            .store(outcome, std::sync::atomic::Ordering::Release);
        self.0.settled.notify_waiters();
    }

    /// `Some(true)` once committed, `Some(false)` once known not written, else `None`.
    pub fn outcome(&self) -> Option<bool> {
        match self.0.outcome.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            n => Some(n == 1),
        }
    }

    /// Waits for the outcome.
    pub async fn settled(&self) -> bool {
        loop {
            let notified = self.0.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(committed) = self.outcome() {
                return committed;
            }
            notified.await;
        }
    }
}

/// Where a transition stands among its execution's writes. With `after`, it was handed to
/// the store before that earlier transition was durable: it must be committed in a later
/// transaction than that one, and not at all if that one was not written. `ticket`, when
/// set, is resolved with this transition's own outcome.
#[derive(Debug, Clone, Default)]
pub struct Order {
    pub after: Option<Ticket>,
    pub ticket: Option<Ticket>,
}

/// A webhook delivery to queue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub url: String,
    pub secret_name: Option<String>,
    /// The exact JSON body that is signed and sent.
    pub payload: String,
    pub create_time: DateTime<Utc>,
    /// Retries stop after this.
    pub expire_time: DateTime<Utc>,
}

/// Which due deliveries a webhook worker takes: at most `limit`, at most `per_tenant` of any
/// one tenant, none of the tenants in `skip` (those with as many in flight as they may), held
/// for `hold_ms` so that no other worker takes them meanwhile.
#[derive(Debug, Clone)]
pub struct DeliveryClaim {
    pub limit: u32,
    pub per_tenant: u32,
    pub skip: Vec<uuid::Uuid>,
    pub hold_ms: u64,
}

/// A queued or finished webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub execution_id: Uuid,
    pub url: String,
    pub secret_name: Option<String>,
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt: DateTime<Utc>,
    pub last_error: Option<String>,
    pub last_status: Option<i32>,
    pub create_time: DateTime<Utc>,
    pub delivered_time: Option<DateTime<Utc>>,
    pub expire_time: DateTime<Utc>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered {
        status: i32,
    },
    Retry {
        at: DateTime<Utc>,
        error: String,
        status: Option<i32>,
    },
    Failed {
        error: String,
        status: Option<i32>,
    },
}

/// Filters of ListExecutions.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub workflow: Option<String>,
    pub status: Option<ExecutionStatus>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// The most bytes of an error that are kept (in step attempts, executions, events and
/// webhook payloads): a longer one is cut, and says by how much.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Free text as it is stored: U+0000 is written `\u0000`. PostgreSQL cannot store NUL in
/// text; SQLite could, and stores the same, so both stores show the same log line.
pub fn stored_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\\u0000")
    } else {
        text
    }
}

/// An error as it is stored: [`stored_text`], cut to [`MAX_ERROR_BYTES`] (at a character
/// boundary) with a note of how much was cut.
pub fn error_text(text: String) -> String {
    let text = stored_text(text);
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let mut cut = MAX_ERROR_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… [error cut: {} of {} bytes kept]",
        &text[..cut],
        cut,
        text.len()
    )
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn nul_is_escaped_and_long_errors_are_cut_on_a_char_boundary() {
        assert_eq!(stored_text("a\0b".to_owned()), "a\\u0000b");
        assert_eq!(error_text("short".to_owned()), "short");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = error_text(long.clone());
        assert!(cut.len() < MAX_ERROR_BYTES + 100, "{}", cut.len());
        assert!(
            cut.ends_with(&format!(
                "[error cut: {} of {} bytes kept]",
                MAX_ERROR_BYTES,
                long.len()
            )),
            "{}",
            &cut[cut.len() - 80..]
        );
    }
}
