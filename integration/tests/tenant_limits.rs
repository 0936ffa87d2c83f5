//! Tenant settings enforced: steps per workflow (at apply and at start), run time, and the
//! allowed domains of http/request — redirects included — plus the installation's caps.

use std::time::Duration;

use mantle_integration::*;
use mantle_proto::v1 as pb;

fn long_workflow(steps: usize) -> String {
    let mut s = String::from("name: long\nsteps:\n");
    for i in 0..steps {
        s.push_str(&format!(
            "  - name: s{i}\n    action: core/log\n    params: {{message: hi}}\n"
        ));
    }
    s
}

const SLEEPY: &str = "
name: sleepy
steps:
  - name: nap
    action: core/sleep
    params: {duration: 30s}
";

fn fetch(url: &str) -> String {
    format!(
        "name: fetch\nsteps:\n  - name: get\n    action: http/request\n    params: {{url: \"{url}\"}}\n"
    )
}

async fn tenant_with(daemon: &Daemon, operator: &str, settings: pb::TenantSettings) -> Mantle {
    let name = random_name("lim");
    let mut tenants = daemon.tenants(Some(operator)).await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: name.clone(),
            settings: Some(settings),
            ..Default::default()
        })
        .await
        .expect("create tenant");
    let token = create_api_key(daemon, operator, &name, &["*"]).await;
    Mantle::connect(daemon, &token).await
}

#[tokio::test]
async fn limits_are_enforced() {
    let daemon =
        Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"))
            .await;
    let operator = daemon.operator_token();

    // Steps per workflow: refused when applied, naming the limit.
    let mut m = tenant_with(
        &daemon,
        &operator,
        pb::TenantSettings {
            max_steps_per_workflow: 3,
            ..Default::default()
        },
    )
    .await;
    let err = m
        .defs
        .apply_definition(pb::ApplyDefinitionRequest {
            source: long_workflow(4),
            ..Default::default()
        })
        .await
        .expect_err("4 steps over a limit of 3");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("4 steps") && err.message().contains("at most 3"),
        "{}",
        err.message()
    );
    m.apply(&long_workflow(3)).await;

    // Run time: a minute is too long to wait for in a test, so read the deadline the engine
    // stored for the execution: its start plus the tenant's one minute, although the
    // workflow itself has no timeout.
    let mut r = tenant_with(
        &daemon,
        &operator,
        pb::TenantSettings {
            max_runtime_minutes: 1,
            ..Default::default()
        },
    )
    .await;
    r.apply(SLEEPY).await;
    let started = r.start_ok("sleepy", "").await;
    let db = format!("sqlite://{}", daemon.data_dir().join("mantle.db").display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db)
        .await
        .expect("open the daemon's database");
    let id: uuid::Uuid = started.id.parse().unwrap();
    let (created, deadline): (
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as("SELECT create_time, deadline FROM executions WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .expect("the execution row");
    let deadline = deadline.expect("a deadline from the tenant's max_runtime_minutes");
    assert_eq!((deadline - created).num_seconds(), 60);
    r.execs
        .cancel_execution(pb::CancelExecutionRequest {
            id: started.id.clone(),
        })
        .await
        .expect("cancel");

    // Allowed domains: `localhost` only. The same server by IP is refused, before any
    // request, with the host named; a redirect from localhost to 127.0.0.1 is stopped.
    let server = TestServer::start().await;
    server.route(
        "/ok",
        vec![Reply::json(200, serde_json::json!({"ok": true}))],
    );
    let port = server.addr.port();
    server.route(
        "/hop",
        vec![Reply::redirect(&format!("http://127.0.0.1:{port}/ok"))],
    );
    let mut d = tenant_with(
        &daemon,
        &operator,
        pb::TenantSettings {
            allowed_domains: vec!["localhost".into()],
            ..Default::default()
        },
    )
    .await;
    d.apply(&fetch(&format!("http://localhost:{port}/ok")))
        .await;
    let (e, _) = d.run("fetch", "", Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Completed as i32, "{e:?}");

    d.apply(&fetch(&format!("http://127.0.0.1:{port}/ok")))
        .await;
    let (e, attempts) = d.run("fetch", "", Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Failed as i32, "{e:?}");
    assert!(
        attempts.iter().any(|a| a
            .error
            .contains("host 127.0.0.1 is not in the tenant's allowed domains")),
        "{attempts:?}"
    );

    let before = server.count("/ok");
    d.apply(&fetch(&format!("http://localhost:{port}/hop")))
        .await;
    let (e, attempts) = d.run("fetch", "", Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Failed as i32, "{e:?}");
    assert!(
        attempts.iter().any(|a| a.error.contains("redirect to")
            && a.error.contains("not in the tenant's allowed domains")),
        "{attempts:?}"
    );
    assert_eq!(
        server.count("/ok"),
        before,
        "the disallowed redirect target was never requested"
    );

    // Settings can be changed field by field and cleared.
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let name = tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .find(|t| {
            t.settings
                .as_ref()
                .is_some_and(|s| s.max_steps_per_workflow == 3)
        })
        .expect("the limited tenant")
        .name;
    let updated = tenants
        .update_tenant(pb::UpdateTenantRequest {
            name,
            settings: Some(pb::TenantSettings {
                max_steps_per_workflow: 0,
                ..Default::default()
            }),
            settings_mask: Some(prost_types::FieldMask {
                paths: vec!["max_steps_per_workflow".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.settings.unwrap().max_steps_per_workflow, 0);
    m.apply(&long_workflow(4)).await;
    let bad = tenants
        .update_tenant(pb::UpdateTenantRequest {
            name: "default".into(),
            settings: Some(pb::TenantSettings {
                allowed_domains: vec!["not a host".into()],
                ..Default::default()
            }),
            settings_mask: Some(prost_types::FieldMask {
                paths: vec!["allowed_domains".into()],
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad domain");
    assert!(
        bad.message().starts_with("settings.allowed_domains:"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn global_caps_bound_every_tenant() {
    let daemon = Daemon::start_ok(
        DaemonOptions::sqlite()
            .env("MANTLE_MAX_STEPS_PER_WORKFLOW", "2")
            .env("MANTLE_MAX_RUNTIME_MINUTES", "1"),
    )
    .await;
    let operator = daemon.operator_token();
    // A tenant setting above the global cap does not lift it.
    let mut m = tenant_with(
        &daemon,
        &operator,
        pb::TenantSettings {
            max_steps_per_workflow: 10,
            ..Default::default()
        },
    )
    .await;
    let err = m
        .defs
        .apply_definition(pb::ApplyDefinitionRequest {
            source: long_workflow(3),
            ..Default::default()
        })
        .await
        .expect_err("3 steps over the global cap of 2");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("at most 2"), "{}", err.message());
}
