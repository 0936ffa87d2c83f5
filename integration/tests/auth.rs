//! The authentication and authorization matrix, on SQLite and on PostgreSQL.

use std::time::{Duration, SystemTime};

use mantle_integration::*;
use tonic::Code;

/// Token kinds against the contract: missing / garbage / unknown / revoked / expired tokens are
/// UNAUTHENTICATED, missing scopes PERMISSION_DENIED, another tenant's resources NOT_FOUND.
async fn auth_matrix(daemon: &Daemon, operator: &str, backend: &str) {
    // An expiring key first, so its lifetime overlaps the rest of the matrix.
    let mut op_tenants = daemon.tenants(Some(operator)).await;
    let tenant_a = random_name("a");
    let tenant_b = random_name("b");
    for name in [&tenant_a, &tenant_b] {
        let created = expect_ok(
            op_tenants
                .create_tenant(pb::CreateTenantRequest {
                    name: name.clone(),
                    display_name: format!("Tenant {name}"),
                    ..Default::default()
                })
                .await,
            "operator CreateTenant",
        );
        assert_eq!(&created.name, name);
        assert!(!created.id.is_empty(), "tenant id is empty");
    }
    let expiry = SystemTime::now() + Duration::from_secs(3);
    let expiring = expect_ok(
        op_tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant_a.clone(),
                name: "expiring".into(),
                scopes: vec!["executions:read".into()],
                expire_time: Some(prost_types::Timestamp::from(expiry)),
            })
            .await,
        "CreateApiKey with expire_time",
    );
    let mut expiring_system = daemon.system(Some(&expiring.token)).await;
    expect_ok(
        expiring_system
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo with a key that has not expired yet",
    );

    // No token, garbage, well-formed but unknown, wrong scheme.
    let unknown = unknown_token();
    for (what, auth) in [
        ("no token", Auth::new(None)),
        ("garbage token", Auth::new(Some("garbage"))),
        ("well-formed unknown token", Auth::new(Some(&unknown))),
        ("Basic scheme", Auth::raw(&format!("Basic {operator}"))),
        ("empty bearer", Auth::raw("Bearer ")),
    ] {
        let channel = daemon.channel().await;
        let mut system = SystemServiceClient::with_interceptor(channel.clone(), auth.clone());
        assert_code(
            system.get_server_info(pb::GetServerInfoRequest {}).await,
            Code::Unauthenticated,
            &format!("GetServerInfo with {what}"),
        );
        let mut tenants = TenantServiceClient::with_interceptor(channel, auth);
        assert_code(
            tenants
                .list_tenants(pb::ListTenantsRequest::default())
                .await,
            Code::Unauthenticated,
            &format!("ListTenants with {what}"),
        );
        assert_code(
            tenants
                .get_tenant(pb::GetTenantRequest {
                    name: "default".into(),
                })
                .await,
            Code::Unauthenticated,
            &format!("GetTenant with {what}"),
        );
    }

    // The operator.
    let info = expect_ok(
        daemon
            .system(Some(operator))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "operator GetServerInfo",
    );
    assert_eq!(info.database, backend, "ServerInfo.database");
    let caller = info.caller.expect("ServerInfo.caller");
    assert!(
        caller.operator,
        "operator token: caller.operator is false: {caller:?}"
    );
    assert!(
        caller.scopes.iter().any(|s| s == "tenants:admin"),
        "operator scopes {:?} lack tenants:admin",
        caller.scopes
    );

    // A tenant key with executions:read for A, and `*` for B.
    let key_a = expect_ok(
        op_tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant_a.clone(),
                name: "reader".into(),
                scopes: vec!["executions:read".into()],
                expire_time: None,
            })
            .await,
        "CreateApiKey for A",
    );
    let key_a_meta = key_a.api_key.clone().expect("CreateApiKeyResponse.api_key");
    assert_eq!(key_a_meta.tenant, tenant_a);

    // Tokens shaped exactly like an issued one: a real id with a wrong secret, and an
    // unknown id with the real secret.
    let (real_id, real_secret) = key_a
        .token
        .strip_prefix("mntl_")
        .and_then(|rest| rest.split_once('_'))
        .expect("token has the form mntl_<id>_<secret>");
    let flip = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect()
    };
    for (what, forged) in [
        (
            "a real key id with a wrong secret",
            format!("mntl_{real_id}_{}", flip(real_secret)),
        ),
        (
            "an unknown key id with a real secret",
            format!("mntl_{}_{real_secret}", flip(real_id)),
        ),
    ] {
        assert_code(
            daemon
                .system(Some(&forged))
                .await
                .get_server_info(pb::GetServerInfoRequest {})
                .await,
            Code::Unauthenticated,
            &format!("GetServerInfo with {what}"),
        );
    }
    let key_b = expect_ok(
        op_tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant_b.clone(),
                name: "all".into(),
                scopes: vec!["*".into()],
                expire_time: None,
            })
            .await,
        "CreateApiKey for B",
    );

    let mut tenants_a = daemon.tenants(Some(&key_a.token)).await;
    assert_code(
        tenants_a
            .create_tenant(pb::CreateTenantRequest {
                name: random_name("x"),
                display_name: String::new(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "CreateTenant with a tenant key holding executions:read",
    );
    assert_code(
        tenants_a
            .list_tenants(pb::ListTenantsRequest::default())
            .await,
        Code::PermissionDenied,
        "ListTenants with a tenant key",
    );
    assert_code(
        tenants_a
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant_a.clone(),
                name: "escalate".into(),
                scopes: vec!["*".into()],
                expire_time: None,
            })
            .await,
        Code::PermissionDenied,
        "CreateApiKey with a tenant key",
    );

    let mut tenants_b = daemon.tenants(Some(&key_b.token)).await;
    assert_code(
        tenants_b
            .get_tenant(pb::GetTenantRequest {
                name: tenant_a.clone(),
            })
            .await,
        Code::NotFound,
        "tenant B's key: GetTenant(A)",
    );
    let own = expect_ok(
        tenants_b
            .get_tenant(pb::GetTenantRequest {
                name: tenant_b.clone(),
            })
            .await,
        "tenant B's key: GetTenant(B)",
    );
    assert_eq!(own.name, tenant_b);
    let info_b = expect_ok(
        daemon
            .system(Some(&key_b.token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "tenant B's key: GetServerInfo",
    );
    let caller_b = info_b.caller.expect("caller");
    assert_eq!(caller_b.tenant, tenant_b, "caller.tenant for B's key");
    assert!(!caller_b.operator, "tenant key reported as operator");
    assert_eq!(
        caller_b.key_id,
        key_b.api_key.as_ref().unwrap().id,
        "caller.key_id"
    );

    // Revocation takes effect immediately.
    let revocable = expect_ok(
        op_tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant_b.clone(),
                name: "revocable".into(),
                scopes: vec!["*".into()],
                expire_time: None,
            })
            .await,
        "CreateApiKey revocable",
    );
    let mut revocable_system = daemon.system(Some(&revocable.token)).await;
    expect_ok(
        revocable_system
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo before revocation",
    );
    let revoked = expect_ok(
        op_tenants
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: revocable.api_key.as_ref().unwrap().id.clone(),
            })
            .await,
        "RevokeApiKey",
    );
    assert!(
        revoked.revoke_time.is_some(),
        "revoked key has no revoke_time"
    );
    assert_code(
        revocable_system
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        Code::Unauthenticated,
        "GetServerInfo with a revoked key",
    );
    assert_code(
        op_tenants
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: "0123456789abcdef".into(),
            })
            .await,
        Code::NotFound,
        "RevokeApiKey of an unknown id",
    );

    // expire_time in the past is refused and names the field.
    let past = op_tenants
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: tenant_a.clone(),
            name: "past".into(),
            scopes: vec!["executions:read".into()],
            expire_time: Some((SystemTime::now() - Duration::from_secs(60)).into()),
        })
        .await;
    match &past {
        Err(status) if status.code() == Code::InvalidArgument => assert!(
            status.message().contains("expire_time"),
            "message does not name expire_time: {:?}",
            status.message()
        ),
        other => {
            panic!("CreateApiKey with a past expire_time: expected InvalidArgument, got {other:?}")
        }
    }

    // The expiring key is refused once expired.
    let wait =
        expiry.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(1500);
    tokio::time::sleep(wait).await;
    assert_code(
        expiring_system
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        Code::Unauthenticated,
        "GetServerInfo with an expired key",
    );

    // Deleting a tenant revokes its keys; `default` cannot be deleted.
    expect_ok(
        op_tenants
            .delete_tenant(pb::DeleteTenantRequest {
                name: tenant_b.clone(),
            })
            .await,
        "DeleteTenant(B)",
    );
    assert_code(
        tenants_b
            .get_tenant(pb::GetTenantRequest {
                name: tenant_b.clone(),
            })
            .await,
        Code::Unauthenticated,
        "B's key after B was deleted",
    );
    assert_code(
        op_tenants
            .delete_tenant(pb::DeleteTenantRequest {
                name: "default".into(),
            })
            .await,
        Code::FailedPrecondition,
        "DeleteTenant(default)",
    );

    // The token format, last so that a deviation does not hide the checks above.
    assert!(
        key_a.token.starts_with(&format!("mntl_{}_", key_a_meta.id)),
        "token {:?} does not start with mntl_<its key id {:?}>_",
        key_a.token,
        key_a_meta.id
    );
    assert!(
        is_api_key_token(&key_a.token),
        "API key token {:?} is not of the form mntl_<32 hex id>_<64 hex secret>",
        key_a.token
    );
}

