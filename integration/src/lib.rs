//! Test harness for Mantle's end-to-end tests.
//!
//! Everything here drives the REAL built binaries (`mantle`, `mantlectl`) as child processes
//! and talks to them over the network, exactly as users do. Build them first:
//! `cargo build --workspace --bins` (`scripts/test` does it), or point `MANTLE_BIN` /
//! `MANTLECTL_BIN` at other builds.
//!
//! PostgreSQL: tests that need it call [`PgDatabase::create`], which creates a fresh database
//! on the server named by `MANTLE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When that server is unreachable the test is
//! skipped with a loud message, unless `CI=true`, where it fails.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use mantle_proto::v1 as pb;
pub use pb::system_service_client::SystemServiceClient;
pub use pb::tenant_service_client::TenantServiceClient;
pub use tonic_health::pb::health_check_response::ServingStatus;
pub use tonic_health::pb::health_client::HealthClient;

/// How long a daemon may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The gRPC service names the daemon reports health for (besides the overall `""`).
pub const SERVICES: [&str; 2] = ["mantle.v1.TenantService", "mantle.v1.SystemService"];

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Path of the `mantle` binary: `$MANTLE_BIN`, else next to the test executable's `deps/`.
pub fn mantle_bin() -> PathBuf {
    locate_bin("MANTLE_BIN", "mantle")
}

/// Path of the `mantlectl` binary: `$MANTLECTL_BIN`, else next to the test executable's `deps/`.
pub fn mantlectl_bin() -> PathBuf {
    locate_bin("MANTLECTL_BIN", "mantlectl")
}

fn locate_bin(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} does not exist", path.display());
        return path;
    }
    // The test executable lives in <target>/<profile>/deps/<name>-<hash>; binaries in <target>/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        if let Some(profile_dir) = deps.parent() {
            candidates.push(profile_dir.join(name));
        }
        candidates.push(deps.join(name));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join(name));
    }
    for candidate in &candidates {
        if candidate.is_file() {
            return candidate.clone();
        }
    }
    panic!(
        "cannot find the `{name}` binary (looked at {candidates:?}); run `cargo build --workspace --bins` \
         first or set {env}"
    );
}

/// Environment variables of the test process that must not leak into the binaries we start.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MANTLE_") {
            cmd.env_remove(&key);
        }
    }
    // Never pick up a developer's data dir or configuration.
    cmd.env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME");
}

/// Runs a binary to completion with a timeout, returning its output.
pub async fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let description = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {description}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => Ok(output?),
        Err(_) => bail!("{description} did not finish within {timeout:?}"),
    }
}

/// A command line for `mantle` with a clean environment (no inherited `MANTLE_*`).
pub fn mantle_command() -> Command {
    let mut cmd = Command::new(mantle_bin());
    scrub_env(&mut cmd);
    cmd
}

/// A command line for `mantlectl` with a clean environment (no inherited `MANTLE_*`), and a
/// `HOME` that holds no client configuration.
pub fn mantlectl_command(home: &Path) -> Command {
    let mut cmd = Command::new(mantlectl_bin());
    scrub_env(&mut cmd);
    cmd.env("HOME", home);
    cmd
}

/// Renders an [`Output`] for assertion messages.
pub fn describe_output(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------------

/// How to start a daemon.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// `MANTLE_DATABASE_URL`; `None` uses the embedded SQLite store in the data dir.
    pub database_url: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
    /// Use this data dir instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
}

impl DaemonOptions {
    /// The embedded SQLite store in a fresh data dir.
    pub fn sqlite() -> Self {
        Self::default()
    }

