//! The engine's side of an attempt that keeps its progress (`ai/completion`): its
//! checkpoints go through the driver, which writes them with a log line in a transition
//! of their own and answers once it is durable; budgets are checked against what the store
//! has recorded; tools run here, with their own params, credential and timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::compiled::CompiledWorkflow;
use super::eval::Deadline;
use crate::connectors::{
    ActionError, ActionKind, Checkpoint, Credential, Estimate, Invocation, Progress, Saved, Usage,
};
use crate::workflow::expr::{Scope, Shared};

/// A checkpoint on its way to the driver.
pub(super) struct ProgressMsg {
    pub(super) step: usize,
    pub(super) attempt: i32,
    pub(super) checkpoint: crate::model::execution::Checkpoint,
    pub(super) log: String,
    /// Answered once the checkpoint is durable (or known not to be written).
    pub(super) ack: oneshot::Sender<()>,
}

/// What an attempt of a step with progress runs with.
pub(super) struct StepProgress {
    pub(super) inner: Arc<Inner>,
    pub(super) workflow: Arc<CompiledWorkflow>,
    pub(super) step: usize,
    pub(super) attempt: i32,
    pub(super) execution_id: uuid::Uuid,
    pub(super) generation: i32,
    pub(super) tenant: Arc<crate::model::tenant::Tenant>,
    pub(super) scope: Scope,
    pub(super) deadline: Option<Deadline>,
    pub(super) allowed_domains: Option<Arc<Vec<String>>>,
    pub(super) cancel: CancellationToken,
    pub(super) tx: mpsc::UnboundedSender<ProgressMsg>,
    /// The next checkpoint's number.
    pub(super) next_seq: AtomicI32,
}

fn store_error(e: crate::store::Error) -> ActionError {
    ActionError::transient(format!("the database: {e}"))
}

