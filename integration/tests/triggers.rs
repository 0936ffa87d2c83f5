//! Triggers end to end: cron schedules fired by the daemons (each scheduled time once across
//! three daemons on one PostgreSQL database, through a `kill -9`), their lifecycle (apply,
//! pause, resume, fire by hand, removal, catch-up after downtime), and webhook triggers
//! (each signature scheme, refusals, delivery ids).

use std::collections::BTreeSet;
use std::time::Duration;

use mantle_integration::reliability::*;
use mantle_integration::*;
use serde_json::{Value, json};

use pb::trigger_service_client::TriggerServiceClient;

type Triggers = TriggerServiceClient<AuthChannel>;

async fn triggers(daemon: &Daemon) -> Triggers {
    TriggerServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(RELIABILITY_TOKEN)),
    )
}

/// Every execution of `workflow`, newest first, with its trigger.
async fn executions_of(m: &mut Mantle, workflow: &str) -> Vec<pb::Execution> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = m
            .execs
            .list_executions(pb::ListExecutionsRequest {
                workflow: workflow.to_owned(),
                page_size: 500,
                page_token: page_token.clone(),
                view: pb::View::Full as i32,
                ..Default::default()
            })
            .await
            .expect("ListExecutions")
            .into_inner();
        out.extend(page.executions);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

