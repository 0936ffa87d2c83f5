//! The durable execution engine.
//!
//! Each execution is driven by one daemon at a time, the holder of its lease (see
//! `store::ExecutionStore`). Executions started here are leased here at once and driven
//! without a poll; others (orphaned by a dead daemon, released during a long wait, or
//! retried elsewhere) are found by polling with backoff. A heartbeat renews every lease this
//! daemon holds and carries cancellation requests from other replicas; a driver whose lease
//! is gone stops writing (its writes are fenced by the lease epoch anyway).

mod attempt;
pub mod compiled;
mod driver;
pub mod eval;
pub use crate::model::execution as model;
mod pipeline;
mod progress;
mod scheduler;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::connectors::{Connectors, NetworkPolicy};
use crate::store::{self, Store};
use compiled::{CompiledWorkflow, resolve_inputs};
use model::{Execution, ExecutionStatus, Lease, NewExecution};

/// The most bytes an execution's inputs, outputs and trigger may take together: with its
/// error (at most 16 KiB) and the rest it fits a gRPC answer of 4 MiB, a client's default
/// limit. An execution whose outputs would not fit fails.
pub const MAX_EXECUTION_BYTES: usize = 3 * 1024 * 1024 + 768 * 1024;

/// `MANTLE_MAX_INPUT_BYTES` by default: 3.5 MiB.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;

/// How long CancelExecution waits for the execution to reach `cancelled` before answering.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Executions whose cancellation one statement of a bulk cancel requests.
pub const CANCEL_BATCH: u32 = 500;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a lease lasts without renewal; another daemon resumes an execution this
    /// long after its daemon died.
    pub lease: Duration,
    /// Poll interval for orphaned and due executions, backing off from `poll_min` to `poll_max`.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Largest step output, serialized as JSON.
    pub max_output_bytes: usize,
    /// Largest inputs of an execution, serialized as JSON.
    pub max_input_bytes: usize,
    /// An execution with nothing to do for longer than this gives its lease back.
    pub release_after: Duration,
    pub network: NetworkPolicy,
    /// `MANTLE_HTTP_PROXY`: the proxy every outbound request goes through.
    pub proxy: Option<url::Url>,
    /// `MANTLE_HTTP_MAX_BUFFERED_BYTES`: response bytes all `http/request` steps may hold
    /// at once.
    pub max_buffered_bytes: u64,
    /// The `env` map expressions can read.
    pub workflow_env: Value,
    /// How long an idempotency key is kept.
    pub idempotency_ttl: Duration,
    /// Global caps; a tenant's own settings may only lower them.
    pub limits: Limits,
    /// `MANTLE_EXPR_*`: what one expression evaluation may use.
    pub expr_limits: crate::workflow::budget::ExprLimits,
    /// `MANTLE_MAX_WATCH_STREAMS`: WatchExecution streams one tenant may hold at once.
    pub max_watch_streams: usize,
    /// `MANTLE_AI_*`: what `ai/completion` may reach, its prices and size limits.
    pub ai: Arc<crate::connectors::ai::Settings>,
    /// `MANTLE_MAX_COST_USD`: what one execution may spend on model calls at most.
    pub max_cost_usd: Option<f64>,
}

/// Installation-wide caps (`MANTLE_MAX_*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_steps_per_workflow: Option<u32>,
    pub max_runtime_minutes: Option<u32>,
    /// Each tenant's running executions at most.
    pub max_concurrent_executions: Option<u32>,
}

impl Limits {
    /// The smaller of a global cap and a tenant's setting.
    pub fn effective(global: Option<u32>, tenant: Option<u32>) -> Option<u32> {
        match (global, tenant) {
            (Some(g), Some(t)) => Some(g.min(t)),
            (g, t) => g.or(t),
        }
    }

    /// Refuses a workflow with more steps than the effective cap.
    pub fn check_steps(
        &self,
        settings: &crate::model::tenant::TenantSettings,
        steps: usize,
    ) -> Result<(), String> {
        match Limits::effective(self.max_steps_per_workflow, settings.max_steps_per_workflow) {
            Some(max) if steps > max as usize => Err(format!(
                "the workflow has {steps} steps; this tenant may run workflows of at most {max} steps"
            )),
            _ => Ok(()),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lease: Duration::from_secs(15),
            poll_min: Duration::from_millis(100),
            poll_max: Duration::from_secs(2),
            max_output_bytes: 1024 * 1024,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            release_after: Duration::from_secs(30),
            network: NetworkPolicy::default(),
            proxy: None,
            max_buffered_bytes: 256 * 1024 * 1024,
            workflow_env: Value::Object(Default::default()),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            limits: Limits::default(),
            expr_limits: crate::workflow::budget::ExprLimits::default(),
            max_watch_streams: 100,
            ai: Arc::default(),
            max_cost_usd: None,
        }
    }
}

