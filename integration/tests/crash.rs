//! Crash recovery by SIGKILL: a daemon is killed at random moments while executions of a
//! 51-step workflow (5 parallel branches of 10 `http/request` steps, then a join) run, and
//! restarted at once (SQLite: same data dir; PostgreSQL: a new daemon on the same database,
//! which resumes once the dead daemon's 2 s leases expire). At least 20 kills per backend.
//!
//! Afterwards: every execution COMPLETED; no step has more than one `completed` attempt; and
//! the counting HTTP server shows that no checkpointed step's request was sent again: for
//! every (execution, step), `completed + failed <= requests <= completed + failed +
//! interrupted` (an attempt in flight at a kill may repeat; nothing else may), and
//! `requests <= 1 + kills`. The store's event logs are `1..=n` for every execution.
//!
//! `MANTLE_TEST_SEED=<n>` replays a run's kill timings (the seed is printed).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mantle_integration::reliability::*;
use mantle_integration::*;

const BRANCHES: usize = 5;
const LENGTH: usize = 10;
const MIN_KILLS: usize = 20;
/// Executions started together; another batch starts when all are done before the kills are.
const BATCH: usize = 6;
/// How long the counting server takes per request.
const HANDLER_DELAY: Duration = Duration::from_millis(4);

struct Scenario {
    test: &'static str,
    /// `None`: SQLite in `data_dir`.
    database_url: Option<String>,
    lease: &'static str,
    /// A kill comes this long (uniformly random) after the daemon resumed work.
    kill_after: (Duration, Duration),
    /// Upper bound for the whole run.
    budget: Duration,
}

