//! The scheduler's pure part: a step's state, and how it is rebuilt from the checkpoints
//! after a restart or a takeover. Functions of state only (no store, no clock but the
//! `now` they are given and the jitter of [`backoff`]), tested without a database. The
//! driver (`driver.rs`) acts on these states: it writes transitions (through the commit
//! pipeline, `pipeline.rs`) and runs attempts (through the attempt runner, `attempt.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::compiled::CompiledWorkflow;
use super::model::{Execution, StepAttempt, StepStatus};
use crate::connectors::ActionKind;
use crate::workflow::expr::Shared;

/// The error of an attempt whose daemon died while it ran; the step runs again. Only its
/// message: recovery reads [`StepAttempt::interrupted`] (attempts recorded with this
/// message before that column existed were marked by migration 0011).
pub const INTERRUPTED: &str = "interrupted: the daemon running this attempt stopped";

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Outcome {
    Completed,
    Skipped,
    Failed { continued: bool },
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum State {
    /// Not started: waits for its dependencies.
    Waiting,
    /// A retry that may start at `at`.
    Scheduled {
        attempt: i32,
        at: DateTime<Utc>,
    },
    /// Its `if` or params are being evaluated in the CPU pool (nothing is recorded yet);
    /// `attempt` is the retry it is for, `None` for a first attempt.
    Preparing {
        attempt: Option<i32>,
    },
    Running {
        attempt: i32,
        started: DateTime<Utc>,
    },
    /// A durable `core/sleep` that ends at `until`.
    Sleeping {
        attempt: i32,
        started: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    Done(Outcome),
}

#[derive(Debug)]
pub(super) struct StepRun {
    pub(super) state: State,
    /// Highest attempt number used so far.
    pub(super) last_attempt: i32,
    /// Failed attempts in the current generation (the retry budget).
    pub(super) failures: u32,
    pub(super) output: Option<Shared>,
    pub(super) error: Option<String>,
}

/// An attempt's row as a transition writes it: one constructor per way an attempt moves.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    pub(super) status: StepStatus,
    pub(super) output: Option<Value>,
    pub(super) error: Option<String>,
    /// A pending retry's start, or a running durable sleep's end.
    pub(super) wake_time: Option<DateTime<Utc>>,
    pub(super) start_time: Option<DateTime<Utc>>,
    pub(super) end_time: Option<DateTime<Utc>>,
    /// Ended by its daemon's stop (see [`StepAttempt::interrupted`]).
    pub(super) interrupted: bool,
}

impl Record {
    fn new(status: StepStatus) -> Record {
        Record {
            status,
            output: None,
            error: None,
            wake_time: None,
            start_time: None,
            end_time: None,
            interrupted: false,
        }
    }

    /// Started at `started`, running.
    pub(super) fn running(started: DateTime<Utc>) -> Record {
        Record {
            start_time: Some(started),
            ..Record::new(StepStatus::Running)
        }
    }

    /// A durable sleep from `started` to `until`.
    pub(super) fn sleeping(started: DateTime<Utc>, until: DateTime<Utc>) -> Record {
        Record {
            wake_time: Some(until),
            ..Record::running(started)
        }
    }

    /// A retry that may start at `at`.
    pub(super) fn pending(at: DateTime<Utc>) -> Record {
        Record {
            wake_time: Some(at),
            ..Record::new(StepStatus::Pending)
        }
    }

    pub(super) fn completed(output: Value, started: DateTime<Utc>, ended: DateTime<Utc>) -> Record {
        Record {
            output: Some(output),
            start_time: Some(started),
            end_time: Some(ended),
            ..Record::new(StepStatus::Completed)
        }
    }

    /// Failed with `error`; `output` is what the action produced before failing. Times are
    /// `None` for a step that failed before it could start (its `if` did not evaluate).
    pub(super) fn failed(
        error: String,
        output: Option<Value>,
        started: Option<DateTime<Utc>>,
        ended: Option<DateTime<Utc>>,
    ) -> Record {
        Record {
            output,
            error: Some(error),
            start_time: started,
            end_time: ended,
            ..Record::new(StepStatus::Failed)
        }
    }

    /// Its `if` was false.
    pub(super) fn skipped(at: DateTime<Utc>) -> Record {
        Record {
            start_time: Some(at),
            end_time: Some(at),
            ..Record::new(StepStatus::Skipped)
        }
    }

    /// Stopped, or never run, because of `error`.
    pub(super) fn cancelled(
        error: String,
        started: Option<DateTime<Utc>>,
        ended: DateTime<Utc>,
    ) -> Record {
        Record {
            error: Some(error),
            start_time: started,
            end_time: Some(ended),
            ..Record::new(StepStatus::Cancelled)
        }
    }

    /// Left running by a daemon that stopped, found at `ended`: cancelled, saying so
    /// ([`INTERRUPTED`]), and not the step's outcome (the step gets a new attempt).
    pub(super) fn interrupted(started: Option<DateTime<Utc>>, ended: DateTime<Utc>) -> Record {
        Record {
            interrupted: true,
            ..Record::cancelled(INTERRUPTED.to_owned(), started, ended)
        }
    }
}

/// Whether a waiting step may start, by the states of the steps it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// Every dependency completed, was skipped, or failed with `continue_on_error`.
    Ready,
    /// A dependency has not ended yet.
    Waiting,
    /// The dependency `by` (an index) failed or was cancelled: the step never runs (it is
    /// recorded as cancelled, naming `by`). The last such dependency in `needs` order.
    Blocked { by: usize },
}

