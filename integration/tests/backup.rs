//! Restore drills, with the real binaries, on both stores: a daemon serves executions in
//! flight (a durable `core/sleep`, then an `http/request` step that uses a secret) while the
//! database is copied (`mantle backup` on SQLite, `pg_dump -Fc` on PostgreSQL); the daemon
//! is killed (-9); a new daemon on the restored copy, with the encryption key kept apart,
//! must find nothing pending in `mantle migrate status`, open the secret and finish every
//! execution that was in flight.
//!
//! PostgreSQL parts follow the harness's policy: skipped loudly when the server or its
//! client programs are missing, failed under CI=true.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mantle_integration::reliability::*;
use mantle_integration::*;
use pb::secret_service_client::SecretServiceClient;
use sqlx::Connection;

/// Executions in flight when the copy is taken.
const IN_FLIGHT: usize = 4;
/// How long each one sleeps before its call: longer than the copy and the kill take.
const NAP: &str = "8s";
/// How long the restored daemon may take to finish them.
const WAIT: Duration = Duration::from_secs(90);
/// The PostgreSQL daemons' key (SQLite generates its own key file).
const PG_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// The work a drill puts in flight, and what proves it resumed.
struct Work {
    /// The executions started, sleeping when the copy is taken.
    ids: Vec<String>,
    /// The secret's value, which the call sends as `Authorization: Bearer …`.
    value: String,
}

/// A secret, a workflow whose second step calls `server` with it, and [`IN_FLIGHT`]
/// executions of it, each asleep in its first step when this returns.
async fn start_work(daemon: &Daemon, server: &TestServer) -> Work {
    server.set("/call", Reply::json(200, serde_json::json!({"ok": true})));
    let value = random_name("backup-drill-token");
    let mut secrets = SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(RELIABILITY_TOKEN)),
    );
    expect_ok(
        secrets
            .create_secret(pb::CreateSecretRequest {
                name: "api-token".to_owned(),
                r#type: "bearer".to_owned(),
                fields: [("token".to_owned(), value.clone())].into(),
            })
            .await,
        "CreateSecret",
    );
    let mut m = Mantle::connect(daemon, RELIABILITY_TOKEN).await;
    m.apply(&format!(
        "name: drill\nsteps:\n  - name: nap\n    action: core/sleep\n    params: {{duration: \
         {NAP}}}\n  - name: call\n    action: http/request\n    credential: api-token\n    \
         depends_on: [nap]\n    params:\n      url: \"{}\"\n      headers: {{x-execution: \
         \"{{{{ execution.id }}}}\"}}\n",
        server.url("/call")
    ))
    .await;
    let mut ids = Vec::new();
    for _ in 0..IN_FLIGHT {
        ids.push(m.start_ok("drill", "").await.id);
    }
    for id in &ids {
        m.wait_until(
            id,
            Duration::from_secs(30),
            "asleep in nap",
            |_, attempts| {
                attempts
                    .iter()
                    .any(|a| a.step_name == "nap" && a.status == pb::StepStatus::Running as i32)
            },
        )
        .await;
    }
    Work { ids, value }
}

/// The restored copy (a connection to it, of either store) holds the secret, and every
/// execution of `work` unfinished: the copy was taken with them in flight. A macro: the
/// two stores' connections share no type.
macro_rules! assert_copy_in_flight {
    ($work:expr, $conn:expr) => {{
        let work: &Work = $work;
        let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM executions")
            .fetch_all(&mut *$conn)
            .await
            .expect("the copy's executions");
        let secrets: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE name = 'api-token'")
                .fetch_one(&mut *$conn)
                .await
                .expect("the copy's secrets");
        assert_eq!(secrets, 1, "the copy does not hold the secret");
        for id in &work.ids {
            let status = rows
                .iter()
                .find(|(row, _)| row.to_string() == *id)
                .map(|(_, status)| status.as_str());
            assert!(
                matches!(status, Some("pending" | "running")),
                "execution {id} is {status:?} in the copy, not in flight: the copy was not \
                 taken while it ran (or lost it)"
            );
        }
    }};
}

