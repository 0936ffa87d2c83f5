//! What the SQLite and PostgreSQL stores have in common: row types, error translation, and
//! the tenant queries, whose SQL is the same on both (`$n` placeholders work on both, and
//! ids and times are bound as `Uuid` and `DateTime<Utc>`, which each driver maps to its own
//! column type). Queries that differ live in each backend's module.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Error;
use crate::auth::ScopeSet;
use crate::tenancy::model::{ApiKey, Page, PageRequest, Tenant, TenantRef};

pub(super) const TENANT_COLUMNS: &str = "id, name, display_name, create_time, update_time, \
     max_steps_per_workflow, max_runtime_minutes, allowed_domains, rate_limit_per_minute, \
     max_concurrent_executions, max_queued_executions, webhook_url, webhook_secret";

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
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Self {
        Tenant {
            id: r.id,
            name: r.name,
            display_name: r.display_name,
            create_time: r.create_time,
            update_time: r.update_time,
            settings: crate::tenancy::model::TenantSettings {
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
            },
        }
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

/// Implements `TenantStore` for a store type with a `pool: sqlx::Pool<_>` field.
macro_rules! impl_tenant_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::TenantStore for $store {
            async fn create_tenant(&self, t: &Tenant) -> Result<()> {
                sqlx::query(
                    "INSERT INTO tenants (id, name, display_name, create_time, update_time, \
                     max_steps_per_workflow, max_runtime_minutes, allowed_domains, \
                     rate_limit_per_minute, max_concurrent_executions, max_queued_executions, \
                     webhook_url, webhook_secret) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(t.id)
                .bind(&t.name)
                .bind(&t.display_name)
                .bind(t.create_time)
                .bind(t.update_time)
                .bind(t.settings.max_steps_per_workflow.map(|n| n as i32))
                .bind(t.settings.max_runtime_minutes.map(|n| n as i32))
                .bind(t.settings.allowed_domains.as_ref().map(|d| d.join(" ")))
                .bind(t.settings.rate_limit_per_minute.map(|n| n as i32))
                .bind(t.settings.max_concurrent_executions.map(|n| n as i32))
                .bind(t.settings.max_queued_executions.map(|n| n as i32))
                .bind(t.settings.webhook_url.as_deref())
                .bind(t.settings.webhook_secret.as_deref())
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("tenant {:?}", t.name)))?;
                Ok(())
            }

            async fn get_tenant(&self, name: &str) -> Result<Tenant> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
                sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(sql))
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await
                    .map(Tenant::from)
                    .map_err(map_err(|| format!("tenant {name:?}")))
            }

            async fn take_rate_limit(
                &self,
                tenant_id: Uuid,
                limit: u32,
            ) -> Result<$crate::tenancy::ratelimit::Decision> {
                self.take_rate_limit_backend(tenant_id, limit).await
            }

            async fn get_tenant_by_id(&self, id: Uuid) -> Result<Tenant> {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
                sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map(Tenant::from)
                    .map_err(map_err(|| format!("tenant {id}")))
            }

            async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>> {
                let sql = format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1 IS NULL OR name > $1) \
                     ORDER BY name LIMIT $2"
                );
                let rows = sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(sql))
                    .bind(page.after.as_deref())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "tenants".to_owned()))?;
                let tenants = rows.into_iter().map(Tenant::from).collect();
                Ok(into_page(tenants, page, |t: &Tenant| t.name.clone()))
            }

            async fn update_tenant(
                &self,
                name: &str,
                update: &TenantUpdate,
                now: DateTime<Utc>,
            ) -> Result<Tenant> {
                let sql = format!(
                    "UPDATE tenants SET display_name = COALESCE($2, display_name), \
                     update_time = $3, \
                     max_steps_per_workflow = CASE WHEN $4 THEN $5 ELSE max_steps_per_workflow END, \
                     max_runtime_minutes = CASE WHEN $6 THEN $7 ELSE max_runtime_minutes END, \
                     allowed_domains = CASE WHEN $8 THEN $9 ELSE allowed_domains END, \
                     rate_limit_per_minute = CASE WHEN $10 THEN $11 ELSE rate_limit_per_minute END, \
                     max_concurrent_executions = CASE WHEN $12 THEN $13 ELSE max_concurrent_executions END, \
                     max_queued_executions = CASE WHEN $14 THEN $15 ELSE max_queued_executions END, \
                     webhook_url = CASE WHEN $16 THEN $17 ELSE webhook_url END, \
                     webhook_secret = CASE WHEN $18 THEN $19 ELSE webhook_secret END \
                     WHERE name = $1 RETURNING {TENANT_COLUMNS}"
                );
                sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(sql))
                    .bind(name)
                    .bind(update.display_name.as_deref())
                    .bind(now)
                    .bind(update.max_steps_per_workflow.is_some())
                    .bind(update.max_steps_per_workflow.flatten().map(|n| n as i32))
                    .bind(update.max_runtime_minutes.is_some())
                    .bind(update.max_runtime_minutes.flatten().map(|n| n as i32))
                    .bind(update.allowed_domains.is_some())
                    .bind(update.allowed_domains.as_ref().and_then(|d| d.as_ref().map(|d| d.join(" "))))
                    .bind(update.rate_limit_per_minute.is_some())
                    .bind(update.rate_limit_per_minute.flatten().map(|n| n as i32))
                    .bind(update.max_concurrent_executions.is_some())
                    .bind(update.max_concurrent_executions.flatten().map(|n| n as i32))
                    .bind(update.max_queued_executions.is_some())
                    .bind(update.max_queued_executions.flatten().map(|n| n as i32))
                    .bind(update.webhook_url.is_some())
                    .bind(update.webhook_url.clone().flatten())
                    .bind(update.webhook_secret.is_some())
                    .bind(update.webhook_secret.clone().flatten())
                    .fetch_one(&self.pool)
                    .await
                    .map(Tenant::from)
                    .map_err(map_err(|| format!("tenant {name:?}")))
            }

            async fn delete_tenant(&self, name: &str) -> Result<()> {
                let err = || map_err(|| format!("tenant {name:?}"));
                let mut tx = self.pool.begin().await.map_err(err())?;
                // Attempts and events have no foreign key to their execution (the
                // checkpoint fence stands for it): they go first, explicitly. The rest
                // follows the tenant by cascade.
                for table in ["step_attempts", "execution_events"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE execution_id IN (SELECT e.id FROM \
                         executions e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = $1)"
                    )))
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(err())?;
                }
                let done = sqlx::query("DELETE FROM tenants WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(err())?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound(format!("tenant {name:?}")));
                }
                tx.commit().await.map_err(err())?;
                Ok(())
            }

            async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, name, scopes, token_hash, create_time, \
                     expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&key.id)
                .bind(key.tenant_id)
                .bind(&key.name)
                .bind(key.scopes.to_storage())
                .bind(key.token_hash.as_slice())
                .bind(key.create_time)
                .bind(key.expire_time)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("api key {:?}", key.id)))?;
                self.get_api_key(&key.id).await
            }

            async fn list_api_keys(
                &self,
                tenant_id: Option<Uuid>,
                show_revoked: bool,
                page: &PageRequest,
            ) -> Result<Page<ApiKey>> {
                let sql = format!(
                    "{KEY_SELECT} WHERE (k.tenant_id = $1 OR ($1 IS NULL AND k.tenant_id IS NULL)) \
                     AND ($2 OR k.revoke_time IS NULL) AND ($3 IS NULL OR k.id < $3) \
                     ORDER BY k.id DESC LIMIT $4"
                );
                let rows = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(show_revoked)
                    .bind(page.after.as_deref())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "api keys".to_owned()))?;
                let keys = rows
                    .into_iter()
                    .map(ApiKey::try_from)
                    .collect::<Result<Vec<_>>>()?;
                Ok(into_page(keys, page, |k: &ApiKey| k.id.clone()))
            }

            async fn get_api_key(&self, id: &str) -> Result<ApiKey> {
                self.api_key_credential(id)
                    .await?
                    .map(|(key, _)| key)
                    .ok_or_else(|| Error::NotFound(format!("api key {id:?}")))
            }

            async fn api_key_credential(&self, id: &str) -> Result<Option<(ApiKey, Vec<u8>)>> {
                let sql = format!("{KEY_SELECT} WHERE k.id = $1");
                let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err(|| format!("api key {id:?}")))?;
                match row {
                    None => Ok(None),
                    Some(mut row) => {
                        let hash = std::mem::take(&mut row.token_hash);
                        Ok(Some((ApiKey::try_from(row)?, hash)))
                    }
                }
            }

            async fn revoke_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<ApiKey> {
                sqlx::query(
                    "UPDATE api_keys SET revoke_time = COALESCE(revoke_time, $2) WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("api key {id:?}")))?;
                self.get_api_key(id).await
            }

            async fn touch_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE api_keys SET last_use_time = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err(|| format!("api key {id:?}")))?;
                Ok(())
            }
        }
    };
}

