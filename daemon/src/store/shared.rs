//! What the SQLite and PostgreSQL stores have in common: row types, error translation, and
//! the tenant queries, whose SQL is the same on both (`$n` placeholders work on both, and
//! ids and times are bound as `Uuid` and `DateTime<Utc>`, which each driver maps to its own
//! column type). Queries that differ live in each backend's module.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Error;
use crate::model::scope::ScopeSet;
use crate::model::tenant::{ApiKey, Page, PageRequest, Tenant, TenantRef};

pub(super) const TENANT_COLUMNS: &str = "id, name, display_name, create_time, update_time, \
     max_steps_per_workflow, max_runtime_minutes, allowed_domains, rate_limit_per_minute, \
     max_concurrent_executions, max_queued_executions, webhook_url, webhook_secret, \
     max_cost_usd_per_execution, max_tokens_per_day, default_credentials, retention_seconds";

pub(super) const KEY_SELECT: &str = "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, \
     k.scopes, k.token_hash, k.create_time, k.expire_time, k.revoke_time, k.last_use_time \
     FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id";

#[derive(sqlx::FromRow)]
pub(super) struct TenantRow {
    id: Uuid,
    name: String,
    display_name: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    max_steps_per_workflow: Option<i32>,
    max_runtime_minutes: Option<i32>,
    allowed_domains: Option<String>,
    rate_limit_per_minute: Option<i32>,
    max_concurrent_executions: Option<i32>,
    max_queued_executions: Option<i32>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    max_cost_usd_per_execution: Option<f64>,
    max_tokens_per_day: Option<i64>,
    /// A JSON object of provider to secret name ([`default_credentials_text`]).
    default_credentials: Option<String>,
    retention_seconds: Option<i64>,
}

/// A tenant's default credentials as stored: a JSON object, or NULL when there are none.
pub(super) fn default_credentials_text(
    credentials: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    (!credentials.is_empty())
        .then(|| serde_json::to_string(credentials).expect("a map of strings serializes to JSON"))
}

impl TryFrom<TenantRow> for Tenant {
    type Error = Error;