/// Every execution of `work` completes on `daemon`, its call sent with the restored secret
/// (requests to `server` after the first `hits_before`).
async fn assert_resumed(daemon: &Daemon, server: &TestServer, work: &Work, hits_before: usize) {
    let mut m = Mantle::connect(daemon, RELIABILITY_TOKEN).await;
    for id in &work.ids {
        let done = m.wait_terminal(id, WAIT).await;
        let attempts = m.attempts(id).await;
        assert_eq!(
            done.status,
            pb::ExecutionStatus::Completed as i32,
            "execution {id} did not complete after the restore: {done:?}\n{}\n{}",
            describe_attempts(&attempts),
            daemon.diagnostics()
        );
        let call = only_attempt(&attempts, "call");
        assert_eq!(
            json(&call.output_json)["status"],
            200,
            "execution {id}: the call's output: {}",
            call.output_json
        );
        let hits: Vec<Hit> = server.all_hits()[hits_before..]
            .iter()
            .filter(|h| h.headers.iter().any(|(k, v)| k == "x-execution" && v == id))
            .cloned()
            .collect();
        assert!(
            !hits.is_empty(),
            "execution {id}: no call reached the server after the restore"
        );
        for hit in hits {
            let auth = hit
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.as_str());
            assert_eq!(
                auth,
                Some(format!("Bearer {}", work.value).as_str()),
                "execution {id}: the call did not carry the restored secret"
            );
        }
    }
}

/// Runs `mantle ARGS` with `env` (and the default test key unless `env` sets another).
async fn mantle(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = mantle_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("mantle {args:?}: {e:#}"))
}

/// `mantle migrate status` succeeded and lists every migration `applied`.
fn assert_nothing_pending(status: &Output) {
    assert!(
        status.status.success(),
        "mantle migrate status on the restored database\n{}",
        describe_output(status)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        !rows.is_empty(),
        "migrate status lists no migration\n{}",
        describe_output(status)
    );
    for row in rows {
        assert_eq!(
            row.get(1).copied(),
            Some("applied"),
            "a migration of the restored database is not applied: {row:?}\n{}",
            describe_output(status)
        );
    }
}

/// A client program of PostgreSQL, or `None` after [`skip_or_fail`].
fn pg_program(test: &str, name: &str) -> Option<std::path::PathBuf> {
    let found = pg_tool(name);
    if found.is_none() {
        skip_or_fail(
            test,
            &format!("{name} not found in /usr/lib/postgresql/*/bin or PATH"),
        );
    }
    found
}

