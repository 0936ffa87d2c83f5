//! `mantlectl audit list` and `mantlectl webhooks deliveries` against a real daemon: the
//! server-side filters (result, action prefix, actor, since; status, execution), tenant
//! scoping, limits, and bad filter values named in the error.

use std::process::Output;
use std::time::Duration;

use chrono::{SecondsFormat, TimeDelta, Utc};
use mantle_integration::*;
use mantle_proto::v1 as pb;
use serde_json::Value;

const WF: &str = "
name: hooked
steps:
  - name: a
    action: core/set
    params: {x: 1}
";

/// Runs mantlectl against one daemon with an explicit token.
struct Ctl<'a> {
    daemon: &'a Daemon,
    home: tempfile::TempDir,
}

impl<'a> Ctl<'a> {
    fn new(daemon: &'a Daemon) -> Ctl<'a> {
        Ctl {
            daemon,
            home: tempfile::tempdir().unwrap(),
        }
    }

    async fn run(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = mantlectl_command(self.home.path());
        cmd.arg("--address")
            .arg(self.daemon.addr.to_string())
            .arg("--token")
            .arg(token)
            .env("MANTLE_DATA_DIR", self.home.path().join("no-data"))
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(60))
            .await
            .unwrap_or_else(|err| panic!("mantlectl {args:?}: {err:#}"))
    }

    async fn ok(&self, token: &str, args: &[&str]) -> String {
        let output = self.run(token, args).await;
        assert!(
            output.status.success(),
            "mantlectl {args:?} failed\n{}",
            describe_output(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The JSON list `mantlectl <args> -o json` prints.
    async fn list(&self, token: &str, args: &[&str]) -> Vec<Value> {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let stdout = self.ok(token, &full).await;
        match serde_json::from_str(&stdout) {
            Ok(Value::Array(items)) => items,
            other => panic!("mantlectl {full:?}: not a JSON list ({other:?}):\n{stdout}"),
        }
    }

    /// Runs a command that must fail; returns its exit code and stderr.
    async fn fails(&self, token: &str, args: &[&str]) -> (i32, String) {
        let output = self.run(token, args).await;
        assert!(
            !output.status.success(),
            "mantlectl {args:?} succeeded\n{}",
            describe_output(&output)
        );
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The `key` field of every item.
fn field<'a>(items: &'a [Value], key: &str) -> Vec<&'a str> {
    items
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default())
        .collect()
}

fn key_id(token: &str) -> String {
    token.split('_').nth(1).unwrap().to_owned()
}

async fn tenant_id(daemon: &Daemon, operator: &str, name: &str) -> uuid::Uuid {
    let mut tenants = daemon.tenants(Some(operator)).await;
    let tenant = expect_ok(
        tenants
            .get_tenant(pb::GetTenantRequest {
                name: name.to_owned(),
            })
            .await,
        "GetTenant",
    );
    tenant.id.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_list_filters_by_result_action_actor_and_time_within_the_tenant() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let (a, b) = (random_name("aud-a"), random_name("aud-b"));
    create_tenant(&daemon, &operator, &a).await;
    create_tenant(&daemon, &operator, &b).await;
    let token_a = create_api_key(&daemon, &operator, &a, &["*"]).await;
    let reader_a = create_api_key(&daemon, &operator, &a, &["definitions:read"]).await;
    let token_b = create_api_key(&daemon, &operator, &b, &["*"]).await;

    // Tenant a: an apply (OK), a delete of nothing (NOT_FOUND), an apply without the scope
    // (PERMISSION_DENIED), a secret created (secret.create, OK).
    let mut m = Mantle::connect(&daemon, &token_a).await;
    m.apply(WF).await;
    let missing = pb::DeleteDefinitionRequest {
        name: "missing".into(),
    };
    assert_code(
        m.defs.delete_definition(missing.clone()).await,
        tonic::Code::NotFound,
        "delete a missing workflow",
    );
    let mut reader = Mantle::connect(&daemon, &reader_a).await;
    assert_code(
        reader
            .defs
            .apply_definition(pb::ApplyDefinitionRequest {
                source: WF.into(),
                filename: String::new(),
            })
            .await,
        tonic::Code::PermissionDenied,
        "apply without definitions:write",
    );
    let mut secrets = pb::secret_service_client::SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(&token_a)),
    );
    expect_ok(
        secrets
            .create_secret(pb::CreateSecretRequest {
                name: "s1".into(),
                r#type: "generic".into(),
                fields: [("k".to_owned(), "v".to_owned())].into(),
            })
            .await,
        "CreateSecret",
    );
    // Tenant b: an apply (OK) and a refused delete.
    let mut mb = Mantle::connect(&daemon, &token_b).await;
    mb.apply(WF).await;
    assert_code(
        mb.defs.delete_definition(missing.clone()).await,
        tonic::Code::NotFound,
        "delete a missing workflow in b",
    );
    // Recording happens just after the answer.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ctl = Ctl::new(&daemon);
    let all_a = ctl.list(&token_a, &["audit", "list"]).await;
    assert!(field(&all_a, "tenant").iter().all(|t| *t == a), "{all_a:?}");
    assert!(field(&all_a, "result").contains(&"OK"), "{all_a:?}");