    /// PostgreSQL at `url`.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self {
            database_url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running `mantle serve`, killed on drop. Its stderr is kept in a file and printed when the
/// daemon fails to start, and when a test panics while it runs.
pub struct Daemon {
    child: Option<Child>,
    /// The address from the `mantle listening on` line.
    pub addr: SocketAddr,
    /// The operator token read from `<data dir>/operator-token`, when the daemon wrote one.
    pub operator_token: Option<String>,
    data_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    _temp: Option<tempfile::TempDir>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("addr", &self.addr)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Spawns `mantle serve` and waits (up to [`START_TIMEOUT`]) for its listening line.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon> {
        let temp = tempfile::Builder::new().prefix("mantle-it-").tempdir()?;
        let data_dir = match &opts.data_dir {
            Some(dir) => dir.clone(),
            None => temp.path().join("data"),
        };
        std::fs::create_dir_all(&data_dir)?;
        let stderr_path = temp.path().join("daemon.stderr");
        let stderr_file = File::create(&stderr_path)?;

        let mut cmd = mantle_command();
        cmd.arg("serve")
            .args(&opts.args)
            .env("MANTLE_DATA_DIR", &data_dir)
            .env("MANTLE_API_ADDRESS", "127.0.0.1:0")
            .env("MANTLE_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        if let Some(url) = &opts.database_url {
            cmd.env("MANTLE_DATABASE_URL", url);
        }
        for (key, value) in &opts.env {
            cmd.env(key, value);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", mantle_bin().display()))?;

        // A thread reads stdout for the whole life of the process, so it never blocks on a
        // full pipe; the first listening line is handed over through a oneshot channel.
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        {
            let lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    if let Some(rest) = line.strip_prefix("mantle listening on ")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                }
            });
        }

        let mut daemon = Daemon {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            operator_token: None,
            data_dir,
            stderr_path,
            stdout_lines,
            _temp: Some(temp),
        };

        let line = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = daemon
                    .wait_timeout(Duration::from_secs(5))
                    .await
                    .ok()
                    .flatten();
                bail!(
                    "mantle serve exited before printing its listening line (status {status:?})\n{}",
                    daemon.diagnostics()
                );
            }
            Err(_) => bail!(
                "mantle serve printed no listening line within {START_TIMEOUT:?}\n{}",
                daemon.diagnostics()
            ),
        };
        daemon.addr = line
            .parse()
            .with_context(|| format!("unparsable listening line address {line:?}"))?;
        daemon.operator_token = daemon.read_operator_token()?;
        Ok(daemon)
    }

    /// Starts a daemon and panics (with its stderr) when it does not come up.
    pub async fn start_ok(opts: DaemonOptions) -> Daemon {
        match Daemon::start(opts).await {
            Ok(daemon) => daemon,
            Err(err) => panic!("daemon failed to start: {err:#}"),
        }
    }

    /// The daemon's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the daemon printed to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines.lock().unwrap().clone()
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stdout and stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- mantle stdout ---\n{}\n--- mantle stderr ({}) ---\n{}",
            self.stdout_lines().join("\n"),
            self.stderr_path.display(),
            self.stderr()
        )
    }

    fn read_operator_token(&self) -> Result<Option<String>> {
        let path = self.data_dir.join("operator-token");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The operator token the daemon wrote, or a panic naming the problem.
    pub fn operator_token(&self) -> String {
        self.operator_token.clone().unwrap_or_else(|| {
            panic!(
                "no operator-token file in {}\n{}",
                self.data_dir.display(),
                self.diagnostics()
            )
        })
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, ...) with kill(1).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed: {status}", self.pid());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit. `Ok(None)` when it is
    /// still running after the timeout.
    pub async fn sigterm(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.signal("TERM")?;
        self.wait_timeout(timeout).await
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn sigkill(&mut self) -> Result<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait_timeout(Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow!("process did not die after SIGKILL"))
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().ok_or_else(|| anyhow!("no child"))?;
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A gRPC channel to the daemon.
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    /// A TenantService client sending `token` (none when `None`).
    pub async fn tenants(&self, token: Option<&str>) -> TenantServiceClient<AuthChannel> {
        TenantServiceClient::with_interceptor(self.channel().await, Auth::new(token))
    }

    /// A SystemService client sending `token` (none when `None`).
    pub async fn system(&self, token: Option<&str>) -> SystemServiceClient<AuthChannel> {
        SystemServiceClient::with_interceptor(self.channel().await, Auth::new(token))
    }

    /// A health client (no token).
    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// Health status of `service` (`""` for the whole server).
    pub async fn health_status(&self, service: &str) -> Result<ServingStatus> {
        health_status(self.addr, service).await
    }

    /// `GET path` over HTTP/1.1.
    pub async fn http_get(&self, path: &str) -> Result<HttpResponse> {
        http_get(self.addr, path).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "daemon {} at {}:\n{}",
                self.pid(),
                self.addr,
                self.diagnostics()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

/// Connects a gRPC channel to `addr` (panics after 10 s).
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    match tokio::time::timeout(Duration::from_secs(10), endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(err)) => panic!("connecting to {addr}: {err:?}"),
        Err(_) => panic!("connecting to {addr} timed out"),
    }
}

/// Adds `authorization: Bearer <token>` and optionally `x-mantle-tenant` to every request.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    authorization: Option<AsciiMetadataValue>,
    tenant: Option<AsciiMetadataValue>,
}