pub(super) use impl_tenant_store;

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

impl From<VersionRow> for crate::definitions::model::Definition {
    fn from(r: VersionRow) -> Self {
        crate::definitions::model::Definition {
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

/// Implements `DefinitionStore` for a store type with a `pool: sqlx::Pool<_>` field.
macro_rules! impl_definition_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::DefinitionStore for $store {
            async fn apply_definition(
                &self,
                v: &$crate::definitions::model::NewVersion,
            ) -> Result<($crate::definitions::model::Definition, bool)> {
                use $crate::definitions::model::Definition;
                let what = || format!("workflow {:?}", v.name);
                let mut tx = self.pool.begin().await.map_err(map_err(what))?;
                // Creating the row if needed, then touching it, takes the row's write lock:
                // concurrent applies of one workflow queue here.
                sqlx::query(
                    "INSERT INTO workflows (tenant_id, name, latest_version, description, \
                     create_time, update_time) VALUES ($1, $2, 0, $3, $4, $4) \
                     ON CONFLICT (tenant_id, name) DO NOTHING",
                )
                .bind(v.tenant_id)
                .bind(&v.name)
                .bind(&v.description)
                .bind(v.now)
                .execute(&mut *tx)
                .await
                .map_err(map_err(what))?;
                let (latest, deleted): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                    "UPDATE workflows SET latest_version = latest_version \
                     WHERE tenant_id = $1 AND name = $2 RETURNING latest_version, delete_time",
                )
                .bind(v.tenant_id)
                .bind(&v.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err(what))?;
                if latest > 0 && deleted.is_none() {
                    let sql = format!(
                        "SELECT {VERSION_COLUMNS} FROM workflow_versions \
                         WHERE tenant_id = $1 AND name = $2 AND version = $3"
                    );
                    let current: Definition = sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
                        .bind(v.tenant_id)
                        .bind(&v.name)
                        .bind(latest)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err(what))?
                        .into();
                    if current.content_hash == v.content_hash {
                        tx.commit().await.map_err(map_err(what))?;
                        return Ok((current, false));
                    }
                }
                let version = latest + 1;
                sqlx::query(
                    "INSERT INTO workflow_versions (tenant_id, name, version, content_hash, \
                     description, spec, source, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(v.tenant_id)
                .bind(&v.name)
                .bind(version)
                .bind(&v.content_hash)
                .bind(&v.description)
                .bind(&v.spec_json)
                .bind(&v.source)
                .bind(v.now)
                .execute(&mut *tx)
                .await
                .map_err(map_err(what))?;
                sqlx::query(
                    "UPDATE workflows SET latest_version = $3, description = $4, update_time = $5, \
                     delete_time = NULL WHERE tenant_id = $1 AND name = $2",
                )
                .bind(v.tenant_id)
                .bind(&v.name)
                .bind(version)
                .bind(&v.description)
                .bind(v.now)
                .execute(&mut *tx)
                .await
                .map_err(map_err(what))?;
                tx.commit().await.map_err(map_err(what))?;
                Ok((
                    Definition {
                        tenant_id: v.tenant_id,
                        name: v.name.clone(),
                        version,
                        content_hash: v.content_hash.clone(),
                        description: v.description.clone(),
                        spec_json: v.spec_json.clone(),
                        source: v.source.clone(),
                        create_time: v.now,
                    },
                    true,
                ))
            }

            async fn get_definition(
                &self,
                tenant_id: Uuid,
                name: &str,
                version: Option<i64>,
            ) -> Result<$crate::definitions::model::Definition> {
                let sql = format!(
                    "SELECT v.tenant_id, v.name, v.version, v.content_hash, v.description, v.spec, \
                     v.source, v.create_time FROM workflow_versions v JOIN workflows w \
                     ON w.tenant_id = v.tenant_id AND w.name = v.name \
                     WHERE v.tenant_id = $1 AND v.name = $2 AND w.delete_time IS NULL \
                     AND v.version = COALESCE($3, w.latest_version)"
                );
                let what = || match version {
                    Some(n) => format!("workflow {name:?} version {n}"),
                    None => format!("workflow {name:?}"),
                };
                sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(name)
                    .bind(version)
                    .fetch_one(&self.pool)
                    .await
                    .map(Into::into)
                    .map_err(map_err(what))
            }

            async fn get_pinned_version(
                &self,
                tenant_id: Uuid,
                name: &str,
                version: i64,
            ) -> Result<$crate::definitions::model::Definition> {
                let sql = format!(
                    "SELECT {VERSION_COLUMNS} FROM workflow_versions \
                     WHERE tenant_id = $1 AND name = $2 AND version = $3"
                );
                sqlx::query_as::<_, VersionRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(name)
                    .bind(version)
                    .fetch_one(&self.pool)
                    .await
                    .map(Into::into)
                    .map_err(map_err(|| format!("workflow {name:?} version {version}")))
            }

            async fn list_definitions(
                &self,
                tenant_id: Uuid,
                page: &PageRequest,
            ) -> Result<Page<$crate::definitions::model::DefinitionSummary>> {
                use $crate::definitions::model::DefinitionSummary;
                let rows: Vec<(String, i64, String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT name, latest_version, description, create_time, update_time \
                     FROM workflows WHERE tenant_id = $1 AND delete_time IS NULL \
                     AND ($2 IS NULL OR name > $2) ORDER BY name LIMIT $3",
                )
                .bind(tenant_id)
                .bind(page.after.as_deref())
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "workflows".to_owned()))?;
                let items = rows
                    .into_iter()
                    .map(|(name, latest_version, description, create_time, update_time)| DefinitionSummary {
                        name,
                        latest_version,
                        description,
                        create_time,
                        update_time,
                    })
                    .collect();
                Ok(into_page(items, page, |d: &DefinitionSummary| d.name.clone()))
            }