    // --result refused: only the refusals, of the key's own tenant.
    let refused = ctl
        .list(&token_a, &["audit", "list", "--result", "refused"])
        .await;
    let mut results = field(&refused, "result");
    results.sort();
    assert_eq!(results, ["NOT_FOUND", "PERMISSION_DENIED"], "{refused:?}");
    assert!(field(&refused, "tenant").iter().all(|t| *t == a));
    let denied = ctl
        .list(
            &token_a,
            &["audit", "list", "--result", "permission_denied"],
        )
        .await;
    assert_eq!(field(&denied, "actor"), [key_id(&reader_a)], "{denied:?}");
    let ok = ctl
        .list(&token_a, &["audit", "list", "--result", "OK"])
        .await;
    assert!(!ok.is_empty() && field(&ok, "result").iter().all(|r| *r == "OK"));
    assert_eq!(ok.len() + refused.len(), all_a.len());

    // --action: a prefix ending with `*`, or exact.
    let definitions = ctl
        .list(
            &token_a,
            &["audit", "list", "--action", "mantle.v1.DefinitionService/*"],
        )
        .await;
    let mut actions = field(&definitions, "action");
    actions.sort();
    assert_eq!(
        actions,
        [
            "mantle.v1.DefinitionService/ApplyDefinition",
            "mantle.v1.DefinitionService/ApplyDefinition",
            "mantle.v1.DefinitionService/DeleteDefinition"
        ]
    );
    let secret_events = ctl
        .list(&token_a, &["audit", "list", "--action", "secret.*"])
        .await;
    assert_eq!(field(&secret_events, "action"), ["secret.create"]);
    assert_eq!(field(&secret_events, "resource"), ["secrets/s1"]);
    assert_eq!(field(&secret_events, "result"), ["OK"]);
    let exact = ctl
        .list(
            &token_a,
            &[
                "audit",
                "list",
                "--action",
                "mantle.v1.DefinitionService/DeleteDefinition",
                "--result",
                "refused",
            ],
        )
        .await;
    assert_eq!(field(&exact, "result"), ["NOT_FOUND"]);
    // --actor.
    let by_reader = ctl
        .list(&token_a, &["audit", "list", "--actor", &key_id(&reader_a)])
        .await;
    assert_eq!(field(&by_reader, "result"), ["PERMISSION_DENIED"]);

    // --limit: the newest N.
    let two = ctl.list(&token_a, &["audit", "list", "--limit", "2"]).await;
    assert_eq!(field(&two, "id"), field(&all_a[..2], "id"));

