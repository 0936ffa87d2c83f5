//! Retention under load, on SQLite: 20,000 finished executions past their tenant's
//! retention are deleted by the janitor while another tenant runs a 10-step workflow in a
//! loop, whose p99 run time stays within twice its unloaded p99; and the database file
//! shrinks once the freed pages are given back.
//!
//! The 20,000 executions are copies of one real execution (its row, step attempts and
//! events, under new ids, ended in 2020), written into the database file while the daemon
//! is stopped: running them would take minutes, and the deletion is what is measured.

use std::path::Path;
use std::time::{Duration, Instant};

use mantle_integration::*;
use mantle_proto::v1 as pb;

const OLD: usize = 20_000;

fn chain(name: &str, steps: usize) -> String {
    let mut s = format!("name: {name}\nsteps:\n");
    for i in 0..steps {
        s.push_str(&format!(
            "  - name: s{i}\n    action: core/set\n    params: {{value: \"step {i} of a chain of {steps}, with some text to store\"}}\n"
        ));
    }
    s
}

async fn tenant(daemon: &Daemon, operator: &str, name: &str) -> Mantle {
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: name.to_owned(),
                ..Default::default()
            })
            .await,
        "CreateTenant",
    );
    let token = create_api_key(daemon, operator, name, &["*"]).await;
    Mantle::connect(daemon, &token).await
}

/// Runs `workflow` to its end; its run time from the execution's own create and end times.
async fn run_once(m: &mut Mantle, workflow: &str) -> Duration {
    let started = m.start_ok(workflow, "{}").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = m.get(&started.id).await;
        if is_terminal_status(e.status) {
            assert_eq!(
                e.status,
                pb::ExecutionStatus::Completed as i32,
                "the busy tenant's run failed: {e:?}"
            );
            let ms = ts_ms(&e.end_time).unwrap() - ts_ms(&e.create_time).unwrap();
            return Duration::from_millis(ms.max(0) as u64);
        }
        assert!(Instant::now() < deadline, "run did not end: {e:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let rank = (samples.len() * 99).div_ceil(100).max(1);
    samples[rank - 1]
}

/// Copies execution `template` (with its attempts and events) `n` times under new ids,
/// ended (and created) in 2020.
fn clone_executions(db: &Path, template: &str, n: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    let id = uuid::Uuid::parse_str(template).unwrap();
    let columns = |table: &str| -> Vec<String> {
        let mut s = c.prepare(&format!("PRAGMA table_info({table})")).unwrap();
        s.query_map([], |r| r.get::<_, String>(1))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    c.execute_batch("BEGIN").unwrap();
    c.execute_batch(&format!(
        "CREATE TEMP TABLE ids AS WITH RECURSIVE seq(n) AS \
         (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {n}) \
         SELECT randomblob(16) AS id FROM seq"
    ))
    .unwrap();
    let old = "'2020-01-01T00:00:00.000000Z'";
    for (table, key) in [
        ("executions", "id"),
        ("step_attempts", "execution_id"),
        ("execution_events", "execution_id"),
    ] {
        let cols = columns(table);
        let select: Vec<String> = cols
            .iter()
            .map(|col| match col.as_str() {
                c if c == key => "ids.id".to_owned(),
                "create_time" | "end_time" | "start_time" | "time" => old.to_owned(),
                other => format!("t.{other}"),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM ids, {table} t WHERE t.{key} = ?1",
            cols.join(", "),
            select.join(", ")
        );
        c.execute(&sql, [id.as_bytes().as_slice()]).unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_twenty_thousand_without_stalling_another_tenant() {
    let options = || {
        DaemonOptions::sqlite()
            .env("MANTLE_RETENTION_INTERVAL", "1s")
            .env(
                "MANTLE_LOG_LEVEL",
                std::env::var("RETENTION_LOG").unwrap_or("warn".into()),
            )
    };
    let mut daemon = Daemon::start_ok(options()).await;
    let operator = daemon.operator_token();
    let mut old = tenant(&daemon, &operator, "old").await;
    let mut busy = tenant(&daemon, &operator, "busy").await;
    old.apply(&chain("five", 5)).await;
    busy.apply(&chain("ten", 10)).await;
    let template = old.start_ok("five", "{}").await;
    old.wait_until(
        &template.id,
        Duration::from_secs(30),
        "template ends",
        |e, _| is_terminal_status(e.status),
    )
    .await;
    // One of the old tenant's executions that has not finished: never deleted.
    old.apply(
        "name: nap\nsteps:\n  - name: nap\n    action: core/sleep\n    params: {duration: 10m}\n",
    )
    .await;
    let sleeping = old.start_ok("nap", "{}").await;

    daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("daemon stops");
    let db = daemon.data_dir().join("mantle.db");
    clone_executions(&db, &template.id, OLD);
    let before = file_size(&db);
    daemon.restart_ok(options()).await;
    let mut old = Mantle::connect(
        &daemon,
        &create_api_key(&daemon, &operator, "old", &["*"]).await,
    )
    .await;
    let mut busy = Mantle::connect(
        &daemon,
        &create_api_key(&daemon, &operator, "busy", &["*"]).await,
    )
    .await;

    // Unloaded: the janitor runs, but the old tenant has no retention yet.
    for _ in 0..5 {
        run_once(&mut busy, "ten").await;
    }
    let mut unloaded = Vec::new();
    for _ in 0..100 {
        unloaded.push(run_once(&mut busy, "ten").await);
    }

    // Loaded: retention of a second; the janitor deletes the 20,000 while the loop runs.
    let mut tenants = daemon.tenants(Some(&operator)).await;
    expect_ok(
        tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: "old".to_owned(),
                settings: Some(pb::TenantSettings {
                    retention: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                settings_mask: Some(prost_types::FieldMask {
                    paths: vec!["retention".to_owned()],
                }),
                ..Default::default()
            })
            .await,
        "UpdateTenant retention",
    );
    let deleted = || async {
        daemon
            .metric("mantle_retention_deleted_executions_total")
            .await as usize
    };
    let started = Instant::now();
    let mut loaded = Vec::new();
    while deleted().await < OLD + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the janitor deleted {} of {} in 3 minutes",
            deleted().await,
            OLD + 1
        );
        loaded.push(run_once(&mut busy, "ten").await);
    }
    let took = started.elapsed();
    // A few more runs while the janitor gives the pages back.
    for _ in 0..10 {
        loaded.push(run_once(&mut busy, "ten").await);
    }

    let listed = old
        .execs
        .list_executions(pb::ListExecutionsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.executions.iter().map(|e| &e.id).collect::<Vec<_>>(),
        vec![&sleeping.id],
        "only the unfinished execution is left"
    );
    let (u, l) = (p99(&mut unloaded), p99(&mut loaded));
    eprintln!(
        "retention: {} executions deleted in {took:?}; busy tenant p99 {u:?} unloaded, {l:?} \
         during ({} runs)",
        OLD + 1,
        loaded.len()
    );
    assert!(
        l <= u * 2,
        "the busy tenant's p99 went from {u:?} to {l:?} while the janitor deleted"
    );

    let shrunk = eventually(Duration::from_secs(30), || async {
        file_size(&db) < before * 3 / 4
    })
    .await;
    assert!(
        shrunk,
        "the database file did not shrink: {before} bytes before, {} after",
        file_size(&db)
    );
}
