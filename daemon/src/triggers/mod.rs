//! Triggers: what starts executions besides `StartExecution`. `apply` registers a
//! version's triggers with it (the store's `apply_definition`); this module lists, pauses,
//! resumes and fires them, and runs the cron scheduler of every daemon.
//!
//! A cron trigger's scheduled time fires exactly once across daemons: every daemon arms
//! the same triggers and starts the execution of a due time with a fire record (trigger,
//! scheduled time) that the store writes in the execution's own transaction; the daemons
//! that come second find the record and start nothing.

pub mod email;
pub mod imap;
pub mod scheduler;
pub mod webhook;

pub use crate::model::trigger as model;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{Caller, Scope};
use crate::engine::{Engine, StartRequest};
use crate::executions::Error;
use crate::model::execution::Execution;
use crate::model::tenant::TenantRef;
use crate::store::Store;
use crate::workflow::cron::Schedule;
use crate::workflow::spec::TriggerSpec;

type Result<T, E = Error> = std::result::Result<T, E>;

/// A trigger with when it fires next.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerInfo {
    pub trigger: model::Trigger,
    /// The next scheduled time of a cron trigger that is not paused.
    pub next_fire_time: Option<DateTime<Utc>>,
}

/// What a fire did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// It started this execution.
    Started(Box<Execution>),
    /// That time of that trigger had started an execution already (another daemon).
    Before(Uuid),
}

/// Trigger management and firing.
#[derive(Clone)]
pub struct Triggers {
    store: Arc<dyn Store>,
    engine: Engine,
    secrets: crate::secrets::Secrets,
    /// The tenants' rate limits, which webhook requests count against.
    limiter: Option<crate::tenancy::ratelimit::RateLimiter>,
    /// Which addresses mailboxes may have.
    network: crate::connectors::NetworkPolicy,
    /// How many refused webhook requests each trigger had audited lately.
    refusals: Arc<webhook::RefusalAudits>,
    /// Email polls running at once on this daemon.
    polls: Arc<tokio::sync::Semaphore>,
}

/// The spec of a stored trigger.
pub fn spec(t: &model::Trigger) -> Result<TriggerSpec> {
    serde_json::from_value(t.spec.clone())
        .map_err(|e| Error::Internal(format!("stored trigger {} is not a trigger: {e}", t.id)))
}

/// A cron trigger's schedule.
pub fn schedule(spec: &TriggerSpec) -> Option<Result<Schedule>> {
    match spec {
        TriggerSpec::Cron {
            schedule, timezone, ..
        } => Some(Schedule::new(schedule, timezone.as_deref()).map_err(Error::Internal)),
        TriggerSpec::Webhook { .. } | TriggerSpec::Email { .. } => None,
    }
}

fn parse_trigger_id(id: &str) -> Result<Uuid> {
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "id".to_owned(),
            message: "required".to_owned(),
        });
    }
    Uuid::parse_str(id).map_err(|_| Error::InvalidArgument {
        field: "id".to_owned(),
        message: format!("{id:?} is not a trigger id"),
    })
}

