//! Domain types of tenants and API keys, shared by the tenancy service, auth and the store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::scope::ScopeSet;

/// Identifier of the tenant `default`, created by the first migration.
pub const DEFAULT_TENANT_ID: Uuid = Uuid::from_u128(1);
/// Name of the tenant every single-tenant installation uses.
pub const DEFAULT_TENANT_NAME: &str = "default";

/// A tenant: an isolated namespace for definitions, executions and secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub settings: TenantSettings,
}

/// A tenant's limits. `None` leaves only the installation's global caps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSettings {
    /// Most steps a workflow of the tenant may have (checked at apply and at start).
    pub max_steps_per_workflow: Option<u32>,
    /// Longest an execution may run, in minutes.
    pub max_runtime_minutes: Option<u32>,
    /// Hosts `http/request` may reach: exact names or `*.domain` (subdomains only).
    pub allowed_domains: Option<Vec<String>>,
    /// Mutating requests per minute (a minute's worth may come at once).
    pub rate_limit_per_minute: Option<u32>,
    /// Executions running (or about to) at once, across all daemons; more wait queued.
    pub max_concurrent_executions: Option<u32>,
    /// Executions waiting queued at most; more are refused.
    pub max_queued_executions: Option<u32>,
    /// Where terminal executions are announced (a signed JSON POST).
    pub webhook_url: Option<String>,
    /// The tenant's secret whose `key` field signs webhook deliveries.
    pub webhook_secret: Option<String>,
    /// Most an execution may spend on model calls (`ai/completion`), in US dollars: finite
    /// and positive.
    pub max_cost_usd_per_execution: Option<f64>,
    /// Model tokens (input and output) the tenant may use per UTC day, across all
    /// executions and daemons.
    pub max_tokens_per_day: Option<u64>,
    /// The secret an `ai/completion` step uses when it names no `credential`, by provider
    /// (one of [`AI_PROVIDERS`]). The secret need not exist yet.
    pub default_credentials: BTreeMap<String, String>,
    /// How long finished executions are kept, from their end; `None`: the installation's
    /// default.
    pub retention: Option<std::time::Duration>,
}

/// The model providers `default_credentials` may name.
pub const AI_PROVIDERS: &[&str] = &["openai", "anthropic"];

/// The id and name of a tenant, as carried by callers and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRef {
    pub id: Uuid,
    pub name: String,
}

impl From<&Tenant> for TenantRef {
    fn from(t: &Tenant) -> Self {
        TenantRef {
            id: t.id,
            name: t.name.clone(),
        }
    }
}

/// An API key as stored, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Random identifier; also the visible part of the token.
    pub id: String,
    /// The tenant the key acts on; `None` for operator keys.
    pub tenant: Option<TenantRef>,
    pub name: String,
    pub scopes: ScopeSet,
    pub create_time: DateTime<Utc>,
    pub expire_time: Option<DateTime<Utc>>,
    pub revoke_time: Option<DateTime<Utc>>,
    pub last_use_time: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// Whether the key may authenticate a request at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoke_time.is_none() && self.expire_time.is_none_or(|t| t > now)
    }
}

/// An API key about to be stored.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: Option<Uuid>,
    pub name: String,
    pub scopes: ScopeSet,
    pub token_hash: [u8; 32],
    pub create_time: DateTime<Utc>,
    pub expire_time: Option<DateTime<Utc>>,
}

/// The changes an update applies; `None` leaves a field as it is, `Some(None)` clears a
/// setting (`Some` of an empty map clears `default_credentials`: the map is replaced whole).
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub display_name: Option<String>,
    pub max_steps_per_workflow: Option<Option<u32>>,
    pub max_runtime_minutes: Option<Option<u32>>,
    pub allowed_domains: Option<Option<Vec<String>>>,
    pub rate_limit_per_minute: Option<Option<u32>>,
    pub max_concurrent_executions: Option<Option<u32>>,
    pub max_queued_executions: Option<Option<u32>>,
    pub webhook_url: Option<Option<String>>,
    pub webhook_secret: Option<Option<String>>,
    pub max_cost_usd_per_execution: Option<Option<f64>>,
    pub max_tokens_per_day: Option<Option<u64>>,
    pub default_credentials: Option<BTreeMap<String, String>>,
    pub retention: Option<Option<std::time::Duration>>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A validated page request: at most `limit` items after `after` (exclusive).
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

/// How much of each item a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Without the item's large parts (inputs, outputs, payloads).
    #[default]
    Basic,
    /// Each item whole.
    Full,
}

impl<T> Page<T> {
    /// A page with nothing on it, and nothing after it.
    pub fn empty() -> Page<T> {
        Page {
            items: Vec::new(),
            next_cursor: None,
        }
    }
}

/// How many rows a page of at most `limit` takes ([`fitting`]), from their payload sizes as
/// the database measured them (`bytes`, in order), each plus `fixed` bytes for the fields
/// of known size.
pub fn rows_fitting(bytes: impl IntoIterator<Item = i64>, fixed: usize, limit: u32) -> usize {
    fitting(
        bytes
            .into_iter()
            .map(|n| n.max(0).unsigned_abs() as usize + fixed),
        limit as usize,
    )
}

/// A page of a listing ends once its items reach this many bytes (it holds at least one),
/// so that an answer fits a gRPC client's default limit of 4 MiB.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// How many of the items whose sizes are `sizes` (in order) a page of at most `limit`
/// items takes: at least one, then as many as stay within [`MAX_PAGE_BYTES`].
pub fn fitting(sizes: impl IntoIterator<Item = usize>, limit: usize) -> usize {
    let mut total = 0usize;
    let mut taken = 0;
    for size in sizes.into_iter().take(limit) {
        if taken > 0 && total.saturating_add(size) > MAX_PAGE_BYTES {
            break;
        }
        total = total.saturating_add(size);
        taken += 1;
    }
    taken
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

/// Whether `name` is a valid tenant name: 1 to 63 lowercase letters, digits and `-`,
/// starting with a letter, not ending with `-`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_byte_budget_but_holds_one_item() {
        assert_eq!(fitting([10, 10, 10], 2), 2);
        assert_eq!(fitting([MAX_PAGE_BYTES + 1, 10], 50), 1);
        assert_eq!(fitting([MAX_PAGE_BYTES / 2, MAX_PAGE_BYTES / 2, 1], 50), 2);
        assert_eq!(fitting(Vec::new(), 50), 0);
    }
}