    fn try_from(r: TenantRow) -> Result<Self, Error> {
        let default_credentials = match r.default_credentials.as_deref() {
            None => Default::default(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                Error::Internal(format!(
                    "tenant {}: stored default_credentials are not a JSON object of strings: {e}",
                    r.name
                ))
            })?,
        };
        Ok(Tenant {
            id: r.id,
            name: r.name,
            display_name: r.display_name,
            create_time: r.create_time,
            update_time: r.update_time,
            settings: crate::model::tenant::TenantSettings {
                max_steps_per_workflow: r.max_steps_per_workflow.map(|n| n.max(0) as u32),
                max_runtime_minutes: r.max_runtime_minutes.map(|n| n.max(0) as u32),
                allowed_domains: r
                    .allowed_domains
                    .map(|d| d.split_whitespace().map(str::to_owned).collect()),
                rate_limit_per_minute: r.rate_limit_per_minute.map(|n| n.max(0) as u32),
                max_concurrent_executions: r.max_concurrent_executions.map(|n| n.max(0) as u32),
                max_queued_executions: r.max_queued_executions.map(|n| n.max(0) as u32),
                webhook_url: r.webhook_url,
                webhook_secret: r.webhook_secret,
                max_cost_usd_per_execution: r.max_cost_usd_per_execution,
                max_tokens_per_day: r.max_tokens_per_day.map(|n| n.max(0).unsigned_abs()),
                default_credentials,
                retention: r
                    .retention_seconds
                    .filter(|n| *n > 0)
                    .map(|n| std::time::Duration::from_secs(n.unsigned_abs())),
            },
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    id: String,
    tenant_id: Option<Uuid>,
    tenant_name: Option<String>,
    name: String,
    scopes: String,
    pub(super) token_hash: Vec<u8>,
    create_time: DateTime<Utc>,
    expire_time: Option<DateTime<Utc>>,
    revoke_time: Option<DateTime<Utc>>,
    last_use_time: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = Error;

    fn try_from(r: KeyRow) -> Result<Self, Error> {
        let scopes = ScopeSet::from_storage(&r.scopes)
            .map_err(|e| Error::Internal(format!("api key {}: stored scopes: {e}", r.id)))?;
        let tenant = match (r.tenant_id, r.tenant_name) {
            (Some(id), Some(name)) => Some(TenantRef { id, name }),
            (None, _) => None,
            (Some(id), None) => {
                return Err(Error::Internal(format!(
                    "api key {}: tenant {id} does not exist",
                    r.id
                )));
            }
        };
        Ok(ApiKey {
            id: r.id,
            tenant,
            name: r.name,
            scopes,
            create_time: r.create_time,
            expire_time: r.expire_time,
            revoke_time: r.revoke_time,
            last_use_time: r.last_use_time,
        })
    }
}

/// The smallest UUIDv7 of the millisecond `t` (or of 1970 for an earlier time): every id
/// taken at `t` or later sorts at or after it, every id taken before sorts before it.
fn first_id_of(t: DateTime<Utc>) -> Uuid {
    let ms = u128::try_from(t.timestamp_millis()).unwrap_or(0) & ((1 << 48) - 1);
    Uuid::from_u128(ms << 80)
}

/// The ids (UUIDv7) that executions created in `[after, before)` can have, as `id >= low`
/// and `id < high`, a second wider on each side for the clock between taking the id and
/// the time. A bound is `None` where none applies: no time given, or one so far out that
/// the second does not fit (any time a request may carry is accepted, never a panic).
pub(super) fn id_range(
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> (Option<Uuid>, Option<Uuid>) {
    let second = chrono::Duration::seconds(1);
    (
        after
            .and_then(|t| t.checked_sub_signed(second))
            .filter(|t| t.timestamp_millis() < 1 << 48)
            .map(first_id_of),
        before
            .and_then(|t| t.checked_add_signed(second))
            .filter(|t| t.timestamp_millis() < 1 << 48)
            .map(first_id_of),
    )
}

/// Translates a driver error; `what` names the resource for NotFound/AlreadyExists.
/// Errors that may pass (the database is away, busy, or rolled the transaction back to
/// resolve a conflict) are `Unavailable`, worth another try; any other database error is
/// `Internal`, and trying the same again will fail the same way.
pub(super) fn map_err(what: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| match &err {
        sqlx::Error::RowNotFound => Error::NotFound(what()),
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::AlreadyExists(what()),
        sqlx::Error::Database(db) if is_transient(db.as_ref()) => {
            Error::Unavailable(err.to_string())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Error::Unavailable(err.to_string()),
        _ => Error::Internal(err.to_string()),
    }
}

/// Whether a database error may pass if the same is tried again.
fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // SQLSTATE classes: connection exception, transaction rollback (serialization
        // failure, deadlock), insufficient resources, operator intervention (shutdown,
        // cannot connect now, statement timeout), system error.
        return ["08", "40", "53", "57", "58"]
            .iter()
            .any(|class| pg.code().starts_with(class));
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Primary result codes (an extended code keeps its primary in the low byte): busy,
        // locked, I/O error, full, cannot open.
        return db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14));
    }
    false
}

/// Splits `limit + 1` fetched rows into a page, with the cursor taken from the last item.
pub(super) fn into_page<T>(
    mut items: Vec<T>,
    page: &PageRequest,
    cursor: impl Fn(&T) -> String,
) -> Page<T> {
    let limit = page.limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next_cursor }
}

pub(super) const VERSION_COLUMNS: &str =
    "tenant_id, name, version, content_hash, description, spec, source, create_time";

#[derive(sqlx::FromRow)]
pub(super) struct VersionRow {
    tenant_id: Uuid,
    name: String,
    version: i64,
    content_hash: String,
    description: String,
    spec: String,
    source: String,
    create_time: DateTime<Utc>,
}

impl From<VersionRow> for crate::model::definition::Definition {
    fn from(r: VersionRow) -> Self {
        crate::model::definition::Definition {
            tenant_id: r.tenant_id,
            name: r.name,
            version: r.version,
            content_hash: r.content_hash,
            description: r.description,
            spec_json: r.spec,
            source: r.source,
            create_time: r.create_time,
        }
    }
}

/// What `_sqlx_migrations` records of the migrations applied: version, description, time.
pub(super) const APPLIED_MIGRATIONS: &str =
    "SELECT version, description, installed_on FROM _sqlx_migrations WHERE success";

