//! Implements `SecretStore` for a store type with a `pool: sqlx::Pool<_>` field.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;

#[async_trait::async_trait]
impl crate::store::SecretStore for ThisStore {
    async fn create_secret(&self, s: &crate::model::secret::StoredSecret) -> Result<()> {
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

    async fn update_secret(&self, s: &crate::model::secret::StoredSecret) -> Result<()> {
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

    async fn get_secret(
        &self,
        tenant_id: Uuid,
        name: &str,
    ) -> Result<crate::model::secret::StoredSecret> {
        let sql =
            format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant_id = $1 AND name = $2");
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
    ) -> Result<Page<crate::model::secret::SecretMeta>> {
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
            .map(|r| crate::model::secret::StoredSecret::from(r).meta)
            .collect();
        Ok(into_page(
            items,
            page,
            |m: &crate::model::secret::SecretMeta| m.name.clone(),
        ))
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
    ) -> Result<Vec<crate::model::secret::StoredSecret>> {
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
        s: &crate::model::secret::StoredSecret,
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
    ) -> Result<Vec<(String, crate::model::secret::Sealed, DateTime<Utc>)>> {
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
                    crate::model::secret::Sealed {
                        key_id,
                        nonce,
                        ciphertext,
                    },
                    at,
                )
            })
            .collect())
    }

    async fn record_encryption_key(
        &self,
        key_id: &str,
        check: &crate::model::secret::Sealed,
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
}
