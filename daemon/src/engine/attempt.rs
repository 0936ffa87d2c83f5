//! The attempt runner: a step with effects runs as a task of its own (its params rendered
//! within the step's timeout, its credential resolved, its action invoked, all of it
//! cancelled with the execution), and reports its result to the driver. Also the rules by
//! which a result becomes the attempt's outcome, apart from the driver's state: what a
//! pure step or a sleep gives, the step-output limit, what a failure keeps, whether it is
//! retried.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::compiled::{CompiledStep, CompiledWorkflow};
use super::eval::Deadline;
use super::progress::{ProgressMsg, StepProgress};
use crate::connectors::{ActionError, Invocation};
use crate::workflow::expr::{Scope, Shared};
use crate::workflow::spec::RetrySpec;

/// A finished attempt, reported by its task.
pub(super) struct AttemptDone {
    pub(super) step: usize,
    pub(super) attempt: i32,
    pub(super) result: Result<Value, ActionError>,
}

/// Runs one execution's attempts with effects, each as a task of its own, and collects
/// their results.
pub(super) struct Runner {
    inner: Arc<Inner>,
    tenant_id: uuid::Uuid,
    /// The tenant's allowed domains when the driver started.
    allowed_domains: Option<Arc<Vec<String>>>,
    /// Cancels every running attempt.
    cancel: CancellationToken,
    done_tx: mpsc::UnboundedSender<AttemptDone>,
    done_rx: mpsc::UnboundedReceiver<AttemptDone>,
    /// Checkpoints of running attempts, for the driver to write.
    progress_tx: mpsc::UnboundedSender<ProgressMsg>,
    progress_rx: Option<mpsc::UnboundedReceiver<ProgressMsg>>,
    /// Attempts spawned whose results were not taken yet.
    running: usize,
    execution_id: uuid::Uuid,
    generation: i32,
    tenant: Arc<crate::model::tenant::Tenant>,
}

impl Runner {
    pub(super) fn new(
        inner: Arc<Inner>,
        tenant: Arc<crate::model::tenant::Tenant>,
        execution_id: uuid::Uuid,
        generation: i32,
    ) -> Runner {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        Runner {
            inner,
            tenant_id: tenant.id,
            allowed_domains: tenant.settings.allowed_domains.clone().map(Arc::new),
            cancel: CancellationToken::new(),
            done_tx,
            done_rx,
            progress_tx,
            progress_rx: Some(progress_rx),
            running: 0,
            execution_id,
            generation,
            tenant,
        }
    }

    /// Where the checkpoints of running attempts come, for the driver (once).
    pub(super) fn take_progress(&mut self) -> mpsc::UnboundedReceiver<ProgressMsg> {
        self.progress_rx
            .take()
            .expect("the progress receiver is taken once")
    }

