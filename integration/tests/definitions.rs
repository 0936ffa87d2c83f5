//! Workflow definitions through the real daemon's DefinitionService (gRPC), on SQLite and on
//! PostgreSQL, and once through `mantlectl validate|plan|apply`.
//!
//! Covers: idempotent apply, plans that show exactly the change made, formatting-only changes,
//! reading versions back (the source round-trips byte for byte), INVALID_ARGUMENT with
//! `mantle.v1.ValidationProblems` details, tenant isolation, scopes, delete and re-apply, and
//! concurrent applies of the same content.

use std::path::Path;
use std::time::Duration;

use mantle_integration::*;
use pb::definition_service_client::DefinitionServiceClient;
use tonic::Code;

type Defs = DefinitionServiceClient<AuthChannel>;

const V1: &str = "# Greets somebody, then waits.
name: greeter
description: Says hello.
steps:
  - name: greet
    action: core/log
    params:
      message: hello
  - name: wait
    action: core/sleep
    depends_on: [greet]
    params: {duration: 1s}
";

/// V1 with other comments, blank lines, quoting and flow style: the same content.
const V1_REFORMATTED: &str = "name: greeter   # same workflow

description: 'Says hello.'
steps:
  # the greeting
  - {name: greet, action: core/log, params: {message: \"hello\"}}

  - name: wait
    depends_on: greet
    action: core/sleep
    params:
      duration: 1s
";

/// V1 with one param changed.
const V2: &str = "# Greets somebody, then waits.
name: greeter
description: Says hello.
steps:
  - name: greet
    action: core/log
    params:
      message: goodbye
  - name: wait
    action: core/sleep
    depends_on: [greet]
    params: {duration: 1s}
";

fn defs_client(channel: tonic::transport::Channel, token: &str) -> Defs {
    DefinitionServiceClient::with_interceptor(channel, Auth::new(Some(token)))
}

async fn defs(daemon: &Daemon, token: &str) -> Defs {
    defs_client(daemon.channel().await, token)
}

/// Creates a tenant and returns a key of it with `scopes`.
async fn tenant_with_key(
    daemon: &Daemon,
    operator: &str,
    prefix: &str,
    scopes: &[&str],
) -> (String, String) {
    let name = random_name(prefix);
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: name.clone(),
                display_name: name.clone(),
                ..Default::default()
            })
            .await,
        "CreateTenant",
    );
    let token = key_for(daemon, operator, &name, scopes).await;
    (name, token)
}

async fn key_for(daemon: &Daemon, operator: &str, tenant: &str, scopes: &[&str]) -> String {
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant.to_owned(),
                name: format!("{}-key", scopes.join("+").replace([':', '*'], "_")),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                expire_time: None,
            })
            .await,
        "CreateApiKey",
    )
    .token
}

/// `mantlectl ARGS` against `daemon` with `token`, from a home without a local operator
/// token (`home`'s `no-data`).
fn mantlectl(daemon: &Daemon, home: &Path, token: &str, args: &[&str]) -> std::process::Command {
    let mut cmd = mantlectl_command(home);
    cmd.env("MANTLE_DATA_DIR", home.join("no-data"))
        .arg("--address")
        .arg(daemon.addr.to_string())
        .arg("--token")
        .arg(token)
        .args(args);
    cmd
}

