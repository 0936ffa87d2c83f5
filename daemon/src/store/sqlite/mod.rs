//! The embedded store: one SQLite file in the data directory, used by one daemon at a time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};
use uuid::Uuid;

use super::ExecutionStore;
use super::shared::{
    ATTEMPT_COLUMNS, AttemptRow, AuditRow, DELIVERY_COLUMNS, DeliveryRow, EXECUTION_COLUMNS,
    EventRow, ExecutionRow, KEY_SELECT, KeyRow, SECRET_COLUMNS, SecretRow, TENANT_COLUMNS,
    TenantRow, VERSION_COLUMNS, VersionRow, into_page, map_err,
};
use super::{Backend, Error, MigrationStatus, OpenOptions, Result, Store};
use crate::model::execution::{
    Created, Delivery, Event, Execution, ExecutionFilter, Lease, NewExecution, Order, StepAttempt,
    Transition,
};
use crate::model::tenant::{ApiKey, NewApiKey, Page, PageRequest, Tenant, TenantUpdate, View};

mod backup;
mod writer;

/// The store the shared implementations of `store/common/` are compiled for here.
type ThisStore = SqliteStore;
/// Its database, for the shared functions that take a connection.
type Db = sqlx::Sqlite;
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

/// A transaction that holds the write lock from its start (see `common/retention.rs`).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// Rows a `SELECT` read need no lock of their own: the transaction holds the file's.
const LOCK_ROWS: &str = "";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    pool: Pool<Sqlite>,
    /// Held for the store's lifetime when opened exclusively.
    _lock: Option<File>,
    /// The group-commit writers (see [`writer`]).
    writers: super::Writers,
}

impl SqliteStore {
    /// Opens the database file `path` (see [`super::sqlite_path`]), creating it and the
    /// data directory when missing.
    pub async fn open(path: &Path, options: &OpenOptions) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        private_database_files(path)?;
        let lock = if options.exclusive {
            Some(lock_database(path)?)
        } else {
            None
        };
        let connect = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| Error::Config(format!("sqlite database {}: {e}", path.display())))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Deletions free pages that `reclaim_space` gives back to the file system.
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            // An embedded file does not drop connections: no ping before every query.
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|e| Error::Config(format!("sqlite database {}: {e}", path.display())))?;
        let writer = writer::start(path)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            pool,
            _lock: lock,
            writers: super::Writers::new(writer, true),
        })
    }
}

/// Creates the data directory (and its missing parents) readable by this user only. One that
/// exists is left as it is, with a warning when others may read it.
fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:04o}"),
                "the data directory is open to other users; the database files in it are kept private (0600)"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Config(format!("data directory {}: {e}", dir.display())))
}

/// The database, its journal (`-wal`, `-shm`) and its lock file are this user's only: they
/// hold every tenant's data. SQLite creates the journal with the database's mode, so the
/// database is created (or tightened) first.
fn private_database_files(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &std::path::Path, e: std::io::Error| {
        Error::Config(format!("sqlite database {}: {e}", p.display()))
    };
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(path, e))?;
    let mut name = path.as_os_str().to_owned();
    for suffix in ["", "-wal", "-shm"] {
        name.push(suffix);
        let file = std::path::PathBuf::from(&name);
        name = path.as_os_str().to_owned();
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(&file, e))?;
        }
    }
    Ok(())
}

/// Takes an exclusive lock next to the database so a second daemon on the same file is
/// refused instead of corrupting its leases.
fn lock_database(path: &std::path::Path) -> Result<File> {
    let lock_path = path.with_extension("lock");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
    }
    .map_err(|e| Error::Config(format!("lock file {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "another mantle daemon is already using {}; the embedded SQLite store serves one \
             daemon at a time (use PostgreSQL for several replicas)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Config(format!(
            "lock file {}: {e}",
            lock_path.display()
        ))),
    }
}

impl SqliteStore {
    /// Moves at most `max_pages` free pages to the end of the file and truncates them
    /// (`auto_vacuum = INCREMENTAL`), then folds the log into the file so that it shrinks
    /// on disk now. Each call holds the write lock for a bounded time.
    async fn reclaim_space_backend(&self, max_pages: u32) -> Result<u64> {
        let err = || map_err(|| "reclaiming free pages".to_owned());
        let free = |pool| async move {
            sqlx::query_scalar::<_, i64>("PRAGMA freelist_count")
                .fetch_one(pool)
                .await
        };
        let before = free(&self.pool).await.map_err(err())?;
        if before == 0 {
            return Ok(0);
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA incremental_vacuum({max_pages})"
        )))
        .execute(&self.pool)
        .await
        .map_err(err())?;
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await
            .map_err(err())?;
        let after = free(&self.pool).await.map_err(err())?;
        Ok((before - after).max(0).unsigned_abs())
    }

    /// Whether sqlx's table of applied migrations exists (a database never migrated has none).
    async fn has_migrations(&self) -> Result<bool> {
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err(|| "migrations".to_owned()))?;
        Ok(exists.is_some())
    }

    async fn take_rate_limit_backend(
        &self,
        _tenant_id: Uuid,
        _limit: u32,
    ) -> Result<crate::model::rate::Decision> {
        Err(Error::Config(
            "MANTLE_RATE_LIMIT_BACKEND=postgres needs the PostgreSQL store".to_owned(),
        ))
    }
}