/// Errors of starting and controlling executions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// A tenant or installation cap.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The store failed (a missing workflow, an execution that cannot be retried, a full
    /// queue): its error is the cause, and says the kind.
    #[error("{}", crate::error::StoreMessage(.0))]
    Store(#[from] store::Error),
}

/// What a start asks for.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub tenant_id: Uuid,
    pub workflow: String,
    /// `None`: the latest version.
    pub version: Option<i64>,
    pub inputs: serde_json::Map<String, Value>,
    pub trigger: Value,
    pub idempotency_key: Option<String>,
    /// The trigger fire this start is: at most one execution per fire.
    pub fire: Option<crate::model::trigger::Fire>,
    /// Also set `inputs.trigger` to the trigger (a webhook's or an email's start).
    pub trigger_input: bool,
    /// What a reuse of the idempotency key must match, when not the request itself
    /// (workflow, version, inputs): a webhook delivery's body.
    pub fingerprint: Option<Value>,
}

struct Running {
    /// The lease epoch this driver holds.
    epoch: i64,
    cancel: CancellationToken,
    lost: CancellationToken,
    /// Fires when the driver's task has ended.
    done: CancellationToken,
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    node: String,
    config: EngineConfig,
    connectors: Connectors,
    running: Mutex<HashMap<Uuid, Running>>,
    claim_now: Notify,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// The executions watched here, told when their event logs grow.
    watchers: Arc<watch::Watchers>,
    specs: Mutex<HashMap<(Uuid, String, i64), Arc<CompiledWorkflow>>>,
    secrets: crate::secrets::Secrets,
    evaluator: eval::Evaluator,
    /// The `env` expressions read.
    workflow_env: crate::workflow::expr::Shared,
}

