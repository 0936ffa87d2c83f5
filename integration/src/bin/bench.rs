//! Mantle engine benchmark: runs the RELEASE `mantle` binary against SQLite and/or PostgreSQL
//! and compares what the engine achieves with what the database itself can do, measured in
//! the same run on the same database.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/mantle-target   # or your own
//! cargo build --release -p mantle-daemon --bin mantle
//! cargo run --release -p mantle-integration --bin bench -- [--backend sqlite|postgres|both]
//! ```
//!
//! The daemon binary is `$MANTLE_BIN`, else `mantle` next to this benchmark's executable
//! (`<target>/release/mantle` under `cargo run --release`). PostgreSQL: the server named by
//! `MANTLE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); a
//! fresh database is created and dropped afterwards.
//!
//! Figures, per backend:
//! - (a) a sequential chain of 100 `core/set` steps, each reading the previous output:
//!   milliseconds per step (from the execution's start and end times), next to the
//!   database's single-client durable commit latency (single-row INSERT commits on one
//!   connection; SQLite: called directly on the bench's thread, as the daemon's writer
//!   thread calls it, on a file in the daemon's data dir, WAL, synchronous=FULL, like the
//!   daemon), and the ratio of their medians. Each chain run is followed by a 0.4 s round of
//!   commits, so both are measured under the same conditions. Both sides warm up first (10
//!   chain runs; 1500 commits), to their steady state: a new SQLite WAL grows until its
//!   first checkpoint, and commits that extend the file are slower than the ones a running
//!   daemon makes. Also printed, for scale: the same client committing the two rows a
//!   chain step writes (an attempt and an event, keyed as the daemon keys them, in one
//!   transaction; a 0.2 s round after each commit round), so the part of a step that is
//!   the database's own work on its rows shows apart from the daemon's; and the CPU time a
//!   chain step costs the daemon and (PostgreSQL) the database server's processes.
//!   Target: at most 1.5 (single-row) commits' time per step.
//! - (b) 200 concurrent executions of a 10-step `core/set` chain: steps per second (all steps
//!   over the time from the first start to the last end, taken from the executions' own
//!   create and end times), next to the raw concurrent commit rate of single-row INSERTs on
//!   as many connections as the daemon is given (SQLite: a thread per connection). The
//!   wait polls one ListExecutions call every 250 ms, so the client adds little load while
//!   the daemon works (the figure comes from the executions' timestamps, so the polling does
//!   not change it). A warm-up round, then five, each followed by a 1.5 s round of the raw
//!   commit loop; the ratio is of the medians. Target: at least half the raw rate.
//! - (c) StartExecution to the first step running: p50 and p99 over 200 sequential starts
//!   (the first attempt's start time minus the client's send time; one machine, one clock).
//!   The details line names the three slowest and their places in the sequence, so a tail
//!   that clusters (at the first starts, say) shows apart from scattered stalls.
//!   Target: p99 under 10 ms.
//!
//! It is a report, not a test: it exits 0 whether targets are met or not.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use mantle_integration::benchmark::*;
use mantle_integration::reliability::*;
use mantle_integration::*;

/// Connections of the daemon (`MANTLE_DATABASE_MAX_CONNECTIONS`), and of the raw concurrent
/// commit measurement.
const CONNECTIONS: usize = 16;
const CHAIN_STEPS: usize = 100;
const CHAIN_RUNS: usize = 9;
/// Chain runs before the measured ones (the commit probe warms up likewise, with
/// `PROBE_WARM_UP` commits): enough for both databases to reach their steady state.
const CHAIN_WARM_UP: usize = 10;
const CONCURRENT_EXECUTIONS: usize = 200;
const CONCURRENT_STEPS: usize = 10;
const STARTS: usize = 200;
/// One round of the commit loop, after each measured chain run.
const COMMIT_ROUND: Duration = Duration::from_millis(400);
/// Measured rounds of (b), each followed by a round of the raw concurrent commit loop; one
/// warm-up round comes first (a new daemon's first round is its slowest: the pool's
/// connections still prepare their statements).
const CONCURRENT_ROUNDS: usize = 5;
const CONCURRENT_COMMIT_LOOP: Duration = Duration::from_millis(1500);

