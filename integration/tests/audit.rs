//! The audit log: every authenticated mutating RPC is recorded with who, what, when and the
//! result; a tenant sees its own events, an operator sees all. Unauthenticated requests are
//! counted in a metric, never written row by row, and a path that names no RPC is never
//! recorded under its caller-chosen name.

use std::time::Duration;

use mantle_integration::*;
use mantle_proto::v1 as pb;
use tonic::transport::Channel;

type AuditClient = pb::audit_service_client::AuditServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, Auth>,
>;

async fn events(daemon: &Daemon, token: &str, tenant: &str) -> Vec<pb::AuditEvent> {
    let mut client: AuditClient = pb::audit_service_client::AuditServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(token)),
    );
    // Recording happens just after the answer: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: tenant.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list audit events")
        .into_inner()
        .events
}

#[tokio::test]
async fn mutating_rpcs_are_audited() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("aud");
    create_tenant(&daemon, &operator, &tenant).await;
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: a\nsteps:\n  - name: s\n    action: core/set\n    params: {x: 1}\n")
        .await;
    // A refused change is recorded too.
    let err = m
        .defs
        .delete_definition(pb::DeleteDefinitionRequest {
            name: "missing".into(),
        })
        .await
        .expect_err("no such workflow");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // An unauthenticated attempt is counted, not written.
    let unauthenticated = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("mantle_unauthenticated_requests_total")
                    && l.contains("DeleteDefinition")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = unauthenticated(&daemon.http_get("/metrics").await.unwrap().body);
    let mut anon = Mantle::connect(&daemon, "mntl_not_a_real_token").await;
    for _ in 0..3 {
        let _ = anon
            .defs
            .delete_definition(pb::DeleteDefinitionRequest { name: "a".into() })
            .await;
    }
    let after = unauthenticated(&daemon.http_get("/metrics").await.unwrap().body);
    assert_eq!(after - before, 3.0);

    let own = events(&daemon, &token, "").await;
    let key_id = token.split('_').nth(1).unwrap().to_owned();
    let apply = own
        .iter()
        .find(|e| e.action == "mantle.v1.DefinitionService/ApplyDefinition")
        .expect("the apply is recorded");
    assert_eq!(apply.actor, key_id);
    assert_eq!(apply.tenant, tenant);
    assert_eq!(apply.result, "OK");
    assert!(apply.time.is_some());
    let delete = own
        .iter()
        .find(|e| e.action == "mantle.v1.DefinitionService/DeleteDefinition")
        .expect("the refused delete is recorded");
    assert_eq!(delete.result, "NOT_FOUND");
    // Reads are not audited; only this tenant's events are listed.
    assert!(own.iter().all(|e| e.tenant == tenant), "{own:?}");
    assert!(
        !own.iter()
            .any(|e| e.action.contains("/List") || e.action.contains("/Get"))
    );

    // A tenant cannot read another tenant's log.
    let mut client: AuditClient = pb::audit_service_client::AuditServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(&token)),
    );
    let err = client
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("another tenant's log");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A path shaped like a mutating RPC that is none: UNIMPLEMENTED, and not recorded.
    let invented = format!("/mantle.v1.TenantService/Create{}", "X".repeat(4000));
    let mut grpc = tonic::client::Grpc::new(daemon.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(pb::CreateTenantRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {operator}").parse().unwrap(),
    );
    let err = grpc
        .unary::<_, pb::Tenant, _>(
            request,
            invented.parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such RPC");
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // The operator sees everything: the tenant creation, the key; no anonymous attempt, no
    // invented name.
    let all = events(&daemon, &operator, "").await;
    assert!(
        all.iter()
            .any(|e| e.action == "mantle.v1.TenantService/CreateTenant" && e.result == "OK")
    );
    assert!(
        all.iter()
            .any(|e| e.action == "mantle.v1.TenantService/CreateApiKey")
    );
    assert!(
        !all.iter().any(|e| e.actor == "unauthenticated"
            || e.result == "UNAUTHENTICATED"
            || e.action.contains("XXXX")),
        "{all:?}"
    );
    let filtered = events(&daemon, &operator, &tenant).await;
    assert_eq!(filtered.len(), own.len());
}