async fn apply(c: &mut Defs, source: &str) -> Result<pb::ApplyDefinitionResponse, tonic::Status> {
    c.apply_definition(pb::ApplyDefinitionRequest {
        source: source.to_owned(),
        filename: "greeter.yaml".to_owned(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn apply_ok(c: &mut Defs, source: &str, what: &str) -> pb::ApplyDefinitionResponse {
    match apply(c, source).await {
        Ok(r) => r,
        Err(status) => panic!(
            "{what}: apply failed: {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

async fn plan_ok(c: &mut Defs, source: &str, what: &str) -> pb::Plan {
    expect_ok(
        c.plan_definition(pb::PlanDefinitionRequest {
            source: source.to_owned(),
            filename: "greeter.yaml".to_owned(),
        })
        .await,
        what,
    )
}

async fn get(c: &mut Defs, name: &str, version: i64) -> Result<pb::Definition, tonic::Status> {
    c.get_definition(pb::GetDefinitionRequest {
        name: name.to_owned(),
        version,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn versions(c: &mut Defs, name: &str) -> Result<Vec<i64>, tonic::Status> {
    c.list_definition_versions(pb::ListDefinitionVersionsRequest {
        name: name.to_owned(),
        page_size: 0,
        page_token: String::new(),
    })
    .await
    .map(|r| r.into_inner().versions.iter().map(|v| v.version).collect())
}

async fn list_names(c: &mut Defs) -> Vec<String> {
    expect_ok(
        c.list_definitions(pb::ListDefinitionsRequest::default())
            .await,
        "ListDefinitions",
    )
    .definitions
    .into_iter()
    .map(|d| d.name)
    .collect()
}

fn definition(r: &pb::ApplyDefinitionResponse) -> &pb::Definition {
    r.definition
        .as_ref()
        .expect("ApplyDefinitionResponse.definition")
}

// ---------------------------------------------------------------------------------------------
// google.rpc.Status details, decoded from the protobuf wire format by hand (this crate does
// not depend on prost): Status{3: repeated Any{1: type_url, 2: value}},
// ValidationProblems{1: repeated ValidationProblem{1 file, 2 line, 3 column, 4 path, 5 message}}.
// ---------------------------------------------------------------------------------------------

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().expect("truncated varint");
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long")
}

/// The fields of one protobuf message: (field number, value).
fn fields(mut buf: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let value = match key & 7 {
            0 => Wire::Varint(varint(&mut buf)),
            2 => {
                let len = usize::try_from(varint(&mut buf)).unwrap();
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Wire::Bytes(bytes)
            }
            1 => {
                buf = &buf[8..];
                continue;
            }
            5 => {
                buf = &buf[4..];
                continue;
            }
            other => panic!("unexpected wire type {other}"),
        };
        out.push((key >> 3, value));
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 string field")
}

/// The `mantle.v1.ValidationProblems` in a status's details, as
/// `FILE:LINE:COL: PATH: message` lines.
fn problems_in(status: &tonic::Status) -> Vec<String> {
    assert!(
        !status.details().is_empty(),
        "status has no details: {status:?}"
    );
    let mut lines = Vec::new();
    let mut status_code = None;
    let mut found = false;
    for (field, value) in fields(status.details()) {
        match (field, value) {
            (1, Wire::Varint(code)) => status_code = Some(code),
            (3, Wire::Bytes(any)) => {
                let mut type_url = String::new();
                let mut payload: &[u8] = &[];
                for (f, v) in fields(any) {
                    match (f, v) {
                        (1, Wire::Bytes(b)) => type_url = text(b),
                        (2, Wire::Bytes(b)) => payload = b,
                        _ => {}
                    }
                }
                if type_url != "type.googleapis.com/mantle.v1.ValidationProblems" {
                    continue;
                }
                found = true;
                for (f, v) in fields(payload) {
                    let (1, Wire::Bytes(problem)) = (f, v) else {
                        continue;
                    };
                    let (mut file, mut line, mut column, mut path, mut message) =
                        (String::new(), 0, 0, String::new(), String::new());
                    for (pf, pv) in fields(problem) {
                        match (pf, pv) {
                            (1, Wire::Bytes(b)) => file = text(b),
                            (2, Wire::Varint(n)) => line = n,
                            (3, Wire::Varint(n)) => column = n,
                            (4, Wire::Bytes(b)) => path = text(b),
                            (5, Wire::Bytes(b)) => message = text(b),
                            _ => {}
                        }
                    }
                    assert!(
                        line >= 1 && column >= 1,
                        "problem without a position: {message}"
                    );
                    lines.push(if path.is_empty() {
                        format!("{file}:{line}:{column}: {message}")
                    } else {
                        format!("{file}:{line}:{column}: {path}: {message}")
                    });
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        status_code,
        Some(Code::InvalidArgument as u64),
        "google.rpc.Status.code"
    );
    assert!(
        found,
        "no mantle.v1.ValidationProblems detail in {status:?}"
    );
    lines
}

fn fixture(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/workflows")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Apply, plan, re-apply, read back, list, invalid files, delete and re-apply.
async fn lifecycle(daemon: &Daemon, operator: &str) {
    let (_tenant, token) = tenant_with_key(
        daemon,
        operator,
        "defs",
        &["definitions:read", "definitions:write"],
    )
    .await;
    let mut c = defs(daemon, &token).await;

    // Validate stores nothing.
    let validated = expect_ok(
        c.validate_definition(pb::ValidateDefinitionRequest {
            source: V1.to_owned(),
            filename: "greeter.yaml".to_owned(),
        })
        .await,
        "ValidateDefinition",
    );
    assert_eq!(validated.name, "greeter");
    assert_eq!(validated.step_count, 2);
    assert_eq!(validated.content_hash.len(), 64);
    assert_code(
        get(&mut c, "greeter", 0).await,
        Code::NotFound,
        "Get before any apply",
    );

    // A plan of a new workflow adds every step; the description shows as set (from nothing).
    let plan = plan_ok(&mut c, V1, "Plan of a new workflow").await;
    assert!(plan.changed);
    assert_eq!(plan.current_version, 0);
    assert_eq!(plan.content_hash, validated.content_hash);
    let add = pb::change::Kind::Added as i32;
    let elements: Vec<(i32, &str, &str)> = plan
        .changes
        .iter()
        .filter(|ch| ch.section != "workflow")
        .map(|ch| (ch.kind, ch.section.as_str(), ch.name.as_str()))
        .collect();
    assert_eq!(
        elements,
        [(add, "step", "greet"), (add, "step", "wait")],
        "{plan:#?}"
    );
    for ch in plan.changes.iter().filter(|ch| ch.section == "workflow") {
        assert_eq!(ch.name, "description", "{plan:#?}");
        assert_eq!(ch.fields.len(), 1, "{plan:#?}");
        assert_eq!(ch.fields[0].before, "", "{plan:#?}");
        assert_eq!(ch.fields[0].after, "\"Says hello.\"", "{plan:#?}");
    }

    // Apply twice: one version.
    let first = apply_ok(&mut c, V1, "first apply").await;
    assert!(first.created, "first apply: created is false");
    assert_eq!(definition(&first).version, 1);
    assert_eq!(definition(&first).content_hash, validated.content_hash);
    assert_eq!(definition(&first).source, V1);
    let again = apply_ok(&mut c, V1, "second apply of the same file").await;
    assert!(!again.created, "the same file again: created is true");
    assert_eq!(definition(&again).version, 1);
    assert!(
        again.changes.is_empty(),
        "the same file again: changes {:?}",
        again.changes
    );

    // Formatting and comments only: unchanged.
    let plan = plan_ok(&mut c, V1_REFORMATTED, "Plan of a reformatted file").await;
    assert!(!plan.changed, "reformatting counts as a change: {plan:#?}");
    assert!(plan.changes.is_empty(), "{plan:#?}");
    assert_eq!(plan.current_version, 1);
    assert_eq!(plan.content_hash, validated.content_hash);
    let reformatted = apply_ok(&mut c, V1_REFORMATTED, "apply of a reformatted file").await;
    assert!(!reformatted.created);
    assert_eq!(definition(&reformatted).version, 1);

    // A real change: the plan shows exactly it.
    let plan = plan_ok(&mut c, V2, "Plan of a changed param").await;
    assert!(plan.changed);
    assert_eq!(plan.current_version, 1);
    assert_eq!(plan.changes.len(), 1, "{plan:#?}");
    let change = &plan.changes[0];
    assert_eq!(change.kind, pb::change::Kind::Changed as i32, "{change:#?}");
    assert_eq!(
        (change.section.as_str(), change.name.as_str()),
        ("step", "greet")
    );
    assert_eq!(change.fields.len(), 1, "{change:#?}");
    let field = &change.fields[0];
    assert_eq!(field.path, "params.message");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&field.before).unwrap(),
        serde_json::json!("hello")
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&field.after).unwrap(),
        serde_json::json!("goodbye")
    );
    assert_eq!(
        definition(&apply_ok(&mut c, V1, "unchanged after plan").await).version,
        1,
        "Plan stored a version"
    );

    let second = apply_ok(&mut c, V2, "apply of the change").await;
    assert!(second.created);
    assert_eq!(definition(&second).version, 2);
    assert_eq!(
        second.changes, plan.changes,
        "Apply's changes differ from Plan's"
    );

    // Reading back: latest and version 1, with the source as applied.
    let latest = get(&mut c, "greeter", 0).await.expect("Get latest");
    assert_eq!(latest.version, 2);
    assert_eq!(latest.source, V2);
    assert_eq!(latest.description, "Says hello.");
    let spec: serde_json::Value =
        serde_json::from_str(&latest.spec_json).expect("spec_json is JSON");
    assert_eq!(spec["name"], "greeter");
    assert_eq!(spec["steps"][0]["params"]["message"], "goodbye");
    assert_eq!(spec["steps"][1]["needs"], serde_json::json!(["greet"]));
    let v1 = get(&mut c, "greeter", 1).await.expect("Get version 1");
    assert_eq!(v1.version, 1);
    assert_eq!(v1.source, V1, "version 1's source does not round-trip");
    assert_eq!(v1.content_hash, validated.content_hash);
    assert_code(
        get(&mut c, "greeter", 3).await,
        Code::NotFound,
        "Get of a version that does not exist",
    );
    assert_eq!(
        versions(&mut c, "greeter")
            .await
            .expect("ListDefinitionVersions"),
        [2, 1]
    );
    assert!(list_names(&mut c).await.contains(&"greeter".to_owned()));

    // An invalid file: INVALID_ARGUMENT with every problem in the details, as `mantle validate`
    // prints them, and nothing stored.
    let name = "invalid/58-many-problems-steps.yaml";
    let status = c
        .apply_definition(pb::ApplyDefinitionRequest {
            source: fixture(name),
            filename: name.to_owned(),
        })
        .await
        .expect_err("apply of an invalid file");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let expected = fixture("invalid/58-many-problems-steps.expected");
    assert_eq!(problems_in(&status), expected.lines().collect::<Vec<_>>());
    assert_code(
        get(&mut c, "many-step-problems", 0).await,
        Code::NotFound,
        "Get of a workflow that never validated",
    );
    for rpc in ["Validate", "Plan"] {
        let source = fixture("invalid/33-explicit-cycle.yaml");
        let result = if rpc == "Validate" {
            c.validate_definition(pb::ValidateDefinitionRequest {
                source,
                filename: String::new(),
            })
            .await
            .map(|_| ())
        } else {
            c.plan_definition(pb::PlanDefinitionRequest {
                source,
                filename: String::new(),
            })
            .await
            .map(|_| ())
        };
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            problems_in(&status),
            ["<input>:3:11: steps[0]: dependency cycle: a → b → a"],
            "{rpc} without a filename"
        );
    }

    // Delete: gone from Get and List; applying again continues the version numbers.
    expect_ok(
        c.delete_definition(pb::DeleteDefinitionRequest {
            name: "greeter".into(),
        })
        .await,
        "DeleteDefinition",
    );
    assert_code(
        get(&mut c, "greeter", 0).await,
        Code::NotFound,
        "Get after delete",
    );
    assert!(
        !list_names(&mut c).await.contains(&"greeter".to_owned()),
        "deleted workflow still listed"
    );
    assert_code(
        c.delete_definition(pb::DeleteDefinitionRequest {
            name: "greeter".into(),
        })
        .await,
        Code::NotFound,
        "second delete",
    );
    let plan = plan_ok(&mut c, V1, "Plan after delete").await;
    assert_eq!(plan.current_version, 0, "Plan after delete: {plan:#?}");
    assert!(plan.changed);
    let back = apply_ok(&mut c, V1, "apply after delete").await;
    assert!(back.created);
    assert_eq!(
        definition(&back).version,
        3,
        "version numbers restart after delete"
    );
    assert_eq!(
        versions(&mut c, "greeter")
            .await
            .expect("versions after re-apply")[0],
        3
    );
    assert_eq!(
        get(&mut c, "greeter", 0)
            .await
            .expect("Get after re-apply")
            .version,
        3
    );
}

/// Ten concurrent applies of the same new content store exactly one version.
async fn concurrent_applies(daemon: &Daemon, operator: &str) {
    let (_tenant, token) = tenant_with_key(
        daemon,
        operator,
        "conc",
        &["definitions:read", "definitions:write"],
    )
    .await;
    let source = V1.replace("name: greeter", "name: concurrent");
    let channel = daemon.channel().await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = defs_client(channel.clone(), &token);
        let source = source.clone();
        tasks.push(tokio::spawn(async move { apply(&mut c, &source).await }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("apply task") {
            Ok(r) => {
                created += usize::from(r.created);
                assert_eq!(
                    definition(&r).version,
                    1,
                    "a concurrent apply answered {r:#?}"
                );
            }
            Err(status) => panic!(
                "a concurrent apply failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }
    assert_eq!(
        created, 1,
        "concurrent applies of the same content created {created} versions"
    );
    let mut c = defs(daemon, &token).await;
    assert_eq!(versions(&mut c, "concurrent").await.expect("versions"), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_lifecycle_on_sqlite() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    lifecycle(&daemon, &daemon.operator_token()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_concurrent_applies_on_sqlite() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    concurrent_applies(&daemon, &daemon.operator_token()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_on_postgres() {
    let Some(db) = PgDatabase::create("definitions_on_postgres").await else {
        return;
    };
    let daemon = Daemon::start_ok(DaemonOptions::postgres(db.url.clone())).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    lifecycle(&daemon, &operator).await;
    concurrent_applies(&daemon, &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_tenant_isolation_and_scopes() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let (tenant_a, writer_a) = tenant_with_key(
        &daemon,
        &operator,
        "a",
        &["definitions:read", "definitions:write"],
    )
    .await;
    let (_tenant_b, all_b) = tenant_with_key(&daemon, &operator, "b", &["*"]).await;
    let reader_a = key_for(&daemon, &operator, &tenant_a, &["definitions:read"]).await;
    let executions_a = key_for(&daemon, &operator, &tenant_a, &["executions:read"]).await;

    let mut a = defs(&daemon, &writer_a).await;
    let source = V1.replace("name: greeter", "name: private-flow");
    assert!(apply_ok(&mut a, &source, "A applies").await.created);

    // B sees nothing of A's workflow.
    let mut b = defs(&daemon, &all_b).await;
    assert_code(
        get(&mut b, "private-flow", 0).await,
        Code::NotFound,
        "B: Get of A's workflow",
    );
    assert_code(
        get(&mut b, "private-flow", 1).await,
        Code::NotFound,
        "B: Get of A's version 1",
    );
    assert_code(
        versions(&mut b, "private-flow").await,
        Code::NotFound,
        "B: versions of A's workflow",
    );
    assert_code(
        b.delete_definition(pb::DeleteDefinitionRequest {
            name: "private-flow".into(),
        })
        .await,
        Code::NotFound,
        "B: Delete of A's workflow",
    );
    assert!(
        !list_names(&mut b)
            .await
            .contains(&"private-flow".to_owned()),
        "B lists A's workflow"
    );
    let plan = plan_ok(&mut b, &source, "B: Plan of the same file").await;
    assert_eq!(plan.current_version, 0, "B's plan sees A's version");

    // B's own workflow of the same name is independent.
    let b_source = source.replace("message: hello", "message: from b");
    let b_applied = apply_ok(&mut b, &b_source, "B applies the same name").await;
    assert!(b_applied.created);
    assert_eq!(definition(&b_applied).version, 1);
    let a_latest = get(&mut a, "private-flow", 0).await.expect("A: Get");
    assert_eq!(
        (a_latest.version, a_latest.source.as_str()),
        (1, source.as_str())
    );
    assert_eq!(
        versions(&mut a, "private-flow").await.expect("A: versions"),
        [1]
    );

    // A read-only key reads, validates and plans, but cannot apply or delete.
    let mut r = defs(&daemon, &reader_a).await;
    assert_eq!(
        get(&mut r, "private-flow", 0)
            .await
            .expect("reader: Get")
            .version,
        1
    );
    assert!(
        list_names(&mut r)
            .await
            .contains(&"private-flow".to_owned())
    );
    assert_eq!(
        versions(&mut r, "private-flow")
            .await
            .expect("reader: versions"),
        [1]
    );
    plan_ok(&mut r, &source, "reader: Plan").await;
    expect_ok(
        r.validate_definition(pb::ValidateDefinitionRequest {
            source: source.clone(),
            filename: String::new(),
        })
        .await,
        "reader: Validate",
    );
    assert_code(
        apply(&mut r, &source.replace("hello", "changed")).await,
        Code::PermissionDenied,
        "reader: Apply",
    );
    assert_code(
        r.delete_definition(pb::DeleteDefinitionRequest {
            name: "private-flow".into(),
        })
        .await,
        Code::PermissionDenied,
        "reader: Delete",
    );
    // A key without any definitions scope cannot even read.
    let mut e = defs(&daemon, &executions_a).await;
    assert_code(
        get(&mut e, "private-flow", 0).await,
        Code::PermissionDenied,
        "executions:read key: Get",
    );
    assert_code(
        apply(&mut e, &source).await,
        Code::PermissionDenied,
        "executions:read key: Apply",
    );
    // Nothing changed.
    assert_eq!(
        versions(&mut a, "private-flow")
            .await
            .expect("A: versions at the end"),
        [1]
    );
}

/// `mantlectl validate`, `plan` and `apply` against the daemon, from the fixtures directory so
/// files print as `invalid/…` and `valid/…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_through_mantlectl() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let (_tenant, token) = tenant_with_key(
        &daemon,
        &operator,
        "ctl",
        &["definitions:read", "definitions:write"],
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workflows");
    let run = |args: &[&str]| {
        let mut cmd = mantlectl(&daemon, home.path(), &token, args);
        cmd.current_dir(&fixtures);
        run_with_timeout(cmd, Duration::from_secs(60))
    };

    // validate: an invalid file prints what `mantle validate` prints, and exits 1.
    let out = run(&["validate", "invalid/58-many-problems-steps.yaml"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        fixture("invalid/58-many-problems-steps.expected"),
        "{}",
        describe_output(&out)
    );
    let out = run(&["validate", "valid/diamond.yaml"]).await.unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        out.stdout.is_empty(),
        "validate of a valid file printed on stdout\n{}",
        describe_output(&out)
    );

    // plan stores nothing; apply stores version 1 once.
    let out = run(&["plan", "valid/diamond.yaml"]).await.unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("diamond"),
        "{}",
        describe_output(&out)
    );
    let mut c = defs(&daemon, &token).await;
    assert_code(
        get(&mut c, "diamond", 0).await,
        Code::NotFound,
        "Get after mantlectl plan",
    );
    for round in 0..2 {
        let out = run(&["apply", "valid/diamond.yaml"]).await.unwrap();
        assert!(
            out.status.success(),
            "apply round {round}\n{}",
            describe_output(&out)
        );
    }
    let stored = get(&mut c, "diamond", 0)
        .await
        .expect("Get after mantlectl apply");
    assert_eq!(stored.version, 1);
    assert_eq!(stored.source, fixture("valid/diamond.yaml"));

    // apply of an invalid file fails and stores nothing.
    let out = run(&["apply", "invalid/33-explicit-cycle.yaml"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        fixture("invalid/33-explicit-cycle.expected")
    );
    assert_code(
        get(&mut c, "explicit-cycle", 0).await,
        Code::NotFound,
        "Get after a failed apply",
    );
}

/// Validate, plan and apply warn, without failing, about what will not work as written: a
/// `credential` naming a secret the tenant does not have (or one of a type the action does
/// not take), a trigger that does not fire, and an input the workflow does not declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_warn_about_credentials_triggers_and_inputs() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let (_tenant, token) = tenant_with_key(
        &daemon,
        &operator,
        "warn",
        &["definitions:read", "definitions:write", "secrets:write"],
    )
    .await;
    let source = "name: warned
triggers:
  - type: webhook
    path: /hooks/warned
steps:
  - name: call
    action: http/request
    credential: api-token
    params:
      url: \"https://example.com/{{ inputs.city }}\"
";
    let mut c = defs(&daemon, &token).await;
    let warnings = |list: &[pb::ValidationProblem]| -> Vec<String> {
        list.iter()
            .map(|w| {
                format!(
                    "{}:{}:{}: {}: {}",
                    w.file, w.line, w.column, w.path, w.message
                )
            })
            .collect()
    };
    let validated = expect_ok(
        c.validate_definition(pb::ValidateDefinitionRequest {
            source: source.to_owned(),
            filename: "warned.yaml".to_owned(),
        })
        .await,
        "ValidateDefinition",
    );
    let got = warnings(&validated.warnings);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].starts_with("warned.yaml:3:5: triggers[0]: a webhook trigger without `secret`"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("warned.yaml:8:17: steps[0].credential: tenant ")
            && got[1].contains("has no secret \"api-token\"")
            && got[1].contains("mantlectl secrets create api-token --type bearer"),
        "{got:#?}"
    );
    assert!(
        got[2].starts_with(
            "warned.yaml:10:36: steps[0].params.url: the workflow declares no input \"city\""
        ),
        "{got:#?}"
    );
    let plan = plan_ok(&mut c, source, "plan with warnings").await;
    assert_eq!(
        warnings(&plan.warnings).len(),
        3,
        "plan carries the warnings"
    );

    // A secret of a type http/request does not take; then one it takes.
    let mut secrets = pb::secret_service_client::SecretServiceClient::with_interceptor(
        daemon.channel().await,
        Auth::new(Some(&token)),
    );
    let create = |kind: &str| pb::CreateSecretRequest {
        name: "api-token".to_owned(),
        r#type: kind.to_owned(),
        fields: [("token".to_owned(), "s3cret".to_owned())].into(),
    };
    expect_ok(
        secrets.create_secret(create("generic")).await,
        "CreateSecret",
    );
    let applied = apply_ok(&mut c, source, "apply with warnings").await;
    let got = warnings(&applied.warnings);
    assert!(
        got.iter().any(|w| w.contains(
            "steps[0].credential: secret \"api-token\" has type generic; http/request takes bearer, basic, header"
        )),
        "{got:#?}"
    );
    assert!(applied.created, "warnings do not stop an apply");
    expect_ok(
        secrets
            .delete_secret(pb::DeleteSecretRequest {
                name: "api-token".to_owned(),
            })
            .await,
        "DeleteSecret",
    );
    expect_ok(
        secrets.create_secret(create("bearer")).await,
        "CreateSecret",
    );
    let plan = plan_ok(&mut c, source, "plan after the secret exists").await;
    let got = warnings(&plan.warnings);
    assert!(
        !got.iter().any(|w| w.contains("credential")),
        "no credential warning once the secret exists: {got:#?}"
    );

    // mantlectl prints them on stderr and succeeds; -o json carries them.
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("warned.yaml");
    std::fs::write(&file, source).unwrap();
    let run = |args: &[&str]| {
        run_with_timeout(
            mantlectl(&daemon, home.path(), &token, args),
            Duration::from_secs(60),
        )
    };
    let path = file.to_str().unwrap();
    let out = run(&["validate", path]).await.unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {path}:3:5: triggers[0]: a webhook trigger without `secret`"
        )),
        "{}",
        describe_output(&out)
    );
    let out = run(&["-o", "json", "plan", path]).await.unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let text = plan.to_string();
    assert!(
        text.contains("\"warnings\"") && text.contains("inputs.city is never set"),
        "{}",
        describe_output(&out)
    );
}

/// `ListActions` and `mantlectl actions list|describe`: every action with its params as
/// JSON Schema, from the same declarations validation uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_listed_with_their_params_schema() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let (_tenant, token) = tenant_with_key(&daemon, &operator, "acts", &["definitions:read"]).await;
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], token: &str| {
        run_with_timeout(
            mantlectl(&daemon, home.path(), token, args),
            Duration::from_secs(60),
        )
    };
    let out = run(&["-o", "json", "actions", "list"], &token)
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "core/log",
            "core/set",
            "core/sleep",
            "core/fail",
            "http/request",
            "ai/completion"
        ]
    );
    let ai = &list[5];
    assert_eq!(ai["kind"], "effect");
    assert_eq!(
        ai["credential_types"],
        serde_json::json!(["openai", "anthropic"])
    );
    assert_eq!(ai["params_schema"]["properties"]["tools"]["type"], "array");
    let http = &list[4];
    assert_eq!(http["kind"], "effect");
    assert_eq!(
        http["credential_types"],
        serde_json::json!(["bearer", "basic", "header"])
    );
    assert_eq!(
        http["params_schema"]["required"],
        serde_json::json!(["url"])
    );
    assert_eq!(
        http["params_schema"]["properties"]["ok_status"]["type"],
        "array"
    );
    assert_eq!(list[2]["kind"], "timer");

    let out = run(&["actions", "describe", "http/request"], &token)
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("http/request (effect): "), "{text}");
    let url = text
        .lines()
        .find(|l| l.starts_with("url "))
        .unwrap_or_else(|| panic!("no url row:\n{text}"));
    assert!(url.contains("string") && url.contains("yes"), "{url}");

    let out = run(&["actions", "describe", "htp/request"], &token)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no action \"htp/request\"; the actions are core/log"),
        "{}",
        describe_output(&out)
    );

    // definitions:read is needed.
    let (_other, no_scope) =
        tenant_with_key(&daemon, &operator, "acts", &["executions:read"]).await;
    let out = run(&["actions", "list"], &no_scope).await.unwrap();
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("definitions:read"),
        "{}",
        describe_output(&out)
    );
}
