//! Outbound webhooks: deliveries queued (durably, with the execution's end) are sent by a
//! worker on every daemon, signed, retried with backoff for up to 24 hours across restarts,
//! and refused for private addresses like `http/request`.
//!
//! The worker sends many deliveries at once ([`IN_FLIGHT`]), but at most [`PER_TENANT`] of
//! one tenant's: a tenant whose endpoint hangs holds its own slots until they time out, and
//! another tenant's deliveries are taken and sent meanwhile.

pub use crate::model::delivery as model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{KeyInit, Mac};
use tokio_util::sync::CancellationToken;

use crate::connectors::http::{Outbound, check_target, check_url, guarded_client};
use crate::model::execution::{Delivery, DeliveryClaim, DeliveryOutcome};
use crate::secrets::Secrets;
use crate::store::Store;
use crate::tenancy::audit;

/// Deliveries a daemon sends at once.
const IN_FLIGHT: usize = 64;
/// Deliveries of one tenant a daemon sends at once; a tenant with that many is not taken
/// for until one ends.
const PER_TENANT: usize = 4;
/// How long a taken delivery is held (no other daemon takes it meanwhile): longer than a
/// send may take.
const HOLD_MS: u64 = 60_000;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The signature header's value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature(key: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The wait before attempt `n + 1`: 5 s doubling to an hour, jittered to 50–100 %.
fn backoff(attempts: i32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempts.clamp(0, 10)).min(3600);
    let ms = base * 1000;
    Duration::from_millis(ms / 2 + rand::random_range(0..=ms / 2))
}

/// The delivery worker cannot start: its HTTP client cannot be built (a proxy that is not
/// a URL, the TLS setup). The message comes from the connectors' client builder.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