/// The engine of one daemon.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Creates the engine; [`Engine::run`] starts its background work.
    pub fn new(
        store: Arc<dyn Store>,
        config: EngineConfig,
        secrets: crate::secrets::Secrets,
        pool: crate::cpu::CpuPool,
        actions: Arc<crate::connectors::Registry>,
    ) -> Result<Engine, String> {
        let watchers = watch::Watchers::new(config.max_watch_streams);
        let evaluator = eval::Evaluator::new(pool, config.expr_limits);
        let workflow_env = crate::workflow::expr::Shared::new(config.workflow_env.clone());
        let node = format!(
            "{}-{}",
            hostname(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                connectors: Connectors::new(
                    actions,
                    &crate::connectors::Setup {
                        outbound: crate::connectors::http::Outbound {
                            policy: config.network,
                            proxy: config.proxy.clone(),
                        },
                        max_buffered_bytes: config.max_buffered_bytes,
                        ai: config.ai.clone(),
                    },
                )?,
                store,
                node,
                config,
                running: Mutex::new(HashMap::new()),
                claim_now: Notify::new(),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
                watchers,
                specs: Mutex::new(HashMap::new()),
                secrets,
                evaluator,
                workflow_env,
            }),
        })
    }

    /// This daemon's identity in leases.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Starts claiming and heartbeating; returns at once.
    pub fn run(&self) {
        let inner = self.inner.clone();
        tokio::spawn(claim_loop(inner.clone()));
        tokio::spawn(watch_poll_loop(inner.clone()));
        tokio::spawn(heartbeat_loop(inner));
    }

    /// Stops starting work, lets running steps finish, and gives every lease back so other
    /// daemons take over at once. Returns when every driver has stopped.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Stores a new execution of a workflow version and starts driving it here.
    pub async fn start(&self, req: StartRequest) -> Result<Execution, Error> {
        Ok(self.start_new(req).await?.0)
    }

    /// [`Engine::start`], saying whether the execution is new (false: the idempotency key
    /// or the trigger fire had started it before).
    pub async fn start_new(&self, req: StartRequest) -> Result<(Execution, bool), Error> {
        // Both reads at once: a start waits for one round trip, not two.
        let (definition, tenant) = tokio::join!(
            self.inner
                .store
                .get_definition(req.tenant_id, &req.workflow, req.version),
            self.inner.store.get_tenant_by_id(req.tenant_id),
        );
        let (definition, tenant) = (definition?, tenant?);
        let workflow = self
            .inner
            .workflow(req.tenant_id, &definition.name, definition.version)
            .await?;
        let limits = self.inner.config.limits;
        limits
            .check_steps(&tenant.settings, workflow.spec.steps.len())
            .map_err(|e| {
                metrics::counter!("mantle_cap_rejections_total", "tenant_id" => req.tenant_id.to_string(), "kind" => "max_steps_per_workflow").increment(1);
                Error::ResourceExhausted(e)
            })?;
        let runtime_cap = Limits::effective(
            limits.max_runtime_minutes,
            tenant.settings.max_runtime_minutes,
        )
        .map(|m| u64::from(m) * 60_000);
        let timeout_ms = match (workflow.spec.timeout_ms, runtime_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let now = Utc::now();
        let idempotency = req.idempotency_key.as_ref().map(|key| {
            // The request as asked for: the version requested (not resolved) and the inputs given.
            let fingerprint = req.fingerprint.clone().unwrap_or_else(|| {
                serde_json::json!({
                    "workflow": req.workflow,
                    "version": req.version,
                    "inputs": req.inputs,
                })
            });
            model::IdempotencyKey {
                key: key.clone(),
                request_hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    fingerprint.to_string().as_bytes(),
                )),
                expire_time: now
                    + chrono::Duration::from_std(self.inner.config.idempotency_ttl)
                        .unwrap_or(chrono::Duration::days(1)),
            }
        });
        let mut given = req.inputs;
        if req.trigger_input && workflow.spec.inputs.contains_key("trigger") {
            given
                .entry("trigger")
                .or_insert_with(|| req.trigger.clone());
        }
        let mut inputs = resolve_inputs(&workflow.spec, given).map_err(|message| {
            let (field, message) = message
                .split_once(": ")
                .map_or(("inputs".to_owned(), message.clone()), |(f, m)| {
                    (f.to_owned(), m.to_owned())
                });
            Error::InvalidArgument { field, message }
        })?;
        // Files written for the Go original read a webhook's or an email's request as
        // `inputs.trigger`, declared or not.
        if req.trigger_input
            && let Value::Object(map) = &mut inputs
        {
            map.entry("trigger").or_insert_with(|| req.trigger.clone());
        }
        let size = crate::workflow::expr::json_len(&inputs);
        let max = self.inner.config.max_input_bytes;
        if size > max {
            return Err(Error::InvalidArgument {
                field: "inputs_json".to_owned(),
                message: format!(
                    "the inputs are {size} bytes, over the limit of {max} bytes \
                     (MANTLE_MAX_INPUT_BYTES)"
                ),
            });
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Unavailable("the daemon is shutting down".to_owned()));
        }
        let new = NewExecution {
            id: Uuid::now_v7(),
            tenant_id: req.tenant_id,
            workflow: definition.name.clone(),
            version: definition.version,
            inputs,
            trigger: req.trigger,
            deadline: timeout_ms.map(|ms| now + chrono::Duration::milliseconds(ms as i64)),
            owner: self.inner.node.clone(),
            lease_ms: self.inner.config.lease.as_millis() as u64,
            now,
            idempotency,
            fire: req.fire,
            concurrency: Limits::effective(
                limits.max_concurrent_executions,
                tenant.settings.max_concurrent_executions,
            )
            .map(|max_active| model::Concurrency {
                max_active,
                max_queued: tenant.settings.max_queued_executions,
            }),
        };
        let created = self.inner.store.create_execution(&new).await;
        if let Err(crate::store::Error::Exhausted(_)) = &created {
            metrics::counter!("mantle_cap_rejections_total", "tenant_id" => req.tenant_id.to_string(), "kind" => "max_queued_executions").increment(1);
        }
        let lease = match created? {
            model::Created::New(lease) => lease,
            model::Created::Existing(id) => {
                return Ok((
                    self.inner.store.get_execution(req.tenant_id, id).await?,
                    false,
                ));
            }
            model::Created::Queued(id) => {
                let tenant_label = req.tenant_id.to_string();
                metrics::counter!("mantle_executions_started_total", "tenant_id" => tenant_label.clone()).increment(1);
                metrics::counter!("mantle_executions_queued_total", "tenant_id" => tenant_label)
                    .increment(1);
                // It may have queued behind others with a slot free: promote now.
                self.inner.claim_now.notify_one();
                return Ok((
                    self.inner.store.get_execution(req.tenant_id, id).await?,
                    true,
                ));
            }
        };
        let execution = Execution {
            id: new.id,
            tenant_id: new.tenant_id,
            workflow: new.workflow,
            version: new.version,
            status: ExecutionStatus::Pending,
            inputs: new.inputs,
            outputs: None,
            error: None,
            trigger: new.trigger,
            create_time: now,
            start_time: None,
            end_time: None,
            deadline: new.deadline,
            generation: 0,
            cancel_requested: false,
        };
        // The driver starts from what was just stored instead of reading it back.
        self.inner.spawn_driver(
            lease,
            Some(driver::Fresh {
                execution: execution.clone(),
                tenant,
            }),
        );
        metrics::counter!("mantle_executions_started_total", "tenant_id" => req.tenant_id.to_string()).increment(1);
        Ok((execution, true))
    }

    /// Requests cancellation; running steps are stopped within about a second. Returns the
    /// execution once it is cancelled, or as it is after [`CANCEL_WAIT`] (at once when the
    /// tenant holds as many watch streams as it may). The wait reads the execution only
    /// when told its events grew, as `WatchExecution` does: no polling.
    pub async fn cancel(&self, tenant_id: Uuid, id: Uuid) -> Result<Execution, Error> {
        // Registered before the request, so that no notice of the end is missed.
        let mut watch = self.inner.watchers.subscribe(tenant_id, id).ok();
        let mut execution = self.inner.store.request_cancel(tenant_id, id).await?;
        if execution.status.is_terminal() {
            return Ok(execution);
        }
        self.inner.stop_local(&[id]);
        let Some(watch) = watch.as_mut() else {
            return Ok(execution);
        };
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        while tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_ok()
        {
            watch.mark_seen();
            execution = self.inner.store.get_execution(tenant_id, id).await?;
            if execution.status.is_terminal() {
                break;
            }
        }
        Ok(execution)
    }

    /// Requests the cancellation of every unfinished execution of the tenant that `filter`
    /// matches, in batches of [`CANCEL_BATCH`] (each one statement); returns how many. It
    /// does not wait: each ends as CANCELLED as its driver stops it (those of this daemon at
    /// once; sleeping and queued ones when claimed, which starts now).
    pub async fn cancel_matching(
        &self,
        tenant_id: Uuid,
        filter: &crate::model::execution::ExecutionFilter,
    ) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let ids = self
                .inner
                .store
                .request_cancel_matching(tenant_id, filter, CANCEL_BATCH)
                .await?;
            total += ids.len() as u64;
            self.inner.stop_local(&ids);
            if ids.len() < CANCEL_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Continues a failed, cancelled or timed-out execution from its unfinished steps.
    pub async fn retry(&self, tenant_id: Uuid, id: Uuid) -> Result<Execution, Error> {
        let lease = self
            .inner
            .store
            .retry_execution(
                tenant_id,
                id,
                &self.inner.node,
                self.inner.config.lease.as_millis() as u64,
            )
            .await?;
        self.inner.spawn_driver(lease, None);
        Ok(self.inner.store.get_execution(tenant_id, id).await?)
    }

    /// Registers a stream of `tenant` following execution `id`'s events: it is told when
    /// they grow (see [`watch`]).
    pub fn watch(&self, tenant: Uuid, id: Uuid) -> Result<watch::Watch, watch::TooManyStreams> {
        self.inner.watchers.subscribe(tenant, id)
    }
}

