//! Implements the parts of `ExecutionStore` whose SQL is the same on both backends, as
//! inherent `*_shared` methods the backends' trait impls call.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;

/// The terminal statuses, as an SQL list.
const TERMINAL: &str = "('completed', 'failed', 'cancelled', 'timed_out')";

/// Requests cancellation, to be followed by `WHERE`. A queued execution has no driver
/// yet: it becomes claimable with the cancellation requested, so a driver ends it like any
/// other (its terminal event and webhook delivery written with the end) without running a
/// step; a sleeping one is woken. (Every right-hand side reads the row as it was.)
const CANCEL: &str = "UPDATE executions SET cancel_requested = TRUE, wake_time = NULL, \
     owner = CASE WHEN status = 'queued' THEN NULL ELSE owner END, \
     lease_expires = CASE WHEN status = 'queued' THEN NULL ELSE lease_expires END, \
     status = CASE WHEN status = 'queued' THEN 'pending' ELSE status END";

/// `{select} FROM executions WHERE` the tenant's executions that `filter` matches: only
/// the conditions that are set, so that the database takes the index that fits (a workflow,
/// a status, or both, each in id order). Ids are UUIDv7, ordered by creation: a creation
/// time range also bounds the ids (by a second more, for the clock between taking the id
/// and the time), so any of those indexes is walked from the range's start.
fn matching(
    select: &str,
    tenant_id: Uuid,
    filter: &crate::model::execution::ExecutionFilter,
) -> sqlx::QueryBuilder<Db> {
    let mut q = sqlx::QueryBuilder::new(format!("{select} FROM executions WHERE "));
    push_matching(&mut q, tenant_id, filter);
    q
}

/// The conditions of [`matching`], pushed onto `q`.
fn push_matching(
    q: &mut sqlx::QueryBuilder<Db>,
    tenant_id: Uuid,
    filter: &crate::model::execution::ExecutionFilter,
) {
    q.push("tenant_id = ").push_bind(tenant_id);
    if let Some(workflow) = &filter.workflow {
        q.push(" AND workflow = ").push_bind(workflow.clone());
    }
    if let Some(status) = filter.status {
        q.push(" AND status = ").push_bind(status.as_str());
    }
    let (low, high) = crate::store::shared::id_range(filter.created_after, filter.created_before);
    if let Some(after) = filter.created_after {
        q.push(" AND create_time >= ").push_bind(after);
    }
    if let Some(low) = low {
        q.push(" AND id >= ").push_bind(low);
    }
    if let Some(before) = filter.created_before {
        q.push(" AND create_time < ").push_bind(before);
    }
    if let Some(high) = high {
        q.push(" AND id < ").push_bind(high);
    }
}