            async fn list_definition_versions(
                &self,
                tenant_id: Uuid,
                name: &str,
                page: &PageRequest,
            ) -> Result<Page<$crate::definitions::model::VersionInfo>> {
                use $crate::definitions::model::VersionInfo;
                let live: Option<i64> = sqlx::query_scalar(
                    "SELECT latest_version FROM workflows \
                     WHERE tenant_id = $1 AND name = $2 AND delete_time IS NULL",
                )
                .bind(tenant_id)
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err(|| format!("workflow {name:?}")))?;
                if live.is_none() {
                    return Err(Error::NotFound(format!("workflow {name:?}")));
                }
                let before: Option<i64> = match page.after.as_deref() {
                    None => None,
                    Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
                };
                let rows: Vec<(i64, String, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT version, content_hash, create_time FROM workflow_versions \
                     WHERE tenant_id = $1 AND name = $2 AND ($3 IS NULL OR version < $3) \
                     ORDER BY version DESC LIMIT $4",
                )
                .bind(tenant_id)
                .bind(name)
                .bind(before)
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| format!("workflow {name:?}")))?;
                let items = rows
                    .into_iter()
                    .map(|(version, content_hash, create_time)| VersionInfo {
                        version,
                        content_hash,
                        create_time,
                    })
                    .collect();
                Ok(into_page(items, page, |v: &VersionInfo| v.version.to_string()))
            }

            async fn delete_definition(
                &self,
                tenant_id: Uuid,
                name: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                let done = sqlx::query(
                    "UPDATE workflows SET delete_time = $3 \
                     WHERE tenant_id = $1 AND name = $2 AND delete_time IS NULL",
                )
                .bind(tenant_id)
                .bind(name)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("workflow {name:?}")))?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound(format!("workflow {name:?}")));
                }
                Ok(())
            }
        }
    };
}

pub(super) use impl_definition_store;

/// Joins the migrations the binary knows with those the database recorded as applied.
pub(super) fn migration_status(
    migrator: &sqlx::migrate::Migrator,
    applied: &[(i64, DateTime<Utc>)],
) -> Vec<super::MigrationStatus> {
    migrator
        .iter()
        .map(|m| super::MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied_at: applied
                .iter()
                .find(|(v, _)| *v == m.version)
                .map(|(_, at)| *at),
        })
        .collect()
}

pub(super) const EXECUTION_COLUMNS: &str = "id, tenant_id, workflow, version, status, inputs, \
     outputs, error, trigger_info, create_time, start_time, end_time, deadline, generation, \
     cancel_requested";

pub(super) const ATTEMPT_COLUMNS: &str = "execution_id, step_name, attempt, generation, status, \
     output, error, wake_time, start_time, end_time";

/// [`EXECUTION_COLUMNS`] without inputs, outputs and trigger (a BASIC listing).
pub(super) const EXECUTION_BASIC_COLUMNS: &str = "id, tenant_id, workflow, version, status, \
     '{}' AS inputs, CAST(NULL AS TEXT) AS outputs, error, '{}' AS trigger_info, create_time, \
     start_time, end_time, deadline, generation, cancel_requested";

