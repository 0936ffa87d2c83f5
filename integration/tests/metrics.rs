//! /metrics reports executions, steps, leases and rejections, labelled by tenant.

use std::time::Duration;

use mantle_integration::*;
use mantle_proto::v1 as pb;

#[tokio::test]
async fn execution_and_rejection_metrics() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("met");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let created = tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                rate_limit_per_minute: 3,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("tenant")
        .into_inner();
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: m\nsteps:\n  - name: s\n    action: core/set\n    params: {x: 1}\n")
        .await;
    let (e, _) = m.run("m", "", Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Completed as i32);
    // The third mutating request was the run's start; the fourth is refused.
    let _ = m
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "m".into(),
            ..Default::default()
        })
        .await;
    let err = m
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "m".into(),
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    let text = daemon
        .http_get("/metrics")
        .await
        .expect("GET /metrics")
        .body;
    let id = created.id;
    let has = |prefix: &str, needles: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        has(
            "mantle_executions_started_total",
            &[&format!("tenant_id=\"{id}\"")]
        ),
        "{text}"
    );
    assert!(
        has(
            "mantle_executions_finished_total",
            &[&format!("tenant_id=\"{id}\""), "status=\"completed\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mantle_step_duration_seconds_bucket",
            &["action=\"core/set\"", "result=\"completed\""]
        ),
        "{text}"
    );
    assert!(
        has(
            "mantle_rate_limited_total",
            &[&format!("tenant_id=\"{id}\"")]
        ),
        "{text}"
    );
    assert!(has("mantle_executions_running", &[]), "{text}");
}

/// The queued gauge follows the tenant's queue (refreshed every 5 s) and a full queue counts
/// as a cap rejection of its own kind.
#[tokio::test]
async fn queued_gauge_and_queue_full_rejections() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("mq");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let id = tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                max_concurrent_executions: 1,
                max_queued_executions: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("tenant")
        .into_inner()
        .id;
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(
        "name: long\nsteps:\n  - name: s\n    action: core/sleep\n    params: {duration: 60s}\n",
    )
    .await;
    let running = m.start_ok("long", "").await;
    let queued = m.start_ok("long", "").await;
    assert_eq!(queued.status, pb::ExecutionStatus::Queued as i32);
    let err = m
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "long".into(),
            ..Default::default()
        })
        .await
        .expect_err("the queue is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    let gauge = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("mantle_executions_queued{") && l.contains(&format!("\"{id}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let metrics = || async {
        daemon
            .http_get("/metrics")
            .await
            .expect("GET /metrics")
            .body
    };
    assert!(
        eventually(Duration::from_secs(8), || async {
            gauge(&metrics().await) == Some(1.0)
        })
        .await,
        "queued gauge never reached 1: {}",
        metrics().await
    );
    let text = metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("mantle_cap_rejections_total")
                && l.contains(&format!("tenant_id=\"{id}\""))
                && l.contains("kind=\"max_queued_executions\"")),
        "{text}"
    );

    for e in [&queued, &running] {
        m.execs
            .cancel_execution(pb::CancelExecutionRequest { id: e.id.clone() })
            .await
            .expect("cancel");
    }
    assert!(
        eventually(Duration::from_secs(8), || async {
            gauge(&metrics().await) == Some(0.0)
        })
        .await,
        "queued gauge did not return to 0: {}",
        metrics().await
    );
}
