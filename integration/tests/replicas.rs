//! Two daemons on one PostgreSQL database share the work of 200 executions of a 10-step
//! workflow (`http/request` steps to a local counting server), and one of them goes away
//! midway:
//!
//! - SIGKILL (lease 2 s): the survivor resumes the dead daemon's executions once their leases
//!   expire, and every execution completes.
//! - SIGTERM (lease 30 s): the stopping daemon lets its running steps finish and hands its
//!   leases back, so the other daemon continues at once, long before the lease would expire;
//!   nothing is interrupted and no request is sent twice.
//!
//! Both check the store directly: no (execution, step) has more than one `completed`
//! attempt, and every execution's event seqs are exactly `1..=n`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mantle_integration::reliability::*;
use mantle_integration::*;
use uuid::Uuid;

const EXECUTIONS: usize = 200;
const STEPS: usize = 10;
/// How long the counting server takes per request.
const HANDLER_DELAY: Duration = Duration::from_millis(50);
/// The SIGTERM test's steps take longer: its executions must still be mid-way when the
/// signal lands, even when the test itself runs late on a loaded machine.
const HANDLER_DELAY_TERM: Duration = Duration::from_millis(150);
/// The daemon goes away once this share of its executions' steps has completed (SIGKILL,
/// SIGTERM).
const MIDWAY_KILL: f64 = 0.4;
const MIDWAY_TERM: f64 = 0.15;

/// Starts `EXECUTIONS` executions, alternating between the daemons (4 concurrent starters
/// per daemon). Returns the ids started on `a` and on `b`.
async fn start_spread(a: &Daemon, b: &Daemon, workflow: &str) -> (Vec<String>, Vec<String>) {
    let mut tasks = Vec::new();
    for (k, daemon) in [a, b, a, b, a, b, a, b].into_iter().enumerate() {
        let mut client = executions_of(daemon).await;
        let workflow = workflow.to_owned();
        let n = EXECUTIONS / 8;
        tasks.push((
            k % 2,
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..n {
                    let e = start_execution(&mut client, &workflow)
                        .await
                        .unwrap_or_else(|e| panic!("{e:#}"));
                    ids.push(e.id);
                }
                ids
            }),
        ));
    }
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for (side, task) in tasks {
        let ids = task.await.expect("starter task");
        if side == 0 {
            on_a.extend(ids);
        } else {
            on_b.extend(ids);
        }
    }
    (on_a, on_b)
}

async fn completed_steps(conn: &mut sqlx::PgConnection, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM step_attempts WHERE status = 'completed' AND execution_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(conn)
    .await
    .expect("counting completed steps")
}

/// How many of `ids` are not finished, according to the store.
async fn unfinished(conn: &mut sqlx::PgConnection, ids: &[String]) -> i64 {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.parse().expect("uuid")).collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM executions WHERE id = ANY($1) \
         AND status NOT IN ('completed', 'failed', 'cancelled', 'timed_out')",
    )
    .bind(&ids)
    .fetch_one(conn)
    .await
    .expect("counting unfinished executions")
}

