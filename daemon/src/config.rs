//! Configuration: defaults < `mantle.yaml` < `MANTLE_*` environment < command-line flags,
//! loaded into one validated [`Config`]. Loading is a pure function of the file text, an
//! environment map and the flags, so tests never touch the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, naming where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// The validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` gRPC and HTTP are served on.
    pub api_address: String,
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    /// `MANTLE_API_TOKEN`: single-tenant mode's token.
    pub api_token: Option<String>,
    /// `MANTLE_TENANT_KEYS_PATH`: the JSON file mapping tokens to tenants (keys file mode).
    pub tenant_keys_path: Option<PathBuf>,
    /// How long shutdown waits for running requests and steps.
    pub shutdown_grace_period: Duration,
    pub engine: EngineSettings,
    /// `MANTLE_ENCRYPTION_KEY`: 64 hex characters; required with PostgreSQL.
    pub encryption_key: Option<String>,
    /// `MANTLE_ENCRYPTION_KEY_PREVIOUS`: the key being rotated away from.
    pub encryption_key_previous: Option<String>,
    /// `MANTLE_RATE_LIMIT_BACKEND`: `memory` (per daemon) or `postgres` (shared by replicas).
    pub rate_limit_backend: crate::tenancy::ratelimit::Backend,
    pub retention: crate::retention::RetentionSettings,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// `MANTLE_ENGINE_LEASE_TTL`: how long a daemon's claim on an execution lasts unrenewed.
    pub lease_ttl: Duration,
    /// `MANTLE_ENGINE_POLL_INTERVAL`: the longest pause between looks for orphaned work.
    pub poll_interval: Duration,
    /// `MANTLE_MAX_STEP_OUTPUT_BYTES`: the largest step output.
    pub max_step_output_bytes: usize,
    /// `MANTLE_MAX_INPUT_BYTES`: the largest inputs of an execution.
    pub max_input_bytes: usize,
    /// `MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS`: let actions reach private addresses.
    pub allow_private_networks: bool,
    /// `MANTLE_HTTP_PROXY`: the proxy outbound requests go through (the environment's
    /// `HTTP_PROXY` and the like are ignored).
    pub http_proxy: Option<url::Url>,
    /// `MANTLE_HTTP_MAX_BUFFERED_BYTES`: response bytes all steps may hold at once.
    pub http_max_buffered_bytes: u64,
    /// `MANTLE_ENV_<KEY>` variables and the file's `env` map: the `env` of expressions.
    pub workflow_env: std::collections::BTreeMap<String, String>,
    /// `MANTLE_IDEMPOTENCY_TTL`: how long StartExecution idempotency keys are kept.
    pub idempotency_ttl: Duration,
    /// `MANTLE_MAX_STEPS_PER_WORKFLOW`: a cap on every tenant's workflows.
    pub max_steps_per_workflow: Option<u32>,
    /// `MANTLE_MAX_RUNTIME_MINUTES`: a cap on every execution's run time.
    pub max_runtime_minutes: Option<u32>,
    /// `MANTLE_MAX_CONCURRENT_EXECUTIONS`: a cap on every tenant's running executions.
    pub max_concurrent_executions: Option<u32>,
    /// `MANTLE_EXPR_*`: what one expression evaluation may use.
    pub expr_limits: crate::workflow::budget::ExprLimits,
    /// `MANTLE_CPU_THREADS`: threads of the pool that parses workflow files and evaluates
    /// large expressions.
    pub cpu_threads: usize,
    /// `MANTLE_MAX_WATCH_STREAMS`: WatchExecution streams one tenant may hold at once.
    pub max_watch_streams: usize,
    /// `MANTLE_AI_ALLOWED_BASE_URLS`, `MANTLE_AI_PRICES_FILE`,
    /// `MANTLE_AI_MAX_TOOL_RESULT_BYTES`, `MANTLE_AI_MAX_CONVERSATION_BYTES`.
    pub ai: crate::connectors::ai::Settings,
    /// `MANTLE_MAX_COST_USD`: what one execution may spend on model calls.
    pub max_cost_usd: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://…`, `sqlite://…`, or empty for the embedded default in the data dir.
    pub url: String,
    pub max_connections: u32,
    /// How long startup retries an unreachable database.
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `mantle_daemon=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line; `None` leaves the lower layers in charge.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Configuration file (default: ./mantle.yaml when it exists) [env: MANTLE_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC and HTTP on [env: MANTLE_API_ADDRESS] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Data directory for the embedded database and the local operator token [env: MANTLE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: postgres://… or sqlite://… [env: MANTLE_DATABASE_URL] [default: SQLite in the data dir]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log filter, e.g. info or debug [env: MANTLE_LOG_LEVEL]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json [env: MANTLE_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

/// The file form; every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    api: Option<FileApi>,
    auth: Option<FileAuth>,
    data_dir: Option<PathBuf>,
    database: Option<FileDatabase>,
    log: Option<FileLog>,
    shutdown_grace_period: Option<String>,
    engine: Option<FileEngine>,
    http: Option<FileHttp>,
    expressions: Option<FileExpressions>,
    env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExpressions {
    max_cost: Option<u64>,
    max_value_bytes: Option<u64>,
    timeout: Option<String>,
    threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEngine {
    lease_ttl: Option<String>,
    poll_interval: Option<String>,
    max_step_output_bytes: Option<usize>,
    max_input_bytes: Option<usize>,
    idempotency_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    allow_private_networks: Option<bool>,
    proxy: Option<String>,
    max_buffered_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    address: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    tenant_keys_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
    connect_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: Option<String>,
    format: Option<String>,
}

/// Reads the configuration file (if any) and builds the config from it, `env` and `flags`.
pub fn load(env: &HashMap<String, String>, flags: &Flags) -> Result<Config, Error> {
    let explicit = flags
        .config
        .clone()
        .or_else(|| env.get("MANTLE_CONFIG").map(PathBuf::from));
    let file = match &explicit {
        Some(path) => Some((
            path.clone(),
            std::fs::read_to_string(path)
                .map_err(|e| Error(format!("config file {}: {e}", path.display())))?,
        )),
        None => {
            let default = PathBuf::from("mantle.yaml");
            std::fs::read_to_string(&default)
                .ok()
                .map(|text| (default, text))
        }
    };
    build(
        file.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        env,
        flags,
    )
}

/// Builds the config from the file's path and text, the environment and the flags.
pub fn build(
    file: Option<(&Path, &str)>,
    env: &HashMap<String, String>,
    flags: &Flags,
) -> Result<Config, Error> {
    let file_config: FileConfig = match file {
        Some((path, text)) if !text.trim().is_empty() => serde_saphyr::from_str(text)
            .map_err(|e| Error(format!("config file {}: {e}", path.display())))?,
        _ => FileConfig::default(),
    };
    let api = file_config.api.unwrap_or_default();
    let file_engine = file_config.engine.unwrap_or_default();
    let file_http = file_config.http.unwrap_or_default();
    let file_expr = file_config.expressions.unwrap_or_default();
    let db = file_config.database.unwrap_or_default();
    let log = file_config.log.unwrap_or_default();
    let env_get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();

    // Each value: (the text, where it came from) with the highest layer winning.
    let pick = |flag: Option<&String>, var: &str, file_value: Option<String>, key: &str| {
        flag.map(|v| (v.clone(), format!("--{}", key.replace(['.', '_'], "-"))))
            .or_else(|| env_get(var).map(|v| (v, var.to_owned())))
            .or_else(|| file_value.map(|v| (v, format!("config key {key}"))))
    };

    let (api_address, _) = pick(
        flags.address.as_ref(),
        "MANTLE_API_ADDRESS",
        api.address,
        "address",
    )
    .unwrap_or_else(|| ("127.0.0.1:8080".to_owned(), String::new()));
    validate_address(&api_address)?;

    let data_dir = flags
        .data_dir
        .clone()
        .or_else(|| env_get("MANTLE_DATA_DIR").map(PathBuf::from))
        .or(file_config.data_dir)
        .unwrap_or_else(|| default_data_dir(env));

    let url = pick(
        flags.database_url.as_ref(),
        "MANTLE_DATABASE_URL",
        db.url,
        "database_url",
    )
    .map(|(v, from)| validate_database_url(&v, &from).map(|()| v))
    .transpose()?
    .unwrap_or_default();

    let max_connections = match env_get("MANTLE_DATABASE_MAX_CONNECTIONS") {
        Some(v) => v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error(format!(
                "MANTLE_DATABASE_MAX_CONNECTIONS: expected a positive number, got {v:?}"
            ))
        })?,
        None => db.max_connections.unwrap_or(10),
    };
    if max_connections == 0 {
        return Err(Error(
            "config key database.max_connections: must be positive".to_owned(),
        ));
    }

    let duration =
        |var: &str, file_value: Option<String>, key: &str, default: Duration| match env_get(var)
            .map(|v| (v, var.to_owned()))
            .or_else(|| file_value.map(|v| (v, format!("config key {key}"))))
        {
            Some((v, from)) => parse_duration(&v).map_err(|e| Error(format!("{from}: {e}"))),
            None => Ok(default),
        };
    let connect_timeout = duration(
        "MANTLE_DATABASE_CONNECT_TIMEOUT",
        db.connect_timeout,
        "database.connect_timeout",
        Duration::from_secs(30),
    )?;
    let shutdown_grace_period = duration(
        "MANTLE_SHUTDOWN_GRACE_PERIOD",
        file_config.shutdown_grace_period,
        "shutdown_grace_period",
        Duration::from_secs(30),
    )?;

    let level = pick(
        flags.log_level.as_ref(),
        "MANTLE_LOG_LEVEL",
        log.level,
        "log_level",
    )
    .map(|(v, from)| {
        tracing_subscriber::EnvFilter::try_new(&v)
            .map(|_| v.clone())
            .map_err(|e| Error(format!("{from}: invalid log level {v:?}: {e}")))
    })
    .transpose()?
    .unwrap_or_else(|| "info".to_owned());
    let format = match pick(
        flags.log_format.as_ref(),
        "MANTLE_LOG_FORMAT",
        log.format,
        "log_format",
    ) {
        None => LogFormat::Text,
        Some((v, from)) => match v.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(Error(format!("{from}: expected text or json, got {v:?}"))),
        },
    };

    let lease_ttl = duration(
        "MANTLE_ENGINE_LEASE_TTL",
        file_engine.lease_ttl,
        "engine.lease_ttl",
        Duration::from_secs(15),
    )?;
    if lease_ttl < Duration::from_secs(1) {
        return Err(Error(
            "MANTLE_ENGINE_LEASE_TTL: must be at least 1s".to_owned(),
        ));
    }
    let poll_interval = duration(
        "MANTLE_ENGINE_POLL_INTERVAL",
        file_engine.poll_interval,
        "engine.poll_interval",
        Duration::from_secs(2),
    )?;
    let idempotency_ttl = duration(
        "MANTLE_IDEMPOTENCY_TTL",
        file_engine.idempotency_ttl,
        "engine.idempotency_ttl",
        Duration::from_secs(24 * 3600),
    )?;
    let max_step_output_bytes = match env_get("MANTLE_MAX_STEP_OUTPUT_BYTES") {
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error(format!(
                "MANTLE_MAX_STEP_OUTPUT_BYTES: expected a positive number of bytes, got {v:?}"
            ))
        })?,
        None => file_engine.max_step_output_bytes.unwrap_or(1024 * 1024),
    };
    let max = crate::engine::MAX_EXECUTION_BYTES;
    if max_step_output_bytes > max {
        return Err(Error(format!(
            "MANTLE_MAX_STEP_OUTPUT_BYTES: at most {max} bytes (3.75 MiB), so that a step \
             attempt fits a gRPC answer; got {max_step_output_bytes}"
        )));
    }
    let max_input_bytes = match env_get("MANTLE_MAX_INPUT_BYTES") {
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error(format!(
                "MANTLE_MAX_INPUT_BYTES: expected a positive number of bytes, got {v:?}"
            ))
        })?,
        None => file_engine
            .max_input_bytes
            .unwrap_or(crate::engine::DEFAULT_MAX_INPUT_BYTES),
    };
    if max_input_bytes > max {
        return Err(Error(format!(
            "MANTLE_MAX_INPUT_BYTES: at most {max} bytes (3.75 MiB), so that an execution \
             fits a gRPC answer; got {max_input_bytes}"
        )));
    }
    let allow_private_networks = match env_get("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS") {
        Some(v) => match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(Error(format!(
                    "MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS: expected true or false, got {v:?}"
                )));
            }
        },
        None => file_http.allow_private_networks.unwrap_or(false),
    };
    let http_proxy = match env_get("MANTLE_HTTP_PROXY")
        .map(|v| (v, "MANTLE_HTTP_PROXY".to_owned()))
        .or_else(|| {
            file_http
                .proxy
                .clone()
                .map(|v| (v, "config key http.proxy".to_owned()))
        }) {
        None => None,
        Some((v, from)) => {
            let url = url::Url::parse(&v)
                .map_err(|e| Error(format!("{from}: {v:?} is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(Error(format!(
                    "{from}: expected http://HOST:PORT or https://HOST:PORT, got {v:?}"
                )));
            }
            Some(url)
        }
    };
    let cap = |var: &str| -> Result<Option<u32>, Error> {
        match env_get(var) {
            None => Ok(None),
            Some(v) => match v.parse::<u32>() {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(Error(format!(
                    "{var}: expected a whole number (0 for no cap), got {v:?}"
                ))),
            },
        }
    };
    let positive =
        |var: &str, file_value: Option<u64>, key: &str, default: u64| -> Result<u64, Error> {
            match env_get(var) {
                Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error(format!(
                        "{var}: expected a positive whole number, got {v:?}"
                    ))
                }),
                None => match file_value {
                    Some(0) => Err(Error(format!("config key {key}: must be positive"))),
                    Some(n) => Ok(n),
                    None => Ok(default),
                },
            }
        };
    let http_max_buffered_bytes = positive(
        "MANTLE_HTTP_MAX_BUFFERED_BYTES",
        file_http.max_buffered_bytes,
        "http.max_buffered_bytes",
        256 * 1024 * 1024,
    )?;
    let defaults = crate::workflow::budget::ExprLimits::default();
    let expr_limits = crate::workflow::budget::ExprLimits {
        max_cost: positive(
            "MANTLE_EXPR_MAX_COST",
            file_expr.max_cost,
            "expressions.max_cost",
            defaults.max_cost,
        )?,
        max_bytes: positive(
            "MANTLE_EXPR_MAX_VALUE_BYTES",
            file_expr.max_value_bytes,
            "expressions.max_value_bytes",
            defaults.max_bytes,
        )?,
        timeout: duration(
            "MANTLE_EXPR_TIMEOUT",
            file_expr.timeout,
            "expressions.timeout",
            defaults.timeout,
        )?,
    };
    if expr_limits.timeout.is_zero() {
        return Err(Error(
            "MANTLE_EXPR_TIMEOUT: must be longer than 0s".to_owned(),
        ));
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu_threads = positive(
        "MANTLE_CPU_THREADS",
        file_expr.threads.map(|n| n as u64),
        "expressions.threads",
        cores.max(2) as u64,
    )?
    .min(256) as usize;
    let max_watch_streams = positive("MANTLE_MAX_WATCH_STREAMS", None, "", 100)? as usize;
    let ai_defaults = crate::connectors::ai::Settings::default();
    let prices = match env_get("MANTLE_AI_PRICES_FILE") {
        None => crate::connectors::ai::Prices::default(),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error(format!("MANTLE_AI_PRICES_FILE: {path}: {e}")))?;
            crate::connectors::ai::Prices::with_file(&text)
                .map_err(|e| Error(format!("MANTLE_AI_PRICES_FILE: {path}: {e}")))?
        }
    };
    let mut allowed_base_urls = Vec::new();
    for u in env_get("MANTLE_AI_ALLOWED_BASE_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        match url::Url::parse(u) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                allowed_base_urls.push(u.trim_end_matches('/').to_owned());
            }
            _ => {
                return Err(Error(format!(
                    "MANTLE_AI_ALLOWED_BASE_URLS: {u:?} is not an http(s) URL"
                )));
            }
        }
    }
    let ai = crate::connectors::ai::Settings {
        allowed_base_urls,
        prices,
        max_tool_result_bytes: positive(
            "MANTLE_AI_MAX_TOOL_RESULT_BYTES",
            None,
            "",
            ai_defaults.max_tool_result_bytes as u64,
        )? as usize,
        max_conversation_bytes: positive(
            "MANTLE_AI_MAX_CONVERSATION_BYTES",
            None,
            "",
            ai_defaults.max_conversation_bytes as u64,
        )? as usize,
    };
    let max_cost_usd = match env_get("MANTLE_MAX_COST_USD") {
        None => None,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(c) if c.is_finite() && c > 0.0 => Some(c),
            _ => {
                return Err(Error(format!(
                    "MANTLE_MAX_COST_USD: expected a positive number of US dollars, got {v:?}"
                )));
            }
        },
    };
    let max_steps_per_workflow = cap("MANTLE_MAX_STEPS_PER_WORKFLOW")?;
    let max_runtime_minutes = cap("MANTLE_MAX_RUNTIME_MINUTES")?;
    let max_concurrent_executions = cap("MANTLE_MAX_CONCURRENT_EXECUTIONS")?;
    let days = |n: u32| Duration::from_secs(u64::from(n) * 24 * 3600);
    let retention = crate::retention::RetentionSettings {
        executions: cap("MANTLE_RETENTION_DAYS")?.map(days),
        audit: cap("MANTLE_AUDIT_RETENTION_DAYS")?.map(days),
        interval: duration(
            "MANTLE_RETENTION_INTERVAL",
            None,
            "",
            Duration::from_secs(60),
        )?,
    };
    if retention.interval.is_zero() {
        return Err(Error(
            "MANTLE_RETENTION_INTERVAL: must be more than 0".to_owned(),
        ));
    }
    let mut workflow_env = file_config.env.unwrap_or_default();
    for (k, v) in env {
        if let Some(key) = k.strip_prefix("MANTLE_ENV_")
            && !key.is_empty()
        {
            workflow_env.insert(key.to_owned(), v.clone());
        }
    }

    let rate_limit_backend = match env_get("MANTLE_RATE_LIMIT_BACKEND").as_deref() {
        None | Some("memory") => crate::tenancy::ratelimit::Backend::Memory,
        Some("postgres") => {
            if !url.starts_with("postgres") {
                return Err(Error(
                    "MANTLE_RATE_LIMIT_BACKEND: postgres needs MANTLE_DATABASE_URL=postgres://…"
                        .to_owned(),
                ));
            }
            crate::tenancy::ratelimit::Backend::Postgres
        }
        Some(other) => {
            return Err(Error(format!(
                "MANTLE_RATE_LIMIT_BACKEND: expected memory or postgres, got {other:?}"
            )));
        }
    };

    let api_token = match env_get("MANTLE_API_TOKEN").or(api.token) {
        Some(token) => {
            crate::auth::StaticToken::new(&token).map_err(|e| Error(e.to_string()))?;
            Some(token)
        }
        None => None,
    };
    let tenant_keys_path = env_get("MANTLE_TENANT_KEYS_PATH")
        .map(PathBuf::from)
        .or(file_config.auth.and_then(|a| a.tenant_keys_path));

    Ok(Config {
        api_address,
        data_dir,
        database: DatabaseConfig {
            url,
            max_connections,
            connect_timeout,
        },
        log: LogConfig { level, format },
        api_token,
        tenant_keys_path,
        shutdown_grace_period,
        rate_limit_backend,
        retention,
        encryption_key: env_get("MANTLE_ENCRYPTION_KEY"),
        encryption_key_previous: env_get("MANTLE_ENCRYPTION_KEY_PREVIOUS"),
        engine: EngineSettings {
            lease_ttl,
            poll_interval,
            max_step_output_bytes,
            max_input_bytes,
            allow_private_networks,
            http_proxy,
            http_max_buffered_bytes,
            workflow_env,
            idempotency_ttl,
            max_steps_per_workflow,
            max_runtime_minutes,
            max_concurrent_executions,
            expr_limits,
            cpu_threads,
            max_watch_streams,
            ai,
            max_cost_usd,
        },
    })
}

/// `$XDG_DATA_HOME/mantle`, else `~/.local/share/mantle`, else `./mantle-data`.
pub fn default_data_dir(env: &HashMap<String, String>) -> PathBuf {
    if let Some(xdg) = env.get("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("mantle");
    }
    match env.get("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/mantle"),
        None => PathBuf::from("mantle-data"),
    }
}

fn validate_address(address: &str) -> Result<(), Error> {
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error(format!(
            "MANTLE_API_ADDRESS: expected HOST:PORT such as 127.0.0.1:8080, got {address:?}"
        )))
    }
}

fn validate_database_url(url: &str, from: &str) -> Result<(), Error> {
    let scheme_ok = ["postgres://", "postgresql://", "sqlite:"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(Error(format!(
            "{from}: cannot parse database URL {:?}: expected postgres://USER@HOST:PORT/DB or sqlite://PATH",
            crate::store::redact_url(url)
        )));
    }
    Ok(())
}

/// Parses a duration such as `500ms`, `30s`, `5m` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, crate::duration::Error> {
    crate::duration::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = build(None, &env(&[("HOME", "/home/u")]), &Flags::default()).unwrap();
        assert_eq!(c.api_address, "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("/home/u/.local/share/mantle"));
        assert_eq!(c.database.url, "");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(30));
        assert!(c.api_token.is_none());
        assert!(c.tenant_keys_path.is_none());
    }

    #[test]
    fn retention_settings() {
        let c = build(None, &env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.retention.executions, None);
        assert_eq!(c.retention.audit, None);
        assert_eq!(c.retention.interval, Duration::from_secs(60));
        let e = env(&[
            ("MANTLE_RETENTION_DAYS", "30"),
            ("MANTLE_AUDIT_RETENTION_DAYS", "400"),
            ("MANTLE_RETENTION_INTERVAL", "5m"),
        ]);
        let c = build(None, &e, &Flags::default()).unwrap();
        assert_eq!(
            c.retention.executions,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(c.retention.audit, Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(c.retention.interval, Duration::from_secs(300));
        let e = env(&[("MANTLE_RETENTION_DAYS", "0")]);
        assert_eq!(
            build(None, &e, &Flags::default())
                .unwrap()
                .retention
                .executions,
            None
        );
        let e = env(&[("MANTLE_RETENTION_DAYS", "a month")]);
        let err = build(None, &e, &Flags::default()).unwrap_err().to_string();
        assert!(err.starts_with("MANTLE_RETENTION_DAYS: "), "{err}");
        let e = env(&[("MANTLE_RETENTION_INTERVAL", "0s")]);
        let err = build(None, &e, &Flags::default()).unwrap_err().to_string();
        assert!(err.starts_with("MANTLE_RETENTION_INTERVAL: "), "{err}");
    }

    #[test]
    fn tenant_keys_path_from_file_and_env() {
        let p = Path::new("mantle.yaml");
        let file = "auth:\n  tenant_keys_path: /f/keys.json\n";
        let c = build(Some((p, file)), &env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.tenant_keys_path, Some(PathBuf::from("/f/keys.json")));
        let e = env(&[("MANTLE_TENANT_KEYS_PATH", "/e/keys.json")]);
        let c = build(Some((p, file)), &e, &Flags::default()).unwrap();
        assert_eq!(c.tenant_keys_path, Some(PathBuf::from("/e/keys.json")));
    }

    #[test]
    fn layers_override_in_order() {
        let file =
            "api:\n  address: 0.0.0.0:1\nlog:\n  level: debug\n  format: json\ndata_dir: /f\n";
        let p = Path::new("mantle.yaml");
        let c = build(Some((p, file)), &env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.api_address, "0.0.0.0:1");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.data_dir, PathBuf::from("/f"));

        let e = env(&[
            ("MANTLE_API_ADDRESS", "0.0.0.0:2"),
            ("MANTLE_DATA_DIR", "/e"),
        ]);
        let c = build(Some((p, file)), &e, &Flags::default()).unwrap();
        assert_eq!(c.api_address, "0.0.0.0:2");
        assert_eq!(c.data_dir, PathBuf::from("/e"));
        assert_eq!(c.log.level, "debug");

        let flags = Flags {
            address: Some("0.0.0.0:3".into()),
            ..Flags::default()
        };
        let c = build(Some((p, file)), &e, &flags).unwrap();
        assert_eq!(c.api_address, "0.0.0.0:3");
    }

    #[test]
    fn isolation_settings_have_defaults_and_are_checked() {
        let c = build(None, &env(&[]), &Flags::default()).unwrap();
        let e = &c.engine;
        assert_eq!(
            e.expr_limits,
            crate::workflow::budget::ExprLimits::default()
        );
        assert_eq!(e.max_input_bytes, crate::engine::DEFAULT_MAX_INPUT_BYTES);
        assert_eq!(e.http_max_buffered_bytes, 256 * 1024 * 1024);
        assert_eq!(e.max_watch_streams, 100);
        assert!(e.http_proxy.is_none());
        assert!(e.cpu_threads >= 2);

        let c = build(
            Some((
                Path::new("m.yaml"),
                "expressions:\n  max_cost: 5\n  timeout: 250ms\nhttp:\n  proxy: http://proxy:3128\n",
            )),
            &env(&[
                ("MANTLE_EXPR_MAX_VALUE_BYTES", "1024"),
                ("MANTLE_CPU_THREADS", "3"),
                ("MANTLE_MAX_WATCH_STREAMS", "7"),
            ]),
            &Flags::default(),
        )
        .unwrap();
        let e = &c.engine;
        assert_eq!(e.expr_limits.max_cost, 5);
        assert_eq!(e.expr_limits.max_bytes, 1024);
        assert_eq!(e.expr_limits.timeout, Duration::from_millis(250));
        assert_eq!(e.cpu_threads, 3);
        assert_eq!(e.max_watch_streams, 7);
        assert_eq!(
            e.http_proxy.as_ref().map(url::Url::as_str),
            Some("http://proxy:3128/")
        );

        for (var, value, want) in [
            (
                "MANTLE_EXPR_MAX_COST",
                "0",
                "MANTLE_EXPR_MAX_COST: expected a positive",
            ),
            (
                "MANTLE_EXPR_TIMEOUT",
                "0s",
                "MANTLE_EXPR_TIMEOUT: must be longer",
            ),
            (
                "MANTLE_HTTP_PROXY",
                "socks5://x:1",
                "MANTLE_HTTP_PROXY: expected http://",
            ),
            (
                "MANTLE_HTTP_PROXY",
                "not a url",
                "MANTLE_HTTP_PROXY: \"not a url\" is not a URL",
            ),
            (
                "MANTLE_MAX_INPUT_BYTES",
                "5000000",
                "MANTLE_MAX_INPUT_BYTES: at most",
            ),
            (
                "MANTLE_MAX_STEP_OUTPUT_BYTES",
                "5000000",
                "MANTLE_MAX_STEP_OUTPUT_BYTES: at most",
            ),
        ] {
            let err = build(None, &env(&[(var, value)]), &Flags::default()).unwrap_err();
            assert!(err.0.starts_with(want), "{var}={value}: {err}");
        }
    }

    #[test]
    fn errors_name_their_source() {
        let p = Path::new("m.yaml");
        let err = build(Some((p, "apii: {}\n")), &env(&[]), &Flags::default()).unwrap_err();
        assert!(err.0.starts_with("config file m.yaml:"), "{err}");
        assert!(err.0.contains("apii"), "{err}");

        let err = build(
            None,
            &env(&[("MANTLE_LOG_FORMAT", "xml")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.0,
            "MANTLE_LOG_FORMAT: expected text or json, got \"xml\""
        );

        let err = build(
            None,
            &env(&[("MANTLE_DATABASE_URL", "mysql://x")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(
            err.0.starts_with("MANTLE_DATABASE_URL: cannot parse"),
            "{err}"
        );

        let err = build(
            None,
            &env(&[("MANTLE_API_TOKEN", "short")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(err.0.starts_with("MANTLE_API_TOKEN:"), "{err}");

        let err = build(
            None,
            &env(&[("MANTLE_SHUTDOWN_GRACE_PERIOD", "10")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(err.0.starts_with("MANTLE_SHUTDOWN_GRACE_PERIOD:"), "{err}");

        let err = build(
            None,
            &env(&[("MANTLE_API_ADDRESS", "8080")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(err.0.starts_with("MANTLE_API_ADDRESS:"), "{err}");
    }
}