    // --since as a time: only what happened after it.
    let mark = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.apply(&WF.replace("hooked", "later")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = mark.to_rfc3339_opts(SecondsFormat::Micros, true);
    let recent = ctl
        .list(&token_a, &["audit", "list", "--since", &since])
        .await;
    assert_eq!(
        field(&recent, "action"),
        ["mantle.v1.DefinitionService/ApplyDefinition"],
        "{recent:?}"
    );
    assert_eq!(
        ctl.list(&token_a, &["audit", "list"]).await.len(),
        all_a.len() + 1
    );
    // --since as a duration ago: an event of two days ago (written into the database) is
    // within 3d, not within 1d.
    {
        use sqlx::Connection;
        let path = daemon.data_dir().join("mantle.db");
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let old = (Utc::now() - TimeDelta::days(2)).to_rfc3339_opts(SecondsFormat::AutoSi, false);
        sqlx::query(
            "INSERT INTO audit_events (id, tenant_id, time, actor, action, resource, result) \
             VALUES ($1, $2, $3, 'old-actor', 'secret.delete', 'secrets/old', 'OK')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(tenant_id(&daemon, &operator, &a).await)
        .bind(old)
        .execute(&mut db)
        .await
        .unwrap();
    }
    let old = ["audit", "list", "--actor", "old-actor"];
    assert_eq!(ctl.list(&token_a, &old).await.len(), 1);
    assert!(
        ctl.list(&token_a, &[&old[..], &["--since", "1d"]].concat())
            .await
            .is_empty()
    );
    assert_eq!(
        ctl.list(&token_a, &[&old[..], &["--since", "3d"]].concat())
            .await
            .len(),
        1
    );
    assert!(
        ctl.list(&token_a, &["audit", "list", "--since", "1h"])
            .await
            .iter()
            .all(|e| e["actor"] != "old-actor")
    );

    // A tenant key sees its tenant only; naming another is NOT_FOUND. An operator sees
    // every tenant's, or one.
    let all_b = ctl.list(&token_b, &["audit", "list"]).await;
    assert!(!all_b.is_empty());
    assert!(field(&all_b, "tenant").iter().all(|t| *t == b), "{all_b:?}");
    let (_, stderr) = ctl
        .fails(&token_b, &["audit", "list", "--tenant", &a])
        .await;
    assert!(stderr.contains("not found"), "{stderr}");
    let operator_a = ctl
        .list(
            &operator,
            &["audit", "list", "--tenant", &a, "--result", "refused"],
        )
        .await;
    assert_eq!(field(&operator_a, "id"), field(&refused, "id"));
    let operator_all = ctl
        .list(
            &operator,
            &[
                "audit",
                "list",
                "--result",
                "NOT_FOUND",
                "--action",
                "mantle.v1.DefinitionService/DeleteDefinition",
            ],
        )
        .await;
    let tenants = field(&operator_all, "tenant");
    assert!(
        tenants.contains(&a.as_str()) && tenants.contains(&b.as_str()),
        "{operator_all:?}"
    );

    // The table: readable columns, newest first.
    let table = ctl
        .ok(&token_a, &["audit", "list", "--result", "refused"])
        .await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("ACTION") && lines[0].ends_with("RESULT"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");

    // Bad filter values: refused, naming the field.
    let (code, stderr) = ctl
        .fails(&token_a, &["audit", "list", "--result", "denied"])
        .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("invalid argument: result: \"denied\" is not OK, refused"),
        "{stderr}"
    );
    let (_, stderr) = ctl
        .fails(&token_a, &["audit", "list", "--action", "secret*.create"])
        .await;
    assert!(stderr.contains("invalid argument: action:"), "{stderr}");
    let (code, stderr) = ctl
        .fails(&token_a, &["audit", "list", "--since", "yesterday"])
        .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--since"), "{stderr}");
}

/// Waits until `check` holds for tenant `token`'s deliveries (as `webhooks deliveries`
/// lists them); returns them.
async fn deliveries_until(
    ctl: &Ctl<'_>,
    token: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = ctl.list(token, &["webhooks", "deliveries"]).await;
        if check(&listed) {
            return listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_deliveries_filter_by_status_and_execution_within_the_tenant() {
    let receiver = TestServer::start().await;
    receiver.set("/ok", Reply::status(200));
    receiver.set("/down", Reply::status(503));
    let daemon =
        Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"))
            .await;
    let operator = daemon.operator_token();
    let (a, b) = (random_name("whc-a"), random_name("whc-b"));
    let mut tenants = daemon.tenants(Some(&operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: a.clone(),
                settings: Some(pb::TenantSettings {
                    webhook_url: receiver.url("/ok"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "CreateTenant",
    );
    create_tenant(&daemon, &operator, &b).await;
    let token_a = create_api_key(&daemon, &operator, &a, &["*"]).await;
    let token_b = create_api_key(&daemon, &operator, &b, &["*"]).await;
    let ctl = Ctl::new(&daemon);

    // Execution 1 is delivered; then the endpoint moves to one that answers 503, and
    // execution 2's delivery stays pending.
    let mut m = Mantle::connect(&daemon, &token_a).await;
    m.apply(WF).await;
    let (e1, _) = m.run("hooked", "", Duration::from_secs(20)).await;
    deliveries_until(&ctl, &token_a, "the first delivery", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    expect_ok(
        tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: a.clone(),
                settings: Some(pb::TenantSettings {
                    webhook_url: receiver.url("/down"),
                    ..Default::default()
                }),
                settings_mask: Some(prost_types::FieldMask {
                    paths: vec!["webhook_url".into()],
                }),
                ..Default::default()
            })
            .await,
        "UpdateTenant",
    );
    let (e2, _) = m.run("hooked", "", Duration::from_secs(20)).await;
    deliveries_until(&ctl, &token_a, "the second delivery's first attempt", |d| {
        d.len() == 2 && d[0]["attempts"].as_i64() >= Some(1)
    })
    .await;

    let delivered = ctl
        .list(
            &token_a,
            &["webhooks", "deliveries", "--status", "delivered"],
        )
        .await;
    assert_eq!(field(&delivered, "execution_id"), [e1.id.as_str()]);
    assert_eq!(field(&delivered, "status"), ["delivered"]);
    assert_eq!(delivered[0]["last_http_status"], 200);
    assert!(delivered[0]["delivered_time"].is_string(), "{delivered:?}");
    assert!(
        delivered[0].get("payload").is_none(),
        "BASIC: {delivered:?}"
    );
    let pending = ctl
        .list(&token_a, &["webhooks", "deliveries", "--status", "pending"])
        .await;
    assert_eq!(field(&pending, "execution_id"), [e2.id.as_str()]);
    assert_eq!(pending[0]["last_http_status"], 503);
    assert!(pending[0]["next_attempt_time"].is_string(), "{pending:?}");
    assert!(
        ctl.list(&token_a, &["webhooks", "deliveries", "--status", "failed"])
            .await
            .is_empty()
    );
    let of_e2 = ctl
        .list(&token_a, &["webhooks", "deliveries", "--execution", &e2.id])
        .await;
    assert_eq!(field(&of_e2, "status"), ["pending"]);
    let full = ctl
        .list(
            &token_a,
            &["webhooks", "deliveries", "--execution", &e1.id, "--full"],
        )
        .await;
    assert_eq!(full.len(), 1);
    let payload: Value = serde_json::from_str(full[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["execution_id"], e1.id);
    assert_eq!(payload["status"], "completed");
    let newest = ctl
        .list(&token_a, &["webhooks", "deliveries", "--limit", "1"])
        .await;
    assert_eq!(field(&newest, "execution_id"), [e2.id.as_str()]);

    // Another tenant's key sees none of them, and may not name the tenant; an operator
    // sees them all, or one tenant's.
    assert!(
        ctl.list(&token_b, &["webhooks", "deliveries"])
            .await
            .is_empty()
    );
    assert!(
        ctl.list(&token_b, &["webhooks", "deliveries", "--execution", &e1.id])
            .await
            .is_empty()
    );
    let (_, stderr) = ctl
        .fails(&token_b, &["webhooks", "deliveries", "--tenant", &a])
        .await;
    assert!(stderr.contains("not found"), "{stderr}");
    let operator_a = ctl
        .list(
            &operator,
            &[
                "webhooks",
                "deliveries",
                "--tenant",
                &a,
                "--status",
                "delivered",
            ],
        )
        .await;
    assert_eq!(field(&operator_a, "execution_id"), [e1.id.as_str()]);
    let operator_e2 = ctl
        .list(
            &operator,
            &["webhooks", "deliveries", "--execution", &e2.id],
        )
        .await;
    assert_eq!(field(&operator_e2, "tenant"), [a.as_str()]);

    // The table.
    let table = ctl.ok(&token_a, &["webhooks", "deliveries"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("NEXT/DELIVERED"), "{table}");
    assert!(
        lines[1].contains(&e2.id) && lines[1].contains("pending") && lines[1].contains("503"),
        "{table}"
    );
    assert!(
        lines[2].contains(&e1.id) && lines[2].contains("delivered"),
        "{table}"
    );

    // Bad filter values, named: by mantlectl (--status) and by the server.
    let (code, stderr) = ctl
        .fails(&token_a, &["webhooks", "deliveries", "--status", "sent"])
        .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--status"), "{stderr}");
    let (code, stderr) = ctl
        .fails(
            &token_a,
            &["webhooks", "deliveries", "--execution", "not-a-uuid"],
        )
        .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("invalid argument: execution_id: \"not-a-uuid\" is not a UUID"),
        "{stderr}"
    );
    let mut hooks = pb::webhook_service_client::WebhookServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(&token_a)),
    );
    let err = hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            status: "sent".into(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown status");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "status: \"sent\" is not one of pending, delivered, failed"
    );
}