/// Waits until `share` of the steps of `ids` (the executions of the daemon about to go)
/// completed: measured on that daemon's own executions, so a slow other replica cannot let
/// it finish everything first.
async fn wait_midway(
    conn: &mut sqlx::PgConnection,
    share: f64,
    ids: &[String],
    a: &Daemon,
    b: &Daemon,
) {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.parse().expect("uuid")).collect();
    let target = (share * (ids.len() * STEPS) as f64) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while completed_steps(conn, &ids).await < target {
        assert!(
            Instant::now() < deadline,
            "fewer than {target} steps completed after 60 s\n--- daemon A ---\n{}\n--- daemon B ---\n{}",
            a.diagnostics(),
            b.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn claims(daemon: &Daemon) -> usize {
    daemon.stderr().matches("claimed execution").count()
}

/// The store's invariants and the counting server's view; panics with every problem found.
async fn check_store(db: &PgDatabase, server: &CountingServer, ids: &[String], graceful: bool) {
    let snapshot = pg_snapshot(&db.url).await.expect("reading the store");
    let mut problems = snapshot.integrity_problems();
    let wanted: HashSet<Uuid> = ids.iter().map(|id| id.parse().expect("uuid")).collect();
    assert_eq!(
        snapshot.executions.len(),
        EXECUTIONS,
        "executions in the store"
    );
    for (id, status) in &snapshot.executions {
        if !wanted.contains(id) {
            problems.push(format!("unexpected execution {id}"));
        }
        if status != "completed" {
            problems.push(format!("execution {id} is {status}"));
        }
    }
    let (mut repeated, mut interrupted) = (0, 0);
    for id in &wanted {
        for s in 1..=STEPS {
            let step = format!("s{s}");
            let attempts: Vec<(String, Option<String>)> = snapshot
                .attempts_of(*id, &step)
                .into_iter()
                .map(|a| (a.status.clone(), a.error.clone()))
                .collect();
            let completed = attempts.iter().filter(|(s, _)| s == "completed").count();
            if completed != 1 {
                problems.push(format!(
                    "execution {id} step {step}: {completed} completed attempts: {attempts:?}"
                ));
            }
            let requests = server.count(&format!("/{id}/{step}"));
            if requests > 1 {
                repeated += 1;
            }
            let cut = attempts
                .iter()
                .filter(|(s, e)| is_interrupted(s, e.as_deref()))
                .count();
            interrupted += cut;
            if let Some(p) =
                request_count_problem(&format!("execution {id} step {step}"), requests, &attempts)
            {
                problems.push(p);
            }
            if graceful && (requests != 1 || attempts.len() != 1) {
                problems.push(format!(
                    "execution {id} step {step}: a graceful hand-over must not repeat or \
                     interrupt anything, but {requests} requests and attempts {attempts:?}"
                ));
            }
        }
    }
    eprintln!(
        "store: {} attempts, {} events; {interrupted} interrupted attempts, {repeated} steps \
         requested more than once, {} requests in all",
        snapshot.attempts.len(),
        snapshot.events.len(),
        server.total()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

async fn setup(
    test: &str,
    lease: &str,
    delay: Duration,
) -> Option<(PgDatabase, CountingServer, Daemon, Daemon)> {
    let db = PgDatabase::create(test).await?;
    let server = CountingServer::start(delay).await.expect("counting server");
    let opts = reliability_options(Some(&db.url), lease, "200ms");
    let a = Daemon::start_ok(opts.clone()).await;
    let b = Daemon::start_ok(opts).await;
    apply_workflow(&a, &http_chain_workflow("replicated", STEPS, server.addr))
        .await
        .expect("apply");
    Some((db, server, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survivor_takes_over_after_sigkill() {
    let Some((db, server, mut a, b)) = setup(
        "replicas_survivor_takes_over_after_sigkill",
        "2s",
        HANDLER_DELAY,
    )
    .await
    else {
        return;
    };
    let mut conn = db.connect().await;
    let began = Instant::now();
    let (on_a, on_b) = start_spread(&a, &b, "replicated").await;
    let all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    wait_midway(&mut conn, MIDWAY_KILL, &on_a, &a, &b).await;
    let claims_before = claims(&b);
    a.sigkill().await.expect("SIGKILL");
    let killed = Instant::now();
    let orphans = unfinished(&mut conn, &on_a).await;
    eprintln!(
        "killed daemon A {:.1?} after the first start; {orphans} of its {} executions unfinished",
        killed - began,
        on_a.len()
    );
    assert!(
        orphans > 0,
        "every execution of daemon A finished before the kill: the test did not exercise a take-over"
    );

    // The survivor takes the orphans over once their leases expire.
    let mut client = executions_of(&b).await;
    let claimed = eventually(Duration::from_secs(15), || {
        let n = claims(&b);
        async move { n > claims_before }
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        claimed,
        "daemon B claimed none of A's executions within 15 s\n{}",
        b.diagnostics()
    );
    eprintln!("daemon B resumed A's executions {takeover:.1?} after the kill");
    let finals = match wait_all_terminal(&mut client, &all, Duration::from_secs(60)).await {
        Ok(finals) => finals,
        Err(e) => panic!(
            "{e:#}:\n{}\n--- daemon B ---\n{}",
            describe_unfinished(&mut client, &all).await,
            b.diagnostics()
        ),
    };
    let done = killed.elapsed();
    eprintln!(
        "all {} executions finished {done:.1?} after the kill; daemon B claimed {} of A's",
        all.len(),
        claims(&b) - claims_before
    );
    // Leases last 2 s and are renewed every ~0.67 s: nobody may resume A's work much sooner.
    assert!(
        takeover >= Duration::from_millis(500),
        "daemon B resumed A's executions only {takeover:?} after the kill, before A's 2 s leases could expire"
    );
    for e in &finals {
        assert_eq!(
            e.status,
            pb::ExecutionStatus::Completed as i32,
            "execution {} ended {}: {}\n{}",
            e.id,
            execution_status_name(e.status),
            e.error,
            b.diagnostics()
        );
    }
    check_store(&db, &server, &all, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sigterm_hands_over_at_once() {
    let Some((db, server, mut a, b)) = setup(
        "replicas_sigterm_hands_over_at_once",
        "30s",
        HANDLER_DELAY_TERM,
    )
    .await
    else {
        return;
    };
    let mut conn = db.connect().await;
    let (on_a, on_b) = start_spread(&a, &b, "replicated").await;
    let all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    wait_midway(&mut conn, MIDWAY_TERM, &on_a, &a, &b).await;
    let claims_before = claims(&b);
    a.signal("TERM").expect("SIGTERM");
    let stopped = Instant::now();

    let mut client = executions_of(&b).await;
    let finals = match wait_all_terminal(&mut client, &all, Duration::from_secs(25)).await {
        Ok(finals) => finals,
        Err(e) => panic!(
            "{e:#}:\n{}\n--- daemon A ---\n{}\n--- daemon B ---\n{}",
            describe_unfinished(&mut client, &all).await,
            a.diagnostics(),
            b.diagnostics()
        ),
    };
    let done = stopped.elapsed();
    let status = a
        .wait_timeout(Duration::from_secs(25))
        .await
        .expect("waiting for daemon A");
    let taken_over = claims(&b) - claims_before;
    eprintln!(
        "after SIGTERM to daemon A: all {} executions finished in {done:.2?}; daemon B claimed \
         {taken_over} of A's; A exited {status:?}",
        all.len()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon A did not exit 0 after SIGTERM: {status:?}\n{}",
        a.diagnostics()
    );
    assert!(
        taken_over > 0,
        "daemon B took over none of A's executions: the test did not exercise a hand-over\n{}",
        b.diagnostics()
    );
    assert!(
        done <= Duration::from_secs(5),
        "the executions took {done:?} to finish after SIGTERM; a graceful hand-over should \
         continue them at once (the lease is 30 s)\n--- daemon A ---\n{}\n--- daemon B ---\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
    for e in &finals {
        assert_eq!(
            e.status,
            pb::ExecutionStatus::Completed as i32,
            "execution {} ended {}: {}",
            e.id,
            execution_status_name(e.status),
            e.error
        );
    }
    check_store(&db, &server, &all, true).await;
}

/// Regression: the lease heartbeat compares the leases the store renewed with the drivers
/// running here; a driver started (or claimed) while the renewal was in flight is missing
/// from the store's answer, and must not be taken for a lost lease. Otherwise its driver
/// stops while this daemon keeps renewing its lease, and the execution never runs. Many
/// quick starts on one daemon with a short lease (frequent heartbeats) expose the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_heartbeat_does_not_strand_new_executions() {
    let Some(db) = PgDatabase::create("replicas_heartbeat_does_not_strand_new_executions").await
    else {
        return;
    };
    let daemon = Daemon::start_ok(reliability_options(Some(&db.url), "1s", "200ms")).await;
    apply_workflow(&daemon, &set_chain_workflow("quick", 3))
        .await
        .expect("apply");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = executions_of(&daemon).await;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..100 {
                let e = start_execution(&mut client, "quick")
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}"));
                ids.push(e.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("starter task"));
    }
    let mut client = executions_of(&daemon).await;
    // Leases last 1 s: anything unfinished after 20 s is stranded, not slow.
    if let Err(e) = wait_all_terminal(&mut client, &ids, Duration::from_secs(20)).await {
        let lost: Vec<String> = daemon
            .stderr()
            .lines()
            .filter(|l| l.contains("lease lost"))
            .map(str::to_owned)
            .collect();
        panic!(
            "{e:#} although one daemon holds every lease:\n{}\n{} \"lease lost\" lines:\n{}",
            describe_unfinished(&mut client, &ids).await,
            lost.len(),
            lost.join("\n")
        );
    }
}
