//! Implements `RetentionStore`: deleting executions in short batches, audit events past
//! their retention, and the installation-wide lease of the janitor.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope, with `BEGIN_WRITE` (a transaction that writes from its
//! first statement) and `LOCK_ROWS` (locks the rows a `SELECT` read). The SQL is the same
//! on both.

use super::*;
use crate::store::{Deleted, Doomed};

/// The tables whose rows belong to an execution, by its id in `execution_id`.
const BELONGING: [&str; 6] = [
    "step_attempts",
    "execution_events",
    "step_checkpoints",
    "webhook_deliveries",
    "idempotency_keys",
    "trigger_fires",
];

/// Pushes `(a, b, …)` of `ids`.
fn push_ids(q: &mut sqlx::QueryBuilder<Db>, ids: &[Uuid]) {
    q.push("(");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(")");
}

impl ThisStore {
    /// Deletes executions `ids` (already locked by `tx`, which has held the write since
    /// `since`) and their rows; commits.
    async fn delete_locked(
        &self,
        mut tx: sqlx::Transaction<'static, Db>,
        since: std::time::Instant,
        ids: &[Uuid],
    ) -> Result<Deleted> {
        let err = || map_err(|| "executions".to_owned());
        if ids.is_empty() {
            tx.commit().await.map_err(err())?;
            return Ok(Deleted {
                held: since.elapsed(),
                ..Deleted::default()
            });
        }
        let mut rows = 0;
        // Their rows first: on SQLite some follow an execution by cascade, which would
        // leave them out of the count.
        for table in BELONGING {
            let mut q =
                sqlx::QueryBuilder::new(format!("DELETE FROM {table} WHERE execution_id IN "));
            push_ids(&mut q, ids);
            rows += q
                .build()
                .execute(&mut *tx)
                .await
                .map_err(err())?
                .rows_affected();
        }
        let mut q = sqlx::QueryBuilder::new("DELETE FROM executions WHERE id IN ");
        push_ids(&mut q, ids);
        let executions = q
            .build()
            .execute(&mut *tx)
            .await
            .map_err(err())?
            .rows_affected();
        tx.commit().await.map_err(err())?;
        Ok(Deleted {
            executions,
            rows: rows + executions,
            held: since.elapsed(),
        })
    }
}

#[async_trait::async_trait]
impl crate::store::RetentionStore for ThisStore {
    async fn delete_executions(
        &self,
        tenant_id: Uuid,
        doomed: Doomed<'_>,
        limit: u32,
    ) -> Result<Deleted> {
        let err = || map_err(|| "executions".to_owned());
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(err())?;
        let since = std::time::Instant::now();
        let mut q = sqlx::QueryBuilder::new("SELECT id FROM executions WHERE tenant_id = ");
        q.push_bind(tenant_id);
        match doomed {
            Doomed::Finished {
                ended_before,
                workflow,
            } => {
                // end_time is set exactly while an execution is finished.
                q.push(" AND end_time < ").push_bind(ended_before);
                if let Some(workflow) = workflow {
                    q.push(" AND workflow = ").push_bind(workflow.to_owned());
                }
                q.push(" ORDER BY end_time");
            }
            Doomed::All => {
                q.push(" ORDER BY id");
            }
        }
        q.push(" LIMIT ")
            .push_bind(i64::from(limit))
            .push(LOCK_ROWS);
        let ids: Vec<Uuid> = q
            .build_query_scalar()
            .fetch_all(&mut *tx)
            .await
            .map_err(err())?;
        self.delete_locked(tx, since, &ids).await
    }

    async fn delete_execution(&self, tenant_id: Uuid, id: Uuid) -> Result<Deleted> {
        let err = || map_err(move || format!("execution {id}"));
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(err())?;
        let since = std::time::Instant::now();
        let sql =
            format!("SELECT end_time FROM executions WHERE tenant_id = $1 AND id = $2{LOCK_ROWS}");
        let found: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err())?;
        match found {
            None => Err(Error::NotFound(format!("execution {id}"))),
            Some(None) => Err(Error::Conflict(format!(
                "execution {id} has not finished; cancel it first, then delete it"
            ))),
            Some(Some(_)) => self.delete_locked(tx, since, &[id]).await,
        }
    }

    async fn count_finished_before(
        &self,
        tenant_id: Uuid,
        ended_before: DateTime<Utc>,
    ) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions WHERE tenant_id = $1 AND end_time < $2",
        )
        .bind(tenant_id)
        .bind(ended_before)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err(|| "executions".to_owned()))?;
        Ok(n.max(0).unsigned_abs())
    }

    async fn delete_audit_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_events WHERE id IN \
             (SELECT id FROM audit_events WHERE time < $1 ORDER BY time LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(map_err(|| "audit events".to_owned()))?;
        Ok(done.rows_affected())
    }

    async fn reclaim_space(&self, max_pages: u32) -> Result<u64> {
        self.reclaim_space_backend(max_pages).await
    }

    async fn take_singleton_lease(
        &self,
        name: &str,
        owner: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<bool> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO singleton_leases (name, owner, expires) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires \
             WHERE singleton_leases.owner = excluded.owner OR singleton_leases.expires < $4 \
             RETURNING owner",
        )
        .bind(name)
        .bind(owner)
        .bind(expires)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err(|| format!("lease {name:?}")))?;
        Ok(held.is_some())
    }
}
