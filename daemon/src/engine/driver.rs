//! The driver of one execution: while its daemon holds the lease, it starts steps as their
//! dependencies resolve, checkpoints every outcome, and finishes the execution.
//!
//! Every change is written as one [`Transition`] (one transaction) before anything acts on
//! it: a step's output is durable before any dependent starts, and a completion is written
//! together with the starts it makes possible, so a chain of steps costs one commit a step.
//!
//! The driver is the loop and the execution's state; it decides with the scheduler's
//! functions (`scheduler.rs`), hands transitions to the commit pipeline (`pipeline.rs`),
//! and runs attempts with effects through the attempt runner (`attempt.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::attempt::{AttemptDone, Ended, Runner};
use super::compiled::{CompiledWorkflow, Prepared};
use super::eval::Deadline;
use super::model::{
    Event, EventKind, Execution, ExecutionStatus, ExecutionUpdate, Lease, StepAttempt, StepStatus,
    Transition,
};
use super::pipeline::{Pipeline, Refused, Start, WINDOW};
use super::scheduler::{Outcome, Readiness, Record, State, StepRun, backoff, readiness, recover};
use crate::connectors::{ActionError, ActionKind};
use crate::workflow::expr::{Scope, Shared, StepView};

/// A step's preparation, evaluated in the CPU pool; `prepared` is `None` when it was
/// abandoned (the pool stopped), and the step waits to be prepared again.
struct PreparedDone {
    step: usize,
    attempt: Option<i32>,
    prepared: Option<Prepared>,
}

/// Why the driver stops before the execution is finished.
#[derive(Debug)]
enum Stop {
    /// Another daemon holds the lease now; nothing more may be written.
    Lost,
    /// Released on purpose (shutdown, or a long wait).
    Released,
    /// A transition was refused by the database for good (not for being away or busy):
    /// writing it again would fail again. `first_seq` is its first event's number.
    Unwritable { error: String, first_seq: i64 },
}

/// An execution this daemon has just created: its driver needs nothing from the database.
pub(super) struct Fresh {
    pub execution: Execution,
    pub tenant: crate::model::tenant::Tenant,
}

pub(super) async fn drive(
    inner: Arc<Inner>,
    lease: Lease,
    cancel: CancellationToken,
    lost: CancellationToken,
    fresh: Option<Fresh>,
) {
    let id = lease.execution_id;
    match Driver::load(inner.clone(), lease, cancel, lost.clone(), fresh).await {
        Ok(Some(mut driver)) => match driver.run().await {
            Ok(()) => {}
            Err(Stop::Lost) => {
                tracing::warn!(execution = %id, "lease lost; another daemon continues this execution")
            }
            Err(Stop::Released) => tracing::debug!(execution = %id, "execution released"),
            Err(Stop::Unwritable { error, first_seq }) => {
                tracing::error!(execution = %id, error = %error, "a checkpoint cannot be stored; failing the execution");
                match driver.give_up(&error, first_seq).await {
                    Ok(()) | Err(Stop::Lost | Stop::Released) => {}
                    Err(Stop::Unwritable { error, .. }) => {
                        tracing::error!(execution = %id, error = %error, "the failure cannot be stored either; releasing the execution");
                        let _ = inner.store.release_lease(lease).await;
                    }
                }
            }
        },
        Ok(None) => {}
        Err(err) => {
            tracing::error!(execution = %id, error = %err, "cannot drive execution; releasing it");
            let _ = inner.store.release_lease(lease).await;
        }
    }
}

struct Driver {
    inner: Arc<Inner>,
    lease: Lease,
    execution: Execution,
    workflow: Arc<CompiledWorkflow>,
    steps: Vec<StepRun>,
    next_seq: i64,
    /// Runs the attempts with effects.
    attempts: Runner,
    /// Fires when CancelExecution reaches this daemon.
    cancel: CancellationToken,
    lost: CancellationToken,
    prepared_tx: mpsc::UnboundedSender<PreparedDone>,
    prepared_rx: mpsc::UnboundedReceiver<PreparedDone>,
    /// Attempts recorded as running in the pending transition, to spawn once it is durable.
    to_spawn: Vec<Start>,
    pending: Transition,
    /// Transitions handed to the store and not yet known durable.
    pipeline: Pipeline,
    /// Attempts waiting for their checkpoints to be durable: answered at the next settle.
    acks: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Checkpoints of running attempts.
    progress_rx: mpsc::UnboundedReceiver<super::progress::ProgressMsg>,
    draining: bool,
    /// The tenant as it was when the driver started (name, webhook settings).
    tenant: crate::model::tenant::Tenant,
    /// What expressions read: `inputs`, `trigger`, `execution`, shared by every evaluation.
    inputs: Shared,
    trigger: Shared,
    execution_info: Shared,
}

