//! Idempotent starts: one key, one execution — under concurrency, across the field and the
//! metadata, and on both backends; a different request with the key is refused.

use mantle_integration::*;
use mantle_proto::v1 as pb;

const WORKFLOW: &str = "
name: idem
inputs:
  n: {type: integer, default: 1}
steps:
  - name: a
    action: core/set
    params: {n: \"{{ inputs.n }}\"}
";

async fn check(opts: DaemonOptions, database_url: Option<String>) {
    let daemon = Daemon::start_ok(opts).await;
    let operator = match &database_url {
        None => daemon.operator_token(),
        Some(url) => admin_key_create(url, "idem-operator").await,
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(WORKFLOW).await;

    // 50 concurrent starts with one key: exactly one execution.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut execs = m.execs.clone();
        calls.push(tokio::spawn(async move {
            execs
                .start_execution(pb::StartExecutionRequest {
                    workflow: "idem".to_owned(),
                    inputs_json: r#"{"n": 5}"#.to_owned(),
                    idempotency_key: "order-42".to_owned(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().id)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for c in calls {
        ids.insert(
            c.await
                .expect("task")
                .expect("every duplicate start succeeds"),
        );
    }
    assert_eq!(
        ids.len(),
        1,
        "50 starts with one key made {} executions",
        ids.len()
    );
    let listed = m
        .execs
        .list_executions(pb::ListExecutionsRequest {
            workflow: "idem".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.executions.len(), 1);

    // The same key through the metadata returns the same execution.
    let mut request = tonic::Request::new(pb::StartExecutionRequest {
        workflow: "idem".to_owned(),
        inputs_json: r#"{"n": 5}"#.to_owned(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("idempotency-key", "order-42".parse().unwrap());
    let again = m
        .execs
        .start_execution(request)
        .await
        .expect("metadata key")
        .into_inner();
    assert!(ids.contains(&again.id));

    // The key with a different request is refused, saying why.
    let err = m
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "idem".to_owned(),
            inputs_json: r#"{"n": 6}"#.to_owned(),
            idempotency_key: "order-42".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("a different request with a used key");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("order-42") && err.message().contains("different request"),
        "{}",
        err.message()
    );

    // Field and metadata that disagree are an error; a malformed key names the field.
    let mut both = tonic::Request::new(pb::StartExecutionRequest {
        workflow: "idem".to_owned(),
        idempotency_key: "a".to_owned(),
        ..Default::default()
    });
    both.metadata_mut()
        .insert("idempotency-key", "b".parse().unwrap());
    let err = m
        .execs
        .start_execution(both)
        .await
        .expect_err("conflicting keys");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = m
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "idem".to_owned(),
            idempotency_key: "x".repeat(300),
            ..Default::default()
        })
        .await
        .expect_err("overlong key");
    assert!(
        err.message().starts_with("idempotency_key:"),
        "{}",
        err.message()
    );

    // Keys are per tenant: another tenant may use the same key for its own execution.
    let other = random_name("idem");
    create_tenant(&daemon, &operator, &other).await;
    let other_token = create_api_key(&daemon, &operator, &other, &["*"]).await;
    let mut o = Mantle::connect(&daemon, &other_token).await;
    o.apply(WORKFLOW).await;
    let theirs = o
        .execs
        .start_execution(pb::StartExecutionRequest {
            workflow: "idem".to_owned(),
            inputs_json: r#"{"n": 5}"#.to_owned(),
            idempotency_key: "order-42".to_owned(),
            ..Default::default()
        })
        .await
        .expect("other tenant")
        .into_inner();
    assert!(!ids.contains(&theirs.id));
}

#[tokio::test]
async fn idempotent_start_sqlite() {
    check(DaemonOptions::sqlite(), None).await;
}

#[tokio::test]
async fn idempotent_start_postgres() {
    let Some(db) = PgDatabase::create("idempotent_start").await else {
        return;
    };
    check(
        DaemonOptions::postgres(db.url.clone()),
        Some(db.url.clone()),
    )
    .await;
}
