//! `DeliveryStore` for the backend that includes this file; claiming is each backend's own
//! SQL (`claim_deliveries_here`).
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;

#[async_trait::async_trait]
impl crate::store::DeliveryStore for ThisStore {
    async fn claim_deliveries(
        &self,
        claim: &crate::model::execution::DeliveryClaim,
    ) -> Result<Vec<Delivery>> {
        self.claim_deliveries_here(claim).await
    }

    async fn finish_delivery(
        &self,
        id: Uuid,
        attempts: i32,
        outcome: &crate::model::execution::DeliveryOutcome,
    ) -> Result<()> {
        use crate::model::execution::DeliveryOutcome as O;
        let now = Utc::now();
        let (status, next, error, code, delivered) = match outcome {
            O::Delivered { status } => ("delivered", now, None, Some(*status), Some(now)),
            O::Retry { at, error, status } => ("pending", *at, Some(error.as_str()), *status, None),
            O::Failed { error, status } => ("failed", now, Some(error.as_str()), *status, None),
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

    async fn list_deliveries(
        &self,
        tenant_id: Option<Uuid>,
        filter: &crate::model::delivery::DeliveryFilter,
        page: &PageRequest,
        view: crate::model::tenant::View,
    ) -> Result<Page<crate::model::execution::Delivery>> {
        use crate::model::tenant::{View, rows_fitting};
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
        let take = rows_fitting(sizes.iter().map(|(_, n)| *n), 256, page.limit);
        let Some((last, _)) = take.checked_sub(1).and_then(|i| sizes.get(i)) else {
            return Ok(Page::empty());
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
        let items: Vec<crate::model::execution::Delivery> =
            rows.into_iter().map(Into::into).collect();
        let next_cursor = if sizes.len() > take {
            items.last().map(|d| d.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}
