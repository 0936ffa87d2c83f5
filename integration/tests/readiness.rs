//! Readiness follows the database: a daemon on PostgreSQL behind a cuttable TCP proxy.

use std::time::Duration;

use mantle_integration::*;

async fn all_health(daemon: &Daemon, want: ServingStatus) -> bool {
    for service in std::iter::once("").chain(SERVICES) {
        match daemon.health_status(service).await {
            Ok(status) if status == want => {}
            _ => return false,
        }
    }
    true
}

async fn readyz(daemon: &Daemon) -> Option<u16> {
    daemon.http_get("/readyz").await.ok().map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_a_cut_database() {
    let Some(db) = PgDatabase::create("readiness_follows_a_cut_database").await else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.expect("proxy");
    let url = db.url_via(proxy.addr);
    let daemon = Daemon::start_ok(DaemonOptions::postgres(&url)).await;
    let operator = admin_key_create(&url, "it-readiness").await;

    assert!(
        all_health(&daemon, ServingStatus::Serving).await,
        "not SERVING before the cut\n{}",
        daemon.diagnostics()
    );
    assert_eq!(readyz(&daemon).await, Some(200), "/readyz before the cut");

    proxy.cut().await;
    // Confirm the cut is real: the proxy port refuses connections.
    assert!(
        !is_listening(proxy.addr).await,
        "the proxy still accepts connections after cut()"
    );

    let not_serving = eventually(Duration::from_secs(10), || {
        all_health(&daemon, ServingStatus::NotServing)
    })
    .await;
    assert!(
        not_serving,
        "gRPC health (overall and per service) did not turn NOT_SERVING within 10 s of cutting the \
         database: overall={:?}\n{}",
        daemon.health_status("").await,
        daemon.diagnostics()
    );
    let unready = eventually(Duration::from_secs(10), || async {
        readyz(&daemon).await == Some(503)
    })
    .await;
    assert!(
        unready,
        "/readyz is {:?}, not 503, with the database cut\n{}",
        readyz(&daemon).await,
        daemon.diagnostics()
    );
    let healthz = daemon.http_get("/healthz").await.expect("GET /healthz");
    assert_eq!(
        healthz.status, 200,
        "/healthz must stay 200 while the database is cut"
    );

    proxy.restore().await.expect("restore the proxy");

    let serving = eventually(Duration::from_secs(15), || {
        all_health(&daemon, ServingStatus::Serving)
    })
    .await;
    assert!(
        serving,
        "gRPC health did not return to SERVING within 15 s of restoring the database: {:?}\n{}",
        daemon.health_status("").await,
        daemon.diagnostics()
    );
    let ready = eventually(Duration::from_secs(10), || async {
        readyz(&daemon).await == Some(200)
    })
    .await;
    assert!(
        ready,
        "/readyz did not return to 200 after the database came back"
    );

    // And the API works against the database again.
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let works = eventually(Duration::from_secs(10), || {
        let mut tenants = tenants.clone();
        async move {
            tenants
                .list_tenants(pb::ListTenantsRequest::default())
                .await
                .is_ok()
        }
    })
    .await;
    assert!(
        works,
        "ListTenants keeps failing after the database came back"
    );
    let list = expect_ok(
        tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await,
        "ListTenants after restore",
    );
    assert!(
        list.tenants.iter().any(|t| t.name == "default"),
        "tenant default missing: {list:?}"
    );
}