#[derive(Debug, Default)]
struct Report {
    chain_ms_per_step: f64,
    chain_runs_ms_per_step: Vec<f64>,
    /// CPU time per chain step: the daemon's threads, and the database server's processes
    /// (PostgreSQL only; SQLite runs inside the daemon).
    chain_daemon_cpu_ms: f64,
    /// And per commit of the commit loop.
    chain_db_cpu_ms: Option<(f64, f64)>,
    commit_ms: f64,
    commit_rounds_ms: Vec<f64>,
    /// A step's two rows (attempt, event) committed by one client on its own.
    step_rows_ms: f64,
    commits_measured: usize,
    steps_per_s: f64,
    /// Each round of (b): steps/s, raw commits/s.
    concurrent_rounds: Vec<(f64, f64)>,
    concurrent_wall_s: f64,
    raw_commits_per_s: f64,
    start_p50_ms: f64,
    start_p99_ms: f64,
    /// The slowest starts: (position in the sequence, from 1; latency ms), slowest first.
    start_slowest: Vec<(usize, f64)>,
}

#[tokio::main]
async fn main() {
    let backends = parse_args("bench", &[]).backends;
    let binary = release_binary_or_exit("bench");
    println!("Mantle benchmark");
    print_machine(&binary);
    println!(
        "  daemon pool: {CONNECTIONS} connections; chain: {CHAIN_STEPS} core/set steps x \
         {CHAIN_RUNS} runs (+{CHAIN_WARM_UP} warm-up); concurrent: {CONCURRENT_EXECUTIONS} executions x \
         {CONCURRENT_STEPS} steps; starts: {STARTS} sequential"
    );

    for backend in backends {
        println!();
        let began = Instant::now();
        match run_backend(backend).await {
            Ok(Some((report, target))) => print_report(backend, &target, &report, began.elapsed()),
            Ok(None) => println!("== {} == skipped (see above)", backend.label()),
            Err(err) => println!("== {} == FAILED: {err:#}", backend.label()),
        }
    }
}

