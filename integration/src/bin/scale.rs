//! Mantle scale benchmark: list latency with many executions stored, and the sizing
//! figures of the operations guide (docs/sizing.md), measured on the RELEASE `mantle`
//! binary against SQLite and/or PostgreSQL.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/mantle-target   # or your own
//! cargo build --release -p mantle-daemon --bin mantle
//! cargo run --release -p mantle-integration --bin scale -- [--backend sqlite|postgres|both] [--large]
//! ```
//!
//! The daemon binary and the PostgreSQL server are found as `bench` finds them (see its
//! header); every part runs on a fresh data dir or database.
//!
//! 1. List latency at scale. One tenant holds N executions of 20 workflows (one version
//!    each), 86 % completed, 8 % failed, 3 % cancelled, 2 % running, 1 % pending, created
//!    uniformly over 90 days, for N = 1,000 and 100,000 (and 1,000,000 with `--large`). The
//!    workflows are applied through the API; then, with the daemon stopped, the rows are
//!    inserted into `executions` directly, in creation order, as the daemon writes them (ids
//!    UUIDv7 whose timestamp is the create time; SQLite: 16-byte blobs and RFC 3339 text;
//!    only the columns the table has had since its first migration, defaults fill the
//!    rest). Running and pending rows carry a wake time ten years ahead, so no daemon claims
//!    them. PostgreSQL is ANALYZEd after the load, as autovacuum would do; SQLite is left as
//!    the daemon leaves it. Restarted, the daemon lists every row back through the API (its
//!    count and the newest row are checked). Then ListExecutions (page_size 50, BASIC view)
//!    for: no filter; a workflow; a status (failed, 8 %, and pending, 1 %); workflow +
//!    status; a 1-day create_time range; workflow + that range; the 2nd and 20th pages by
//!    page token (the tokens fetched beforehand); and the page halfway through the tenant's
//!    executions (its token taken while listing them back). Each is called 5 times to warm up, then
//!    50 times, one after another; p50 and p99 of the client's round trip, and the ratio
//!    100k / 1k of the p50s against the target "100k within 2x of 1k". Beside it, the
//!    database's single-client commit latency on the 100k database (the commit probe of
//!    `bench`).
//! 2. Sizing, each on a fresh daemon and database (pool of 16 connections; no concurrency
//!    cap, the default):
//!    - (a) memory: the daemon's VmRSS before and after starting 10,000 executions whose first
//!      step is a `core/sleep`, once all are sleeping (their sleep attempts recorded),
//!      for a sleep of 10 minutes, whose lease the daemon gives back (a wait over 30 s
//!      is left to the database), and for one of 28 s, which the daemon holds in memory.
//!      The daemon first runs 200 one-step executions, so its pools are warm.
//!    - (b) disk: 2,000 executions of a 5-step `core/set` chain; the database's growth
//!      (SQLite: page_count x page_size, WAL included; PostgreSQL: pg_database_size, its
//!      WAL not included), per million steps.
//!    - (c) commits per step: PostgreSQL's pg_stat_database.xact_commit over that run (every
//!      transaction, read-only ones too) and pg_stat_wal.wal_sync (WAL flushes, the
//!      durable commits; server-wide, so the other databases' transactions meanwhile are
//!      shown beside), divided by the steps, raw and less the idle daemon's rate
//!      (measured before); then the same over one 1000-step chain run alone, whose steps
//!      cannot share a commit with other executions'. SQLite keeps no count of its
//!      commits that could be read from outside the daemon, so it has none.
//!    - (d) bulk cancel: after (a), one CancelExecutions for the 10,000 sleeping
//!      executions; the time until it answers, and until every one is CANCELLED (a count
//!      every 20 ms), against the target "under 5 s".
//!
//! It is a report, not a test: it exits 0 whether targets are met or not (1 when a part
//! could not be measured).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use mantle_integration::benchmark::*;
use mantle_integration::reliability::*;
use mantle_integration::*;
use sqlx::Connection;

/// Connections of the daemon (`MANTLE_DATABASE_MAX_CONNECTIONS`), and clients starting
/// executions at once.
const CONNECTIONS: usize = 16;
const WORKFLOWS: usize = 20;
const SPREAD_DAYS: i64 = 90;
const SIZES: [usize; 2] = [1_000, 100_000];
const LARGE: usize = 1_000_000;
const PAGE_SIZE: i32 = 50;
const WARM_CALLS: usize = 5;
const CALLS: usize = 50;
/// Rows per INSERT on PostgreSQL (arrays through UNNEST).
const PG_BATCH: usize = 10_000;
/// Rounds of the commit probe, each this long; the median is shown.
const COMMIT_ROUNDS: usize = 3;
const COMMIT_ROUND: Duration = Duration::from_millis(400);
const SLEEPERS: usize = 10_000;
const WARM_EXECUTIONS: usize = 200;
const DISK_EXECUTIONS: usize = 2_000;
const DISK_STEPS: usize = 5;
/// Steps of the chain run alone after the disk run (PostgreSQL's commits per step).
const CHAIN_STEPS: usize = 1000;
/// Idle time over which the idle daemon's PostgreSQL transactions are counted (besides the
/// settling time of the statistics).
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// A PostgreSQL backend that goes idle within a second of its last statistics report
/// reports again 10 s later: reads of the counts wait this long first.
const PG_STATS_SETTLE: Duration = Duration::from_secs(11);
/// Running and pending seeded rows wake this far ahead: no daemon claims them.
const NEVER_DAYS: i64 = 3650;

