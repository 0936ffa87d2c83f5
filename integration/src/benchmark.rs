//! What the benchmark binaries (`bench`, `scale`) share: the backends they run on, the
//! release `mantle` they start, and the database's own commit latency measured beside the
//! engine's figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::Connection;

use crate::mantle_bin;
use crate::pb;
use crate::reliability::execution_status_name;

/// Commits of the probe before its first round: enough for the database to reach its
/// steady state (a SQLite WAL grows until its first checkpoint, and while it grows every
/// commit also extends the file, which makes fsync slower; a long-running daemon only ever
/// sees the steady state).
pub const PROBE_WARM_UP: usize = 1500;
/// A round of commits of a step's two rows, as the probe's warm-up ends with.
pub const STEP_ROWS_ROUND: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

impl Backend {
    /// `sqlite`, `postgres` (`postgresql`, `pg`) or `both`, as given to `--backend`.
    pub fn parse_list(value: &str) -> Option<Vec<Backend>> {
        Some(match value {
            "sqlite" => vec![Backend::Sqlite],
            "postgres" | "postgresql" | "pg" => vec![Backend::Postgres],
            "both" => vec![Backend::Sqlite, Backend::Postgres],
            _ => return None,
        })
    }
}

/// A benchmark's command line: `--backend sqlite|postgres|both` (both by default) and which
/// of its `flags` were given.
pub struct Args {
    pub backends: Vec<Backend>,
    pub flags: Vec<String>,
}

/// Reads the command line of benchmark `program`, whose other options are `flags`
/// (`--large`, say); anything else prints the usage and exits with 2.
pub fn parse_args(program: &str, flags: &[&str]) -> Args {
    let usage = || -> ! {
        let extra: String = flags.iter().map(|f| format!(" [{f}]")).collect();
        eprintln!("usage: {program} [--backend sqlite|postgres|both]{extra}");
        std::process::exit(2);
    };
    let mut parsed = Args {
        backends: vec![Backend::Sqlite, Backend::Postgres],
        flags: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if flags.contains(&arg.as_str()) {
            parsed.flags.push(arg);
            continue;
        }
        let value = match arg.as_str() {
            "--backend" => args.next().unwrap_or_else(|| usage()),
            other => match other.strip_prefix("--backend=") {
                Some(v) => v.to_owned(),
                None => usage(),
            },
        };
        parsed.backends = Backend::parse_list(&value).unwrap_or_else(|| usage());
    }
    parsed
}

/// [`release_binary`], or its error printed and exit code 1.
pub fn release_binary_or_exit(program: &str) -> PathBuf {
    release_binary().unwrap_or_else(|err| {
        eprintln!("{program}: {err:#}");
        std::process::exit(1);
    })
}

/// Prints the machine a benchmark runs on: its cores, how busy it was at the start (other
/// work skews every figure), and the daemon binary.
pub fn print_machine(binary: &std::path::Path) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("  cores: {cores}");
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("  load average at start: {}", load.trim());
    }
    println!("  mantle binary: {}", binary.display());
}

/// The release `mantle`: `$MANTLE_BIN`, else next to this executable. The harness's
/// `Daemon::start` resolves the same path.
pub fn release_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MANTLE_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("MANTLE_BIN={} does not exist", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe.parent().context("executable has no directory")?;
    let path = dir.join("mantle");
    if !path.is_file() {
        bail!(
            "no `mantle` binary next to {} — build it first: \
             `cargo build --release -p mantle-daemon --bin mantle` (same CARGO_TARGET_DIR), \
             or set MANTLE_BIN",
            exe.display()
        );
    }
    if !dir.ends_with("release") {
        eprintln!(
            "warning: {} is not in a release directory; the figures are not those of a release build",
            path.display()
        );
    }
    // Daemon::start resolves the binary on its own; make sure it is the same one.
    let harness = mantle_bin();
    if harness != path {
        bail!(
            "the harness would start {} instead of {}; set MANTLE_BIN",
            harness.display(),
            path.display()
        );
    }
    Ok(path)
}

pub fn check_completed(e: &pb::Execution) -> Result<()> {
    if e.status != pb::ExecutionStatus::Completed as i32 {
        bail!(
            "execution {} ended {}: {}",
            e.id,
            execution_status_name(e.status),
            e.error
        );
    }
    Ok(())
}

const CREATE_PG: &str =
    "CREATE TABLE IF NOT EXISTS bench_commits (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)";
const INSERT: &str = "INSERT INTO bench_commits (v) VALUES ($1)";
const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS bench_commits \
     (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT NOT NULL)";

/// Tables shaped like a step's checkpoint (its attempt and its event, each keyed as the
/// daemon keys them): what one chain step costs the database alone.
const CREATE_STEP_ROWS_PG: &str = "CREATE TABLE IF NOT EXISTS bench_attempts (run UUID, \
     step_name TEXT, attempt INT, status TEXT, output TEXT, end_time TIMESTAMPTZ, \
     PRIMARY KEY (run, step_name, attempt)); \
     CREATE TABLE IF NOT EXISTS bench_events (run UUID, seq BIGINT, time TIMESTAMPTZ, \
     kind TEXT, step_name TEXT, status TEXT, PRIMARY KEY (run, seq))";
const CREATE_STEP_ROWS_SQLITE: &str = "CREATE TABLE IF NOT EXISTS bench_attempts (run BLOB, \
     step_name TEXT, attempt INT, status TEXT, output TEXT, end_time TEXT, \
     PRIMARY KEY (run, step_name, attempt)) WITHOUT ROWID; \
     CREATE TABLE IF NOT EXISTS bench_events (run BLOB, seq INT, time TEXT, kind TEXT, \
     step_name TEXT, status TEXT, PRIMARY KEY (run, seq)) WITHOUT ROWID;";