impl Auth {
    /// Sends `Bearer <token>`, or nothing when `token` is `None`.
    pub fn new(token: Option<&str>) -> Self {
        Auth {
            authorization: token.map(|t| {
                MetadataValue::try_from(format!("Bearer {t}")).expect("token is ASCII metadata")
            }),
            tenant: None,
        }
    }

    /// Sends this raw `authorization` value.
    pub fn raw(value: &str) -> Self {
        Auth {
            authorization: Some(MetadataValue::try_from(value).expect("ASCII metadata")),
            tenant: None,
        }
    }

    /// Also sends `x-mantle-tenant: <tenant>`.
    pub fn with_tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(MetadataValue::try_from(tenant).expect("ASCII metadata"));
        self
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(value) = &self.tenant {
            request
                .metadata_mut()
                .insert("x-mantle-tenant", value.clone());
        }
        Ok(request)
    }
}

/// A channel with the [`Auth`] interceptor.
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Health status of `service` at `addr`.
pub async fn health_status(addr: SocketAddr, service: &str) -> Result<ServingStatus> {
    let mut client = HealthClient::new(connect(addr).await);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health check of {service:?}"))?;
    Ok(response.into_inner().status())
}

/// Polls `check` every 200 ms until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A well-formed API key token (`mntl_<32 hex>_<64 hex>`) that no server issued.
pub fn unknown_token() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    format!("mntl_{id}_{secret}")
}

/// Whether `token` has the API key form `mntl_<32 hex>_<64 hex>`.
pub fn is_api_key_token(token: &str) -> bool {
    let Some(rest) = token.strip_prefix("mntl_") else {
        return false;
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return false;
    };
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    id.len() == 32 && secret.len() == 64 && hex(id) && hex(secret)
}

/// A random tenant name, a valid DNS label.
pub fn random_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Body, de-chunked.
    pub body: String,
}

/// A minimal `GET` over HTTP/1.1 with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .with_context(|| format!("GET {path} timed out"))?
        .with_context(|| format!("GET {path}"))
}

fn parse_http_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk header"))?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The PostgreSQL server the tests use.
pub fn test_database_url() -> String {
    std::env::var("MANTLE_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether we run in CI, where a missing PostgreSQL is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The policy for a test that needs something unavailable: fail under `CI=true`, otherwise
/// print a loud skip message. Returns normally only when the test should be skipped.
pub fn skip_or_fail(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test}: {reason} (CI=true, so this is a failure, not a skip)");
    }
    eprintln!(
        "\n*** SKIPPED {test}: {reason}.\n*** Start PostgreSQL or set MANTLE_TEST_DATABASE_URL \
         (scripts/test does it); with CI=true this fails.\n"
    );
    // Test runners hide the output of passing tests: also append the skip to the file
    // named by MANTLE_TEST_SKIP_LOG, which scripts/test prints in its summary.
    if let Some(path) = std::env::var_os("MANTLE_TEST_SKIP_LOG").filter(|p| !p.is_empty()) {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{test}: {reason}");
        }
    }
}

/// Replaces the database name (path) of a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], database);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Replaces the `host:port` of a `postgres://` URL.
pub fn with_host_port(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    match userinfo {
        Some(u) => format!("{}{u}@{addr}{}", &url[..scheme_end], &rest[authority_end..]),
        None => format!("{}{addr}{}", &url[..scheme_end], &rest[authority_end..]),
    }
}

/// The `host:port` of a `postgres://` URL (default port 5432), resolved.
pub fn pg_socket_addr(url: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {hostport}"))
}

/// A fresh database `mantle_it_<random>`, dropped (`WITH (FORCE)`) on drop.
pub struct PgDatabase {
    /// URL of the fresh database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDatabase")
            .field("url", &self.url)
            .finish()
    }
}

