//! The embedded store: one SQLite file in the data directory, used by one daemon at a time.

use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};
use uuid::Uuid;

use super::shared::{
    KEY_SELECT, KeyRow, TENANT_COLUMNS, TenantRow, VERSION_COLUMNS, VersionRow,
    impl_definition_store, impl_tenant_store, into_page, map_err,
};
use super::{Backend, Error, MigrationStatus, OpenOptions, Result, Store};
use crate::tenancy::model::{ApiKey, NewApiKey, Page, PageRequest, Tenant, TenantUpdate};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: Pool<Sqlite>,
    /// Held for the store's lifetime when opened exclusively.
    _lock: Option<File>,
}

impl SqliteStore {
    /// Opens the database file, creating it and the data directory when missing.
    pub async fn open(options: &OpenOptions) -> Result<Self> {
        let path = if options.url.is_empty() {
            super::default_sqlite_path(&options.data_dir)
        } else {
            let rest = options.url.trim_start_matches("sqlite:");
            PathBuf::from(
                rest.trim_start_matches("//")
                    .split('?')
                    .next()
                    .unwrap_or(rest),
            )
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let lock = if options.exclusive {
            Some(lock_database(&path)?)
        } else {
            None
        };
        let connect = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| Error::Config(format!("sqlite database {}: {e}", path.display())))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await
            .map_err(|e| Error::Config(format!("sqlite database {}: {e}", path.display())))?;
        Ok(SqliteStore { pool, _lock: lock })
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Config(format!("data directory {}: {e}", dir.display())))
}

/// Takes an exclusive lock next to the database so a second daemon on the same file is
/// refused instead of corrupting its leases.
fn lock_database(path: &std::path::Path) -> Result<File> {
    let lock_path = path.with_extension("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
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

impl_tenant_store!(SqliteStore);
impl_definition_store!(SqliteStore);

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err(|| "migrations".to_owned()))?;
        let applied: Vec<(i64, DateTime<Utc>)> = if exists.is_some() {
            sqlx::query_as("SELECT version, installed_on FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "migrations".to_owned()))?
        } else {
            Vec::new()
        };
        Ok(super::shared::migration_status(&MIGRATOR, &applied))
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Internal(format!("migrating the sqlite database: {e}")))
    }
}