async fn run_scenario(sc: Scenario) {
    let (mut rng, seed) = Rng::from_env();
    eprintln!(
        "{}: seed {seed} (MANTLE_TEST_SEED={seed} replays it)",
        sc.test
    );
    let began = Instant::now();
    let server = CountingServer::start(HANDLER_DELAY)
        .await
        .expect("counting server");
    let data = tempfile::Builder::new()
        .prefix("mantle-crash-")
        .tempdir()
        .expect("tempdir");
    let data_dir: PathBuf = data.path().join("data");
    let mut opts = reliability_options(sc.database_url.as_deref(), sc.lease, "200ms");
    opts.data_dir = Some(data_dir.clone());

    let mut daemon = Daemon::start_ok(opts.clone()).await;
    let (source, steps) = http_fan_workflow("crashy", BRANCHES, LENGTH, server.addr);
    assert_eq!(steps.len(), BRANCHES * LENGTH + 1);
    apply_workflow(&daemon, &source).await.expect("apply");

    let mut ids: Vec<String> = Vec::new();
    let mut kills = 0usize;
    let mut batches = 0usize;
    let mut last_stderr = String::new();
    // Every daemon's log, for failure messages.
    let mut logs: Vec<String> = Vec::new();
    loop {
        assert!(
            began.elapsed() < sc.budget,
            "{}: still running after {:?} ({kills} kills, {} executions)\n{}",
            sc.test,
            sc.budget,
            ids.len(),
            daemon.diagnostics()
        );
        let mut client = executions_of(&daemon).await;
        // A new batch when everything started so far has finished (or nothing has started).
        let mut unfinished = 0;
        for id in &ids {
            let e = client
                .get_execution(pb::GetExecutionRequest { id: id.clone() })
                .await
                .unwrap_or_else(|s| panic!("GetExecution {id}: {s:?}"))
                .into_inner();
            if !is_terminal(e.status) {
                unfinished += 1;
            }
        }
        if unfinished == 0 {
            if kills >= MIN_KILLS {
                break;
            }
            for _ in 0..BATCH {
                let e = start_execution(&mut client, "crashy")
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.diagnostics()));
                ids.push(e.id);
            }
            batches += 1;
        }
        if kills >= MIN_KILLS {
            // Enough kills: let the rest finish undisturbed.
            let ids_now = ids.clone();
            wait_all_terminal(&mut client, &ids_now, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{e:#}\nprevious daemon:\n{last_stderr}\n{}",
                        daemon.diagnostics()
                    )
                });
            continue;
        }
        // Kill while work is in flight: a random moment after the daemon resumed the
        // orphaned executions (its "claimed execution" log line) or started a new batch;
        // now and then right away, before it resumed anything.
        let started_batch = unfinished == 0;
        if !started_batch && rng.next_u64() % 8 != 0 {
            eventually(Duration::from_secs(10), || {
                let resumed = daemon.stderr().contains("claimed execution");
                async move { resumed }
            })
            .await;
            tokio::time::sleep(rng.duration(sc.kill_after.0, sc.kill_after.1)).await;
        } else if started_batch {
            tokio::time::sleep(rng.duration(sc.kill_after.0, sc.kill_after.1)).await;
        }
        daemon.sigkill().await.expect("SIGKILL");
        kills += 1;
        last_stderr = daemon.stderr();
        logs.push(last_stderr.clone());
        drop(daemon);
        daemon = Daemon::start_ok(opts.clone()).await;
    }
    eprintln!(
        "{}: {kills} kills, {} executions in {batches} batches, {:.1?}",
        sc.test,
        ids.len(),
        began.elapsed()
    );

    // Every execution completed.
    let mut client = executions_of(&daemon).await;
    let finals = wait_all_terminal(&mut client, &ids, Duration::from_secs(5))
        .await
        .expect("all terminal");
    for e in &finals {
        assert_eq!(
            e.status,
            pb::ExecutionStatus::Completed as i32,
            "execution {} ended {} ({:?})\n{}",
            e.id,
            execution_status_name(e.status),
            e.error,
            daemon.diagnostics()
        );
    }

    // Attempts against requests.
    let mut problems = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    let mut repeated = 0usize;
    let mut interrupted_total = 0usize;
    let mut interrupted_unsent = 0usize;
    let mut expected_paths = HashSet::new();
    for id in &ids {
        let before = problems.len();
        let attempts = step_attempts(&mut client, id).await.expect("attempts");
        for step in &steps {
            let mine: Vec<(String, Option<String>)> = attempts
                .iter()
                .filter(|a| &a.step_name == step)
                .map(|a| {
                    let status = match pb::StepStatus::try_from(a.status) {
                        Ok(pb::StepStatus::Completed) => "completed",
                        Ok(pb::StepStatus::Failed) => "failed",
                        Ok(pb::StepStatus::Cancelled) => "cancelled",
                        Ok(pb::StepStatus::Running) => "running",
                        Ok(pb::StepStatus::Pending) => "pending",
                        Ok(pb::StepStatus::Skipped) => "skipped",
                        _ => "unspecified",
                    };
                    let error = (!a.error.is_empty()).then(|| a.error.clone());
                    (status.to_owned(), error)
                })
                .collect();
            let path = format!("/{id}/{step}");
            let requests = server.count(&path);
            expected_paths.insert(path);
            let completed = mine.iter().filter(|(s, _)| s == "completed").count();
            if completed != 1 {
                problems.push(format!(
                    "execution {id} step {step}: {completed} completed attempts: {mine:?}"
                ));
            }
            let interrupted = mine
                .iter()
                .filter(|(s, e)| is_interrupted(s, e.as_deref()))
                .count();
            let others = mine.len() - completed - interrupted;
            if others != 0 {
                problems.push(format!(
                    "execution {id} step {step}: attempts other than completed/interrupted: {mine:?}"
                ));
            }
            interrupted_total += interrupted;
            let finished = mine
                .iter()
                .filter(|(s, _)| s == "completed" || s == "failed")
                .count();
            interrupted_unsent += (finished + interrupted).saturating_sub(requests as usize);
            if requests > 1 {
                repeated += 1;
            }
            if let Some(p) =
                request_count_problem(&format!("execution {id} step {step}"), requests, &mine)
            {
                problems.push(p);
            }
            if requests > 1 + kills as u64 {
                problems.push(format!(
                    "execution {id} step {step}: {requests} requests with only {kills} kills"
                ));
            }
        }
        if problems.len() > before {
            broken.push(id.clone());
        }
    }
    for (path, n) in server.counts() {
        if !expected_paths.contains(&path) {
            problems.push(format!("{n} requests to unexpected path {path}"));
        }
    }

    // The store itself: at most one completed attempt per step, event seqs 1..=n.
    drop(client);
    let snapshot = match &sc.database_url {
        Some(url) => pg_snapshot(url).await,
        None => {
            daemon
                .sigterm(Duration::from_secs(20))
                .await
                .expect("SIGTERM");
            sqlite_snapshot(&data_dir).await
        }
    }
    .expect("reading the store");
    problems.extend(snapshot.integrity_problems());
    let mut details = String::new();
    if !problems.is_empty() {
        logs.push(daemon.stderr());
        // The stored history and the log lines of the first executions with problems.
        for id in broken.iter().take(2) {
            let uuid = id.parse().expect("uuid");
            match dump_execution(sc.database_url.as_deref(), &data_dir, uuid).await {
                Ok(dump) => details.push_str(&dump),
                Err(e) => details.push_str(&format!("dumping {id}: {e:#}\n")),
            }
            details.push_str("log lines:\n");
            for (k, log) in logs.iter().enumerate() {
                for line in log.lines().filter(|l| l.contains(id.as_str())) {
                    details.push_str(&format!("  daemon #{k}: {line}\n"));
                }
            }
        }
    }

    eprintln!(
        "{}: {} steps checked; {repeated} requests sent twice or more (in flight at a kill); \
         {interrupted_total} interrupted attempts, {interrupted_unsent} of them before their \
         request was sent; {} requests in all",
        sc.test,
        ids.len() * steps.len(),
        server.total()
    );
    assert!(
        problems.is_empty(),
        "{}: {} problems (seed {seed}):\n{}\n{details}",
        sc.test,
        problems.len(),
        problems.join("\n")
    );
    assert!(kills >= MIN_KILLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_by_sigkill_on_sqlite() {
    run_scenario(Scenario {
        test: "crash_recovery_by_sigkill_on_sqlite",
        database_url: None,
        lease: "15s",
        kill_after: (Duration::from_millis(0), Duration::from_millis(500)),
        budget: Duration::from_secs(150),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_by_sigkill_on_postgres() {
    let Some(db) = PgDatabase::create("crash_recovery_by_sigkill_on_postgres").await else {
        return;
    };
    run_scenario(Scenario {
        test: "crash_recovery_by_sigkill_on_postgres",
        database_url: Some(db.url.clone()),
        lease: "2s",
        // The new daemon resumes the dead one's executions once their leases expire (2 s).
        kill_after: (Duration::from_millis(0), Duration::from_millis(900)),
        budget: Duration::from_secs(170),
    })
    .await;
}
