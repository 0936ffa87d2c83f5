//! One tenant attacks the daemon as a hostile tenant would; another tenant, and the daemon
//! itself, must not notice. Each attack is measured against the same workload without it,
//! in the same test:
//!
//! - expressions that would run for minutes or take gigabytes (nested comprehensions,
//!   string and list growth, regular expressions), and workflow files that take seconds to
//!   check: the other tenant's 10-step workflow and `/healthz` stay within 3× their
//!   latency without the attack; the hostile steps fail naming the limit and its setting;
//! - timeouts hold while an expression runs;
//! - listings of executions with 3.5 MB inputs: every page under 4 MB, the daemon's memory
//!   bounded;
//! - NUL characters and invalid UTF-8 in requests, and a database that refuses a
//!   checkpoint for good: a clear error or a finished execution, never a stuck one;
//! - outbound requests: proxy variables, the special address ranges, credentials on
//!   redirects;
//! - a webhook endpoint that hangs, and thousands of watch streams: another tenant's
//!   deliveries and executions are not held up;
//! - file modes of a new data directory.
//!
//! The latency measurements run alone (see `.config/nextest.toml`): other tests running
//! beside them on a 2-core machine would be noise, not attack. Baselines under a few
//! milliseconds are scheduling noise as much as work: the bound is 3× the larger of the
//! baseline and a floor (5 ms for `/healthz`, 25 ms for a workflow).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mantle_integration::*;
use serde_json::json;
use tonic::Code;

use pb::{ExecutionStatus as Ex, StepStatus as St};

/// The 10-step workflow the bystander tenant runs.
const CHAIN: &str = r#"
name: chain
steps:
  - name: s0
    action: core/set
    params: {v: "{{ 1 }}"}
  - name: s1
    action: core/set
    params: {v: "{{ steps.s0.output.v + 1 }}"}
  - name: s2
    action: core/set
    params: {v: "{{ steps.s1.output.v + 1 }}"}
  - name: s3
    action: core/set
    params: {v: "{{ steps.s2.output.v + 1 }}"}
  - name: s4
    action: core/log
    params: {message: "at {{ steps.s3.output.v }}"}
  - name: s5
    action: core/set
    depends_on: [s4]
    params: {v: "{{ steps.s3.output.v + 1 }}"}
  - name: s6
    action: core/set
    params: {v: "{{ steps.s5.output.v + 1 }}"}
  - name: s7
    action: core/set
    params: {v: "{{ steps.s6.output.v + 1 }}"}
  - name: s8
    action: core/set
    params: {v: "{{ steps.s7.output.v + 1 }}"}
  - name: s9
    action: core/set
    params: {v: "{{ steps.s8.output.v + 1 }}"}
outputs:
  v: steps.s9.output.v
"#;

/// Two tenants with `*` keys on one daemon.
struct Tenants {
    daemon: Daemon,
    operator: String,
    /// The tenants' names.
    a_name: String,
    b_name: String,
    /// The hostile tenant's clients and token.
    a: Mantle,
    a_token: String,
    /// The bystander's.
    b: Mantle,
}

async fn two_tenants(opts: DaemonOptions) -> Tenants {
    let daemon = Daemon::start_ok(opts).await;
    let operator = daemon.operator_token();
    let (ta, tb) = (random_name("hostile"), random_name("bystander"));
    create_tenant(&daemon, &operator, &ta).await;
    create_tenant(&daemon, &operator, &tb).await;
    let a_token = create_api_key(&daemon, &operator, &ta, &["*"]).await;
    let b_token = create_api_key(&daemon, &operator, &tb, &["*"]).await;
    let a = Mantle::connect(&daemon, &a_token).await;
    let mut b = Mantle::connect(&daemon, &b_token).await;
    b.apply(CHAIN).await;
    Tenants {
        daemon,
        operator,
        a_name: ta,
        b_name: tb,
        a,
        a_token,
        b,
    }
}

/// Runs the bystander's chain once and returns how long it took from the start to the end
/// of its event stream (pushed, so no polling interval in the measure).
async fn chain_once(b: &mut Mantle) -> Duration {
    let start = Instant::now();
    let e = b.start_ok("chain", "").await;
    let events = b
        .watch(&e.id, 0, Duration::from_secs(60))
        .await
        .expect("watch the chain");
    let elapsed = start.elapsed();
    let last = events.last().expect("events");
    assert_eq!(last.execution_status, Ex::Completed as i32, "{events:?}");
    elapsed
}

async fn healthz_once(daemon: &Daemon) -> Duration {
    let start = Instant::now();
    let r = daemon.http_get("/healthz").await.expect("GET /healthz");
    assert_eq!(r.status, 200);
    start.elapsed()
}

fn p99(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() as f64 * 0.99).ceil() as usize).clamp(1, s.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The bystander's latencies over `rounds` rounds: one chain and five `/healthz` each.
async fn measure(t: &mut Tenants, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut chains, mut health) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        chains.push(chain_once(&mut t.b).await);
        for _ in 0..5 {
            health.push(healthz_once(&t.daemon).await);
        }
    }
    (chains, health)
}