    /// Attempts running (spawned, their results not taken yet).
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// A token cancelled with every attempt: for work done ahead of them (a step's
    /// preparation in the CPU pool).
    pub(super) fn child_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Cancels every running attempt.
    pub(super) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Cancels every running attempt and lets them observe it (an HTTP request is aborted
    /// at once): waits for their results, which are dropped, at most 5 s for each.
    pub(super) async fn stop(&mut self) {
        self.cancel.cancel();
        while self.running > 0 {
            match tokio::time::timeout(Duration::from_secs(5), self.done_rx.recv()).await {
                Ok(Some(_)) => self.running -= 1,
                _ => break,
            }
        }
    }

    /// The next result of an attempt (cancel-safe).
    pub(super) async fn finished(&mut self) -> Option<AttemptDone> {
        let done = self.done_rx.recv().await;
        if done.is_some() {
            self.running -= 1;
        }
        done
    }

    /// A result that is in already, if any.
    pub(super) fn finished_now(&mut self) -> Option<AttemptDone> {
        let done = self.done_rx.try_recv().ok();
        if done.is_some() {
            self.running -= 1;
        }
        done
    }

    /// Runs `attempt` of step `i` as a task: renders its params in `scope` (within the
    /// step's timeout, `deadline`, as an evaluation), resolves its credential, invokes its
    /// action, and reports the result, redacted of the credential's secret values.
    pub(super) fn spawn(
        &mut self,
        workflow: &Arc<CompiledWorkflow>,
        i: usize,
        attempt: i32,
        scope: Scope,
        deadline: Option<Deadline>,
    ) {
        let step = &workflow.steps[i];
        let weight = scope.weight(&step.params_reads);
        let workflow = workflow.clone();
        let tx = self.done_tx.clone();
        self.running += 1;
        let inner = self.inner.clone();
        let action = step.spec.action.clone();
        let timeout = step.spec.timeout_ms.map(Duration::from_millis);
        let credential = step.spec.credential.clone();
        let cancel = self.cancel.child_token();
        let tenant_id = self.tenant_id;
        let allowed_domains = self.allowed_domains.clone();
        let progress: Option<Arc<dyn crate::connectors::Progress>> =
            step.keeps_progress.then(|| {
                Arc::new(StepProgress {
                    inner: self.inner.clone(),
                    workflow: workflow.clone(),
                    step: i,
                    attempt,
                    execution_id: self.execution_id,
                    generation: self.generation,
                    tenant: self.tenant.clone(),
                    scope: scope.clone(),
                    deadline,
                    allowed_domains: allowed_domains.clone(),
                    cancel: cancel.clone(),
                    tx: self.progress_tx.clone(),
                    next_seq: std::sync::atomic::AtomicI32::new(1),
                }) as Arc<dyn crate::connectors::Progress>
            });
        tokio::spawn(async move {
            // Secret values never leave the attempt: its output and error are redacted here.
            let mut redactor = crate::connectors::redact::Redactor::default();
            let work = async {
                // Rendered within the step's timeout: a costly template is the step's time.
                let evaluator = inner.evaluator.clone();
                let render = workflow.clone();
                let params = evaluator
                    .evaluate(
                        tenant_id,
                        &workflow.steps[i].heavy,
                        weight,
                        deadline,
                        Some(&cancel),
                        move |budget| render.steps[i].prepare_params(&scope, budget),
                    )
                    .await
                    .map_err(|e| e.to_string())??;
                let credential = match credential {
                    Some(name) => {
                        // Its error is the step's: no secret value in it, retried as the
                        // step's `retry` asks (the secret may be created meanwhile).
                        let c = inner
                            .secrets
                            .credential(tenant_id, &name)
                            .await
                            .map_err(|e| ActionError::transient(e.to_string()))?;
                        redactor = crate::connectors::redact::Redactor::for_credential(&c);
                        Some(c)
                    }
                    None => None,
                };
                inner
                    .connectors
                    .invoke(Invocation {
                        action,
                        params,
                        credential,
                        cancel: cancel.clone(),
                        allowed_domains,
                        progress,
                    })
                    .await
            };
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, work).await {
                    Ok(r) => r,
                    Err(_) => {
                        cancel.cancel();
                        Err(ActionError::transient(format!(
                            "timed out after {} (the step's timeout)",
                            humanize(t)
                        )))
                    }
                },
                None => work.await,
            };
            let result = match result {
                Ok(output) => Ok(redactor.value(output)),
                Err(error) => Err(ActionError {
                    message: redactor.text(&error.message),
                    output: error.output.map(|o| redactor.value(o)),
                    ..error
                }),
            };
            let _ = tx.send(AttemptDone {
                step: i,
                attempt,
                result,
            });
        });
    }
}

/// Runs a pure step here, on its rendered `params`, with its action found in `actions`:
/// its output, or why it failed.
pub(super) fn run_pure(
    actions: &crate::connectors::Registry,
    step: &CompiledStep,
    params: Result<serde_json::Map<String, Value>, String>,
) -> Result<Value, ActionError> {
    let result = params.and_then(|params| {
        actions
            .run_pure(&step.spec.action, &params)
            .unwrap_or_else(|| Err(format!("{} is not a pure action", step.spec.action)))
    });
    result.map_err(ActionError::from)
}

/// How long a durable sleep lasts, from its rendered `params`.
pub(super) fn sleep_duration(
    params: Result<serde_json::Map<String, Value>, String>,
) -> Result<Duration, String> {
    params.and_then(|p| crate::connectors::core::SleepParams::wait(&p))
}

/// How an attempt ended, by its result and the step-output limit.
#[derive(Debug)]
pub(super) enum Ended {
    /// The step's checkpoint: its output, `size` bytes of JSON.
    Completed { output: Value, size: usize },
    /// Failed with `error` (which no longer carries an output); `output` is what the
    /// action produced before failing (an HTTP response with an error status), kept as the
    /// step's output when it is within the limit.
    Failed {
        error: ActionError,
        output: Option<Shared>,
    },
}

/// How an attempt with `result` ended, when a step's output may be `max` bytes of JSON: a
/// larger output fails the attempt, and is not kept.
pub(super) fn ended(result: Result<Value, ActionError>, max: usize) -> Ended {
    let result = result.and_then(|output| {
        let size = crate::workflow::expr::json_len(&output);
        if size > max {
            Err(ActionError::from(format!(
                "the step's output is {size} bytes, over the limit of {max} bytes"
            )))
        } else {
            Ok((output, size))
        }
    });
    match result {
        Ok((output, size)) => Ended::Completed { output, size },
        Err(mut error) => {
            // What the action produced before failing (an HTTP response with an error
            // status) is the step's output, within the same size limit.
            let output = error.output.take().and_then(|o| {
                let size = crate::workflow::expr::json_len(&o);
                (size <= max).then_some(Shared {
                    value: Arc::new(o),
                    bytes: size,
                })
            });
            Ended::Failed { error, output }
        }
    }
}