#[async_trait::async_trait]
impl Progress for StepProgress {
    async fn saved(&self) -> Result<Vec<Saved>, ActionError> {
        let step = &self.workflow.steps[self.step].spec.name;
        let saved = self
            .inner
            .store
            .list_checkpoints(self.execution_id, step, self.generation)
            .await
            .map_err(store_error)?;
        let last = saved.last().map_or(0, |c| c.seq);
        self.next_seq.store(last + 1, Ordering::SeqCst);
        Ok(saved
            .into_iter()
            .map(|c| Saved {
                kind: c.kind,
                body: c.body,
                usage: c.usage.map(|u| Usage {
                    model: u.model,
                    input_tokens: u.input_tokens.max(0) as u64,
                    output_tokens: u.output_tokens.max(0) as u64,
                    cost_usd: Some(u.cost_usd),
                }),
            })
            .collect())
    }

    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), ActionError> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let tenant_id = self.tenant.id.to_string();
        if let Some(u) = &checkpoint.usage {
            for (direction, n) in [("input", u.input_tokens), ("output", u.output_tokens)] {
                metrics::counter!("mantle_ai_tokens_total", "tenant_id" => tenant_id.clone(),
                    "model" => u.model.clone(), "direction" => direction)
                .increment(n);
            }
            if let Some(cost) = u.cost_usd {
                metrics::counter!("mantle_ai_cost_usd_total", "tenant_id" => tenant_id)
                    .increment((cost * 1e6).round() as u64);
            }
        }
        let stored = crate::model::execution::Checkpoint {
            step_name: self.workflow.steps[self.step].spec.name.clone(),
            generation: self.generation,
            seq,
            attempt: self.attempt,
            time: Utc::now(),
            kind: checkpoint.kind.to_owned(),
            usage: checkpoint
                .usage
                .map(|u| crate::model::execution::ModelUsage {
                    model: u.model,
                    input_tokens: u.input_tokens as i64,
                    output_tokens: u.output_tokens as i64,
                    cost_usd: u.cost_usd.unwrap_or(0.0),
                }),
            body: checkpoint.body,
        };
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(ProgressMsg {
                step: self.step,
                attempt: self.attempt,
                checkpoint: stored,
                log: checkpoint.log,
                ack,
            })
            .map_err(|_| ActionError::transient("the execution's driver stopped"))?;
        acked.await.map_err(|_| {
            ActionError::transient("the checkpoint was not written: the execution's driver stopped")
        })
    }

    async fn check_budget(&self, next: Estimate) -> Result<(), ActionError> {
        let settings = &self.tenant.settings;
        let workflow_cap = self.workflow.spec.token_budget;
        let cost_caps = [
            (
                settings.max_cost_usd_per_execution.filter(|c| *c > 0.0),
                "the tenant's max_cost_usd_per_execution",
            ),
            (
                self.inner.config.max_cost_usd,
                "the installation's MANTLE_MAX_COST_USD",
            ),
        ];
        let refuse = |cap: &str, detail: String| {
            metrics::counter!("mantle_ai_budget_refusals_total", "tenant_id" => self.tenant.id.to_string(), "cap" => cap.to_owned()).increment(1);
            Err(ActionError::permanent(format!(
                "stopped before a model call: {cap} would be exceeded ({detail})"
            )))
        };
        if workflow_cap.is_some() || cost_caps.iter().any(|(c, _)| c.is_some()) {
            let used = self
                .inner
                .store
                .execution_usage(self.execution_id)
                .await
                .map_err(store_error)?;
            if let Some(cap) = workflow_cap
                && used.tokens() as u64 + next.tokens > cap
            {
                return refuse(
                    &format!("the workflow's token_budget {cap}"),
                    format!(
                        "the execution used {} tokens, the call is expected to use about {}",
                        used.tokens(),
                        next.tokens
                    ),
                );
            }
            for (cap, what) in cost_caps {
                let Some(cap) = cap else { continue };
                let Some(next_cost) = next.cost_usd else {
                    return refuse(
                        &format!("{what} {cap}"),
                        "the model has no price, so its cost cannot be checked; the operator \
                         adds it with MANTLE_AI_PRICES_FILE"
                            .to_owned(),
                    );
                };
                if used.cost_usd + next_cost > cap {
                    return refuse(
                        &format!("{what} {cap}"),
                        format!(
                            "the execution spent ${:.6}, the call is expected to cost about ${:.6}",
                            used.cost_usd, next_cost
                        ),
                    );
                }
            }
        }
        if let Some(cap) = settings.max_tokens_per_day.filter(|c| *c > 0) {
            let midnight = Utc::now()
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc();
            let used = self
                .inner
                .store
                .tenant_usage_since(self.tenant.id, midnight)
                .await
                .map_err(store_error)?;
            if used.tokens() as u64 + next.tokens > cap {
                return refuse(
                    &format!("the tenant's max_tokens_per_day {cap}"),
                    format!(
                        "the tenant used {} tokens today (UTC), the call is expected to use about {}",
                        used.tokens(),
                        next.tokens
                    ),
                );
            }
        }
        Ok(())
    }

    async fn call_tool(&self, name: &str, input: Value) -> Result<Value, String> {
        let step = &self.workflow.steps[self.step];
        let Some(k) = step.tools.iter().position(|t| t.name == name) else {
            return Err(format!("unknown tool {name:?}"));
        };
        let tool = &step.tools[k];
        let mut scope = self.scope.clone();
        if tool.params_reads.reads_var("inputs") {
            // The original's spelling: `inputs.tool_input`.
            let mut inputs = scope.inputs.value.as_object().cloned().unwrap_or_default();
            inputs.insert("tool_input".to_owned(), input.clone());
            scope.inputs = Shared::new(Value::Object(inputs));
        }
        scope.tool = Shared::new(json!({"name": name, "input": input}));
        let weight = scope.weight(&tool.params_reads);
        let workflow = self.workflow.clone();
        let i = self.step;
        let params = self
            .inner
            .evaluator
            .evaluate(
                self.tenant.id,
                &tool.heavy,
                weight,
                self.deadline,
                Some(&self.cancel),
                move |budget| workflow.steps[i].tools[k].prepare_params(&scope, budget),
            )
            .await
            .map_err(|e| e.to_string())??;
        match tool.kind {
            ActionKind::Pure => self
                .inner
                .connectors
                .registry()
                .run_pure(&tool.action, &params)
                .unwrap_or_else(|| Err(format!("{} is not a pure action", tool.action))),
            ActionKind::Timer => Err(format!("{} cannot be a tool", tool.action)),
            ActionKind::Effect => {
                let mut redactor = crate::connectors::redact::Redactor::default();
                let credential: Option<Credential> = match &tool.credential {
                    Some(c) => {
                        let c = self
                            .inner
                            .secrets
                            .credential(self.tenant.id, c)
                            .await
                            .map_err(|e| e.to_string())?;
                        redactor = crate::connectors::redact::Redactor::for_credential(&c);
                        Some(c)
                    }
                    None => None,
                };
                let cancel = self.cancel.child_token();
                let run = self.inner.connectors.invoke(Invocation {
                    action: tool.action.clone(),
                    params,
                    credential,
                    cancel: cancel.clone(),
                    allowed_domains: self.allowed_domains.clone(),
                    progress: None,
                });
                let result = match tokio::time::timeout(tool.timeout, run).await {
                    Ok(r) => r,
                    Err(_) => {
                        cancel.cancel();
                        Err(ActionError::transient(format!(
                            "timed out after {} (the tool's timeout)",
                            super::attempt::humanize(tool.timeout)
                        )))
                    }
                };
                match result {
                    Ok(v) => Ok(redactor.value(v)),
                    Err(e) => Err(redactor.text(&e.message)),
                }
            }
        }
    }

    async fn default_credential(&self, provider: &str) -> Result<Option<Credential>, ActionError> {
        let Some(name) = self.tenant.settings.default_credentials.get(provider) else {
            return Ok(None);
        };
        self.inner
            .secrets
            .credential(self.tenant.id, name)
            .await
            .map(Some)
            .map_err(|e| {
                ActionError::transient(format!("the tenant's default_credentials.{provider}: {e}"))
            })
    }
}
