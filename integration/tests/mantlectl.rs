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
    assert!(
        stderr_of(&unauthenticated).contains("(sent the token given with --token)"),
        "the refusal does not name the token's source\n{}",
        describe_output(&unauthenticated)
    );

    // The operator token file is sent only to the daemon that wrote it: with this daemon's
    // data dir, a call to another daemon on this machine goes without it, and says why.
    let other = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let mut cmd = mantlectl_command(ctl.home.path());
    cmd.env("MANTLE_DATA_DIR", daemon.data_dir()).args([
        "--address",
        &other.addr.to_string(),
        "tenants",
        "list",
    ]);
    let elsewhere = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        !elsewhere.status.success(),
        "{}",
        describe_output(&elsewhere)
    );
    let stderr = stderr_of(&elsewhere);
    assert!(
        stderr.contains(&format!(
            "is the operator token of the daemon at {}, not of http://{}",
            daemon.addr, other.addr
        )),
        "{}",
        describe_output(&elsewhere)
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

/// A mantlectl process whose stderr is read line by line as it runs.
struct Running {
    child: tokio::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    fn spawn(ctl: &Ctl<'_>, args: &[&str]) -> Running {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = mantlectl_command(ctl.home.path());
        cmd.arg("--address")
            .arg(ctl.daemon.addr.to_string())
            .env("MANTLE_DATA_DIR", ctl.daemon.data_dir())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning mantlectl");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        Running { child, stderr }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_for_line(&self, needle: &str) {
        let seen = eventually(Duration::from_secs(60), || async {
            self.stderr().iter().any(|l| l.contains(needle))
        })
        .await;
        assert!(
            seen,
            "mantlectl never printed {needle:?}:\n{}",
            self.stderr().join("\n")
        );
    }

    async fn finish(mut self) -> (std::process::ExitStatus, String, Vec<String>) {
        use tokio::io::AsyncReadExt;
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().expect("piped stdout");
        let read = pipe.read_to_string(&mut stdout);
        let (status, _) = tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(self.child.wait(), read)
        })
        .await
        .expect("mantlectl did not finish within 120 s");
        // Let the reader take the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.expect("mantlectl status"), stdout, self.stderr())
    }
}

const RESTART_WORKFLOW: &str = r#"name: across-restart
steps:
  - name: before
    action: core/log
    params: {message: "before the restart"}
  - name: slow
    action: core/sleep
    depends_on: [before]
    params: {duration: 4s}
  - name: after
    action: core/set
    depends_on: [slow]
    params: {answer: 42}
outputs:
  answer: steps.after.output.answer
"#;