impl Inner {
    /// Stops the drivers of `ids` that run here (their cancellation was requested), and
    /// wakes the claim loop for those that wait to be claimed.
    fn stop_local(&self, ids: &[Uuid]) {
        {
            let running = self.running.lock().expect("running map");
            for id in ids {
                if let Some(r) = running.get(id) {
                    r.cancel.cancel();
                }
            }
        }
        self.claim_now.notify_one();
    }

    /// Drives the execution of `lease` here. A lease of a newer epoch than the one a driver
    /// here holds (this daemon claimed the execution again after its lease ran out, say
    /// after a stall) supersedes that driver: the old one is told its lease is lost, and the
    /// new one starts from the database once the old one has stopped. Otherwise the newer
    /// lease would be held, and renewed, with nothing driving it.
    fn spawn_driver(self: &Arc<Self>, lease: Lease, fresh: Option<driver::Fresh>) {
        let id = lease.execution_id;
        let cancel = CancellationToken::new();
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        let previous = {
            let mut running = self.running.lock().expect("running map");
            let previous = match running.get(&id) {
                Some(r) if r.epoch >= lease.epoch => return,
                Some(r) => {
                    tracing::info!(execution = %id, epoch = lease.epoch, "a newer lease supersedes this daemon's driver");
                    r.lost.cancel();
                    Some(r.done.clone())
                }
                None => None,
            };
            running.insert(
                id,
                Running {
                    epoch: lease.epoch,
                    cancel: cancel.clone(),
                    lost: lost.clone(),
                    done: done.clone(),
                },
            );
            previous
        };
        let inner = self.clone();
        self.tracker.spawn(async move {
            // Leaves the map (if still ours) and fires `done` even if the driver panics.
            let _ended = DriverEnded {
                inner: inner.clone(),
                id,
                epoch: lease.epoch,
                done,
            };
            let fresh = match previous {
                Some(previous) => {
                    previous.cancelled().await;
                    None
                }
                None => fresh,
            };
            driver::drive(inner, lease, cancel, lost, fresh).await;
        });
    }

