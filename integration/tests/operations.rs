//! Operations on many executions and on a workflow's history, through mantlectl and the
//! API: bulk cancellation, deletion, rollback, tenant retention and the retention janitor.

use std::process::Output;
use std::time::{Duration, Instant};

use mantle_integration::*;
use mantle_proto::v1 as pb;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A daemon with an operator token, a tenant key of `default`, and its clients.
struct Env {
    daemon: Daemon,
    operator: String,
    token: String,
    m: Mantle,
    home: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

/// Starts a daemon on `backend` with `env`; `None` when PostgreSQL is unavailable and the
/// test is skipped.
async fn setup(backend: Backend, test: &str, env: &[(&str, &str)]) -> Option<Env> {
    let (mut opts, db) = match backend {
        Backend::Sqlite => (DaemonOptions::sqlite(), None),
        Backend::Postgres => {
            let db = PgDatabase::create(&format!("{test}_on_postgres")).await?;
            (DaemonOptions::postgres(db.url.clone()), Some(db))
        }
    };
    for (k, v) in [
        ("MANTLE_ENGINE_LEASE_TTL", "2s"),
        ("MANTLE_ENGINE_POLL_INTERVAL", "200ms"),
    ]
    .iter()
    .chain(env)
    {
        opts = opts.env(*k, *v);
    }
    let daemon = Daemon::start_ok(opts).await;
    let operator = match &db {
        None => daemon.operator_token(),
        Some(db) => admin_key_create(&db.url, "it-operator").await,
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let m = Mantle::connect(&daemon, &token).await;
    Some(Env {
        daemon,
        operator,
        token,
        m,
        home: tempfile::tempdir().unwrap(),
        _db: db,
    })
}

impl Env {
    /// Runs `mantlectl --address <daemon> --token <token> <args>`.
    async fn ctl(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = mantlectl_command(self.home.path());
        cmd.arg("--address")
            .arg(self.daemon.addr.to_string())
            .arg("--token")
            .arg(token)
            .env("MANTLE_DATA_DIR", self.home.path().join("no-data"))
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(60))
            .await
            .unwrap_or_else(|err| panic!("mantlectl {args:?}: {err:#}"))
    }

    /// mantlectl with the tenant key, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        self.ok_as(&self.token, args).await
    }