#[tokio::main]
async fn main() {
    let args = parse_args("scale", &["--large"]);
    let backends = args.backends;
    let mut sizes = SIZES.to_vec();
    if args.flags.iter().any(|f| f == "--large") {
        sizes.push(LARGE);
    }
    let binary = release_binary_or_exit("scale");
    println!(
        "Mantle scale benchmark ({})",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    print_machine(&binary);
    println!(
        "  list: {WORKFLOWS} workflows, {SPREAD_DAYS} days, N = {}; page_size {PAGE_SIZE}, \
         BASIC view, {CALLS} calls per query (+{WARM_CALLS} warm-up); sizing: daemon pool \
         {CONNECTIONS} connections, {SLEEPERS} sleeping executions, {DISK_EXECUTIONS} x \
         {DISK_STEPS}-step core/set",
        sizes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut failed = false;
    for backend in backends {
        println!();
        let began = Instant::now();
        let list = run_lists(backend, &sizes).await;
        let sizing = match &list {
            Ok(None) => Ok(None),
            _ => run_sizing(backend).await,
        };
        match (list, sizing) {
            (Ok(None), _) => println!("== {} == skipped (see above)", backend.label()),
            (list, sizing) => {
                println!(
                    "== {} — measured in {:.1?} ==",
                    backend.label(),
                    began.elapsed()
                );
                match list {
                    Ok(Some(l)) => print_lists(&l),
                    Ok(None) => {}
                    Err(err) => {
                        failed = true;
                        println!("list latency FAILED: {err:#}");
                    }
                }
                match sizing {
                    Ok(Some(s)) => print_sizing(backend, &s),
                    Ok(None) => {}
                    Err(err) => {
                        failed = true;
                        println!("sizing FAILED: {err:#}");
                    }
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The database, read and written beside the daemon
// ---------------------------------------------------------------------------------------------

/// A daemon's database, as the benchmark reaches it directly.
enum Db {
    /// `<data dir>/mantle.db`.
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    fn of(pg: Option<&PgDatabase>, data_dir: &Path) -> Db {
        match pg {
            Some(db) => Db::Postgres(db.url.clone()),
            None => Db::Sqlite(data_dir.join("mantle.db")),
        }
    }

    fn sqlite(path: &Path) -> Result<rusqlite::Connection> {
        let c = rusqlite::Connection::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        c.busy_timeout(Duration::from_secs(30))?;
        Ok(c)
    }

    /// The one integer `sql` (the same text on both databases) returns.
    async fn count(&self, sql: &str) -> Result<i64> {
        match self {
            Db::Sqlite(path) => tokio::task::block_in_place(|| {
                Ok(Db::sqlite(path)?.query_row(sql, [], |r| r.get(0))?)
            }),
            Db::Postgres(url) => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut c)
                    .await?;
                c.close().await?;
                Ok(n)
            }
        }
    }

    /// Bytes the database takes: SQLite's pages (the WAL's included, as a reader sees
    /// them), PostgreSQL's pg_database_size.
    async fn size(&self) -> Result<i64> {
        match self {
            Db::Sqlite(_) => {
                self.count(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .await
            }
            Db::Postgres(_) => {
                self.count("SELECT pg_database_size(current_database())")
                    .await
            }
        }
    }

    /// PostgreSQL: this database's committed transactions and the server's WAL flushes, as
    /// the statistics have them once every backend has reported (a backend that went idle
    /// within a second of its last report reports again [`PG_STATS_SETTLE`] later), and
    /// when they were read.
    async fn pg_commits(&self) -> Result<Option<Commits>> {
        let Db::Postgres(url) = self else {
            return Ok(None);
        };
        tokio::time::sleep(PG_STATS_SETTLE).await;
        let mut c = sqlx::PgConnection::connect(url).await?;
        let xacts: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut c)
        .await?;
        let syncs: i64 = sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
            .fetch_one(&mut c)
            .await?;
        let others: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT CAST(datid AS BIGINT), xact_commit FROM pg_stat_database \
             WHERE datname IS DISTINCT FROM current_database()",
        )
        .fetch_all(&mut c)
        .await?;
        c.close().await?;
        Ok(Some(Commits {
            xacts,
            syncs,
            others,
            at: Instant::now(),
        }))
    }
}

/// PostgreSQL's counts of commits at one time: this database's transactions, the server's
/// WAL flushes, and the transactions of the server's other databases (other work on the
/// server shows in its WAL flushes).
#[derive(Clone)]
struct Commits {
    xacts: i64,
    syncs: i64,
    /// (database oid, transactions) of the others.
    others: Vec<(i64, i64)>,
    at: Instant,
}

impl Commits {
    /// The counts from `earlier` to this.
    /// The other databases' transactions count from `earlier`, or from 0 for a database made
    /// since (one dropped meanwhile is not counted).
    fn since(&self, earlier: &Commits) -> CommitDelta {
        let others: i64 = self
            .others
            .iter()
            .map(|(db, n)| {
                let before = earlier
                    .others
                    .iter()
                    .find(|(e, _)| e == db)
                    .map_or(0, |e| e.1);
                (n - before).max(0)
            })
            .sum();
        CommitDelta {
            xacts: (self.xacts - earlier.xacts) as f64,
            syncs: (self.syncs - earlier.syncs) as f64,
            others: others as f64,
            secs: self.at.duration_since(earlier.at).as_secs_f64(),
        }
    }
}

#[derive(Clone, Copy)]
struct CommitDelta {
    xacts: f64,
    syncs: f64,
    others: f64,
    secs: f64,
}

// ---------------------------------------------------------------------------------------------
// 1. List latency at scale
// ---------------------------------------------------------------------------------------------

const STATUSES: [(&str, u32); 5] = [
    ("completed", 860),
    ("failed", 80),
    ("cancelled", 30),
    ("running", 20),
    ("pending", 10),
];

/// One seeded execution.
struct SeedRow {
    id: uuid::Uuid,
    workflow: usize,
    status: &'static str,
    create: DateTime<Utc>,
}

/// N rows, oldest first, from a fixed seed (the same for every backend).
fn seed_rows(n: usize, now: DateTime<Utc>) -> Vec<SeedRow> {
    let mut rng = SplitMix(0x5ca1e ^ n as u64);
    let span_ms = SPREAD_DAYS * 86_400_000;
    let now_ms = now.timestamp_millis();
    let mut times: Vec<i64> = (0..n)
        .map(|_| now_ms - 1 - (rng.next() % span_ms as u64) as i64)
        .collect();
    times.sort_unstable();
    times
        .into_iter()
        .map(|ms| {
            let mut tail = [0u8; 10];
            tail[..8].copy_from_slice(&rng.next().to_le_bytes());
            tail[8..].copy_from_slice(&rng.next().to_le_bytes()[..2]);
            let id = uuid::Builder::from_unix_timestamp_millis(ms as u64, &tail).into_uuid();
            let mut pick = (rng.next() % 1000) as u32;
            let mut status = STATUSES[0].0;
            for (s, share) in STATUSES {
                if pick < share {
                    status = s;
                    break;
                }
                pick -= share;
            }
            SeedRow {
                id,
                workflow: (rng.next() % WORKFLOWS as u64) as usize,
                status,
                create: DateTime::from_timestamp_millis(ms).expect("a time in range"),
            }
        })
        .collect()
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn workflow_name(i: usize) -> String {
    format!("wf{i:02}")
}

/// The columns of a seeded row beyond its id, tenant, workflow, version and status.
struct RowText {
    inputs: String,
    outputs: Option<&'static str>,
    error: Option<&'static str>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    wake: Option<DateTime<Utc>>,
}

impl SeedRow {
    fn text(&self, i: usize, now: DateTime<Utc>) -> RowText {
        let ms = chrono::Duration::milliseconds;
        let terminal = !matches!(self.status, "running" | "pending");
        RowText {
            inputs: format!("{{\"n\":{i}}}"),
            outputs: (self.status == "completed").then_some("{\"v\":1}"),
            error: match self.status {
                "failed" => Some("step s1 failed: seeded failure"),
                "cancelled" => Some("cancelled"),
                _ => None,
            },
            start: (self.status != "pending").then(|| self.create + ms(3)),
            end: terminal.then(|| self.create + ms(40)),
            wake: (!terminal).then(|| now + chrono::Duration::days(NEVER_DAYS)),
        }
    }
}

/// Times as the daemon stores them in SQLite (sqlx's text form).
fn sqlite_time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
}

const SEED_COLUMNS: &str = "id, tenant_id, workflow, version, status, inputs, outputs, error, \
     trigger_info, create_time, start_time, end_time, wake_time";
const TRIGGER: &str = "{\"type\":\"api\"}";

/// Inserts `rows` into the stopped daemon's database.
async fn seed(
    db: &Db,
    tenant: uuid::Uuid,
    versions: &[i64],
    rows: &[SeedRow],
    now: DateTime<Utc>,
) -> Result<()> {
    match db {
        Db::Sqlite(path) => tokio::task::block_in_place(|| {
            let mut c = Db::sqlite(path)?;
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare(&format!(
                    "INSERT INTO executions ({SEED_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ))?;
                for (i, r) in rows.iter().enumerate() {
                    let t = r.text(i, now);
                    insert.execute(rusqlite::params![
                        r.id.as_bytes(),
                        tenant.as_bytes(),
                        workflow_name(r.workflow),
                        versions[r.workflow],
                        r.status,
                        t.inputs,
                        t.outputs,
                        t.error,
                        TRIGGER,
                        sqlite_time(Some(r.create)),
                        sqlite_time(t.start),
                        sqlite_time(t.end),
                        sqlite_time(t.wake),
                    ])?;
                }
            }
            tx.commit()?;
            anyhow::Ok(())
        }),
        Db::Postgres(url) => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            let sql = format!(
                "INSERT INTO executions ({SEED_COLUMNS}) SELECT * FROM UNNEST($1::uuid[], \
                 $2::uuid[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], \
                 $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], \
                 $12::timestamptz[], $13::timestamptz[])"
            );
            for (b, chunk) in rows.chunks(PG_BATCH).enumerate() {
                let texts: Vec<RowText> = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, r)| r.text(b * PG_BATCH + k, now))
                    .collect();
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
                    .bind(vec![tenant; chunk.len()])
                    .bind(
                        chunk
                            .iter()
                            .map(|r| workflow_name(r.workflow))
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        chunk
                            .iter()
                            .map(|r| versions[r.workflow])
                            .collect::<Vec<_>>(),
                    )
                    .bind(chunk.iter().map(|r| r.status).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.inputs.clone()).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.outputs).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.error).collect::<Vec<_>>())
                    .bind(vec![TRIGGER; chunk.len()])
                    .bind(chunk.iter().map(|r| r.create).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.start).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.end).collect::<Vec<_>>())
                    .bind(texts.iter().map(|t| t.wake).collect::<Vec<_>>())
                    .execute(&mut c)
                    .await?;
            }
            sqlx::query("ANALYZE executions").execute(&mut c).await?;
            c.close().await?;
            Ok(())
        }
    }
}