/// Health and reflection answer without any token.
async fn unauthenticated_services(daemon: &Daemon) {
    for service in std::iter::once("").chain(SERVICES) {
        assert_eq!(
            daemon
                .health_status(service)
                .await
                .expect("health without token"),
            ServingStatus::Serving,
            "health {service:?} without a token"
        );
    }

    use tokio_stream::StreamExt;
    let expected = ["mantle.v1.TenantService", "mantle.v1.SystemService"];
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(daemon.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap_or_else(|status| panic!("reflection v1 without a token: {status:?}"))
            .into_inner();
        let response = stream
            .next()
            .await
            .expect("a reflection v1 response")
            .expect("reflection v1 response ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection v1 response {response:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in expected {
            assert!(
                names.iter().any(|n| n == service),
                "reflection v1 lists {names:?}, missing {service}"
            );
        }
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new(daemon.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap_or_else(|status| panic!("reflection v1alpha without a token: {status:?}"))
            .into_inner();
        let response = stream
            .next()
            .await
            .expect("a reflection v1alpha response")
            .expect("reflection v1alpha response ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection v1alpha response {response:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in expected {
            assert!(
                names.iter().any(|n| n == service),
                "reflection v1alpha lists {names:?}, missing {service}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_sqlite() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;

    // Zero-config: the operator token file, mode 0600: the token, then the address it
    // belongs to.
    let path = daemon.data_dir().join("operator-token");
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}\n{}", path.display(), daemon.diagnostics()));
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(
        (lines.len(), raw.ends_with('\n')),
        (2, true),
        "operator-token is not two lines: {raw:?}"
    );
    assert!(is_api_key_token(lines[0]), "{raw:?}");
    assert_eq!(lines[1], format!("address={}", daemon.addr), "{raw:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "operator-token mode is {mode:o}, not 600");
    }
    let operator = daemon.operator_token();

    unauthenticated_services(&daemon).await;
    auth_matrix(&daemon, &operator, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_matrix_postgres() {
    let Some(db) = PgDatabase::create("auth_matrix_postgres").await else {
        return;
    };
    let daemon = Daemon::start_ok(DaemonOptions::postgres(&db.url)).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    unauthenticated_services(&daemon).await;
    auth_matrix(&daemon, &operator, "postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_token_file_survives_restart_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let opts = DaemonOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..DaemonOptions::sqlite()
    };
    let first = Daemon::start_ok(opts.clone()).await;
    let token = first.operator_token();
    drop(first);
    // Another port: the same token, with the new address.
    let second = Daemon::start_ok(opts).await;
    assert_eq!(
        second.operator_token(),
        token,
        "the operator token changed across a restart"
    );
    let raw = std::fs::read_to_string(data.path().join("operator-token")).unwrap();
    assert_eq!(raw, format!("{token}\naddress={}\n", second.addr));
    expect_ok(
        second
            .system(Some(&token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "the first start's operator token after a restart",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_token_mode() {
    let token = format!("it-token-{}", uuid::Uuid::new_v4().simple());
    let daemon = Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_API_TOKEN", &token)).await;
    assert!(
        !daemon.data_dir().join("operator-token").exists(),
        "with MANTLE_API_TOKEN set the daemon must not write an operator-token file"
    );

    let info = expect_ok(
        daemon
            .system(Some(&token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo with MANTLE_API_TOKEN",
    );
    let caller = info.caller.expect("caller");
    assert_eq!(
        caller.tenant, "default",
        "MANTLE_API_TOKEN acts on tenant default: {caller:?}"
    );
    assert!(
        caller.scopes.iter().any(|s| s == "*"),
        "MANTLE_API_TOKEN scopes {:?}",
        caller.scopes
    );
    assert_eq!(caller.key_id, "env:MANTLE_API_TOKEN", "caller.key_id");
    assert!(
        caller.operator,
        "MANTLE_API_TOKEN is also an operator: {caller:?}"
    );

    // It is also an operator.
    let mut tenants = daemon.tenants(Some(&token)).await;
    let name = random_name("t");
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: name.clone(),
                display_name: String::new(),
                ..Default::default()
            })
            .await,
        "CreateTenant with MANTLE_API_TOKEN",
    );
    let default = expect_ok(
        tenants
            .get_tenant(pb::GetTenantRequest {
                name: "default".into(),
            })
            .await,
        "GetTenant(default) with MANTLE_API_TOKEN",
    );
    assert_eq!(default.name, "default");

    for wrong in [
        format!("{token}x"),
        token[..token.len() - 1].to_owned(),
        unknown_token(),
    ] {
        assert_code(
            daemon
                .system(Some(&wrong))
                .await
                .get_server_info(pb::GetServerInfoRequest {})
                .await,
            Code::Unauthenticated,
            &format!("GetServerInfo with wrong token {wrong:?}"),
        );
    }
    unauthenticated_services(&daemon).await;
}
