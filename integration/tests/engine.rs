//! The execution engine end to end: workflows applied through DefinitionService, run by the
//! real daemon, observed through ExecutionService (GetExecution, ListStepAttempts,
//! WatchExecution). Every semantics scenario runs on the embedded SQLite store and on
//! PostgreSQL (`<scenario>::sqlite` / `<scenario>::postgres`).
//!
//! http/request steps call a local [`TestServer`], which is why the daemons run with
//! `MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true` (except in the SSRF scenario).

use std::time::{Duration, Instant};

use mantle_integration::*;
use serde_json::json;
use tonic::Code;

use pb::{ExecutionStatus as Ex, StepStatus as St};

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A daemon with a `*` key of tenant `default`, on its own data dir (and database).
struct Env {
    daemon: Daemon,
    /// Clients with the `*` key of tenant `default`.
    m: Mantle,
    token: String,
    operator: String,
    opts: DaemonOptions,
    _db: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

const BASE_ENV: [(&str, &str); 3] = [
    ("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"),
    ("MANTLE_ENGINE_LEASE_TTL", "2s"),
    ("MANTLE_ENGINE_POLL_INTERVAL", "200ms"),
];

/// Starts a daemon on `backend` with [`BASE_ENV`] and `extra` (which wins). `None` when
/// PostgreSQL is unavailable and the test is skipped (see [`PgDatabase::create`]).
async fn setup(backend: Backend, test: &str, extra: &[(&str, &str)]) -> Option<Env> {
    let dir = tempfile::Builder::new()
        .prefix("mantle-engine-")
        .tempdir()
        .expect("tempdir");
    let (mut opts, db) = match backend {
        Backend::Sqlite => (DaemonOptions::sqlite(), None),
        Backend::Postgres => {
            let db = PgDatabase::create(&format!("{test}_on_postgres")).await?;
            (DaemonOptions::postgres(db.url.clone()), Some(db))
        }
    };
    opts.data_dir = Some(dir.path().join("data"));
    for (k, v) in BASE_ENV.iter().chain(extra) {
        opts = opts.env(*k, *v);
    }
    let daemon = Daemon::start_ok(opts.clone()).await;
    let operator = match &db {
        None => daemon.operator_token(),
        Some(db) => admin_key_create(&db.url, "it-operator").await,
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let m = Mantle::connect(&daemon, &token).await;
    Some(Env {
        daemon,
        m,
        token,
        operator,
        opts,
        _db: db,
        _dir: dir,
    })
}

impl Env {
    /// Starts a fresh daemon on the same data dir and database (the old one must be gone),
    /// and reconnects the clients with the same key.
    async fn restart(&mut self) {
        self.daemon = Daemon::start_ok(self.opts.clone()).await;
        self.m = Mantle::connect(&self.daemon, &self.token).await;
    }
}

/// Runs a scenario on SQLite and on PostgreSQL: `<name>::sqlite`, `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both_backends!(
    engine_parallel_branches,
    engine_dependencies_and_templates,
    engine_retries,
    engine_http_status_policy,
    engine_timeouts,
    engine_cancellation,
    engine_skip,
    engine_failure_propagation,
    engine_output_size_cap,
    engine_durable_sleep_across_restart,
    engine_interrupted_step_gets_new_attempt,
    engine_retry_execution,
    engine_ssrf_guard,
    engine_inputs,
    engine_isolation_and_scopes,
    engine_watch,
    engine_sigterm_lets_running_step_finish,
    engine_step_timeout_on_sleep,
    engine_pending_retry_survives_restart,
    engine_sigterm_during_sleep_hands_over,
    engine_pure_chain_keeps_checkpoint_order,
    engine_stall_longer_than_lease,
);

const WAIT: Duration = Duration::from_secs(20);

fn status(e: &pb::Execution) -> Ex {
    Ex::try_from(e.status).unwrap_or(Ex::Unspecified)
}

fn step_status(a: &pb::StepAttempt) -> St {
    St::try_from(a.status).unwrap_or(St::Unspecified)
}

#[track_caller]
fn ms(ts: &Option<prost_types::Timestamp>, what: &str) -> i64 {
    ts_ms(ts).unwrap_or_else(|| panic!("{what} is not set"))
}

#[track_caller]
fn assert_status(e: &pb::Execution, attempts: &[pb::StepAttempt], want: Ex) {
    assert_eq!(
        status(e),
        want,
        "execution status; execution: {e:?}\nattempts:\n{}",
        describe_attempts(attempts)
    );
}

#[track_caller]
fn assert_step(attempts: &[pb::StepAttempt], step: &str, want: St) -> pb::StepAttempt {
    let a = only_attempt(attempts, step);
    assert_eq!(
        step_status(a),
        want,
        "status of step {step:?}; attempts:\n{}",
        describe_attempts(attempts)
    );
    a.clone()
}

// ---------------------------------------------------------------------------------------------
// 1. Parallelism
// ---------------------------------------------------------------------------------------------

const PARALLEL: &str = "
name: parallel
steps:
  - name: a
    action: core/sleep
    params: {duration: 1s}
  - name: b
    action: core/sleep
    params: {duration: 1s}
  - name: join
    action: core/log
    depends_on: [a, b]
    params: {message: joined}
";

async fn engine_parallel_branches(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_parallel_branches", &[]).await else {
        return;
    };
    env.m.apply(PARALLEL).await;
    let (e, attempts) = env.m.run("parallel", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    let took = ms(&e.end_time, "end_time") - ms(&e.start_time, "start_time");
    assert!(
        (1000..1800).contains(&took),
        "two parallel 1 s sleeps then a join took {took} ms (want 1000..1800)\n{}",
        describe_attempts(&attempts)
    );
    let a = assert_step(&attempts, "a", St::Completed);
    let b = assert_step(&attempts, "b", St::Completed);
    let join = assert_step(&attempts, "join", St::Completed);
    let (a0, a1) = (ms(&a.start_time, "a.start"), ms(&a.end_time, "a.end"));
    let (b0, b1) = (ms(&b.start_time, "b.start"), ms(&b.end_time, "b.end"));
    assert!(
        a0 < b1 && b0 < a1,
        "the sleeps did not overlap: a {a0}..{a1}, b {b0}..{b1}"
    );
    assert!(
        a1 - a0 >= 990 && b1 - b0 >= 990,
        "a sleep ended early: a {a0}..{a1}, b {b0}..{b1}"
    );
    assert!(
        ms(&join.start_time, "join.start") >= a1.max(b1),
        "join started before both sleeps ended\n{}",
        describe_attempts(&attempts)
    );
    assert_eq!(json(&join.output_json), json!({"message": "joined"}));
}

// ---------------------------------------------------------------------------------------------
// 2. Dependencies and templates
// ---------------------------------------------------------------------------------------------

/// Written in reverse order: only the implicit dependencies order the steps.
const CHAIN: &str = r#"
name: chain
inputs:
  n: {type: integer, default: 20}
steps:
  - name: third
    action: core/set
    params:
      total: "{{ steps.second.output.doubled + 1 }}"
      text: "total is {{ steps.second.output.doubled + 1 }}"
      flag: "{{ steps.second.output.doubled > 10 }}"
  - name: second
    action: core/set
    params:
      doubled: "{{ steps.first.output.value * 2 }}"
      list: "{{ steps.first.output.list }}"
  - name: first
    action: core/set
    params:
      value: "{{ inputs.n }}"
      list: [1, "two"]
outputs:
  total: steps.third.output.total
  text: steps.third.output.text
"#;

async fn engine_dependencies_and_templates(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_dependencies_and_templates", &[]).await else {
        return;
    };
    env.m.apply(CHAIN).await;
    let (e, attempts) = env.m.run("chain", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    let first = assert_step(&attempts, "first", St::Completed);
    let second = assert_step(&attempts, "second", St::Completed);
    let third = assert_step(&attempts, "third", St::Completed);
    assert_eq!(
        json(&first.output_json),
        json!({"value": 20, "list": [1, "two"]})
    );
    assert_eq!(
        json(&second.output_json),
        json!({"doubled": 40, "list": [1, "two"]}),
        "a single template keeps its type"
    );
    assert_eq!(
        json(&third.output_json),
        json!({"total": 41, "text": "total is 41", "flag": true})
    );
    assert_eq!(
        json(&e.outputs_json),
        json!({"total": 41, "text": "total is 41"})
    );
    assert!(
        ms(&second.start_time, "second.start") >= ms(&first.end_time, "first.end")
            && ms(&third.start_time, "third.start") >= ms(&second.end_time, "second.end"),
        "a step started before its dependency ended\n{}",
        describe_attempts(&attempts)
    );

    // Another input flows through the same chain.
    let (e, attempts) = env.m.run("chain", r#"{"n": 5}"#, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(
        json(&e.outputs_json),
        json!({"total": 11, "text": "total is 11"})
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Retries
// ---------------------------------------------------------------------------------------------

fn http_workflow(name: &str, extra: &str) -> String {
    format!(
        r#"
name: {name}
inputs:
  url: {{type: string, required: true}}
steps:
  - name: call
    action: http/request
    params: {{url: "{{{{ inputs.url }}}}"}}
{extra}"#
    )
}

async fn engine_retries(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_retries", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    server.route(
        "/flaky",
        vec![
            Reply::status(500),
            Reply::status(500),
            Reply::json(200, json!({"ok": true})),
        ],
    );
    server.set("/down", Reply::status(500));
    env.m
        .apply(&http_workflow(
            "retry3",
            "    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 200ms}\n",
        ))
        .await;
    env.m
        .apply(&http_workflow(
            "retry2",
            "    retry: {max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms}\n",
        ))
        .await;

    let inputs = json!({"url": server.url("/flaky")}).to_string();
    let (e, attempts) = env.m.run("retry3", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    let calls = attempts_of(&attempts, "call");
    let summary: Vec<(i32, St)> = calls.iter().map(|a| (a.attempt, step_status(a))).collect();
    assert_eq!(
        summary,
        [(1, St::Failed), (2, St::Failed), (3, St::Completed)],
        "attempts:\n{}",
        describe_attempts(&attempts)
    );
    for a in &calls[..2] {
        assert!(
            a.error.contains("500"),
            "a failed attempt's error names the status: {:?}",
            a.error
        );
    }
    let output = json(&calls[2].output_json);
    assert_eq!(output["status"], 200, "output: {output}");
    assert_eq!(output["body"], json!({"ok": true}), "output: {output}");
    assert_eq!(server.count("/flaky"), 3, "requests the server saw");
    // A retry waiting for its backoff says when it runs, to the millisecond.
    let events = env
        .m
        .watch(&e.id, 0, Duration::from_secs(15))
        .await
        .expect("watch");
    let waiting: Vec<&str> = events
        .iter()
        .filter(|ev| {
            ev.kind == pb::execution_event::Kind::StepStatus as i32
                && ev.step_status == St::Pending as i32
        })
        .map(|ev| ev.message.as_str())
        .collect();
    assert_eq!(waiting.len(), 2, "{}", describe_events(&events));
    for message in waiting {
        let (wait, at) = message
            .strip_prefix("retry in ")
            .and_then(|rest| rest.split_once(" at "))
            .unwrap_or_else(|| panic!("pending event message {message:?}"));
        assert!(wait.ends_with("ms") && wait.len() <= 5, "{message:?}");
        assert_eq!(at.len(), "2026-12-03T21:40:05.123Z".len(), "{message:?}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "{message:?}"
        );
    }
    // Backoff: 100 ms then 200 ms, jittered to 50..100 %.
    for pair in calls.windows(2) {
        let gap = ms(&pair[1].start_time, "retry start") - ms(&pair[0].end_time, "failed end");
        assert!(
            gap >= 45,
            "attempt {} started {gap} ms after attempt {} failed (want >= ~50 ms)\n{}",
            pair[1].attempt,
            pair[0].attempt,
            describe_attempts(&attempts)
        );
        assert!(
            gap < 1500,
            "backoff of {gap} ms is far over max_backoff 200ms"
        );
    }
    let hits = server.hits("/flaky");
    for pair in hits.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(45),
            "server saw retries {gap:?} apart"
        );
    }

    // Exhausted retries.
    let inputs = json!({"url": server.url("/down")}).to_string();
    let (e, attempts) = env.m.run("retry2", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    assert!(
        e.error.contains("call") && e.error.contains("500"),
        "the execution's error names the step and the HTTP status: {:?}",
        e.error
    );
    let summary: Vec<(i32, St)> = attempts_of(&attempts, "call")
        .iter()
        .map(|a| (a.attempt, step_status(a)))
        .collect();
    assert_eq!(
        summary,
        [(1, St::Failed), (2, St::Failed)],
        "{}",
        describe_attempts(&attempts)
    );
    assert_eq!(server.count("/down"), 2, "requests the server saw");
}

/// Which HTTP failures are retried, `ok_status`, `retry.on`, and a failed response's output
/// read downstream with `continue_on_error`.
async fn engine_http_status_policy(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_http_status_policy", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    let missing = || Reply::json(404, json!({"error": "no such user"}));
    server.set("/missing", missing());
    server.route(
        "/limited",
        vec![Reply::status(429), Reply::json(200, json!({"n": 1}))],
    );
    server.set("/unavailable", Reply::status(503));
    server.route(
        "/missing-then-found",
        vec![missing(), Reply::json(200, json!({"n": 2}))],
    );
    server.set("/teapot", Reply::status(418));
    let retry = "    retry: {max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms}\n";
    let branch = r#"    continue_on_error: true
  - name: gone
    action: core/log
    if: steps.call.output.status == 404
    params: {message: "status {{ steps.call.output.status }}: {{ steps.call.output.body.error }}"}
"#;
    env.m
        .apply(&http_workflow(
            "default-policy",
            &format!("{retry}{branch}"),
        ))
        .await;
    env.m
        .apply(
            &http_workflow(
                "accepts-404",
                &format!("      ok_status: [200-299, 404]\n{retry}"),
            )
            .replace(
                "params: {url: \"{{ inputs.url }}\"}",
                "params:\n      url: \"{{ inputs.url }}\"",
            ),
        )
        .await;
    env.m
        .apply(&http_workflow(
            "retries-404",
            "    retry: {max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms, on: [404, 410-419]}\n",
        ))
        .await;
    let run = |workflow: &'static str, path: &str| {
        let inputs = json!({"url": server.url(path)}).to_string();
        (workflow, inputs)
    };
    let calls = |attempts: &[pb::StepAttempt]| -> Vec<(i32, St)> {
        attempts_of(attempts, "call")
            .iter()
            .map(|a| (a.attempt, step_status(a)))
            .collect()
    };

    // A 404 fails at once, without retry; its response is the step's output.
    let (workflow, inputs) = run("default-policy", "/missing");
    let (e, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(
        calls(&attempts),
        [(1, St::Failed)],
        "{}",
        describe_attempts(&attempts)
    );
    let call = assert_step(&attempts, "call", St::Failed);
    assert!(call.error.contains("404"), "{:?}", call.error);
    let out = json(&call.output_json);
    assert_eq!(out["status"], 404, "{out}");
    assert_eq!(out["body"], json!({"error": "no such user"}), "{out}");
    let gone = assert_step(&attempts, "gone", St::Completed);
    assert_eq!(
        json(&gone.output_json)["message"],
        "status 404: no such user",
        "the branch reads the failed step's output"
    );
    assert_eq!(server.count("/missing"), 1, "a 404 is not retried");

    // 429 and 503 are retried; the last 503 is readable downstream too.
    let (workflow, inputs) = run("default-policy", "/limited");
    let (e, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(calls(&attempts), [(1, St::Failed), (2, St::Completed)]);
    assert_step(&attempts, "gone", St::Skipped);
    let (workflow, inputs) = run("default-policy", "/unavailable");
    let (_, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_eq!(
        calls(&attempts),
        [(1, St::Failed), (2, St::Failed), (3, St::Failed)]
    );
    let last = attempts_of(&attempts, "call")[2].clone();
    assert_eq!(
        json(&last.output_json)["status"],
        503,
        "the last response is the output"
    );
    assert_step(&attempts, "gone", St::Skipped);
    assert_eq!(server.count("/unavailable"), 3);

    // Another 4xx fails at once too.
    let (workflow, inputs) = run("default-policy", "/teapot");
    let (_, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_eq!(calls(&attempts), [(1, St::Failed)]);
    assert_eq!(server.count("/teapot"), 1);

    // ok_status: a 404 is a success.
    let (workflow, inputs) = run("accepts-404", "/missing");
    let (e, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    let call = assert_step(&attempts, "call", St::Completed);
    assert_eq!(json(&call.output_json)["status"], 404);
    // ... and a 200 outside the list is a failure that says so.
    server.set("/fine", Reply::json(201, json!({})));
    let (workflow, inputs) = run("accepts-404", "/fine");
    let (_, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_step(&attempts, "call", St::Completed);
    server.set("/redirectless", Reply::status(304));
    let (workflow, inputs) = run("accepts-404", "/redirectless");
    let (e, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    let call = assert_step(&attempts, "call", St::Failed);
    assert!(
        call.error.contains("304") && call.error.contains("not in ok_status"),
        "{:?}",
        call.error
    );
    assert_eq!(calls(&attempts), [(1, St::Failed)], "a 304 is not retried");

    // retry.on widens the retried statuses.
    let (workflow, inputs) = run("retries-404", "/missing-then-found");
    let (e, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(calls(&attempts), [(1, St::Failed), (2, St::Completed)]);
    let (workflow, inputs) = run("retries-404", "/teapot");
    let (_, attempts) = env.m.run(workflow, &inputs, WAIT).await;
    assert_eq!(calls(&attempts).len(), 3, "418 is in 410-419");
}

// ---------------------------------------------------------------------------------------------
// 4. Timeouts
// ---------------------------------------------------------------------------------------------

const WORKFLOW_TIMEOUT: &str = "
name: wf-timeout
timeout: 1s
steps:
  - name: nap
    action: core/sleep
    params: {duration: 10s}
";

async fn engine_timeouts(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_timeouts", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    server.set(
        "/slow",
        Reply::json(200, json!({})).delay(Duration::from_secs(5)),
    );
    env.m
        .apply(&http_workflow("step-timeout", "    timeout: 300ms\n"))
        .await;
    env.m.apply(WORKFLOW_TIMEOUT).await;

    // A step timeout.
    let t0 = Instant::now();
    let inputs = json!({"url": server.url("/slow")}).to_string();
    let (e, attempts) = env.m.run("step-timeout", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    let call = assert_step(&attempts, "call", St::Failed);
    assert!(
        call.error.contains("timed out"),
        "attempt error: {:?}",
        call.error
    );
    let took = ms(&call.end_time, "end") - ms(&call.start_time, "start");
    assert!(
        (250..1500).contains(&took),
        "a 300ms step timeout ended the attempt after {took} ms"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t0.elapsed()
    );

    // A workflow timeout.
    let started = env.m.start_ok("wf-timeout", "").await;
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::TimedOut);
    let took = ms(&e.end_time, "end_time") - ms(&e.create_time, "create_time");
    assert!(
        (950..1500).contains(&took),
        "a 1s workflow timeout ended the execution after {took} ms"
    );
    assert_eq!(
        e.error, "the execution timed out after 1s (the workflow's timeout)",
        "a timed-out execution names the limit"
    );
    let nap = assert_step(&attempts, "nap", St::Cancelled);
    assert!(!nap.error.is_empty(), "the cancelled sleep says why");

    // A workflow timeout aborts an HTTP request in flight.
    server.set(
        "/hold",
        Reply::json(200, json!({})).delay(Duration::from_secs(30)),
    );
    env.m
        .apply(
            r#"
name: wf-timeout-http
timeout: 1s
inputs:
  url: {type: string, required: true}
steps:
  - name: call
    action: http/request
    params: {url: "{{ inputs.url }}"}
"#,
        )
        .await;
    let inputs = json!({"url": server.url("/hold")}).to_string();
    let (e, attempts) = env.m.run("wf-timeout-http", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::TimedOut);
    let took = ms(&e.end_time, "end_time") - ms(&e.create_time, "create_time");
    assert!(
        (950..1500).contains(&took),
        "a 1s workflow timeout ended the execution after {took} ms"
    );
    assert_step(&attempts, "call", St::Cancelled);
    let hit = &server.hits("/hold")[0];
    assert!(
        hit.closed_by_client.is_some(),
        "the request in flight was not aborted when the execution timed out"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Cancellation
// ---------------------------------------------------------------------------------------------

const LONG_SLEEP: &str = "
name: long-sleep
steps:
  - name: nap
    action: core/sleep
    params: {duration: 30s}
  - name: after
    action: core/log
    depends_on: [nap]
    params: {message: never}
";

async fn engine_cancellation(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_cancellation", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    server.set(
        "/hold",
        Reply::json(200, json!({})).delay(Duration::from_secs(30)),
    );
    env.m.apply(&http_workflow("hold", "")).await;
    env.m.apply(LONG_SLEEP).await;

    // An HTTP request in flight is aborted.
    let inputs = json!({"url": server.url("/hold")}).to_string();
    let started = env.m.start_ok("hold", &inputs).await;
    assert!(
        server
            .wait_for_hits("/hold", 1, Duration::from_secs(10))
            .await,
        "the request never reached the test server"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let t0_ms = now_ms();
    env.m.cancel(&started.id).await;
    let e = env
        .m
        .wait_until(&started.id, Duration::from_secs(5), "cancelled", |e, _| {
            is_terminal_status(e.status)
        })
        .await;
    let seen = t0.elapsed();
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Cancelled);
    assert!(
        seen < Duration::from_secs(1),
        "cancelled after {seen:?} (want < 1 s)"
    );
    assert!(
        ms(&e.end_time, "end_time") - t0_ms < 1000,
        "end_time is {} ms after the cancel call",
        ms(&e.end_time, "end_time") - t0_ms
    );
    assert_step(&attempts, "call", St::Cancelled);
    let closed = async {
        loop {
            if let Some(at) = server.hits("/hold")[0].closed_by_client {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), closed).await {
        Ok(at) => assert!(
            at.saturating_duration_since(t0) < Duration::from_secs(1),
            "the daemon closed the connection {:?} after the cancel call",
            at.saturating_duration_since(t0)
        ),
        Err(_) => panic!("the daemon did not close the request in flight after CancelExecution"),
    }
    // Cancelling a finished execution changes nothing.
    let again = env.m.cancel(&started.id).await;
    assert_eq!(status(&again), Ex::Cancelled);
    assert_eq!(again.end_time, e.end_time);

    // A durable sleep.
    let started = env.m.start_ok("long-sleep", "").await;
    env.m
        .wait_until(
            &started.id,
            Duration::from_secs(10),
            "sleep running",
            |_, a| {
                a.iter()
                    .any(|a| a.step_name == "nap" && step_status(a) == St::Running)
            },
        )
        .await;
    let t0 = Instant::now();
    env.m.cancel(&started.id).await;
    let e = env
        .m
        .wait_until(&started.id, Duration::from_secs(5), "cancelled", |e, _| {
            is_terminal_status(e.status)
        })
        .await;
    let seen = t0.elapsed();
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Cancelled);
    assert!(
        seen < Duration::from_secs(1),
        "cancelled after {seen:?} (want < 1 s)"
    );
    assert_step(&attempts, "nap", St::Cancelled);
    let after = attempts_of(&attempts, "after");
    assert!(
        after.iter().all(|a| step_status(a) == St::Cancelled),
        "a step after the cancelled sleep must not run\n{}",
        describe_attempts(&attempts)
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Skip
// ---------------------------------------------------------------------------------------------

const SKIP: &str = r#"
name: skip
inputs:
  flag: {type: boolean, default: false}
steps:
  - name: s
    action: core/set
    if: inputs.flag
    params: {v: 1}
  - name: after
    action: core/set
    params:
      n: "{{ size(steps.s.output) }}"
"#;

async fn engine_skip(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_skip", &[]).await else {
        return;
    };
    env.m.apply(SKIP).await;
    let (e, attempts) = env.m.run("skip", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_step(&attempts, "s", St::Skipped);
    let after = assert_step(&attempts, "after", St::Completed);
    assert_eq!(
        json(&after.output_json),
        json!({"n": 0}),
        "a skipped step's output is an empty map"
    );

    let (e, attempts) = env.m.run("skip", r#"{"flag": true}"#, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_step(&attempts, "s", St::Completed);
    let after = assert_step(&attempts, "after", St::Completed);
    assert_eq!(json(&after.output_json), json!({"n": 1}));
}

// ---------------------------------------------------------------------------------------------
// 7. Failure propagation
// ---------------------------------------------------------------------------------------------

const FAIL_PROPAGATION: &str = "
name: fail-prop
steps:
  - name: a
    action: core/fail
    params: {message: boom}
  - name: a_child
    action: core/log
    depends_on: [a]
    params: {message: never}
  - name: a_grandchild
    action: core/log
    depends_on: [a_child]
    params: {message: never}
  - name: b
    action: core/sleep
    params: {duration: 300ms}
  - name: b_child
    action: core/log
    depends_on: [b]
    params: {message: still runs}
";

const FAIL_CONTINUE: &str = r#"
name: fail-continue
steps:
  - name: a
    action: core/fail
    continue_on_error: true
    params: {message: boom}
  - name: after
    action: core/set
    params:
      err: "{{ steps.a.error }}"
      status: "{{ steps.a.status }}"
"#;

async fn engine_failure_propagation(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_failure_propagation", &[]).await else {
        return;
    };
    env.m.apply(FAIL_PROPAGATION).await;
    env.m.apply(FAIL_CONTINUE).await;

    let (e, attempts) = env.m.run("fail-prop", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    assert!(
        e.error.contains("\"a\"") && e.error.contains("boom"),
        "execution error names the step and its message: {:?}",
        e.error
    );
    let a = assert_step(&attempts, "a", St::Failed);
    assert!(a.error.contains("boom"), "a's error: {:?}", a.error);
    let child = assert_step(&attempts, "a_child", St::Cancelled);
    assert!(
        child.error.contains("\"a\""),
        "a_child's error names the upstream step: {:?}",
        child.error
    );
    let grandchild = assert_step(&attempts, "a_grandchild", St::Cancelled);
    assert!(
        grandchild.error.contains("a_child"),
        "a_grandchild's error names its upstream step: {:?}",
        grandchild.error
    );
    assert_step(&attempts, "b", St::Completed);
    assert_step(&attempts, "b_child", St::Completed);

    let (e, attempts) = env.m.run("fail-continue", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_step(&attempts, "a", St::Failed);
    let after = assert_step(&attempts, "after", St::Completed);
    let out = json(&after.output_json);
    assert!(
        out["err"].as_str().is_some_and(|s| s.contains("boom")),
        "the dependent reads steps.a.error: {out}"
    );
    assert_eq!(out["status"], "failed", "{out}");
}

// ---------------------------------------------------------------------------------------------
// 8. Output size cap
// ---------------------------------------------------------------------------------------------

async fn engine_output_size_cap(backend: Backend) {
    let Some(mut env) = setup(
        backend,
        "engine_output_size_cap",
        &[("MANTLE_MAX_STEP_OUTPUT_BYTES", "1000")],
    )
    .await
    else {
        return;
    };
    let big = "x".repeat(5000);
    env.m
        .apply(&format!(
            "
name: big
steps:
  - name: small
    action: core/set
    params: {{v: ok}}
  - name: huge
    action: core/set
    params:
      v: {big}
"
        ))
        .await;
    let (e, attempts) = env.m.run("big", "", WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    assert_step(&attempts, "small", St::Completed);
    let huge = assert_step(&attempts, "huge", St::Failed);
    assert!(
        huge.error.contains("limit") && huge.error.contains("1000"),
        "the error names the limit: {:?}",
        huge.error
    );
    assert!(huge.output_json.is_empty() || huge.output_json.len() < 1000);
    assert!(e.error.contains("huge"), "execution error: {:?}", e.error);
}

// ---------------------------------------------------------------------------------------------
// 9. Durable sleep across a daemon crash
// ---------------------------------------------------------------------------------------------

const DURABLE_SLEEP: &str = "
name: durable-sleep
steps:
  - name: nap
    action: core/sleep
    params: {duration: 4s}
  - name: after
    action: core/log
    depends_on: [nap]
    params: {message: woke}
";

async fn engine_durable_sleep_across_restart(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_durable_sleep_across_restart", &[]).await else {
        return;
    };
    env.m.apply(DURABLE_SLEEP).await;
    let started = env.m.start_ok("durable-sleep", "").await;
    env.m
        .wait_until(
            &started.id,
            Duration::from_secs(10),
            "sleep running",
            |_, a| {
                a.iter()
                    .any(|a| a.step_name == "nap" && step_status(a) == St::Running)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.daemon.sigkill().await.expect("kill -9");
    env.restart().await;

    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    let nap = assert_step(&attempts, "nap", St::Completed);
    assert_eq!(nap.attempt, 1, "the sleep kept its attempt");
    let slept = ms(&nap.end_time, "nap.end") - ms(&nap.start_time, "nap.start");
    let took = ms(&e.end_time, "end_time") - ms(&e.start_time, "start_time");
    assert!(
        (3900..5500).contains(&slept) && took < 5500,
        "a 4 s sleep interrupted after ~1 s ended {slept} ms after it started (execution took \
         {took} ms); want about 4 s, not 4 s after the restart\n{}",
        describe_attempts(&attempts)
    );
    assert_step(&attempts, "after", St::Completed);
}

/// A daemon dies while an HTTP request runs: another daemon records the attempt as cancelled
/// (interrupted) and runs the step again as a new attempt.
async fn engine_interrupted_step_gets_new_attempt(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_interrupted_step_gets_new_attempt", &[]).await
    else {
        return;
    };
    let server = TestServer::start().await;
    server.route(
        "/work",
        vec![
            Reply::json(200, json!({"n": 1})).delay(Duration::from_secs(30)),
            Reply::json(200, json!({"n": 2})),
        ],
    );
    env.m.apply(&http_workflow("work", "")).await;
    let inputs = json!({"url": server.url("/work")}).to_string();
    let started = env.m.start_ok("work", &inputs).await;
    assert!(
        server
            .wait_for_hits("/work", 1, Duration::from_secs(10))
            .await,
        "the request never reached the test server"
    );
    env.daemon.sigkill().await.expect("kill -9");
    env.restart().await;
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    let calls = attempts_of(&attempts, "call");
    let summary: Vec<(i32, St)> = calls.iter().map(|a| (a.attempt, step_status(a))).collect();
    assert_eq!(
        summary,
        [(1, St::Cancelled), (2, St::Completed)],
        "{}",
        describe_attempts(&attempts)
    );
    assert!(
        calls[0].error.contains("interrupted"),
        "the interrupted attempt says so: {:?}",
        calls[0].error
    );
    assert_eq!(json(&calls[1].output_json)["body"], json!({"n": 2}));
    assert_eq!(server.count("/work"), 2);
}

// ---------------------------------------------------------------------------------------------
// 10. RetryExecution
// ---------------------------------------------------------------------------------------------

const TWO_CALLS: &str = r#"
name: two-calls
inputs:
  base: {type: string, required: true}
steps:
  - name: one
    action: http/request
    params: {url: "{{ inputs.base }}/one"}
  - name: two
    action: http/request
    depends_on: [one]
    params: {url: "{{ inputs.base }}/two"}
outputs:
  first: steps.one.output.body.n
  second: steps.two.output.body.n
"#;

async fn engine_retry_execution(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_retry_execution", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    server.set("/one", Reply::json(200, json!({"n": 1})));
    server.set("/two", Reply::status(500));
    env.m.apply(TWO_CALLS).await;
    let inputs = json!({"base": server.url("")}).to_string();
    let (e, attempts) = env.m.run("two-calls", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Failed);
    assert_step(&attempts, "one", St::Completed);
    assert_step(&attempts, "two", St::Failed);

    server.set("/two", Reply::json(200, json!({"n": 2})));
    let retried = env.m.retry(&e.id).await;
    assert!(
        !is_terminal_status(retried.status) || status(&retried) == Ex::Completed,
        "RetryExecution answered a finished execution: {retried:?}"
    );
    let e = env
        .m
        .wait_until(&e.id, WAIT, "retried execution finished", |e, a| {
            is_terminal_status(e.status) && attempts_of(a, "two").len() >= 2
        })
        .await;
    let attempts = env.m.attempts(&e.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(json(&e.outputs_json), json!({"first": 1, "second": 2}));
    assert_eq!(
        server.count("/one"),
        1,
        "the checkpointed step one ran again"
    );
    assert_eq!(server.count("/two"), 2);
    assert_step(&attempts, "one", St::Completed);
    let two: Vec<(i32, St)> = attempts_of(&attempts, "two")
        .iter()
        .map(|a| (a.attempt, step_status(a)))
        .collect();
    assert_eq!(
        two,
        [(1, St::Failed), (2, St::Completed)],
        "{}",
        describe_attempts(&attempts)
    );

    // A completed execution cannot be retried.
    let again = env
        .m
        .execs
        .retry_execution(pb::RetryExecutionRequest { id: e.id.clone() })
        .await;
    assert_code(
        again,
        Code::FailedPrecondition,
        "RetryExecution of a completed execution",
    );
}

// ---------------------------------------------------------------------------------------------
// 11. SSRF guard and redirects
// ---------------------------------------------------------------------------------------------

async fn engine_ssrf_guard(backend: Backend) {
    let server = TestServer::start().await;
    server.set("/x", Reply::json(200, json!({})));
    server.set("/start", Reply::redirect("/final"));
    server.set("/final", Reply::json(200, json!({"arrived": true})));
    server.set("/to-file", Reply::redirect("file:///etc/passwd"));
    server.set("/to-ftp", Reply::redirect("ftp://example.com/x"));

    {
        let Some(mut env) = setup(
            backend,
            "engine_ssrf_guard",
            &[("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "false")],
        )
        .await
        else {
            return;
        };
        // A refusal is never retried, whatever the retry policy.
        env.m
            .apply(&http_workflow(
                "fetch",
                "    retry: {max_attempts: 3, initial_backoff: 50ms, on: [400-599]}\n",
            ))
            .await;
        for url in [
            server.url("/x"),
            format!("http://localhost:{}/x", server.addr.port()),
        ] {
            let inputs = json!({ "url": url }).to_string();
            let (e, attempts) = env.m.run("fetch", &inputs, WAIT).await;
            assert_status(&e, &attempts, Ex::Failed);
            assert_eq!(
                attempts_of(&attempts, "call").len(),
                1,
                "{url}: a network-policy refusal is not retried\n{}",
                describe_attempts(&attempts)
            );
            let call = assert_step(&attempts, "call", St::Failed);
            assert!(
                call.error.contains("loopback")
                    && call.error.contains("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS"),
                "{url}: the error names the loopback address and the setting: {:?}",
                call.error
            );
        }
        assert_eq!(
            server.count("/x"),
            0,
            "a refused request reached the server"
        );
    }

    let Some(mut env) = setup(backend, "engine_ssrf_guard_redirects", &[]).await else {
        return;
    };
    env.m.apply(&http_workflow("fetch", "")).await;
    let inputs = json!({"url": server.url("/start")}).to_string();
    let (e, attempts) = env.m.run("fetch", &inputs, WAIT).await;
    assert_status(&e, &attempts, Ex::Completed);
    let call = assert_step(&attempts, "call", St::Completed);
    let out = json(&call.output_json);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"], json!({"arrived": true}), "{out}");
    assert_eq!(server.count("/final"), 1);

    for (path, scheme) in [("/to-ftp", "ftp"), ("/to-file", "file")] {
        let inputs = json!({"url": server.url(path)}).to_string();
        let (e, attempts) = env.m.run("fetch", &inputs, WAIT).await;
        assert_status(&e, &attempts, Ex::Failed);
        let call = assert_step(&attempts, "call", St::Failed);
        assert!(
            call.error.contains(scheme),
            "a redirect to {scheme}: is refused with a message naming it: {:?}",
            call.error
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Inputs
// ---------------------------------------------------------------------------------------------

const INPUTS: &str = r#"
name: inputs
inputs:
  city: {type: string, required: true}
  count: {type: integer, default: 3}
  unit: {type: string, default: metric, enum: [metric, imperial]}
steps:
  - name: echo
    action: core/set
    params:
      city: "{{ inputs.city }}"
      count: "{{ inputs.count }}"
      unit: "{{ inputs.unit }}"
"#;

async fn engine_inputs(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_inputs", &[]).await else {
        return;
    };
    env.m.apply(INPUTS).await;
    for (inputs, field) in [
        (r#"{"city": "Berlin", "bogus": 1}"#, "inputs.bogus"),
        (r#"{"city": 5}"#, "inputs.city"),
        (r#"{"city": "Berlin", "count": "three"}"#, "inputs.count"),
        (r#"{"city": "Berlin", "count": 1.5}"#, "inputs.count"),
        ("{}", "inputs.city"),
        ("", "inputs.city"),
        (r#"{"city": "Berlin", "unit": "kelvin"}"#, "inputs.unit"),
    ] {
        match env.m.start("inputs", inputs).await {
            Err(s) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{inputs}: {}", s.message());
                assert!(
                    s.message().contains(field),
                    "{inputs}: the message names {field}: {:?}",
                    s.message()
                );
            }
            Ok(e) => panic!("{inputs}: expected INVALID_ARGUMENT naming {field}, got {e:?}"),
        }
    }
    match env.m.start("inputs", "[1, 2]").await {
        Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message()),
        Ok(e) => panic!("inputs_json that is not an object was accepted: {e:?}"),
    }
    assert_code(
        env.m.start("no-such-workflow", "").await,
        Code::NotFound,
        "StartExecution of an unknown workflow",
    );
    // Nothing was stored by the refused starts.
    let listed = expect_ok(
        env.m
            .execs
            .list_executions(pb::ListExecutionsRequest::default())
            .await,
        "ListExecutions",
    );
    assert!(
        listed.executions.is_empty(),
        "refused starts stored executions: {listed:?}"
    );

    let started = env.m.start_ok("inputs", r#"{"city": "Berlin"}"#).await;
    assert_eq!(
        json(&started.inputs_json),
        json!({"city": "Berlin", "count": 3, "unit": "metric"}),
        "defaults are applied"
    );
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(
        json(&e.inputs_json),
        json!({"city": "Berlin", "count": 3, "unit": "metric"})
    );
    let echo = assert_step(&attempts, "echo", St::Completed);
    assert_eq!(
        json(&echo.output_json),
        json!({"city": "Berlin", "count": 3, "unit": "metric"})
    );
    assert_eq!(e.workflow, "inputs");
    assert_eq!(e.version, 1);
    assert_eq!(
        json(&e.trigger_json)["type"],
        "api",
        "trigger_json: {}",
        e.trigger_json
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Tenant isolation and scopes
// ---------------------------------------------------------------------------------------------

async fn engine_isolation_and_scopes(backend: Backend) {
    let Some(env) = setup(backend, "engine_isolation_and_scopes", &[]).await else {
        return;
    };
    let tenant_a = random_name("ta");
    let tenant_b = random_name("tb");
    create_tenant(&env.daemon, &env.operator, &tenant_a).await;
    create_tenant(&env.daemon, &env.operator, &tenant_b).await;
    let key_a = create_api_key(&env.daemon, &env.operator, &tenant_a, &["*"]).await;
    let key_b = create_api_key(&env.daemon, &env.operator, &tenant_b, &["*"]).await;
    let key_a_read = create_api_key(
        &env.daemon,
        &env.operator,
        &tenant_a,
        &["executions:read", "definitions:read"],
    )
    .await;
    let mut a = Mantle::connect(&env.daemon, &key_a).await;
    let mut b = Mantle::connect(&env.daemon, &key_b).await;
    let mut a_read = Mantle::connect(&env.daemon, &key_a_read).await;

    a.apply(LONG_SLEEP).await;
    b.apply(LONG_SLEEP).await;
    let started = a.start_ok("long-sleep", "").await;
    let id = started.id.clone();
    let b_own = b.start_ok("long-sleep", "").await;
    // Running first, so the check below shows B's cancel attempt changed nothing.
    a.wait_until(&id, Duration::from_secs(10), "running", |e, _| {
        e.status == pb::ExecutionStatus::Running as i32
    })
    .await;

    assert_code(
        b.execs
            .get_execution(pb::GetExecutionRequest { id: id.clone() })
            .await,
        Code::NotFound,
        "GetExecution of another tenant's execution",
    );
    assert_code(
        b.execs
            .list_step_attempts(pb::ListStepAttemptsRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "ListStepAttempts of another tenant's execution",
    );
    assert_code(
        b.execs
            .watch_execution(pb::WatchExecutionRequest {
                id: id.clone(),
                after_seq: 0,
            })
            .await
            .map(|_| ()),
        Code::NotFound,
        "WatchExecution of another tenant's execution",
    );
    assert_code(
        b.execs
            .cancel_execution(pb::CancelExecutionRequest { id: id.clone() })
            .await,
        Code::NotFound,
        "CancelExecution of another tenant's execution",
    );
    assert_code(
        b.execs
            .retry_execution(pb::RetryExecutionRequest { id: id.clone() })
            .await,
        Code::NotFound,
        "RetryExecution of another tenant's execution",
    );
    let listed = expect_ok(
        b.execs
            .list_executions(pb::ListExecutionsRequest::default())
            .await,
        "ListExecutions as B",
    );
    let ids: Vec<&str> = listed.executions.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [b_own.id.as_str()], "B lists only its own execution");
    let listed = expect_ok(
        a_read
            .execs
            .list_executions(pb::ListExecutionsRequest::default())
            .await,
        "ListExecutions as A (read-only key)",
    );
    let ids: Vec<&str> = listed.executions.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [id.as_str()], "A lists only its own execution");
    // B's cancel attempt changed nothing.
    assert_eq!(status(&a.get(&id).await), Ex::Running);

    // A read-only key reads but cannot start or cancel.
    assert_eq!(a_read.get(&id).await.id, id);
    assert_code(
        a_read.start("long-sleep", "").await,
        Code::PermissionDenied,
        "StartExecution with executions:read only",
    );
    assert_code(
        a_read
            .execs
            .cancel_execution(pb::CancelExecutionRequest { id: id.clone() })
            .await,
        Code::PermissionDenied,
        "CancelExecution with executions:read only",
    );
    assert_code(
        a_read
            .execs
            .retry_execution(pb::RetryExecutionRequest { id: id.clone() })
            .await,
        Code::PermissionDenied,
        "RetryExecution with executions:read only",
    );
    assert_eq!(status(&a.get(&id).await), Ex::Running);

    a.cancel(&id).await;
    b.cancel(&b_own.id).await;
    let e = a.wait_terminal(&id, WAIT).await;
    assert_eq!(status(&e), Ex::Cancelled);
}

// ---------------------------------------------------------------------------------------------
// 14. WatchExecution
// ---------------------------------------------------------------------------------------------

const WATCHED: &str = "
name: watched
steps:
  - name: hello
    action: core/log
    params: {message: hello}
  - name: nap
    action: core/sleep
    depends_on: [hello]
    params: {duration: 300ms}
  - name: bye
    action: core/log
    depends_on: [nap]
    params: {message: bye}
";

/// The event log of execution `id` has no gaps or repeats in its sequence numbers.
fn assert_contiguous(events: &[pb::ExecutionEvent], id: &str) {
    assert!(
        events.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "event sequence numbers of {id} have gaps or repeats"
    );
}

fn describe_events(events: &[pb::ExecutionEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {:?} exec={:?} step={} #{} {:?} {:?}",
                e.seq,
                e.kind(),
                e.execution_status(),
                e.step_name,
                e.attempt,
                e.step_status(),
                e.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn engine_watch(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_watch", &[]).await else {
        return;
    };
    env.m.apply(WATCHED).await;
    let started = env.m.start_ok("watched", "").await;
    // Watch from the beginning while it runs.
    let events = env
        .m
        .watch(&started.id, 0, Duration::from_secs(15))
        .await
        .expect("watch from the beginning");
    let e = env.m.get(&started.id).await;
    assert_eq!(
        status(&e),
        Ex::Completed,
        "the watch ended before the execution finished"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<i64> = (1..=events.len() as i64).collect();
    assert_eq!(seqs, want, "seqs are 1..n\n{}", describe_events(&events));
    let last = events.last().expect("events");
    assert_eq!(
        last.kind(),
        pb::execution_event::Kind::ExecutionStatus,
        "{}",
        describe_events(&events)
    );
    assert_eq!(
        last.execution_status(),
        Ex::Completed,
        "{}",
        describe_events(&events)
    );
    let logs: Vec<&str> = events
        .iter()
        .filter(|e| e.kind() == pb::execution_event::Kind::Log)
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(logs, ["hello", "bye"], "{}", describe_events(&events));
    for step in ["hello", "nap", "bye"] {
        assert!(
            events.iter().any(|e| e.step_name == step
                && e.kind() == pb::execution_event::Kind::StepStatus
                && e.step_status() == St::Completed),
            "no completed event of {step}\n{}",
            describe_events(&events)
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e.kind() == pb::execution_event::Kind::ExecutionStatus
                && e.execution_status() == Ex::Running),
        "no running event\n{}",
        describe_events(&events)
    );

    // Resume after a cursor: exactly the later events.
    let k = events.len() as i64 / 2;
    let rest = env
        .m
        .watch(&started.id, k, Duration::from_secs(10))
        .await
        .expect("watch after a cursor");
    assert_eq!(rest, events[k as usize..].to_vec(), "events after seq {k}");

    // A finished execution: all its events, then the end.
    let again = env
        .m
        .watch(&started.id, 0, Duration::from_secs(10))
        .await
        .expect("watch a finished execution");
    assert_eq!(again, events);
    let none = env
        .m
        .watch(&started.id, events.len() as i64, Duration::from_secs(10))
        .await
        .expect("watch after the last event of a finished execution");
    assert!(none.is_empty(), "{}", describe_events(&none));
}

// ---------------------------------------------------------------------------------------------
// 15. SIGTERM while a step runs
// ---------------------------------------------------------------------------------------------

async fn engine_sigterm_lets_running_step_finish(backend: Backend) {
    let Some(mut env) = setup(
        backend,
        "engine_sigterm_lets_running_step_finish",
        &[("MANTLE_SHUTDOWN_GRACE_PERIOD", "10s")],
    )
    .await
    else {
        return;
    };
    let server = TestServer::start().await;
    server.set(
        "/second",
        Reply::json(200, json!({"done": true})).delay(Duration::from_secs(1)),
    );
    env.m.apply(&http_workflow("slow-call", "")).await;
    let inputs = json!({"url": server.url("/second")}).to_string();
    let started = env.m.start_ok("slow-call", &inputs).await;
    assert!(
        server
            .wait_for_hits("/second", 1, Duration::from_secs(10))
            .await,
        "the request never reached the test server"
    );
    let exit = env
        .daemon
        .sigterm(Duration::from_secs(9))
        .await
        .expect("SIGTERM");
    let exited = Instant::now();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "the daemon did not exit within 9 s of SIGTERM\n{}",
            env.daemon.diagnostics()
        )
    });
    assert!(
        exit.success(),
        "exit status {exit:?}\n{}",
        env.daemon.diagnostics()
    );
    let hit = &server.hits("/second")[0];
    assert!(
        hit.closed_by_client.is_none(),
        "the request was aborted by the shutdown"
    );
    let answered = hit.answered.expect("the test server answered the request");
    assert!(
        answered <= exited,
        "the daemon exited before the step finished"
    );

    env.restart().await;
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    let call = assert_step(&attempts, "call", St::Completed);
    assert_eq!(json(&call.output_json)["body"], json!({"done": true}));
    assert_status(&e, &attempts, Ex::Completed);
}

// ---------------------------------------------------------------------------------------------
// More edges
// ---------------------------------------------------------------------------------------------

const SLEEP_WITH_TIMEOUT: &str = "
name: sleep-timeout
steps:
  - name: nap
    action: core/sleep
    timeout: 300ms
    params: {duration: 5s}
";

/// A durable `core/sleep` takes no `timeout` (its duration is its limit): the file is
/// refused when applied, with the problem at the `timeout` key.
async fn engine_step_timeout_on_sleep(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_step_timeout_on_sleep", &[]).await else {
        return;
    };
    let err = env
        .m
        .defs
        .apply_definition(pb::ApplyDefinitionRequest {
            source: SLEEP_WITH_TIMEOUT.to_owned(),
            filename: "workflow.yaml".to_owned(),
        })
        .await
        .expect_err("a core/sleep with a timeout must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("workflow.yaml:6:14: steps[0].timeout: core/sleep takes no timeout"),
        "{}",
        err.message()
    );
}

/// SIGTERM while a durable sleep waits: the daemon exits at once (nothing is running) and a
/// new daemon finishes the sleep on time.
async fn engine_sigterm_during_sleep_hands_over(backend: Backend) {
    let Some(mut env) = setup(
        backend,
        "engine_sigterm_during_sleep_hands_over",
        &[("MANTLE_SHUTDOWN_GRACE_PERIOD", "10s")],
    )
    .await
    else {
        return;
    };
    env.m.apply(DURABLE_SLEEP).await;
    let started = env.m.start_ok("durable-sleep", "").await;
    env.m
        .wait_until(
            &started.id,
            Duration::from_secs(10),
            "sleep running",
            |_, a| {
                a.iter()
                    .any(|a| a.step_name == "nap" && step_status(a) == St::Running)
            },
        )
        .await;
    let t0 = Instant::now();
    let exit = env
        .daemon
        .sigterm(Duration::from_secs(9))
        .await
        .expect("SIGTERM")
        .unwrap_or_else(|| {
            panic!(
                "no exit within 9 s of SIGTERM\n{}",
                env.daemon.diagnostics()
            )
        });
    assert!(
        exit.success(),
        "exit status {exit:?}\n{}",
        env.daemon.diagnostics()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "a daemon with only a sleep waiting took {:?} to stop",
        t0.elapsed()
    );
    env.restart().await;
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    let nap = assert_step(&attempts, "nap", St::Completed);
    let slept = ms(&nap.end_time, "nap.end") - ms(&nap.start_time, "nap.start");
    assert!(
        (3900..5000).contains(&slept),
        "the handed-over 4 s sleep ended after {slept} ms\n{}",
        describe_attempts(&attempts)
    );
}

/// A retry waiting for its backoff is durable: after kill -9 and a restart it starts at its
/// stored time, once.
async fn engine_pending_retry_survives_restart(backend: Backend) {
    let Some(mut env) = setup(backend, "engine_pending_retry_survives_restart", &[]).await else {
        return;
    };
    let server = TestServer::start().await;
    server.route(
        "/flaky",
        vec![Reply::status(503), Reply::json(200, json!({"ok": true}))],
    );
    env.m
        .apply(&http_workflow(
            "slow-retry",
            "    retry: {max_attempts: 2, initial_backoff: 3s, max_backoff: 3s}\n",
        ))
        .await;
    let inputs = json!({"url": server.url("/flaky")}).to_string();
    let started = env.m.start_ok("slow-retry", &inputs).await;
    env.m
        .wait_until(
            &started.id,
            Duration::from_secs(10),
            "retry pending",
            |_, a| {
                a.iter()
                    .any(|a| a.attempt == 2 && step_status(a) == St::Pending)
            },
        )
        .await;
    let attempts = env.m.attempts(&started.id).await;
    let pending = attempts
        .iter()
        .find(|a| a.attempt == 2)
        .expect("pending attempt");
    let wake = ms(&pending.wake_time, "pending retry's wake_time");
    let first = attempts.iter().find(|a| a.attempt == 1).expect("attempt 1");
    let failed_end = ms(&first.end_time, "attempt 1 end");
    let order: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    assert_eq!(
        order,
        [1, 2],
        "ListStepAttempts lists attempts in the order they started (a pending retry after the \
         attempt before it)\n{}",
        describe_attempts(&attempts)
    );
    assert!(
        (1400..=3100).contains(&(wake - failed_end)),
        "a 3s backoff jittered to 50..100 % gave wake_time {} ms after the failure",
        wake - failed_end
    );
    env.daemon.sigkill().await.expect("kill -9");
    env.restart().await;
    let e = env.m.wait_terminal(&started.id, WAIT).await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    let calls = attempts_of(&attempts, "call");
    let summary: Vec<(i32, St)> = calls.iter().map(|a| (a.attempt, step_status(a))).collect();
    assert_eq!(
        summary,
        [(1, St::Failed), (2, St::Completed)],
        "{}",
        describe_attempts(&attempts)
    );
    let start2 = ms(&calls[1].start_time, "attempt 2 start");
    assert!(
        start2 >= wake - 20 && start2 <= wake + 3000,
        "the retry started {} ms after its wake_time\n{}",
        start2 - wake,
        describe_attempts(&attempts)
    );
    assert_eq!(server.count("/flaky"), 2);
}

// ---------------------------------------------------------------------------------------------
// Pure steps: evaluated while their inputs commit, recorded strictly after them
// ---------------------------------------------------------------------------------------------

/// A long chain of `core/set` steps, each reading the previous one, killed with SIGKILL
/// midway. The engine evaluates a pure step while its input's checkpoint is committing, but
/// must record it only after that checkpoint: so every step completes exactly once (a step
/// recorded before its input would make the input run again after the restart), each with
/// one event, in chain order, and the values add up.
async fn engine_pure_chain_keeps_checkpoint_order(backend: Backend) {
    const STEPS: usize = 1000;
    let Some(mut env) = setup(backend, "engine_pure_chain_keeps_checkpoint_order", &[]).await
    else {
        return;
    };
    env.m
        .apply(&reliability::set_chain_workflow("pure-chain", STEPS))
        .await;
    let started = env.m.start_ok("pure-chain", "").await;
    env.m
        .wait_until(
            &started.id,
            Duration::from_secs(30),
            "a fifth of the chain done",
            |_, a| a.len() >= STEPS / 5,
        )
        .await;
    env.daemon.sigkill().await.expect("kill -9");
    env.restart().await;

    let e = env
        .m
        .wait_terminal(&started.id, Duration::from_secs(60))
        .await;
    let attempts = env.m.attempts(&started.id).await;
    assert_status(&e, &attempts, Ex::Completed);
    assert_eq!(json(&e.outputs_json), json!({ "v": STEPS }));
    assert_eq!(
        attempts.len(),
        STEPS,
        "every step has exactly one attempt: none ran twice"
    );
    for a in &attempts {
        assert_eq!(step_status(a), St::Completed, "{}", a.step_name);
        let n: usize = a.step_name[1..].parse().expect("step name s<N>");
        assert_eq!(json(&a.output_json), json!({ "v": n }), "{}", a.step_name);
    }

    let events = env
        .m
        .watch(&started.id, 0, Duration::from_secs(30))
        .await
        .expect("watch the finished execution");
    assert_contiguous(&events, &started.id);
    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e.kind() == pb::execution_event::Kind::StepStatus)
        .map(|e| {
            assert_eq!(
                e.step_status(),
                St::Completed,
                "{}",
                describe_events(&events)
            );
            e.step_name.as_str()
        })
        .collect();
    let want: Vec<String> = (1..=STEPS).map(|i| format!("s{i}")).collect();
    assert_eq!(steps, want, "one completed event per step, in chain order");
}

// ---------------------------------------------------------------------------------------------
// A daemon frozen for longer than its lease
// ---------------------------------------------------------------------------------------------

const STALL: &str = "
name: stall
steps:
  - name: nap
    action: core/sleep
    params: {duration: 1200ms}
  - name: one
    action: core/set
    params: {v: 1}
  - name: two
    action: core/set
    params: {v: \"{{ steps.one.output.v + 1 }}\"}
outputs:
  v: steps.two.output.v
";

/// The daemon is frozen (SIGSTOP, as a VM pause or a stalled host would) for longer than
/// its 1 s lease, three times, while its executions run. On waking, its own claim loop may
/// take its expired leases again (a new epoch) while the drivers holding the old ones still
/// run: the new lease must supersede them, never be held and renewed with nothing driving
/// it. Every execution completes, and no step completes twice.
async fn engine_stall_longer_than_lease(backend: Backend) {
    let Some(mut env) = setup(
        backend,
        "engine_stall_longer_than_lease",
        &[
            ("MANTLE_ENGINE_LEASE_TTL", "1s"),
            ("MANTLE_ENGINE_POLL_INTERVAL", "100ms"),
        ],
    )
    .await
    else {
        return;
    };
    env.m.apply(STALL).await;
    let mut ids = Vec::new();
    for round in 0..3 {
        for _ in 0..10 {
            ids.push(env.m.start_ok("stall", "").await.id);
        }
        env.daemon.signal("STOP").expect("kill -STOP");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        env.daemon.signal("CONT").expect("kill -CONT");
        tokio::time::sleep(Duration::from_millis(300 * round)).await;
    }
    for id in &ids {
        let e = env.m.wait_terminal(id, Duration::from_secs(20)).await;
        let attempts = env.m.attempts(id).await;
        assert_status(&e, &attempts, Ex::Completed);
        assert_eq!(json(&e.outputs_json), json!({ "v": 2 }));
        for step in ["nap", "one", "two"] {
            let completed = attempts
                .iter()
                .filter(|a| a.step_name == step && step_status(a) == St::Completed)
                .count();
            assert_eq!(
                completed,
                1,
                "step {step} of {id} completed {completed} times:\n{}",
                describe_attempts(&attempts)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The database goes away in the middle of a chain
// ---------------------------------------------------------------------------------------------

/// PostgreSQL is cut off (every connection closed, new ones refused) for 1.5 s while long
/// chains of pure steps run, each with up to 16 checkpoints in flight. A driver writes the
/// one that failed again until the database is back; the ones queued behind it were never
/// tried, and go again at once (no backoff each), queued behind live tickets, so the chain
/// is pipelined again. Every execution completes with every step once and its event log
/// without gaps or repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_checkpoints_wait_out_a_database_outage() {
    const STEPS: usize = 1000;
    const CHAINS: usize = 6;
    let Some(db) = PgDatabase::create("engine_checkpoints_wait_out_a_database_outage").await else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.expect("proxy");
    let daemon = Daemon::start_ok(
        DaemonOptions::postgres(db.url_via(proxy.addr)).env("MANTLE_ENGINE_POLL_INTERVAL", "200ms"),
    )
    .await;
    let operator = admin_key_create(&db.url, "it-outage").await;
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(&reliability::set_chain_workflow("long-chain", STEPS))
        .await;
    let mut ids = Vec::new();
    for _ in 0..CHAINS {
        ids.push(m.start_ok("long-chain", "").await.id);
    }
    m.wait_until(
        &ids[0],
        Duration::from_secs(30),
        "a tenth of the first chain done",
        |_, a| a.len() >= STEPS / 10,
    )
    .await;
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore().await.expect("restore the proxy");

    for id in &ids {
        let e = m.wait_terminal(id, Duration::from_secs(60)).await;
        let attempts = m.attempts(id).await;
        assert_status(&e, &attempts, Ex::Completed);
        assert_eq!(json(&e.outputs_json), json!({ "v": STEPS }));
        assert_eq!(
            attempts.len(),
            STEPS,
            "every step of {id} has exactly one attempt"
        );
        let events = m
            .watch(id, 0, Duration::from_secs(30))
            .await
            .expect("watch the finished execution");
        assert_contiguous(&events, id);
        let completed = events
            .iter()
            .filter(|e| {
                e.kind() == pb::execution_event::Kind::StepStatus
                    && e.step_status() == St::Completed
            })
            .count();
        assert_eq!(completed, STEPS, "one completed event per step of {id}");
    }

    let log = format!("{}\n{}", daemon.stdout_lines().join("\n"), daemon.stderr());
    let retries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("checkpoint write failed"))
        .collect();
    assert!(
        !retries.is_empty(),
        "the outage hit no checkpoint (the chains ended before the cut?)\n{log}"
    );
    assert!(
        !retries
            .iter()
            .any(|l| l.contains("an earlier checkpoint of this execution was not written")),
        "checkpoints queued behind a failed one waited a backoff each:\n{}",
        retries.join("\n")
    );
    // Once the failed one is durable, those behind it are queued again behind live tickets:
    // none is refused for following a failure, not even those queued after the outage.
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("queued behind one that was not written"))
        .collect();
    assert!(
        refused.is_empty(),
        "{} checkpoints were refused for following one that was not written:\n{}",
        refused.len(),
        refused
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