/// The daemon's options for every run: the static token, a pool of [`CONNECTIONS`].
fn options(pg: Option<&PgDatabase>, data_dir: &Path) -> DaemonOptions {
    let mut opts = reliability_options(pg.map(|d| d.url.as_str()), "15s", "200ms")
        .env("MANTLE_LOG_LEVEL", "warn")
        .env("MANTLE_DATABASE_MAX_CONNECTIONS", CONNECTIONS.to_string());
    opts.data_dir = Some(data_dir.to_owned());
    opts
}

/// A fresh database for `backend` (PostgreSQL) and a data dir; `Ok(None)` when PostgreSQL
/// is unreachable.
async fn fresh(
    backend: Backend,
    what: &str,
) -> Result<Option<(Option<PgDatabase>, tempfile::TempDir)>> {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match PgDatabase::create(what).await {
            Some(db) => Some(db),
            None => return Ok(None),
        },
    };
    let dir = tempfile::Builder::new().prefix("mantle-scale-").tempdir()?;
    std::fs::create_dir_all(dir.path().join("data"))?;
    Ok(Some((pg, dir)))
}

/// One query of the list measurement.
struct Query {
    name: &'static str,
    request: pb::ListExecutionsRequest,
    start: Start,
}

/// Which page of a query is measured.
enum Start {
    /// This page (from 1), by the token of the page before.
    Page(usize),
    /// The page after the first half of the tenant's executions (unfiltered), by the token
    /// the listing-back walk took there.
    Halfway,
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn queries(now: DateTime<Utc>) -> Vec<Query> {
    let base = pb::ListExecutionsRequest {
        page_size: PAGE_SIZE,
        view: pb::View::Basic as i32,
        ..Default::default()
    };
    let day_from = now - chrono::Duration::days(45);
    let day = pb::ListExecutionsRequest {
        created_after: Some(timestamp(day_from)),
        created_before: Some(timestamp(day_from + chrono::Duration::days(1))),
        ..base.clone()
    };
    let workflow = workflow_name(7);
    let q = |name, request, page| Query {
        name,
        request,
        start: Start::Page(page),
    };
    vec![
        q("no filter", base.clone(), 1),
        q(
            "workflow (5 %)",
            pb::ListExecutionsRequest {
                workflow: workflow.clone(),
                ..base.clone()
            },
            1,
        ),
        q(
            "status failed (8 %)",
            pb::ListExecutionsRequest {
                status: pb::ExecutionStatus::Failed as i32,
                ..base.clone()
            },
            1,
        ),
        q(
            "status pending (1 %)",
            pb::ListExecutionsRequest {
                status: pb::ExecutionStatus::Pending as i32,
                ..base.clone()
            },
            1,
        ),
        q(
            "workflow + status failed (0.4 %)",
            pb::ListExecutionsRequest {
                workflow: workflow.clone(),
                status: pb::ExecutionStatus::Failed as i32,
                ..base.clone()
            },
            1,
        ),
        q("1-day create_time range (1.1 %)", day.clone(), 1),
        q(
            "workflow + 1-day range (0.06 %)",
            pb::ListExecutionsRequest { workflow, ..day },
            1,
        ),
        q("page 2, no filter", base.clone(), 2),
        q("page 20, no filter", base.clone(), 20),
        Query {
            name: "page halfway (N/2 deep), no filter",
            request: base,
            start: Start::Halfway,
        },
    ]
}

/// p50 and p99 (ms) of one query at one N.
#[derive(Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    /// Executions the page held.
    rows: usize,
}