impl Driver {
    async fn load(
        inner: Arc<Inner>,
        lease: Lease,
        cancel: CancellationToken,
        lost: CancellationToken,
        fresh: Option<Fresh>,
    ) -> Result<Option<Driver>, String> {
        let (execution, attempts, last_seq, tenant) = match fresh {
            // No attempts, no events yet.
            Some(f) => (f.execution, Vec::new(), 0, Some(f.tenant)),
            None => {
                let (e, a, seq) = inner
                    .store
                    .load_execution(lease.execution_id)
                    .await
                    .map_err(|e| e.to_string())?;
                (e, a, seq, None)
            }
        };
        if execution.status.is_terminal() {
            inner
                .store
                .release_lease(lease)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let workflow = inner
            .workflow(execution.tenant_id, &execution.workflow, execution.version)
            .await
            .map_err(|e| e.to_string())?;
        let steps = recover(&workflow, &execution, &attempts);
        let tenant = match tenant {
            Some(t) => t,
            None => inner
                .store
                .get_tenant_by_id(execution.tenant_id)
                .await
                .map_err(|e| e.to_string())?,
        };
        let (prepared_tx, prepared_rx) = mpsc::unbounded_channel();
        if execution.cancel_requested {
            cancel.cancel();
        }
        // Taken out of the execution (nothing reads them there): one copy of possibly
        // megabytes of inputs per driver, not two.
        let mut execution = execution;
        let inputs = Shared::new(std::mem::take(&mut execution.inputs));
        let trigger = Shared::new(execution.trigger.clone());
        let execution_info = Shared::new(json!({
            "id": execution.id.to_string(),
            "workflow": execution.workflow,
            "version": execution.version,
            "started_at": execution.start_time.unwrap_or(execution.create_time).to_rfc3339(),
        }));
        let pipeline = Pipeline::new(inner.store.clone(), lease, lost.clone());
        let mut attempts = Runner::new(
            inner.clone(),
            Arc::new(tenant.clone()),
            execution.id,
            execution.generation,
        );
        let progress_rx = attempts.take_progress();
        Ok(Some(Driver {
            inner,
            lease,
            execution,
            workflow,
            steps,
            next_seq: last_seq + 1,
            attempts,
            cancel,
            lost,
            prepared_tx,
            prepared_rx,
            to_spawn: Vec::new(),
            pending: Transition::default(),
            pipeline,
            acks: Vec::new(),
            progress_rx,
            draining: false,
            tenant,
            inputs,
            trigger,
            execution_info,
        }))
    }

    fn event(
        &mut self,
        kind: EventKind,
        step: Option<&str>,
        attempt: Option<i32>,
        status: Option<&str>,
        message: Option<String>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.events.push(Event {
            execution_id: self.execution.id,
            seq,
            time: Utc::now(),
            kind,
            step_name: step.map(str::to_owned),
            attempt,
            status: status.map(str::to_owned),
            message: message.map(super::model::stored_text),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn write_attempt(&mut self, step: usize, attempt: i32, record: Record) {
        let Record {
            status,
            output,
            error,
            wake_time,
            start_time,
            end_time,
            interrupted,
        } = record;
        let name = self.workflow.steps[step].spec.name.clone();
        let error = error.map(super::model::error_text);
        let message = match status {
            StepStatus::Failed | StepStatus::Cancelled => error.clone(),
            StepStatus::Pending => wake_time.map(|t| {
                let wait = (t - Utc::now()).to_std().unwrap_or_default();
                format!(
                    "retry in {} at {}",
                    crate::duration::format(Duration::from_millis(wait.as_millis() as u64)),
                    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                )
            }),
            _ => None,
        };
        self.event(
            EventKind::StepStatus,
            Some(&name),
            Some(attempt),
            Some(status.as_str()),
            message,
        );
        self.pending.attempts.push(StepAttempt {
            execution_id: self.execution.id,
            step_name: name,
            attempt,
            generation: self.execution.generation,
            status,
            output,
            error,
            wake_time,
            start_time,
            end_time,
            interrupted,
        });
    }

    /// Writes the pending transition and waits until everything handed over is durable,
    /// retrying while the database is unreachable.
    async fn commit(&mut self) -> Result<(), Stop> {
        if !self.pending.is_empty() {
            self.queue(Vec::new()).await;
        }
        self.settle_all().await
    }

    /// Hands the pending transition to the pipeline: it commits while the driver goes on.
    /// `started` are the attempts it records as running: they are spawned once it is
    /// durable.
    async fn queue(&mut self, started: Vec<Start>) {
        let t = std::mem::take(&mut self.pending);
        self.pipeline.submit(t, started).await;
    }

    /// Waits until every transition handed over is durable.
    async fn settle_all(&mut self) -> Result<(), Stop> {
        self.settle_until(0).await
    }

    /// Waits until at most `left` transitions are in flight and spawns the attempts that
    /// became durable, then tells watchers here that the event log grew (once, however many
    /// were settled).
    async fn settle_until(&mut self, left: usize) -> Result<(), Stop> {
        let settled = self.pipeline.settle_until(left).await;
        for (step, attempt) in self.pipeline.take_durable() {
            self.spawn_attempt(step, attempt);
        }
        if left == 0 && settled.is_ok() {
            // Everything handed over is durable: the checkpoints too.
            for ack in self.acks.drain(..) {
                let _ = ack.send(());
            }
        }
        match settled {
            Ok(true) => self.inner.watchers.notify(self.execution.id),
            Ok(false) => {}
            Err(Refused::Lost) => return Err(Stop::Lost),
            Err(Refused::Unwritable { error, first_seq }) => {
                return Err(Stop::Unwritable {
                    error,
                    first_seq: first_seq.unwrap_or(self.next_seq),
                });
            }
        }
        Ok(())
    }

    /// The values expressions read; `steps` holds every finished step.
    fn scope(&self) -> Scope {
        self.scope_of(None)
    }

    /// The scope for step `i`: only the steps it reads (its `needs`), so building it does not
    /// grow with the size of the workflow.
    fn step_scope(&self, i: usize) -> Scope {
        self.scope_of(Some(&self.workflow.steps[i].needs))
    }

    fn scope_of(&self, only: Option<&[usize]>) -> Scope {
        let mut steps = BTreeMap::new();
        let wanted: Box<dyn Iterator<Item = usize>> = match only {
            Some(indexes) => Box::new(indexes.iter().copied()),
            None => Box::new(0..self.steps.len()),
        };
        for i in wanted {
            let run = &self.steps[i];
            if let State::Done(outcome) = run.state {
                let status = match outcome {
                    Outcome::Completed => "completed",
                    Outcome::Skipped => "skipped",
                    Outcome::Failed { .. } => "failed",
                    Outcome::Cancelled => "cancelled",
                };
                steps.insert(
                    self.workflow.steps[i].spec.name.clone(),
                    StepView {
                        output: run.output.clone(),
                        error: run.error.clone(),
                        status,
                    },
                );
            }
        }
        Scope {
            inputs: self.inputs.clone(),
            steps,
            trigger: self.trigger.clone(),
            env: self.inner.workflow_env.clone(),
            execution: self.execution_info.clone(),
            tool: Shared::default(),
        }
    }

    /// The execution's timeout as an evaluation's deadline.
    fn execution_deadline(&self) -> Option<Deadline> {
        let at = self.execution.deadline?;
        let left = (at - Utc::now()).to_std().unwrap_or_default();
        Some(Deadline {
            at: std::time::Instant::now() + left,
            limit: (at - self.execution.create_time)
                .to_std()
                .unwrap_or_default(),
            what: "the workflow's timeout",
        })
    }

    /// The step's timeout, from now, as an evaluation's deadline (the nearer of it and the
    /// execution's).
    fn step_deadline(&self, i: usize) -> Option<Deadline> {
        let step = self.workflow.steps[i].spec.timeout_ms.map(|ms| {
            let limit = Duration::from_millis(ms);
            Deadline {
                at: std::time::Instant::now() + limit,
                limit,
                what: "the step's timeout",
            }
        });
        Deadline::nearer(step, self.execution_deadline())
    }

    /// Steps whose preparation is in the CPU pool.
    fn preparing(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.state, State::Preparing { .. }))
            .count()
    }

    async fn run(&mut self) -> Result<(), Stop> {
        // An execution cancelled before it started (while queued) ends without running.
        if self.execution.status != ExecutionStatus::Running && !self.cancel.is_cancelled() {
            let now = Utc::now();
            self.execution.status = ExecutionStatus::Running;
            self.execution.start_time.get_or_insert(now);
            self.event(
                EventKind::ExecutionStatus,
                None,
                None,
                Some("running"),
                None,
            );
            self.pending.execution = Some(ExecutionUpdate {
                status: ExecutionStatus::Running,
                outputs: None,
                error: None,
                start_time: Some(now),
                end_time: None,
                release: false,
                wake_time: None,
            });
        }
        self.interrupt_orphans();
        loop {
            if self.lost.is_cancelled() {
                self.attempts.cancel();
                return Err(Stop::Lost);
            }
            if let Some((status, reason)) = self.ended_early() {
                return self.finish_early(status, &reason).await;
            }
            if self.inner.shutdown.is_cancelled() {
                self.draining = true;
            }
            let (started, deferred) = self.advance();
            if self.steps.iter().all(|s| matches!(s.state, State::Done(_))) {
                return self.finish().await;
            }
            if !self.pending.is_empty() || !started.is_empty() {
                self.queue(started).await;
            }
            if deferred {
                // Pure steps read outcomes just handed over: evaluate them now. They have no
                // effects, and what they record is queued behind those outcomes, so it is
                // committed after them, each step in a transaction of its own.
                if self.pipeline.len() >= WINDOW {
                    self.settle_until(WINDOW / 2).await?;
                }
                // Attempts to start wait for nothing else.
                if self.pipeline.newest_starts_attempts() {
                    self.settle_all().await?;
                }
                continue;
            }
            self.settle_all().await?;
            if self.draining && self.attempts.running() == 0 && self.preparing() == 0 {
                let _ = self.inner.store.release_lease(self.lease).await;
                return Err(Stop::Released);
            }
            let wake = self.next_wake();
            if self.attempts.running() == 0
                && self.preparing() == 0
                && !self.draining
                && let Some(at) = wake
                && at - Utc::now()
                    > chrono::Duration::from_std(self.inner.config.release_after)
                        .unwrap_or_default()
            {
                return self.release_until(at).await;
            }
            self.wait(wake).await?;
        }
    }

    /// How the execution ends before its steps do, if it does: cancelled, or timed out
    /// (saying which limit).
    fn ended_early(&self) -> Option<(ExecutionStatus, String)> {
        if self.cancel.is_cancelled() {
            return Some((
                ExecutionStatus::Cancelled,
                "the execution was cancelled".to_owned(),
            ));
        }
        let deadline = self.execution.deadline.filter(|d| *d <= Utc::now())?;
        Some((ExecutionStatus::TimedOut, self.timeout_reason(deadline)))
    }

    /// `the execution timed out after 5m (the workflow's timeout)`: the deadline is the
    /// workflow's `timeout` or the runtime cap (the tenant's `max_runtime_minutes` or
    /// `MANTLE_MAX_RUNTIME_MINUTES`), whichever was shorter at the start.
    fn timeout_reason(&self, deadline: DateTime<Utc>) -> String {
        let limit_ms = (deadline - self.execution.create_time)
            .num_milliseconds()
            .max(0) as u64;
        // Stored times may be rounded: within a second is the workflow's own timeout.
        let (limit_ms, which) = match self.workflow.spec.timeout_ms {
            Some(ms) if ms.abs_diff(limit_ms) < 1000 => (ms, "the workflow's timeout"),
            _ => (
                (limit_ms + 500) / 1000 * 1000,
                "the runtime cap: the tenant's max_runtime_minutes or MANTLE_MAX_RUNTIME_MINUTES",
            ),
        };
        format!(
            "the execution timed out after {} ({which})",
            crate::duration::format(Duration::from_millis(limit_ms))
        )
    }

    /// Attempts left `running` by a daemon that died get a new attempt; the interrupted one
    /// is recorded as cancelled and does not count against the retry budget.
    fn interrupt_orphans(&mut self) {
        let now = Utc::now();
        let orphans: Vec<(usize, i32, DateTime<Utc>)> = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                State::Running { attempt, started } => Some((i, attempt, started)),
                _ => None,
            })
            .collect();
        for (i, attempt, started) in orphans {
            self.write_attempt(i, attempt, Record::interrupted(Some(started), now));
            self.steps[i].state = State::Waiting;
        }
    }