    /// The compiled workflow of a version (cached; versions never change).
    async fn workflow(
        &self,
        tenant_id: Uuid,
        name: &str,
        version: i64,
    ) -> Result<Arc<CompiledWorkflow>, Error> {
        let key = (tenant_id, name.to_owned(), version);
        if let Some(w) = self.specs.lock().expect("spec cache").get(&key) {
            return Ok(w.clone());
        }
        // A store that is away answers UNAVAILABLE, not INTERNAL: the cause is kept.
        let definition = self
            .store
            .get_pinned_version(tenant_id, name, version)
            .await?;
        let spec = serde_json::from_str(&definition.spec_json).map_err(|e| {
            Error::Internal(format!("stored spec of {name} version {version}: {e}"))
        })?;
        // In the CPU pool: a version's expressions are a tenant's work.
        let actions = self.connectors.registry().clone();
        let compiled = Arc::new(
            self.evaluator
                .pool()
                .run(tenant_id, move || {
                    CompiledWorkflow::compile_with(spec, &actions)
                })
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?
                .map_err(Error::Internal)?,
        );
        let mut cache = self.specs.lock().expect("spec cache");
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// `capped`: a concurrency cap applies to the execution's tenant, so its end may free a
    /// slot for a queued execution.
    fn finished(
        &self,
        execution: &Execution,
        status: ExecutionStatus,
        at: DateTime<Utc>,
        capped: bool,
    ) {
        tracing::info!(
            execution = %execution.id,
            workflow = %execution.workflow,
            version = execution.version,
            status = status.as_str(),
            duration_ms = (at - execution.start_time.unwrap_or(execution.create_time)).num_milliseconds(),
            "execution finished"
        );
        // A slot may have freed for a queued execution: promote it now rather than at the
        // next poll. Without a cap nothing is ever queued, and a claim pass per finished
        // execution would only load the database.
        if capped {
            self.claim_now.notify_one();
        }
        metrics::counter!(
            "mantle_executions_finished_total",
            "tenant_id" => execution.tenant_id.to_string(),
            "status" => status.as_str()
        )
        .increment(1);
    }
}

/// How often the event logs of executions watched here but driven elsewhere are looked at.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// Tells the streams watching an execution driven by another replica (or by nobody right
/// now) that its event log grew: one query for all of them, and none while nothing is
/// watched. Executions driven here notify their streams as they commit.
async fn watch_poll_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = tokio::time::sleep(WATCH_POLL) => {}
        }
        let watched = inner.watchers.watched();
        if watched.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = {
            let running = inner.running.lock().expect("running map");
            watched
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !running.contains_key(id))
                .collect()
        };
        if ids.is_empty() {
            continue;
        }
        match inner.store.last_event_seqs(&ids).await {
            Ok(seqs) => {
                for (id, seq) in seqs {
                    inner.watchers.reached(id, seq);
                }
            }
            Err(err) => tracing::debug!(error = %err, "polling watched executions failed"),
        }
    }
}

