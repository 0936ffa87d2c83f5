//! Wiring: open the store, migrate, bootstrap credentials, bind, serve, shut down.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, StaticToken, token};
use crate::config::Config;
use crate::health;
use crate::store::{self, Backend, Store};
use crate::telemetry::Metrics;
use crate::tenancy::Tenancy;

/// Name of the file, inside the data directory, holding the local operator token.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// A failure to start, with the process exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 64).
    #[error("{0}")]
    Config(String),
    /// The database could not be opened or migrated: exit 64 when it is misconfigured, 65
    /// when its schema is newer than the binary, 69 when it cannot be reached, else 1.
    #[error("{}", StoreStartMessage(.0))]
    Store(#[from] store::Error),
    /// Creating or checking the operator key failed (exit 1).
    #[error("{0}")]
    Tenancy(#[from] crate::tenancy::Error),
    /// Anything else (exit 1).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) | StartError::Store(store::Error::Config(_)) => 64,
            StartError::Store(store::Error::Unavailable(_)) => 69,
            StartError::Store(store::Error::NewerSchema(_)) => 65,
            StartError::Store(_) | StartError::Tenancy(_) | StartError::Other(_) => 1,
        }
    }
}

/// A store error as a failed start tells it: a bad configuration or an unreachable database
/// by its message alone, anything else in the store's words.
struct StoreStartMessage<'a>(&'a store::Error);

impl std::fmt::Display for StoreStartMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            store::Error::Config(message) | store::Error::Unavailable(message) => {
                f.write_str(message)
            }
            other => std::fmt::Display::fmt(other, f),
        }
    }
}

/// How to open the configured database (for SQLite, `exclusive` locks the file).
pub fn store_options(config: &Config, exclusive: bool) -> store::OpenOptions {
    store::OpenOptions {
        url: config.database.url.clone(),
        data_dir: config.data_dir.clone(),
        max_connections: config.database.max_connections,
        connect_timeout: config.database.connect_timeout,
        exclusive,
    }
}

/// Opens the configured database (for SQLite, `exclusive` locks the file).
pub async fn open_store(config: &Config, exclusive: bool) -> Result<Arc<dyn Store>, StartError> {
    Ok(store::open(&store_options(config, exclusive)).await?)
}

