//! Retention: finished executions past their tenant's retention (or the installation's
//! `MANTLE_RETENTION_DAYS`) are deleted with everything that belongs to them, and audit
//! events past `MANTLE_AUDIT_RETENTION_DAYS`, by a janitor that runs on one daemon of an
//! installation at a time (an installation-wide lease in the database).
//!
//! Every deletion, the janitor's, `DeleteExecutions`' and `DeleteTenant`'s, goes in short
//! batches, each one transaction sized to take a few milliseconds, and pauses after each
//! (see [`Pace`]): other tenants' writes never wait behind more than one batch. On SQLite
//! the janitor then gives the freed pages back to the file system, a bounded number at a
//! time, paced the same way.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::tenant::PageRequest;
use crate::store::{self, Deleted, Doomed, Store};

/// How a batched deletion paces itself on a backend: each batch is sized to take about
/// `target` (halved when it took longer, doubled when it took less than half, within 1 and
/// `max_batch`), and followed by a pause of `rest` times what it took. SQLite has one
/// writer at a time: a batch delays every other write by its length, so batches stay
/// short and the janitor keeps a quarter of the database's time at most. PostgreSQL locks
/// rows, not the database: other tenants' writes go on beside a batch.
#[derive(Debug, Clone, Copy)]
struct Pace {
    target: Duration,
    max_batch: u32,
    rest: u32,
}

fn pace(backend: store::Backend) -> Pace {
    match backend {
        store::Backend::Sqlite => Pace {
            target: Duration::from_millis(2),
            max_batch: 200,
            rest: 3,
        },
        store::Backend::Postgres => Pace {
            target: Duration::from_millis(50),
            max_batch: 500,
            rest: 1,
        },
    }
}

/// Executions the first batch of a deletion takes.
pub const FIRST_BATCH: u32 = 20;
/// Audit events one batch deletes.
const AUDIT_BATCH: u32 = 200;
/// Free pages one step of SQLite's incremental vacuum returns (512 KiB of 4 KiB pages).
const RECLAIM_PAGES: u32 = 128;
/// The installation-wide lease the janitor holds while it works.
const LEASE: &str = "retention";

/// Deletes, in batches, the executions of `tenant_id` that `doomed` names; stops between
/// batches once `stop` fires. Returns what it deleted.
pub async fn delete_in_batches(
    store: &dyn Store,
    tenant_id: Uuid,
    doomed: Doomed<'_>,
    stop: Option<&CancellationToken>,
) -> store::Result<Deleted> {
    let pace = pace(store.backend());
    let mut total = Deleted::default();
    let mut limit = FIRST_BATCH;
    loop {
        let deleted = store.delete_executions(tenant_id, doomed, limit).await?;
        // The time the batch held the write, which other writers waited for; not the
        // time it waited for the write itself.
        let took = deleted.held;
        tracing::debug!(limit, held_ms = took.as_secs_f64() * 1e3, "retention batch");
        record(deleted);
        total += deleted;
        if deleted.executions < u64::from(limit) {
            return Ok(total);
        }
        if took > pace.target {
            limit = (limit / 2).max(1);
        } else if took < pace.target / 2 {
            limit = (limit * 2).min(pace.max_batch);
        }
        if pause(took * pace.rest, stop).await {
            return Ok(total);
        }
    }
}

/// Counts what a deletion removed.
pub fn record(deleted: Deleted) {
    if deleted.executions > 0 {
        metrics::counter!("mantle_retention_deleted_executions_total")
            .increment(deleted.executions);
        metrics::counter!("mantle_retention_deleted_rows_total").increment(deleted.rows);
    }
}

/// Sleeps `took` (what the last batch cost the database), at least a millisecond; true when
/// `stop` fired meanwhile.
async fn pause(took: Duration, stop: Option<&CancellationToken>) -> bool {
    let sleep = tokio::time::sleep(took.max(Duration::from_millis(1)));
    match stop {
        Some(stop) => tokio::select! {
            () = stop.cancelled() => true,
            () = sleep => false,
        },
        None => {
            sleep.await;
            false
        }
    }
}

/// What the retention janitor deletes, and how often it looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// `MANTLE_RETENTION_DAYS`: how long finished executions are kept when their tenant sets
    /// no `retention`; `None` keeps them.
    pub executions: Option<Duration>,
    /// `MANTLE_AUDIT_RETENTION_DAYS`: how long audit events are kept; `None` keeps them.
    pub audit: Option<Duration>,
    /// `MANTLE_RETENTION_INTERVAL`: the pause between the janitor's passes.
    pub interval: Duration,
}

/// Before when something kept for `keep` has expired; `None` when nothing can have (a
/// retention reaching back past the earliest time there is keeps everything).
fn expired_before(keep: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| Utc::now().checked_sub_signed(keep))
}

/// The janitor of one daemon.
pub struct Janitor {
    store: Arc<dyn Store>,
    settings: RetentionSettings,
    /// Who holds the lease: this daemon.
    owner: String,
}