impl ThisStore {
    pub(super) async fn create_execution_shared(
        &self,
        e: &crate::model::execution::NewExecution,
        lease_expires: DateTime<Utc>,
    ) -> Result<crate::model::execution::Created> {
        use crate::model::execution::{Created, Lease};
        let lease = Lease {
            execution_id: e.id,
            epoch: 1,
        };
        // Nothing to check first: the insert shares the writers' group commit.
        if let Some(row) = crate::store::NewRow::simple(e, lease_expires) {
            self.writers
                .submit(crate::store::Work::Create(Box::new(row)))
                .await?;
            return Ok(Created::New(lease));
        }
        let what = || format!("execution {}", e.id);
        let mut tx = self.pool.begin().await.map_err(map_err(what))?;
        if let Some(fire) = &e.fire {
            // One execution per trigger and scheduled time, across daemons: the first
            // transaction to insert the fire wins; the others find its execution.
            let inserted = sqlx::query(
                "INSERT INTO trigger_fires (trigger_id, scheduled_time, tenant_id, \
                 execution_id, fire_time) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (trigger_id, scheduled_time) DO NOTHING",
            )
            .bind(fire.trigger_id)
            .bind(fire.scheduled_time)
            .bind(e.tenant_id)
            .bind(e.id)
            .bind(e.now)
            .execute(&mut *tx)
            .await
            .map_err(map_err(what))?;
            if inserted.rows_affected() == 0 {
                let (existing,): (Uuid,) = sqlx::query_as(
                    "SELECT execution_id FROM trigger_fires \
                     WHERE trigger_id = $1 AND scheduled_time = $2",
                )
                .bind(fire.trigger_id)
                .bind(fire.scheduled_time)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err(what))?;
                tx.commit().await.map_err(map_err(what))?;
                return Ok(Created::Existing(existing));
            }
        }
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
        static INSERT: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| crate::store::NewRow::insert_sql(|k| format!("${k}")));
        let row = crate::store::NewRow::new(e, lease_expires, queued);
        sqlx::query(sqlx::AssertSqlSafe(INSERT.as_str()))
            .bind(row.id)
            .bind(row.tenant_id)
            .bind(&row.workflow)
            .bind(row.version)
            .bind(row.status)
            .bind(&row.inputs)
            .bind(&row.trigger)
            .bind(row.create_time)
            .bind(row.deadline)
            .bind(&row.owner)
            .bind(row.lease_expires)
            .bind(row.lease_epoch)
            .execute(&mut *tx)
            .await
            .map_err(map_err(what))?;
        tx.commit().await.map_err(map_err(what))?;
        if queued {
            return Ok(Created::Queued(e.id));
        }
        Ok(Created::New(lease))
    }

    pub(super) async fn promote_queued_shared(&self, global_max: Option<u32>) -> Result<u64> {
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

    pub(super) async fn count_queued_shared(&self) -> Result<Vec<(Uuid, i64)>> {
        sqlx::query_as(
            "SELECT tenant_id, COUNT(*) FROM executions WHERE status = 'queued' \
             GROUP BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| "queued executions".to_owned()))
    }

    pub(super) async fn load_execution_shared(
        &self,
        id: Uuid,
    ) -> Result<(
        crate::model::execution::Execution,
        Vec<crate::model::execution::StepAttempt>,
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

    pub(super) async fn release_lease_shared(
        &self,
        lease: crate::model::execution::Lease,
    ) -> Result<()> {
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

    pub(super) async fn request_cancel_shared(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<crate::model::execution::Execution> {
        let mut q = sqlx::QueryBuilder::new(format!("{CANCEL} WHERE tenant_id = "));
        q.push_bind(tenant_id)
            .push(" AND id = ")
            .push_bind(id)
            .push(format!(
                " AND status NOT IN {TERMINAL} RETURNING {EXECUTION_COLUMNS}"
            ));
        let row: Option<ExecutionRow> = q
            .build_query_as()
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err(|| format!("execution {id}")))?;
        match row {
            Some(row) => row.try_into(),
            // Finished already, or not the tenant's.
            None => self.get_execution_shared(tenant_id, id).await,
        }
    }

    /// Requests the cancellation of at most `limit` of the tenant's unfinished executions
    /// that `filter` matches and that are not being cancelled yet, oldest first, in one
    /// statement; returns their ids. Called again until it returns fewer than `limit`, it
    /// cancels every match, each batch a short write.
    pub(super) async fn request_cancel_matching_shared(
        &self,
        tenant_id: Uuid,
        filter: &crate::model::execution::ExecutionFilter,
        limit: u32,
    ) -> Result<Vec<Uuid>> {
        let mut q = sqlx::QueryBuilder::new(format!(
            "{CANCEL} WHERE id IN (SELECT id FROM executions WHERE "
        ));
        push_matching(&mut q, tenant_id, filter);
        q.push(format!(
            " AND status NOT IN {TERMINAL} AND cancel_requested = FALSE ORDER BY id LIMIT "
        ))
        .push_bind(i64::from(limit))
        .push(") RETURNING id");
        q.build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "executions".to_owned()))
    }

    pub(super) async fn retry_execution_shared(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        owner: &str,
        lease_expires: DateTime<Utc>,
    ) -> Result<crate::model::execution::Lease> {
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
            Some(epoch) => Ok(crate::model::execution::Lease {
                execution_id: id,
                epoch,
            }),
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

    pub(super) async fn get_execution_shared(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> Result<crate::model::execution::Execution> {
        let sql =
            format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE tenant_id = $1 AND id = $2");
        sqlx::query_as::<_, ExecutionRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err(|| format!("execution {id}")))?
            .try_into()
    }

    pub(super) async fn list_executions_shared(
        &self,
        tenant_id: Uuid,
        filter: &crate::model::execution::ExecutionFilter,
        page: &PageRequest,
        view: crate::model::tenant::View,
    ) -> Result<Page<crate::model::execution::Execution>> {
        use crate::model::tenant::{View, rows_fitting};
        let before: Option<Uuid> = match page.after.as_deref() {
            None => None,
            Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
        };
        // The sizes first, so that a page of large executions never loads more of
        // them than it returns.
        let (size, columns) = match view {
            View::Full => (
                "OCTET_LENGTH(inputs) + COALESCE(OCTET_LENGTH(outputs), 0) \
                 + COALESCE(OCTET_LENGTH(error), 0) + OCTET_LENGTH(trigger_info)",
                EXECUTION_COLUMNS,
            ),
            View::Basic => (
                "COALESCE(OCTET_LENGTH(error), 0)",
                crate::store::shared::EXECUTION_BASIC_COLUMNS,
            ),
        };
        let limit = i64::from(page.limit) + 1;
        let mut q = matching(
            &format!("SELECT id, CAST({size} AS BIGINT)"),
            tenant_id,
            filter,
        );
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let sizes: Vec<(Uuid, i64)> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "executions".to_owned()))?;
        // 512: the fixed fields of an execution, as an upper bound.
        let take = rows_fitting(sizes.iter().map(|(_, n)| *n), 512, page.limit);
        let Some((last, _)) = take.checked_sub(1).and_then(|i| sizes.get(i)) else {
            return Ok(Page::empty());
        };
        let mut q = matching(&format!("SELECT {columns}"), tenant_id, filter);
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" AND id >= ")
            .push_bind(*last)
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(take as i64);
        let rows: Vec<ExecutionRow> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(map_err(|| "executions".to_owned()))?;
        let items = rows
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<Vec<crate::model::execution::Execution>>>()?;
        let next_cursor = if sizes.len() > take {
            items.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn list_attempts_shared(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        page: &PageRequest,
        view: crate::model::tenant::View,
    ) -> Result<Page<crate::model::execution::StepAttempt>> {
        use crate::model::tenant::{View, rows_fitting};
        self.get_execution_shared(tenant_id, id).await?;
        let order = crate::store::shared::ATTEMPT_ORDER;
        let after = page
            .after
            .as_deref()
            .map(crate::store::shared::AttemptCursor::parse)
            .transpose()?;
        // Without a cursor, $4 is false and $5..$8 stand unused.
        let (has_after, cursor) = match after {
            Some(c) => (true, c),
            None => (
                false,
                crate::store::shared::AttemptCursor {
                    unstarted: false,
                    start: crate::store::shared::AttemptCursor::epoch(),
                    step: String::new(),
                    attempt: 0,
                },
            ),
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
            View::Basic => (
                "COALESCE(OCTET_LENGTH(error), 0)",
                crate::store::shared::ATTEMPT_BASIC_COLUMNS,
            ),
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
        .bind(crate::store::shared::AttemptCursor::epoch())
        .bind(has_after)
        .bind(cursor.unstarted)
        .bind(cursor.start)
        .bind(&cursor.step)
        .bind(cursor.attempt)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| format!("execution {id}")))?;
        let take = rows_fitting(sizes.iter().map(|s| s.3), 256, page.limit);
        if take == 0 {
            return Ok(Page::empty());
        }
        let sql = format!(
            "SELECT {columns} FROM step_attempts WHERE {matching} \
             ORDER BY {order} LIMIT $9"
        );
        let items = sqlx::query_as::<_, AttemptRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .bind(crate::store::shared::AttemptCursor::epoch())
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
            .collect::<Result<Vec<crate::model::execution::StepAttempt>>>()?;
        let next_cursor = if sizes.len() > take {
            items
                .last()
                .map(|a| crate::store::shared::AttemptCursor::of(a).text())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn list_events_shared(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::model::execution::Event>> {
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

impl ThisStore {
    pub(super) async fn list_checkpoints_shared(
        &self,
        id: Uuid,
        step_name: &str,
        generation: i32,
    ) -> Result<Vec<crate::model::execution::Checkpoint>> {
        sqlx::query_as::<_, crate::store::shared::CheckpointRow>(
            "SELECT step_name, generation, seq, attempt, time, kind, model, input_tokens, \
             output_tokens, cost_usd, body FROM step_checkpoints \
             WHERE execution_id = $1 AND step_name = $2 AND generation = $3 ORDER BY seq",
        )
        .bind(id)
        .bind(step_name)
        .bind(generation)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err(|| format!("execution {id}")))?
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }

    pub(super) async fn execution_usage_shared(
        &self,
        id: Uuid,
    ) -> Result<crate::model::execution::UsageTotal> {
        self.usage("WHERE execution_id = $1 AND model IS NOT NULL", id, None)
            .await
            .map_err(map_err(|| format!("execution {id}")))
    }

    pub(super) async fn tenant_usage_since_shared(
        &self,
        tenant_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<crate::model::execution::UsageTotal> {
        self.usage(
            "WHERE tenant_id = $1 AND time >= $2 AND model IS NOT NULL",
            tenant_id,
            Some(since),
        )
        .await
        .map_err(map_err(|| format!("tenant {tenant_id}")))
    }

    /// Model usage of the checkpoints `filter` selects (by `$1`, and `$2` when `since`).
    async fn usage(
        &self,
        filter: &'static str,
        id: Uuid,
        since: Option<DateTime<Utc>>,
    ) -> std::result::Result<crate::model::execution::UsageTotal, sqlx::Error> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) FROM step_checkpoints {filter}"
        );
        let mut query = sqlx::query_as::<_, (i64, i64, f64)>(sqlx::AssertSqlSafe(sql)).bind(id);
        if let Some(since) = since {
            query = query.bind(since);
        }
        let (input_tokens, output_tokens, cost_usd) = query.fetch_one(&self.pool).await?;
        Ok(crate::model::execution::UsageTotal {
            input_tokens,
            output_tokens,
            cost_usd,
        })
    }
}

#[async_trait::async_trait]
impl crate::store::IdempotencyStore for ThisStore {
    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expire_time < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err(|| "idempotency keys".to_owned()))?;
        Ok(done.rows_affected())
    }
}