impl PgDatabase {
    /// Creates a fresh database, or applies [`skip_or_fail`] and returns `None` when the
    /// PostgreSQL server is unreachable. Usage:
    /// `let Some(db) = PgDatabase::create("my_test").await else { return };`
    pub async fn create(test: &str) -> Option<PgDatabase> {
        let admin_url = test_database_url();
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect(&admin_url),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                skip_or_fail(
                    test,
                    &format!("PostgreSQL at {admin_url} is unreachable: {err}"),
                );
                return None;
            }
            Err(_) => {
                skip_or_fail(
                    test,
                    &format!("connecting to PostgreSQL at {admin_url} timed out"),
                );
                return None;
            }
        };
        let name = format!("mantle_it_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
        let _ = conn.close().await;
        Some(PgDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// A connection to the fresh database.
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|err| panic!("connecting to {}: {err}", self.url))
    }

    /// This database's URL with another `host:port` (for example a [`TcpProxy`]).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        with_host_port(&self.url, addr)
    }

    /// The PostgreSQL server's address.
    pub fn server_addr(&self) -> SocketAddr {
        pg_socket_addr(&self.url).expect("PostgreSQL address")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop may run inside or outside a runtime: use a thread with its own runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("warning: dropping database {}: {err:#}", self.name),
            Err(_) => eprintln!("warning: dropping database {} panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP proxy
// ---------------------------------------------------------------------------------------------

/// A TCP proxy that forwards a local port to `target` and can be cut (all connections closed,
/// new ones refused) and restored on the same port.
pub struct TcpProxy {
    /// The local address clients connect to.
    pub addr: SocketAddr,
    target: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    acceptor: Option<JoinHandle<()>>,
    connections: Vec<JoinHandle<()>>,
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .finish()
    }
}

fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl TcpProxy {
    /// Starts forwarding a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Result<TcpProxy> {
        let listener = bind_reusable(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let proxy = TcpProxy {
            addr,
            target,
            state: Arc::new(Mutex::new(ProxyState::default())),
        };
        proxy.spawn_acceptor(listener);
        Ok(proxy)
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let state = Arc::clone(&self.state);
        let target = self.target;
        let handle = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut state = state.lock().unwrap();
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(conn);
            }
        });
        self.state.lock().unwrap().acceptor = Some(handle);
    }

    /// Closes every proxied connection and stops listening, so new connections are refused.
    pub async fn cut(&self) {
        let (acceptor, connections) = {
            let mut state = self.state.lock().unwrap();
            (
                state.acceptor.take(),
                std::mem::take(&mut state.connections),
            )
        };
        for handle in acceptor.into_iter().chain(connections) {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match bind_reusable(self.addr) {
                Ok(listener) => break listener,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err).context(format!("re-binding {}", self.addr)),
            }
        };
        self.spawn_acceptor(listener);
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap();
        if let Some(acceptor) = state.acceptor.take() {
            acceptor.abort();
        }
        for conn in state.connections.drain(..) {
            conn.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// A local port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// Whether something accepts TCP connections at `addr`.
pub async fn is_listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The lines of `stderr` that are the contract's configuration error line.
pub fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("mantle: error:"))
        .map(str::to_owned)
        .collect()
}

/// Asserts that `result` is an error with `code`, printing `what` and the actual outcome otherwise.
#[track_caller]
pub fn assert_code<T: fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, what: &str) {
    match result {
        Err(status) if status.code() == code => {}
        Err(status) => panic!(
            "{what}: expected {code:?}, got {:?}: {:?}",
            status.code(),
            status.message()
        ),
        Ok(value) => panic!("{what}: expected {code:?}, got OK: {value:?}"),
    }
}

/// Unwraps a gRPC result, panicking with `what` and the status.
#[track_caller]
pub fn expect_ok<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!(
            "{what}: expected OK, got {:?}: {:?}",
            status.code(),
            status.message()
        ),
    }
}

/// Runs `mantle admin-key create --name <name>` against `database_url` and returns the token.
pub async fn admin_key_create(database_url: &str, name: &str) -> String {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = mantle_command();
    cmd.args(["admin-key", "create", "--name", name])
        .env("MANTLE_DATA_DIR", data_dir.path())
        .env("MANTLE_DATABASE_URL", database_url);
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .expect("mantle admin-key create");
    assert!(
        output.status.success(),
        "mantle admin-key create failed\n{}",
        describe_output(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "mantle admin-key create must print exactly one line (the token)\n{}",
        describe_output(&output)
    );
    let token = lines[0].trim().to_owned();
    assert!(
        !token.contains(char::is_whitespace),
        "admin-key token {token:?} contains whitespace"
    );
    // The token's exact form (mntl_<32 hex>_<64 hex>) is asserted by the tests about it,
    // not here, so that other tests are not masked by it.
    token
}