/// Asserts the loaded p99 is within 3× the unloaded one (or of `floor`); prints both.
fn within_3x(what: &str, unloaded: &[Duration], loaded: &[Duration], floor: Duration) {
    let (u, l) = (p99(unloaded), p99(loaded));
    let bound = 3 * u.max(floor);
    println!(
        "{what}: p99 {:.1} ms unloaded ({} samples), {:.1} ms under attack ({} samples): {:.2}x",
        ms(u),
        unloaded.len(),
        ms(l),
        loaded.len(),
        ms(l) / ms(u)
    );
    assert!(
        l <= bound,
        "{what}: p99 {:.1} ms under attack, over 3x {:.1} ms",
        ms(l),
        ms(u.max(floor))
    );
}

const HEALTH_FLOOR: Duration = Duration::from_millis(5);
const CHAIN_FLOOR: Duration = Duration::from_millis(25);

/// Hostile expressions, each with what must be in its error.
fn hostile_workflows() -> Vec<(&'static str, String, serde_json::Value, &'static str)> {
    let l: Vec<u32> = (0..5000).collect();
    let s = "a".repeat(45_000);
    let wf = |name: &str, param: &str| {
        format!(
            "name: {name}\ninputs:\n  l: {{type: array, required: false}}\n  s: {{type: string, required: false}}\nsteps:\n  - name: spin\n    action: core/set\n    params:\n      v: \"{param}\"\n"
        )
    };
    vec![
        (
            "nested",
            wf(
                "nested",
                "{{ inputs.l.all(x, inputs.l.all(y, x + y >= 0)) }}",
            ),
            json!({ "l": l }),
            "MANTLE_EXPR_",
        ),
        (
            "exists",
            wf(
                "exists",
                "{{ inputs.l.exists(x, inputs.l.exists(y, x + y < 0)) }}",
            ),
            json!({ "l": l }),
            "MANTLE_EXPR_",
        ),
        (
            "replace",
            wf("replace", "{{ size(inputs.s.replace('a', inputs.s)) }}"),
            json!({ "s": s }),
            "MANTLE_EXPR_MAX_VALUE_BYTES",
        ),
        (
            "copies",
            wf("copies", "{{ inputs.l.map(x, inputs.l).size() }}"),
            json!({ "l": l }),
            "MANTLE_EXPR_MAX_VALUE_BYTES",
        ),
        (
            "join",
            wf(
                "join",
                "{{ size(inputs.l.map(x, inputs.s).join(inputs.s)) }}",
            ),
            json!({ "l": l, "s": s }),
            "MANTLE_EXPR_MAX_VALUE_BYTES",
        ),
        (
            "regex",
            wf(
                "regex",
                "{{ inputs.l.all(x, inputs.l.all(y, inputs.s.matches('^(a|aa)+$'))) }}",
            ),
            json!({ "l": l, "s": s }),
            "MANTLE_EXPR_",
        ),
        (
            "range",
            wf(
                "range",
                "{{ lists.range(1000000).map(x, lists.range(1000000)).size() }}",
            ),
            json!({}),
            "MANTLE_EXPR_",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_expressions_do_not_slow_others_and_fail_naming_the_limit() {
    let mut t = two_tenants(DaemonOptions::sqlite()).await;
    let workflows = hostile_workflows();
    for (_, source, _, _) in &workflows {
        t.a.apply(source).await;
    }
    // Warm up, then the bystander alone.
    measure(&mut t, 5).await;
    let (chains, health) = measure(&mut t, 30).await;

    // Each hostile workflow three times at once, then the bystander beside them.
    let mut hostile = Vec::new();
    for _ in 0..3 {
        for (name, _, inputs, expected) in &workflows {
            let e = t.a.start_ok(name, &inputs.to_string()).await;
            hostile.push((e.id, *name, *expected));
        }
    }
    let (loaded_chains, loaded_health) = measure(&mut t, 30).await;
    within_3x(
        "bystander's 10-step chain",
        &chains,
        &loaded_chains,
        CHAIN_FLOOR,
    );
    within_3x("/healthz", &health, &loaded_health, HEALTH_FLOOR);

    for (id, name, expected) in hostile {
        let e = t.a.wait_terminal(&id, Duration::from_secs(120)).await;
        assert_eq!(e.status, Ex::Failed as i32, "{name}: {e:?}");
        assert!(
            e.error.contains(expected) && e.error.contains("step \"spin\" failed"),
            "{name}: {}",
            e.error
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_hold_while_an_expression_runs() {
    // Limits far off, so that the timeouts are what end the evaluations.
    let opts = DaemonOptions::sqlite()
        .env("MANTLE_EXPR_MAX_COST", "1000000000000")
        .env("MANTLE_EXPR_MAX_VALUE_BYTES", "1000000000")
        .env("MANTLE_EXPR_TIMEOUT", "10m");
    let mut t = two_tenants(opts).await;
    let inputs = json!({ "l": (0..20000).collect::<Vec<u32>>() }).to_string();
    t.a.apply(
        "name: workflow-timeout\ntimeout: 2s\ninputs:\n  l: {type: array}\nsteps:\n  - name: spin\n    action: core/set\n    params:\n      v: \"{{ inputs.l.all(x, inputs.l.all(y, x + y >= 0)) }}\"\n",
    )
    .await;
    t.a.apply(
        "name: step-timeout\ninputs:\n  l: {type: array}\nsteps:\n  - name: spin\n    action: core/set\n    timeout: 1s\n    params:\n      v: \"{{ inputs.l.all(x, inputs.l.all(y, x + y >= 0)) }}\"\n",
    )
    .await;
    t.a.apply(
        "name: condition\ninputs:\n  l: {type: array}\nsteps:\n  - name: spin\n    action: core/log\n    if: inputs.l.all(x, inputs.l.all(y, x + y >= 0))\n    params: {message: never}\ntimeout: 2s\n",
    )
    .await;
    measure(&mut t, 3).await;
    let (chains, health) = measure(&mut t, 20).await;

    let start = Instant::now();
    let wf = t.a.start_ok("workflow-timeout", &inputs).await;
    let step = t.a.start_ok("step-timeout", &inputs).await;
    let condition = t.a.start_ok("condition", &inputs).await;
    let (loaded_chains, loaded_health) = measure(&mut t, 20).await;

    let e = t.a.wait_terminal(&wf.id, Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::TimedOut as i32, "{e:?}");
    let e = t.a.wait_terminal(&step.id, Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::Failed as i32, "{e:?}");
    assert!(
        e.error.contains("ran longer than 1s (the step's timeout)"),
        "{}",
        e.error
    );
    let e =
        t.a.wait_terminal(&condition.id, Duration::from_secs(30))
            .await;
    assert_eq!(e.status, Ex::TimedOut as i32, "{e:?}");
    // Every one ended within a few seconds of its timeout, not when the loops would have.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    within_3x(
        "bystander's chain beside long evaluations",
        &chains,
        &loaded_chains,
        CHAIN_FLOOR,
    );
    within_3x(
        "/healthz beside long evaluations",
        &health,
        &loaded_health,
        HEALTH_FLOOR,
    );
}

/// A workflow file of 2000 templates: seconds of checking in a debug build.
fn heavy_file(name: &str) -> String {
    let mut source =
        format!("name: {name}\nsteps:\n  - name: a\n    action: core/set\n    params:\n");
    let mut i = 0;
    while i < 2_000 {
        source.push_str(&format!(
            "      k{i}: \"{{{{ [1, 2, 3].map(x, x * {i}).exists(y, y > 0) && size('{}') > 0 }}}}\"\n",
            "x".repeat(20)
        ));
        i += 1;
    }
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_definition_checks_do_not_slow_others() {
    let mut t = two_tenants(DaemonOptions::sqlite()).await;
    measure(&mut t, 5).await;
    let (chains, health) = measure(&mut t, 20).await;
    // They take their turns in the CPU pool: more than a default 30 s deadline for the last.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", t.daemon.addr))
        .unwrap()
        .timeout(Duration::from_secs(300))
        .connect()
        .await
        .unwrap();
    let mut checks = Vec::new();
    for i in 0..8 {
        let mut defs = pb::definition_service_client::DefinitionServiceClient::with_interceptor(
            channel.clone(),
            Auth::new(Some(&t.a_token)),
        );
        let source = heavy_file(&format!("heavy{i}"));
        checks.push(tokio::spawn(async move {
            defs.validate_definition(pb::ValidateDefinitionRequest {
                source,
                filename: "heavy.yaml".into(),
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (loaded_chains, loaded_health) = measure(&mut t, 20).await;
    within_3x(
        "bystander's chain beside 8 file checks",
        &chains,
        &loaded_chains,
        CHAIN_FLOOR,
    );
    within_3x(
        "/healthz beside 8 file checks",
        &health,
        &loaded_health,
        HEALTH_FLOOR,
    );
    for check in checks {
        let answer = check.await.unwrap().expect("the heavy file is valid");
        assert!(answer.into_inner().step_count == 1);
    }
    // One expression more than a file may hold: refused, naming the limit.
    let mut source =
        String::from("name: over\nsteps:\n  - name: a\n    action: core/set\n    params:\n");
    for i in 0..10_001 {
        source.push_str(&format!("      k{i}: \"{{{{ {i} }}}}\"\n"));
    }
    let err =
        t.a.defs
            .validate_definition(pb::ValidateDefinitionRequest {
                source,
                filename: "over.yaml".into(),
            })
            .await
            .expect_err("too many expressions");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("more than 10000 expressions"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definition_checks_count_against_the_rate_limit() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let tenant = random_name("limited");
    let mut tenants = daemon.tenants(Some(&operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: tenant.clone(),
                display_name: tenant.clone(),
                settings: Some(pb::TenantSettings {
                    rate_limit_per_minute: 3,
                    ..Default::default()
                }),
            })
            .await,
        "CreateTenant",
    );
    let token = create_api_key(&daemon, &operator, &tenant, &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = m
            .defs
            .validate_definition(pb::ValidateDefinitionRequest {
                source: CHAIN.into(),
                filename: String::new(),
            })
            .await;
        codes.push(r.map(|_| Code::Ok).unwrap_or_else(|s| s.code()));
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    // Reads are not counted.
    for _ in 0..6 {
        m.defs
            .list_definitions(pb::ListDefinitionsRequest::default())
            .await
            .expect("listing is not rate limited");
    }
}

/// Resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_of_large_executions_stay_small() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DaemonOptions {
        data_dir: Some(dir.path().join("data")),
        ..DaemonOptions::sqlite()
    };
    let mut daemon = Daemon::start_ok(opts.clone()).await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: big\ninputs:\n  data: {type: string}\nsteps:\n  - name: done\n    action: core/set\n    params: {ok: true}\n")
        .await;
    let data = "d".repeat(3_500_000);
    let inputs = json!({ "data": data }).to_string();
    let started = Instant::now();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let (mut m, inputs) = (Mantle::connect(&daemon, &token).await, inputs.clone());
        starts.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                ids.push(m.start_ok("big", &inputs).await.id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for s in starts {
        ids.extend(s.await.unwrap());
    }
    ids.sort();
    ids.reverse();
    println!(
        "200 executions of 3.5 MB inputs started in {:?}",
        started.elapsed()
    );
    // The largest input allowed is 3.5 MiB: a larger one is refused, naming the setting.
    let err = m
        .start("big", &json!({ "data": "d".repeat(3_700_000) }).to_string())
        .await
        .expect_err("over the input limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("MANTLE_MAX_INPUT_BYTES"),
        "{}",
        err.message()
    );
    for id in [&ids[0], &ids[199]] {
        m.wait_terminal(id, Duration::from_secs(120)).await;
    }
    // A fresh process, so that what the starts took does not count for the listings.
    daemon.sigterm(Duration::from_secs(30)).await.unwrap();
    daemon.restart_ok(opts).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let listing = Instant::now();

    let pid = daemon.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let before = rss_bytes(pid);
    let mut lists = Vec::new();
    for view in [pb::View::Full, pb::View::Full, pb::View::Basic] {
        let mut execs = m.execs.clone();
        lists.push(tokio::spawn(async move {
            let (mut seen, mut largest, mut pages) = (0, 0, 0);
            let mut page_token = String::new();
            loop {
                let page = execs
                    .list_executions(pb::ListExecutionsRequest {
                        page_size: 50,
                        page_token,
                        view: view as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("a page fits a default client")
                    .into_inner();
                largest = largest.max(prost::Message::encoded_len(&page));
                pages += 1;
                seen += page.executions.len();
                for e in &page.executions {
                    assert_eq!(e.inputs_json.is_empty(), view == pb::View::Basic);
                }
                if page.next_page_token.is_empty() {
                    return (seen, largest, pages);
                }
                page_token = page.next_page_token;
            }
        }));
    }
    for (i, list) in lists.into_iter().enumerate() {
        let (seen, largest, pages) = list.await.unwrap();
        println!("list {i}: {seen} executions in {pages} pages, largest page {largest} bytes");
        assert_eq!(seen, 200);
        assert!(largest < 4_000_000, "a page of {largest} bytes");
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.await.unwrap();
    println!("3 listings in {:?}", listing.elapsed());
    println!(
        "daemon RSS: {} MB before the listings, {} MB at most during 3 concurrent ones",
        before / 1_000_000,
        peak / 1_000_000
    );
    assert!(peak < 300_000_000, "peak RSS {peak}");
    // GetExecution returns one whole; an attempt listing pages too.
    let e = m.get(&ids[0]).await;
    assert_eq!(e.inputs_json.len(), inputs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_errors_are_cut_everywhere() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: loud\ninputs:\n  s: {type: string}\nsteps:\n  - name: fail\n    action: core/fail\n    params:\n      message: \"{{ inputs.s + inputs.s + inputs.s }}\"\n")
        .await;
    let s = "e".repeat(3_000_000);
    let (e, attempts) = m
        .run(
            "loud",
            &json!({ "s": s }).to_string(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(e.status, Ex::Failed as i32);
    let attempt = only_attempt(&attempts, "fail");
    for error in [&attempt.error, &e.error] {
        assert!(error.len() < 17 * 1024, "{} bytes", error.len());
        assert!(
            error.ends_with("[error cut: 16384 of 9000000 bytes kept]"),
            "{}",
            &error[error.len() - 60..]
        );
    }
    let events = m.watch(&e.id, 0, Duration::from_secs(10)).await.unwrap();
    assert!(events.iter().all(|ev| ev.message.len() < 17 * 1024));
}

// ---------------------------------------------------------------------------------------------
// Bytes PostgreSQL refuses, and checkpoints a database refuses for good
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A daemon on `backend`, its operator token, and the database (kept alive).
async fn daemon_on(backend: Backend, test: &str) -> Option<(Daemon, String, Option<PgDatabase>)> {
    Some(match backend {
        Backend::Sqlite => {
            let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
            let operator = daemon.operator_token();
            (daemon, operator, None)
        }
        Backend::Postgres => {
            let db = PgDatabase::create(test).await?;
            let daemon = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
            let operator = admin_key_create(&db.url, "it-operator").await;
            (daemon, operator, Some(db))
        }
    })
}

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

on_both_backends!(
    nul_and_bad_text,
    a_checkpoint_refused_for_good_fails_the_execution
);

async fn nul_and_bad_text(backend: Backend) {
    let Some((daemon, operator, _db)) = daemon_on(backend, "hostile_nul").await else {
        return;
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: nul\ninputs:\n  s: {type: string}\nsteps:\n  - name: keep\n    action: core/set\n    params: {v: \"{{ inputs.s }}\"}\n  - name: say\n    action: core/log\n    params: {message: \"{{ inputs.s }}\"}\n  - name: fail\n    action: core/fail\n    depends_on: [keep, say]\n    params: {message: \"{{ inputs.s }}\"}\n")
        .await;
    // NUL inside JSON inputs: stored, run, and the free texts (log, error) escaped alike.
    let (e, attempts) = m
        .run("nul", r#"{"s": "a\u0000b"}"#, Duration::from_secs(30))
        .await;
    assert_eq!(e.status, Ex::Failed as i32, "{e:?}");
    assert_eq!(json(&e.inputs_json)["s"], "a\u{0}b");
    assert_eq!(
        json(&only_attempt(&attempts, "keep").output_json)["v"],
        "a\u{0}b"
    );
    assert_eq!(only_attempt(&attempts, "fail").error, "a\\u0000b");
    let events = m.watch(&e.id, 0, Duration::from_secs(10)).await.unwrap();
    assert!(
        events
            .iter()
            .any(|ev| ev.message == "a\\u0000b" && ev.step_name == "say"),
        "{events:?}"
    );

    // A raw NUL in a request's string field: INVALID_ARGUMENT naming the field.
    let mut tenants = daemon.tenants(Some(&operator)).await;
    let err = tenants
        .create_tenant(pb::CreateTenantRequest {
            name: "niltenant".into(),
            display_name: "a\0b".into(),
            ..Default::default()
        })
        .await
        .expect_err("NUL in display_name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("display_name: contains a NUL"),
        "{}",
        err.message()
    );
    let err = m
        .start("nul\0", "")
        .await
        .expect_err("NUL in the workflow name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("workflow:"), "{}", err.message());

    // Bytes that are not UTF-8 in a string field: the same.
    let mut grpc = tonic::client::Grpc::new(daemon.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(vec![0x0a, 0x03, b'a', 0xff, b'b']);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {operator}").parse().unwrap(),
    );
    let err = grpc
        .unary::<_, Vec<u8>, _>(
            request,
            "/mantle.v1.TenantService/CreateTenant".parse().unwrap(),
            RawCodec,
        )
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "name: is not valid UTF-8");
}

/// Sends and receives raw protobuf bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A database that refuses one step's checkpoint for good (a trigger raises for it): the
/// execution fails at once, saying why, instead of retrying forever; the next one runs.
async fn a_checkpoint_refused_for_good_fails_the_execution(backend: Backend) {
    let Some((daemon, operator, db)) = daemon_on(backend, "hostile_refused").await else {
        return;
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: refused\ninputs:\n  v: {type: string}\nsteps:\n  - name: a\n    action: core/set\n    params: {v: \"{{ inputs.v }}\"}\n  - name: b\n    action: core/set\n    params: {w: \"{{ steps.a.output.v }}\"}\n")
        .await;
    match &db {
        Some(db) => {
            let mut conn = db.connect().await;
            for sql in [
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
                 IF NEW.output LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned output'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON step_attempts \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            ] {
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
        None => {
            use sqlx::Connection;
            let path = daemon.data_dir().join("mantle.db");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON step_attempts \
                 WHEN NEW.output LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poisoned output'); END",
            )
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let start = Instant::now();
    let bad = m.start_ok("refused", r#"{"v": "poison"}"#).await;
    let e = m.wait_terminal(&bad.id, Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::Failed as i32, "{e:?}");
    assert!(
        e.error.contains("a checkpoint could not be stored") && e.error.contains("poisoned output"),
        "{}",
        e.error
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Its event log is whole: one terminal event, numbers without gaps.
    let events = m.watch(&bad.id, 0, Duration::from_secs(10)).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|ev| ev.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap().execution_status,
        Ex::Failed as i32,
        "{events:?}"
    );
    // Others run on.
    let (good, _) = m
        .run("refused", r#"{"v": "fine"}"#, Duration::from_secs(30))
        .await;
    assert_eq!(good.status, Ex::Completed as i32, "{good:?}");
}

// ---------------------------------------------------------------------------------------------
// Outbound requests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_variables_do_not_open_loopback_and_special_ranges_are_refused() {
    // A "proxy" that would forward anything: it must never be asked.
    let proxy = TestServer::start().await;
    let target = TestServer::start().await;
    target.set("/secret", Reply::status(200));
    let daemon = Daemon::start_ok(
        DaemonOptions::sqlite()
            .env("HTTP_PROXY", proxy.url(""))
            .env("HTTPS_PROXY", proxy.url(""))
            .env("http_proxy", proxy.url(""))
            .env("ALL_PROXY", proxy.url("")),
    )
    .await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let port = target.addr.port();
    let urls = [
        format!("http://localhost:{port}/secret"),
        format!("http://127.0.0.1:{port}/secret"),
        format!("http://[::7f00:1]:{port}/secret"),
        format!("http://[2002:7f00:1::]:{port}/"),
        format!("http://[64:ff9b:1::a00:1]:{port}/"),
        format!("http://[fec0::1]:{port}/"),
        format!("http://192.0.0.1:{port}/"),
        format!("http://198.18.0.1:{port}/"),
        format!("http://192.0.2.1:{port}/"),
        format!("http://198.51.100.1:{port}/"),
        format!("http://203.0.113.1:{port}/"),
    ];
    let mut source = String::from("name: out\nsteps:\n");
    for (i, url) in urls.iter().enumerate() {
        source.push_str(&format!(
            "  - name: r{i}\n    action: http/request\n    continue_on_error: true\n    retry: {{max_attempts: 1}}\n    params: {{url: \"{url}\", timeout: 2s}}\n"
        ));
    }
    m.apply(&source).await;
    let (_, attempts) = m.run("out", "", Duration::from_secs(60)).await;
    for (i, url) in urls.iter().enumerate() {
        let a = only_attempt(&attempts, &format!("r{i}"));
        assert_eq!(a.status, St::Failed as i32, "{url}: {a:?}");
        assert!(
            a.error
                .contains("only global unicast addresses may be reached"),
            "{url}: {}",
            a.error
        );
    }
    assert!(
        proxy.all_hits().is_empty(),
        "the environment's proxy was used"
    );
    assert!(target.all_hits().is_empty(), "loopback was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_proxy_is_used_and_the_target_still_checked() {
    let proxy = TestServer::start().await;
    proxy.set(
        "http://api.example.test/x",
        Reply::json(200, json!({"via": "proxy"})),
    );
    // Private networks allowed (the proxy is local): every target goes through the proxy.
    let daemon = Daemon::start_ok(
        DaemonOptions::sqlite()
            .env("MANTLE_HTTP_PROXY", proxy.url(""))
            .env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"),
    )
    .await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: via\nsteps:\n  - name: r\n    action: http/request\n    params: {url: \"http://api.example.test/x\"}\n")
        .await;
    let (e, attempts) = m.run("via", "", Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::Completed as i32, "{attempts:?}");
    assert_eq!(
        json(&only_attempt(&attempts, "r").output_json)["body"]["via"],
        "proxy"
    );
    assert_eq!(proxy.count("http://api.example.test/x"), 1);
    drop(daemon);

    // Private networks refused: the proxy is still the operator's to use, but a target
    // naming loopback is refused before the proxy is asked.
    let daemon =
        Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_HTTP_PROXY", proxy.url(""))).await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply("name: via\nsteps:\n  - name: r\n    action: http/request\n    retry: {max_attempts: 1}\n    params: {url: \"http://localhost:9/x\"}\n")
        .await;
    let (e, attempts) = m.run("via", "", Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::Failed as i32);
    let a = only_attempt(&attempts, "r");
    assert!(
        a.error.contains("resolves to") && a.error.contains("loopback"),
        "{}",
        a.error
    );
    assert_eq!(
        proxy.all_hits().len(),
        1,
        "only the first daemon's request reached it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    server.set("/same", Reply::redirect("/landing"));
    server.set(
        "/away",
        Reply::redirect(&format!("http://localhost:{port}/landing")),
    );
    server.set("/landing", Reply::status(200));
    let daemon =
        Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"))
            .await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let headers = "{Authorization: \"Bearer s3cret\", Cookie: \"session=1\", Proxy-Authorization: \"Basic x\", X-Other: kept}";
    m.apply(&format!(
        "name: redirects\nsteps:\n  - name: same\n    action: http/request\n    params:\n      url: \"http://127.0.0.1:{port}/same\"\n      headers: {headers}\n  - name: away\n    action: http/request\n    depends_on: [same]\n    params:\n      url: \"http://127.0.0.1:{port}/away\"\n      headers: {headers}\n"
    ))
    .await;
    let (e, _) = m.run("redirects", "", Duration::from_secs(30)).await;
    assert_eq!(e.status, Ex::Completed as i32, "{e:?}");
    let landings = server.hits("/landing");
    assert_eq!(landings.len(), 2);
    let header = |hit: &Hit, name: &str| hit.headers.iter().any(|(k, _)| k == name);
    // Same origin: everything kept.
    assert!(header(&landings[0], "authorization") && header(&landings[0], "cookie"));
    // Another origin (localhost is not 127.0.0.1): credentials dropped, the rest kept.
    for sensitive in ["authorization", "cookie", "proxy-authorization"] {
        assert!(
            !header(&landings[1], sensitive),
            "{sensitive} followed the redirect"
        );
    }
    assert!(header(&landings[1], "x-other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_webhook_url_is_refused() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let mut tenants = daemon.tenants(Some(&operator)).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/h",
        "http://169.254.169.254/latest",
    ] {
        let err = tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: "default".into(),
                settings: Some(pb::TenantSettings {
                    webhook_url: url.into(),
                    ..Default::default()
                }),
                settings_mask: Some(prost_types::FieldMask {
                    paths: vec!["webhook_url".into()],
                }),
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert!(
            err.message().starts_with("settings.webhook_url:")
                && err.message().contains("cannot receive deliveries"),
            "{url}: {}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_response_bytes_have_an_installation_wide_budget() {
    let server = TestServer::start().await;
    let body = "b".repeat(600_000);
    server.set(
        "/big",
        Reply {
            body: body.clone(),
            ..Reply::status(200)
        }
        .delay(Duration::from_millis(300)),
    );
    // Room for one response of 600 kB at a time.
    let daemon = Daemon::start_ok(
        DaemonOptions::sqlite()
            .env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true")
            .env("MANTLE_HTTP_MAX_BUFFERED_BYTES", "1000000"),
    )
    .await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let url = server.url("/big");
    let mut source = String::from("name: many\nsteps:\n");
    for i in 0..4 {
        source.push_str(&format!(
            "  - name: r{i}\n    action: http/request\n    params: {{url: \"{url}\"}}\n"
        ));
    }
    source.push_str(&format!(
        "  - name: huge\n    action: http/request\n    continue_on_error: true\n    retry: {{max_attempts: 1}}\n    params: {{url: \"{}\"}}\n",
        server.url("/huge")
    ));
    server.set(
        "/huge",
        Reply {
            body: "h".repeat(1_500_000),
            ..Reply::status(200)
        },
    );
    m.apply(&source).await;
    let (e, attempts) = m.run("many", "", Duration::from_secs(60)).await;
    // The four responses waited for room in turn; the one larger than the budget failed.
    assert_eq!(
        e.status,
        Ex::Completed as i32,
        "{}",
        describe_attempts(&attempts)
    );
    let huge = only_attempt(&attempts, "huge");
    assert!(
        huge.error.contains("MANTLE_HTTP_MAX_BUFFERED_BYTES"),
        "{}",
        huge.error
    );
}

// ---------------------------------------------------------------------------------------------
// Shared workers: webhook deliveries and watch streams
// ---------------------------------------------------------------------------------------------

async fn set_webhook(daemon: &Daemon, operator: &str, tenant: &str, url: &str) {
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .update_tenant(pb::UpdateTenantRequest {
                name: tenant.into(),
                settings: Some(pb::TenantSettings {
                    webhook_url: url.into(),
                    ..Default::default()
                }),
                settings_mask: Some(prost_types::FieldMask {
                    paths: vec!["webhook_url".into()],
                }),
                ..Default::default()
            })
            .await,
        "UpdateTenant webhook_url",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_endpoint_delays_only_its_tenant() {
    let receiver = TestServer::start().await;
    receiver.set("/hang", Reply::status(200).delay(Duration::from_secs(60)));
    receiver.set("/ok", Reply::status(200));
    let mut t =
        two_tenants(DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"))
            .await;
    let hostile =
        t.a.apply(
            "name: quick\nsteps:\n  - name: a\n    action: core/log\n    params: {message: hi}\n",
        )
        .await;
    assert_eq!(hostile.version, 1);
    set_webhook(&t.daemon, &t.operator, &t.a_name, &receiver.url("/hang")).await;
    set_webhook(&t.daemon, &t.operator, &t.b_name, &receiver.url("/ok")).await;
    let mut hostile = Vec::new();
    for _ in 0..50 {
        hostile.push(t.a.start_ok("quick", "").await.id);
    }
    for id in &hostile {
        t.a.wait_terminal(id, Duration::from_secs(30)).await;
    }
    assert!(
        receiver
            .wait_for_hits("/hang", 3, Duration::from_secs(10))
            .await
    );
    // The bystander's execution ends; its delivery must not queue behind the hanging ones.
    let e = t.b.start_ok("chain", "").await;
    let e = t.b.wait_terminal(&e.id, Duration::from_secs(30)).await;
    let ended = Instant::now();
    assert_eq!(e.status, Ex::Completed as i32);
    assert!(
        receiver
            .wait_for_hits("/ok", 1, Duration::from_secs(10))
            .await,
        "the bystander's delivery never came"
    );
    let delay = receiver.hits("/ok")[0].at.saturating_duration_since(ended);
    println!(
        "bystander's delivery {} ms after its execution ended, beside {} hanging deliveries",
        delay.as_millis(),
        receiver.count("/hang")
    );
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    // The hanging tenant never has more than a few deliveries in flight.
    assert!(receiver.count("/hang") <= 8, "{}", receiver.count("/hang"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_watch_streams_do_not_slow_another_tenant() {
    let mut t = two_tenants(DaemonOptions::sqlite().env("MANTLE_MAX_WATCH_STREAMS", "2000")).await;
    t.a.apply(
        "name: idle\nsteps:\n  - name: nap\n    action: core/sleep\n    params: {duration: 5m}\n",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(t.a.start_ok("idle", "").await.id);
    }
    measure(&mut t, 5).await;
    let (chains, _) = measure(&mut t, 20).await;
    // 2000 streams: 100 on each idle execution, over 20 connections (a connection carries
    // at most a few hundred streams).
    let mut streams = Vec::new();
    for id in &idle {
        let channel = t.daemon.channel().await;
        for _ in 0..100 {
            let mut execs = pb::execution_service_client::ExecutionServiceClient::with_interceptor(
                channel.clone(),
                Auth::new(Some(&t.a_token)),
            );
            let stream = execs
                .watch_execution(pb::WatchExecutionRequest {
                    id: id.clone(),
                    after_seq: 0,
                })
                .await
                .expect("open a watch stream")
                .into_inner();
            streams.push(stream);
        }
    }
    let (loaded, _) = measure(&mut t, 20).await;
    let (u, l) = (p99(&chains), p99(&loaded));
    println!(
        "bystander's chain: p99 {:.1} ms alone, {:.1} ms beside {} watch streams",
        ms(u),
        ms(l),
        streams.len()
    );
    assert!(l <= 2 * u.max(CHAIN_FLOOR), "{:.1} ms", ms(l));
    drop(streams);

    // A tenant may hold only so many: the default is 100.
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    m.apply(
        "name: idle\nsteps:\n  - name: nap\n    action: core/sleep\n    params: {duration: 5m}\n",
    )
    .await;
    let id = m.start_ok("idle", "").await.id;
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..101 {
        if i % 90 == 0 {
            m = Mantle::connect(&daemon, &token).await;
        }
        match m
            .execs
            .watch_execution(pb::WatchExecutionRequest {
                id: id.clone(),
                after_seq: 0,
            })
            .await
        {
            Ok(s) => held.push(s.into_inner()),
            Err(status) => {
                refused = Some((i, status));
                break;
            }
        }
    }
    let (i, status) = refused.expect("the 101st stream is refused");
    assert_eq!(i, 100);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("MANTLE_MAX_WATCH_STREAMS"),
        "{}",
        status.message()
    );
}

/// A stream on one replica follows an execution another replica drives: the daemon's one
/// poll of the executions its streams watch notices the log grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_an_execution_driven_by_another_replica() {
    let Some(db) = PgDatabase::create("hostile_watch_replicas").await else {
        return;
    };
    let a = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
    let b = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    let token = create_api_key(&a, &operator, "default", &["*"]).await;
    let mut on_a = Mantle::connect(&a, &token).await;
    let mut on_b = Mantle::connect(&b, &token).await;
    on_a.apply("name: naps\nsteps:\n  - name: one\n    action: core/sleep\n    params: {duration: 300ms}\n  - name: two\n    action: core/sleep\n    depends_on: [one]\n    params: {duration: 300ms}\n  - name: three\n    action: core/sleep\n    depends_on: [two]\n    params: {duration: 300ms}\n")
        .await;
    let start = Instant::now();
    let e = on_a.start_ok("naps", "").await;
    let events = on_b
        .watch(&e.id, 0, Duration::from_secs(20))
        .await
        .expect("the stream on the other replica ends with the execution");
    let took = start.elapsed();
    assert_eq!(
        events.last().map(|ev| ev.execution_status),
        Some(Ex::Completed as i32),
        "{events:?}"
    );
    let seqs: Vec<i64> = events.iter().map(|ev| ev.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    // 0.9 s of sleeps, and a poll every 250 ms.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = parent.path().join("new").join("data");
    let mut cmd = mantle_command();
    // No key given: the embedded store generates one into the data directory.
    cmd.env_remove("MANTLE_ENCRYPTION_KEY");
    cmd.arg("serve")
        .env("MANTLE_DATA_DIR", &data)
        .env("MANTLE_API_ADDRESS", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Serving once it says so.
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("mantle listening on"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .is_ok_and(|r| r.unwrap_or(false));
    let modes: HashMap<String, u32> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().permissions().mode() & 0o777,
            )
        })
        .collect();
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the daemon did not start: {modes:?}");
    assert_eq!(dir_mode, 0o700, "data directory");
    for name in [
        "mantle.db",
        "mantle.db-wal",
        "mantle.db-shm",
        "mantle.lock",
        "operator-token",
        "encryption-key",
    ] {
        assert_eq!(modes.get(name), Some(&0o600), "{name}: {modes:?}");
    }
    assert!(modes.values().all(|m| m & 0o077 == 0), "{modes:?}");
}
