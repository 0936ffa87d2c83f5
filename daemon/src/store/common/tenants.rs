//! Implements `TenantStore` for a store type with a `pool: sqlx::Pool<_>` field.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;
use crate::store::shared::default_credentials_text;

/// A daily token cap as stored (BIGINT): the API takes no more than `i64::MAX`.
fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A retention as stored: whole seconds.
fn seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl crate::store::TenantStore for ThisStore {
    async fn create_tenant(&self, t: &Tenant) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (id, name, display_name, create_time, update_time, \
             max_steps_per_workflow, max_runtime_minutes, allowed_domains, \
             rate_limit_per_minute, max_concurrent_executions, max_queued_executions, \
             webhook_url, webhook_secret, max_cost_usd_per_execution, max_tokens_per_day, \
             default_credentials, retention_seconds) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
        .bind(t.settings.max_cost_usd_per_execution)
        .bind(t.settings.max_tokens_per_day.map(tokens))
        .bind(default_credentials_text(&t.settings.default_credentials))
        .bind(t.settings.retention.map(seconds))
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
            .map_err(map_err(|| format!("tenant {name:?}")))?
            .try_into()
    }

    async fn take_rate_limit(
        &self,
        tenant_id: Uuid,
        limit: u32,
    ) -> Result<crate::model::rate::Decision> {
        self.take_rate_limit_backend(tenant_id, limit).await
    }

    async fn get_tenant_by_id(&self, id: Uuid) -> Result<Tenant> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        sqlx::query_as::<_, TenantRow>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| format!("tenant {id}")))?
            .try_into()
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
        let tenants = rows
            .into_iter()
            .map(Tenant::try_from)
            .collect::<Result<Vec<_>>>()?;
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
             webhook_secret = CASE WHEN $18 THEN $19 ELSE webhook_secret END, \
             max_cost_usd_per_execution = \
                 CASE WHEN $20 THEN $21 ELSE max_cost_usd_per_execution END, \
             max_tokens_per_day = CASE WHEN $22 THEN $23 ELSE max_tokens_per_day END, \
             default_credentials = CASE WHEN $24 THEN $25 ELSE default_credentials END, \
             retention_seconds = CASE WHEN $26 THEN $27 ELSE retention_seconds END \
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
            .bind(
                update
                    .allowed_domains
                    .as_ref()
                    .and_then(|d| d.as_ref().map(|d| d.join(" "))),
            )
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
            .bind(update.max_cost_usd_per_execution.is_some())
            .bind(update.max_cost_usd_per_execution.flatten())
            .bind(update.max_tokens_per_day.is_some())
            .bind(update.max_tokens_per_day.flatten().map(tokens))
            .bind(update.default_credentials.is_some())
            .bind(
                update
                    .default_credentials
                    .as_ref()
                    .and_then(default_credentials_text),
            )
            .bind(update.retention.is_some())
            .bind(update.retention.flatten().map(seconds))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| format!("tenant {name:?}")))?
            .try_into()
    }

    async fn delete_tenant(&self, name: &str) -> Result<()> {
        let err = || map_err(|| format!("tenant {name:?}"));
        let mut tx = self.pool.begin().await.map_err(err())?;
        // Attempts, events and checkpoints have no foreign key to their execution (the
        // checkpoint fence stands for it): they go first, explicitly. The rest
        // follows the tenant by cascade.
        for table in ["step_attempts", "execution_events", "step_checkpoints"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE execution_id IN (SELECT e.id FROM \
                 executions e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = $1)"
            )))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        }
        sqlx::query(
            "DELETE FROM trigger_fires WHERE tenant_id IN (SELECT id FROM tenants WHERE name = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(err())?;
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
        sqlx::query("UPDATE api_keys SET revoke_time = COALESCE(revoke_time, $2) WHERE id = $1")
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
