//! Keys file mode (`MANTLE_TENANT_KEYS_PATH`): keys from a JSON file, reloaded without a
//! restart, the last good set kept when the file breaks.

use std::path::Path;
use std::time::Duration;

use mantle_integration::*;
use tonic::Code;

/// Reloads must show within 5 s; polls allow 7.
const RELOAD_WAIT: Duration = Duration::from_secs(7);

const TOKEN_A: &str = "it-keys-file-token-a-0123456789abcdef";
const TOKEN_B: &str = "it-keys-file-token-b-0123456789abcdef";

/// Writes the file atomically, so the daemon never reads half of it, and private to its
/// owner (the daemon refuses a keys file others may read).
fn write_keys(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text);
    std::fs::rename(&tmp, path).unwrap();
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn key_a(tenant: &str) -> String {
    format!(
        r#"{{"token": "{TOKEN_A}", "tenant": "{tenant}", "scopes": ["executions:read", "definitions:read"], "name": "a-ci"}}"#
    )
}

fn key_b(tenant: &str) -> String {
    format!(r#"{{"token": "{TOKEN_B}", "tenant": "{tenant}", "scopes": ["*"]}}"#)
}

fn keys(entries: &[String]) -> String {
    format!("{{\"keys\": [\n  {}\n]}}\n", entries.join(",\n  "))
}

async fn server_info(
    daemon: &Daemon,
    auth: Auth,
) -> Result<tonic::Response<pb::ServerInfo>, tonic::Status> {
    let mut system = SystemServiceClient::with_interceptor(daemon.channel().await, auth);
    system.get_server_info(pb::GetServerInfoRequest {}).await
}

async fn caller_of(daemon: &Daemon, token: &str) -> Result<pb::Caller, tonic::Status> {
    server_info(daemon, Auth::new(Some(token))).await.map(|r| {
        r.into_inner()
            .caller
            .expect("GetServerInfo without a caller")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_file_keys_reload_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenant-keys.json");
    let tenant_a = random_name("kfa");
    let tenant_b = random_name("kfb");
    write_keys(&path, &keys(&[key_a(&tenant_a)]));

    let daemon = Daemon::start_ok(
        DaemonOptions::sqlite().env("MANTLE_TENANT_KEYS_PATH", path.display().to_string()),
    )
    .await;
    let operator = daemon.operator_token();

    // The key's tenant does not exist yet.
    let err = caller_of(&daemon, TOKEN_A).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("the tenant of this key does not exist"),
        "{err:?}"
    );

    create_tenant(&daemon, &operator, &tenant_a).await;
    create_tenant(&daemon, &operator, &tenant_b).await;

    // A's key acts on A with its scopes.
    let caller = caller_of(&daemon, TOKEN_A).await.expect("A's key");
    assert_eq!(caller.tenant, tenant_a);
    assert_eq!(caller.scopes, vec!["definitions:read", "executions:read"]);
    assert_eq!(caller.key_id, "file:a-ci");
    assert!(!caller.operator);
    // ... only on A, and it is no operator.
    assert_code(
        server_info(&daemon, Auth::new(Some(TOKEN_A)).with_tenant(&tenant_b)).await,
        Code::PermissionDenied,
        "x-mantle-tenant naming another tenant with a keys file key",
    );
    expect_ok(
        server_info(&daemon, Auth::new(Some(TOKEN_A)).with_tenant(&tenant_a)).await,
        "x-mantle-tenant naming the key's own tenant",
    );
    let mut tenants = daemon.tenants(Some(TOKEN_A)).await;
    assert_code(
        tenants
            .list_tenants(pb::ListTenantsRequest::default())
            .await,
        Code::PermissionDenied,
        "ListTenants with a keys file key",
    );
    // B's key is not in the file yet.
    assert_code(
        caller_of(&daemon, TOKEN_B).await,
        Code::Unauthenticated,
        "B's key before it is in the file",
    );

    // Add B's key: it works within 5 s.
    write_keys(&path, &keys(&[key_a(&tenant_a), key_b(&tenant_b)]));
    let added = eventually(RELOAD_WAIT, || async {
        caller_of(&daemon, TOKEN_B).await.is_ok()
    })
    .await;
    assert!(
        added,
        "B's key did not work within {RELOAD_WAIT:?}\n{}",
        daemon.diagnostics()
    );
    let caller = caller_of(&daemon, TOKEN_B).await.unwrap();
    assert_eq!(caller.tenant, tenant_b);
    assert_eq!(caller.scopes, vec!["*"]);
    assert_eq!(caller.key_id, "file:1");

    // Remove A's key: it is refused within 5 s.
    write_keys(&path, &keys(&[key_b(&tenant_b)]));
    let removed = eventually(RELOAD_WAIT, || async {
        matches!(caller_of(&daemon, TOKEN_A).await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    assert!(
        removed,
        "A's key still works {RELOAD_WAIT:?} after its removal\n{}",
        daemon.diagnostics()
    );
    assert_eq!(caller_of(&daemon, TOKEN_B).await.unwrap().key_id, "file:0");

    // Corrupt the file: the error is counted and logged; B's key still works.
    assert_eq!(
        daemon
            .metric("mantle_tenant_keys_reload_errors_total")
            .await,
        0.0
    );
    write_keys(&path, "{\"keys\": [\n  {\"token\": \"x\",\n  }\n]}\n");
    let counted = eventually(RELOAD_WAIT, || async {
        daemon
            .metric("mantle_tenant_keys_reload_errors_total")
            .await
            >= 1.0
    })
    .await;
    assert!(counted, "no reload error counted\n{}", daemon.diagnostics());
    let stderr = daemon.stderr();
    let error_line = stderr
        .lines()
        .find(|l| l.contains("tenant keys file not reloaded"))
        .unwrap_or_else(|| panic!("no reload error logged\n{}", daemon.diagnostics()));
    assert!(
        error_line.contains(&format!("{}:3:", path.display())),
        "the error does not name the file and line: {error_line}"
    );
    assert!(
        !stderr.contains(TOKEN_A) && !stderr.contains(TOKEN_B),
        "a token was logged"
    );
    assert_eq!(caller_of(&daemon, TOKEN_B).await.unwrap().tenant, tenant_b);
    assert_code(
        caller_of(&daemon, TOKEN_A).await,
        Code::Unauthenticated,
        "A's key from the corrupt file",
    );
    // Logged once per change, not on every look.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        daemon
            .metric("mantle_tenant_keys_reload_errors_total")
            .await,
        1.0
    );
    assert_eq!(
        daemon
            .stderr()
            .matches("tenant keys file not reloaded")
            .count(),
        1,
        "{}",
        daemon.diagnostics()
    );

    // Fix the file: the reload counts as a success.
    let reloads = daemon.metric("mantle_tenant_keys_reloads_total").await;
    assert!(reloads >= 3.0, "reloads before the fix: {reloads}");
    write_keys(&path, &keys(&[key_a(&tenant_a), key_b(&tenant_b)]));
    let fixed = eventually(RELOAD_WAIT, || async {
        caller_of(&daemon, TOKEN_A).await.is_ok()
    })
    .await;
    assert!(
        fixed,
        "A's key did not work again\n{}",
        daemon.diagnostics()
    );
    assert_eq!(
        daemon.metric("mantle_tenant_keys_reloads_total").await,
        reloads + 1.0
    );
    assert_eq!(daemon.metric("mantle_tenant_keys").await, 2.0);
    assert_eq!(
        daemon
            .metric("mantle_tenant_keys_reload_errors_total")
            .await,
        1.0
    );
    assert!(
        daemon
            .stderr()
            .lines()
            .any(|l| l.contains("reloaded the tenant keys file") && l.contains("keys=2")),
        "no successful reload logged\n{}",
        daemon.diagnostics()
    );

    // The operator keeps working beside the file.
    expect_ok(
        daemon
            .tenants(Some(&operator))
            .await
            .list_tenants(pb::ListTenantsRequest::default())
            .await,
        "ListTenants with the operator token",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_file_missing_or_invalid_at_startup_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    write_private(&bad, &keys(&[key_a("acme").replace("a-ci", "a ci")]));
    // Readable by every user of the machine: refused, whatever it holds.
    let open = dir.path().join("open.json");
    std::fs::write(&open, keys(&[key_a("acme")])).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for (path, what) in [
        (dir.path().join("absent.json"), "cannot read"),
        (bad, "name"),
        (open, "readable by other users (mode 0644)"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = mantle_command();
        cmd.arg("serve")
            .env("MANTLE_DATA_DIR", data.path())
            .env("MANTLE_API_ADDRESS", "127.0.0.1:0")
            .env("MANTLE_TENANT_KEYS_PATH", &path);
        let output = run_with_timeout(cmd, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(64),
            "{}",
            describe_output(&output)
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("listening"),
            "{}",
            describe_output(&output)
        );
        let lines = error_lines(&output.stderr);
        assert_eq!(lines.len(), 1, "{}", describe_output(&output));
        assert!(lines[0].contains("MANTLE_TENANT_KEYS_PATH"), "{}", lines[0]);
        assert!(
            lines[0].contains(&path.display().to_string()),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(what), "{}", lines[0]);
        assert!(!lines[0].contains(TOKEN_A), "{}", lines[0]);
    }
}