/// Runs every measurement on one backend. `Ok(None)` when PostgreSQL is unreachable.
async fn run_backend(backend: Backend) -> Result<Option<(Report, String)>> {
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match PgDatabase::create("bench (postgres)").await {
            Some(db) => Some(db),
            None => return Ok(None),
        },
    };
    let data = tempfile::Builder::new().prefix("mantle-bench-").tempdir()?;
    let data_dir = data.path().join("data");
    let mut opts = reliability_options(db.as_ref().map(|d| d.url.as_str()), "15s", "200ms")
        .env("MANTLE_LOG_LEVEL", "warn")
        .env("MANTLE_DATABASE_MAX_CONNECTIONS", CONNECTIONS.to_string());
    opts.data_dir = Some(data_dir.clone());
    let daemon = Daemon::start(opts).await?;
    let target = match &db {
        Some(db) => format!("database {}", db.name),
        None => format!("{}", data_dir.join("mantle.db").display()),
    };

    apply_workflow(&daemon, &set_chain_workflow("chain", CHAIN_STEPS)).await?;
    apply_workflow(&daemon, &set_chain_workflow("ten", CONCURRENT_STEPS)).await?;
    apply_workflow(&daemon, &set_chain_workflow("one", 1)).await?;
    let mut client = executions_of(&daemon).await;
    let mut report = Report::default();

    // (a) Sequential chain. Each measured run is followed by a round of the commit loop, so
    // both sides see the same state of the machine (its commit latency drifts by a third
    // over a minute here); the ratio is taken of the medians.
    let mut probe = CommitProbe::open(db.as_ref().map(|d| d.url.as_str()), &data_dir).await?;
    let mut per_step = Vec::new();
    let mut per_commit = Vec::new();
    let mut per_step_rows = Vec::new();
    let mut daemon_cpu = 0.0;
    let mut db_cpu = 0.0;
    let mut db_commit_cpu = 0.0;
    for run in 0..CHAIN_WARM_UP + CHAIN_RUNS {
        let cpu_before = (cpu_ms(&[daemon.pid()]), cpu_ms(&postgres_pids()));
        let e = start_execution(&mut client, "chain").await?;
        let e = wait_all_terminal(&mut client, &[e.id], Duration::from_secs(120))
            .await?
            .remove(0);
        check_completed(&e)?;
        if run < CHAIN_WARM_UP {
            continue;
        }
        daemon_cpu += cpu_ms(&[daemon.pid()]) - cpu_before.0;
        db_cpu += cpu_ms(&postgres_pids()) - cpu_before.1;
        let start = system_time(e.start_time.as_ref().context("no start_time")?);
        let end = system_time(e.end_time.as_ref().context("no end_time")?);
        per_step.push(millis_between(start, end) / CHAIN_STEPS as f64);
        let cpu_before = cpu_ms(&postgres_pids());
        let (ms, n) = probe.latency(COMMIT_ROUND).await?;
        db_commit_cpu += cpu_ms(&postgres_pids()) - cpu_before;
        per_commit.push(ms);
        report.commits_measured += n;
        per_step_rows.push(probe.step_rows_latency(STEP_ROWS_ROUND).await?);
    }
    probe.close().await?;
    let measured_steps = (CHAIN_RUNS * CHAIN_STEPS) as f64;
    report.chain_daemon_cpu_ms = daemon_cpu / measured_steps;
    report.chain_db_cpu_ms = db.is_some().then_some((
        db_cpu / measured_steps,
        db_commit_cpu / report.commits_measured as f64,
    ));
    report.chain_runs_ms_per_step = per_step.clone();
    report.commit_rounds_ms = per_commit.clone();
    report.chain_ms_per_step = percentile(&mut per_step, 50.0);
    report.commit_ms = percentile(&mut per_commit, 50.0);
    report.step_rows_ms = percentile(&mut per_step_rows, 50.0);

    // (b) Concurrent executions, in rounds, each followed by a round of the raw concurrent
    // commit loop; the ratio is taken of the medians (one round lasts half a second, so a
    // single one moves with whatever else the machine does in it).
    let mut rates = Vec::new();
    let mut raw_rates = Vec::new();
    let mut walls = Vec::new();
    for round in 0..=CONCURRENT_ROUNDS {
        let mut tasks = Vec::new();
        for k in 0..CONNECTIONS {
            let mut c = client.clone();
            let n = CONCURRENT_EXECUTIONS / CONNECTIONS
                + usize::from(k < CONCURRENT_EXECUTIONS % CONNECTIONS);
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..n {
                    ids.push(start_execution(&mut c, "ten").await?.id);
                }
                anyhow::Ok(ids)
            }));
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.extend(task.await??);
        }
        let finals = wait_listed(&mut client, "ten", &ids, Duration::from_secs(180)).await?;
        if round == 0 {
            continue;
        }
        let mut first: Option<SystemTime> = None;
        let mut last: Option<SystemTime> = None;
        for e in &finals {
            check_completed(e)?;
            let created = system_time(e.create_time.as_ref().context("no create_time")?);
            let ended = system_time(e.end_time.as_ref().context("no end_time")?);
            first = Some(first.map_or(created, |f| f.min(created)));
            last = Some(last.map_or(ended, |l| l.max(ended)));
        }
        let wall_s =
            millis_between(first.context("no executions")?, last.context("no end")?) / 1000.0;
        walls.push(wall_s);
        rates.push((CONCURRENT_EXECUTIONS * CONCURRENT_STEPS) as f64 / wall_s);
        raw_rates
            .push(concurrent_commit_rate(db.as_ref().map(|d| d.url.as_str()), &data_dir).await?);
    }
    report.concurrent_rounds = rates
        .iter()
        .copied()
        .zip(raw_rates.iter().copied())
        .collect();
    report.concurrent_wall_s = percentile(&mut walls, 50.0);
    report.steps_per_s = percentile(&mut rates, 50.0);
    report.raw_commits_per_s = percentile(&mut raw_rates, 50.0);

    // (c) Start to first step.
    let mut sent = Vec::new();
    for _ in 0..STARTS {
        let at = SystemTime::now();
        let e = start_execution(&mut client, "one").await?;
        sent.push((e.id, at));
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    for e in wait_all_terminal(&mut client, &ids, Duration::from_secs(60)).await? {
        check_completed(&e)?;
    }
    let mut latencies = Vec::new();
    for (id, at) in &sent {
        let attempts = step_attempts(&mut client, id).await?;
        let first = attempts
            .iter()
            .filter_map(|a| a.start_time.as_ref().map(system_time))
            .min()
            .with_context(|| format!("execution {id} has no started attempt"))?;
        latencies.push(millis_between(*at, first));
    }
    let mut slowest: Vec<(usize, f64)> = latencies
        .iter()
        .enumerate()
        .map(|(i, ms)| (i + 1, *ms))
        .collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(3);
    report.start_slowest = slowest;
    report.start_p50_ms = percentile(&mut latencies, 50.0);
    report.start_p99_ms = percentile(&mut latencies, 99.0);

    drop(client);
    drop(daemon);
    drop(db);
    Ok(Some((report, target)))
}