/// The delivery worker.
#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    secrets: Secrets,
    client: reqwest::Client,
    outbound: Outbound,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Secrets,
        outbound: Outbound,
    ) -> Result<Webhooks, ClientError> {
        Ok(Webhooks {
            store,
            secrets,
            client: guarded_client(&outbound).map_err(ClientError)?,
            outbound,
        })
    }

    /// Sends due deliveries until `cancel` fires: up to [`IN_FLIGHT`] at once, at most
    /// [`PER_TENANT`] of any one tenant (see the module's documentation).
    pub fn spawn(self, cancel: CancellationToken) {
        tokio::spawn(async move {
            let mut sending = tokio::task::JoinSet::new();
            let mut tenant_of: HashMap<tokio::task::Id, uuid::Uuid> = HashMap::new();
            let mut per_tenant: HashMap<uuid::Uuid, usize> = HashMap::new();
            loop {
                let free = IN_FLIGHT - sending.len();
                let mut taken = 0;
                if free > 0 {
                    let claim = DeliveryClaim {
                        limit: free as u32,
                        per_tenant: PER_TENANT as u32,
                        skip: per_tenant
                            .iter()
                            .filter(|(_, n)| **n >= PER_TENANT)
                            .map(|(t, _)| *t)
                            .collect(),
                        hold_ms: HOLD_MS,
                    };
                    match self.store.claim_deliveries(&claim).await {
                        Ok(batch) => {
                            taken = batch.len();
                            for d in batch {
                                *per_tenant.entry(d.tenant_id).or_default() += 1;
                                let tenant = d.tenant_id;
                                let worker = self.clone();
                                let task = sending.spawn(async move { worker.deliver(d).await });
                                tenant_of.insert(task.id(), tenant);
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "taking webhook deliveries failed");
                        }
                    }
                }
                // More may be due at once when this pass took some and had room for more.
                let pause = if taken > 0 && sending.len() < IN_FLIGHT {
                    Duration::ZERO
                } else {
                    Duration::from_millis(500)
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    Some(done) = sending.join_next_with_id(), if !sending.is_empty() => {
                        // Its slot frees however the task ended (a panic included).
                        let id = match &done {
                            Ok((id, ())) => *id,
                            Err(e) => e.id(),
                        };
                        if let Some(tenant) = tenant_of.remove(&id)
                            && let Some(n) = per_tenant.get_mut(&tenant)
                        {
                            *n -= 1;
                            if *n == 0 {
                                per_tenant.remove(&tenant);
                            }
                        }
                    }
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
    }

    async fn deliver(&self, d: Delivery) {
        let attempts = d.attempts + 1;
        let outcome = match self.send(&d).await {
            Ok(status) => DeliveryOutcome::Delivered { status },
            Err((error, status)) => {
                let error = crate::model::execution::error_text(error);
                let at =
                    Utc::now() + chrono::Duration::from_std(backoff(attempts)).unwrap_or_default();
                if at > d.expire_time {
                    DeliveryOutcome::Failed { error, status }
                } else {
                    DeliveryOutcome::Retry { at, error, status }
                }
            }
        };
        let label = match &outcome {
            DeliveryOutcome::Delivered { .. } => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Failed { .. } => "failed",
        };
        metrics::counter!("mantle_webhook_deliveries_total", "tenant_id" => d.tenant_id.to_string(), "outcome" => label)
            .increment(1);
        if let DeliveryOutcome::Retry { error, .. } | DeliveryOutcome::Failed { error, .. } =
            &outcome
        {
            tracing::warn!(delivery = %d.id, tenant = %d.tenant_id, attempts, error = %error, outcome = label, "webhook delivery failed");
        }
        if let Err(err) = self.store.finish_delivery(d.id, attempts, &outcome).await {
            tracing::error!(delivery = %d.id, error = %err, "recording a webhook delivery failed");
        }
    }

    /// One POST; `Err` carries the reason and the HTTP status when there was one.
    async fn send(&self, d: &Delivery) -> Result<i32, (String, Option<i32>)> {
        let url = reqwest::Url::parse(&d.url).map_err(|e| (format!("webhook_url: {e}"), None))?;
        check_url(&url, self.outbound.policy).map_err(|e| (e, None))?;
        check_target(&url, &self.outbound)
            .await
            .map_err(|e| (e, None))?;
        let mut request = self
            .client
            .post(url)
            .timeout(TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-mantle-delivery", d.id.to_string())
            .header("x-mantle-event", "execution.finished");
        if let Some(name) = &d.secret_name {
            let credential = self
                .secrets
                .credential(d.tenant_id, name)
                .await
                .map_err(|e| (e.to_string(), None))?;
            let key = credential
                .fields
                .get("key")
                .or_else(|| credential.fields.values().next())
                .ok_or_else(|| (format!("webhook secret {name:?} has no field"), None))?;
            request = request.header(
                "x-mantle-signature",
                signature(key.as_bytes(), Utc::now().timestamp(), &d.payload),
            );
        }
        let response = request.body(d.payload.clone()).send().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            (format!("POST {}: {cause}", d.url), None)
        })?;
        let status = i32::from(response.status().as_u16());
        if response.status().is_success() {
            Ok(status)
        } else {
            Err((
                format!("POST {} answered {}", d.url, response.status()),
                Some(status),
            ))
        }
    }
}

/// A delivery with its tenant's name, for listings.
pub type Listed = (Delivery, String);

/// The filters of a ListWebhookDeliveries request; empty strings filter nothing.
pub fn delivery_filter(
    status: &str,
    execution_id: &str,
) -> Result<model::DeliveryFilter, crate::tenancy::Error> {
    use model::DeliveryStatus;
    let invalid = |field, message| crate::tenancy::Error::InvalidArgument { field, message };
    let status = match status {
        "" => None,
        name => Some(DeliveryStatus::parse(name).ok_or_else(|| {
            let names: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid(
                "status",
                format!("{name:?} is not one of {}", names.join(", ")),
            )
        })?),
    };
    let execution_id = match execution_id {
        "" => None,
        id => Some(
            uuid::Uuid::parse_str(id)
                .map_err(|_| invalid("execution_id", format!("{id:?} is not a UUID")))?,
        ),
    };
    Ok(model::DeliveryFilter {
        status,
        execution_id,
    })
}

/// Lists the deliveries the caller may see that `filter` matches.
pub async fn list(
    store: &dyn Store,
    caller: &crate::auth::Caller,
    tenant: &str,
    filter: &model::DeliveryFilter,
    page: &crate::model::tenant::PageRequest,
    view: crate::model::tenant::View,
) -> Result<crate::model::tenant::Page<Listed>, crate::tenancy::Error> {
    let tenant_id = audit::visible_tenant(store, caller, tenant).await?;
    audit::check_uuid_cursor(page)?;
    let deliveries = store.list_deliveries(tenant_id, filter, page, view).await?;
    Ok(crate::model::tenant::Page {
        items: audit::with_tenant_names(store, deliveries.items, |d| Some(d.tenant_id)).await,
        next_cursor: deliveries.next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_and_body() {
        // HMAC-SHA256("key", "1700000000.{}") computed independently.
        let sig = signature(b"key", 1_700_000_000, "{}");
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        assert_eq!(sig.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(sig, signature(b"other", 1_700_000_000, "{}"));
        assert_ne!(sig, signature(b"key", 1_700_000_001, "{}"));
    }

    #[test]
    fn delivery_filters_name_the_bad_field() {
        use model::{DeliveryFilter, DeliveryStatus};
        assert_eq!(delivery_filter("", "").unwrap(), DeliveryFilter::default());
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            delivery_filter("Delivered", &id.to_string()).unwrap(),
            DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                execution_id: Some(id),
            }
        );
        assert_eq!(
            delivery_filter("sent", "").unwrap_err().to_string(),
            "status: \"sent\" is not one of pending, delivered, failed"
        );
        assert_eq!(
            delivery_filter("", "42").unwrap_err().to_string(),
            "execution_id: \"42\" is not a UUID"
        );
    }

    #[test]
    fn backoff_grows_to_an_hour() {
        assert!(backoff(0) <= Duration::from_secs(5) && backoff(0) >= Duration::from_millis(2500));
        assert!(backoff(20) <= Duration::from_secs(3600));
    }
}
