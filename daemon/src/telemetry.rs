//! Logs and metrics.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber writing to stderr.
pub fn init_logging(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::new(filter_directives(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The log filter: `level` as configured, with PostgreSQL's notices (such as `relation
/// "_sqlx_migrations" already exists, skipping` at every start) kept to warnings unless
/// `level` says otherwise of sqlx.
fn filter_directives(level: &str) -> String {
    if level.contains("sqlx") {
        level.to_owned()
    } else {
        format!("{level},sqlx::postgres::notice=warn")
    }
}

/// Latency buckets in seconds, from 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus registry.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the global recorder (once per process) and starts its upkeep task.
    pub fn install(cancel: CancellationToken) -> anyhow::Result<Metrics> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
            .install_recorder()?;
        describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = interval.tick() => upkeep.run_upkeep(),
                }
            }
        });
        Ok(Metrics { handle })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

fn describe() {
    metrics::describe_counter!(
        "mantle_grpc_requests_total",
        "gRPC requests handled, by method and status code"
    );
    metrics::describe_histogram!(
        "mantle_grpc_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC request latency until the response ended, by method and status code"
    );
    metrics::describe_counter!(
        "mantle_executions_started_total",
        "Executions started through this daemon, by tenant"
    );
    metrics::describe_counter!(
        "mantle_executions_finished_total",
        "Executions this daemon finished, by tenant and final status"
    );
    metrics::describe_gauge!(
        "mantle_executions_running",
        "Executions this daemon is driving now"
    );
    metrics::describe_histogram!(
        "mantle_step_duration_seconds",
        metrics::Unit::Seconds,
        "Step attempt durations, by action and result"
    );
    metrics::describe_gauge!(
        "mantle_executions_queued",
        "Queued executions of each tenant across every daemon, refreshed every 5 s"
    );
    metrics::describe_counter!(
        "mantle_lease_recoveries_total",
        "Executions this daemon claimed from the database: taken over from a daemon that died or shut down, or woken after a long wait"
    );
    metrics::describe_counter!(
        "mantle_rate_limited_total",
        "Requests refused by a tenant's rate limit, by tenant"
    );
    metrics::describe_counter!(
        "mantle_cap_rejections_total",
        "Requests refused by a tenant or installation cap, by tenant and kind"
    );
    metrics::describe_counter!(
        crate::auth::keys_file::RELOAD_ERRORS_METRIC,
        "Changes to the tenant keys file that could not be loaded (unreadable, bad JSON or an invalid entry); the last good keys stay in use"
    );
    metrics::describe_counter!(
        crate::auth::keys_file::RELOADS_METRIC,
        "Successful loads of the tenant keys file, the one at startup included"
    );
    metrics::describe_gauge!(
        crate::auth::keys_file::KEYS_METRIC,
        "Keys of the tenant keys file in use"
    );
    metrics::describe_gauge!(
        "mantle_database_up",
        "1 while the database answers pings, 0 while it does not"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_notices_stay_below_info_unless_asked_for() {
        assert_eq!(
            filter_directives("info"),
            "info,sqlx::postgres::notice=warn"
        );
        assert_eq!(
            filter_directives("debug,sqlx=debug"),
            "debug,sqlx=debug",
            "an explicit sqlx directive wins"
        );
        let filter = tracing_subscriber::EnvFilter::new(filter_directives("info"));
        assert!(filter.to_string().contains("sqlx::postgres::notice=warn"));
    }
}
