//! Webhook triggers: `POST /hooks/<tenant>/<path>` starts the workflow whose webhook
//! trigger has `path: /hooks/<path>` in that tenant.
//!
//! A request proves it knows the trigger's secret (a stored secret with a `token` field,
//! such as type `bearer`) by one of: `X-Mantle-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(token, "<t>.<body>")>` (the scheme of Mantle's own outbound webhooks; at
//! most [`TOLERANCE`] old), `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(token, body)>`
//! (GitHub and the Go original), or `Authorization: Bearer <token>`. Every comparison is in
//! constant time. A refusal starts nothing, is counted in
//! `mantle_webhook_refusals_total{reason}` and audited (at most
//! [`AUDITED_REFUSALS_PER_MINUTE`] records a trigger a minute).

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{Fired, Triggers, spec, trigger_value};
use crate::model::tenant::AuditEvent;
use crate::workflow::spec::TriggerSpec;

/// How old an `X-Mantle-Signature` timestamp may be (either way).
pub const TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);
/// Header values kept in `trigger.headers` at most, and their bytes.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers never kept: they carry the proof.
const HIDDEN: &[&str] = &[
    "authorization",
    "x-mantle-signature",
    "x-hub-signature-256",
    "x-hub-signature",
    "cookie",
];

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Refused requests of one trigger audited a minute at most: anyone may send refused
/// requests, and they must not fill the audit log. The rest are counted (metric) and the
/// next record says how many were not written.
const AUDITED_REFUSALS_PER_MINUTE: u32 = 10;

/// Per trigger: the minute's start, its records written, and the refusals left unwritten.
#[derive(Default)]
pub(super) struct RefusalAudits(
    std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (std::time::Instant, u32, u64)>>,
);

impl RefusalAudits {
    /// Whether to write this refusal's record, and how many went unwritten before it.
    fn admit(&self, trigger: uuid::Uuid) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut map = self.0.lock().expect("refusal audits");
        // Forget triggers quiet for a minute: the map holds the noisy ones only.
        if map.len() > 1024 {
            map.retain(|_, (start, _, _)| now.duration_since(*start).as_secs() < 60);
        }
        let entry = map.entry(trigger).or_insert((now, 0, 0));
        if now.duration_since(entry.0).as_secs() >= 60 {
            entry.0 = now;
            entry.1 = 0;
        }
        if entry.1 < AUDITED_REFUSALS_PER_MINUTE {
            entry.1 += 1;
            Some(std::mem::take(&mut entry.2))
        } else {
            entry.2 += 1;
            None
        }
    }
}

/// A request to a webhook trigger.
pub struct Request<'a> {
    pub tenant: &'a str,
    /// The path after `/hooks/<tenant>`, with its leading `/`.
    pub path: &'a str,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    pub now: DateTime<Utc>,
}

/// A started (or, for a repeated delivery id, the earlier) execution.
#[derive(Debug)]
pub struct Accepted {
    pub execution_id: uuid::Uuid,
    /// False when a delivery id had started it before.
    pub new: bool,
}

/// Why a request started nothing.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such tenant or webhook (the two are not told apart).
    #[error("no webhook trigger at this path")]
    NotFound,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("the trigger is paused")]
    Paused,
    #[error("the tenant's rate limit is exhausted; retry after {0} s")]
    RateLimited(u64),
    /// The start was refused (the tenant's caps, invalid inputs): the message says why.
    #[error("{0}")]
    Start(crate::executions::Error),
    #[error("{0}")]
    Unavailable(String),
}

impl Refused {
    /// The label of `mantle_webhook_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::NotFound => "not_found",
            Refused::Unauthenticated(_) => "unauthenticated",
            Refused::Paused => "paused",
            Refused::RateLimited(_) => "rate_limited",
            Refused::Start(_) => "start_refused",
            Refused::Unavailable(_) => "unavailable",
        }
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether the request proves it knows `token`.
pub fn verify(
    token: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), &'static str> {
    if let Some(sig) = header(headers, "x-mantle-signature") {
        let mut t = None;
        let mut v1 = Vec::new();
        for part in sig.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => t = value.parse::<i64>().ok(),
                Some(("v1", value)) => v1.push(value),
                _ => {}
            }
        }
        let t = t.ok_or("X-Mantle-Signature has no timestamp t=")?;
        let signed_at =
            DateTime::from_timestamp(t, 0).ok_or("X-Mantle-Signature: bad timestamp")?;
        if (now - signed_at).abs() > TOLERANCE {
            return Err("X-Mantle-Signature is stale: its timestamp is over 5 minutes away");
        }
        let expected = hmac_hex(token.as_bytes(), &[t.to_string().as_bytes(), b".", body]);
        return if v1.iter().any(|v| same(v, &expected)) {
            Ok(())
        } else {
            Err("X-Mantle-Signature does not match")
        };
    }
    if let Some(sig) = header(headers, "x-hub-signature-256") {
        let given = sig.strip_prefix("sha256=").unwrap_or("");
        let expected = hmac_hex(token.as_bytes(), &[body]);
        return if same(&given.to_ascii_lowercase(), &expected) {
            Ok(())
        } else {
            Err("X-Hub-Signature-256 does not match")
        };
    }
    if let Some(auth) = header(headers, "authorization") {
        let given = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .unwrap_or("");
        return if same(given.trim(), token) {
            Ok(())
        } else {
            Err("the bearer token does not match")
        };
    }
    Err("no signature: send X-Mantle-Signature, X-Hub-Signature-256 or a bearer token")
}

