//! `AuditStore` for the backend that includes this file.
//!
//! Compiled once per backend: `sqlite/mod.rs` and `postgres/mod.rs` include this file as a
//! module of their own (`#[path]`), where `ThisStore` names the backend's store and the
//! backend's imports are in scope. The SQL is the same on both.

use super::*;

#[async_trait::async_trait]
impl crate::store::AuditStore for ThisStore {
    async fn record_audit(&self, e: &crate::model::tenant::AuditEvent) -> Result<()> {
        // Through the store's writers: a record shares their group commit instead
        // of costing a commit (and, on SQLite, a turn at the write lock) of its own.
        self.writers
            .submit(crate::store::Work::Audit(Box::new(e.clone())))
            .await
    }

    async fn list_audit(
        &self,
        tenant_id: Option<Uuid>,
        filter: &crate::model::tenant::AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<crate::model::tenant::AuditEvent>> {
        let before: Option<Uuid> = match page.after.as_deref() {
            None => None,
            Some(c) => Some(c.parse().map_err(|_| Error::NotFound("page".to_owned()))?),
        };
        let f = crate::store::shared::AuditBinds::of(filter);
        let sql = format!(
            "SELECT id, tenant_id, time, actor, action, resource, result, detail \
             FROM audit_events WHERE {} ORDER BY id DESC LIMIT $9",
            crate::store::shared::AUDIT_MATCHING
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
        Ok(into_page(
            items,
            page,
            |e: &crate::model::tenant::AuditEvent| e.id.to_string(),
        ))
    }
}