    /// Starts, skips or cancels every step that can move; returns the attempts to spawn
    /// once the transition is durable, and whether a pure step waits for that commit.
    ///
    /// A pure step (`core/set`, `core/log`, `core/fail`) runs right here and its attempt is
    /// written once, already finished. It does not run while a dependency's outcome is in
    /// the pending transition (it waits for the next pass). `run` makes that next pass while
    /// the transition commits: the step has no effects, and its own record goes into the
    /// following transition, queued only after this one is durable. So a chain still
    /// commits each step's output before the next step's, one commit a step.
    fn advance(&mut self) -> (Vec<(usize, i32)>, bool) {
        let mut deferred = false;
        let now = Utc::now();
        loop {
            let mut progressed = false;
            for i in 0..self.steps.len() {
                match self.steps[i].state.clone() {
                    State::Waiting => {}
                    State::Scheduled { attempt, at } if at <= now && !self.draining => {
                        self.prepare_step(i, Some(attempt), now);
                        progressed = true;
                        continue;
                    }
                    State::Sleeping {
                        attempt,
                        started: s,
                        until,
                    } if until <= now => {
                        self.complete(i, attempt, s, until, Ok(json!({})));
                        progressed = true;
                        continue;
                    }
                    _ => continue,
                }
                // Waiting: are the dependencies resolved?
                let ready = match readiness(&self.workflow.steps[i].needs, |j| &self.steps[j].state)
                {
                    Readiness::Blocked { by } => Err(self.workflow.steps[by].spec.name.clone()),
                    Readiness::Ready => Ok(true),
                    Readiness::Waiting => Ok(false),
                };
                if let Err(upstream) = ready {
                    let attempt = self.steps[i].last_attempt + 1;
                    self.steps[i].last_attempt = attempt;
                    let error = format!("not run: step {upstream:?} did not complete");
                    self.write_attempt(i, attempt, Record::cancelled(error.clone(), None, now));
                    self.steps[i].error = Some(super::model::error_text(error));
                    self.steps[i].state = State::Done(Outcome::Cancelled);
                    progressed = true;
                    continue;
                }
                if ready != Ok(true) || self.draining {
                    continue;
                }
                if self.is_inline(i) && self.reads_unsaved(i) {
                    deferred = true;
                    continue;
                }
                progressed = true;
                self.prepare_step(i, None, now);
            }
            if !progressed {
                return (std::mem::take(&mut self.to_spawn), deferred);
            }
        }
    }

