//! `TriggerStore` for the backend that includes this file (see `definitions.rs`), and the
//! reconciliation of a workflow's triggers that `apply_definition` runs in its transaction.

use super::*;
use crate::model::trigger::{LastFire, NewTrigger, Trigger};
use crate::store::shared::{TRIGGER_COLUMNS, TriggerRow};

/// Replaces the registered triggers of `workflow` by `triggers`, inside the apply's
/// transaction: a trigger whose key stays keeps its id, pause and last fire.
pub(super) async fn reconcile(
    conn: &mut <Db as sqlx::Database>::Connection,
    tenant_id: Uuid,
    workflow: &str,
    version: i64,
    triggers: &[NewTrigger],
    now: DateTime<Utc>,
) -> Result<()> {
    let what = || format!("the triggers of workflow {workflow:?}");
    let existing: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, key FROM triggers WHERE tenant_id = $1 AND workflow = $2")
            .bind(tenant_id)
            .bind(workflow)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err(what))?;
    for (id, key) in &existing {
        if !triggers.iter().any(|t| &t.key == key) {
            sqlx::query("DELETE FROM triggers WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(map_err(what))?;
        }
    }
    for t in triggers {
        sqlx::query(
            "INSERT INTO triggers (id, tenant_id, workflow, key, kind, spec, version, \
             webhook_path, paused, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, FALSE, $9, $9) \
             ON CONFLICT (tenant_id, workflow, key) DO UPDATE SET kind = excluded.kind, \
             spec = excluded.spec, version = excluded.version, \
             webhook_path = excluded.webhook_path, update_time = excluded.update_time",
        )
        .bind(Uuid::now_v7())
        .bind(tenant_id)
        .bind(workflow)
        .bind(&t.key)
        .bind(&t.kind)
        .bind(t.spec.to_string())
        .bind(version)
        .bind(&t.webhook_path)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| match map_err(what)(e) {
            Error::AlreadyExists(_) => Error::Conflict(format!(
                "webhook path {:?} is already used by another workflow of the tenant",
                t.webhook_path.as_deref().unwrap_or_default()
            )),
            other => other,
        })?;
    }
    Ok(())
}

/// Removes the registered triggers of a deleted workflow.
pub(super) async fn remove(
    conn: &mut <Db as sqlx::Database>::Connection,
    tenant_id: Uuid,
    workflow: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM triggers WHERE tenant_id = $1 AND workflow = $2")
        .bind(tenant_id)
        .bind(workflow)
        .execute(&mut *conn)
        .await
        .map_err(map_err(|| format!("the triggers of workflow {workflow:?}")))?;
    Ok(())
}

fn rows(rows: Vec<TriggerRow>) -> Result<Vec<Trigger>> {
    rows.into_iter().map(Trigger::try_from).collect()
}

#[async_trait::async_trait]
impl crate::store::TriggerStore for ThisStore {
    async fn list_triggers(&self, tenant_id: Uuid, workflow: Option<&str>) -> Result<Vec<Trigger>> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE tenant_id = $1 \
             AND ($2 IS NULL OR workflow = $2) ORDER BY workflow, key"
        );
        let found: Vec<TriggerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(workflow)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "triggers".to_owned()))?;
        rows(found)
    }

    async fn get_trigger(&self, tenant_id: Uuid, id: Uuid) -> Result<Trigger> {
        let sql =
            format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE tenant_id = $1 AND id = $2");
        let row: TriggerRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| format!("trigger {id}")))?;
        row.try_into()
    }

    async fn find_webhook_trigger(&self, tenant_id: Uuid, path: &str) -> Result<Trigger> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE tenant_id = $1 AND webhook_path = $2"
        );
        let row: TriggerRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(path)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| format!("webhook {path:?}")))?;
        row.try_into()
    }

    async fn set_trigger_paused(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<Trigger> {
        let done = sqlx::query(
            "UPDATE triggers SET paused = $3, update_time = $4 WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(paused)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err(|| format!("trigger {id}")))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("trigger {id}")));
        }
        self.get_trigger(tenant_id, id).await
    }

    async fn active_triggers(&self, kind: &str) -> Result<Vec<Trigger>> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE kind = $1 AND NOT paused ORDER BY id"
        );
        let found: Vec<TriggerRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(kind)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "triggers".to_owned()))?;
        rows(found)
    }

    async fn trigger_changes(&self, kind: &str) -> Result<(i64, Option<DateTime<Utc>>)> {
        sqlx::query_as("SELECT count(*), max(update_time) FROM triggers WHERE kind = $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| "triggers".to_owned()))
    }

    async fn claim_trigger_poll(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE triggers SET poll_until = $3 \
             WHERE id = $1 AND (poll_until IS NULL OR poll_until <= $2)",
        )
        .bind(id)
        .bind(now)
        .bind(until)
        .execute(&self.pool)
        .await
        .map_err(map_err(|| format!("trigger {id}")))?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_trigger_state(&self, id: Uuid, state: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE triggers SET state = $2 WHERE id = $1")
            .bind(id)
            .bind(state.to_string())
            .execute(&self.pool)
            .await
            .map_err(map_err(|| format!("trigger {id}")))?;
        Ok(())
    }

    async fn note_fire(&self, trigger_id: Uuid, fire: &LastFire) -> Result<()> {
        sqlx::query(
            "UPDATE triggers SET last_scheduled_time = $2, last_fire_time = $3, \
             last_execution_id = $4, last_result = $5 \
             WHERE id = $1 AND (last_scheduled_time IS NULL OR last_scheduled_time <= $2)",
        )
        .bind(trigger_id)
        .bind(fire.scheduled_time)
        .bind(fire.fire_time)
        .bind(fire.execution_id)
        .bind(&fire.result)
        .execute(&self.pool)
        .await
        .map_err(map_err(|| format!("trigger {trigger_id}")))?;
        Ok(())
    }
}