/// CPU time (ms) the processes `pids` have used so far, every thread counted (from
/// `/proc/<pid>/task/*/schedstat`, nanosecond resolution); 0 where `/proc` cannot tell.
fn cpu_ms(pids: &[u32]) -> f64 {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 / 1e6
}

/// The processes of the local PostgreSQL server (`postgres` by name): its CPU time is the
/// database's share of a step. Empty when the server is elsewhere or not visible.
fn postgres_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .collect()
}

/// Waits until every execution of `ids` (all of workflow `workflow`) has ended, with one
/// ListExecutions call every 250 ms: polling each execution, or listing all of them often,
/// would load the daemon (and on 2 cores, the database) during the measurement.
async fn wait_listed(
    client: &mut Executions,
    workflow: &str,
    ids: &[String],
    timeout: Duration,
) -> Result<Vec<pb::Execution>> {
    let deadline = Instant::now() + timeout;
    loop {
        let listed = client
            .list_executions(pb::ListExecutionsRequest {
                workflow: workflow.to_owned(),
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .executions;
        let ended: std::collections::HashMap<&str, &pb::Execution> = listed
            .iter()
            .filter(|e| is_terminal(e.status))
            .map(|e| (e.id.as_str(), e))
            .collect();
        if ids.iter().all(|id| ended.contains_key(id.as_str())) {
            return Ok(ids.iter().map(|id| ended[id.as_str()].clone()).collect());
        }
        if Instant::now() >= deadline {
            bail!("executions of {workflow} still not finished after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Single-row INSERT commits per second over `CONNECTIONS` connections committing at once
/// (the table exists: the single-connection probe made it).
async fn concurrent_commit_rate(url: Option<&str>, data_dir: &std::path::Path) -> Result<f64> {
    let Some(url) = url else {
        // SQLite: a thread per connection, each calling SQLite directly.
        let deadline = Instant::now() + CONCURRENT_COMMIT_LOOP;
        let began = Instant::now();
        let total = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..CONNECTIONS)
                    .map(|_| {
                        scope.spawn(|| {
                            let c = sqlite_connection(data_dir)?;
                            let mut n = 0u64;
                            while Instant::now() < deadline {
                                sqlite_commit(&c, "concurrent commit")?;
                                n += 1;
                            }
                            anyhow::Ok(n)
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .map_err(|_| anyhow::anyhow!("commit thread panicked"))?
                    })
                    .sum::<Result<u64>>()
            })
        })?;
        return Ok(total as f64 / began.elapsed().as_secs_f64());
    };
    let mut probes = Vec::new();
    for _ in 0..CONNECTIONS {
        probes.push(CommitProbe::connect(Some(url), data_dir).await?);
    }
    let began = Instant::now();
    let deadline = began + CONCURRENT_COMMIT_LOOP;
    let mut tasks = Vec::new();
    for mut probe in probes {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                probe.commit("concurrent commit").await?;
                n += 1;
            }
            probe.close().await?;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

fn print_report(backend: Backend, target: &str, r: &Report, took: Duration) {
    let a_ratio = r.chain_ms_per_step / r.commit_ms;
    let b_ratio = r.steps_per_s / r.raw_commits_per_s;
    println!(
        "== {} ({target}) — measured in {took:.1?} ==",
        backend.label()
    );
    println!(
        "{:<44} {:>16} {:>22} {:>8}  {:<14} result",
        "measurement", "mantle", "database", "ratio", "target"
    );
    println!(
        "{:<44} {:>16} {:>22} {:>8.2}  {:<14} {}",
        "(a) chain of 100 core/set, time per step",
        format!("{:.3} ms/step", r.chain_ms_per_step),
        format!("{:.3} ms/commit", r.commit_ms),
        a_ratio,
        "ratio <= 1.5",
        verdict(a_ratio <= 1.5)
    );
    println!(
        "{:<44} {:>16} {:>22} {:>8.2}  {:<14} -",
        "    the database alone, a step's two rows",
        "",
        format!("{:.3} ms/commit", r.step_rows_ms),
        r.chain_ms_per_step / r.step_rows_ms,
        "(for scale)",
    );
    println!(
        "{:<44} {:>16} {:>22} {:>8.2}  {:<14} {}",
        format!("(b) {CONCURRENT_EXECUTIONS} x {CONCURRENT_STEPS}-step concurrent, throughput"),
        format!("{:.0} steps/s", r.steps_per_s),
        format!("{:.0} commits/s ({CONNECTIONS} conn)", r.raw_commits_per_s),
        b_ratio,
        "ratio >= 0.5",
        verdict(b_ratio >= 0.5)
    );
    println!(
        "{:<44} {:>16} {:>22} {:>8}  {:<14} {}",
        format!("(c) start -> first step, p50 / p99 ({STARTS})"),
        format!("{:.2} / {:.2} ms", r.start_p50_ms, r.start_p99_ms),
        "-",
        "-",
        "p99 < 10 ms",
        verdict(r.start_p99_ms < 10.0)
    );
    println!(
        "cpu per chain step: daemon {:.3} ms{}",
        r.chain_daemon_cpu_ms,
        r.chain_db_cpu_ms
            .map(|(step, commit)| format!(
                ", postgres server {step:.3} ms (a single-row commit: {commit:.3} ms)"
            ))
            .unwrap_or_default()
    );
    println!(
        "details: chain runs {} ms/step; commit rounds {} ms; {} commits in the latency loop; \
         concurrent rounds {} steps/s vs commits/s (median wall time {:.2} s); slowest starts \
         {}",
        r.chain_runs_ms_per_step
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / "),
        r.commit_rounds_ms
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / "),
        r.commits_measured,
        r.concurrent_rounds
            .iter()
            .map(|(steps, commits)| format!("{steps:.0}/{commits:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
        r.concurrent_wall_s,
        r.start_slowest
            .iter()
            .map(|(n, ms)| format!("{ms:.2} ms (#{n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