    async fn ok_as(&self, token: &str, args: &[&str]) -> String {
        let output = self.ctl(token, args).await;
        assert!(
            output.status.success(),
            "mantlectl {args:?} failed\n{}",
            describe_output(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// mantlectl `args -o json` with `token`, which must succeed.
    async fn json_as(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        json(&self.ok_as(token, &full).await)
    }

    /// GetExecution's status code: OK or what refused it.
    async fn get_code(&mut self, id: &str) -> tonic::Code {
        match self
            .m
            .execs
            .get_execution(pb::GetExecutionRequest { id: id.to_owned() })
            .await
        {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The number in `text` after `before` (`cancellation requested for 3 executions`).
fn count_in(text: &str, before: &str) -> u64 {
    let rest = text
        .split_once(before)
        .unwrap_or_else(|| panic!("{before:?} not in {text:?}"))
        .1;
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {before:?} in {text:?}"))
}

fn sleeper(name: &str) -> String {
    format!(
        "name: {name}\nsteps:\n  - name: s\n    action: core/sleep\n    params: {{duration: 120s}}\n"
    )
}

fn quick(name: &str) -> String {
    format!("name: {name}\nsteps:\n  - name: s\n    action: core/set\n    params: {{x: 1}}\n")
}

/// Runs a scenario on SQLite and on PostgreSQL: `<name>::sqlite`, `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both_backends!(bulk_cancel, delete_executions, rollback);

/// `executions cancel --workflow W` cancels every unfinished execution of W, and only those;
/// without a filter mantlectl refuses.
async fn bulk_cancel(backend: Backend) {
    let Some(mut env) = setup(backend, "bulk_cancel", &[]).await else {
        return;
    };
    env.m.apply(&sleeper("doomed")).await;
    env.m.apply(&sleeper("spared")).await;
    let mut doomed = Vec::new();
    for _ in 0..3 {
        doomed.push(env.m.start_ok("doomed", "").await.id);
    }
    let spared = env.m.start_ok("spared", "").await.id;
    for id in doomed.iter().chain([&spared]) {
        env.m
            .wait_until(id, Duration::from_secs(20), "sleeping", |e, _| {
                e.status == pb::ExecutionStatus::Running as i32
            })
            .await;
    }

    // No filter: a usage error from clap, before any request.
    let refused = env.ctl(&env.token, &["executions", "cancel"]).await;
    assert_eq!(
        refused.status.code(),
        Some(2),
        "{}",
        describe_output(&refused)
    );
    assert!(
        stderr_of(&refused).contains("--workflow"),
        "{}",
        describe_output(&refused)
    );
    for id in doomed.iter().chain([&spared]) {
        let e = env.m.get(id).await;
        assert_eq!(e.status, pb::ExecutionStatus::Running as i32, "{e:?}");
    }

    let out = env
        .ok(&["executions", "cancel", "--workflow", "doomed"])
        .await;
    assert_eq!(count_in(&out, "for "), 3, "{out}");
    for id in &doomed {
        let e = env.m.wait_terminal(id, Duration::from_secs(20)).await;
        assert_eq!(e.status, pb::ExecutionStatus::Cancelled as i32, "{e:?}");
    }
    // Nothing left to cancel: none is counted twice.
    let again = env
        .ok(&["executions", "cancel", "--workflow", "doomed"])
        .await;
    assert_eq!(count_in(&again, "for "), 0, "{again}");
    let other = env.m.get(&spared).await;
    assert_eq!(
        other.status,
        pb::ExecutionStatus::Running as i32,
        "{other:?}"
    );

    // A finished status is refused by the server.
    let finished = env
        .ctl(
            &env.token,
            &["executions", "cancel", "--status", "completed"],
        )
        .await;
    assert!(!finished.status.success(), "{}", describe_output(&finished));
    assert!(
        stderr_of(&finished).contains("status"),
        "{}",
        describe_output(&finished)
    );
    // By status: the spared one is the last one running.
    let out = env
        .ok(&["executions", "cancel", "--status", "running"])
        .await;
    assert_eq!(count_in(&out, "for "), 1, "{out}");
    let e = env.m.wait_terminal(&spared, Duration::from_secs(20)).await;
    assert_eq!(e.status, pb::ExecutionStatus::Cancelled as i32);
}

/// `executions delete ID` deletes a finished execution and refuses a running one;
/// `executions delete --before` deletes finished executions of one workflow only.
async fn delete_executions(backend: Backend) {
    let Some(mut env) = setup(backend, "delete_executions", &[]).await else {
        return;
    };
    env.m.apply(&quick("quick")).await;
    env.m.apply(&quick("other")).await;
    env.m.apply(&sleeper("slow")).await;
    let (done, _) = env.m.run("quick", "", Duration::from_secs(20)).await;
    assert_eq!(done.status, pb::ExecutionStatus::Completed as i32);
    let running = env.m.start_ok("slow", "").await.id;
    env.m
        .wait_until(&running, Duration::from_secs(20), "sleeping", |e, _| {
            e.status == pb::ExecutionStatus::Running as i32
        })
        .await;

    let out = env.ok(&["executions", "delete", &done.id]).await;
    assert!(out.contains(&done.id), "{out}");
    assert_eq!(env.get_code(&done.id).await, tonic::Code::NotFound);
    // Deleted, its attempts and events are gone too.
    let attempts = env
        .m
        .execs
        .list_step_attempts(pb::ListStepAttemptsRequest {
            id: done.id.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await;
    assert_code(attempts, tonic::Code::NotFound, "attempts of a deleted one");
    // Twice: not found.
    let twice = env
        .ctl(&env.token, &["executions", "delete", &done.id])
        .await;
    assert!(!twice.status.success());
    assert!(
        stderr_of(&twice).to_lowercase().contains("not found"),
        "{}",
        describe_output(&twice)
    );

    let refused = env
        .ctl(&env.token, &["executions", "delete", &running])
        .await;
    assert!(!refused.status.success(), "{}", describe_output(&refused));
    assert!(
        stderr_of(&refused).contains("cancel it first"),
        "{}",
        describe_output(&refused)
    );
    let still = env.m.get(&running).await;
    assert_eq!(still.status, pb::ExecutionStatus::Running as i32);
    // Another tenant's key cannot delete it either: not found.
    let tenant = random_name("del");
    create_tenant(&env.daemon, &env.operator, &tenant).await;
    let theirs = create_api_key(&env.daemon, &env.operator, &tenant, &["*"]).await;
    let foreign = env.ctl(&theirs, &["executions", "delete", &running]).await;
    assert!(!foreign.status.success());
    assert!(
        stderr_of(&foreign).to_lowercase().contains("not found"),
        "{}",
        describe_output(&foreign)
    );

    // --before 0s --workflow quick: the finished ones of quick only.
    let mut quick_ids = Vec::new();
    for _ in 0..3 {
        let (e, _) = env.m.run("quick", "", Duration::from_secs(20)).await;
        quick_ids.push(e.id);
    }
    let (other, _) = env.m.run("other", "", Duration::from_secs(20)).await;
    // (mantlectl takes no `0s`: durations are more than 0; a second ago is the closest.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = env
        .ok(&[
            "executions",
            "delete",
            "--before",
            "1s",
            "--workflow",
            "quick",
        ])
        .await;
    assert_eq!(count_in(&out, "deleted "), 3, "{out}");
    for id in &quick_ids {
        assert_eq!(env.get_code(id).await, tonic::Code::NotFound, "{id}");
    }
    assert_eq!(env.get_code(&other.id).await, tonic::Code::Ok);
    assert_eq!(env.get_code(&running).await, tonic::Code::Ok);
    // Without --workflow (an RFC 3339 time): other's goes, the running one stays.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let out = env.ok(&["executions", "delete", "--before", &now]).await;
    assert_eq!(count_in(&out, "deleted "), 1, "{out}");
    assert_eq!(env.get_code(&other.id).await, tonic::Code::NotFound);
    assert_eq!(env.get_code(&running).await, tonic::Code::Ok);
    // --workflow needs --before.
    let usage = env
        .ctl(&env.token, &["executions", "delete", "--workflow", "quick"])
        .await;
    assert_eq!(usage.status.code(), Some(2), "{}", describe_output(&usage));
}

/// `workflows rollback NAME --to-version 1` stores v1's YAML as a new version.
async fn rollback(backend: Backend) {
    let Some(mut env) = setup(backend, "rollback", &[]).await else {
        return;
    };
    let v1_source = quick("rolled");
    let v2_source = v1_source.replace("{x: 1}", "{x: 2}");
    assert_ne!(v1_source, v2_source);
    let v1 = env.m.apply(&v1_source).await;
    let v2 = env.m.apply(&v2_source).await;
    assert_eq!((v1.version, v2.version), (1, 2));

    let out = env
        .json_as(
            &env.token,
            &["workflows", "rollback", "rolled", "--to-version", "1"],
        )
        .await;
    assert_eq!(out["created"], true, "{out}");
    assert_eq!(out["definition"]["version"], 3, "{out}");
    let get = |version: i64| pb::GetDefinitionRequest {
        name: "rolled".to_owned(),
        version,
    };
    let v3 = expect_ok(env.m.defs.get_definition(get(3)).await, "GetDefinition v3");
    assert_eq!(v3.source, v1_source);
    assert_eq!(v3.content_hash, v1.content_hash);
    let latest = expect_ok(env.m.defs.get_definition(get(0)).await, "GetDefinition");
    assert_eq!(latest.version, 3);
    // New executions run it.
    let (e, _) = env.m.run("rolled", "", Duration::from_secs(20)).await;
    assert_eq!(e.version, 3);

    // Back to what is the latest already (same YAML as v1 = v3): nothing stored.
    for to in ["3", "1"] {
        let same = env
            .json_as(
                &env.token,
                &["workflows", "rollback", "rolled", "--to-version", to],
            )
            .await;
        assert_eq!(same["created"], false, "to {to}: {same}");
        assert_eq!(same["definition"]["version"], 3, "to {to}: {same}");
    }
    assert_code(
        env.m.defs.get_definition(get(4)).await,
        tonic::Code::NotFound,
        "v4",
    );

    // A version that does not exist, of a workflow that does or does not.
    let missing = env
        .m
        .defs
        .rollback_definition(pb::RollbackDefinitionRequest {
            name: "rolled".to_owned(),
            to_version: 9,
        })
        .await;
    assert_code(missing, tonic::Code::NotFound, "rollback to v9");
    let unknown = env
        .m
        .defs
        .rollback_definition(pb::RollbackDefinitionRequest {
            name: "no-such-workflow".to_owned(),
            to_version: 1,
        })
        .await;
    assert_code(
        unknown,
        tonic::Code::NotFound,
        "rollback of a missing workflow",
    );
    let ctl = env
        .ctl(
            &env.token,
            &["workflows", "rollback", "rolled", "--to-version", "9"],
        )
        .await;
    assert!(!ctl.status.success());
    assert!(
        stderr_of(&ctl).to_lowercase().contains("not found"),
        "{}",
        describe_output(&ctl)
    );
    let listed = expect_ok(
        env.m
            .defs
            .list_definition_versions(pb::ListDefinitionVersionsRequest {
                name: "rolled".to_owned(),
                ..Default::default()
            })
            .await,
        "ListDefinitionVersions",
    );
    assert_eq!(listed.versions.len(), 3, "{listed:?}");
}

/// `tenants create --retention` and `tenants update --retention 0` round-trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_retention_round_trips() {
    let env = setup(Backend::Sqlite, "tenant_retention", &[])
        .await
        .unwrap();
    let op = env.operator.clone();
    let name = random_name("ret");
    let created = env
        .json_as(&op, &["tenants", "create", &name, "--retention", "30d"])
        .await;
    assert_eq!(created["retention_seconds"], 30 * 86_400, "{created}");
    let got = env.json_as(&op, &["tenants", "get", &name]).await;
    assert_eq!(got["retention_seconds"], 30 * 86_400, "{got}");
    // Through the API too.
    let mut tenants = env.daemon.tenants(Some(&op)).await;
    let t = expect_ok(
        tenants
            .get_tenant(pb::GetTenantRequest { name: name.clone() })
            .await,
        "GetTenant",
    );
    assert_eq!(
        t.settings.unwrap().retention.map(|d| d.seconds),
        Some(30 * 86_400)
    );
    let table = env.ok_as(&op, &["tenants", "get", &name]).await;
    assert!(table.contains("retention"), "{table}");

    // Another setting leaves it.
    let other = env
        .json_as(
            &op,
            &[
                "tenants",
                "update",
                &name,
                "--max-concurrent-executions",
                "4",
            ],
        )
        .await;
    assert_eq!(other["retention_seconds"], 30 * 86_400, "{other}");
    let changed = env
        .json_as(&op, &["tenants", "update", &name, "--retention", "12h"])
        .await;
    assert_eq!(changed["retention_seconds"], 12 * 3_600, "{changed}");
    let cleared = env
        .json_as(&op, &["tenants", "update", &name, "--retention", "0"])
        .await;
    assert_eq!(cleared["retention_seconds"], 0, "{cleared}");
    let got = env.json_as(&op, &["tenants", "get", &name]).await;
    assert_eq!(got["retention_seconds"], 0, "{got}");
    assert_eq!(got["max_concurrent_executions"], 4, "{got}");
    let t = expect_ok(
        tenants
            .get_tenant(pb::GetTenantRequest { name: name.clone() })
            .await,
        "GetTenant",
    );
    assert!(
        t.settings.unwrap().retention.is_none_or(|d| d.seconds == 0),
        "cleared"
    );
    // Fractions of a second are refused by mantlectl.
    let bad = env
        .ctl(&op, &["tenants", "update", &name, "--retention", "1.5s"])
        .await;
    assert!(!bad.status.success(), "{}", describe_output(&bad));
}

/// The janitor deletes a tenant's finished executions past its retention, never a running
/// one, and counts them in /metrics.
/// A new tenant (named from `prefix`) whose finished executions are kept one second, and
/// clients with a key of it.
async fn tenant_keeping_one_second(daemon: &Daemon, operator: &str, prefix: &str) -> Mantle {
    let tenant = random_name(prefix);
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: tenant.clone(),
                settings: Some(pb::TenantSettings {
                    retention: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "CreateTenant",
    );
    let token = create_api_key(daemon, operator, &tenant, &["*"]).await;
    Mantle::connect(daemon, &token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_janitor_deletes_finished_executions() {
    let env = setup(
        Backend::Sqlite,
        "retention_janitor",
        &[("MANTLE_RETENTION_INTERVAL", "1s")],
    )
    .await
    .unwrap();
    let mut m = tenant_keeping_one_second(&env.daemon, &env.operator, "jan").await;
    m.apply(&quick("quick")).await;
    m.apply(&sleeper("slow")).await;
    // The default tenant keeps everything (no MANTLE_RETENTION_DAYS).
    let mut default_m = env.m.clone();
    default_m.apply(&quick("kept")).await;
    let (kept, _) = default_m.run("kept", "", Duration::from_secs(20)).await;

    let running = m.start_ok("slow", "").await.id;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let (e, _) = m.run("quick", "", Duration::from_secs(20)).await;
        assert_eq!(e.status, pb::ExecutionStatus::Completed as i32);
        finished.push(e.id);
    }

    let code = |m: &Mantle, id: String| {
        let mut execs = m.execs.clone();
        async move {
            match execs.get_execution(pb::GetExecutionRequest { id }).await {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let mut gone = 0;
        for id in &finished {
            if code(&m, id.clone()).await == tonic::Code::NotFound {
                gone += 1;
            }
        }
        // The running one is never deleted, however long it has been there.
        let r = m.get(&running).await;
        assert!(!is_terminal_status(r.status), "{r:?}");
        if gone == finished.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{gone} of {} finished executions deleted within 25 s\n{}",
            finished.len(),
            env.daemon.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A few more passes: still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(code(&m, running.clone()).await, tonic::Code::Ok);
    assert_eq!(code(&default_m, kept.id.clone()).await, tonic::Code::Ok);

    let deleted = env
        .daemon
        .metric("mantle_retention_deleted_executions_total")
        .await;
    assert!(
        deleted >= finished.len() as f64,
        "mantle_retention_deleted_executions_total is {deleted}"
    );

    // Once cancelled and ended, the running one goes too.
    m.cancel(&running).await;
    m.wait_terminal(&running, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(15), || {
            let fut = code(&m, running.clone());
            async move { fut.await == tonic::Code::NotFound }
        })
        .await,
        "the cancelled execution was not deleted"
    );
}

/// Two daemons on one PostgreSQL database: the retention janitor runs on one of them (the
/// lease holder's metrics have the backlog gauge, the other's none), and it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_janitor_runs_on_one_replica() {
    let Some(db) = PgDatabase::create("retention_one_replica").await else {
        return;
    };
    let options = || {
        DaemonOptions::postgres(db.url.clone())
            .env("MANTLE_RETENTION_INTERVAL", "1s")
            .env("MANTLE_ENGINE_POLL_INTERVAL", "200ms")
    };
    let a = Daemon::start_ok(options()).await;
    let b = Daemon::start_ok(options()).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    let mut m = tenant_keeping_one_second(&a, &operator, "rep").await;
    m.apply(&quick("quick")).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (e, _) = m.run("quick", "", Duration::from_secs(20)).await;
        ids.push(e.id);
    }
    let gone = eventually(Duration::from_secs(25), || {
        let mut execs = m.execs.clone();
        let ids = ids.clone();
        async move {
            for id in ids {
                if execs
                    .get_execution(pb::GetExecutionRequest { id })
                    .await
                    .is_ok()
                {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(gone, "the finished executions were not deleted within 25 s");
    // Some more passes, then: which daemons ran one?
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut holders = Vec::new();
    for (name, daemon) in [("a", &a), ("b", &b)] {
        let body = daemon.http_get("/metrics").await.expect("metrics").body;
        if body
            .lines()
            .any(|l| l.starts_with("mantle_retention_backlog{"))
        {
            holders.push(name);
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "the janitor ran on {holders:?}, not on exactly one daemon"
    );
}
