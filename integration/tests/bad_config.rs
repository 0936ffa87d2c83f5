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
