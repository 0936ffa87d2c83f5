//! The production store: PostgreSQL, shared by any number of daemon replicas.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, Pool, Postgres};
use uuid::Uuid;

use super::ExecutionStore;
use super::shared::{
    ATTEMPT_COLUMNS, AttemptRow, AuditRow, DELIVERY_COLUMNS, DeliveryRow, EXECUTION_COLUMNS,
    EventRow, ExecutionRow, KEY_SELECT, KeyRow, SECRET_COLUMNS, SecretRow, TENANT_COLUMNS,
    TenantRow, VERSION_COLUMNS, VersionRow, into_page, map_err,
};
use super::{Backend, Error, MigrationStatus, OpenOptions, Result, Store, redact_url};
use crate::model::execution::{
    Created, Delivery, Event, Execution, ExecutionFilter, Lease, NewExecution, Order, StepAttempt,
    Transition,
};
use crate::model::tenant::{ApiKey, NewApiKey, Page, PageRequest, Tenant, TenantUpdate, View};

mod writer;

/// The store the shared implementations of `store/common/` are compiled for here.
type ThisStore = PgStore;
/// Its database, for the shared functions that take a connection.
type Db = sqlx::Postgres;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/audit.rs"]
mod audit;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/definitions.rs"]
mod definitions;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/deliveries.rs"]
mod deliveries;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/executions.rs"]
mod executions;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/retention.rs"]
mod retention;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/secrets.rs"]
mod secrets;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/tenants.rs"]
mod tenants;
#[allow(clippy::duplicate_mod)] // once per backend, by design
#[path = "../common/triggers.rs"]
mod triggers;

/// The session lock that lets one daemon at a time migrate (any number that is Mantle's own;
/// sqlx's migrator takes another one inside it).
const MIGRATION_LOCK: i64 = 0x4d41_4e54_4c45_4d49;

/// A transaction (see `common/retention.rs`).
const BEGIN_WRITE: &str = "BEGIN";
/// Locks the rows a `SELECT` read until the transaction ends.
const LOCK_ROWS: &str = " FOR UPDATE";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: Pool<Postgres>,
    /// The group-commit writers (see [`writer`]).
    writers: super::Writers,
}

/// Connections of the checkpoint writers, taken from `max_connections`: two (one while
/// the other waits for its commit), or one when `max_connections` is under 4. More writers
/// would only make each group commit smaller. The pool keeps the rest.
fn writer_connections(max_connections: u32) -> u32 {
    if max_connections < 4 { 1 } else { 2 }
}

impl PgStore {
    /// Connects, retrying an unreachable server until `options.connect_timeout` has passed.
    pub async fn connect(options: &OpenOptions) -> Result<Self> {
        let shown = redact_url(&options.url);
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| Error::Config(format!("database URL {shown:?}: {e}")))?;
        let writers = writer_connections(options.max_connections);
        let pool_options = PgPoolOptions::new()
            .max_connections(options.max_connections.saturating_sub(writers).max(1))
            // No ping before every query: it doubles the round trips of a checkpoint. A
            // broken connection fails the query itself, which the callers retry.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Duration::from_millis(200);
        // Probe with a single connection: it fails fast, where a pool would keep retrying
        // for its whole acquire timeout.
        loop {
            match PgConnection::connect_with(&connect).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    let writer = writer::start(connect.clone(), writers as usize);
                    return Ok(PgStore {
                        pool: pool_options.connect_lazy_with(connect),
                        writers: super::Writers::new(writer, false),
                    });
                }
                Err(err) => {
                    let (cause, refusal) = connect_failure(&err);
                    if let Some(hint) = refusal {
                        return Err(Error::Config(format!(
                            "database {shown} refused the connection: {cause} ({hint})"
                        )));
                    }
                    let now = tokio::time::Instant::now();
                    if now + backoff > deadline {
                        return Err(Error::Unavailable(format!(
                            "could not connect to {shown} within {}s: {cause}",
                            options.connect_timeout.as_secs()
                        )));
                    }
                    tracing::warn!(database = %shown, error = %cause, "database not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Why a connection failed, in one line, and — when waiting cannot help (a missing role
/// or database, a wrong password, a rejected TLS setup) — what to fix.
fn connect_failure(err: &sqlx::Error) -> (String, Option<&'static str>) {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match code.as_ref() {
                "28P01" => Some("check the password in MANTLE_DATABASE_URL"),
                "3D000" => Some(
                    "create the database (CREATE DATABASE name OWNER role) or fix its name in \
                     MANTLE_DATABASE_URL",
                ),
                c if c.starts_with("28") => Some(
                    "create the role (CREATE ROLE name LOGIN PASSWORD '…'), fix the user in \
                     MANTLE_DATABASE_URL, or let pg_hba.conf admit it",
                ),
                _ => None,
            };
            // The server's message alone: sqlx's rendering adds "error returned from
            // database:" and the server's source line ("at line 768").
            (db.message().to_owned(), hint)
        }
        sqlx::Error::Configuration(_) => (
            err.to_string(),
            Some("check the parameters of MANTLE_DATABASE_URL"),
        ),
        sqlx::Error::Tls(_) => (
            err.to_string(),
            Some("check sslmode and the certificates in MANTLE_DATABASE_URL"),
        ),
        _ => (err.to_string(), None),
    }
}