struct ListRun {
    n: usize,
    seed_s: f64,
    verify_s: f64,
    /// Per query, in the order of [`queries`].
    latencies: Vec<Latency>,
    /// Per query, where this N's page held more rows than the smallest N's: the same query
    /// asking for only as many rows (page_size), so that the two differ in what they find
    /// the rows among, not in how many they return.
    like_for_like: Vec<Option<Latency>>,
}

struct ListReport {
    target: String,
    runs: Vec<ListRun>,
    /// Median of the commit probe's rounds on the largest database, and its rounds.
    commit_ms: f64,
    commit_rounds_ms: Vec<f64>,
    names: Vec<&'static str>,
}

async fn run_lists(backend: Backend, sizes: &[usize]) -> Result<Option<ListReport>> {
    let mut runs = Vec::new();
    let mut commit = None;
    let mut target = String::new();
    let mut names = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        let Some((pg, dir)) = fresh(backend, "scale (postgres)").await? else {
            return Ok(None);
        };
        let data_dir = dir.path().join("data");
        let db = Db::of(pg.as_ref(), &data_dir);
        let mut daemon = Daemon::start(options(pg.as_ref(), &data_dir)).await?;
        let mut versions = Vec::new();
        for w in 0..WORKFLOWS {
            let def = apply_workflow(&daemon, &set_chain_workflow(&workflow_name(w), 1)).await?;
            versions.push(def.version);
        }
        if daemon.sigterm(Duration::from_secs(30)).await?.is_none() {
            bail!("the daemon did not stop within 30 s of SIGTERM");
        }
        let tenant: uuid::Uuid = match &db {
            Db::Sqlite(path) => tokio::task::block_in_place(|| {
                let bytes: Vec<u8> = Db::sqlite(path)?.query_row(
                    "SELECT id FROM tenants WHERE name = 'default'",
                    [],
                    |r| r.get(0),
                )?;
                anyhow::Ok(uuid::Uuid::from_slice(&bytes)?)
            })?,
            Db::Postgres(url) => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                let id = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'default'")
                    .fetch_one(&mut c)
                    .await?;
                c.close().await?;
                id
            }
        };
        let now = Utc::now();
        let rows = seed_rows(n, now);
        let began = Instant::now();
        seed(&db, tenant, &versions, &rows, now).await?;
        let seed_s = began.elapsed().as_secs_f64();
        drop(daemon);
        let daemon = Daemon::start(options(pg.as_ref(), &data_dir)).await?;
        let mut client = executions_of(&daemon).await;
        let began = Instant::now();
        let halfway = verify(&mut client, &rows).await?;
        let verify_s = began.elapsed().as_secs_f64();

        let queries = queries(now);
        names = queries.iter().map(|q| q.name).collect();
        let mut latencies = Vec::new();
        let mut like_for_like = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let l = measure(&mut client, q, &halfway, None).await?;
            let fewer = runs
                .first()
                .map(|first: &ListRun| first.latencies[i].rows)
                .filter(|&rows| rows < l.rows);
            like_for_like.push(match fewer {
                Some(rows) => Some(measure(&mut client, q, &halfway, Some(rows)).await?),
                None => None,
            });
            latencies.push(l);
        }
        runs.push(ListRun {
            n,
            seed_s,
            verify_s,
            latencies,
            like_for_like,
        });
        if k == sizes.len() - 1 {
            target = match &pg {
                Some(pg) => format!("database {}", pg.name),
                None => data_dir.join("mantle.db").display().to_string(),
            };
            let mut probe =
                CommitProbe::open(pg.as_ref().map(|d| d.url.as_str()), &data_dir).await?;
            let mut rounds = Vec::new();
            for _ in 0..COMMIT_ROUNDS {
                rounds.push(probe.latency(COMMIT_ROUND).await?.0);
            }
            probe.close().await?;
            commit = Some(rounds);
        }
        drop(client);
        drop(daemon);
        drop(pg);
    }
    let commit_rounds_ms = commit.unwrap_or_default();
    Ok(Some(ListReport {
        target,
        runs,
        commit_ms: percentile(&mut commit_rounds_ms.clone(), 50.0),
        commit_rounds_ms,
        names,
    }))
}

