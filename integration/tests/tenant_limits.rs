//! Tenant settings enforced: steps per workflow (at apply and at start), run time, and the
//! allowed domains of http/request — redirects included — plus the installation's caps; and
//! the settings of ai/completion set, read and cleared through gRPC and mantlectl.

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

/// `mantlectl --address <daemon> --token <token> <args> -o json`, which must succeed.
async fn mantlectl_json(daemon: &Daemon, token: &str, args: &[&str]) -> serde_json::Value {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = mantlectl_command(home.path());
    cmd.arg("--address")
        .arg(daemon.addr.to_string())
        .arg("--token")
        .arg(token)
        .env("MANTLE_DATA_DIR", home.path().join("no-data"))
        .args(args)
        .args(["-o", "json"]);
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .unwrap_or_else(|err| panic!("mantlectl {args:?}: {err:#}"));
    assert!(
        output.status.success(),
        "mantlectl {args:?} failed\n{}",
        describe_output(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "mantlectl {args:?}: stdout is not JSON ({err})\n{}",
            describe_output(&output)
        )
    })
}

/// The settings of tenant `name`, read through gRPC.
async fn settings_of(daemon: &Daemon, operator: &str, name: &str) -> pb::TenantSettings {
    daemon
        .tenants(Some(operator))
        .await
        .get_tenant(pb::GetTenantRequest {
            name: name.to_owned(),
        })
        .await
        .expect("get tenant")
        .into_inner()
        .settings
        .expect("settings")
}

fn credentials(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The settings of ai/completion (a cost cap per execution, a daily token cap, default
/// credentials by provider) are set, read and cleared through gRPC and mantlectl; a bad
/// one is refused naming the field; a secret named need not exist.
async fn ai_settings_round_trip(daemon: &Daemon, operator: &str) {
    let name = random_name("ai");
    let mut tenants = daemon.tenants(Some(operator)).await;

    // gRPC: set at creation (no secret `my-openai-key` exists), read back.
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: name.clone(),
            settings: Some(pb::TenantSettings {
                max_cost_usd_per_execution: 2.5,
                max_tokens_per_day: 100_000,
                default_credentials: credentials(&[("openai", "my-openai-key")]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create tenant");
    let s = settings_of(daemon, operator, &name).await;
    assert_eq!(
        (
            s.max_cost_usd_per_execution,
            s.max_tokens_per_day,
            s.default_credentials
        ),
        (2.5, 100_000, credentials(&[("openai", "my-openai-key")]))
    );

    // Bad values are refused, naming the field.
    for (settings, path, message) in [
        (
            pb::TenantSettings {
                default_credentials: credentials(&[("x", "key")]),
                ..Default::default()
            },
            "default_credentials",
            "settings.default_credentials: unknown provider \"x\"; expected openai or anthropic",
        ),
        (
            pb::TenantSettings {
                default_credentials: credentials(&[("openai", "Bad Name")]),
                ..Default::default()
            },
            "default_credentials",
            "settings.default_credentials: openai: \"Bad Name\" is not a valid secret name",
        ),
        (
            pb::TenantSettings {
                max_cost_usd_per_execution: -1.0,
                ..Default::default()
            },
            "max_cost_usd_per_execution",
            "settings.max_cost_usd_per_execution:",
        ),
    ] {
        let err = tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: name.clone(),
                settings: Some(settings),
                settings_mask: Some(prost_types::FieldMask {
                    paths: vec![path.into()],
                }),
                ..Default::default()
            })
            .await
            .expect_err(message);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(message), "{}", err.message());
    }

    // mantlectl: change the token cap and the credentials of each provider (one added,
    // one removed); the cost cap is left as it is.
    let updated = mantlectl_json(
        daemon,
        operator,
        &[
            "tenants",
            "update",
            &name,
            "--max-tokens-per-day",
            "5000",
            "--default-credential",
            "anthropic=claude-key",
            "--default-credential",
            "openai=",
        ],
    )
    .await;
    assert_eq!(updated["max_cost_usd_per_execution"], 2.5, "{updated}");
    assert_eq!(updated["max_tokens_per_day"], 5000, "{updated}");
    assert_eq!(
        updated["default_credentials"],
        serde_json::json!({"anthropic": "claude-key"}),
        "{updated}"
    );
    let shown = mantlectl_json(daemon, operator, &["tenants", "get", &name]).await;
    assert_eq!(shown, updated);
    let s = settings_of(daemon, operator, &name).await;
    assert_eq!(
        (
            s.max_cost_usd_per_execution,
            s.max_tokens_per_day,
            s.default_credentials
        ),
        (2.5, 5000, credentials(&[("anthropic", "claude-key")]))
    );

    // mantlectl clears them: 0 and --clear-default-credentials.
    let cleared = mantlectl_json(
        daemon,
        operator,
        &[
            "tenants",
            "update",
            &name,
            "--max-cost-usd-per-execution",
            "0",
            "--max-tokens-per-day",
            "0",
            "--clear-default-credentials",
        ],
    )
    .await;
    assert_eq!(cleared["max_cost_usd_per_execution"], 0.0, "{cleared}");
    assert_eq!(cleared["max_tokens_per_day"], 0, "{cleared}");
    assert_eq!(
        cleared["default_credentials"],
        serde_json::json!({}),
        "{cleared}"
    );
    assert_eq!(
        settings_of(daemon, operator, &name).await,
        pb::TenantSettings::default()
    );

    // Set by mantlectl, cleared by gRPC (0 and an empty map named in the mask).
    mantlectl_json(
        daemon,
        operator,
        &[
            "tenants",
            "update",
            &name,
            "--max-cost-usd-per-execution",
            "0.75",
            "--max-tokens-per-day",
            "1",
            "--default-credential",
            "openai=my-openai-key",
        ],
    )
    .await;
    let s = settings_of(daemon, operator, &name).await;
    assert_eq!(
        (s.max_cost_usd_per_execution, s.max_tokens_per_day),
        (0.75, 1)
    );
    let cleared = tenants
        .update_tenant(pb::UpdateTenantRequest {
            name: name.clone(),
            settings: Some(pb::TenantSettings::default()),
            settings_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "max_cost_usd_per_execution".into(),
                    "max_tokens_per_day".into(),
                    "default_credentials".into(),
                ],
            }),
            ..Default::default()
        })
        .await
        .expect("clear")
        .into_inner();
    assert_eq!(cleared.settings.unwrap(), pb::TenantSettings::default());
}

#[tokio::test]
async fn ai_settings_round_trip_sqlite() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    ai_settings_round_trip(&daemon, &operator).await;
}

#[tokio::test]
async fn ai_settings_round_trip_postgres() {
    let Some(db) = PgDatabase::create("ai_settings_round_trip_postgres").await else {
        return;
    };
    let daemon = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
    let operator = admin_key_create(&db.url, "ai-operator").await;
    ai_settings_round_trip(&daemon, &operator).await;
}
