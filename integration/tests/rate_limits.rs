//! Per-tenant rate limits on mutating requests: the answer's metadata, the refusal, and —
//! with the postgres backend — one limit for all replicas together.

use mantle_integration::*;
use mantle_proto::v1 as pb;

const WF: &str = "
name: tick
steps:
  - name: a
    action: core/set
    params: {x: 1}
";

async fn limited_tenant(daemon: &Daemon, operator: &str, per_minute: i32) -> String {
    let name = random_name("rl");
    let mut tenants = daemon.tenants(Some(operator)).await;
    tenants
        .create_tenant(pb::CreateTenantRequest {
            name: name.clone(),
            settings: Some(pb::TenantSettings {
                rate_limit_per_minute: per_minute,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create tenant");
    name
}

fn start() -> pb::StartExecutionRequest {
    pb::StartExecutionRequest {
        workflow: "tick".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn rate_limit_in_memory() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = limited_tenant(&daemon, &operator, 5).await;
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(WF).await; // the apply is the first of the 5
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = m
            .execs
            .start_execution(start())
            .await
            .expect("within the limit");
        let md = r.metadata();
        assert_eq!(md.get("x-ratelimit-limit").unwrap(), "5");
        remaining.push(
            md.get("x-ratelimit-remaining")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
        );
        assert!(md.get("x-ratelimit-reset").is_some());
    }
    assert_eq!(remaining, ["3", "2", "1", "0"]);
    let err = m
        .execs
        .start_execution(start())
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("5 requests per minute"),
        "{}",
        err.message()
    );
    let retry_after: u64 = err
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(err.metadata().get("x-ratelimit-remaining").unwrap(), "0");
    // Reads are not limited.
    m.execs
        .list_executions(pb::ListExecutionsRequest::default())
        .await
        .expect("reads pass");
    // Another tenant has its own bucket.
    let other = limited_tenant(&daemon, &operator, 5).await;
    let other_token = create_api_key(&daemon, &operator, &other, &["*"]).await;
    let mut o = Mantle::connect(&daemon, &other_token).await;
    o.apply(WF).await;

    // A raised limit applies at once on this daemon (no cache to wait out).
    let mut tenants = daemon.tenants(Some(&operator)).await;
    tenants
        .update_tenant(pb::UpdateTenantRequest {
            name: tenant.clone(),
            settings: Some(pb::TenantSettings {
                rate_limit_per_minute: 600,
                ..Default::default()
            }),
            settings_mask: Some(prost_types::FieldMask {
                paths: vec!["rate_limit_per_minute".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("raise the limit");
    let r = m
        .execs
        .start_execution(start())
        .await
        .expect("the raised limit applies at once");
    assert_eq!(r.metadata().get("x-ratelimit-limit").unwrap(), "600");
}

#[tokio::test]
async fn rate_limit_shared_by_two_replicas_on_postgres() {
    let Some(db) = PgDatabase::create("rate_limit_replicas").await else {
        return;
    };
    let opts = DaemonOptions::postgres(db.url.clone()).env("MANTLE_RATE_LIMIT_BACKEND", "postgres");
    let a = Daemon::start_ok(opts.clone()).await;
    let b = Daemon::start_ok(opts).await;
    let operator = admin_key_create(&db.url, "rl-operator").await;
    let tenant = limited_tenant(&a, &operator, 60).await;
    let token = create_api_key(&a, &operator, &tenant, &["*"]).await;
    let mut ma = Mantle::connect(&a, &token).await;
    let mut mb = Mantle::connect(&b, &token).await;
    ma.apply(WF).await; // 1 of 60
    let mut ok = 1;
    let mut refused = 0;
    let began = std::time::Instant::now();
    for i in 0..120 {
        let m = if i % 2 == 0 { &mut ma } else { &mut mb };
        match m.execs.start_execution(start()).await {
            Ok(_) => ok += 1,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // 60 per minute for the two daemons together: the bucket refills one a second, so a
    // loop slowed down by a loaded machine may get one more through for each second it took.
    let refilled = began.elapsed().as_secs() as i32 + 1;
    assert!(
        (60..=60 + refilled).contains(&ok),
        "{ok} requests got through in {:?}, {refused} refused",
        began.elapsed()
    );
    assert!(refused >= 60 - refilled);
}