/// Lists every execution back through the API (pages of a tenth, at most 1000): as many as
/// were seeded, the newest the newest seeded, as it was seeded. Returns the page token
/// after the first half.
async fn verify(client: &mut Executions, rows: &[SeedRow]) -> Result<String> {
    let mut token = String::new();
    let mut halfway = None;
    let mut listed = 0usize;
    let mut first = None;
    loop {
        let page = client
            .list_executions(pb::ListExecutionsRequest {
                page_size: (rows.len() / 10).clamp(1, 1000) as i32,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        listed += page.executions.len();
        if first.is_none() {
            first = page.executions.first().cloned();
        }
        if halfway.is_none() && listed >= rows.len() / 2 {
            halfway = Some(page.next_page_token.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if listed != rows.len() {
        bail!("seeded {} executions, the API lists {listed}", rows.len());
    }
    let halfway = halfway.unwrap_or_default();
    let (Some(e), Some(r)) = (first, rows.last()) else {
        return Ok(halfway);
    };
    let create = e.create_time.as_ref().map(|t| (t.seconds, t.nanos));
    let want = (
        r.create.timestamp(),
        r.create.timestamp_subsec_nanos() as i32,
    );
    let status = execution_status_name(e.status).to_lowercase();
    if e.id != r.id.to_string()
        || e.workflow != workflow_name(r.workflow)
        || create != Some(want)
        || !status.contains(r.status)
    {
        bail!(
            "the newest execution reads back as {} {} {status} {create:?}, seeded as {} {} {} {want:?}",
            e.id,
            e.workflow,
            r.id,
            workflow_name(r.workflow),
            r.status
        );
    }
    Ok(halfway)
}

/// The query's page `q.start`, called [`WARM_CALLS`] + [`CALLS`] times.
async fn measure(
    client: &mut Executions,
    q: &Query,
    halfway: &str,
    page_size: Option<usize>,
) -> Result<Latency> {
    let mut request = q.request.clone();
    match q.start {
        Start::Page(n) => {
            for _ in 1..n {
                let page = client.list_executions(request.clone()).await?.into_inner();
                if page.next_page_token.is_empty() {
                    bail!("{}: fewer than {n} pages", q.name);
                }
                request.page_token = page.next_page_token;
            }
        }
        Start::Halfway => request.page_token = halfway.to_owned(),
    }
    if let Some(n) = page_size {
        request.page_size = i32::try_from(n)?;
    }
    let mut ms = Vec::new();
    let mut rows = 0;
    for call in 0..WARM_CALLS + CALLS {
        let began = Instant::now();
        let page = client.list_executions(request.clone()).await?.into_inner();
        let took = began.elapsed().as_secs_f64() * 1000.0;
        if page.executions.is_empty() {
            bail!("{}: an empty page", q.name);
        }
        rows = page.executions.len();
        if call >= WARM_CALLS {
            ms.push(took);
        }
    }
    Ok(Latency {
        p50: percentile(&mut ms, 50.0),
        p99: percentile(&mut ms, 99.0),
        rows,
    })
}

fn print_lists(r: &ListReport) {
    println!(
        "-- list latency: ListExecutions page_size {PAGE_SIZE}, BASIC, p50 / p99 ms of {CALLS} \
         calls ({}) --",
        r.target
    );
    for run in &r.runs {
        println!(
            "   N = {}: seeded in {:.1} s, all listed back through the API in {:.1} s",
            run.n, run.seed_s, run.verify_s
        );
    }
    let (Some(small), Some(big)) = (r.runs.first(), r.runs.get(1)) else {
        return;
    };
    println!(
        "   [rows]: executions in the page. Where the larger N's page holds more than the \
         smaller N's, the like-for-like column is the same query asking for only as many \
         (page_size), so the two differ in what they find the rows among, not in how many \
         they return; the verdict is on it."
    );
    let mut header = format!("{:<34}", "query");
    for run in &r.runs {
        header.push_str(&format!(" {:>22}", format!("N={}", run.n)));
    }
    header.push_str(&format!(
        " {:>15} {:>14}  {:<6} result",
        format!("{}/{} p50 (p99)", short(big.n), short(small.n)),
        "like-for-like",
        "target"
    ));
    println!("{header}");
    for (i, name) in r.names.iter().enumerate() {
        let mut line = format!("{name:<34}");
        for run in &r.runs {
            let l = run.latencies[i];
            line.push_str(&format!(
                " {:>22}",
                format!("{:.2} / {:.2} [{}]", l.p50, l.p99, l.rows)
            ));
        }
        let (a, b) = (small.latencies[i], big.latencies[i]);
        let ratio = b.p50 / a.p50;
        let like = big.like_for_like[i].map_or(ratio, |l| l.p50 / a.p50);
        line.push_str(&format!(
            " {:>15} {:>14}  {:<6} {}",
            format!("{ratio:.2} ({:.2})", b.p99 / a.p99),
            format!("{like:.2}"),
            "<= 2x",
            verdict(like <= 2.0)
        ));
        println!("{line}");
    }
    println!(
        "database single-client commit (the same run, N={} database): {:.3} ms (rounds {})",
        r.runs.last().map_or(0, |run| run.n),
        r.commit_ms,
        r.commit_rounds_ms
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
}

fn short(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Sizing
// ---------------------------------------------------------------------------------------------

struct Memory {
    sleep: &'static str,
    before_kb: u64,
    after_kb: u64,
    peak_kb: u64,
    start_s: f64,
    sleeping_s: f64,
    /// CancelExecutions of all of them: its answer, and until every one is CANCELLED.
    cancel_answer_s: f64,
    cancel_all_s: f64,
}

struct Sizing {
    memory: Vec<Memory>,
    disk_before: i64,
    disk_after: i64,
    disk_s: f64,
    commits: Option<PgCommits>,
}

/// PostgreSQL's counts while the daemon was idle, from just before the disk run's first
/// start to its end, and over the lone chain after it (the statistics settling included).
struct PgCommits {
    idle: CommitDelta,
    run: CommitDelta,
    chain: CommitDelta,
}

async fn run_sizing(backend: Backend) -> Result<Option<Sizing>> {
    let mut memory = Vec::new();
    for (sleep, released) in [("10m", true), ("28s", false)] {
        let Some(m) = memory_run(backend, sleep, released).await? else {
            return Ok(None);
        };
        memory.push(m);
    }

    let Some((pg, dir)) = fresh(backend, "scale sizing (postgres)").await? else {
        return Ok(None);
    };
    let data_dir = dir.path().join("data");
    let db = Db::of(pg.as_ref(), &data_dir);
    let daemon = Daemon::start(options(pg.as_ref(), &data_dir)).await?;
    apply_workflow(&daemon, &set_chain_workflow("five", DISK_STEPS)).await?;
    apply_workflow(&daemon, &set_chain_workflow("chain", CHAIN_STEPS)).await?;
    let mut client = executions_of(&daemon).await;
    // Warm: a few executions first, so the figures are of a daemon in its steady state.
    start_many(&client, "five", WARM_EXECUTIONS).await?;
    wait_count(
        &db,
        "SELECT COUNT(*) FROM executions WHERE status = 'completed'",
        WARM_EXECUTIONS,
    )
    .await?;
    let idle_from = db.pg_commits().await?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let run_from = db.pg_commits().await?;
    let disk_before = db.size().await?;
    let began = Instant::now();
    start_many(&client, "five", DISK_EXECUTIONS).await?;
    wait_count(
        &db,
        "SELECT COUNT(*) FROM executions WHERE status = 'completed'",
        WARM_EXECUTIONS + DISK_EXECUTIONS,
    )
    .await?;
    let disk_s = began.elapsed().as_secs_f64();
    let disk_after = db.size().await?;
    let run_to = db.pg_commits().await?;
    // And one execution alone: a chain, whose steps cannot share a commit with others'.
    start_execution(&mut client, "chain").await?;
    wait_count(
        &db,
        "SELECT COUNT(*) FROM executions WHERE status = 'completed'",
        WARM_EXECUTIONS + DISK_EXECUTIONS + 1,
    )
    .await?;
    let chain_to = db.pg_commits().await?;
    let failed: i64 = db
        .count("SELECT COUNT(*) FROM executions WHERE status <> 'completed'")
        .await?;
    if failed > 0 {
        bail!("{failed} executions of the disk run did not complete");
    }
    let commits = match (idle_from, run_from, run_to, chain_to) {
        (Some(a), Some(b), Some(c), Some(d)) => Some(PgCommits {
            idle: b.since(&a),
            run: c.since(&b),
            chain: d.since(&c),
        }),
        _ => None,
    };
    drop(client);
    drop(daemon);
    drop(pg);
    Ok(Some(Sizing {
        memory,
        disk_before,
        disk_after,
        disk_s,
        commits,
    }))
}

/// RSS of [`SLEEPERS`] executions sleeping `sleep` on a fresh daemon; `released`: the
/// daemon gives their leases back (they are waited for in the database).
async fn memory_run(
    backend: Backend,
    sleep: &'static str,
    released: bool,
) -> Result<Option<Memory>> {
    let Some((pg, dir)) = fresh(backend, "scale memory (postgres)").await? else {
        return Ok(None);
    };
    let data_dir = dir.path().join("data");
    let db = Db::of(pg.as_ref(), &data_dir);
    let daemon = Daemon::start(options(pg.as_ref(), &data_dir)).await?;
    apply_workflow(&daemon, &set_chain_workflow("one", 1)).await?;
    apply_workflow(
        &daemon,
        &format!(
            "name: sleeper\nsteps:\n  - name: nap\n    action: core/sleep\n    params: \
             {{duration: {sleep}}}\n  - name: after\n    action: core/set\n    params: {{v: 1}}\n"
        ),
    )
    .await?;
    let client = executions_of(&daemon).await;
    start_many(&client, "one", WARM_EXECUTIONS).await?;
    wait_count(
        &db,
        "SELECT COUNT(*) FROM executions WHERE status = 'completed'",
        WARM_EXECUTIONS,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kb = proc_status_kb(daemon.pid(), "VmRSS")?;
    let began = Instant::now();
    start_many(&client, "sleeper", SLEEPERS).await?;
    let start_s = began.elapsed().as_secs_f64();
    let sleeping = if released {
        "SELECT COUNT(*) FROM executions WHERE workflow = 'sleeper' AND status = 'running' \
         AND wake_time IS NOT NULL AND owner IS NULL"
    } else {
        "SELECT COUNT(*) FROM step_attempts WHERE step_name = 'nap' AND status = 'running' \
         AND wake_time IS NOT NULL"
    };
    wait_count(&db, sleeping, SLEEPERS).await?;
    let sleeping_s = began.elapsed().as_secs_f64();
    // Let whatever the starts left behind (buffers, the writers' queues) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kb = proc_status_kb(daemon.pid(), "VmRSS")?;
    let peak_kb = proc_status_kb(daemon.pid(), "VmHWM")?;
    let woke: i64 = db
        .count("SELECT COUNT(*) FROM executions WHERE workflow = 'sleeper' AND status <> 'running'")
        .await?;
    if woke > 0 {
        bail!("{woke} sleeping executions ended before the daemon's memory was read");
    }
    // Bulk cancel: one request for all of them, then until each has ended CANCELLED (a
    // look every 20 ms).
    let began = Instant::now();
    let asked = client
        .clone()
        .cancel_executions(pb::CancelExecutionsRequest {
            workflow: "sleeper".to_owned(),
            ..Default::default()
        })
        .await
        .context("CancelExecutions")?
        .into_inner()
        .cancel_requested;
    let cancel_answer_s = began.elapsed().as_secs_f64();
    if asked != SLEEPERS as i64 {
        bail!("CancelExecutions asked {asked} executions to stop, not {SLEEPERS}");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = db
            .count("SELECT COUNT(*) FROM executions WHERE workflow = 'sleeper' AND status = 'cancelled'")
            .await?;
        if n >= SLEEPERS as i64 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{n} of {SLEEPERS} cancelled after 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel_all_s = began.elapsed().as_secs_f64();
    drop(client);
    drop(daemon);
    drop(pg);
    Ok(Some(Memory {
        sleep,
        before_kb,
        after_kb,
        peak_kb,
        start_s,
        sleeping_s,
        cancel_answer_s,
        cancel_all_s,
    }))
}

/// A field (kB) of `/proc/<pid>/status`.
fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Starts `n` executions of `workflow` from [`CONNECTIONS`] clients at once.
async fn start_many(client: &Executions, workflow: &str, n: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for k in 0..CONNECTIONS {
        let mut c = client.clone();
        let workflow = workflow.to_owned();
        let count = n / CONNECTIONS + usize::from(k < n % CONNECTIONS);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                start_execution(&mut c, &workflow).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Waits (up to 5 minutes, a look every 250 ms) until `sql` counts at least `n`.
async fn wait_count(db: &Db, sql: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count = db.count(sql).await?;
        if count >= n as i64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{sql}: {count} after 5 minutes, waiting for {n}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn print_sizing(backend: Backend, s: &Sizing) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "-- sizing ({}, {cores} cores, daemon pool {CONNECTIONS} connections) --",
        backend.label()
    );
    for m in &s.memory {
        let delta_mb = (m.after_kb as f64 - m.before_kb as f64) / 1024.0;
        println!(
            "(a) memory, {SLEEPERS} executions in a {} core/sleep{}: RSS {:.1} MB -> {:.1} MB, \
             {:.1} MB per 10k sleeping executions ({:.0} bytes each); peak RSS {:.1} MB; \
             started in {:.1} s, all sleeping after {:.1} s",
            m.sleep,
            if m.sleep.ends_with('m') {
                " (lease given back: waits in the database)"
            } else {
                " (held in the daemon's memory)"
            },
            m.before_kb as f64 / 1024.0,
            m.after_kb as f64 / 1024.0,
            delta_mb * 10_000.0 / SLEEPERS as f64,
            delta_mb * 1024.0 * 1024.0 / SLEEPERS as f64,
            m.peak_kb as f64 / 1024.0,
            m.start_s,
            m.sleeping_s
        );
        println!(
            "(d) bulk cancel of those {SLEEPERS} ({} sleep): CancelExecutions answered in {:.2} s, \
             all CANCELLED after {:.2} s; target under 5 s: {}",
            m.sleep,
            m.cancel_answer_s,
            m.cancel_all_s,
            verdict(m.cancel_all_s < 5.0)
        );
    }
    let steps = (DISK_EXECUTIONS * DISK_STEPS) as f64;
    let grown = (s.disk_after - s.disk_before) as f64;
    println!(
        "(b) disk, {DISK_EXECUTIONS} executions x {DISK_STEPS} core/set steps ({steps:.0} steps, \
         run in {:.1} s): {} {:.1} MB -> {:.1} MB, {:.0} MB per million steps ({:.0} bytes per \
         step, the execution rows and events included)",
        s.disk_s,
        match backend {
            Backend::Sqlite => "page_count x page_size",
            Backend::Postgres => "pg_database_size",
        },
        mb(s.disk_before as f64),
        mb(s.disk_after as f64),
        mb(grown) * 1_000_000.0 / steps,
        grown / steps
    );
    match &s.commits {
        Some(c) => {
            let idle = c.idle;
            let (xact_rate, sync_rate) = (idle.xacts / idle.secs, idle.syncs / idle.secs);
            for (what, d, steps) in [
                (
                    format!("{DISK_EXECUTIONS} x {DISK_STEPS}-step, {CONNECTIONS} clients"),
                    c.run,
                    steps,
                ),
                (
                    format!("one {CHAIN_STEPS}-step chain alone"),
                    c.chain,
                    CHAIN_STEPS as f64,
                ),
            ] {
                println!(
                    "(c) commits per step, {what}: {:.2} transactions ({:.2} less the idle \
                     daemon's; pg_stat_database.xact_commit {:.0} in {:.1} s, read-only ones \
                     included), {:.2} WAL flushes ({:.2} less the idle rate; pg_stat_wal.wal_sync \
                     {:.0}, server-wide: the server's other databases committed {:.0} \
                     transactions meanwhile)",
                    d.xacts / steps,
                    (d.xacts - xact_rate * d.secs) / steps,
                    d.xacts,
                    d.secs,
                    d.syncs / steps,
                    (d.syncs - sync_rate * d.secs) / steps,
                    d.syncs,
                    d.others,
                );
            }
            println!(
                "    idle daemon: {xact_rate:.1} transactions/s, {sync_rate:.1} WAL flushes/s \
                 (over {:.1} s; the other databases: {:.1} transactions/s)",
                idle.secs,
                idle.others / idle.secs
            );
        }
        None => println!(
            "(c) commits per step: not measured on SQLite (no count of its commits can be \
             read from outside the daemon)"
        ),
    }
}