/// `mantle serve`: runs until SIGTERM or SIGINT, then drains within the grace period.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let mut signals = Signals::install()?;
    let cancel = CancellationToken::new();
    // Connecting and migrating may wait (for the database, for another replica's
    // migration lock): a signal meanwhile ends the start, as it would have before.
    let store = tokio::select! {
        store = async {
            let store = open_store(&config, true).await?;
            store.migrate().await?;
            Ok::<_, StartError>(store)
        } => store?,
        () = signals.recv() => {
            tracing::info!("signal received while starting; exiting");
            return Ok(());
        }
    };
    // Bind before anything is recorded (the operator key, the encryption key's id): a
    // start that cannot listen must leave the next start to behave as this one should
    // have. Connections wait in the backlog until the daemon serves.
    let listener = TcpListener::bind(&config.api_address)
        .await
        .map_err(|e| StartError::Config(format!("cannot listen on {}: {e}", config.api_address)))?;
    let address = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.into()))?;
    let tenancy = Tenancy::new(
        store.clone(),
        crate::connectors::NetworkPolicy {
            allow_private: config.engine.allow_private_networks,
        },
    );
    let static_token = config
        .api_token
        .as_deref()
        .map(StaticToken::new)
        .transpose()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let keys_file = config
        .tenant_keys_path
        .as_deref()
        .map(crate::auth::keys_file::KeysFile::load)
        .transpose()
        .map_err(|e| StartError::Config(e.to_string()))?
        .map(Arc::new);
    bootstrap_operator_access(&config, store.as_ref(), &tenancy, address).await?;
    let ring = Arc::new(key_ring(&config, store.backend())?);
    crate::secrets::check_keys(store.as_ref(), &ring)
        .await
        .map_err(StartError::Config)?;
    let secrets = crate::secrets::Secrets::new(store.clone(), ring);

    let metrics = Metrics::install(cancel.child_token())?;
    let pool = crate::cpu::CpuPool::new(config.engine.cpu_threads);
    // The actions this daemon runs: the engine runs them, definitions are checked against them.
    let actions = Arc::new(crate::connectors::Registry::new(crate::connectors::BUILTIN));
    let engine = crate::engine::Engine::new(
        store.clone(),
        engine_config(&config),
        secrets.clone(),
        pool.clone(),
        actions.clone(),
    )
    .map_err(|e| StartError::Other(anyhow::anyhow!(e)))?;
    engine.run();
    crate::webhooks::Webhooks::new(
        store.clone(),
        secrets.clone(),
        crate::connectors::http::Outbound {
            policy: engine_config(&config).network,
            proxy: config.engine.http_proxy.clone(),
        },
    )
    .map_err(|e| StartError::Other(anyhow::anyhow!(e)))?
    .spawn(cancel.child_token());
    // One limiter: gRPC requests and webhook requests draw on the same tenant bucket.
    let limiter =
        crate::tenancy::ratelimit::RateLimiter::new(store.clone(), config.rate_limit_backend);
    let triggers = crate::triggers::Triggers::new(
        store.clone(),
        engine.clone(),
        secrets.clone(),
        Some(limiter.clone()),
        engine_config(&config).network,
    );
    triggers.clone().spawn_scheduler(cancel.child_token());
    triggers.clone().spawn_email_poller(cancel.child_token());
    crate::retention::Janitor::new(
        store.clone(),
        config.retention.clone(),
        engine.node().to_owned(),
    )
    .spawn(cancel.child_token());
    let readiness = health::spawn_monitor(store.clone(), cancel.child_token());
    let mut authenticator = Authenticator::new(store.clone(), static_token);
    if let Some(keys_file) = keys_file {
        keys_file.spawn_watcher(cancel.child_token());
        authenticator = authenticator.with_keys_file(keys_file);
    }

    let ctx_triggers = triggers.clone();
    let ctx = crate::api::ApiContext {
        authenticator,
        limiter,
        audit: crate::tenancy::audit::Audit::new(store.clone()),
        store: store.clone(),
        tenancy,
        definitions: crate::definitions::Definitions::new(
            store.clone(),
            config.engine.max_steps_per_workflow,
            pool.clone(),
            actions,
        ),
        executions: crate::executions::Executions::new(store.clone(), engine.clone()),
        triggers: triggers.clone(),
        secrets,
        shutdown: cancel.clone(),
        backend: store.backend(),
        readiness: readiness.clone(),
        http: crate::http::router(
            readiness,
            metrics,
            ctx_triggers,
            config.engine.max_input_bytes,
        ),
    };

    tracing::info!(%address, database = store.backend().as_str(), version = crate::VERSION, "mantle serving");
    println!("mantle listening on {address}");
    let _ = std::io::stdout().flush();

    let grace = config.shutdown_grace_period;
    let engine_stopped = {
        let engine = engine.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            engine.shutdown().await;
        })
    };
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            signals.recv().await;
            tracing::info!(
                grace_period_s = grace.as_secs(),
                "shutting down; draining requests and running steps"
            );
            cancel.cancel();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {
                        tracing::error!("grace period over with requests still running; exiting");
                    }
                    _ = signals.recv() => {
                        tracing::warn!("second signal; exiting now");
                    }
                }
                std::process::exit(1);
            });
        }
    };
    crate::api::serve(ctx, listener, shutdown).await?;
    cancel.cancel();
    // Running steps finish; leases are given back so other daemons continue at once.
    let _ = engine_stopped.await;
    pool.stop();
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Name of the file, inside the data directory, holding the generated encryption key of
/// the embedded store.
pub const ENCRYPTION_KEY_FILE: &str = "encryption-key";

/// The key ring from `MANTLE_ENCRYPTION_KEY` (and `_PREVIOUS`). With the embedded SQLite
/// store and no key configured, a key is generated once into the data directory.
pub fn key_ring(
    config: &Config,
    backend: Backend,
) -> Result<crate::secrets::crypto::KeyRing, StartError> {
    use crate::secrets::crypto::KeyRing;
    let previous = config.encryption_key_previous.as_deref();
    if let Some(key) = &config.encryption_key {
        return KeyRing::from_hex(key, previous).map_err(|e| StartError::Config(e.to_string()));
    }
    if backend == Backend::Postgres {
        return Err(StartError::Config(
            "MANTLE_ENCRYPTION_KEY is required with PostgreSQL: 64 hexadecimal characters \
             (generate one with `mantle secrets generate-key`), the same on every replica"
                .to_owned(),
        ));
    }
    let path = config.data_dir.join(ENCRYPTION_KEY_FILE);
    let key = match std::fs::read_to_string(&path) {
        Ok(k) => zeroize::Zeroizing::new(k.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyRing::generate_hex();
            write_private_file(&path, &format!("{}\n", key.as_str()))
                .map_err(|e| StartError::Config(format!("writing {}: {e}", path.display())))?;
            tracing::warn!(
                path = %path.display(),
                "generated an encryption key for secrets; back it up with the database, or set MANTLE_ENCRYPTION_KEY"
            );
            key
        }
        Err(e) => {
            return Err(StartError::Config(format!(
                "reading {}: {e}",
                path.display()
            )));
        }
    };
    KeyRing::from_hex(&key, previous)
        .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))
}