/// Whether a failed attempt is retried: the error is retryable or has a status the step's
/// `retry.on` lists, the retry budget allows another attempt after `failures` (this one
/// counted), and the execution is not being cancelled. Decided from the action's error,
/// never from its message.
pub(super) fn retried(
    retry: &RetrySpec,
    error: &ActionError,
    failures: u32,
    cancelled: bool,
) -> bool {
    let retryable = error.retryable || error.status.is_some_and(|s| retry.on.contains(s));
    retryable && failures < retry.max_attempts && !cancelled
}

/// A step's timeout as its error says it: whole seconds, else milliseconds.
pub(super) fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_result_becomes_a_checkpoint_or_a_failure_within_the_output_limit() {
        let with_output = |mut e: ActionError, o: Value| {
            e.output = Some(o);
            e
        };
        let big = json!({"text": "x".repeat(100)});
        // What, the result, and how it ended: the output kept (completed or not), the
        // error's message when it failed.
        type Case = (
            &'static str,
            Result<Value, ActionError>,
            Option<Value>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "an output within the limit is the checkpoint",
                Ok(json!({"n": 1})),
                Some(json!({"n": 1})),
                None,
            ),
            (
                "an output over the limit fails the attempt and is not kept",
                Ok(big.clone()),
                None,
                Some("the step's output is 111 bytes, over the limit of 64 bytes"),
            ),
            (
                "a failure keeps what the action produced",
                Err(with_output(
                    ActionError::permanent("status 404"),
                    json!({"status": 404}),
                )),
                Some(json!({"status": 404})),
                Some("status 404"),
            ),
            (
                "a failure's output over the limit is dropped",
                Err(with_output(ActionError::transient("status 503"), big)),
                None,
                Some("status 503"),
            ),
            (
                "a failure without output",
                Err(ActionError::transient("refused")),
                None,
                Some("refused"),
            ),
        ];
        for (what, result, want_output, want_error) in cases {
            match ended(result, 64) {
                Ended::Completed { output, size } => {
                    assert_eq!(want_error, None, "{what}: completed");
                    assert_eq!(Some(&output), want_output.as_ref(), "{what}");
                    assert_eq!(size, crate::workflow::expr::json_len(&output), "{what}");
                }
                Ended::Failed { error, output } => {
                    assert_eq!(Some(error.message.as_str()), want_error, "{what}");
                    assert_eq!(error.output, None, "{what}: the output moved out");
                    assert_eq!(output.map(|o| (*o.value).clone()), want_output, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_failure_is_retried_by_its_error_the_budget_and_cancellation() {
        let mut retry = RetrySpec {
            max_attempts: 3,
            ..RetrySpec::default()
        };
        retry.on.push((404, 404));
        let status = |mut e: ActionError, s: u16| {
            e.status = Some(s);
            e
        };
        let transient = ActionError::transient("timeout");
        let permanent = ActionError::permanent("bad params");
        // What, the error, failures so far (this one counted), cancelled, retried.
        let cases: Vec<(&str, ActionError, u32, bool, bool)> = vec![
            ("retryable, budget left", transient.clone(), 1, false, true),
            (
                "retryable, the last attempt",
                transient.clone(),
                3,
                false,
                false,
            ),
            ("retryable, but cancelled", transient, 1, true, false),
            ("not retryable", permanent.clone(), 1, false, false),
            (
                "not retryable, but a status retry.on lists",
                status(permanent.clone(), 404),
                1,
                false,
                true,
            ),
            (
                "not retryable, a status retry.on does not list",
                status(permanent, 400),
                1,
                false,
                false,
            ),
        ];
        for (what, error, failures, cancelled, want) in cases {
            assert_eq!(retried(&retry, &error, failures, cancelled), want, "{what}");
        }
    }

    #[test]
    fn sleeps_and_timeouts_read_as_durations() {
        let params = |v: Value| Ok(v.as_object().cloned().expect("an object"));
        assert_eq!(
            sleep_duration(params(json!({"duration": "1500ms"}))),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            sleep_duration(params(json!({"duration": 5}))),
            Err("params.duration: expected a duration such as 500ms, 2s or 5m".to_owned())
        );
        assert_eq!(
            sleep_duration(Err("params were not rendered".to_owned())),
            Err("params were not rendered".to_owned())
        );
        assert_eq!(humanize(Duration::from_secs(30)), "30s");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500ms");
    }
}