/// Joins the migrations the binary knows with those the database recorded as applied; those
/// the binary does not know (a newer binary applied them) come last, by version.
pub(super) fn migration_status(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, String, DateTime<Utc>)],
) -> Vec<super::MigrationStatus> {
    let mut status: Vec<super::MigrationStatus> = migrator
        .iter()
        .map(|m| super::MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied_at: applied
                .iter()
                .find(|(v, _, _)| *v == m.version)
                .map(|(_, _, at)| *at),
            known: true,
        })
        .collect();
    let mut unknown: Vec<super::MigrationStatus> = applied
        .iter()
        .filter(|(v, _, _)| !migrator.iter().any(|m| m.version == *v))
        .map(|(version, description, at)| super::MigrationStatus {
            version: *version,
            description: description.clone(),
            applied_at: Some(*at),
            known: false,
        })
        .collect();
    unknown.sort_by_key(|m| m.version);
    status.extend(unknown);
    status
}

/// A failed migration run as a store error: sqlx's refusal of a database that has a
/// migration this binary does not know (another binary applied it meanwhile) as
/// [`Error::NewerSchema`](super::Error::NewerSchema), anything else as it is.
pub(super) fn migrate_error(
    backend: super::Backend,
    migrator: &sqlx::migrate::Migrator,
    err: sqlx::migrate::MigrateError,
) -> super::Error {
    if let sqlx::migrate::MigrateError::VersionMissing(version) = err {
        let mut status = migration_status(migrator, &[]);
        status.push(super::MigrationStatus {
            version,
            description: "applied by a newer mantle".to_owned(),
            applied_at: None,
            known: false,
        });
        if let Err(newer) = super::refuse_newer_schema(&status) {
            return newer;
        }
    }
    super::Error::Internal(format!(
        "migrating the {} database: {err}",
        backend.as_str()
    ))
}

pub(super) const EXECUTION_COLUMNS: &str = "id, tenant_id, workflow, version, status, inputs, \
     outputs, error, trigger_info, create_time, start_time, end_time, deadline, generation, \
     cancel_requested";

pub(super) const ATTEMPT_COLUMNS: &str = "execution_id, step_name, attempt, generation, status, \
     output, error, wake_time, start_time, end_time, interrupted";

/// [`EXECUTION_COLUMNS`] without inputs, outputs and trigger (a BASIC listing).
pub(super) const EXECUTION_BASIC_COLUMNS: &str = "id, tenant_id, workflow, version, status, \
     '{}' AS inputs, CAST(NULL AS TEXT) AS outputs, error, '{}' AS trigger_info, create_time, \
     start_time, end_time, deadline, generation, cancel_requested";

/// [`ATTEMPT_COLUMNS`] without the output (a BASIC listing).
pub(super) const ATTEMPT_BASIC_COLUMNS: &str = "execution_id, step_name, attempt, generation, status, \
     CAST(NULL AS TEXT) AS output, error, wake_time, start_time, end_time, interrupted";

/// Where an attempt listing's page starts: after the attempt at this place in the order
/// (not started yet, start time, step, attempt), written as a page cursor.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AttemptCursor {
    pub(super) unstarted: bool,
    pub(super) start: DateTime<Utc>,
    pub(super) step: String,
    pub(super) attempt: i32,
}

impl AttemptCursor {
    /// Stands for "not started" in the order, which sorts those last anyway.
    pub(super) fn epoch() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
    }

    pub(super) fn of(a: &crate::model::execution::StepAttempt) -> AttemptCursor {
        AttemptCursor {
            unstarted: a.start_time.is_none(),
            start: a.start_time.unwrap_or_else(Self::epoch),
            step: a.step_name.clone(),
            attempt: a.attempt,
        }
    }

    pub(super) fn text(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            u8::from(self.unstarted),
            self.start
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            self.attempt,
            self.step
        )
    }

    pub(super) fn parse(text: &str) -> Result<AttemptCursor, Error> {
        let bad = || Error::NotFound("page".to_owned());
        let mut parts = text.splitn(4, '|');
        let mut next = || parts.next().ok_or_else(bad);
        let unstarted = match next()? {
            "0" => false,
            "1" => true,
            _ => return Err(bad()),
        };
        let start = DateTime::parse_from_rfc3339(next()?)
            .map_err(|_| bad())?
            .with_timezone(&Utc);
        let attempt = next()?.parse().map_err(|_| bad())?;
        let step = next()?.to_owned();
        Ok(AttemptCursor {
            unstarted,
            start,
            step,
            attempt,
        })
    }
}