fn scheduled_times(executions: &[pb::Execution]) -> Vec<chrono::DateTime<chrono::Utc>> {
    executions
        .iter()
        .map(|e| {
            let t = json(&e.trigger_json);
            assert_eq!(t["type"], "cron", "{t}");
            chrono::DateTime::parse_from_rfc3339(t["scheduled_time"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .collect()
}

const TICKER: &str = "name: ticker
inputs:
  who: {type: string, default: nobody}
triggers:
  - type: cron
    schedule: \"* * * * * *\"
    inputs: {who: cron}
steps:
  - name: tick
    action: core/log
    params:
      message: \"tick for {{ inputs.who }} at {{ trigger.scheduled_time }}\"
";

const NO_TRIGGER: &str = "name: ticker
inputs:
  who: {type: string, default: nobody}
steps:
  - name: tick
    action: core/log
    params:
      message: \"tick for {{ inputs.who }}\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_each_time_once_across_three_daemons_and_a_kill() {
    let Some(db) = PgDatabase::create("cron_fires_each_time_once_across_three_daemons").await
    else {
        return;
    };
    let opts = reliability_options(Some(&db.url), "2s", "200ms");
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Daemon::start_ok(opts.clone()).await);
    }
    let mut m = Mantle::connect(&daemons[1], RELIABILITY_TOKEN).await;
    m.apply(TICKER).await;
    let started = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    // The daemon that fired most recently is as good as any: all three fire every time.
    daemons[0].sigkill().await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    // Removing the trigger stops it.
    m.apply(NO_TRIGGER).await;
    let removed = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let executions = executions_of(&mut m, "ticker").await;
    let mut times = scheduled_times(&executions);
    times.sort();
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(
        distinct.len(),
        times.len(),
        "a scheduled time fired twice: {times:?}"
    );
    // Armed within about a second of the apply (the daemons check every second).
    assert!(times.len() >= 26, "only {} fires in 30 s", times.len());
    // No second was skipped, through the kill.
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            1,
            "a gap between {} and {}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        times[0] <= started + chrono::Duration::seconds(3),
        "first fire at {}, applied at {started}",
        times[0]
    );
    assert!(
        *times.last().unwrap() <= removed + chrono::Duration::milliseconds(1100),
        "fired after its removal: {}",
        times.last().unwrap()
    );
    // Each fired within a second of its time (the execution's creation).
    let late: Vec<i64> = executions
        .iter()
        .zip(scheduled_times(&executions))
        .map(|(e, at)| ts_ms(&e.create_time).unwrap() - at.timestamp_millis())
        .collect();
    let within = late.iter().filter(|ms| **ms < 1000).count();
    assert!(
        within * 100 >= late.len() * 95,
        "fewer than 95% of the fires within a second: {late:?}"
    );
    // Each came with the trigger's inputs and completed.
    for e in &executions {
        assert_eq!(json(&e.inputs_json)["who"], "cron");
    }
    for e in &executions {
        let done = m.wait_terminal(&e.id, Duration::from_secs(60)).await;
        assert_eq!(
            done.status,
            pb::ExecutionStatus::Completed as i32,
            "{done:?}"
        );
    }
    // The fire records match the executions one to one.
    let mut conn = db.connect().await;
    let (fires,): (i64,) = sqlx::query_as("SELECT count(*) FROM trigger_fires")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(fires as usize, executions.len());
    drop(daemons);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_triggers_pause_resume_fire_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = reliability_options(None, "2s", "200ms");
    opts.data_dir = Some(dir.path().join("data"));
    let mut daemon = Daemon::start_ok(opts.clone()).await;
    let mut m = Mantle::connect(&daemon, RELIABILITY_TOKEN).await;
    m.apply(TICKER).await;
    let mut t = triggers(&daemon).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while executions_of(&mut m, "ticker").await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the trigger did not fire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = t
        .list_triggers(pb::ListTriggersRequest {
            workflow: "ticker".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .triggers;
    assert_eq!(listed.len(), 1);
    let trigger = &listed[0];
    assert_eq!(trigger.r#type, "cron");
    assert_eq!(trigger.schedule, "* * * * * *");
    assert!(trigger.next_fire_time.is_some());
    let last = trigger.last_fire.as_ref().expect("a last fire");
    assert_eq!(last.result, "started");
    let e = executions_of(&mut m, "ticker").await.remove(0);
    let seen = json(&e.trigger_json);
    assert_eq!(seen["trigger_id"], trigger.id.as_str());
    assert_eq!(seen["timezone"], "UTC");

    // Paused: nothing fires.
    let paused = t
        .pause_trigger(pb::PauseTriggerRequest {
            id: trigger.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused && paused.next_fire_time.is_none());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = executions_of(&mut m, "ticker").await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(executions_of(&mut m, "ticker").await.len(), before);
    // Fired by hand while paused: one execution, marked manual.
    let fired = t
        .fire_trigger(pb::FireTriggerRequest {
            id: trigger.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(json(&fired.trigger_json)["manual"], true);
    assert_eq!(executions_of(&mut m, "ticker").await.len(), before + 1);
    // Resumed: fires again, without catching up on the pause.
    t.resume_trigger(pb::ResumeTriggerRequest {
        id: trigger.id.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = executions_of(&mut m, "ticker").await.len();
    assert!(
        (before + 2..=before + 5).contains(&after),
        "{before} before the pause, {after} 2.5 s after the resume"
    );

    // Unknown and malformed ids.
    let status = t
        .pause_trigger(pb::PauseTriggerRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = t
        .pause_trigger(pb::PauseTriggerRequest { id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("id"), "{status:?}");

    // Catch-up: every missed second after five seconds down (catchup: all).
    m.apply(&TICKER.replace(
        "    inputs: {who: cron}",
        "    inputs: {who: cron}\n    catchup: all",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.sigterm(Duration::from_secs(20)).await.unwrap();
    let down = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    daemon.restart_ok(opts.clone()).await;
    let mut m = Mantle::connect(&daemon, RELIABILITY_TOKEN).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let times = scheduled_times(&executions_of(&mut m, "ticker").await);
    let missed = times
        .iter()
        .filter(|t| **t > down && **t < down + chrono::Duration::seconds(4))
        .count();
    assert!(
        missed >= 3,
        "only {missed} of the seconds missed while down fired"
    );
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "a time fired twice: {times:?}");

    // Removing the trigger stops it and lists nothing.
    m.apply(NO_TRIGGER).await;
    let mut t = triggers(&daemon).await;
    assert!(
        t.list_triggers(pb::ListTriggersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .triggers
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stopped = executions_of(&mut m, "ticker").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(executions_of(&mut m, "ticker").await.len(), stopped);
}

// Reads the request as the Go original did too (`inputs.trigger`, undeclared).
const HOOKED: &str = "name: hooked
triggers:
  - type: webhook
    path: /hooks/github/push
    secret: hook
steps:
  - name: note
    action: core/log
    params:
      message: \"{{ trigger.path }}\"
outputs:
  payload: trigger.payload
  via_inputs: inputs.trigger.payload
  event: trigger.headers['x-github-event']
";

fn hub_signature(key: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn mantle_signature(key: &str, t: i64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_start_executions_only_when_signed() {
    let daemon = Daemon::start_ok(
        reliability_options(None, "2s", "200ms").env("MANTLE_MAX_INPUT_BYTES", "4096"),
    )
    .await;
    let mut m = Mantle::connect(&daemon, RELIABILITY_TOKEN).await;
    let mut secrets = pb::secret_service_client::SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(RELIABILITY_TOKEN)),
    );
    secrets
        .create_secret(pb::CreateSecretRequest {
            name: "hook".into(),
            r#type: "bearer".into(),
            fields: [("token".to_owned(), "s3cret-hook-key".to_owned())].into(),
        })
        .await
        .unwrap();
    m.apply(HOOKED).await;
    let url = "/hooks/default/github/push";
    let body = br#"{"ref":"refs/heads/main","commits":[1,2]}"#;
    let post = |headers: Vec<(String, String)>, body: Vec<u8>| {
        let addr = daemon.addr;
        async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            http_post(addr, url, &h, &body).await.unwrap()
        }
    };
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let now = chrono::Utc::now().timestamp();
    let hub = hub_signature("s3cret-hook-key", body);
    let mantle = mantle_signature("s3cret-hook-key", now, body);

    // Refused: no signature, a wrong one, a stale one, a wrong bearer; nothing starts.
    for (headers, why) in [
        (h(&[]), "no signature"),
        (
            h(&[("X-Hub-Signature-256", "sha256=00ff")]),
            "does not match",
        ),
        (
            h(&[(
                "X-Mantle-Signature",
                &mantle_signature("s3cret-hook-key", now - 600, body),
            )]),
            "stale",
        ),
        (h(&[("Authorization", "Bearer guess")]), "does not match"),
    ] {
        let r = post(headers, body.to_vec()).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains(why), "{why}: {}", r.body);
    }
    // Unknown tenant or path: 404 alike.
    for path in ["/hooks/nobody/github/push", "/hooks/default/github/pull"] {
        let r = http_post(
            daemon.addr,
            path,
            &[("Authorization", "Bearer s3cret-hook-key")],
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    assert!(executions_of(&mut m, "hooked").await.is_empty());

    // Each scheme starts one execution, with the payload and the headers.
    let mut ids = Vec::new();
    for headers in [
        h(&[("X-Hub-Signature-256", &hub), ("X-GitHub-Event", "push")]),
        h(&[("X-Mantle-Signature", &mantle), ("X-GitHub-Event", "push")]),
        h(&[
            ("Authorization", "Bearer s3cret-hook-key"),
            ("X-GitHub-Event", "push"),
        ]),
    ] {
        let r = post(headers, body.to_vec()).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let answer: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(answer["duplicate"], false);
        ids.push(answer["execution_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let e = m.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(e.status, pb::ExecutionStatus::Completed as i32, "{e:?}");
        let outputs = json(&e.outputs_json);
        let payload = json!({"ref": "refs/heads/main", "commits": [1, 2]});
        assert_eq!(outputs["payload"], payload);
        assert_eq!(outputs["via_inputs"], payload);
        assert_eq!(outputs["event"], "push");
        let trigger = json(&e.trigger_json);
        assert_eq!(trigger["type"], "webhook");
        assert_eq!(trigger["path"], "/hooks/github/push");
        // The proof is not kept.
        let headers = trigger["headers"].as_object().unwrap();
        assert!(!headers.contains_key("authorization"));
        assert!(!headers.contains_key("x-hub-signature-256"));
        assert!(!e.trigger_json.contains("s3cret-hook-key"));
    }

    // A delivery id makes a retried delivery start one execution.
    let delivered = h(&[("X-Hub-Signature-256", &hub), ("X-GitHub-Delivery", "d-1")]);
    let first = post(delivered.clone(), body.to_vec()).await;
    let again = post(delivered, body.to_vec()).await;
    assert_eq!((first.status, again.status), (202, 202), "{}", again.body);
    let (first, again): (Value, Value) = (
        serde_json::from_str(&first.body).unwrap(),
        serde_json::from_str(&again.body).unwrap(),
    );
    assert_eq!(first["execution_id"], again["execution_id"]);
    assert_eq!(again["duplicate"], true);

    // A body that is not JSON is a string.
    let text = b"a=1&b=2";
    let r = post(
        h(&[
            (
                "X-Hub-Signature-256",
                &hub_signature("s3cret-hook-key", text),
            ),
            ("X-GitHub-Event", "form"),
        ]),
        text.to_vec(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id: Value = serde_json::from_str(&r.body).unwrap();
    let e = m
        .wait_terminal(
            id["execution_id"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(e.status, pb::ExecutionStatus::Completed as i32, "{e:?}");
    assert_eq!(json(&e.outputs_json)["payload"], "a=1&b=2");

    // A body over MANTLE_MAX_INPUT_BYTES: 413.
    let big = vec![b'x'; 5000];
    let r = post(
        h(&[(
            "X-Hub-Signature-256",
            &hub_signature("s3cret-hook-key", &big),
        )]),
        big,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);

    assert_eq!(executions_of(&mut m, "hooked").await.len(), 5);
    let metrics = daemon.http_get("/metrics").await.unwrap().body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mantle_webhook_refusals_total{reason=\"unauthenticated\"} 4")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("webhook_refusals"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Each refusal was audited (in the background: wait for the writes).
    let mut audit = pb::audit_service_client::AuditServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(RELIABILITY_TOKEN)),
    );
    let mut refused = Vec::new();
    for _ in 0..50 {
        refused = audit
            .list_audit_events(pb::ListAuditEventsRequest {
                action: "webhook.receive".into(),
                result: "UNAUTHENTICATED".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if refused.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(
        refused
            .iter()
            .all(|e| e.actor == "webhook" && e.resource.starts_with("triggers/"))
    );

    // Paused: 409, nothing starts.
    let mut t = triggers(&daemon).await;
    let id = t
        .list_triggers(pb::ListTriggersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .triggers[0]
        .id
        .clone();
    t.pause_trigger(pb::PauseTriggerRequest { id: id.clone() })
        .await
        .unwrap();
    let r = post(h(&[("X-Hub-Signature-256", &hub)]), body.to_vec()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(executions_of(&mut m, "hooked").await.len(), 5);
    t.resume_trigger(pb::ResumeTriggerRequest { id })
        .await
        .unwrap();

    // The tenant's rate limit applies: its bucket is the API's.
    daemon
        .tenants(Some(RELIABILITY_TOKEN))
        .await
        .update_tenant(pb::UpdateTenantRequest {
            name: "default".into(),
            settings: Some(pb::TenantSettings {
                rate_limit_per_minute: 2,
                ..Default::default()
            }),
            settings_mask: Some(prost_types::FieldMask {
                paths: vec!["rate_limit_per_minute".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut limited = None;
    let mut accepted = 0;
    for _ in 0..6 {
        let r = post(h(&[("X-Hub-Signature-256", &hub)]), body.to_vec()).await;
        match r.status {
            202 => accepted += 1,
            429 => {
                limited = Some(r);
                break;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    let limited = limited.expect("a request over the tenant's rate limit");
    assert!(
        limited.headers.contains_key("retry-after"),
        "{:?}",
        limited.headers
    );
    assert!(limited.body.contains("rate limit"), "{}", limited.body);
    assert_eq!(executions_of(&mut m, "hooked").await.len(), 5 + accepted);
}

fn email(n: u32) -> String {
    format!(
        "From: Ada <ada@example.com>\r\nTo: ops@example.com\r\nSubject: report {n}\r\n\
         Date: Fri, 4 Dec 2026 10:0{n}:00 +0000\r\nMessage-ID: <m{n}@example.com>\r\n\r\n\
         body of message {n}\r\n"
    )
}

const MAILED: &str = "name: mailed
triggers:
  - type: email
    mailbox: mail
    poll_interval: 5s
steps:
  - name: note
    action: core/log
    params:
      message: \"{{ trigger.subject }}\"
outputs:
  subject: trigger.subject
  from: trigger.from
  uid: trigger.uid
  body: trigger.body
  message_id: trigger.message_id
";

/// Three new messages start three executions, once each, whichever of the daemons polls.
async fn email_trigger_once_per_message(database: Option<PgDatabase>, daemons: usize) {
    let fake = mantle_integration::fake_imap::FakeImap::start("ada", "pw-1").await;
    let opts = reliability_options(database.as_ref().map(|d| d.url.as_str()), "2s", "200ms");
    let mut running = Vec::new();
    for _ in 0..daemons {
        running.push(Daemon::start_ok(opts.clone()).await);
    }
    let daemon = &running[0];
    let mut m = Mantle::connect(daemon, RELIABILITY_TOKEN).await;
    let mut secrets = pb::secret_service_client::SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(RELIABILITY_TOKEN)),
    );
    let port = fake.addr().port().to_string();
    secrets
        .create_secret(pb::CreateSecretRequest {
            name: "mail".into(),
            r#type: "imap".into(),
            fields: [
                ("host", "127.0.0.1"),
                ("port", port.as_str()),
                ("username", "ada"),
                ("password", "pw-1"),
                ("tls", "false"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        })
        .await
        .unwrap();
    m.apply(MAILED).await;
    let uids: Vec<u32> = (1..=3).map(|n| fake.deliver(&email(n))).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while executions_of(&mut m, "mailed").await.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three messages did not start three executions; logins: {}",
            fake.logins()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more polls: nothing more starts.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let executions = executions_of(&mut m, "mailed").await;
    assert_eq!(executions.len(), 3);
    let mut subjects = Vec::new();
    for e in &executions {
        let done = m.wait_terminal(&e.id, Duration::from_secs(30)).await;
        assert_eq!(
            done.status,
            pb::ExecutionStatus::Completed as i32,
            "{done:?}"
        );
        let out = json(&done.outputs_json);
        assert_eq!(out["from"], "Ada <ada@example.com>");
        let uid = out["uid"].as_u64().unwrap() as u32;
        assert_eq!(out["subject"], format!("report {uid}"));
        assert_eq!(out["message_id"], format!("<m{uid}@example.com>"));
        assert!(
            out["body"]
                .as_str()
                .unwrap()
                .contains(&format!("body of message {uid}"))
        );
        subjects.push(out["subject"].as_str().unwrap().to_owned());
    }
    subjects.sort();
    assert_eq!(subjects, ["report 1", "report 2", "report 3"]);
    for uid in uids {
        assert!(fake.seen(uid), "message {uid} not marked seen");
    }
    drop(running);
    if let Some(db) = database {
        drop(db);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_trigger_starts_one_execution_per_message_sqlite() {
    email_trigger_once_per_message(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_trigger_starts_one_execution_per_message_on_two_postgres_daemons() {
    let Some(db) = PgDatabase::create("email_trigger_once_two_daemons").await else {
        return;
    };
    email_trigger_once_per_message(Some(db), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_may_pin_the_version_it_starts() {
    let daemon = Daemon::start_ok(reliability_options(None, "2s", "200ms")).await;
    let mut m = Mantle::connect(&daemon, RELIABILITY_TOKEN).await;
    let v1 = m.apply(NO_TRIGGER).await;
    // Version 2 brings a trigger that starts version 1; a yearly schedule never fires here.
    let pinned = TICKER.replace("* * * * * *", "0 0 1 1 *").replace(
        "    inputs: {who: cron}",
        &format!("    inputs: {{who: cron}}\n    version: {}", v1.version),
    );
    let v2 = m.apply(&pinned).await;
    assert_eq!(v2.version, v1.version + 1);
    let mut t = triggers(&daemon).await;
    let listed = t
        .list_triggers(pb::ListTriggersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .triggers;
    assert_eq!(listed[0].pinned_version, v1.version);
    let fired = t
        .fire_trigger(pb::FireTriggerRequest {
            id: listed[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(fired.version, v1.version);
    // A version that is not a number is refused where it is written.
    let bad = pinned.replace(&format!("version: {}", v1.version), "version: latest");
    let status = m
        .defs
        .apply_definition(pb::ApplyDefinitionRequest {
            source: bad,
            filename: "ticker.yaml".into(),
        })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("triggers[0].version: expected a version number"),
        "{status:?}"
    );
}
