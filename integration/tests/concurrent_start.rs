//! Several daemons starting at once on one fresh PostgreSQL database.

use mantle_integration::*;

#[tokio::test(flavor = "multi_thread")]
async fn three_daemons_migrate_one_database_once() {
    let Some(db) = PgDatabase::create("three_daemons_migrate_one_database_once").await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        Daemon::start(DaemonOptions::postgres(&db.url)),
        Daemon::start(DaemonOptions::postgres(&db.url)),
        Daemon::start(DaemonOptions::postgres(&db.url)),
    );
    let daemons: Vec<Daemon> = [a, b, c]
        .into_iter()
        .enumerate()
        .map(|(i, d)| d.unwrap_or_else(|err| panic!("daemon {i} did not come up: {err:#}")))
        .collect();

    for (i, daemon) in daemons.iter().enumerate() {
        for service in std::iter::once("").chain(SERVICES) {
            assert_eq!(
                daemon.health_status(service).await.expect("health"),
                ServingStatus::Serving,
                "daemon {i}: health of {service:?}"
            );
        }
        assert_eq!(
            daemon
                .stdout_lines()
                .iter()
                .filter(|l| l.starts_with("mantle listening on "))
                .count(),
            1,
            "daemon {i} must print exactly one listening line"
        );
    }

    let mut conn = db.connect().await;
    let (rows, versions, all_success): (i64, i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version), bool_and(success) FROM _sqlx_migrations",
    )
    .fetch_one(&mut conn)
    .await
    .expect("querying _sqlx_migrations");
    assert!(rows > 0, "no migrations recorded in _sqlx_migrations");
    assert_eq!(
        rows, versions,
        "_sqlx_migrations has {rows} rows for {versions} distinct versions"
    );
    assert_eq!(
        all_success,
        Some(true),
        "some migration is not marked success"
    );

    // All three share the data: a tenant created through one is visible through the others.
    let operator = admin_key_create(&db.url, "it-concurrent").await;
    let name = random_name("shared");
    expect_ok(
        daemons[0]
            .tenants(Some(&operator))
            .await
            .create_tenant(pb::CreateTenantRequest {
                name: name.clone(),
                display_name: String::new(),
                ..Default::default()
            })
            .await,
        "CreateTenant via daemon 0",
    );
    for (i, daemon) in daemons.iter().enumerate().skip(1) {
        expect_ok(
            daemon
                .tenants(Some(&operator))
                .await
                .get_tenant(pb::GetTenantRequest { name: name.clone() })
                .await,
            &format!("GetTenant via daemon {i}"),
        );
    }
}

/// An upgrade whose migrations build indexes CONCURRENTLY on a large table, run by three
/// `mantle init` at once: the ones waiting for the migration lock must not hold a snapshot
/// the index build waits for (PostgreSQL would fail one of them as a deadlock, leaving an
/// INVALID index the next attempt trips on). All three succeed, every index is valid.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_index_builds_of_an_upgrade_do_not_deadlock() {
    let Some(db) = PgDatabase::create("concurrent_index_builds").await else {
        return;
    };
    let init = || {
        let mut cmd = mantle_command();
        cmd.arg("init")
            .env("MANTLE_DATABASE_URL", &db.url)
            .env("MANTLE_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY);
        run_with_timeout(cmd, std::time::Duration::from_secs(240))
    };
    let first = init().await.expect("mantle init");
    assert!(first.status.success(), "{}", describe_output(&first));

    // Back to the schema before the index migrations, with a large executions table.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/migrations/postgres");
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let sql = std::fs::read_to_string(&path).unwrap();
        if sql.contains("CREATE INDEX CONCURRENTLY") {
            let version: i64 = name[..4].parse().unwrap();
            let index = sql
                .split("CREATE INDEX CONCURRENTLY ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap()
                .to_owned();
            indexes.push((version, index));
        }
    }
    assert!(indexes.len() >= 4, "index migrations found: {indexes:?}");
    let mut conn = db.connect().await;
    for (version, index) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {index}")))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(version)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for sql in [
        "INSERT INTO workflows (tenant_id, name, latest_version, create_time, update_time) \
         SELECT id, 'wf', 1, now(), now() FROM tenants WHERE name = 'default'",
        "INSERT INTO workflow_versions (tenant_id, name, version, content_hash, spec, source, \
         create_time) SELECT id, 'wf', 1, 'h', '{}', 'x', now() FROM tenants WHERE name = 'default'",
        "INSERT INTO executions (id, tenant_id, workflow, version, status, inputs, trigger_info, \
         create_time, end_time) SELECT gen_random_uuid(), t.id, 'wf', 1, 'completed', '{}', '{}', \
         now(), now() FROM tenants t, generate_series(1, 600000) WHERE t.name = 'default'",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    let (a, b, c) = tokio::join!(init(), init(), init());
    for (i, out) in [a, b, c].into_iter().enumerate() {
        let out = out.expect("mantle init");
        assert!(
            out.status.success(),
            "init {i} failed\n{}",
            describe_output(&out)
        );
    }
    let (invalid, applied): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_index WHERE NOT indisvalid), \
         (SELECT count(*) FROM _sqlx_migrations WHERE success)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(invalid, 0, "invalid indexes left behind");
    let known = std::fs::read_dir(&dir).unwrap().count() as i64;
    assert_eq!(applied, known, "migrations recorded");
}
