//! Outbound webhooks: a terminal execution is announced, signed; a delivery survives a
//! daemon restart while the receiver is down; private addresses are refused.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use mantle_integration::*;
use mantle_proto::v1 as pb;

const WF: &str = "
name: hooked
steps:
  - name: a
    action: core/set
    params: {x: 1}
";

type WebhookClient = pb::webhook_service_client::WebhookServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Auth>,
>;

fn verify(key: &str, header: &str, body: &str) -> bool {
    let Some((t, v1)) = header.split_once(",v1=") else {
        return false;
    };
    let Some(t) = t.strip_prefix("t=") else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let Ok(sig) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&sig).is_ok()
}

#[tokio::test]
async fn delivery_is_signed_and_survives_a_restart_while_the_receiver_is_down() {
    let receiver = TestServer::start().await;
    // Down at first (503), up later.
    receiver.route("/hook", vec![Reply::status(503)]);
    let opts = DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true");
    let mut daemon = Daemon::start_ok(opts.clone()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("wh");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                webhook_url: receiver.url("/hook"),
                webhook_secret: "hook-key".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("tenant");
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let mut secrets = pb::secret_service_client::SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(&token)),
    );
    secrets
        .create_secret(pb::CreateSecretRequest {
            name: "hook-key".into(),
            r#type: "generic".into(),
            fields: [("key".to_owned(), "whsec-0123456789".to_owned())].into(),
        })
        .await
        .expect("secret");
    m.apply(WF).await;
    let (e, _) = m.run("hooked", "", Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Completed as i32);

    // The first attempt fails (503) and is recorded for a retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.count("/hook") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery attempt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut hooks: WebhookClient =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(
            daemon.channel().await,
            Auth::new(Some(&token)),
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = hooks
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].status, "pending");
    assert_eq!(listed[0].last_http_status, 503);
    assert_eq!(listed[0].execution_id, e.id);

    // Restart the daemon while the receiver is still down; then bring the receiver up.
    let status = daemon
        .sigterm(Duration::from_secs(20))
        .await
        .expect("sigterm");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    receiver.route("/hook", vec![Reply::status(200)]);
    daemon.restart_ok(opts.clone()).await;
    let mut hooks: WebhookClient =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(
            daemon.channel().await,
            Auth::new(Some(&token)),
        );
    // The retry comes after its backoff (2.5–5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let d = hooks
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .deliveries;
        if d[0].status == "delivered" {
            break d[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(delivered.attempts, 2);
    assert_eq!(delivered.last_http_status, 200);

    // What the receiver got: the documented body and headers, with a valid signature.
    let hits = receiver.hits("/hook");
    let last = hits.last().unwrap();
    let header = |n: &str| {
        last.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("x-mantle-delivery"), delivered.id);
    assert_eq!(header("x-mantle-event"), "execution.finished");
    let signature = header("x-mantle-signature");
    assert!(
        verify("whsec-0123456789", &signature, &last.body),
        "{signature} over {}",
        last.body
    );
    assert!(!verify("another-key", &signature, &last.body));
    assert!(!verify(
        "whsec-0123456789",
        &signature,
        &last.body.replace("completed", "failed")
    ));
    let body: serde_json::Value = serde_json::from_str(&last.body).unwrap();
    assert_eq!(body["execution_id"], e.id);
    assert_eq!(body["tenant"], tenant);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["workflow"], "hooked");
    assert_eq!(body["delivery_id"], delivered.id);
}

/// A private webhook URL is refused when it is set; one already stored (set before that
/// check, or a name that resolved elsewhere then) is refused at every delivery.
#[tokio::test]
async fn deliveries_to_private_addresses_are_refused() {
    let receiver = TestServer::start().await;
    receiver.route("/hook", vec![Reply::status(200)]);
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("whp");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let refused = tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                webhook_url: receiver.url("/hook"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a loopback webhook URL");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("loopback"),
        "{}",
        refused.message()
    );
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            ..Default::default()
        })
        .await
        .expect("tenant");
    {
        use sqlx::Connection;
        let path = daemon.data_dir().join("mantle.db");
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE tenants SET webhook_url = $1 WHERE name = $2")
            .bind(receiver.url("/hook"))
            .bind(&tenant)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(WF).await;
    m.run("hooked", "", Duration::from_secs(20)).await;
    let mut hooks: WebhookClient =
        pb::webhook_service_client::WebhookServiceClient::with_interceptor(
            daemon.channel().await,
            Auth::new(Some(&token)),
        );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = hooks
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .deliveries;
        if let Some(d) = d.first()
            && d.attempts > 0
        {
            assert_eq!(d.status, "pending");
            assert!(d.last_error.contains("loopback"), "{}", d.last_error);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        receiver.count("/hook"),
        0,
        "the private receiver was never contacted"
    );
}