fn engine_config(config: &Config) -> crate::engine::EngineConfig {
    let e = &config.engine;
    crate::engine::EngineConfig {
        lease: e.lease_ttl,
        poll_max: e.poll_interval,
        max_output_bytes: e.max_step_output_bytes,
        max_input_bytes: e.max_input_bytes,
        idempotency_ttl: e.idempotency_ttl,
        expr_limits: e.expr_limits,
        max_watch_streams: e.max_watch_streams,
        ai: std::sync::Arc::new(e.ai.clone()),
        max_cost_usd: e.max_cost_usd,
        limits: crate::engine::Limits {
            max_steps_per_workflow: e.max_steps_per_workflow,
            max_runtime_minutes: e.max_runtime_minutes,
            max_concurrent_executions: e.max_concurrent_executions,
        },
        network: crate::connectors::NetworkPolicy {
            allow_private: e.allow_private_networks,
        },
        proxy: e.http_proxy.clone(),
        max_buffered_bytes: e.http_max_buffered_bytes,
        workflow_env: serde_json::Value::Object(
            e.workflow_env
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
        ..crate::engine::EngineConfig::default()
    }
}

/// SIGTERM and SIGINT, caught from the moment this is created: installed before the
/// daemon binds, so a signal that arrives as soon as it serves starts a graceful shutdown
/// instead of killing the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                StartError::Other(anyhow::anyhow!("installing the {name} handler: {e}"))
            })
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Makes sure an operator can get in. With the embedded store and no `MANTLE_API_TOKEN`,
/// keeps a working operator token in `<data dir>/operator-token` (mode 0600), with the
/// address the daemon listens on (`address=<ip>:<port>`): clients send the token only
/// there. On PostgreSQL it only points at `mantle admin-key create` when no operator key
/// exists.
async fn bootstrap_operator_access(
    config: &Config,
    store: &dyn Store,
    tenancy: &Tenancy,
    address: std::net::SocketAddr,
) -> Result<(), StartError> {
    if config.api_token.is_some() {
        return Ok(());
    }
    if store.backend() == Backend::Postgres {
        if !tenancy.has_operator_key().await? {
            tracing::warn!(
                "no operator key exists and MANTLE_API_TOKEN is not set; create one with `mantle admin-key create`"
            );
        }
        return Ok(());
    }
    let path = config.data_dir.join(OPERATOR_TOKEN_FILE);
    let contents = |token: &str| format!("{token}\naddress={address}\n");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.lines().next().unwrap_or_default().trim();
        if token_is_valid_operator(store, token).await? {
            if existing != contents(token) {
                write_private_file(&path, &contents(token))
                    .map_err(|e| StartError::Config(format!("writing {}: {e}", path.display())))?;
            }
            return Ok(());
        }
        tracing::warn!(path = %path.display(), "the saved operator token no longer works; minting a new one");
    }
    let created = tenancy
        .bootstrap_operator_key("local operator (created at first start)")
        .await?;
    write_private_file(&path, &contents(&created.token))
        .map_err(|e| StartError::Config(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "created an operator token for local use; mantlectl finds it automatically");
    Ok(())
}

async fn token_is_valid_operator(store: &dyn Store, presented: &str) -> Result<bool, StartError> {
    let Some(id) = token::key_id(presented) else {
        return Ok(false);
    };
    let credential = store.api_key_credential(id).await?;
    Ok(credential.is_some_and(|(key, hash)| {
        key.tenant.is_none()
            && key.is_active(chrono::Utc::now())
            && token::matches(presented, &hash)
    }))
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file + rename).
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store error that ends a start stays its cause, picks the exit code, and is told as
    /// it always was.
    #[test]
    fn a_store_error_stays_the_cause_of_a_failed_start() {
        let cases = [
            (store::Error::Config("bad url".to_owned()), 64, "bad url"),
            (
                store::Error::Unavailable("refused".to_owned()),
                69,
                "refused",
            ),
            (
                store::Error::Internal("boom".to_owned()),
                1,
                "database error: boom",
            ),
            (
                store::Error::NewerSchema("the database schema is newer".to_owned()),
                65,
                "the database schema is newer",
            ),
        ];
        for (store_err, exit_code, message) in cases {
            let shown = format!("{store_err:?}");
            let err = StartError::from(store_err);
            let cause = std::error::Error::source(&err)
                .and_then(|cause| cause.downcast_ref::<store::Error>())
                .map(|cause| format!("{cause:?}"));
            assert_eq!(cause.as_deref(), Some(shown.as_str()));
            assert_eq!(err.exit_code(), exit_code, "{shown}");
            assert_eq!(err.to_string(), message);
        }
    }

    /// A tenancy error that ends a start keeps its cause, and its message is told once.
    #[test]
    fn a_tenancy_error_ends_a_start_with_its_message() {
        let err = StartError::from(crate::tenancy::Error::from(store::Error::Unavailable(
            "refused".to_owned(),
        )));
        assert_eq!(err.to_string(), "refused");
        assert_eq!(err.exit_code(), 1);
        assert!(std::error::Error::source(&err).is_some());
    }
}