/// How often the queued-executions gauge is refreshed from the database.
const QUEUED_GAUGE_PERIOD: Duration = Duration::from_secs(5);

async fn claim_loop(inner: Arc<Inner>) {
    let limit = 32;
    let mut delay = inner.config.poll_min;
    let mut next_sweep = tokio::time::Instant::now();
    let mut next_queued_gauge = tokio::time::Instant::now();
    let mut queued_tenants: Vec<Uuid> = Vec::new();
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            () = inner.claim_now.notified() => {}
            () = tokio::time::sleep(delay) => {}
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + Duration::from_secs(60);
            match inner.store.sweep_idempotency_keys(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "swept expired idempotency keys"),
                Err(err) => tracing::warn!(error = %err, "sweeping idempotency keys failed"),
            }
        }
        if tokio::time::Instant::now() >= next_queued_gauge {
            next_queued_gauge = tokio::time::Instant::now() + QUEUED_GAUGE_PERIOD;
            match inner.store.count_queued().await {
                Ok(counts) => {
                    // Tenants whose queue emptied go back to 0 rather than keep a stale value.
                    for gone in queued_tenants
                        .iter()
                        .filter(|t| !counts.iter().any(|(c, _)| c == *t))
                    {
                        metrics::gauge!("mantle_executions_queued", "tenant_id" => gone.to_string())
                            .set(0.0);
                    }
                    for (tenant, n) in &counts {
                        metrics::gauge!("mantle_executions_queued", "tenant_id" => tenant.to_string())
                            .set(*n as f64);
                    }
                    queued_tenants = counts.into_iter().map(|(t, _)| t).collect();
                }
                Err(err) => tracing::warn!(error = %err, "counting queued executions failed"),
            }
        }
        match inner
            .store
            .promote_queued(inner.config.limits.max_concurrent_executions)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(promoted = n, "queued executions may start"),
            Err(err) => tracing::warn!(error = %err, "promoting queued executions failed"),
        }
        match inner
            .store
            .claim_executions(&inner.node, inner.config.lease.as_millis() as u64, limit)
            .await
        {
            Ok(leases) if !leases.is_empty() => {
                for lease in leases {
                    tracing::info!(execution = %lease.execution_id, "claimed execution");
                    metrics::counter!("mantle_lease_recoveries_total").increment(1);
                    inner.spawn_driver(lease, None);
                }
                delay = inner.config.poll_min;
                inner.claim_now.notify_one();
            }
            Ok(_) => delay = (delay * 2).min(inner.config.poll_max),
            Err(err) => {
                tracing::warn!(error = %err, "claiming executions failed");
                delay = inner.config.poll_max;
            }
        }
    }
}

/// Removes a driver from the running map, if the entry is still its own, and fires its
/// `done` token: when the driver's task ends, however it ends.
struct DriverEnded {
    inner: Arc<Inner>,
    id: Uuid,
    epoch: i64,
    done: CancellationToken,
}

impl Drop for DriverEnded {
    fn drop(&mut self) {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&self.id).is_some_and(|r| r.epoch == self.epoch) {
            running.remove(&self.id);
        }
        metrics::gauge!("mantle_executions_running").set(running.len() as f64);
        self.done.cancel();
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let every = (inner.config.lease / 3).min(Duration::from_secs(1));
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = inner.tracker.wait(), if inner.shutdown.is_cancelled() => return,
        }
        // Only the leases of drivers running here are renewed (one held without a driver
        // expires and is claimed again), and only drivers that existed before the renewal
        // are judged by its answer: one started meanwhile is renewed next time.
        let before: Vec<Uuid> = inner
            .running
            .lock()
            .expect("running map")
            .keys()
            .copied()
            .collect();
        match inner
            .store
            .renew_leases(&inner.node, &before, inner.config.lease.as_millis() as u64)
            .await
        {
            Ok(held) => {
                last_ok = tokio::time::Instant::now();
                let held: HashMap<Uuid, bool> = held.into_iter().collect();
                let running = inner.running.lock().expect("running map");
                for id in &before {
                    let Some(r) = running.get(id) else { continue };
                    match held.get(id) {
                        None => r.lost.cancel(),
                        Some(true) => r.cancel.cancel(),
                        Some(false) => {}
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "renewing leases failed");
                if last_ok.elapsed() > inner.config.lease {
                    for r in inner.running.lock().expect("running map").values() {
                        r.lost.cancel();
                    }
                }
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mantle".to_owned())
}