/// A waiting step's [`Readiness`]: `needs` are the indexes of its dependencies, `state`
/// the state of a step by index.
pub(super) fn readiness<'s>(needs: &[usize], state: impl Fn(usize) -> &'s State) -> Readiness {
    let mut blocked = None;
    let mut ready = true;
    for &j in needs {
        match state(j) {
            State::Done(
                Outcome::Completed | Outcome::Skipped | Outcome::Failed { continued: true },
            ) => {}
            State::Done(Outcome::Failed { continued: false } | Outcome::Cancelled) => {
                blocked = Some(j)
            }
            _ => ready = false,
        }
    }
    match (blocked, ready) {
        (Some(by), _) => Readiness::Blocked { by },
        (None, true) => Readiness::Ready,
        (None, false) => Readiness::Waiting,
    }
}

/// Rebuilds each step's state from its attempts (the checkpoints).
pub(super) fn recover(
    workflow: &CompiledWorkflow,
    execution: &Execution,
    attempts: &[StepAttempt],
) -> Vec<StepRun> {
    let mut by_step: BTreeMap<&str, Vec<&StepAttempt>> = BTreeMap::new();
    for a in attempts {
        by_step.entry(a.step_name.as_str()).or_default().push(a);
    }
    workflow
        .steps
        .iter()
        .map(|step| {
            let list = by_step
                .get(step.spec.name.as_str())
                .cloned()
                .unwrap_or_default();
            let last_attempt = list.iter().map(|a| a.attempt).max().unwrap_or(0);
            let failures = list
                .iter()
                .filter(|a| a.status == StepStatus::Failed && a.generation == execution.generation)
                .count() as u32;
            let mut run = StepRun {
                state: State::Waiting,
                last_attempt,
                failures,
                output: None,
                error: None,
            };
            let Some(latest) = list.iter().max_by_key(|a| a.attempt) else {
                return run;
            };
            let current = latest.generation == execution.generation;
            run.error = latest.error.clone();
            run.state = match latest.status {
                StepStatus::Completed => {
                    run.output = latest.output.clone().map(Shared::new);
                    State::Done(Outcome::Completed)
                }
                StepStatus::Skipped => State::Done(Outcome::Skipped),
                // A retry is recorded in the transition that records the failure: a failed
                // latest attempt is the step's end (retries used up, or not retryable).
                StepStatus::Failed if current => {
                    run.output = latest.output.clone().map(Shared::new);
                    State::Done(Outcome::Failed {
                        continued: step.spec.continue_on_error,
                    })
                }
                // An interrupted attempt is not an outcome: the step gets a new attempt (also
                // when the transition that recorded the interruption started none, as when
                // the daemon was draining).
                StepStatus::Cancelled if latest.interrupted => State::Waiting,
                StepStatus::Cancelled if current => State::Done(Outcome::Cancelled),
                // A failed or cancelled step of an earlier generation runs again (RetryExecution).
                StepStatus::Failed | StepStatus::Cancelled => State::Waiting,
                StepStatus::Pending => State::Scheduled {
                    attempt: latest.attempt,
                    at: latest.wake_time.unwrap_or_else(Utc::now),
                },
                StepStatus::Running => match (latest.wake_time, latest.start_time) {
                    // A durable sleep continues where it was.
                    (Some(until), Some(started)) if step.kind == ActionKind::Timer => {
                        State::Sleeping {
                            attempt: latest.attempt,
                            started,
                            until,
                        }
                    }
                    (_, started) => State::Running {
                        attempt: latest.attempt,
                        started: started.unwrap_or_else(Utc::now),
                    },
                },
            };
            run
        })
        .collect()
}