    /// A step that runs inside the driver: a pure action with no credential.
    fn is_inline(&self, i: usize) -> bool {
        let step = &self.workflow.steps[i];
        step.spec.credential.is_none() && step.kind == ActionKind::Pure
    }

    /// Whether a dependency of step `i` has an outcome not yet committed.
    fn reads_unsaved(&self, i: usize) -> bool {
        self.workflow.steps[i]
            .spec
            .needs
            .iter()
            .any(|need| self.pending.attempts.iter().any(|a| &a.step_name == need))
    }

    /// Starts step `i` (the retry `attempt`, or a first attempt): evaluates first what it
    /// needs (its `if` for a first attempt; its params when it runs here), at once when that
    /// is small, else in the CPU pool, the step `Preparing` until the answer comes (see
    /// `engine::eval`). Attempts it records as running go to `to_spawn`.
    fn prepare_step(&mut self, i: usize, attempt: Option<i32>, now: DateTime<Utc>) {
        let workflow = self.workflow.clone();
        let step = &workflow.steps[i];
        let condition = attempt.is_none() && step.condition.is_some();
        let params = self.is_inline(i) || step.kind == ActionKind::Timer;
        if !condition && !params {
            self.start_prepared(i, attempt, now, Prepared::default());
            return;
        }
        let scope = self.step_scope(i);
        let mut reads = crate::workflow::expr::Reads::default();
        if condition {
            reads.merge(&step.condition_reads);
        }
        if params {
            reads.merge(&step.params_reads);
        }
        let deadline = self.step_deadline(i);
        let evaluator = self.inner.evaluator.clone();
        let inline = evaluator.inline(&step.heavy, scope.weight(&reads), deadline, |budget| {
            step.prepare(&scope, budget, condition, params)
        });
        if let Some(prepared) = inline {
            self.start_prepared(i, attempt, now, prepared);
            return;
        }
        self.steps[i].state = State::Preparing { attempt };
        let tx = self.prepared_tx.clone();
        let tenant = self.execution.tenant_id;
        let cancel = self.attempts.child_token();
        tokio::spawn(async move {
            let work = workflow.clone();
            let prepared = evaluator
                .pooled(tenant, deadline, Some(&cancel), move |budget| {
                    work.steps[i].prepare(&scope, budget, condition, params)
                })
                .await
                .ok();
            let _ = tx.send(PreparedDone {
                step: i,
                attempt,
                prepared,
            });
        });
    }