/// The order of an execution's attempts: as they started, those not started yet last. `$3`
/// is [`AttemptCursor::epoch`].
pub(super) const ATTEMPT_ORDER: &str =
    "(start_time IS NULL), COALESCE(start_time, $3), step_name, attempt";

#[derive(sqlx::FromRow)]
pub(super) struct ExecutionRow {
    id: Uuid,
    tenant_id: Uuid,
    workflow: String,
    version: i64,
    status: String,
    inputs: String,
    outputs: Option<String>,
    error: Option<String>,
    trigger_info: String,
    create_time: DateTime<Utc>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    deadline: Option<DateTime<Utc>>,
    generation: i32,
    cancel_requested: bool,
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("stored {what} is not JSON: {e}")))
}

impl TryFrom<ExecutionRow> for crate::model::execution::Execution {
    type Error = Error;

    fn try_from(r: ExecutionRow) -> Result<Self, Error> {
        use crate::model::execution::ExecutionStatus;
        Ok(crate::model::execution::Execution {
            status: ExecutionStatus::parse(&r.status).ok_or_else(|| {
                Error::Internal(format!("execution {}: unknown status {:?}", r.id, r.status))
            })?,
            inputs: parse_json("inputs", &r.inputs)?,
            outputs: r
                .outputs
                .as_deref()
                .map(|o| parse_json("outputs", o))
                .transpose()?,
            trigger: parse_json("trigger", &r.trigger_info)?,
            id: r.id,
            tenant_id: r.tenant_id,
            workflow: r.workflow,
            version: r.version,
            error: r.error,
            create_time: r.create_time,
            start_time: r.start_time,
            end_time: r.end_time,
            deadline: r.deadline,
            generation: r.generation,
            cancel_requested: r.cancel_requested,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AttemptRow {
    execution_id: Uuid,
    step_name: String,
    attempt: i32,
    generation: i32,
    status: String,
    output: Option<String>,
    error: Option<String>,
    wake_time: Option<DateTime<Utc>>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    interrupted: bool,
}

impl TryFrom<AttemptRow> for crate::model::execution::StepAttempt {
    type Error = Error;

    fn try_from(r: AttemptRow) -> Result<Self, Error> {
        use crate::model::execution::StepStatus;
        Ok(crate::model::execution::StepAttempt {
            status: StepStatus::parse(&r.status).ok_or_else(|| {
                Error::Internal(format!(
                    "step {}: unknown status {:?}",
                    r.step_name, r.status
                ))
            })?,
            output: r
                .output
                .as_deref()
                .map(|o| parse_json("step output", o))
                .transpose()?,
            execution_id: r.execution_id,
            step_name: r.step_name,
            attempt: r.attempt,
            generation: r.generation,
            error: r.error,
            wake_time: r.wake_time,
            start_time: r.start_time,
            end_time: r.end_time,
            interrupted: r.interrupted,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    execution_id: Uuid,
    seq: i64,
    time: DateTime<Utc>,
    kind: String,
    step_name: Option<String>,
    attempt: Option<i32>,
    status: Option<String>,
    message: Option<String>,
}

impl TryFrom<EventRow> for crate::model::execution::Event {
    type Error = Error;

    fn try_from(r: EventRow) -> Result<Self, Error> {
        Ok(crate::model::execution::Event {
            kind: crate::model::execution::EventKind::parse(&r.kind)
                .ok_or_else(|| Error::Internal(format!("unknown event kind {:?}", r.kind)))?,
            execution_id: r.execution_id,
            seq: r.seq,
            time: r.time,
            step_name: r.step_name,
            attempt: r.attempt,
            status: r.status,
            message: r.message,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct CheckpointRow {
    step_name: String,
    generation: i32,
    seq: i32,
    attempt: i32,
    time: DateTime<Utc>,
    kind: String,
    model: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    body: String,
}

impl TryFrom<CheckpointRow> for crate::model::execution::Checkpoint {
    type Error = Error;

    fn try_from(r: CheckpointRow) -> Result<Self, Error> {
        Ok(crate::model::execution::Checkpoint {
            body: serde_json::from_str(&r.body)
                .map_err(|e| Error::Internal(format!("checkpoint {}: {e}", r.seq)))?,
            usage: r.model.map(|model| crate::model::execution::ModelUsage {
                model,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: r.cost_usd,
            }),
            step_name: r.step_name,
            generation: r.generation,
            seq: r.seq,
            attempt: r.attempt,
            time: r.time,
            kind: r.kind,
        })
    }
}

pub(super) const SECRET_COLUMNS: &str =
    "tenant_id, name, type, field_names, key_id, nonce, ciphertext, create_time, update_time";

#[derive(sqlx::FromRow)]
pub(super) struct SecretRow {
    tenant_id: Uuid,
    name: String,
    #[sqlx(rename = "type")]
    kind: String,
    field_names: String,
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<SecretRow> for crate::model::secret::StoredSecret {
    fn from(r: SecretRow) -> Self {
        crate::model::secret::StoredSecret {
            tenant_id: r.tenant_id,
            meta: crate::model::secret::SecretMeta {
                name: r.name,
                kind: r.kind,
                field_names: r
                    .field_names
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                key_id: r.key_id.clone(),
                create_time: r.create_time,
                update_time: r.update_time,
            },
            sealed: crate::model::secret::Sealed {
                key_id: r.key_id,
                nonce: r.nonce,
                ciphertext: r.ciphertext,
            },
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    time: DateTime<Utc>,
    actor: String,
    action: String,
    resource: String,
    result: String,
    detail: Option<String>,
}

impl From<AuditRow> for crate::model::tenant::AuditEvent {
    fn from(r: AuditRow) -> Self {
        crate::model::tenant::AuditEvent {
            id: r.id,
            tenant_id: r.tenant_id,
            time: r.time,
            actor: r.actor,
            action: r.action,
            resource: r.resource,
            // Secret changes were recorded as `ok` before they were recorded as `OK`.
            result: if r.result == "ok" {
                "OK".to_owned()
            } else {
                r.result
            },
            detail: r.detail,
        }
    }
}

/// The values an audit filter binds, as [`AUDIT_MATCHING`] reads them (`$3`..`$8`).
pub(super) struct AuditBinds<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    pub prefix: Option<&'a str>,
    pub code: Option<&'a str>,
    /// `Some(true)`: only OK; `Some(false)`: only refusals.
    pub ok: Option<bool>,
    pub since: Option<DateTime<Utc>>,
}

impl<'a> AuditBinds<'a> {
    pub(super) fn of(f: &'a crate::model::tenant::AuditFilter) -> Self {
        use crate::model::tenant::{ActionMatch, ResultMatch};
        let (action, prefix) = match &f.action {
            None => (None, None),
            Some(ActionMatch::Exact(a)) => (Some(a.as_str()), None),
            Some(ActionMatch::Prefix(p)) => (None, Some(p.as_str())),
        };
        let (code, ok) = match &f.result {
            None => (None, None),
            Some(ResultMatch::Ok) => (None, Some(true)),
            Some(ResultMatch::Refused) => (None, Some(false)),
            Some(ResultMatch::Code(c)) => (Some(c.as_str()), None),
        };
        AuditBinds {
            actor: f.actor.as_deref(),
            action,
            prefix,
            code,
            ok,
            since: f.since,
        }
    }
}

/// The conditions of an audit listing: `$1` the tenant (NULL: every one), `$2` the cursor
/// (events before it), then [`AuditBinds`] in the order of its fields. A prefix is compared
/// with `substr`, not `LIKE` (whose `_` and `%` would match more, and which SQLite compares
/// without case). `ok` is how secret changes were recorded before `OK`.
pub(super) const AUDIT_MATCHING: &str = "($1 IS NULL OR tenant_id = $1) \
     AND ($2 IS NULL OR id < $2) AND ($3 IS NULL OR actor = $3) \
     AND ($4 IS NULL OR action = $4) AND ($5 IS NULL OR substr(action, 1, length($5)) = $5) \
     AND ($6 IS NULL OR result = $6) AND ($7 IS NULL OR (result IN ('OK', 'ok')) = $7) \
     AND ($8 IS NULL OR time >= $8)";

#[derive(sqlx::FromRow)]
pub(super) struct DeliveryRow {
    id: Uuid,
    tenant_id: Uuid,
    execution_id: Uuid,
    url: String,
    secret_name: Option<String>,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt: DateTime<Utc>,
    last_error: Option<String>,
    last_status: Option<i32>,
    create_time: DateTime<Utc>,
    delivered_time: Option<DateTime<Utc>>,
    expire_time: DateTime<Utc>,
}

impl From<DeliveryRow> for crate::model::execution::Delivery {
    fn from(r: DeliveryRow) -> Self {
        crate::model::execution::Delivery {
            id: r.id,
            tenant_id: r.tenant_id,
            execution_id: r.execution_id,
            url: r.url,
            secret_name: r.secret_name,
            payload: r.payload,
            status: r.status,
            attempts: r.attempts,
            next_attempt: r.next_attempt,
            last_error: r.last_error,
            last_status: r.last_status,
            create_time: r.create_time,
            delivered_time: r.delivered_time,
            expire_time: r.expire_time,
        }
    }
}

pub(super) const DELIVERY_COLUMNS: &str = "id, tenant_id, execution_id, url, secret_name, payload, \
     status, attempts, next_attempt, last_error, last_status, create_time, delivered_time, expire_time";

/// The columns [`TriggerRow`] reads.
pub(super) const TRIGGER_COLUMNS: &str = "id, tenant_id, workflow, key, kind, spec, version, \
     paused, last_scheduled_time, last_fire_time, last_execution_id, last_result, state, \
     create_time, update_time";

#[derive(sqlx::FromRow)]
pub(super) struct TriggerRow {
    id: Uuid,
    tenant_id: Uuid,
    workflow: String,
    key: String,
    kind: String,
    spec: String,
    version: i64,
    paused: bool,
    last_scheduled_time: Option<DateTime<Utc>>,
    last_fire_time: Option<DateTime<Utc>>,
    last_execution_id: Option<Uuid>,
    last_result: Option<String>,
    state: Option<String>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<TriggerRow> for crate::model::trigger::Trigger {
    type Error = Error;

    fn try_from(r: TriggerRow) -> Result<Self, Error> {
        use crate::model::trigger::LastFire;
        let last_fire = match (r.last_scheduled_time, r.last_fire_time) {
            (Some(scheduled_time), Some(fire_time)) => Some(LastFire {
                scheduled_time,
                fire_time,
                execution_id: r.last_execution_id,
                result: r.last_result.unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(crate::model::trigger::Trigger {
            id: r.id,
            tenant_id: r.tenant_id,
            workflow: r.workflow,
            key: r.key,
            kind: r.kind,
            spec: parse_json("spec", &r.spec)?,
            version: r.version,
            paused: r.paused,
            last_fire,
            state: match r.state {
                Some(text) => parse_json("trigger state", &text)?,
                None => serde_json::Value::Null,
            },
            create_time: r.create_time,
            update_time: r.update_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_range_bounds_uuidv7_ids_and_takes_any_time() {
        let t = DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            0,
        ));
        let (low, high) = id_range(Some(t), Some(t + chrono::Duration::milliseconds(1)));
        assert!(low.unwrap() <= id && id < high.unwrap());
        let (low, _) = id_range(Some(t + chrono::Duration::seconds(2)), None);
        assert!(id < low.unwrap());
        // The extremes of what a timestamp may hold: no bound, no panic.
        assert_eq!(
            id_range(
                Some(DateTime::<Utc>::MIN_UTC),
                Some(DateTime::<Utc>::MAX_UTC)
            ),
            (None, None)
        );
        let far = DateTime::from_timestamp(600_000_000_000, 0).unwrap(); // year ~20983
        assert_eq!(id_range(Some(far), Some(far)), (None, None));
        // Before 1970: no id is that old.
        let old = DateTime::parse_from_rfc3339("1900-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(id_range(None, Some(old)).1, Some(Uuid::nil()));
    }
}
