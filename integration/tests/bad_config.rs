//! A bad configuration exits non-zero before binding, with one `mantle: error:` line.

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use mantle_integration::*;

/// Runs `mantle serve` on a fixed free port with `env`, expecting it to fail. Returns the
/// output, the port, and how long it ran.
async fn serve_expecting_failure(
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Output, SocketAddr, Duration) {
    let data = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = mantle_command();
    cmd.arg("serve")
        .env("MANTLE_DATA_DIR", data.path())
        .env("MANTLE_API_ADDRESS", addr.to_string());
    for (key, value) in env {
        cmd.env(key, value);
    }
    let started = Instant::now();
    let output = run_with_timeout(cmd, timeout)
        .await
        .unwrap_or_else(|err| panic!("mantle serve with {env:?}: {err:#}"));
    let elapsed = started.elapsed();
    assert!(
        !output.status.success(),
        "mantle serve with {env:?} exited successfully\n{}",
        describe_output(&output)
    );
    assert!(
        output.status.code().is_some(),
        "mantle serve with {env:?} died from a signal instead of exiting\n{}",
        describe_output(&output)
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "mantle serve with {env:?} printed a listening line\n{}",
        describe_output(&output)
    );
    assert!(
        !is_listening(addr).await,
        "something listens on {addr} after the failed start"
    );
    (output, addr, elapsed)
}

/// The single `mantle: error:` line.
fn the_error_line(output: &Output) -> String {
    let lines = error_lines(&output.stderr);
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one `mantle: error: ...` line on stderr\n{}",
        describe_output(output)
    );
    lines[0].to_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn unparsable_database_url() {
    for url in ["not a url", "postgres://postgres@127.0.0.1:notaport/x"] {
        let (output, _, elapsed) =
            serve_expecting_failure(&[("MANTLE_DATABASE_URL", url)], Duration::from_secs(15)).await;
        let line = the_error_line(&output);
        assert!(
            line.contains("database"),
            "the error line for MANTLE_DATABASE_URL={url:?} does not name the database URL: {line}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "an unparsable URL should fail at once, took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database() {
    let (output, _, elapsed) = serve_expecting_failure(
        &[
            ("MANTLE_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x"),
            ("MANTLE_DATABASE_CONNECT_TIMEOUT", "2s"),
        ],
        Duration::from_secs(30),
    )
    .await;
    let line = the_error_line(&output);
    assert!(
        line.contains("database") || line.contains("connect") || line.contains("127.0.0.1:1"),
        "the error line does not say the database is unreachable: {line}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "with MANTLE_DATABASE_CONNECT_TIMEOUT=2s mantle took {elapsed:?} to give up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_api_token() {
    // Tokens shorter than 16 characters are refused.
    for token in ["short", "fifteen-chars-x"] {
        let (output, _, _) =
            serve_expecting_failure(&[("MANTLE_API_TOKEN", token)], Duration::from_secs(15)).await;
        let line = the_error_line(&output);
        assert!(
            line.contains("token"),
            "the error line for MANTLE_API_TOKEN={token:?} does not mention the token: {line}"
        );
    }
}

/// A start that cannot listen (the port is taken) records nothing: the next start, with
/// another encryption key, on the same still empty database, comes up. (It used to have
/// recorded the first key's id, refusing every other key for good.)
async fn failed_start_records_nothing(database_url: Option<String>) {
    const OTHER_KEY: &str = "6f746865722d6b65792d303030303030303030303030303030303030303030ff";
    let data = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = mantle_command();
    cmd.arg("serve").env("MANTLE_DATA_DIR", data.path()).env(
        "MANTLE_API_ADDRESS",
        taken.local_addr().unwrap().to_string(),
    );
    if let Some(url) = &database_url {
        cmd.env("MANTLE_DATABASE_URL", url);
    }
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(64),
        "{}",
        describe_output(&output)
    );
    let line = the_error_line(&output);
    assert!(line.contains("cannot listen on"), "{line}");

    let opts = DaemonOptions {
        database_url,
        data_dir: Some(data.path().to_path_buf()),
        ..DaemonOptions::default()
    }
    .env("MANTLE_ENCRYPTION_KEY", OTHER_KEY);
    let daemon = Daemon::start(opts)
        .await
        .expect("the start after a failed one, with another key");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_start_records_nothing_sqlite() {
    failed_start_records_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_start_records_nothing_postgres() {
    let Some(db) = PgDatabase::create("failed_start_records_nothing").await else {
        return;
    };
    failed_start_records_nothing(Some(db.url.clone())).await;
}

/// Errors waiting cannot cure — a role or database that does not exist, a wrong password —
/// end the start at once with the configuration exit code and the server's one-line cause.
#[tokio::test(flavor = "multi_thread")]
async fn permanent_database_errors_exit_at_once() {
    let Some(db) = PgDatabase::create("permanent_database_errors").await else {
        return;
    };
    let server = db.server_addr();
    let cases = [
        (
            format!("postgres://no_such_role_x@{server}/postgres"),
            "role \"no_such_role_x\" does not exist",
            "create the role",
        ),
        (
            with_database(&db.url, "no_such_database_x"),
            "database \"no_such_database_x\" does not exist",
            "create the database",
        ),
    ];
    for (url, cause, hint) in cases {
        let (output, _, elapsed) = serve_expecting_failure(
            &[
                ("MANTLE_DATABASE_URL", &url),
                ("MANTLE_DATABASE_CONNECT_TIMEOUT", "30s"),
            ],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            output.status.code(),
            Some(64),
            "{}",
            describe_output(&output)
        );
        let line = the_error_line(&output);
        assert!(line.contains(cause) && line.contains(hint), "{line}");
        assert!(
            !line.contains("at line") && !line.contains("error returned from database"),
            "{line}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "a permanent error waited {elapsed:?} (the connect timeout is 30s)"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("not reachable yet"),
            "a permanent error was retried\n{}",
            describe_output(&output)
        );
    }
}
