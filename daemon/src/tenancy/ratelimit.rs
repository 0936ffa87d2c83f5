//! Per-tenant rate limits on mutating requests: GCRA (a token bucket holding a minute's
//! worth of requests, refilled evenly). In memory by default; with
//! `MANTLE_RATE_LIMIT_BACKEND=postgres` the state is one row per tenant, so the limit holds
//! for all replicas together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use crate::model::rate::{Decision, gcra};
use crate::store::{self, Store};

/// Where the limiter keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Postgres,
}

/// A tenant's limit and when it was read.
type CachedLimit = (Option<u32>, tokio::time::Instant);

/// How long a tenant's limit setting is cached.
const SETTING_TTL: Duration = Duration::from_secs(2);

/// The limiter.
#[derive(Clone)]
pub struct RateLimiter {
    store: Arc<dyn Store>,
    backend: Backend,
    state: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
    settings: Arc<Mutex<HashMap<Uuid, CachedLimit>>>,
}

impl RateLimiter {
    pub fn new(store: Arc<dyn Store>, backend: Backend) -> Self {
        RateLimiter {
            store,
            backend,
            state: Arc::default(),
            settings: Arc::default(),
        }
    }

    /// Forgets the tenant's cached limit, and its in-memory bucket (a full one under the
    /// new limit): this daemon applies a changed setting at once (other replicas within
    /// `SETTING_TTL`; the PostgreSQL backend's shared bucket carries over).
    pub fn forget(&self, tenant_id: Uuid) {
        self.settings
            .lock()
            .expect("limit cache")
            .remove(&tenant_id);
        self.state.lock().expect("rate state").remove(&tenant_id);
    }

    async fn limit_of(&self, tenant_id: Uuid) -> Result<Option<u32>, store::Error> {
        if let Some((limit, at)) = self.settings.lock().expect("limit cache").get(&tenant_id)
            && at.elapsed() < SETTING_TTL
        {
            return Ok(*limit);
        }
        let limit = self
            .store
            .get_tenant_by_id(tenant_id)
            .await?
            .settings
            .rate_limit_per_minute;
        self.settings
            .lock()
            .expect("limit cache")
            .insert(tenant_id, (limit, tokio::time::Instant::now()));
        Ok(limit)
    }

    /// Takes one request from the tenant's bucket; `None` when the tenant has no limit. The
    /// error is the store's, reading the tenant's limit or (PostgreSQL) its bucket.
    pub async fn check(&self, tenant_id: Uuid) -> Result<Option<Decision>, store::Error> {
        let Some(limit) = self.limit_of(tenant_id).await? else {
            return Ok(None);
        };
        let decision = match self.backend {
            Backend::Memory => {
                let mut state = self.state.lock().expect("limiter state");
                let (decision, tat) = gcra(limit, state.get(&tenant_id).copied(), Utc::now());
                if let Some(tat) = tat {
                    state.insert(tenant_id, tat);
                }
                decision
            }
            Backend::Postgres => self.store.take_rate_limit(tenant_id, limit).await?,
        };
        Ok(Some(decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_minutes_burst_then_refuses_until_refilled() {
        let t0 = Utc::now();
        let mut tat = None;
        for i in 0..60 {
            let (d, next) = gcra(60, tat, t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 59 - i);
            tat = next;
        }
        let (d, next) = gcra(60, tat, t0);
        assert!(!d.allowed);
        assert!(next.is_none());
        assert_eq!(d.retry_after, Duration::from_secs(1));
        // One second later one more request fits.
        let (d, _) = gcra(60, tat, t0 + chrono::Duration::seconds(1));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    /// A check that cannot read the tenant's limit fails with the store's error, which a
    /// caller can tell apart (the tenant is gone, the database is away).
    #[tokio::test]
    async fn a_failed_check_is_the_stores_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testing::sqlite_store(dir.path()).await;
        let limiter = RateLimiter::new(store, Backend::Memory);
        let err = limiter.check(Uuid::from_u128(99)).await.unwrap_err();
        assert!(matches!(err, store::Error::NotFound(_)), "{err:?}");
        let default = crate::model::tenant::DEFAULT_TENANT_ID;
        assert_eq!(limiter.check(default).await.unwrap(), None);
    }
}