impl PgStore {
    /// PostgreSQL's autovacuum reuses and returns the space of deleted rows itself.
    async fn reclaim_space_backend(&self, _max_pages: u32) -> Result<u64> {
        Ok(0)
    }

    async fn take_rate_limit_backend(
        &self,
        tenant_id: Uuid,
        limit: u32,
    ) -> Result<crate::model::rate::Decision> {
        let what = || format!("rate limit of tenant {tenant_id}");
        let mut tx = self.pool.begin().await.map_err(map_err(what))?;
        sqlx::query(
            "INSERT INTO rate_limits (tenant_id, tat) VALUES ($1, now() - interval '1 hour') \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err(what))?;
        let (tat, now): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "SELECT tat, clock_timestamp() FROM rate_limits WHERE tenant_id = $1 FOR UPDATE",
        )
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err(what))?;
        let (decision, new_tat) = crate::model::rate::gcra(limit, Some(tat), now);
        if let Some(new_tat) = new_tat {
            sqlx::query("UPDATE rate_limits SET tat = $2 WHERE tenant_id = $1")
                .bind(tenant_id)
                .bind(new_tat)
                .execute(&mut *tx)
                .await
                .map_err(map_err(what))?;
        }
        tx.commit().await.map_err(map_err(what))?;
        Ok(decision)
    }
}

#[async_trait::async_trait]
impl ExecutionStore for PgStore {
    async fn promote_queued(&self, global_max: Option<u32>) -> Result<u64> {
        self.promote_queued_shared(global_max).await
    }

    async fn count_queued(&self) -> Result<Vec<(Uuid, i64)>> {
        self.count_queued_shared().await
    }

    async fn create_execution(&self, e: &NewExecution) -> Result<Created> {
        let expires = Utc::now() + chrono::Duration::milliseconds(e.lease_ms as i64);
        self.create_execution_shared(e, expires).await
    }

    /// Group commit: the transition joins whatever else is queued for the writers.
    async fn queue_transition(
        &self,
        lease: Lease,
        t: std::sync::Arc<Transition>,
        order: Order,
    ) -> Result<()> {
        self.writers
            .submit_in(super::Work::Transition(lease, t), order)
            .await
    }

    async fn load_execution(&self, id: Uuid) -> Result<(Execution, Vec<StepAttempt>, i64)> {
        self.load_execution_shared(id).await
    }