/// What an execution sees as `trigger.payload`: the body as JSON, or as a string.
pub fn payload(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn kept_headers(headers: &[(String, String)]) -> Value {
    let mut out = serde_json::Map::new();
    let mut bytes = 0;
    for (name, value) in headers {
        if HIDDEN.contains(&name.as_str()) || out.len() >= MAX_HEADERS {
            continue;
        }
        bytes += name.len() + value.len();
        if bytes > MAX_HEADER_BYTES {
            break;
        }
        out.insert(name.clone(), Value::String(value.clone()));
    }
    Value::Object(out)
}

impl Triggers {
    /// Starts the execution a webhook request asks for, once it proved it knows the
    /// trigger's secret.
    pub async fn receive(&self, req: Request<'_>) -> Result<Accepted, Refused> {
        let outcome = self.receive_checked(&req).await;
        if let Err(refused) = &outcome {
            metrics::counter!("mantle_webhook_refusals_total", "reason" => refused.reason())
                .increment(1);
        }
        outcome
    }

    async fn receive_checked(&self, req: &Request<'_>) -> Result<Accepted, Refused> {
        let unavailable = |e: crate::store::Error| match e {
            crate::store::Error::NotFound(_) => Refused::NotFound,
            e => Refused::Unavailable(e.to_string()),
        };
        let tenant = self
            .store
            .get_tenant(req.tenant)
            .await
            .map_err(unavailable)?;
        let hook_path = format!("/hooks{}", req.path);
        let t = self
            .store
            .find_webhook_trigger(tenant.id, &hook_path)
            .await
            .map_err(unavailable)?;
        let spec = spec(&t).map_err(|e| Refused::Unavailable(e.to_string()))?;
        let TriggerSpec::Webhook { secret, .. } = &spec else {
            return Err(Refused::NotFound);
        };
        let audit = |result: &str, detail: &str| {
            let detail = if result == "OK" {
                detail.to_owned()
            } else {
                match self.refusals.admit(t.id) {
                    None => return,
                    Some(0) => detail.to_owned(),
                    Some(n) => format!("{detail} ({n} more refused before, not recorded)"),
                }
            };
            let event = AuditEvent {
                id: uuid::Uuid::now_v7(),
                tenant_id: Some(tenant.id),
                time: req.now,
                actor: "webhook".to_owned(),
                action: "webhook.receive".to_owned(),
                resource: format!("triggers/{}", t.id),
                result: result.to_owned(),
                detail: Some(detail),
            };
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.record_audit(&event).await {
                    tracing::error!(error = %e, "could not record the audit event");
                }
            });
        };
        let Some(secret) = secret else {
            audit("UNAUTHENTICATED", "the trigger names no secret");
            return Err(Refused::Unauthenticated(
                "this webhook trigger names no secret, so no request can prove itself",
            ));
        };
        let token = match self.secrets.credential(tenant.id, secret).await {
            Ok(c) => c.fields.get("token").cloned(),
            Err(e) => {
                tracing::warn!(trigger = %t.id, error = %e, "the secret of a webhook trigger is unusable");
                None
            }
        };
        let Some(token) = token else {
            audit(
                "UNAUTHENTICATED",
                "the trigger's secret is missing or has no token field",
            );
            return Err(Refused::Unauthenticated(
                "the trigger's secret is missing or has no token field",
            ));
        };
        if let Err(why) = verify(&token, &req.headers, req.body, req.now) {
            audit("UNAUTHENTICATED", why);
            tracing::info!(trigger = %t.id, tenant = %tenant.name, reason = why, "webhook refused");
            return Err(Refused::Unauthenticated(why));
        }
        if t.paused {
            return Err(Refused::Paused);
        }
        if let Some(limiter) = &self.limiter {
            match limiter.check(tenant.id).await {
                Ok(Some(d)) if !d.allowed => {
                    return Err(Refused::RateLimited(d.retry_after.as_secs().max(1)));
                }
                Ok(_) => {}
                Err(e) => return Err(Refused::Unavailable(e.to_string())),
            }
        }
        let delivery = header(&req.headers, "x-github-delivery")
            .or_else(|| header(&req.headers, "idempotency-key"))
            .filter(|d| !d.is_empty() && d.len() <= 200);
        let mut trigger = trigger_value(&t, &spec, req.now);
        trigger["payload"] = payload(req.body);
        trigger["headers"] = kept_headers(&req.headers);
        if let Some(d) = delivery {
            trigger["delivery_id"] = json!(d);
        }
        // A retried delivery repeats the body; its received time differs.
        let idempotency = delivery.map(|d| {
            let body_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(req.body));
            (
                format!("webhook:{}:{d}", t.id),
                json!({"body_sha256": body_hash}),
            )
        });
        match self
            .start(&t, None, idempotency, trigger, Default::default())
            .await
        {
            Ok(Fired::Started(e)) => {
                audit("OK", &format!("started execution {}", e.id));
                Ok(Accepted {
                    execution_id: e.id,
                    new: true,
                })
            }
            Ok(Fired::Before(id)) => Ok(Accepted {
                execution_id: id,
                new: false,
            }),
            Err(e) => Err(Refused::Start(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_scheme_is_checked() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let body = br#"{"a":1}"#;
        let t = now.timestamp();
        let mantle = crate::webhooks::signature(b"tok", t, std::str::from_utf8(body).unwrap());
        assert_eq!(
            verify(
                "tok",
                &headers(&[("x-mantle-signature", &mantle)]),
                body,
                now
            ),
            Ok(())
        );
        assert!(
            verify(
                "other",
                &headers(&[("x-mantle-signature", &mantle)]),
                body,
                now
            )
            .is_err()
        );
        assert!(
            verify(
                "tok",
                &headers(&[("x-mantle-signature", &mantle)]),
                b"{}",
                now
            )
            .is_err()
        );
        let stale = now + chrono::Duration::minutes(6);
        assert_eq!(
            verify(
                "tok",
                &headers(&[("x-mantle-signature", &mantle)]),
                body,
                stale
            ),
            Err("X-Mantle-Signature is stale: its timestamp is over 5 minutes away")
        );
        let hub = format!("sha256={}", hmac_hex(b"tok", &[body]));
        assert_eq!(
            verify("tok", &headers(&[("x-hub-signature-256", &hub)]), body, now),
            Ok(())
        );
        assert!(
            verify(
                "tok",
                &headers(&[("x-hub-signature-256", "sha256=00")]),
                body,
                now
            )
            .is_err()
        );
        assert_eq!(
            verify(
                "tok",
                &headers(&[("authorization", "Bearer tok")]),
                body,
                now
            ),
            Ok(())
        );
        assert!(
            verify(
                "tok",
                &headers(&[("authorization", "Bearer to")]),
                body,
                now
            )
            .is_err()
        );
        assert!(
            verify("tok", &[], body, now)
                .unwrap_err()
                .starts_with("no signature")
        );
    }

    #[test]
    fn refusals_are_audited_ten_a_minute_per_trigger() {
        let audits = RefusalAudits::default();
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        for _ in 0..10 {
            assert_eq!(audits.admit(a), Some(0));
        }
        assert_eq!(audits.admit(a), None);
        assert_eq!(audits.admit(a), None);
        // Another trigger has its own allowance.
        assert_eq!(audits.admit(b), Some(0));
        // A minute later, the first record says how many were left out.
        audits.0.lock().unwrap().get_mut(&a).unwrap().0 -= std::time::Duration::from_secs(61);
        assert_eq!(audits.admit(a), Some(2));
        assert_eq!(audits.admit(a), Some(0));
    }

    #[test]
    fn payloads_and_headers() {
        assert_eq!(payload(br#"{"a":[1]}"#), json!({"a": [1]}));
        assert_eq!(payload(b"a=1&b=2"), json!("a=1&b=2"));
        let kept = kept_headers(&headers(&[
            ("authorization", "Bearer x"),
            ("x-hub-signature-256", "sha256=1"),
            ("x-github-event", "push"),
        ]));
        assert_eq!(kept, json!({"x-github-event": "push"}));
    }
}
