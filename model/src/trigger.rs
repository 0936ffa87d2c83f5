//! Domain types of triggers: what `apply` registers from a workflow file's `triggers:`,
//! and the record of each time one fired.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// A registered trigger, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub workflow: String,
    /// Its identity within the workflow: `cron <schedule>` or `webhook <path>`.
    pub key: String,
    /// `cron` or `webhook`.
    pub kind: String,
    /// The trigger as written in the file (the workflow module's `TriggerSpec`, as JSON).
    pub spec: Value,
    /// The version whose apply registered (or last changed) it.
    pub version: i64,
    pub paused: bool,
    pub last_fire: Option<LastFire>,
    /// How far an email trigger read its folder (`{uid_validity, last_uid}`); null before.
    pub state: Value,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// What the last fire of a trigger did.
#[derive(Debug, Clone, PartialEq)]
pub struct LastFire {
    /// The time it was due (cron) or received (webhook, manual fire).
    pub scheduled_time: DateTime<Utc>,
    pub fire_time: DateTime<Utc>,
    /// The execution it started, when it started one.
    pub execution_id: Option<Uuid>,
    /// `started`, or why nothing started (a refusal's message).
    pub result: String,
}

/// A trigger as a new version declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrigger {
    pub key: String,
    pub kind: String,
    pub spec: Value,
    /// The webhook's path, unique within the tenant.
    pub webhook_path: Option<String>,
}

/// The fire a start records: at most one execution per trigger and scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    pub trigger_id: Uuid,
    pub scheduled_time: DateTime<Utc>,
}
