//! Graceful shutdown on SIGTERM / SIGINT.

use std::time::{Duration, Instant};

use mantle_integration::*;

const GRACE: Duration = Duration::from_secs(5);
/// Slack for process teardown on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

async fn graceful_exit(
    opts: DaemonOptions,
    token: impl FnOnce(&Daemon) -> Option<String>,
    signal: &str,
) {
    let mut daemon = Daemon::start_ok(opts.env("MANTLE_SHUTDOWN_GRACE_PERIOD", "5s")).await;
    let addr = daemon.addr;

    // An open client connection that has made a call.
    let channel = daemon.channel().await;
    let mut health = HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health check before shutdown");
    if let Some(token) = token(&daemon) {
        let mut system =
            SystemServiceClient::with_interceptor(channel.clone(), Auth::new(Some(&token)));
        expect_ok(
            system.get_server_info(pb::GetServerInfoRequest {}).await,
            "GetServerInfo before shutdown",
        );
    }

    let started = Instant::now();
    let status = match signal {
        "TERM" => daemon.sigterm(GRACE + SLACK).await.expect("kill -TERM"),
        _ => {
            daemon.signal(signal).expect("kill");
            daemon.wait_timeout(GRACE + SLACK).await.expect("wait")
        }
    };
    let Some(status) = status else {
        panic!(
            "mantle did not exit within {:?} of SIG{signal} (grace period 5s)\n{}",
            GRACE + SLACK,
            daemon.diagnostics()
        );
    };
    assert_eq!(
        status.code(),
        Some(0),
        "mantle exited with {status} after SIG{signal} (after {:?}), not 0\n{}",
        started.elapsed(),
        daemon.diagnostics()
    );
    assert!(
        !is_listening(addr).await,
        "{addr} still accepts connections after exit"
    );
    drop(channel);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_sqlite() {
    graceful_exit(
        DaemonOptions::sqlite(),
        |d| d.operator_token.clone(),
        "TERM",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_exits_zero_sqlite() {
    graceful_exit(DaemonOptions::sqlite(), |d| d.operator_token.clone(), "INT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_postgres() {
    let Some(db) = PgDatabase::create("sigterm_exits_zero_postgres").await else {
        return;
    };
    let token = format!("it-token-{}", uuid::Uuid::new_v4().simple());
    let opts = DaemonOptions::postgres(&db.url).env("MANTLE_API_TOKEN", &token);
    graceful_exit(opts, |_| Some(token.clone()), "TERM").await;
}

/// A signal that lands the moment the daemon says it listens (before anything has called
/// it) still shuts it down gracefully: the handlers are installed before it binds.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_right_after_start_exits_zero() {
    for _ in 0..5 {
        let mut daemon = Daemon::start_ok(DaemonOptions::sqlite()).await;
        let status = daemon.sigterm(GRACE + SLACK).await.expect("kill -TERM");
        let Some(status) = status else {
            panic!(
                "mantle did not exit within {:?} of SIGTERM\n{}",
                GRACE + SLACK,
                daemon.diagnostics()
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "mantle exited with {status} after an early SIGTERM, not 0\n{}",
            daemon.diagnostics()
        );
    }
}