/// [`ATTEMPT_COLUMNS`] without the output (a BASIC listing).
pub(super) const ATTEMPT_BASIC_COLUMNS: &str = "execution_id, step_name, attempt, generation, status, \
     CAST(NULL AS TEXT) AS output, error, wake_time, start_time, end_time";

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

    pub(super) fn of(a: &crate::engine::model::StepAttempt) -> AttemptCursor {
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

impl TryFrom<ExecutionRow> for crate::engine::model::Execution {
    type Error = Error;

    fn try_from(r: ExecutionRow) -> Result<Self, Error> {
        use crate::engine::model::ExecutionStatus;
        Ok(crate::engine::model::Execution {
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
}

impl TryFrom<AttemptRow> for crate::engine::model::StepAttempt {
    type Error = Error;

    fn try_from(r: AttemptRow) -> Result<Self, Error> {
        use crate::engine::model::StepStatus;
        Ok(crate::engine::model::StepAttempt {
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

impl TryFrom<EventRow> for crate::engine::model::Event {
    type Error = Error;

    fn try_from(r: EventRow) -> Result<Self, Error> {
        Ok(crate::engine::model::Event {
            kind: crate::engine::model::EventKind::parse(&r.kind)
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

/// Implements the parts of `ExecutionStore` whose SQL is the same on both backends, as
/// inherent `*_shared` methods the backends' trait impls call.
macro_rules! impl_execution_shared {
    ($store:ty) => {
        impl $store {
            async fn create_execution_shared(
                &self,
                e: &$crate::engine::model::NewExecution,
                lease_expires: DateTime<Utc>,
            ) -> Result<$crate::engine::model::Created> {
                use $crate::engine::model::{Created, Lease};
                let lease = Lease {
                    execution_id: e.id,
                    epoch: 1,
                };
                // Nothing to check first: the insert shares the writers' group commit.
                if let Some(row) = super::NewRow::simple(e, lease_expires) {
                    self.writers.submit(super::Work::Create(Box::new(row))).await?;
                    return Ok(Created::New(lease));
                }
                let what = || format!("execution {}", e.id);
                let mut tx = self.pool.begin().await.map_err(map_err(what))?;
                if let Some(k) = &e.idempotency {
                    // Claims the key, or finds who has it; an expired claim is taken over.
                    let claimed = sqlx::query(
                        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, execution_id, \
                         create_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = excluded.request_hash, \
                         execution_id = excluded.execution_id, create_time = excluded.create_time, \
                         expire_time = excluded.expire_time WHERE idempotency_keys.expire_time < $5",
                    )
                    .bind(e.tenant_id)
                    .bind(&k.key)
                    .bind(&k.request_hash)
                    .bind(e.id)
                    .bind(e.now)
                    .bind(k.expire_time)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err(what))?;
                    if claimed.rows_affected() == 0 {
                        let (hash, existing): (String, Uuid) = sqlx::query_as(
                            "SELECT request_hash, execution_id FROM idempotency_keys \
                             WHERE tenant_id = $1 AND key = $2",
                        )
                        .bind(e.tenant_id)
                        .bind(&k.key)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err(what))?;
                        tx.commit().await.map_err(map_err(what))?;
                        return if hash == k.request_hash {
                            Ok(Created::Existing(existing))
                        } else {
                            Err(Error::Conflict(format!(
                                "idempotency key {:?} was already used with a different request \
                                 (another workflow, version or inputs); use a new key",
                                k.key
                            )))
                        };
                    }
                }
                let mut queued = false;
                if let Some(c) = e.concurrency {
                    // Locks the tenant's row: starts and promotions of one tenant queue here,
                    // so the count stays true across daemons.
                    sqlx::query("UPDATE tenants SET id = id WHERE id = $1")
                        .bind(e.tenant_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err(what))?;
                    let (active, waiting): (i64, i64) = sqlx::query_as(
                        "SELECT COALESCE(SUM(CASE WHEN status IN ('pending', 'running') THEN 1 ELSE 0 END), 0), \
                         COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0) \
                         FROM executions WHERE tenant_id = $1 AND status IN ('pending', 'running', 'queued')",
                    )
                    .bind(e.tenant_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err(what))?;
                    // First come, first served: behind executions already queued, a start
                    // queues even when a slot is free (a promotion is about to take it).
                    if active >= i64::from(c.max_active) || waiting > 0 {
                        if let Some(max) = c.max_queued
                            && waiting >= i64::from(max)
                        {
                            return Err(Error::Exhausted(format!(
                                "the tenant has {active} executions running and {waiting} queued, \
                                 its limits (max_concurrent_executions {}, max_queued_executions {max})",
                                c.max_active
                            )));
                        }
                        queued = true;
                    }
                }
                sqlx::query(
                        "INSERT INTO executions (id, tenant_id, workflow, version, status, inputs, \
                         trigger_info, create_time, deadline, owner, lease_expires, lease_epoch) \
                         VALUES ($1, $2, $3, $4, CASE WHEN $11 THEN 'queued' ELSE 'pending' END, \
                         $5, $6, $7, $8, CASE WHEN $11 THEN NULL ELSE $9 END, \
                         CASE WHEN $11 THEN NULL ELSE $10 END, CASE WHEN $11 THEN 0 ELSE 1 END)",
                    )
                    .bind(e.id)
                    .bind(e.tenant_id)
                    .bind(&e.workflow)
                    .bind(e.version)
                    .bind(e.inputs.to_string())
                    .bind(e.trigger.to_string())
                    .bind(e.now)
                    .bind(e.deadline)
                    .bind(&e.owner)
                    .bind(lease_expires)
                    .bind(queued)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err(what))?;
                tx.commit().await.map_err(map_err(what))?;
                if queued {
                    return Ok(Created::Queued(e.id));
                }
                Ok(Created::New(lease))
            }

            async fn promote_queued_shared(&self, global_max: Option<u32>) -> Result<u64> {
                let what = || "queued executions".to_owned();
                let tenants: Vec<Uuid> =
                    sqlx::query_scalar("SELECT DISTINCT tenant_id FROM executions WHERE status = 'queued'")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_err(what))?;
                let mut promoted = 0;
                for tenant_id in tenants {
                    let mut tx = self.pool.begin().await.map_err(map_err(what))?;
                    sqlx::query("UPDATE tenants SET id = id WHERE id = $1")
                        .bind(tenant_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err(what))?;
                    let cap: Option<i32> =
                        sqlx::query_scalar("SELECT max_concurrent_executions FROM tenants WHERE id = $1")
                            .bind(tenant_id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(map_err(what))?
                            .flatten();
                    let cap = match (cap.map(|c| c.max(0) as u32), global_max) {
                        (Some(t), Some(g)) => Some(t.min(g)),
                        (t, g) => t.or(g),
                    };
                    let active: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM executions WHERE tenant_id = $1 AND status IN ('pending', 'running')",
                    )
                    .bind(tenant_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err(what))?;
                    let free = cap.map_or(i64::MAX, |c| i64::from(c) - active).max(0);
                    if free > 0 {
                        let done = sqlx::query(
                            "UPDATE executions SET status = 'pending' WHERE id IN ( \
                             SELECT id FROM executions WHERE tenant_id = $1 AND status = 'queued' \
                             ORDER BY id LIMIT $2)",
                        )
                        .bind(tenant_id)
                        .bind(free.min(1000))
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err(what))?;
                        promoted += done.rows_affected();
                    }
                    tx.commit().await.map_err(map_err(what))?;
                }
                Ok(promoted)
            }

            async fn count_queued_shared(&self) -> Result<Vec<(Uuid, i64)>> {
                sqlx::query_as(
                    "SELECT tenant_id, COUNT(*) FROM executions WHERE status = 'queued' \
                     GROUP BY tenant_id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "queued executions".to_owned()))
            }

            async fn sweep_idempotency_keys_shared(&self, now: DateTime<Utc>) -> Result<u64> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE expire_time < $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err(|| "idempotency keys".to_owned()))?;
                Ok(done.rows_affected())
            }

            async fn load_execution_shared(
                &self,
                id: Uuid,
            ) -> Result<(
                $crate::engine::model::Execution,
                Vec<$crate::engine::model::StepAttempt>,
                i64,
            )> {
                let what = || format!("execution {id}");
                let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
                let execution = sqlx::query_as::<_, ExecutionRow>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err(what))?
                    .try_into()?;
                let sql = format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM step_attempts WHERE execution_id = $1 \
                     ORDER BY step_name, attempt"
                );
                let attempts = sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(what))?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<Vec<_>>>()?;
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(seq) FROM execution_events WHERE execution_id = $1")
                        .bind(id)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err(what))?;
                Ok((execution, attempts, last.unwrap_or(0)))
            }

            async fn release_lease_shared(&self, lease: $crate::engine::model::Lease) -> Result<()> {
                sqlx::query(
                    "UPDATE executions SET owner = NULL, lease_expires = NULL \
                     WHERE id = $1 AND lease_epoch = $2",
                )
                .bind(lease.execution_id)
                .bind(lease.epoch)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {}", lease.execution_id)))?;
                Ok(())
            }

            async fn request_cancel_shared(
                &self,
                tenant_id: Uuid,
                id: Uuid,
            ) -> Result<$crate::engine::model::Execution> {
                // A queued execution has no driver yet: it becomes claimable with the
                // cancellation requested, so a driver ends it like any other (its terminal
                // event and webhook delivery written with the end) without running a step.
                sqlx::query(
                    "UPDATE executions SET status = 'pending', owner = NULL, \
                     lease_expires = NULL, cancel_requested = TRUE \
                     WHERE tenant_id = $1 AND id = $2 AND status = 'queued'",
                )
                .bind(tenant_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {id}")))?;
                sqlx::query(
                    "UPDATE executions SET cancel_requested = TRUE, wake_time = NULL \
                     WHERE tenant_id = $1 AND id = $2 \
                     AND status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')",
                )
                .bind(tenant_id)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {id}")))?;
                self.get_execution_shared(tenant_id, id).await
            }

            async fn retry_execution_shared(
                &self,
                tenant_id: Uuid,
                id: Uuid,
                owner: &str,
                lease_expires: DateTime<Utc>,
            ) -> Result<$crate::engine::model::Lease> {
                let epoch: Option<i64> = sqlx::query_scalar(
                    "UPDATE executions SET status = 'pending', generation = generation + 1, \
                     error = NULL, end_time = NULL, cancel_requested = FALSE, wake_time = NULL, \
                     owner = $3, lease_expires = $4, lease_epoch = lease_epoch + 1 \
                     WHERE tenant_id = $1 AND id = $2 \
                     AND status IN ('failed', 'cancelled', 'timed_out') RETURNING lease_epoch",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(owner)
                .bind(lease_expires)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {id}")))?;
                match epoch {
                    Some(epoch) => Ok($crate::engine::model::Lease { execution_id: id, epoch }),
                    None => {
                        // Tell "not there" from "not retryable".
                        let e = self.get_execution_shared(tenant_id, id).await?;
                        Err(Error::Conflict(format!(
                            "execution {id} is {}; only failed, cancelled or timed-out executions can be retried",
                            e.status
                        )))
                    }
                }
            }

            async fn get_execution_shared(
                &self,
                tenant_id: Uuid,
                id: Uuid,
            ) -> Result<$crate::engine::model::Execution> {
                let sql = format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions WHERE tenant_id = $1 AND id = $2"
                );
                sqlx::query_as::<_, ExecutionRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err(|| format!("execution {id}")))?
                    .try_into()
            }

            async fn list_executions_shared(
                &self,
                tenant_id: Uuid,
                filter: &$crate::engine::model::ExecutionFilter,
                page: &PageRequest,
                view: $crate::tenancy::model::View,
            ) -> Result<Page<$crate::engine::model::Execution>> {
                use $crate::tenancy::model::{View, fitting};
                let before: Option<Uuid> = match page.after.as_deref() {
                    None => None,
                    Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
                };
                let matching = "tenant_id = $1 AND ($2 IS NULL OR workflow = $2) \
                     AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR create_time >= $4) \
                     AND ($5 IS NULL OR create_time < $5) AND ($6 IS NULL OR id < $6)";
                // The sizes first, so that a page of large executions never loads more of
                // them than it returns.
                let (size, columns) = match view {
                    View::Full => (
                        "OCTET_LENGTH(inputs) + COALESCE(OCTET_LENGTH(outputs), 0) \
                         + COALESCE(OCTET_LENGTH(error), 0) + OCTET_LENGTH(trigger_info)",
                        EXECUTION_COLUMNS,
                    ),
                    View::Basic => ("COALESCE(OCTET_LENGTH(error), 0)", $crate::store::shared::EXECUTION_BASIC_COLUMNS),
                };
                let sql = format!(
                    "SELECT id, CAST({size} AS BIGINT) FROM executions WHERE {matching} \
                     ORDER BY id DESC LIMIT $7"
                );
                let sizes: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(filter.workflow.as_deref())
                    .bind(filter.status.map(|s| s.as_str()))
                    .bind(filter.created_after)
                    .bind(filter.created_before)
                    .bind(before)
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "executions".to_owned()))?;
                // The fixed fields of an execution, as an upper bound.
                let take = fitting(
                    sizes.iter().map(|(_, n)| n.max(&0).unsigned_abs() as usize + 512),
                    page.limit as usize,
                );
                let Some((last, _)) = take.checked_sub(1).and_then(|i| sizes.get(i)) else {
                    return Ok(Page { items: Vec::new(), next_cursor: None });
                };
                let sql = format!(
                    "SELECT {columns} FROM executions WHERE {matching} AND id >= $8 \
                     ORDER BY id DESC LIMIT $7"
                );
                let rows = sqlx::query_as::<_, ExecutionRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(filter.workflow.as_deref())
                    .bind(filter.status.map(|s| s.as_str()))
                    .bind(filter.created_after)
                    .bind(filter.created_before)
                    .bind(before)
                    .bind(take as i64)
                    .bind(*last)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "executions".to_owned()))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<Vec<$crate::engine::model::Execution>>>()?;
                let next_cursor = if sizes.len() > take {
                    items.last().map(|e| e.id.to_string())
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            async fn list_attempts_shared(
                &self,
                tenant_id: Uuid,
                id: Uuid,
                page: &PageRequest,
                view: $crate::tenancy::model::View,
            ) -> Result<Page<$crate::engine::model::StepAttempt>> {
                use $crate::tenancy::model::{View, fitting};
                self.get_execution_shared(tenant_id, id).await?;
                let order = $crate::store::shared::ATTEMPT_ORDER;
                let after = page
                    .after
                    .as_deref()
                    .map($crate::store::shared::AttemptCursor::parse)
                    .transpose()?;
                // Without a cursor, $4 is false and $5..$8 stand unused.
                let (has_after, cursor) = match after {
                    Some(c) => (true, c),
                    None => (false, $crate::store::shared::AttemptCursor {
                        unstarted: false,
                        start: $crate::store::shared::AttemptCursor::epoch(),
                        step: String::new(),
                        attempt: 0,
                    }),
                };
                let matching = format!(
                    "tenant_id = $1 AND execution_id = $2 \
                     AND (NOT $4 OR ({order}) > ($5, $6, $7, $8))"
                );
                let (size, columns) = match view {
                    View::Full => (
                        "COALESCE(OCTET_LENGTH(output), 0) + COALESCE(OCTET_LENGTH(error), 0)",
                        ATTEMPT_COLUMNS,
                    ),
                    View::Basic => ("COALESCE(OCTET_LENGTH(error), 0)", $crate::store::shared::ATTEMPT_BASIC_COLUMNS),
                };
                // The sizes first, so that a page of large outputs never loads more of them
                // than it returns.
                let sql = format!(
                    "SELECT start_time, step_name, attempt, CAST({size} AS BIGINT) FROM step_attempts \
                     WHERE {matching} ORDER BY {order} LIMIT $9"
                );
                let sizes = sqlx::query_as::<_, (Option<DateTime<Utc>>, String, i32, i64)>(
                    sqlx::AssertSqlSafe(sql),
                )
                .bind(tenant_id)
                .bind(id)
                .bind($crate::store::shared::AttemptCursor::epoch())
                .bind(has_after)
                .bind(cursor.unstarted)
                .bind(cursor.start)
                .bind(&cursor.step)
                .bind(cursor.attempt)
                .bind(i64::from(page.limit) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {id}")))?;
                let take = fitting(
                    sizes.iter().map(|s| s.3.max(0).unsigned_abs() as usize + 256),
                    page.limit as usize,
                );
                if take == 0 {
                    return Ok(Page { items: Vec::new(), next_cursor: None });
                }
                let sql = format!(
                    "SELECT {columns} FROM step_attempts WHERE {matching} \
                     ORDER BY {order} LIMIT $9"
                );
                let items = sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(id)
                    .bind($crate::store::shared::AttemptCursor::epoch())
                    .bind(has_after)
                    .bind(cursor.unstarted)
                    .bind(cursor.start)
                    .bind(&cursor.step)
                    .bind(cursor.attempt)
                    .bind(take as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| format!("execution {id}")))?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<Vec<$crate::engine::model::StepAttempt>>>()?;
                let next_cursor = if sizes.len() > take {
                    items.last().map(|a| $crate::store::shared::AttemptCursor::of(a).text())
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            async fn list_events_shared(
                &self,
                tenant_id: Uuid,
                id: Uuid,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::engine::model::Event>> {
                sqlx::query_as::<_, EventRow>(
                    "SELECT execution_id, seq, time, kind, step_name, attempt, status, message \
                     FROM execution_events WHERE tenant_id = $1 AND execution_id = $2 \
                     AND seq > $3 ORDER BY seq LIMIT $4",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| format!("execution {id}")))?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }
        }
    };
}

pub(super) use impl_execution_shared;

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

impl From<SecretRow> for crate::secrets::model::StoredSecret {
    fn from(r: SecretRow) -> Self {
        crate::secrets::model::StoredSecret {
            tenant_id: r.tenant_id,
            meta: crate::secrets::model::SecretMeta {
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
            sealed: crate::secrets::crypto::Sealed {
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

impl From<AuditRow> for crate::secrets::model::AuditEvent {
    fn from(r: AuditRow) -> Self {
        crate::secrets::model::AuditEvent {
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
    pub(super) fn of(f: &'a crate::secrets::model::AuditFilter) -> Self {
        use crate::secrets::model::{ActionMatch, ResultMatch};
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

/// Implements `SecretStore` for a store type with a `pool: sqlx::Pool<_>` field.
macro_rules! impl_secret_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::SecretStore for $store {
            async fn create_secret(&self, s: &$crate::secrets::model::StoredSecret) -> Result<()> {
                sqlx::query(
                    "INSERT INTO secrets (tenant_id, name, type, field_names, key_id, nonce, \
                     ciphertext, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(s.tenant_id)
                .bind(&s.meta.name)
                .bind(&s.meta.kind)
                .bind(s.meta.field_names.join(" "))
                .bind(&s.sealed.key_id)
                .bind(&s.sealed.nonce)
                .bind(&s.sealed.ciphertext)
                .bind(s.meta.create_time)
                .bind(s.meta.update_time)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("secret {:?}", s.meta.name)))?;
                Ok(())
            }

            async fn update_secret(&self, s: &$crate::secrets::model::StoredSecret) -> Result<()> {
                let done = sqlx::query(
                    "UPDATE secrets SET field_names = $3, key_id = $4, nonce = $5, ciphertext = $6, \
                     update_time = $7 WHERE tenant_id = $1 AND name = $2",
                )
                .bind(s.tenant_id)
                .bind(&s.meta.name)
                .bind(s.meta.field_names.join(" "))
                .bind(&s.sealed.key_id)
                .bind(&s.sealed.nonce)
                .bind(&s.sealed.ciphertext)
                .bind(s.meta.update_time)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("secret {:?}", s.meta.name)))?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound(format!("secret {:?}", s.meta.name)));
                }
                Ok(())
            }

            async fn get_secret(&self, tenant_id: Uuid, name: &str) -> Result<$crate::secrets::model::StoredSecret> {
                let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 AND name = $2");
                sqlx::query_as::<_, SecretRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await
                    .map(Into::into)
                    .map_err(map_err(|| format!("secret {name:?}")))
            }

            async fn list_secrets(
                &self,
                tenant_id: Uuid,
                page: &PageRequest,
            ) -> Result<Page<$crate::secrets::model::SecretMeta>> {
                let sql = format!(
                    "SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 \
                     AND ($2 IS NULL OR name > $2) ORDER BY name LIMIT $3"
                );
                let rows = sqlx::query_as::<_, SecretRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(page.after.as_deref())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "secrets".to_owned()))?;
                let items = rows
                    .into_iter()
                    .map(|r| $crate::secrets::model::StoredSecret::from(r).meta)
                    .collect();
                Ok(into_page(items, page, |m: &$crate::secrets::model::SecretMeta| m.name.clone()))
            }

            async fn delete_secret(&self, tenant_id: Uuid, name: &str) -> Result<()> {
                let done = sqlx::query("DELETE FROM secrets WHERE tenant_id = $1 AND name = $2")
                    .bind(tenant_id)
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err(|| format!("secret {name:?}")))?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound(format!("secret {name:?}")));
                }
                Ok(())
            }

            async fn secrets_not_sealed_with(
                &self,
                key_id: &str,
                limit: u32,
            ) -> Result<Vec<$crate::secrets::model::StoredSecret>> {
                let sql = format!(
                    "SELECT {SECRET_COLUMNS} FROM secrets WHERE key_id <> $1 \
                     ORDER BY tenant_id, name LIMIT $2"
                );
                Ok(sqlx::query_as::<_, SecretRow>(sqlx::AssertSqlSafe(sql))
                    .bind(key_id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "secrets".to_owned()))?
                    .into_iter()
                    .map(Into::into)
                    .collect())
            }

            async fn reseal_secret(
                &self,
                s: &$crate::secrets::model::StoredSecret,
                old_key_id: &str,
            ) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE secrets SET key_id = $3, nonce = $4, ciphertext = $5 \
                     WHERE tenant_id = $1 AND name = $2 AND key_id = $6",
                )
                .bind(s.tenant_id)
                .bind(&s.meta.name)
                .bind(&s.sealed.key_id)
                .bind(&s.sealed.nonce)
                .bind(&s.sealed.ciphertext)
                .bind(old_key_id)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("secret {:?}", s.meta.name)))?;
                Ok(done.rows_affected() == 1)
            }

            async fn count_secrets_not_sealed_with(&self, key_id: &str) -> Result<i64> {
                sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE key_id <> $1")
                    .bind(key_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err(|| "secrets".to_owned()))
            }

            async fn secret_key_ids(&self) -> Result<Vec<String>> {
                sqlx::query_scalar("SELECT DISTINCT key_id FROM secrets ORDER BY key_id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "secrets".to_owned()))
            }

            async fn encryption_keys(
                &self,
            ) -> Result<Vec<(String, $crate::secrets::crypto::Sealed, DateTime<Utc>)>> {
                let rows: Vec<(String, Vec<u8>, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT key_id, nonce, check_value, create_time FROM encryption_keys \
                     ORDER BY create_time DESC",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(map_err(|| "encryption keys".to_owned()))?;
                Ok(rows
                    .into_iter()
                    .map(|(key_id, nonce, ciphertext, at)| {
                        (
                            key_id.clone(),
                            $crate::secrets::crypto::Sealed { key_id, nonce, ciphertext },
                            at,
                        )
                    })
                    .collect())
            }

            async fn record_encryption_key(
                &self,
                key_id: &str,
                check: &$crate::secrets::crypto::Sealed,
                now: DateTime<Utc>,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO encryption_keys (key_id, nonce, check_value, create_time) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO UPDATE SET create_time = excluded.create_time",
                )
                .bind(key_id)
                .bind(&check.nonce)
                .bind(&check.ciphertext)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| "encryption keys".to_owned()))?;
                Ok(())
            }

            async fn record_audit(&self, e: &$crate::secrets::model::AuditEvent) -> Result<()> {
                // Through the store's writers: a record shares their group commit instead
                // of costing a commit (and, on SQLite, a turn at the write lock) of its own.
                self.writers
                    .submit(super::Work::Audit(Box::new(e.clone())))
                    .await
            }

            async fn list_audit(
                &self,
                tenant_id: Option<Uuid>,
                filter: &$crate::secrets::model::AuditFilter,
                page: &PageRequest,
            ) -> Result<Page<$crate::secrets::model::AuditEvent>> {
                let before: Option<Uuid> = match page.after.as_deref() {
                    None => None,
                    Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
                };
                let f = $crate::store::shared::AuditBinds::of(filter);
                let sql = format!(
                    "SELECT id, tenant_id, time, actor, action, resource, result, detail \
                     FROM audit_events WHERE {} ORDER BY id DESC LIMIT $9",
                    $crate::store::shared::AUDIT_MATCHING
                );
                let rows = sqlx::query_as::<_, AuditRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(before)
                    .bind(f.actor)
                    .bind(f.action)
                    .bind(f.prefix)
                    .bind(f.code)
                    .bind(f.ok)
                    .bind(f.since)
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "audit events".to_owned()))?;
                let items = rows.into_iter().map(Into::into).collect();
                Ok(into_page(items, page, |e: &$crate::secrets::model::AuditEvent| e.id.to_string()))
            }
        }
    };
}