#[async_trait::async_trait]
impl ExecutionStore for SqliteStore {
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
        // The file lock proves no other daemon runs: any lease but ours is stale.
        let now = Utc::now();
        let expires = now + chrono::Duration::milliseconds(lease_ms as i64);
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE executions SET owner = $1, lease_epoch = lease_epoch + 1, \
             lease_expires = $2, wake_time = NULL \
             WHERE id IN (SELECT id FROM executions WHERE status IN ('pending', 'running') \
             AND (owner IS NULL OR owner <> $1 OR lease_expires < $3) \
             AND (wake_time IS NULL OR wake_time <= $3 OR cancel_requested) \
             ORDER BY id LIMIT $4) RETURNING id, lease_epoch",
        )
        .bind(owner)
        .bind(expires)
        .bind(now)
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
        let expires = Utc::now() + chrono::Duration::milliseconds(lease_ms as i64);
        let mut held = Vec::with_capacity(ids.len());
        // SQLite has no array parameter: an IN list per chunk, well under its 32766 variables.
        for chunk in ids.chunks(500) {
            let list = (3..chunk.len() + 3)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE executions SET lease_expires = $2 WHERE owner = $1 AND id IN ({list}) \
                 RETURNING id, cancel_requested"
            );
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(expires);
            for id in chunk {
                query = query.bind(id);
            }
            let rows: Vec<(Uuid, bool)> = query
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "executions".to_owned()))?;
            held.extend(rows);
        }
        Ok(held)
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
        let mut found = Vec::with_capacity(ids.len());
        // In bounded chunks: SQLite takes a limited number of parameters.
        for chunk in ids.chunks(500) {
            let params = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT execution_id, MAX(seq) FROM execution_events \
                 WHERE execution_id IN ({params}) GROUP BY execution_id"
            );
            let mut query = sqlx::query_as::<_, (Uuid, i64)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            found.extend(
                query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "execution events".to_owned()))?,
            );
        }
        Ok(found)
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

impl SqliteStore {
    /// Claims due deliveries (this backend's SQL); see `DeliveryStore::claim_deliveries`.
    async fn claim_deliveries_here(
        &self,
        claim: &crate::model::execution::DeliveryClaim,
    ) -> Result<Vec<Delivery>> {
        let now = Utc::now();
        // One daemon per SQLite file: no other worker claims meanwhile.
        let skip = (0..claim.skip.len())
            .map(|i| format!("${}", i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        let skip = if skip.is_empty() {
            String::new()
        } else {
            format!("AND tenant_id NOT IN ({skip})")
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt = $3 WHERE id IN ( \
             SELECT id FROM (SELECT id, next_attempt, ROW_NUMBER() OVER ( \
             PARTITION BY tenant_id ORDER BY next_attempt) AS n FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt <= $2 {skip}) due \
             WHERE n <= $4 ORDER BY next_attempt LIMIT $1) RETURNING {DELIVERY_COLUMNS}"
        );
        let mut query = sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(claim.limit))
            .bind(now)
            .bind(now + chrono::Duration::milliseconds(claim.hold_ms as i64))
            .bind(i64::from(claim.per_tenant));
        for tenant in &claim.skip {
            query = query.bind(*tenant);
        }
        Ok(query
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "webhook deliveries".to_owned()))?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
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
        let applied: Vec<(i64, String, DateTime<Utc>)> = if self.has_migrations().await? {
            sqlx::query_as(super::shared::APPLIED_MIGRATIONS)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "migrations".to_owned()))?
        } else {
            Vec::new()
        };
        Ok(super::shared::migration_status(&MIGRATOR, &applied))
    }

    async fn backup(&self, dest: &Path) -> Result<u64> {
        if !self.has_migrations().await? {
            return Err(Error::Config(format!(
                "the database {} has no Mantle schema (no migration applied): nothing to back \
                 up; check MANTLE_DATA_DIR and MANTLE_DATABASE_URL",
                self.path.display()
            )));
        }
        let dest = backup::Destination::prepare(dest)?;
        sqlx::query("VACUUM INTO $1")
            .bind(dest.partial_str())
            .execute(&self.pool)
            .await
            .map_err(map_err(|| "backup".to_owned()))?;
        dest.finish()
    }

    async fn migrate(&self) -> Result<()> {
        super::refuse_newer_schema(&self.migration_status().await?)?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| super::shared::migrate_error(Backend::Sqlite, &MIGRATOR, e))?;
        // A database made before incremental vacuum: rewritten once to take it up (a new
        // one has it from its first table).
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| "auto_vacuum".to_owned()))?;
        if mode != 2 {
            tracing::info!("rewriting the sqlite database once for incremental vacuum");
            sqlx::query("VACUUM")
                .execute(&self.pool)
                .await
                .map_err(|e| Error::Internal(format!("vacuuming the sqlite database: {e}")))?;
        }
        Ok(())
    }
}
