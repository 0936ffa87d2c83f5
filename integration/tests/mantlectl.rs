//! `mantlectl` against a real daemon.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use mantle_integration::*;

struct Ctl<'a> {
    daemon: &'a Daemon,
    home: tempfile::TempDir,
}

impl Ctl<'_> {
    /// Runs `mantlectl --address <daemon> <args>`, with `token` (None: no --token flag and
    /// MANTLE_DATA_DIR pointing at the daemon's data dir, so the operator-token file is used).
    async fn run(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = mantlectl_command(self.home.path());
        cmd.arg("--address").arg(self.daemon.addr.to_string());
        match token {
            Some(token) => {
                cmd.arg("--token").arg(token);
                // An empty data dir, so the token can only come from the flag.
                cmd.env("MANTLE_DATA_DIR", self.home.path().join("no-data"));
            }
            None => {
                cmd.env("MANTLE_DATA_DIR", self.daemon.data_dir());
            }
        }
        cmd.args(args);
        run_with_timeout(cmd, Duration::from_secs(60))
            .await
            .unwrap_or_else(|err| panic!("mantlectl {args:?}: {err:#}"))
    }

    async fn ok(&self, token: Option<&str>, args: &[&str]) -> String {
        let output = self.run(token, args).await;
        assert!(
            output.status.success(),
            "mantlectl {args:?} failed\n{}",
            describe_output(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn json(&self, token: Option<&str>, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let stdout = self.ok(token, &full).await;
        serde_json::from_str(&stdout).unwrap_or_else(|err| {
            panic!("mantlectl {full:?}: stdout is not JSON ({err}):\n{stdout}")
        })
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn mantlectl_smoke() {
    let daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let operator = daemon.operator_token();
    let ctl = Ctl {
        daemon: &daemon,
        home: tempfile::tempdir().unwrap(),
    };
    let op = Some(operator.as_str());

    // health (no token needed) and version (client and server).
    let health = ctl.ok(Some(""), &["health"]).await;
    assert!(
        health.contains("SERVING") && !health.contains("NOT_SERVING"),
        "health: {health}"
    );
    let version = ctl.ok(op, &["version"]).await;
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "mantlectl version does not show {}: {version}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        version.contains("sqlite"),
        "mantlectl version does not show the database: {version}"
    );

    // tenants create / get / list / delete.
    let name = random_name("ctl");
    let created = ctl
        .json(
            op,
            &["tenants", "create", &name, "--display-name", "Ctl Test"],
        )
        .await;
    assert_eq!(created["name"], name.as_str(), "{created}");
    assert_eq!(created["display_name"], "Ctl Test", "{created}");
    let got = ctl.json(op, &["tenants", "get", &name]).await;
    assert_eq!(got["id"], created["id"], "{got}");
    let list = ctl.json(op, &["tenants", "list"]).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap_or_else(|| panic!("tenants list -o json is not an array: {list}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"default") && names.contains(&name.as_str()),
        "{names:?}"
    );
    let table = ctl.ok(op, &["tenants", "list"]).await;
    assert!(table.contains(&name), "table output lacks {name}: {table}");

    // tenants update changes only the settings given.
    let updated = ctl
        .json(
            op,
            &[
                "tenants",
                "update",
                &name,
                "--max-concurrent-executions",
                "3",
                "--webhook-url",
                "https://hooks.example.com/mantle",
                "--webhook-secret",
                "hooks",
            ],
        )
        .await;
    assert_eq!(updated["max_concurrent_executions"], 3, "{updated}");
    assert_eq!(
        updated["webhook_url"], "https://hooks.example.com/mantle",
        "{updated}"
    );
    assert_eq!(updated["webhook_secret"], "hooks", "{updated}");
    let updated = ctl
        .json(op, &["tenants", "update", &name, "--webhook-url", ""])
        .await;
    assert_eq!(updated["webhook_url"], "", "{updated}");
    assert_eq!(updated["webhook_secret"], "hooks", "{updated}");
    assert_eq!(updated["max_concurrent_executions"], 3, "{updated}");
    let bad = ctl
        .run(
            op,
            &["tenants", "update", &name, "--webhook-url", "ftp://x"],
        )
        .await;
    assert!(!bad.status.success(), "an ftp webhook URL was accepted");
    assert!(
        stderr_of(&bad).contains("webhook_url"),
        "the error does not name the field: {}",
        stderr_of(&bad)
    );

    // keys create -o json has the token, and the token works.
    let key = ctl
        .json(
            op,
            &[
                "keys",
                "create",
                "--tenant",
                &name,
                "--scope",
                "executions:read",
                "--name",
                "ci",
            ],
        )
        .await;
    let token = key["token"]
        .as_str()
        .unwrap_or_else(|| panic!("keys create -o json has no token: {key}"))
        .to_owned();
    let info = expect_ok(
        daemon
            .system(Some(&token))
            .await
            .get_server_info(pb::GetServerInfoRequest {})
            .await,
        "GetServerInfo with the key from mantlectl",
    );
    assert_eq!(info.caller.expect("caller").tenant, name);

    // An error: the status in words, non-zero exit.
    let missing = ctl.run(op, &["tenants", "get", "no-such-tenant"]).await;
    assert!(
        !missing.status.success(),
        "tenants get of a missing tenant succeeded"
    );
    assert!(
        stderr_of(&missing).to_lowercase().contains("not found"),
        "stderr does not say `not found`\n{}",
        describe_output(&missing)
    );
    let denied = ctl.run(Some(&token), &["tenants", "list"]).await;
    assert!(
        !denied.status.success(),
        "tenants list with a tenant key succeeded"
    );
    assert!(
        stderr_of(&denied)
            .to_lowercase()
            .contains("permission denied"),
        "stderr does not say `permission denied`\n{}",
        describe_output(&denied)
    );
    let unauthenticated = ctl.run(Some(&unknown_token()), &["tenants", "list"]).await;
    assert!(!unauthenticated.status.success());
    assert!(
        stderr_of(&unauthenticated)
            .to_lowercase()
            .contains("unauthenticated"),
        "stderr does not say `unauthenticated`\n{}",
        describe_output(&unauthenticated)
    );

    // Zero-config: no --token, local address, the operator-token file in MANTLE_DATA_DIR.
    let got = ctl.json(None, &["tenants", "get", &name]).await;
    assert_eq!(got["name"], name.as_str());

    ctl.ok(op, &["tenants", "delete", &name]).await;
    let gone = ctl.run(op, &["tenants", "get", &name]).await;
    assert!(!gone.status.success(), "the deleted tenant is still there");
    let default = ctl.run(op, &["tenants", "delete", "default"]).await;
    assert!(
        !default.status.success(),
        "deleting tenant default succeeded"
    );
    assert!(
        stderr_of(&default)
            .to_lowercase()
            .contains("failed precondition"),
        "{}",
        describe_output(&default)
    );
    assert!(
        is_api_key_token(&token),
        "keys create token {token:?} is not of the form mntl_<32 hex id>_<64 hex secret>"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mantlectl_unreachable_daemon_exits_non_zero() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = mantlectl_command(home.path());
    cmd.env("MANTLE_DATA_DIR", Path::new("/nonexistent")).args([
        "--address",
        &format!("127.0.0.1:{port}"),
        "--token",
        "x",
        "tenants",
        "list",
    ]);
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .expect("mantlectl");
    assert!(!output.status.success(), "{}", describe_output(&output));
    assert!(
        stderr_of(&output).contains(&port.to_string()),
        "the error does not name the address\n{}",
        describe_output(&output)
    );
}