/// Event lines only (`HH:MM:SS what`): not the apply summary, the start line, the notes
/// of an outage or the quiet lines.
fn event_lines(stderr: &[String]) -> Vec<String> {
    stderr
        .iter()
        .filter(|l| {
            let b = l.as_bytes();
            b.len() > 9 && b[2] == b':' && b[5] == b':' && b[8] == b' ' && !l.contains(" … ")
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mantlectl_follow_survives_a_daemon_restart() {
    let mut daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let ctl = Ctl {
        daemon: &daemon,
        home: tempfile::tempdir().unwrap(),
    };
    let file = ctl.home.path().join("across-restart.yaml");
    std::fs::write(&file, RESTART_WORKFLOW).unwrap();
    let follow = Running::spawn(
        &ctl,
        &["run", file.to_str().unwrap(), "--follow", "-o", "json"],
    );
    follow.wait_for_line("step slow attempt 1 running").await;
    let home = ctl.home;

    // A deploy: the daemon stops, stays away long enough for the client to notice, and a
    // new one takes its place on the same address and data.
    let addr = daemon.addr;
    daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("SIGTERM");
    follow.wait_for_line("cannot be reached").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon
        .restart_ok(DaemonOptions::sqlite().env("MANTLE_API_ADDRESS", addr.to_string()))
        .await;

    let (status, stdout, stderr) = follow.finish().await;
    let all = stderr.join("\n");
    assert!(
        status.success(),
        "run --follow failed: {status}\n{all}\n{stdout}"
    );
    let execution = json(&stdout);
    assert_eq!(execution["status"], "completed", "{stdout}");
    assert_eq!(
        execution["outputs"],
        serde_json::json!({"answer": 42}),
        "{stdout}"
    );
    let notes = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(notes("cannot be reached"), 1, "one note per outage:\n{all}");
    assert!(
        stderr.iter().any(|l| l.contains("goes on there")),
        "the note does not say the execution goes on:\n{all}"
    );
    assert_eq!(notes("answers again"), 1, "{all}");

    // Every event exactly once, in order: what --follow printed is the recorded log.
    let ctl = Ctl {
        daemon: &daemon,
        home,
    };
    let id = execution["id"].as_str().unwrap();
    let log: Vec<String> = ctl
        .ok(None, &["logs", id])
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(event_lines(&stderr), log, "--follow printed:\n{all}");
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("[before] before the restart"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mantlectl_wait_timeout_while_the_daemon_is_down_exits_5() {
    let mut daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
    let ctl = Ctl {
        daemon: &daemon,
        home: tempfile::tempdir().unwrap(),
    };
    let file = ctl.home.path().join("long.yaml");
    std::fs::write(
        &file,
        "name: long\nsteps:\n  - name: nap\n    action: core/sleep\n    params: {duration: 60s}\n",
    )
    .unwrap();
    let wait = Running::spawn(
        &ctl,
        &["run", file.to_str().unwrap(), "--wait", "--timeout", "4s"],
    );
    // The execution has started once the apply summary and the start are through.
    let started = eventually(Duration::from_secs(30), || async {
        ctl.ok(None, &["executions", "list", "-o", "json"])
            .await
            .contains("\"running\"")
    })
    .await;
    assert!(
        started,
        "the execution never ran:\n{}",
        wait.stderr().join("\n")
    );
    drop(ctl);
    daemon.sigkill().await.expect("kill -9");
    let began = std::time::Instant::now();
    let (status, _, stderr) = wait.finish().await;
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(5), "{all}");
    assert!(began.elapsed() < Duration::from_secs(10), "{all}");
    assert_eq!(
        stderr
            .iter()
            .filter(|l| l.contains("cannot be reached"))
            .count(),
        1,
        "{all}"
    );
    assert!(
        all.contains("did not finish within 4s; it goes on"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mantlectl_retry_follows_only_the_retry_and_cancel_of_a_finished_execution_says_so() {
    let daemon =
        Daemon::start_ok(DaemonOptions::sqlite().env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"))
            .await;
    let ctl = Ctl {
        daemon: &daemon,
        home: tempfile::tempdir().unwrap(),
    };
    let server = TestServer::start().await;
    server.set("/flaky", Reply::status(500));
    let file = ctl.home.path().join("flaky.yaml");
    std::fs::write(
        &file,
        format!(
            "name: flaky\nsteps:\n  - name: call\n    action: http/request\n    params: {{url: \"{}\"}}\n",
            server.url("/flaky")
        ),
    )
    .unwrap();
    let output = ctl
        .run(
            None,
            &["run", file.to_str().unwrap(), "--wait", "-o", "json"],
        )
        .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        describe_output(&output)
    );
    let failed = json(&String::from_utf8_lossy(&output.stdout));
    let id = failed["id"].as_str().unwrap().to_owned();
    assert_eq!(failed["status"], "failed");

    server.set("/flaky", Reply::json(200, serde_json::json!({"ok": true})));
    let output = ctl
        .run(None, &["retry", &id, "--follow", "-o", "json"])
        .await;
    assert!(output.status.success(), "{}", describe_output(&output));
    let stderr = stderr_of(&output);
    let retried = json(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(retried["status"], "completed", "{stderr}");
    assert!(stderr.contains("step call attempt 2 running"), "{stderr}");
    assert!(
        !stderr.contains("attempt 1"),
        "retry --follow repeated the first run's events:\n{stderr}"
    );

    let output = ctl.run(None, &["cancel", &id]).await;
    assert!(output.status.success(), "{}", describe_output(&output));
    let stderr = stderr_of(&output);
    assert_eq!(
        stderr.trim(),
        format!("execution {id} already ended (completed); nothing to cancel")
    );
}