impl Janitor {
    /// `owner` names this daemon, as its leases of executions do.
    pub fn new(store: Arc<dyn Store>, settings: RetentionSettings, owner: String) -> Janitor {
        Janitor {
            store,
            settings,
            owner,
        }
    }

    /// Runs a pass every `MANTLE_RETENTION_INTERVAL` (the first soon after start) until
    /// `stop` fires.
    pub fn spawn(self, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut wait = self.settings.interval.min(Duration::from_secs(10));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = self.settings.interval;
                if let Err(err) = self.pass(&stop).await {
                    tracing::warn!(error = %err, "retention pass failed; the next one tries again");
                }
            }
        });
    }

    /// Takes or renews the lease for a while longer than a pass's pause.
    async fn hold_lease(&self) -> store::Result<bool> {
        let now = Utc::now();
        let hold = self
            .settings
            .interval
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(60));
        let expires = chrono::Duration::from_std(hold)
            .ok()
            .and_then(|hold| now.checked_add_signed(hold))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.store
            .take_singleton_lease(LEASE, &self.owner, now, expires)
            .await
    }

    /// One pass: every tenant's expired executions, then expired audit events, then (SQLite)
    /// the freed pages. Does nothing while another daemon holds the lease.
    pub async fn pass(&self, stop: &CancellationToken) -> store::Result<()> {
        if !self.hold_lease().await? {
            return Ok(());
        }
        // Renewed as the pass goes on, once an interval has passed (it is held for three).
        let mut renewed = tokio::time::Instant::now();
        let mut page = PageRequest {
            limit: 100,
            after: None,
        };
        loop {
            let tenants = self.store.list_tenants(&page).await?;
            for tenant in &tenants.items {
                if stop.is_cancelled() {
                    return Ok(());
                }
                if renewed.elapsed() >= self.settings.interval {
                    if !self.hold_lease().await? {
                        return Ok(());
                    }
                    renewed = tokio::time::Instant::now();
                }
                self.tenant_pass(tenant.id, tenant.settings.retention, stop)
                    .await?;
            }
            match tenants.next_cursor {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        if let Some(before) = self.settings.audit.and_then(expired_before) {
            self.drain(
                AUDIT_BATCH,
                "mantle_retention_deleted_audit_events_total",
                stop,
                || self.store.delete_audit_before(before, AUDIT_BATCH),
            )
            .await?;
        }
        self.drain(
            RECLAIM_PAGES,
            "mantle_retention_reclaimed_pages_total",
            stop,
            || self.store.reclaim_space(RECLAIM_PAGES),
        )
        .await
    }

    /// Calls `step` (which does at most `batch` of something, counted in `counter`) until it
    /// does less, pausing after each call as the backend's [`Pace`] says, or until `stop`
    /// fires.
    async fn drain<F, Fut>(
        &self,
        batch: u32,
        counter: &'static str,
        stop: &CancellationToken,
        step: F,
    ) -> store::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = store::Result<u64>>,
    {
        let rest = pace(self.store.backend()).rest;
        loop {
            let started = tokio::time::Instant::now();
            let n = step().await?;
            if n > 0 {
                metrics::counter!(counter).increment(n);
            }
            if n < u64::from(batch) || pause(started.elapsed() * rest, Some(stop)).await {
                return Ok(());
            }
        }
    }

    async fn tenant_pass(
        &self,
        tenant_id: Uuid,
        own: Option<Duration>,
        stop: &CancellationToken,
    ) -> store::Result<()> {
        let backlog =
            metrics::gauge!("mantle_retention_backlog", "tenant_id" => tenant_id.to_string());
        let Some(ended_before) = own.or(self.settings.executions).and_then(expired_before) else {
            backlog.set(0.0);
            return Ok(());
        };
        let expired = self
            .store
            .count_finished_before(tenant_id, ended_before)
            .await?;
        backlog.set(expired as f64);
        if expired == 0 {
            return Ok(());
        }
        let deleted = delete_in_batches(
            self.store.as_ref(),
            tenant_id,
            Doomed::Finished {
                ended_before,
                workflow: None,
            },
            Some(stop),
        )
        .await?;
        backlog.set(expired.saturating_sub(deleted.executions) as f64);
        if deleted.executions > 0 {
            tracing::info!(tenant = %tenant_id, executions = deleted.executions, rows = deleted.rows, "deleted executions past retention");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_too_long_for_the_calendar_keeps_everything() {
        let day = expired_before(Duration::from_secs(86_400)).unwrap();
        let ago = Utc::now() - day;
        assert!(ago >= chrono::Duration::hours(23) && ago <= chrono::Duration::hours(25));
        // i64::MAX seconds, as a tenant setting may hold: no cutoff (not "now", which
        // would delete every finished execution), and no panic.
        assert_eq!(expired_before(Duration::from_secs(i64::MAX as u64)), None);
        assert_eq!(expired_before(Duration::MAX), None);
    }
}