    async fn claim_executions(&self, owner: &str, lease_ms: u64, limit: u32) -> Result<Vec<Lease>> {
        // clock_timestamp(), not now(): now() is the statement's start, and a claim that
        // waited for locks would hand out a lease that is already running out.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE executions SET owner = $1, lease_epoch = lease_epoch + 1, \
             lease_expires = clock_timestamp() + $2 * interval '1 millisecond', wake_time = NULL \
             WHERE id IN (SELECT id FROM executions WHERE status IN ('pending', 'running') \
             AND (owner IS NULL OR lease_expires < now()) \
             AND (wake_time IS NULL OR wake_time <= now() OR cancel_requested) \
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, lease_epoch",
        )
        .bind(owner)
        .bind(lease_ms as f64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| "executions".to_owned()))?;
        Ok(rows
            .into_iter()
            .map(|(execution_id, epoch)| Lease {
                execution_id,
                epoch,
            })
            .collect())
    }

    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease_ms: u64,
    ) -> Result<Vec<(Uuid, bool)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            // Rows locked in id order, as the checkpoint writers lock them: no deadlock. The
            // expiry is taken when the row is updated (clock_timestamp()), so a renewal that
            // waited for a lock still grants a whole lease.
            "UPDATE executions SET lease_expires = clock_timestamp() + $2 * interval '1 millisecond' \
             WHERE id IN (SELECT id FROM executions WHERE id = ANY($3) AND owner = $1 \
             ORDER BY id FOR NO KEY UPDATE) \
             RETURNING id, cancel_requested",
        )
        .bind(owner)
        .bind(lease_ms as f64)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| "executions".to_owned()))
    }

    async fn release_lease(&self, lease: Lease) -> Result<()> {
        self.release_lease_shared(lease).await
    }

    async fn request_cancel(&self, tenant_id: Uuid, id: Uuid) -> Result<Execution> {
        self.request_cancel_shared(tenant_id, id).await
    }

    async fn request_cancel_matching(
        &self,
        tenant_id: Uuid,
        filter: &ExecutionFilter,
        limit: u32,
    ) -> Result<Vec<Uuid>> {
        self.request_cancel_matching_shared(tenant_id, filter, limit)
            .await
    }

    async fn retry_execution(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Lease> {
        let expires = Utc::now() + chrono::Duration::milliseconds(lease_ms as i64);
        self.retry_execution_shared(tenant_id, id, owner, expires)
            .await
    }

    async fn get_execution(&self, tenant_id: Uuid, id: Uuid) -> Result<Execution> {
        self.get_execution_shared(tenant_id, id).await
    }

    async fn list_executions(
        &self,
        tenant_id: Uuid,
        filter: &ExecutionFilter,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<Execution>> {
        self.list_executions_shared(tenant_id, filter, page, view)
            .await
    }

    async fn list_attempts(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<StepAttempt>> {
        self.list_attempts_shared(tenant_id, id, page, view).await
    }

    async fn last_event_seqs(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>> {
        sqlx::query_as(
            "SELECT execution_id, MAX(seq) FROM execution_events \
             WHERE execution_id = ANY($1) GROUP BY execution_id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| "execution events".to_owned()))
    }

    async fn list_events(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.list_events_shared(tenant_id, id, after, limit).await
    }

    async fn list_checkpoints(
        &self,
        id: Uuid,
        step_name: &str,
        generation: i32,
    ) -> Result<Vec<crate::model::execution::Checkpoint>> {
        self.list_checkpoints_shared(id, step_name, generation)
            .await
    }

    async fn execution_usage(&self, id: Uuid) -> Result<crate::model::execution::UsageTotal> {
        self.execution_usage_shared(id).await
    }

    async fn tenant_usage_since(
        &self,
        tenant_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<crate::model::execution::UsageTotal> {
        self.tenant_usage_since_shared(tenant_id, since).await
    }
}

impl PgStore {
    /// Claims due deliveries (this backend's SQL); see `DeliveryStore::claim_deliveries`.
    async fn claim_deliveries_here(
        &self,
        claim: &crate::model::execution::DeliveryClaim,
    ) -> Result<Vec<Delivery>> {
        // The outer conditions are checked again on each row once locked: a row another
        // worker claimed meanwhile (its next attempt moved) is not claimed twice.
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt = now() + $2 * interval '1 millisecond' \
             WHERE status = 'pending' AND next_attempt <= now() AND id IN ( \
             SELECT id FROM (SELECT id, next_attempt, ROW_NUMBER() OVER ( \
             PARTITION BY tenant_id ORDER BY next_attempt) AS n FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt <= now() \
             AND NOT (tenant_id = ANY($4))) due \
             WHERE n <= $3 ORDER BY next_attempt LIMIT $1) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(claim.limit))
            .bind(claim.hold_ms as f64)
            .bind(i64::from(claim.per_tenant))
            .bind(&claim.skip)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "webhook deliveries".to_owned()))?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn close(&self) {
        // The writers finish what is queued, then close their connections.
        self.writers.close();
        self.pool.close().await;
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| "migrations".to_owned()))?;
        let applied: Vec<(i64, String, DateTime<Utc>)> = if exists {
            sqlx::query_as(super::shared::APPLIED_MIGRATIONS)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "migrations".to_owned()))?
        } else {
            Vec::new()
        };
        Ok(super::shared::migration_status(&MIGRATOR, &applied))
    }

    /// A copy of a PostgreSQL database is `pg_dump`'s to take: this refuses, saying so.
    async fn backup(&self, _dest: &std::path::Path) -> Result<u64> {
        Err(Error::Config(
            "mantle backup copies the embedded SQLite database; back up PostgreSQL with \
             `pg_dump -Fc` (see docs/backup.md)"
                .to_owned(),
        ))
    }

    /// sqlx serializes concurrent runs with `pg_advisory_lock`, so replicas that start
    /// together apply each migration once.
    async fn migrate(&self) -> Result<()> {
        // Replicas that start together migrate one at a time. The others wait here by
        // trying a lock of their own now and then, not in sqlx's blocking
        // pg_advisory_lock: a session blocked in a statement holds a snapshot, which a
        // CREATE INDEX CONCURRENTLY of the migrating replica would wait for while that
        // session waits for it (a deadlock PostgreSQL resolves by failing one of them).
        let err = || map_err(|| "the migration lock".to_owned());
        // A connection of its own: the pool may have only one, which the migrator needs.
        let mut conn = PgConnection::connect_with(&self.pool.connect_options())
            .await
            .map_err(err())?;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .fetch_one(&mut conn)
                .await
                .map_err(err())?;
            if taken {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let migrated = async {
            super::refuse_newer_schema(&self.migration_status().await?)?;
            MIGRATOR
                .run(&self.pool)
                .await
                .map_err(|e| super::shared::migrate_error(Backend::Postgres, &MIGRATOR, e))
        }
        .await;
        // Closing the session releases its lock.
        let _ = conn.close().await;
        migrated
    }
}