impl Triggers {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        secrets: crate::secrets::Secrets,
        limiter: Option<crate::tenancy::ratelimit::RateLimiter>,
        network: crate::connectors::NetworkPolicy,
    ) -> Self {
        Triggers {
            store,
            engine,
            secrets,
            limiter,
            network,
            refusals: Default::default(),
            polls: Arc::new(tokio::sync::Semaphore::new(email::POLLS)),
        }
    }

    fn tenant(caller: &Caller, scope: Scope) -> Result<&TenantRef> {
        Ok(caller.acting_tenant(scope)?)
    }

    fn info(t: model::Trigger, now: DateTime<Utc>) -> TriggerInfo {
        let next_fire_time = if t.paused {
            None
        } else {
            spec(&t)
                .ok()
                .and_then(|s| schedule(&s))
                .and_then(|s| s.ok())
                .and_then(|s| s.next_after(now))
        };
        TriggerInfo {
            trigger: t,
            next_fire_time,
        }
    }

    /// The tenant's triggers (of `workflow` unless it is empty), by workflow and key.
    pub async fn list(&self, caller: &Caller, workflow: &str) -> Result<Vec<TriggerInfo>> {
        let tenant = Self::tenant(caller, Scope::DefinitionsRead)?;
        let workflow = (!workflow.is_empty()).then_some(workflow);
        let now = Utc::now();
        Ok(self
            .store
            .list_triggers(tenant.id, workflow)
            .await?
            .into_iter()
            .map(|t| Self::info(t, now))
            .collect())
    }

    pub async fn pause(&self, caller: &Caller, id: &str) -> Result<TriggerInfo> {
        self.set_paused(caller, id, true).await
    }

    pub async fn resume(&self, caller: &Caller, id: &str) -> Result<TriggerInfo> {
        self.set_paused(caller, id, false).await
    }

    async fn set_paused(&self, caller: &Caller, id: &str, paused: bool) -> Result<TriggerInfo> {
        let tenant = Self::tenant(caller, Scope::DefinitionsWrite)?;
        let id = parse_trigger_id(id)?;
        let now = Utc::now();
        let t = self
            .store
            .set_trigger_paused(tenant.id, id, paused, now)
            .await?;
        tracing::info!(trigger = %id, tenant = %tenant.name, paused, key_id = %caller.key_id, "trigger paused or resumed");
        Ok(Self::info(t, now))
    }

    /// Starts one execution of the trigger's workflow now, as the trigger would (paused or
    /// not): for trying a trigger out.
    pub async fn fire(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        let id = parse_trigger_id(id)?;
        let t = self.store.get_trigger(tenant.id, id).await?;
        let now = Utc::now();
        let mut payload = trigger_value(&t, &spec(&t)?, now);
        payload["manual"] = Value::Bool(true);
        match self.start(&t, Some(now), None, payload, Map::new()).await? {
            Fired::Started(e) => {
                tracing::info!(trigger = %id, execution = %e.id, key_id = %caller.key_id, "trigger fired by hand");
                Ok(*e)
            }
            Fired::Before(existing) => Ok(self.store.get_execution(tenant.id, existing).await?),
        }
    }

    /// Starts an execution of `t`'s workflow with `trigger` as what it sees as `trigger`,
    /// and notes the result on the trigger. With `fire_at`, the fire (trigger, time) starts
    /// one execution at most; with `idempotency` (a key and what a reuse must match), the
    /// key does.
    pub async fn start(
        &self,
        t: &model::Trigger,
        fire_at: Option<DateTime<Utc>>,
        idempotency: Option<(String, Value)>,
        trigger: Value,
        extra_inputs: Map,
    ) -> Result<Fired> {
        let (idempotency_key, fingerprint) = idempotency.unzip();
        let spec = spec(t)?;
        let version = spec.version();
        let mut inputs = match spec {
            TriggerSpec::Cron { inputs, .. } | TriggerSpec::Email { inputs, .. } => inputs,
            TriggerSpec::Webhook { .. } => Map::new(),
        };
        inputs.extend(extra_inputs);
        let started = self
            .engine
            .start_new(StartRequest {
                tenant_id: t.tenant_id,
                workflow: t.workflow.clone(),
                version,
                inputs,
                trigger,
                idempotency_key,
                fingerprint,
                trigger_input: t.kind != "cron",
                fire: fire_at.map(|scheduled_time| model::Fire {
                    trigger_id: t.id,
                    scheduled_time,
                }),
            })
            .await;
        let (result, execution_id, out) = match started {
            Ok((e, true)) => (
                "started".to_owned(),
                Some(e.id),
                Ok(Fired::Started(Box::new(e))),
            ),
            Ok((e, false)) => return Ok(Fired::Before(e.id)),
            Err(e) => {
                let e = Error::from(e);
                (format!("not started: {e}"), None, Err(e))
            }
        };
        metrics::counter!(
            "mantle_trigger_fires_total",
            "tenant_id" => t.tenant_id.to_string(),
            "kind" => t.kind.clone(),
            "result" => if out.is_ok() { "started" } else { "refused" },
        )
        .increment(1);
        let fire_time = Utc::now();
        let note = model::LastFire {
            scheduled_time: fire_at.unwrap_or(fire_time),
            fire_time,
            execution_id,
            result,
        };
        if let Err(e) = self.store.note_fire(t.id, &note).await {
            tracing::warn!(trigger = %t.id, error = %e, "could not note a trigger's fire");
        }
        out
    }
}

type Map = serde_json::Map<String, Value>;

/// What an execution started by `t` at `scheduled_time` sees as `trigger`.
pub fn trigger_value(
    t: &model::Trigger,
    spec: &TriggerSpec,
    scheduled_time: DateTime<Utc>,
) -> Value {
    let time = scheduled_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match spec {
        TriggerSpec::Cron {
            schedule, timezone, ..
        } => json!({
            "type": "cron",
            "trigger_id": t.id.to_string(),
            "schedule": schedule,
            "timezone": timezone.as_deref().unwrap_or("UTC"),
            "scheduled_time": time,
        }),
        TriggerSpec::Webhook { path, .. } => json!({
            "type": "webhook",
            "trigger_id": t.id.to_string(),
            "path": path,
            "received_time": time,
        }),
        TriggerSpec::Email {
            mailbox, folder, ..
        } => json!({
            "type": "email",
            "trigger_id": t.id.to_string(),
            "mailbox": mailbox,
            "folder": folder,
            "received_time": time,
        }),
    }
}
