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