pub(super) use impl_secret_store;

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

impl From<DeliveryRow> for crate::engine::model::Delivery {
    fn from(r: DeliveryRow) -> Self {
        crate::engine::model::Delivery {
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

/// Webhook delivery queries that are the same on both backends.
macro_rules! impl_delivery_shared {
    ($store:ty) => {
        impl $store {
            async fn finish_delivery_shared(
                &self,
                id: Uuid,
                attempts: i32,
                outcome: &$crate::engine::model::DeliveryOutcome,
            ) -> Result<()> {
                use $crate::engine::model::DeliveryOutcome as O;
                let now = Utc::now();
                let (status, next, error, code, delivered) = match outcome {
                    O::Delivered { status } => ("delivered", now, None, Some(*status), Some(now)),
                    O::Retry { at, error, status } => {
                        ("pending", *at, Some(error.as_str()), *status, None)
                    }
                    O::Failed { error, status } => {
                        ("failed", now, Some(error.as_str()), *status, None)
                    }
                };
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt = $4, \
                     last_error = $5, last_status = $6, delivered_time = $7 WHERE id = $1",
                )
                .bind(id)
                .bind(status)
                .bind(attempts)
                .bind(next)
                .bind(error)
                .bind(code)
                .bind(delivered)
                .execute(&self.pool)
                .await
                .map_err(map_err(|| format!("webhook delivery {id}")))?;
                Ok(())
            }

            async fn list_deliveries_shared(
                &self,
                tenant_id: Option<Uuid>,
                filter: &$crate::webhooks::model::DeliveryFilter,
                page: &PageRequest,
                view: $crate::tenancy::model::View,
            ) -> Result<Page<$crate::engine::model::Delivery>> {
                use $crate::tenancy::model::{View, fitting};
                let before: Option<Uuid> = match page.after.as_deref() {
                    None => None,
                    Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
                };
                let status = filter.status.map(|s| s.as_str());
                let matching = "($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR id < $2) \
                     AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR execution_id = $4)";
                let (size, columns) = match view {
                    View::Full => (
                        "OCTET_LENGTH(payload) + OCTET_LENGTH(url) \
                         + COALESCE(OCTET_LENGTH(last_error), 0)",
                        DELIVERY_COLUMNS.to_owned(),
                    ),
                    View::Basic => (
                        "OCTET_LENGTH(url) + COALESCE(OCTET_LENGTH(last_error), 0)",
                        DELIVERY_COLUMNS.replace("payload", "'' AS payload"),
                    ),
                };
                let sql = format!(
                    "SELECT id, CAST({size} AS BIGINT) FROM webhook_deliveries WHERE {matching} \
                     ORDER BY id DESC LIMIT $5"
                );
                let sizes: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(before)
                    .bind(status)
                    .bind(filter.execution_id)
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "webhook deliveries".to_owned()))?;
                let take = fitting(
                    sizes
                        .iter()
                        .map(|(_, n)| n.max(&0).unsigned_abs() as usize + 256),
                    page.limit as usize,
                );
                let Some((last, _)) = take.checked_sub(1).and_then(|i| sizes.get(i)) else {
                    return Ok(Page {
                        items: Vec::new(),
                        next_cursor: None,
                    });
                };
                let sql = format!(
                    "SELECT {columns} FROM webhook_deliveries WHERE {matching} AND id >= $6 \
                     ORDER BY id DESC LIMIT $5"
                );
                let rows = sqlx::query_as::<_, DeliveryRow>(sqlx::AssertSqlSafe(sql))
                    .bind(tenant_id)
                    .bind(before)
                    .bind(status)
                    .bind(filter.execution_id)
                    .bind(take as i64)
                    .bind(*last)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err(|| "webhook deliveries".to_owned()))?;
                let items: Vec<$crate::engine::model::Delivery> =
                    rows.into_iter().map(Into::into).collect();
                let next_cursor = if sizes.len() > take {
                    items.last().map(|d| d.id.to_string())
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }
        }
    };
}

pub(super) use impl_delivery_shared;