/// PostgreSQL: one statement, as the daemon writes a chain step.
const STEP_ROWS_PG: &str = "WITH a AS (INSERT INTO bench_attempts VALUES \
     ($1, $2, 1, 'completed', $3, now())) \
     INSERT INTO bench_events VALUES ($1, $4, now(), 'step_status', $2, 'completed')";
const STEP_ATTEMPT_SQLITE: &str =
    "INSERT INTO bench_attempts VALUES (?1, ?2, 1, 'completed', ?3, '2026-01-01T00:00:00Z')";
const STEP_EVENT_SQLITE: &str = "INSERT INTO bench_events VALUES \
     (?1, ?2, '2026-01-01T00:00:00Z', 'step_status', ?3, 'completed')";

/// One connection committing single-row INSERTs: the database's own commit latency.
pub enum CommitProbe {
    Postgres(sqlx::PgConnection),
    /// SQLite called directly on the calling thread, as the daemon's writer thread calls it:
    /// nothing but the database between one commit and the next.
    Sqlite(rusqlite::Connection),
}

const INSERT_SQLITE: &str = "INSERT INTO bench_commits (v) VALUES (?1)";

impl CommitProbe {
    /// PostgreSQL at `url`, else a SQLite file in the daemon's data dir (WAL,
    /// synchronous=FULL, as the daemon opens its own); the table made and warmed up.
    pub async fn open(url: Option<&str>, data_dir: &std::path::Path) -> Result<CommitProbe> {
        let mut probe = CommitProbe::connect(url, data_dir).await?;
        match &mut probe {
            CommitProbe::Postgres(c) => {
                sqlx::query(CREATE_PG).execute(&mut *c).await?;
                sqlx::raw_sql(CREATE_STEP_ROWS_PG).execute(c).await?;
            }
            CommitProbe::Sqlite(c) => {
                c.execute_batch(CREATE_SQLITE)?;
                c.execute_batch(CREATE_STEP_ROWS_SQLITE)?;
            }
        }
        for _ in 0..PROBE_WARM_UP {
            probe.commit("warm-up").await?;
        }
        probe.step_rows_latency(STEP_ROWS_ROUND).await?;
        Ok(probe)
    }

    /// A connection alone, to a table that exists.
    pub async fn connect(url: Option<&str>, data_dir: &std::path::Path) -> Result<CommitProbe> {
        Ok(match url {
            Some(url) => CommitProbe::Postgres(sqlx::PgConnection::connect(url).await?),
            None => CommitProbe::Sqlite(sqlite_connection(data_dir)?),
        })
    }

    pub async fn commit(&mut self, v: &str) -> Result<()> {
        match self {
            CommitProbe::Postgres(c) => {
                sqlx::query(INSERT).bind(v).execute(c).await?;
            }
            CommitProbe::Sqlite(c) => tokio::task::block_in_place(|| sqlite_commit(c, v))?,
        }
        Ok(())
    }

    /// Mean latency (ms) of the commits made during `round`, and how many ran.
    pub async fn latency(&mut self, round: Duration) -> Result<(f64, usize)> {
        let began = Instant::now();
        let mut n = 0usize;
        match self {
            CommitProbe::Postgres(_) => {
                while began.elapsed() < round {
                    self.commit("single-row commit").await?;
                    n += 1;
                }
            }
            CommitProbe::Sqlite(c) => tokio::task::block_in_place(|| {
                while began.elapsed() < round {
                    sqlite_commit(c, "single-row commit")?;
                    n += 1;
                }
                anyhow::Ok(())
            })?,
        }
        Ok((began.elapsed().as_secs_f64() * 1000.0 / n as f64, n))
    }

    /// Mean latency (ms) of commits of a step's two rows (an attempt and an event) during
    /// `round`: the database's own cost of one chain step's checkpoint.
    pub async fn step_rows_latency(&mut self, round: Duration) -> Result<f64> {
        let run = uuid::Uuid::new_v4();
        let output = r#"{"n":1}"#;
        let began = Instant::now();
        let mut n = 0i64;
        match self {
            CommitProbe::Postgres(c) => {
                while began.elapsed() < round {
                    n += 1;
                    sqlx::query(STEP_ROWS_PG)
                        .bind(run)
                        .bind(format!("s{n}"))
                        .bind(output)
                        .bind(n)
                        .execute(&mut *c)
                        .await?;
                }
            }
            CommitProbe::Sqlite(c) => tokio::task::block_in_place(|| {
                while began.elapsed() < round {
                    n += 1;
                    let step = format!("s{n}");
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.prepare_cached(STEP_ATTEMPT_SQLITE)?
                        .execute(rusqlite::params![run.as_bytes(), step, output])?;
                    tx.prepare_cached(STEP_EVENT_SQLITE)?
                        .execute(rusqlite::params![run.as_bytes(), n, step])?;
                    tx.commit()?;
                }
                anyhow::Ok(())
            })?,
        }
        Ok(began.elapsed().as_secs_f64() * 1000.0 / n as f64)
    }

    pub async fn close(self) -> Result<()> {
        if let CommitProbe::Postgres(c) = self {
            c.close().await?;
        }
        Ok(())
    }
}

/// The probe's SQLite file in the daemon's data dir, opened as the daemon opens its own.
pub fn sqlite_connection(data_dir: &std::path::Path) -> Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(data_dir.join("bench-commits.db"))?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    Ok(c)
}

/// One single-row INSERT, committed on its own (autocommit).
pub fn sqlite_commit(c: &rusqlite::Connection, v: &str) -> Result<()> {
    c.prepare_cached(INSERT_SQLITE)?.execute([v])?;
    Ok(())
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}
