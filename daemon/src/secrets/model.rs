//! Domain types of secrets and audit events.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::crypto::Sealed;

/// A secret's metadata: never its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub kind: String,
    pub field_names: Vec<String>,
    pub key_id: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A secret as stored: metadata and the sealed fields (a JSON object of strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub tenant_id: Uuid,
    pub meta: SecretMeta,
    pub sealed: Sealed,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: Uuid,
    /// `None` for installation-wide actions (key rotation).
    pub tenant_id: Option<Uuid>,
    pub time: DateTime<Utc>,
    /// The key id (or `env:MANTLE_API_TOKEN`) that made the change.
    pub actor: String,
    /// Such as `secret.create`.
    pub action: String,
    /// Such as `secrets/db-password`.
    pub resource: String,
    /// `OK`, or the gRPC status code name of the refusal (`PERMISSION_DENIED`).
    pub result: String,
    pub detail: Option<String>,
}

/// Which audit events a listing returns: those matching every filter given. The default
/// matches every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this actor's events (exact).
    pub actor: Option<String>,
    pub action: Option<ActionMatch>,
    pub result: Option<ResultMatch>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// How an audit event's action is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionMatch {
    /// The action is exactly this.
    Exact(String),
    /// The action starts with this (`secret.`, `mantle.v1.SecretService/`).
    Prefix(String),
}

/// How an audit event's result is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultMatch {
    /// Succeeded: `OK` (and `ok`, as secret changes were recorded before).
    Ok,
    /// Anything but OK.
    Refused,
    /// Exactly this gRPC status code name (`PERMISSION_DENIED`).
    Code(String),
}