/// `initial * multiplier^(n-1)`, capped at `max`, then jittered to between 50% and 100%.
pub(super) fn backoff(initial_ms: u64, max_ms: u64, multiplier: f64, failures: u32) -> u64 {
    let exp = multiplier.powi(failures.saturating_sub(1) as i32);
    let base = ((initial_ms as f64) * exp).min(max_ms as f64).max(0.0) as u64;
    let half = base / 2;
    half + rand::random_range(0..=base - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use uuid::Uuid;

    use crate::model::execution::ExecutionStatus;

    /// `http` (an effect), `nap` (a durable sleep), `soft` (continues on error), `after`.
    const WORKFLOW: &str = "name: w
steps:
  - name: http
    action: http/request
    params: {url: https://example.com}
  - name: nap
    action: core/sleep
    params: {duration: 1h}
  - name: soft
    action: core/fail
    continue_on_error: true
    params: {message: no}
  - name: after
    action: core/log
    depends_on: [http, nap, soft]
    params: {message: done}
";

    fn workflow() -> CompiledWorkflow {
        let spec = crate::workflow::load(WORKFLOW).expect("valid").spec;
        CompiledWorkflow::compile_here(spec).expect("compiles")
    }

    fn at(second: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-12-04T10:00:{second:02}Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    fn execution(generation: i32) -> Execution {
        Execution {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            workflow: "w".into(),
            version: 1,
            status: ExecutionStatus::Running,
            inputs: json!({}),
            outputs: None,
            error: None,
            trigger: json!({}),
            create_time: at(0),
            start_time: Some(at(0)),
            end_time: None,
            deadline: None,
            generation,
            cancel_requested: false,
        }
    }

    /// An attempt of `step` as the store returns it.
    fn attempt(step: &str, attempt: i32, generation: i32, status: StepStatus) -> StepAttempt {
        StepAttempt {
            execution_id: Uuid::nil(),
            step_name: step.into(),
            attempt,
            generation,
            status,
            output: None,
            error: None,
            wake_time: None,
            start_time: Some(at(1)),
            end_time: None,
            interrupted: false,
        }
    }

    fn with(mut a: StepAttempt, f: impl FnOnce(&mut StepAttempt)) -> StepAttempt {
        f(&mut a);
        a
    }

    /// The recovered state of `step`, with its retry budget used and last attempt.
    fn recovered(
        generation: i32,
        attempts: &[StepAttempt],
        step: &str,
    ) -> (State, u32, i32, Option<serde_json::Value>) {
        let wf = workflow();
        let runs = recover(&wf, &execution(generation), attempts);
        let i = wf
            .steps
            .iter()
            .position(|s| s.spec.name == step)
            .expect("step");
        let run = &runs[i];
        (
            run.state.clone(),
            run.failures,
            run.last_attempt,
            run.output.as_ref().map(|o| (*o.value).clone()),
        )
    }

    #[test]
    fn recovery_after_each_kind_of_interruption() {
        use StepStatus as S;
        let done = |o| State::Done(o);
        // What, the execution's generation, the attempts stored, the step, and what it
        // recovers to: its state, the failures counted against its retries, its last attempt.
        type Case = (
            &'static str,
            i32,
            Vec<StepAttempt>,
            &'static str,
            State,
            u32,
            i32,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing recorded: waits",
                1,
                vec![],
                "http",
                State::Waiting,
                0,
                0,
            ),
            (
                "completed: done, with its output",
                1,
                vec![with(attempt("http", 1, 1, S::Completed), |a| {
                    a.output = Some(json!({"status": 200}))
                })],
                "http",
                done(Outcome::Completed),
                0,
                1,
            ),
            (
                "skipped: done",
                1,
                vec![attempt("http", 1, 1, S::Skipped)],
                "http",
                done(Outcome::Skipped),
                0,
                1,
            ),
            (
                "running when the daemon died: runs on (the driver interrupts it)",
                1,
                vec![attempt("http", 1, 1, S::Running)],
                "http",
                State::Running {
                    attempt: 1,
                    started: at(1),
                },
                0,
                1,
            ),
            (
                "interrupted and recorded so: gets a new attempt",
                1,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.error = Some(INTERRUPTED.into());
                    a.interrupted = true;
                })],
                "http",
                State::Waiting,
                0,
                1,
            ),
            (
                "interrupted, whatever its message says: gets a new attempt",
                1,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.error = Some("stopped".into());
                    a.interrupted = true;
                })],
                "http",
                State::Waiting,
                0,
                1,
            ),
            (
                "cancelled with the interruption's message, not marked: done (the message \
                 decides nothing)",
                1,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.error = Some(INTERRUPTED.into())
                })],
                "http",
                done(Outcome::Cancelled),
                0,
                1,
            ),
            (
                "interrupted before it started (the daemon was draining): gets a new attempt",
                1,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.start_time = None;
                    a.interrupted = true;
                })],
                "http",
                State::Waiting,
                0,
                1,
            ),
            (
                "interrupted after failed attempts: a new attempt, the failures still counted",
                1,
                vec![
                    attempt("http", 1, 1, S::Failed),
                    with(attempt("http", 2, 1, S::Cancelled), |a| {
                        a.interrupted = true
                    }),
                ],
                "http",
                State::Waiting,
                1,
                2,
            ),
            (
                "interrupted in an earlier generation: runs again",
                2,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.interrupted = true
                })],
                "http",
                State::Waiting,
                0,
                1,
            ),
            (
                "cancelled: done",
                1,
                vec![with(attempt("http", 1, 1, S::Cancelled), |a| {
                    a.error = Some("the execution was cancelled".into())
                })],
                "http",
                done(Outcome::Cancelled),
                0,
                1,
            ),
            (
                "a pending retry: scheduled at its stored time",
                1,
                vec![
                    attempt("http", 1, 1, S::Failed),
                    with(attempt("http", 2, 1, S::Pending), |a| {
                        a.start_time = None;
                        a.wake_time = Some(at(30));
                    }),
                ],
                "http",
                State::Scheduled {
                    attempt: 2,
                    at: at(30),
                },
                1,
                2,
            ),
            (
                "failed last: final (a retry is written with the failure), output kept",
                1,
                vec![
                    attempt("http", 1, 1, S::Failed),
                    with(attempt("http", 2, 1, S::Failed), |a| {
                        a.output = Some(json!({"status": 404}))
                    }),
                ],
                "http",
                done(Outcome::Failed { continued: false }),
                2,
                2,
            ),
            (
                "failed with continue_on_error: final, continued",
                1,
                vec![attempt("soft", 1, 1, S::Failed)],
                "soft",
                done(Outcome::Failed { continued: true }),
                1,
                1,
            ),
            (
                "failed in an earlier generation (RetryExecution): runs again, fresh budget",
                2,
                vec![
                    attempt("http", 1, 1, S::Failed),
                    attempt("http", 2, 1, S::Failed),
                ],
                "http",
                State::Waiting,
                0,
                2,
            ),
            (
                "cancelled in an earlier generation: runs again",
                2,
                vec![attempt("http", 1, 1, S::Cancelled)],
                "http",
                State::Waiting,
                0,
                1,
            ),
            (
                "a sleep: continues until its stored end",
                1,
                vec![with(attempt("nap", 1, 1, S::Running), |a| {
                    a.wake_time = Some(at(50))
                })],
                "nap",
                State::Sleeping {
                    attempt: 1,
                    started: at(1),
                    until: at(50),
                },
                0,
                1,
            ),
            (
                "an effect with a wake time is still a running attempt, not a sleep",
                1,
                vec![with(attempt("http", 1, 1, S::Running), |a| {
                    a.wake_time = Some(at(50))
                })],
                "http",
                State::Running {
                    attempt: 1,
                    started: at(1),
                },
                0,
                1,
            ),
        ];
        for (what, generation, attempts, step, state, failures, last) in cases {
            let (got, got_failures, got_last, _) = recovered(generation, &attempts, step);
            assert_eq!(got, state, "{what}");
            assert_eq!(got_failures, failures, "{what}: failures");
            assert_eq!(got_last, last, "{what}: last attempt");
        }
    }

    #[test]
    fn recovery_keeps_outputs_of_completed_and_failed_steps() {
        let completed = with(attempt("http", 1, 1, StepStatus::Completed), |a| {
            a.output = Some(json!({"status": 200}))
        });
        let (_, _, _, output) = recovered(1, &[completed], "http");
        assert_eq!(output, Some(json!({"status": 200})));
        let failed = with(attempt("http", 1, 1, StepStatus::Failed), |a| {
            a.output = Some(json!({"status": 503}))
        });
        let (_, _, _, output) = recovered(1, &[failed], "http");
        assert_eq!(
            output,
            Some(json!({"status": 503})),
            "a failed response stays readable"
        );
        // Steps are independent: one step's attempts do not touch another's state.
        let (state, _, _, _) =
            recovered(1, &[attempt("http", 1, 1, StepStatus::Completed)], "after");
        assert_eq!(state, State::Waiting);
    }

    #[test]
    fn an_interruption_is_recorded_as_such_and_cancelled_with_its_message() {
        let record = Record::interrupted(Some(at(1)), at(2));
        assert_eq!(
            record,
            Record {
                status: StepStatus::Cancelled,
                output: None,
                error: Some(INTERRUPTED.to_owned()),
                wake_time: None,
                start_time: Some(at(1)),
                end_time: Some(at(2)),
                interrupted: true,
            }
        );
        assert!(!Record::cancelled(INTERRUPTED.to_owned(), None, at(2)).interrupted);
    }

    #[test]
    fn the_migration_marks_attempts_interrupted_by_the_message_they_carry() {
        // Attempts interrupted before the column existed carry only the message: migration
        // 0011 marks them by it (the message as it was then, which is this one).
        for sql in [
            include_str!("../../migrations/sqlite/0011_interrupted_attempts.sql"),
            include_str!("../../migrations/postgres/0011_interrupted_attempts.sql"),
        ] {
            assert!(
                sql.contains(&format!("AND error = '{INTERRUPTED}'")),
                "{sql}"
            );
            assert!(sql.contains("WHERE status = 'cancelled'"), "{sql}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        for failures in 1..8 {
            let d = backoff(1000, 8000, 2.0, failures);
            let base = (1000u64 << (failures - 1)).min(8000);
            assert!(d >= base / 2 && d <= base, "{failures}: {d}");
        }
        assert!(backoff(1000, 60_000, 1.0, 5) <= 1000);
    }

    #[test]
    fn a_step_runs_when_its_dependencies_ended_well() {
        use Outcome as O;
        let running = State::Running {
            attempt: 1,
            started: at(1),
        };
        let cases: Vec<(&str, Vec<State>, Readiness)> = vec![
            ("no dependencies", vec![], Readiness::Ready),
            (
                "completed, skipped (an `if` that was false), failed but continued",
                vec![
                    State::Done(O::Completed),
                    State::Done(O::Skipped),
                    State::Done(O::Failed { continued: true }),
                ],
                Readiness::Ready,
            ),
            (
                "one still running",
                vec![State::Done(O::Completed), running.clone()],
                Readiness::Waiting,
            ),
            (
                "one waiting for its retry",
                vec![State::Scheduled {
                    attempt: 2,
                    at: at(9),
                }],
                Readiness::Waiting,
            ),
            (
                "a failure without continue_on_error blocks, even with others running",
                vec![running, State::Done(O::Failed { continued: false })],
                Readiness::Blocked { by: 1 },
            ),
            (
                "a cancelled dependency blocks; the last one is named",
                vec![
                    State::Done(O::Cancelled),
                    State::Done(O::Completed),
                    State::Done(O::Cancelled),
                ],
                Readiness::Blocked { by: 2 },
            ),
        ];
        for (what, deps, want) in cases {
            let needs: Vec<usize> = (0..deps.len()).collect();
            assert_eq!(readiness(&needs, |j| &deps[j]), want, "{what}");
        }
    }
}
