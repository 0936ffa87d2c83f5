//! Implements `DefinitionStore` for a store type with a `pool: sqlx::Pool<_>` field.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;

#[async_trait::async_trait]
impl crate::store::DefinitionStore for ThisStore {
    async fn apply_definition(
        &self,
        v: &crate::model::definition::NewVersion,
    ) -> Result<(crate::model::definition::Definition, bool)> {
        use crate::model::definition::Definition;
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
        super::triggers::reconcile(&mut tx, v.tenant_id, &v.name, version, &v.triggers, v.now)
            .await?;
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
    ) -> Result<crate::model::definition::Definition> {
        let sql = "SELECT v.tenant_id, v.name, v.version, v.content_hash, v.description, \
             v.spec, v.source, v.create_time FROM workflow_versions v JOIN workflows w \
             ON w.tenant_id = v.tenant_id AND w.name = v.name \
             WHERE v.tenant_id = $1 AND v.name = $2 AND w.delete_time IS NULL \
             AND v.version = COALESCE($3, w.latest_version)";
        let what = || match version {
            Some(n) => format!("workflow {name:?} version {n}"),
            None => format!("workflow {name:?}"),
        };
        sqlx::query_as::<_, VersionRow>(sql)
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
    ) -> Result<crate::model::definition::Definition> {
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
    ) -> Result<Page<crate::model::definition::DefinitionSummary>> {
        use crate::model::definition::DefinitionSummary;
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
            .map(
                |(name, latest_version, description, create_time, update_time)| DefinitionSummary {
                    name,
                    latest_version,
                    description,
                    create_time,
                    update_time,
                },
            )
            .collect();
        Ok(into_page(items, page, |d: &DefinitionSummary| {
            d.name.clone()
        }))
    }

    async fn list_definition_versions(
        &self,
        tenant_id: Uuid,
        name: &str,
        page: &PageRequest,
    ) -> Result<Page<crate::model::definition::VersionInfo>> {
        use crate::model::definition::VersionInfo;
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
        Ok(into_page(items, page, |v: &VersionInfo| {
            v.version.to_string()
        }))
    }

    async fn delete_definition(
        &self,
        tenant_id: Uuid,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let what = || format!("workflow {name:?}");
        let mut tx = self.pool.begin().await.map_err(map_err(what))?;
        let done = sqlx::query(
            "UPDATE workflows SET delete_time = $3 \
             WHERE tenant_id = $1 AND name = $2 AND delete_time IS NULL",
        )
        .bind(tenant_id)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err(what))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(what()));
        }
        // Its triggers go with it: a deleted workflow starts nothing.
        super::triggers::remove(&mut tx, tenant_id, name).await?;
        tx.commit().await.map_err(map_err(what))?;
        Ok(())
    }
}