    /// A preparation evaluated in the pool came back: the step goes on as if it had been
    /// prepared at once.
    fn handle_prepared(&mut self, done: PreparedDone) {
        let i = done.step;
        match self.steps[i].state {
            State::Preparing { attempt } if attempt == done.attempt => {}
            // Ended meanwhile (cancelled, timed out).
            _ => return,
        }
        match done.prepared {
            Some(prepared) if !self.draining => {
                self.start_prepared(i, done.attempt, Utc::now(), prepared);
            }
            // Abandoned, or the daemon is draining: the step starts later, here or on the
            // daemon that takes the execution over.
            _ => {
                self.steps[i].state = match done.attempt {
                    None => State::Waiting,
                    Some(attempt) => State::Scheduled {
                        attempt,
                        at: Utc::now(),
                    },
                }
            }
        }
    }

    /// Acts on a step's preparation: skips it, fails it (its `if` did not evaluate), or
    /// starts the attempt.
    fn start_prepared(
        &mut self,
        i: usize,
        attempt: Option<i32>,
        now: DateTime<Utc>,
        prepared: Prepared,
    ) {
        match prepared.condition {
            None | Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let attempt = self.steps[i].last_attempt + 1;
                self.steps[i].last_attempt = attempt;
                self.write_attempt(i, attempt, Record::skipped(now));
                self.steps[i].state = State::Done(Outcome::Skipped);
                return;
            }
            Some(Err(error)) => {
                let attempt = self.steps[i].last_attempt + 1;
                self.steps[i].last_attempt = attempt;
                self.fail_final(i, attempt, Some(now), format!("if: {error}"));
                return;
            }
        }
        if let Some(a) = self.start_attempt(i, attempt, now, prepared.params) {
            self.to_spawn.push((i, a));
        }
    }

    /// Records a running attempt (or a sleep with its durable end); `None` when there is
    /// nothing to spawn: a pure step ran at once, or its params did not render. `params` are
    /// the rendered params of a step that runs here or sleeps.
    fn start_attempt(
        &mut self,
        i: usize,
        attempt: Option<i32>,
        now: DateTime<Utc>,
        params: Option<Result<serde_json::Map<String, Value>, String>>,
    ) -> Option<i32> {
        let attempt = attempt.unwrap_or(self.steps[i].last_attempt + 1);
        self.steps[i].last_attempt = self.steps[i].last_attempt.max(attempt);
        let params = move || params.unwrap_or_else(|| Err("params were not rendered".to_owned()));
        if self.is_inline(i) {
            let result = super::attempt::run_pure(
                self.inner.connectors.registry(),
                &self.workflow.steps[i],
                params(),
            );
            // Started and finished in this one transition: its one event is the outcome.
            self.complete(i, attempt, now, Utc::now(), result);
            return None;
        }
        if self.workflow.steps[i].kind == ActionKind::Timer {
            match super::attempt::sleep_duration(params()) {
                Ok(d) => {
                    let until =
                        now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
                    self.write_attempt(i, attempt, Record::sleeping(now, until));
                    self.steps[i].state = State::Sleeping {
                        attempt,
                        started: now,
                        until,
                    };
                }
                Err(e) => self.attempt_failed(i, attempt, now, e),
            }
            return None;
        }
        self.write_attempt(i, attempt, Record::running(now));
        self.steps[i].state = State::Running {
            attempt,
            started: now,
        };
        Some(attempt)
    }

    /// Runs an attempt recorded as running, now that the record is durable.
    fn spawn_attempt(&mut self, i: usize, attempt: i32) {
        let scope = self.step_scope(i);
        let deadline = self.step_deadline(i);
        self.attempts
            .spawn(&self.workflow, i, attempt, scope, deadline);
    }

    /// Records an attempt's end: the output (the checkpoint), or a failure that may retry.
    /// `ended` is when the attempt ended: now for work that just reported, the planned end
    /// for a sleep (so a dependent started in the same pass never appears to start first).
    fn complete(
        &mut self,
        i: usize,
        attempt: i32,
        started: DateTime<Utc>,
        ended: DateTime<Utc>,
        result: Result<Value, ActionError>,
    ) {
        let now = ended;
        let action = self.workflow.steps[i].spec.action.clone();
        metrics::histogram!(
            "mantle_step_duration_seconds",
            "action" => action,
            "result" => if result.is_ok() { "completed" } else { "failed" }
        )
        .record((ended - started).num_milliseconds().max(0) as f64 / 1000.0);
        match super::attempt::ended(result, self.inner.config.max_output_bytes) {
            Ended::Completed { output, size } => {
                if self.workflow.steps[i].logs
                    && let Some(message) = output.get("message").and_then(Value::as_str)
                {
                    let name = self.workflow.steps[i].spec.name.clone();
                    self.event(
                        EventKind::Log,
                        Some(&name),
                        Some(attempt),
                        None,
                        Some(message.to_owned()),
                    );
                }
                self.write_attempt(i, attempt, Record::completed(output.clone(), started, now));
                self.steps[i].output = Some(Shared {
                    value: Arc::new(output),
                    bytes: size,
                });
                self.steps[i].error = None;
                self.steps[i].state = State::Done(Outcome::Completed);
            }
            Ended::Failed { error, output } => {
                self.write_attempt(
                    i,
                    attempt,
                    Record::failed(
                        error.message.clone(),
                        output.as_ref().map(|o| (*o.value).clone()),
                        Some(started),
                        Some(now),
                    ),
                );
                self.after_failure(i, attempt, now, error, output);
            }
        }
    }

    fn attempt_failed(&mut self, i: usize, attempt: i32, now: DateTime<Utc>, error: String) {
        self.write_attempt(
            i,
            attempt,
            Record::failed(error.clone(), None, Some(now), Some(now)),
        );
        self.after_failure(i, attempt, now, ActionError::from(error), None);
    }

    /// After a failed attempt: schedule the next one in the same transition (recovery
    /// relies on it: a failed latest attempt is the step's end), or fail the step for good
    /// with the failure's output. A failure is retried when the retry budget allows and the
    /// error is retryable or has a status the step's `retry.on` lists.
    fn after_failure(
        &mut self,
        i: usize,
        attempt: i32,
        now: DateTime<Utc>,
        error: ActionError,
        output: Option<Shared>,
    ) {
        self.steps[i].failures += 1;
        let retry = &self.workflow.steps[i].retry;
        let retried = super::attempt::retried(
            retry,
            &error,
            self.steps[i].failures,
            self.cancel.is_cancelled(),
        );
        let error = error.message;
        if retried {
            let delay = backoff(
                retry.initial_backoff_ms,
                retry.max_backoff_ms,
                retry.multiplier,
                self.steps[i].failures,
            );
            let at = now + chrono::Duration::milliseconds(delay as i64);
            let next = attempt + 1;
            self.steps[i].last_attempt = next;
            self.write_attempt(i, next, Record::pending(at));
            self.steps[i].state = State::Scheduled { attempt: next, at };
            self.steps[i].error = Some(super::model::error_text(error));
        } else {
            let continued = self.workflow.steps[i].spec.continue_on_error;
            self.steps[i].error = Some(super::model::error_text(error));
            self.steps[i].output = output;
            self.steps[i].state = State::Done(Outcome::Failed { continued });
        }
    }

    /// A failure that no retry can fix (the `if` did not evaluate).
    fn fail_final(&mut self, i: usize, attempt: i32, now: Option<DateTime<Utc>>, error: String) {
        self.write_attempt(i, attempt, Record::failed(error.clone(), None, now, now));
        let continued = self.workflow.steps[i].spec.continue_on_error;
        self.steps[i].error = Some(super::model::error_text(error));
        self.steps[i].state = State::Done(Outcome::Failed { continued });
    }

    fn next_wake(&self) -> Option<DateTime<Utc>> {
        let mut wake = self.execution.deadline;
        for s in &self.steps {
            let at = match s.state {
                State::Scheduled { at, .. } => at,
                State::Sleeping { until, .. } => until,
                _ => continue,
            };
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }

    async fn wait(&mut self, wake: Option<DateTime<Utc>>) -> Result<(), Stop> {
        let sleep = match wake {
            Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3600),
        };
        let shutdown = self.inner.shutdown.clone();
        tokio::select! {
            Some(done) = self.attempts.finished() => {
                self.handle_done(done);
                // Drain whatever else finished meanwhile: one transition for all of them.
                while let Some(more) = self.attempts.finished_now() {
                    self.handle_done(more);
                }
            }
            Some(msg) = self.progress_rx.recv() => {
                self.handle_progress(msg);
                while let Ok(more) = self.progress_rx.try_recv() {
                    self.handle_progress(more);
                }
            }
            Some(done) = self.prepared_rx.recv() => {
                self.handle_prepared(done);
                while let Ok(more) = self.prepared_rx.try_recv() {
                    self.handle_prepared(more);
                }
            }
            () = tokio::time::sleep(sleep) => {}
            () = self.cancel.cancelled(), if !self.cancel.is_cancelled() => {}
            () = self.lost.cancelled() => {}
            () = shutdown.cancelled(), if !self.draining => {}
        }
        Ok(())
    }

    /// A running attempt's checkpoint: written with its log line in the next transition,
    /// answered once durable. One of an attempt no longer running is dropped unanswered.
    fn handle_progress(&mut self, msg: super::progress::ProgressMsg) {
        match self.steps[msg.step].state {
            State::Running { attempt, .. } if attempt == msg.attempt => {}
            _ => return,
        }
        let name = self.workflow.steps[msg.step].spec.name.clone();
        self.event(
            EventKind::Log,
            Some(&name),
            Some(msg.attempt),
            None,
            Some(msg.log),
        );
        self.pending.checkpoints.push(msg.checkpoint);
        self.acks.push(msg.ack);
    }

    fn handle_done(&mut self, done: AttemptDone) {
        match self.steps[done.step].state {
            State::Running { attempt, started } if attempt == done.attempt => {
                self.complete(done.step, attempt, started, Utc::now(), done.result);
            }
            _ => {}
        }
    }

    /// Cancellation or timeout: stop running attempts, record every unfinished step.
    async fn finish_early(&mut self, status: ExecutionStatus, reason: &str) -> Result<(), Stop> {
        self.attempts.stop().await;
        let now = Utc::now();
        for i in 0..self.steps.len() {
            let (attempt, started) = match self.steps[i].state {
                State::Done(_) => continue,
                State::Running { attempt, started }
                | State::Sleeping {
                    attempt, started, ..
                } => (attempt, Some(started)),
                State::Scheduled { attempt, .. }
                | State::Preparing {
                    attempt: Some(attempt),
                } => (attempt, None),
                State::Waiting | State::Preparing { attempt: None } => {
                    let a = self.steps[i].last_attempt + 1;
                    self.steps[i].last_attempt = a;
                    (a, None)
                }
            };
            self.write_attempt(
                i,
                attempt,
                Record::cancelled(reason.to_owned(), started, now),
            );
            self.steps[i].state = State::Done(Outcome::Cancelled);
        }
        self.end(status, None, Some(reason.to_owned())).await
    }

    /// A transition could not be stored and never will be: forgets it and everything
    /// behind it (the store refuses those unwritten), stops every attempt, and ends the
    /// execution as failed, saying why. Its event log goes on from the last stored event.
    async fn give_up(&mut self, error: &str, first_seq: i64) -> Result<(), Stop> {
        let in_flight = self.pipeline.abandon();
        let pending = std::mem::take(&mut self.pending);
        self.next_seq = in_flight
            .into_iter()
            .chain(pending.events.first().map(|e| e.seq))
            .fold(first_seq, i64::min);
        self.to_spawn.clear();
        let reason = format!("a checkpoint could not be stored: {error}");
        self.finish_early(ExecutionStatus::Failed, &reason).await
    }

    /// Every step is done: the execution completes (outputs evaluated) or fails.
    async fn finish(&mut self) -> Result<(), Stop> {
        // A step failed for good; or, never expected without such a failure, a step was
        // cancelled: either way the execution did not complete.
        let find = |wanted: fn(&State) -> bool| self.steps.iter().position(|s| wanted(&s.state));
        let failed = find(|s| matches!(s, State::Done(Outcome::Failed { continued: false })))
            .or_else(|| find(|s| matches!(s, State::Done(Outcome::Cancelled))));
        if let Some(i) = failed {
            let error = format!(
                "step {:?} failed: {}",
                self.workflow.steps[i].spec.name,
                self.steps[i].error.as_deref().unwrap_or("unknown error")
            );
            return self.end(ExecutionStatus::Failed, None, Some(error)).await;
        }
        let outputs = if self.workflow.outputs.is_empty() {
            Ok(serde_json::Map::new())
        } else {
            let scope = self.scope();
            let weight = scope.weight(&self.workflow.outputs_reads);
            let workflow = self.workflow.clone();
            let evaluator = self.inner.evaluator.clone();
            let cancel = self.cancel.child_token();
            let evaluation = evaluator.evaluate(
                self.execution.tenant_id,
                &self.workflow.outputs_heavy,
                weight,
                self.execution_deadline(),
                Some(&cancel),
                move |budget| workflow.evaluate_outputs(&scope, budget),
            );
            tokio::select! {
                outputs = evaluation => outputs.map_err(|e| e.to_string()).and_then(|o| o),
                () = self.lost.cancelled() => return Err(Stop::Lost),
            }
        };
        // Cancelled or timed out while the outputs were evaluated: that is how it ended.
        if let Some((status, reason)) = self.ended_early() {
            return self.finish_early(status, &reason).await;
        }
        let outputs = outputs.and_then(|outputs| {
            let outputs = Value::Object(outputs);
            let size = crate::workflow::expr::json_len(&outputs);
            let max = self.inner.config.max_output_bytes;
            let whole = size + self.inputs.bytes + self.trigger.bytes;
            if size > max {
                Err(format!(
                    "the workflow's outputs are {size} bytes, over the limit of {max} bytes \
                     (MANTLE_MAX_STEP_OUTPUT_BYTES)"
                ))
            } else if whole > super::MAX_EXECUTION_BYTES {
                Err(format!(
                    "the workflow's outputs are {size} bytes: with its inputs and trigger \
                     ({} bytes) the execution would be {whole} bytes, over the {} bytes one \
                     answer can carry",
                    self.inputs.bytes + self.trigger.bytes,
                    super::MAX_EXECUTION_BYTES
                ))
            } else {
                Ok(outputs)
            }
        });
        match outputs {
            Ok(outputs) => {
                self.end(ExecutionStatus::Completed, Some(outputs), None)
                    .await
            }
            Err(error) => self.end(ExecutionStatus::Failed, None, Some(error)).await,
        }
    }

    async fn end(
        &mut self,
        status: ExecutionStatus,
        outputs: Option<Value>,
        error: Option<String>,
    ) -> Result<(), Stop> {
        // The end is stamped once every step before it is durable.
        self.settle_all().await?;
        // Step errors in it are cut already (with a note of how much): room for the words
        // around them, so that the note stays.
        let error = error.map(|e| {
            if e.len() <= super::model::MAX_ERROR_BYTES + 1024 {
                super::model::stored_text(e)
            } else {
                super::model::error_text(e)
            }
        });
        let now = Utc::now();
        self.event(
            EventKind::ExecutionStatus,
            None,
            None,
            Some(status.as_str()),
            error.clone(),
        );
        // The announcement is queued in the same transaction as the end: it cannot be lost
        // or sent for an end that did not happen.
        if let Some(url) = &self.tenant.settings.webhook_url {
            let id = uuid::Uuid::now_v7();
            let payload = json!({
                "delivery_id": id.to_string(),
                "execution_id": self.execution.id.to_string(),
                "tenant": self.tenant.name,
                "workflow": self.execution.workflow,
                "version": self.execution.version,
                "status": status.as_str(),
                "create_time": self.execution.create_time.to_rfc3339(),
                "start_time": self.execution.start_time.map(|t| t.to_rfc3339()),
                "end_time": now.to_rfc3339(),
                "error": error,
            });
            self.pending.webhook = Some(super::model::NewDelivery {
                id,
                url: url.clone(),
                secret_name: self.tenant.settings.webhook_secret.clone(),
                payload: payload.to_string(),
                create_time: now,
                expire_time: now + chrono::Duration::hours(24),
            });
        }
        self.pending.execution = Some(ExecutionUpdate {
            status,
            outputs,
            error,
            start_time: self.execution.start_time,
            end_time: Some(now),
            release: true,
            wake_time: None,
        });
        self.commit().await?;
        let capped = super::Limits::effective(
            self.inner.config.limits.max_concurrent_executions,
            self.tenant.settings.max_concurrent_executions,
        )
        .is_some();
        self.inner.finished(&self.execution, status, now, capped);
        Ok(())
    }

    /// Nothing to do for a while (a long sleep or retry backoff): give the lease back and
    /// let whichever daemon is free claim the execution when it is due.
    async fn release_until(&mut self, at: DateTime<Utc>) -> Result<(), Stop> {
        self.pending.execution = Some(ExecutionUpdate {
            status: ExecutionStatus::Running,
            outputs: None,
            error: None,
            start_time: None,
            end_time: None,
            release: true,
            wake_time: Some(at),
        });
        self.commit().await?;
        Err(Stop::Released)
    }
}
