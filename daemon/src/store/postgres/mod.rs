//! The production store: PostgreSQL, shared by any number of daemon replicas.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, Pool, Postgres};
use uuid::Uuid;

use super::shared::{
    KEY_SELECT, KeyRow, TENANT_COLUMNS, TenantRow, VERSION_COLUMNS, VersionRow,
    impl_definition_store, impl_tenant_store, into_page, map_err,
};
use super::{Backend, Error, MigrationStatus, OpenOptions, Result, Store, redact_url};
use crate::tenancy::model::{ApiKey, NewApiKey, Page, PageRequest, Tenant, TenantUpdate};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: Pool<Postgres>,
}

impl PgStore {
    /// Connects, retrying an unreachable server until `options.connect_timeout` has passed.
    pub async fn connect(options: &OpenOptions) -> Result<Self> {
        let shown = redact_url(&options.url);
        let connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| Error::Config(format!("database URL {shown:?}: {e}")))?;
        let pool_options = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Duration::from_millis(200);
        // Probe with a single connection: it fails fast, where a pool would keep retrying
        // for its whole acquire timeout.
        loop {
            match PgConnection::connect_with(&connect).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(PgStore {
                        pool: pool_options.connect_lazy_with(connect),
                    });
                }
                Err(err) => {
                    let now = tokio::time::Instant::now();
                    if now + backoff > deadline {
                        return Err(Error::Unavailable(format!(
                            "could not connect to {shown} within {}s: {err}",
                            options.connect_timeout.as_secs()
                        )));
                    }
                    tracing::warn!(database = %shown, error = %err, "database not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

impl_tenant_store!(PgStore);
impl_definition_store!(PgStore);

#[async_trait::async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
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
        let applied: Vec<(i64, DateTime<Utc>)> = if exists {
            sqlx::query_as("SELECT version, installed_on FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "migrations".to_owned()))?
        } else {
            Vec::new()
        };
        Ok(super::shared::migration_status(&MIGRATOR, &applied))
    }

    /// sqlx serializes concurrent runs with `pg_advisory_lock`, so replicas that start
    /// together apply each migration once.
    async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Internal(format!("migrating the postgres database: {e}")))
    }
}
