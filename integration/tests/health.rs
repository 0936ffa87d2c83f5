//! Health, readiness and metrics endpoints of a daemon on the embedded SQLite store.

use mantle_integration::*;

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_http_probes_and_metrics() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;

    // gRPC health, overall and per service, without any token.
    for service in std::iter::once("").chain(SERVICES) {
        let status = daemon
            .health_status(service)
            .await
            .unwrap_or_else(|err| panic!("health check {service:?}: {err:#}"));
        assert_eq!(status, ServingStatus::Serving, "health of {service:?}");
    }

    // HTTP probes on the same port.
    let healthz = daemon.http_get("/healthz").await.expect("GET /healthz");
    assert_eq!(healthz.status, 200, "/healthz: {healthz:?}");
    let body: serde_json::Value = serde_json::from_str(&healthz.body)
        .unwrap_or_else(|err| panic!("/healthz body is not JSON ({err}): {:?}", healthz.body));
    assert_eq!(body["status"], "ok", "/healthz body {body}");

    let readyz = daemon.http_get("/readyz").await.expect("GET /readyz");
    assert_eq!(readyz.status, 200, "/readyz: {readyz:?}");

    // One authenticated call, then the metrics must count it.
    let token = daemon.operator_token();
    let info = expect_ok(
        daemon
            .system(Some(&token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo",
    );
    assert_eq!(info.database, "sqlite", "ServerInfo.database");
    assert_eq!(
        info.version,
        env!("CARGO_PKG_VERSION"),
        "ServerInfo.version"
    );

    let metrics = daemon.http_get("/metrics").await.expect("GET /metrics");
    assert_eq!(metrics.status, 200, "/metrics status");
    let counter: Vec<&str> = metrics
        .body
        .lines()
        .filter(|l| l.starts_with("mantle_grpc_requests_total"))
        .collect();
    assert!(
        !counter.is_empty(),
        "/metrics has no mantle_grpc_requests_total sample:\n{}",
        metrics.body
    );
    assert!(
        counter
            .iter()
            .any(|l| l.contains("GetServerInfo") && l.contains("method=") && l.contains("code=")),
        "no mantle_grpc_requests_total{{method,code}} sample for GetServerInfo:\n{}",
        counter.join("\n")
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("mantle_grpc_request_duration_seconds_bucket")),
        "/metrics has no mantle_grpc_request_duration_seconds histogram:\n{}",
        metrics.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn version_command_prints_the_version() {
    let mut cmd = mantle_command();
    cmd.arg("version");
    let output = run_with_timeout(cmd, std::time::Duration::from_secs(30))
        .await
        .expect("mantle version");
    assert!(output.status.success(), "{}", describe_output(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")),
        "mantle version does not print {}\n{}",
        env!("CARGO_PKG_VERSION"),
        describe_output(&output)
    );
}

/// Every answer leaves at once: the daemon sets TCP_NODELAY on accepted connections. Without
/// it, an answer larger than one segment waits for the client's delayed ACK (~40 ms on
/// Linux): a 50-row listing took 44 ms where a 1-row one took 0.6 ms.
#[tokio::test(flavor = "multi_thread")]
async fn answers_are_not_held_back_by_nagle() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let client = mantle_client::Client::connect_to(&daemon.url(), Some(&daemon.operator_token()))
        .await
        .expect("connecting");
    client
        .apply_definition(
            "name: tiny\nsteps:\n  - name: a\n    action: core/set\n    params: {x: 1}\n",
            "tiny.yaml",
        )
        .await
        .expect("apply");
    for _ in 0..50 {
        client
            .start_execution("tiny", 0, &Default::default(), None)
            .await
            .expect("start");
    }
    let mut fastest = std::time::Duration::MAX;
    for _ in 0..5 {
        let began = std::time::Instant::now();
        let listed = client
            .list_executions(
                &Default::default(),
                Some(50),
                mantle_client::proto::View::Full,
            )
            .await
            .expect("list");
        fastest = fastest.min(began.elapsed());
        assert_eq!(listed.len(), 50);
    }
    assert!(
        fastest < std::time::Duration::from_millis(20),
        "listing 50 executions took at least {fastest:?}: answers wait for delayed ACKs"
    );
}
