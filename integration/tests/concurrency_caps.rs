//! Concurrency caps across replicas: never more than the cap running at once; the rest
//! wait queued and then complete; a full queue refuses starts.

use std::time::Duration;

use mantle_integration::*;
use mantle_proto::v1 as pb;

const NAP: &str = "
name: nap
inputs:
  d: {type: string, default: 700ms}
steps:
  - name: s
    action: core/sleep
    params: {duration: '{{ inputs.d }}'}
";

fn ts(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

#[tokio::test]
async fn concurrency_cap_across_two_daemons() {
    let Some(db) = PgDatabase::create("concurrency_cap").await else {
        return;
    };
    let opts = DaemonOptions::postgres(db.url.clone()).env("MANTLE_ENGINE_POLL_INTERVAL", "200ms");
    let a = Daemon::start_ok(opts.clone()).await;
    let b = Daemon::start_ok(opts).await;
    let operator = admin_key_create(&db.url, "cc-operator").await;
    let tenant = random_name("cc");
    let mut tenants = a.tenants(Some(&operator)).await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                max_concurrent_executions: 2,
                max_queued_executions: 6,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("tenant");
    let token = create_api_key(&a, &operator, &tenant, &["*"]).await;
    let mut ma = Mantle::connect(&a, &token).await;
    let mut mb = Mantle::connect(&b, &token).await;
    ma.apply(NAP).await;
    // 8 starts over the two daemons: 2 run, 6 queue; the 9th is refused. The first two
    // sleep long enough to outlast the starts on a loaded machine; the queued ones are short.
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let m = if i % 2 == 0 { &mut ma } else { &mut mb };
        let inputs = if i < 2 { r#"{"d": "6s"}"# } else { "" };
        let e = m.start_ok("nap", inputs).await;
        statuses.push(e.status);
        ids.push(e.id);
    }
    let queued = statuses
        .iter()
        .filter(|s| **s == pb::ExecutionStatus::Queued as i32)
        .count();
    assert_eq!(queued, 6, "statuses: {statuses:?}");
    let err = mb
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "nap".into(),
            ..Default::default()
        })
        .await
        .expect_err("the queue is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_queued_executions 6"),
        "{}",
        err.message()
    );

    // Every execution completes; at no moment were more than two running.
    let mut finished = Vec::new();
    for id in &ids {
        let e = ma.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(e.status, pb::ExecutionStatus::Completed as i32, "{e:?}");
        finished.push((ts(&e.start_time), ts(&e.end_time)));
    }
    let mut peak = 0;
    for (start, _) in &finished {
        let at = *start;
        let running = finished.iter().filter(|(s, e)| *s <= at && at < *e).count();
        peak = peak.max(running);
    }
    assert!(peak <= 2, "{peak} executions ran at once: {finished:?}");
    assert!(peak >= 1);
}

#[tokio::test]
async fn queued_execution_can_be_cancelled() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("cq");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                max_concurrent_executions: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("tenant");
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(NAP).await;
    let first = m.start_ok("nap", "").await;
    let second = m.start_ok("nap", "").await;
    assert_eq!(second.status, pb::ExecutionStatus::Queued as i32);
    let cancelled = m
        .execs
        .cancel_execution(pb::CancelExecutionRequest {
            id: second.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.status, pb::ExecutionStatus::Cancelled as i32);
    assert!(cancelled.start_time.is_none(), "{cancelled:?}");
    // It ended like any execution: its terminal event is in the history; no step started.
    let events = m
        .watch(&second.id, 0, Duration::from_secs(10))
        .await
        .expect("watch");
    assert!(
        events
            .iter()
            .any(|e| e.execution_status == pb::ExecutionStatus::Cancelled as i32),
        "no cancelled event: {events:?}"
    );
    let attempts = m.attempts(&second.id).await;
    assert!(
        attempts
            .iter()
            .all(|a| a.start_time.is_none() && a.status == pb::StepStatus::Cancelled as i32),
        "a step of an execution cancelled while queued ran: {attempts:?}"
    );
    let done = m.wait_terminal(&first.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32);
    assert_eq!(
        m.get(&second.id).await.status,
        pb::ExecutionStatus::Cancelled as i32
    );
}