/// Runs a PostgreSQL client program, which must succeed.
async fn run_pg(program: &Path, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let output = run_with_timeout(cmd, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?}\n{}",
        program.display(),
        describe_output(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_while_serving_restores_in_flight_work() {
    use std::os::unix::fs::PermissionsExt;

    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    // No MANTLE_ENCRYPTION_KEY: the daemon generates its key file in the data dir.
    let opts = |data: &Path| {
        let mut o = reliability_options(None, "5s", "200ms").env("MANTLE_ENCRYPTION_KEY", "");
        o.data_dir = Some(data.to_owned());
        o
    };
    let mut daemon = Daemon::start_ok(opts(&live)).await;
    let work = start_work(&daemon, &server).await;

    // The copy, taken beside the serving daemon (which holds mantle.lock).
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let copy = dir.path().join("backups").join("mantle-copy.db");
    let copy_arg = copy.to_str().unwrap();
    let live_env = [
        ("MANTLE_DATA_DIR", live.to_str().unwrap()),
        ("MANTLE_ENCRYPTION_KEY", ""),
    ];
    let backup = mantle(&["backup", "--output", copy_arg], &live_env).await;
    assert!(
        backup.status.success(),
        "mantle backup beside a serving daemon\n{}\n{}",
        describe_output(&backup),
        daemon.diagnostics()
    );
    let meta = std::fs::metadata(&copy).expect("the backup file");
    let stdout = String::from_utf8_lossy(&backup.stdout);
    assert!(
        stdout.contains(copy_arg) && stdout.contains(&format!("{} bytes", meta.len())),
        "mantle backup does not say what it wrote (path, bytes)\n{}",
        describe_output(&backup)
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the backup is readable by others"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "files beside the backup: {leftovers:?}");

    // Never over an existing file: refused, and the copy is left as it was.
    let bytes = std::fs::read(&copy).unwrap();
    let again = mantle(&["backup", "--output", copy_arg], &live_env).await;
    assert_eq!(again.status.code(), Some(64), "{}", describe_output(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        describe_output(&again)
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        bytes,
        "a refused backup changed the file"
    );

    daemon.sigkill().await.expect("SIGKILL");
    let hits_before = server.all_hits().len();

    // The copy as it is: the secret, and the executions in flight.
    {
        let mut conn = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}?mode=ro&immutable=1",
            copy.display()
        ))
        .await
        .expect("opening the copy");
        assert_copy_in_flight!(&work, &mut conn);
        let _ = conn.close().await;
    }

    // The key, kept apart from the database copies.
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::copy(live.join("encryption-key"), keys.join("encryption-key")).unwrap();

    // The copy alone does not open the secrets: a new key would be generated and refused.
    let keyless = dir.path().join("keyless");
    std::fs::create_dir(&keyless).unwrap();
    std::fs::copy(&copy, keyless.join("mantle.db")).unwrap();
    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATA_DIR", &keyless)
        .env("MANTLE_ENCRYPTION_KEY", "");
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(
        code,
        Some(64),
        "a daemon on the copy without its key\n{stderr}"
    );
    assert!(
        lines.len() == 1 && lines[0].contains("key id"),
        "a daemon on the copy without its key: {stderr}"
    );

    // Restore: a data dir holding only the copy as mantle.db, and the saved key file.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::copy(&copy, restored.join("mantle.db")).unwrap();
    std::fs::copy(keys.join("encryption-key"), restored.join("encryption-key")).unwrap();
    let restored_env = [
        ("MANTLE_DATA_DIR", restored.to_str().unwrap()),
        ("MANTLE_ENCRYPTION_KEY", ""),
    ];
    assert_nothing_pending(&mantle(&["migrate", "status"], &restored_env).await);

    let daemon = Daemon::start_ok(opts(&restored)).await;
    assert_resumed(&daemon, &server, &work, hits_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dump_while_serving_restores_in_flight_work() {
    const TEST: &str = "postgres_dump_while_serving_restores_in_flight_work";
    let Some(source) = PgDatabase::create(TEST).await else {
        return;
    };
    let (Some(pg_dump), Some(pg_restore), Some(createdb)) = (
        pg_program(TEST, "pg_dump"),
        pg_program(TEST, "pg_restore"),
        pg_program(TEST, "createdb"),
    ) else {
        return;
    };
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = |url: &str, data: &str| {
        let mut o =
            reliability_options(Some(url), "2s", "200ms").env("MANTLE_ENCRYPTION_KEY", PG_KEY);
        o.data_dir = Some(dir.path().join(data));
        o
    };
    let mut daemon = Daemon::start_ok(opts(&source.url, "a")).await;
    let work = start_work(&daemon, &server).await;

    // mantle backup is SQLite's: on PostgreSQL it points to pg_dump.
    let data_a = dir.path().join("a");
    let refused = mantle(
        &[
            "backup",
            "--output",
            dir.path().join("copy.db").to_str().unwrap(),
        ],
        &[
            ("MANTLE_DATABASE_URL", &source.url),
            ("MANTLE_DATA_DIR", data_a.to_str().unwrap()),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("pg_dump -Fc")
            && stderr.contains("docs/backup.md"),
        "mantle backup on PostgreSQL\n{}",
        describe_output(&refused)
    );
    assert!(!dir.path().join("copy.db").exists());

    // The dump, while the executions sleep.
    let dump = dir.path().join("mantle.dump");
    run_pg(
        &pg_dump,
        &["-Fc", "-d", &source.url, "-f", dump.to_str().unwrap()],
    )
    .await;
    daemon.sigkill().await.expect("SIGKILL");
    let hits_before = server.all_hits().len();

    // Restore into a new database.
    let restored = source.sibling();
    run_pg(
        &createdb,
        &[&format!("--maintenance-db={}", source.url), &restored.name],
    )
    .await;
    run_pg(
        &pg_restore,
        &["--no-owner", "-d", &restored.url, dump.to_str().unwrap()],
    )
    .await;
    {
        let mut conn = restored.connect().await;
        assert_copy_in_flight!(&work, &mut conn);
        let _ = conn.close().await;
    }

    let data_c = dir.path().join("c");
    let env = [
        ("MANTLE_DATABASE_URL", restored.url.as_str()),
        ("MANTLE_ENCRYPTION_KEY", PG_KEY),
        ("MANTLE_DATA_DIR", data_c.to_str().unwrap()),
    ];
    let init = mantle(&["init"], &env).await;
    assert!(
        init.status.success(),
        "mantle init on the restored database\n{}",
        describe_output(&init)
    );
    assert_nothing_pending(&mantle(&["migrate", "status"], &env).await);

    let daemon = Daemon::start_ok(opts(&restored.url, "b")).await;
    assert_resumed(&daemon, &server, &work, hits_before).await;
    drop(daemon);
    drop(restored);
    drop(source);
}
