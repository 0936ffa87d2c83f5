//! `mantle init`, `mantle migrate status` and `mantle admin-key create`.

use std::path::Path;
use std::time::Duration;

use mantle_integration::*;
use sqlx::Connection;

async fn mantle(
    args: &[&str],
    data_dir: &Path,
    database_url: Option<&str>,
) -> std::process::Output {
    let mut cmd = mantle_command();
    cmd.args(args).env("MANTLE_DATA_DIR", data_dir);
    if let Some(url) = database_url {
        cmd.env("MANTLE_DATABASE_URL", url);
    }
    run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .unwrap_or_else(|err| panic!("mantle {args:?}: {err:#}"))
}

/// `migrate status` after `init`: every recorded version is listed as applied, none pending.
fn assert_all_applied(status: &std::process::Output, versions: &[i64]) {
    assert!(
        status.status.success(),
        "mantle migrate status failed\n{}",
        describe_output(status)
    );
    let stdout = String::from_utf8_lossy(&status.stdout).to_lowercase();
    assert!(
        !versions.is_empty(),
        "no migrations recorded after mantle init"
    );
    for version in versions {
        let version = version.to_string();
        let line = stdout
            .lines()
            .find(|l| {
                l.split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|word| word == version)
            })
            .unwrap_or_else(|| {
                panic!(
                    "migrate status does not list migration {version}\n{}",
                    describe_output(status)
                )
            });
        assert!(
            line.contains("applied") && !line.contains("pending") && !line.contains("not applied"),
            "migrate status does not show migration {version} as applied: {line:?}\n{}",
            describe_output(status)
        );
    }
    for line in stdout.lines() {
        let pending_row = line.contains("pending")
            && !line.contains(" 0 pending")
            && !line.contains("pending: 0")
            && !line.contains("0 pending")
            && !line.contains("no pending");
        assert!(
            !pending_row,
            "migrate status reports something pending after init: {line:?}\n{}",
            describe_output(status)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_and_migrate_status_sqlite() {
    let data = tempfile::tempdir().unwrap();

    let before = mantle(&["migrate", "status"], data.path(), None).await;
    assert!(
        before.status.success(),
        "migrate status on a fresh store\n{}",
        describe_output(&before)
    );
    assert!(
        String::from_utf8_lossy(&before.stdout)
            .to_lowercase()
            .contains("pending"),
        "migrate status on a fresh store lists nothing pending\n{}",
        describe_output(&before)
    );

    let init = mantle(&["init"], data.path(), None).await;
    assert!(
        init.status.success(),
        "mantle init\n{}",
        describe_output(&init)
    );
    let again = mantle(&["init"], data.path(), None).await;
    assert!(
        again.status.success(),
        "a second mantle init must succeed\n{}",
        describe_output(&again)
    );

    let db_path = data.path().join("mantle.db");
    assert!(
        db_path.is_file(),
        "mantle init did not create {}",
        db_path.display()
    );
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db_path.display()))
            .await
            .expect("opening mantle.db");
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("reading _sqlx_migrations");
    let _ = conn.close().await;
    let versions: Vec<i64> = versions.into_iter().map(|(v,)| v).collect();

    let status = mantle(&["migrate", "status"], data.path(), None).await;
    assert_all_applied(&status, &versions);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_migrate_status_and_admin_key_postgres() {
    let Some(db) = PgDatabase::create("init_migrate_status_and_admin_key_postgres").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();

    let before = mantle(&["migrate", "status"], data.path(), Some(&db.url)).await;
    assert!(
        before.status.success(),
        "migrate status on a fresh database\n{}",
        describe_output(&before)
    );
    assert!(
        String::from_utf8_lossy(&before.stdout)
            .to_lowercase()
            .contains("pending"),
        "migrate status on a fresh database lists nothing pending\n{}",
        describe_output(&before)
    );

    let init = mantle(&["init"], data.path(), Some(&db.url)).await;
    assert!(
        init.status.success(),
        "mantle init\n{}",
        describe_output(&init)
    );
    assert!(
        !data.path().join("mantle.db").exists(),
        "mantle init on PostgreSQL created a SQLite file"
    );

    let mut conn = db.connect().await;
    let versions: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("reading _sqlx_migrations");
    let _ = conn.close().await;
    let versions: Vec<i64> = versions.into_iter().map(|(v,)| v).collect();

    let status = mantle(&["migrate", "status"], data.path(), Some(&db.url)).await;
    assert_all_applied(&status, &versions);

    // admin-key create prints one token that works against a daemon on that database.
    let token = admin_key_create(&db.url, "it-admin").await;
    let daemon = Daemon::start_ok(DaemonOptions::postgres(&db.url)).await;
    assert!(
        daemon.operator_token.is_none(),
        "a daemon on PostgreSQL wrote an operator-token file (zero-config is for SQLite only)"
    );
    let info = expect_ok(
        daemon
            .system(Some(&token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo with the admin-key token",
    );
    assert_eq!(info.database, "postgres");
    let caller = info.caller.expect("caller");
    assert!(
        caller.operator,
        "admin-key token is not an operator: {caller:?}"
    );

    let name = random_name("admin");
    expect_ok(
        daemon
            .tenants(Some(&token))
            .await
            .create_tenant(pb::CreateTenantRequest {
                name: name.clone(),
                display_name: String::new(),
                ..Default::default()
            })
            .await,
        "CreateTenant with the admin-key token",
    );
    let keys = expect_ok(
        daemon
            .tenants(Some(&token))
            .await
            .list_api_keys(pb::ListApiKeysRequest::default())
            .await,
        "ListApiKeys (operator keys)",
    );
    assert!(
        keys.api_keys
            .iter()
            .any(|k| k.id == caller.key_id && k.name == "it-admin" && k.tenant.is_empty()),
        "the admin key is not among the operator keys: {keys:?}"
    );
    assert!(
        token.starts_with(&format!("mntl_{}_", caller.key_id)),
        "admin-key token {token:?} does not start with mntl_<its key id {:?}>_",
        caller.key_id
    );
    assert!(
        is_api_key_token(&token),
        "admin-key token {token:?} is not of the form mntl_<32 hex id>_<64 hex secret>"
    );
}

/// A migration no binary of this version knows, as a newer binary would have recorded it.
const FUTURE: i64 = 99_991_231_235_959;

/// On a database a newer binary migrated (a row of `_sqlx_migrations` this binary does not
/// know): `migrate status` lists it `unknown` and exits 65 saying what to do, and `init`
/// and `serve` refuse with the same code and message before changing anything.
async fn refuses_a_newer_schema(data_dir: &Path, database_url: Option<&str>) {
    let status = mantle(&["migrate", "status"], data_dir, database_url).await;
    assert_eq!(
        status.status.code(),
        Some(65),
        "{}",
        describe_output(&status)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with(&FUTURE.to_string()))
        .unwrap_or_else(|| panic!("migrate status does not list {FUTURE}\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1), Some(&"unknown"), "{stdout}");
    assert_eq!(row.last(), Some(&"future"), "{stdout}");
    assert!(
        stdout
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with(&FUTURE.to_string()))
            .all(|l| l.split_whitespace().nth(1) == Some("applied")),
        "the known migrations are not all applied\n{stdout}"
    );
    let expected = format!(
        "the database schema is newer than this binary (migration {FUTURE} \"from the future\""
    );
    let says_what_to_do = |stderr: &str| {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("mantle: error:"))
            .collect();
        lines.len() == 1 && lines[0].contains(&expected) && lines[0].contains("restore a backup")
    };
    assert!(
        says_what_to_do(&String::from_utf8_lossy(&status.stderr)),
        "{}",
        describe_output(&status)
    );

    let init = mantle(&["init"], data_dir, database_url).await;
    assert_eq!(init.status.code(), Some(65), "{}", describe_output(&init));
    assert!(
        says_what_to_do(&String::from_utf8_lossy(&init.stderr)),
        "{}",
        describe_output(&init)
    );

    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATA_DIR", data_dir);
    if let Some(url) = database_url {
        cmd.env("MANTLE_DATABASE_URL", url);
    }
    let (code, _, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(65), "{stderr}");
    assert!(says_what_to_do(&stderr), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_schema_is_refused_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let init = mantle(&["init"], data.path(), None).await;
    assert!(init.status.success(), "{}", describe_output(&init));
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        data.path().join("mantle.db").display()
    ))
    .await
    .expect("opening mantle.db");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from the future', TRUE, X'00', 0)",
    )
    .bind(FUTURE)
    .execute(&mut conn)
    .await
    .expect("recording a future migration");
    let _ = conn.close().await;
    refuses_a_newer_schema(data.path(), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_schema_is_refused_postgres() {
    let Some(db) = PgDatabase::create("newer_schema_is_refused_postgres").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let init = mantle(&["init"], data.path(), Some(&db.url)).await;
    assert!(init.status.success(), "{}", describe_output(&init));
    let mut conn = db.connect().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from the future', TRUE, '\\x00'::bytea, 0)",
    )
    .bind(FUTURE)
    .execute(&mut conn)
    .await
    .expect("recording a future migration");
    let _ = conn.close().await;
    refuses_a_newer_schema(data.path(), Some(&db.url)).await;
}
