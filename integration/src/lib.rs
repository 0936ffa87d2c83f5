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

pub mod benchmark;
pub mod fake_imap;
pub mod fake_llm;

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

/// The encryption key every test daemon gets unless a test sets its own (PostgreSQL
/// requires one; with SQLite it replaces the generated key file).
pub const TEST_ENCRYPTION_KEY: &str =
    "6d616e746c652d746573742d6b65792d30303030303030303030303030303031";

/// A command line for `mantle` with a clean environment (no inherited `MANTLE_*`) but for
/// [`TEST_ENCRYPTION_KEY`].
pub fn mantle_command() -> Command {
    let mut cmd = Command::new(mantle_bin());
    scrub_env(&mut cmd);
    cmd.env("MANTLE_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY);
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

/// Runs `mantle serve` that must refuse to start; returns its exit code and its
/// `mantle: error:` lines (and the whole stderr, for messages).
pub async fn serve_refused(mut cmd: Command) -> (Option<i32>, Vec<String>, String) {
    cmd.arg("serve")
        .env("MANTLE_API_ADDRESS", "127.0.0.1:0")
        .env("MANTLE_LOG_LEVEL", "info");
    let output = run_with_timeout(cmd, Duration::from_secs(40))
        .await
        .expect("mantle serve should exit on its own");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("mantle listening on"),
        "the daemon started serving:\n{}",
        describe_output(&output)
    );
    (output.status.code(), error_lines(&output.stderr), stderr)
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

    /// Starts a new daemon on this one's data dir (which it then owns) in place of this
    /// one, which must have exited. The temporary data dir lives until the new one drops.
    pub async fn restart_ok(&mut self, mut opts: DaemonOptions) {
        opts.data_dir = Some(self.data_dir.clone());
        let mut next = Daemon::start_ok(opts).await;
        next._temp = self._temp.take();
        *self = next;
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
            Ok(text) => Ok(Some(
                text.lines().next().unwrap_or_default().trim().to_owned(),
            )),
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

    /// The value of an unlabelled metric in `/metrics`, or 0 when it is absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.http_get("/metrics").await.expect("GET /metrics");
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response
            .body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (metric, value) = l.rsplit_once(' ')?;
                (metric == name).then(|| value.parse::<f64>().ok())?
            })
            .unwrap_or(0.0)
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

/// POSTs `body` to `path` over plain HTTP/1.1 with `headers` (name, value).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .with_context(|| format!("POST {path} timed out"))?
        .with_context(|| format!("POST {path}"))
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

    /// Another database name on the same server, fresh and not created yet (a test creates
    /// it, with `createdb` say), dropped like this one when the handle drops.
    pub fn sibling(&self) -> PgDatabase {
        let name = format!("mantle_it_{}", uuid::Uuid::new_v4().simple());
        PgDatabase {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
        }
    }
}

/// The PostgreSQL client program `name` (`pg_dump`, `pg_restore`, `createdb`) from the
/// newest /usr/lib/postgresql/*/bin, else from PATH.
pub fn pg_tool(name: &str) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let path = e.path().join("bin").join(name);
            path.is_file().then_some((v, path))
        })
        .collect();
    versions.sort();
    if let Some((_, path)) = versions.pop() {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
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

// ---------------------------------------------------------------------------------------------
// Executions: clients and helpers for the engine tests
// ---------------------------------------------------------------------------------------------

/// A DefinitionService client with [`Auth`].
pub type DefinitionsClient = pb::definition_service_client::DefinitionServiceClient<AuthChannel>;
/// An ExecutionService client with [`Auth`].
pub type ExecutionsClient = pb::execution_service_client::ExecutionServiceClient<AuthChannel>;

/// Whether `status` (a `pb::ExecutionStatus` as i32) is a final state.
pub fn is_terminal_status(status: i32) -> bool {
    matches!(
        pb::ExecutionStatus::try_from(status),
        Ok(pb::ExecutionStatus::Completed
            | pb::ExecutionStatus::Failed
            | pb::ExecutionStatus::Cancelled
            | pb::ExecutionStatus::TimedOut)
    )
}

/// A protobuf timestamp as milliseconds since the Unix epoch; `None` when unset.
pub fn ts_ms(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// The test process's clock in milliseconds since the Unix epoch (the daemon runs on the same
/// machine, so its timestamps are comparable).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// One line per attempt, for assertion messages.
pub fn describe_attempts(attempts: &[pb::StepAttempt]) -> String {
    attempts
        .iter()
        .map(|a| {
            format!(
                "{}#{} {:?} start={:?} end={:?} wake={:?} output={} error={:?}",
                a.step_name,
                a.attempt,
                pb::StepStatus::try_from(a.status).unwrap_or(pb::StepStatus::Unspecified),
                ts_ms(&a.start_time),
                ts_ms(&a.end_time),
                ts_ms(&a.wake_time),
                a.output_json,
                a.error
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The attempts of one step, in the order listed.
pub fn attempts_of<'a>(attempts: &'a [pb::StepAttempt], step: &str) -> Vec<&'a pb::StepAttempt> {
    attempts.iter().filter(|a| a.step_name == step).collect()
}

/// The single attempt of `step`, panicking (with every attempt) when there is not exactly one.
#[track_caller]
pub fn only_attempt<'a>(attempts: &'a [pb::StepAttempt], step: &str) -> &'a pb::StepAttempt {
    let found = attempts_of(attempts, step);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one attempt of step {step:?}; attempts:\n{}",
        describe_attempts(attempts)
    );
    found[0]
}

/// Parses a JSON text, panicking with the text when it is not JSON.
#[track_caller]
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// DefinitionService and ExecutionService clients of one daemon, with one token.
#[derive(Clone)]
pub struct Mantle {
    /// DefinitionService.
    pub defs: DefinitionsClient,
    /// ExecutionService.
    pub execs: ExecutionsClient,
}

impl fmt::Debug for Mantle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mantle").finish_non_exhaustive()
    }
}

impl Mantle {
    /// Clients of `daemon` sending `token`.
    pub async fn connect(daemon: &Daemon, token: &str) -> Mantle {
        let channel = daemon.channel().await;
        Mantle {
            defs: pb::definition_service_client::DefinitionServiceClient::with_interceptor(
                channel.clone(),
                Auth::new(Some(token)),
            ),
            execs: pb::execution_service_client::ExecutionServiceClient::with_interceptor(
                channel,
                Auth::new(Some(token)),
            ),
        }
    }

    /// Applies a workflow file, panicking with the status when it is refused.
    pub async fn apply(&mut self, source: &str) -> pb::Definition {
        let response = self
            .defs
            .apply_definition(pb::ApplyDefinitionRequest {
                source: source.to_owned(),
                filename: "workflow.yaml".to_owned(),
            })
            .await;
        match response {
            Ok(r) => r
                .into_inner()
                .definition
                .expect("ApplyDefinitionResponse.definition"),
            Err(status) => panic!(
                "ApplyDefinition failed: {:?}: {}\n--- source ---\n{source}",
                status.code(),
                status.message()
            ),
        }
    }

    /// StartExecution of the latest version.
    pub async fn start(
        &mut self,
        workflow: &str,
        inputs_json: &str,
    ) -> Result<pb::Execution, tonic::Status> {
        self.execs
            .start_execution(pb::StartExecutionRequest {
                workflow: workflow.to_owned(),
                version: 0,
                inputs_json: inputs_json.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// StartExecution that must succeed.
    pub async fn start_ok(&mut self, workflow: &str, inputs_json: &str) -> pb::Execution {
        expect_ok(
            self.execs
                .start_execution(pb::StartExecutionRequest {
                    workflow: workflow.to_owned(),
                    version: 0,
                    inputs_json: inputs_json.to_owned(),
                    ..Default::default()
                })
                .await,
            &format!("StartExecution {workflow} {inputs_json}"),
        )
    }

    /// GetExecution that must succeed.
    pub async fn get(&mut self, id: &str) -> pb::Execution {
        expect_ok(
            self.execs
                .get_execution(pb::GetExecutionRequest { id: id.to_owned() })
                .await,
            "GetExecution",
        )
    }

    /// Every step attempt of an execution, with outputs, following pages (ListStepAttempts
    /// calls that must succeed).
    pub async fn attempts(&mut self, id: &str) -> Vec<pb::StepAttempt> {
        let mut attempts = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = expect_ok(
                self.execs
                    .list_step_attempts(pb::ListStepAttemptsRequest {
                        id: id.to_owned(),
                        page_size: 1000,
                        page_token,
                        view: pb::View::Full as i32,
                    })
                    .await,
                "ListStepAttempts",
            );
            attempts.extend(page.attempts);
            if page.next_page_token.is_empty() {
                return attempts;
            }
            page_token = page.next_page_token;
        }
    }

    /// CancelExecution that must succeed.
    pub async fn cancel(&mut self, id: &str) -> pb::Execution {
        expect_ok(
            self.execs
                .cancel_execution(pb::CancelExecutionRequest { id: id.to_owned() })
                .await,
            "CancelExecution",
        )
    }

    /// RetryExecution that must succeed.
    pub async fn retry(&mut self, id: &str) -> pb::Execution {
        expect_ok(
            self.execs
                .retry_execution(pb::RetryExecutionRequest { id: id.to_owned() })
                .await,
            "RetryExecution",
        )
    }

    /// Polls GetExecution (every 20 ms) until `check` accepts it; panics after `timeout` with
    /// the last execution and its attempts.
    pub async fn wait_until<F>(
        &mut self,
        id: &str,
        timeout: Duration,
        what: &str,
        mut check: F,
    ) -> pb::Execution
    where
        F: FnMut(&pb::Execution, &[pb::StepAttempt]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let execution = self.get(id).await;
            let attempts = self.attempts(id).await;
            if check(&execution, &attempts) {
                return execution;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not reached within {timeout:?}; execution: {execution:?}\nattempts:\n{}",
                    describe_attempts(&attempts)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the execution is in a final state (panics after `timeout`).
    pub async fn wait_terminal(&mut self, id: &str, timeout: Duration) -> pb::Execution {
        self.wait_until(id, timeout, "execution finished", |e, _| {
            is_terminal_status(e.status)
        })
        .await
    }

    /// Starts `workflow` and waits (up to `timeout`) for it to finish; returns the execution
    /// and its attempts.
    pub async fn run(
        &mut self,
        workflow: &str,
        inputs_json: &str,
        timeout: Duration,
    ) -> (pb::Execution, Vec<pb::StepAttempt>) {
        let started = self.start_ok(workflow, inputs_json).await;
        let execution = self.wait_terminal(&started.id, timeout).await;
        let attempts = self.attempts(&started.id).await;
        (execution, attempts)
    }

    /// WatchExecution after `after_seq`, collecting every event until the stream ends. `Err`
    /// when the call is refused, the stream fails, or it does not end within `timeout`.
    pub async fn watch(
        &mut self,
        id: &str,
        after_seq: i64,
        timeout: Duration,
    ) -> Result<Vec<pb::ExecutionEvent>> {
        let fut =
            async {
                let mut stream = self
                    .execs
                    .watch_execution(pb::WatchExecutionRequest {
                        id: id.to_owned(),
                        after_seq,
                    })
                    .await
                    .map_err(|s| anyhow!("WatchExecution: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let mut events = Vec::new();
                while let Some(event) = stream.message().await.map_err(|s| {
                    anyhow!("WatchExecution stream: {:?}: {}", s.code(), s.message())
                })? {
                    events.push(event);
                }
                anyhow::Ok(events)
            };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| anyhow!("WatchExecution did not end within {timeout:?}"))?
    }
}

/// Creates an API key of `tenant` with `scopes` through TenantService (needs an operator token).
pub async fn create_api_key(
    daemon: &Daemon,
    operator: &str,
    tenant: &str,
    scopes: &[&str],
) -> String {
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_api_key(pb::CreateApiKeyRequest {
                tenant: tenant.to_owned(),
                name: format!("it-{}", scopes.join("-").replace([':', '*'], "_")),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                expire_time: None,
            })
            .await,
        "CreateApiKey",
    )
    .token
}

/// Creates a tenant named `name` through TenantService (needs an operator token).
pub async fn create_tenant(daemon: &Daemon, operator: &str, name: &str) {
    let mut tenants = daemon.tenants(Some(operator)).await;
    expect_ok(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: name.to_owned(),
                display_name: name.to_owned(),
                ..Default::default()
            })
            .await,
        "CreateTenant",
    );
}

// ---------------------------------------------------------------------------------------------
// A scriptable HTTP/1.1 test server
// ---------------------------------------------------------------------------------------------

/// One scripted answer of the [`TestServer`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// `Content-Type`.
    pub content_type: String,
    /// How long to hold the request before answering (the server notices meanwhile when the
    /// client closes the connection).
    pub delay: Duration,
}

impl Reply {
    /// An empty `text/plain` answer with `status`.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            content_type: "text/plain".to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply {
            body: value.to_string(),
            content_type: "application/json".to_owned(),
            ..Reply::status(status)
        }
    }

    /// A `302 Found` to `location`.
    pub fn redirect(location: &str) -> Reply {
        Reply::status(302).header("Location", location)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Holds the request for `delay` before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request the [`TestServer`] received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Request method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// When the request head was read.
    pub at: Instant,
    /// When the answer was written.
    pub answered: Option<Instant>,
    /// When the client closed the connection before the answer was written.
    pub closed_by_client: Option<Instant>,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: String,
}

#[derive(Default)]
struct TestServerState {
    routes: HashMap<String, (Vec<Reply>, usize)>,
    hits: Vec<Hit>,
}

/// A local HTTP/1.1 server with scripted answers per path: each path serves its replies in
/// order and repeats the last; unknown paths answer 404. Counts requests, records their times,
/// and notices clients that close the connection while a reply is held back.
pub struct TestServer {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    state: Arc<Mutex<TestServerState>>,
    acceptor: JoinHandle<()>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts listening on a free port of 127.0.0.1.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the test server");
        let addr = listener.local_addr().expect("test server address");
        let state = Arc::new(Mutex::new(TestServerState::default()));
        let acceptor = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve_test_connection(stream, Arc::clone(&state)));
                }
            })
        };
        TestServer {
            addr,
            state,
            acceptor,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Scripts `path`: its replies in order, the last one repeated (restarts the script).
    pub fn route(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "a route needs at least one reply");
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), (replies, 0));
    }

    /// Scripts `path` to always answer `reply`.
    pub fn set(&self, path: &str, reply: Reply) {
        self.route(path, vec![reply]);
    }

    /// Every request to `path` so far.
    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.state
            .lock()
            .unwrap()
            .hits
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Every request so far.
    pub fn all_hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Number of requests to `path` so far.
    pub fn count(&self, path: &str) -> usize {
        self.hits(path).len()
    }

    /// Waits until `path` got at least `n` requests; returns whether it did within `timeout`.
    pub async fn wait_for_hits(&self, path: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(path) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn serve_test_connection(mut stream: TcpStream, state: Arc<Mutex<TestServerState>>) {
    // Read the request head (and a Content-Length body).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let content_length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body_bytes = buf[head_end + 4..].to_vec();
    while body_bytes.len() < content_length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body_bytes.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&body_bytes).into_owned();

    let (index, reply) = {
        let mut state = state.lock().unwrap();
        let reply = match state.routes.get_mut(&path) {
            Some((replies, served)) => {
                let reply = replies[(*served).min(replies.len() - 1)].clone();
                *served += 1;
                reply
            }
            None => Reply::status(404),
        };
        state.hits.push(Hit {
            method,
            path,
            at: Instant::now(),
            answered: None,
            closed_by_client: None,
            headers,
            body,
        });
        (state.hits.len() - 1, reply)
    };

    if !reply.delay.is_zero() {
        let until = tokio::time::Instant::now() + reply.delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => {
                        state.lock().unwrap().hits[index].closed_by_client = Some(Instant::now());
                        return;
                    }
                    Ok(_) => {}
                },
            }
        }
    }

    let reason = match reply.status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    state.lock().unwrap().hits[index].answered = Some(Instant::now());
}

// =============================================================================================
// BEGIN reliability helpers (crash recovery, replicas, bench) — one block, kept together.
// =============================================================================================

/// Helpers of the crash-recovery and replica tests and of the `bench` binary: execution and
/// definition clients, a counting HTTP server, workflow generators and small utilities.
pub mod reliability {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    use anyhow::{Context, Result, bail};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;
    use tonic::transport::Channel;

    use super::{Auth, AuthChannel, Daemon, DaemonOptions, pb};
    pub use pb::definition_service_client::DefinitionServiceClient;
    pub use pb::execution_service_client::ExecutionServiceClient;

    /// An ExecutionService client with the [`Auth`] interceptor.
    pub type Executions = ExecutionServiceClient<AuthChannel>;
    /// A DefinitionService client with the [`Auth`] interceptor.
    pub type Definitions = DefinitionServiceClient<AuthChannel>;

    /// The `MANTLE_API_TOKEN` the reliability daemons run with (tenant `default`, scope `*`).
    pub const RELIABILITY_TOKEN: &str = "reliability-static-token-0123456789abcdef";

    /// Options for a reliability daemon: `MANTLE_API_TOKEN`, private networks allowed (the
    /// counting server is on 127.0.0.1), the given lease and poll interval.
    pub fn reliability_options(
        database_url: Option<&str>,
        lease: &str,
        poll: &str,
    ) -> DaemonOptions {
        let mut opts = match database_url {
            Some(url) => DaemonOptions::postgres(url),
            None => DaemonOptions::sqlite(),
        };
        opts = opts
            .env("MANTLE_API_TOKEN", RELIABILITY_TOKEN)
            .env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true")
            .env("MANTLE_ENGINE_LEASE_TTL", lease)
            .env("MANTLE_ENGINE_POLL_INTERVAL", poll)
            .env("MANTLE_SHUTDOWN_GRACE_PERIOD", "20s");
        opts
    }

    /// An ExecutionService client on `channel` sending [`RELIABILITY_TOKEN`].
    pub fn executions_client(channel: Channel) -> Executions {
        ExecutionServiceClient::with_interceptor(channel, Auth::new(Some(RELIABILITY_TOKEN)))
    }

    /// A DefinitionService client on `channel` sending [`RELIABILITY_TOKEN`].
    pub fn definitions_client(channel: Channel) -> Definitions {
        DefinitionServiceClient::with_interceptor(channel, Auth::new(Some(RELIABILITY_TOKEN)))
    }

    /// An ExecutionService client of `daemon`.
    pub async fn executions_of(daemon: &Daemon) -> Executions {
        executions_client(daemon.channel().await)
    }

    /// Applies a workflow file through `daemon` and returns the stored version.
    pub async fn apply_workflow(daemon: &Daemon, source: &str) -> Result<pb::Definition> {
        let mut defs = definitions_client(daemon.channel().await);
        let response = defs
            .apply_definition(pb::ApplyDefinitionRequest {
                source: source.to_owned(),
                filename: "reliability.yaml".to_owned(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("ApplyDefinition: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        response
            .definition
            .context("ApplyDefinition returned no definition")
    }

    /// Starts an execution of the latest version of `workflow` without inputs.
    pub async fn start_execution(client: &mut Executions, workflow: &str) -> Result<pb::Execution> {
        client
            .start_execution(pb::StartExecutionRequest {
                workflow: workflow.to_owned(),
                version: 0,
                inputs_json: String::new(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("StartExecution: {:?}: {}", s.code(), s.message()))
    }

    /// Whether an execution status is final.
    pub fn is_terminal(status: i32) -> bool {
        use pb::ExecutionStatus as S;
        [S::Completed, S::Failed, S::Cancelled, S::TimedOut]
            .iter()
            .any(|s| *s as i32 == status)
    }

    /// Name of an execution status, for messages.
    pub fn execution_status_name(status: i32) -> String {
        pb::ExecutionStatus::try_from(status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("status {status}"))
    }

    /// Name of a step status, for messages.
    pub fn step_status_name(status: i32) -> String {
        pb::StepStatus::try_from(status)
            .map(|s| s.as_str_name().to_owned())
            .unwrap_or_else(|_| format!("status {status}"))
    }

    /// Polls GetExecution for every id until all are terminal or `timeout` passes; returns
    /// the last state of each (in the order of `ids`). Transport errors are retried.
    pub async fn wait_all_terminal(
        client: &mut Executions,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Vec<pb::Execution>> {
        let deadline = Instant::now() + timeout;
        let mut last: HashMap<String, pb::Execution> = HashMap::new();
        loop {
            for id in ids {
                if last.get(id).is_some_and(|e| is_terminal(e.status)) {
                    continue;
                }
                if let Ok(response) = client
                    .get_execution(pb::GetExecutionRequest { id: id.clone() })
                    .await
                {
                    last.insert(id.clone(), response.into_inner());
                }
            }
            let done = ids
                .iter()
                .filter(|id| last.get(*id).is_some_and(|e| is_terminal(e.status)))
                .count();
            if done == ids.len() {
                return Ok(ids.iter().map(|id| last[id].clone()).collect());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {} executions still not finished after {timeout:?}",
                    ids.len() - done,
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A description of every execution of `ids` that is not finished, with its attempts,
    /// for failure messages.
    pub async fn describe_unfinished(client: &mut Executions, ids: &[String]) -> String {
        let mut out = String::new();
        for id in ids {
            let Ok(e) = client
                .get_execution(pb::GetExecutionRequest { id: id.clone() })
                .await
            else {
                out.push_str(&format!("{id}: GetExecution failed\n"));
                continue;
            };
            let e = e.into_inner();
            if is_terminal(e.status) {
                continue;
            }
            out.push_str(&format!("{id}: {}\n", execution_status_name(e.status)));
            match step_attempts(client, id).await {
                Ok(attempts) if attempts.is_empty() => out.push_str("    (no attempts)\n"),
                Ok(attempts) => {
                    for a in attempts {
                        out.push_str(&format!(
                            "    {} #{} {} {}\n",
                            a.step_name,
                            a.attempt,
                            step_status_name(a.status),
                            a.error
                        ));
                    }
                }
                Err(e) => out.push_str(&format!("    {e:#}\n")),
            }
        }
        out
    }

    /// Every attempt of an execution, with outputs, following pages.
    pub async fn step_attempts(client: &mut Executions, id: &str) -> Result<Vec<pb::StepAttempt>> {
        let mut attempts = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_step_attempts(pb::ListStepAttemptsRequest {
                    id: id.to_owned(),
                    page_size: 1000,
                    page_token,
                    view: pb::View::Full as i32,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| {
                    anyhow::anyhow!("ListStepAttempts: {:?}: {}", s.code(), s.message())
                })?;
            attempts.extend(page.attempts);
            if page.next_page_token.is_empty() {
                return Ok(attempts);
            }
            page_token = page.next_page_token;
        }
    }

    /// Converts a protobuf timestamp to a `SystemTime`.
    pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(ts.seconds.max(0) as u64)
            + Duration::from_nanos(ts.nanos.max(0) as u64)
    }

    /// `b - a` in milliseconds (negative when `b` is earlier).
    pub fn millis_between(a: SystemTime, b: SystemTime) -> f64 {
        match b.duration_since(a) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -(e.duration().as_secs_f64() * 1000.0),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Workflow generators
    // -----------------------------------------------------------------------------------------

    /// A chain of `n` `core/set` steps `s1..sn`, each reading the previous one's output.
    pub fn set_chain_workflow(name: &str, n: usize) -> String {
        let mut out = format!(
            "name: {name}\nsteps:\n  - name: s1\n    action: core/set\n    params: {{v: 1}}\n"
        );
        for i in 2..=n {
            out.push_str(&format!(
                "  - name: s{i}\n    action: core/set\n    params: {{v: \"{{{{ steps.s{}.output.v + 1 }}}}\"}}\n",
                i - 1
            ));
        }
        out.push_str(&format!("outputs:\n  v: steps.s{n}.output.v\n"));
        out
    }

    /// A chain of `n` `http/request` steps `s1..sn` to `http://<server>/<execution id>/sN`.
    pub fn http_chain_workflow(name: &str, n: usize, server: SocketAddr) -> String {
        let mut out = format!("name: {name}\nsteps:\n");
        for i in 1..=n {
            out.push_str(&format!(
                "  - name: s{i}\n    action: http/request\n    params:\n      url: \"http://{server}/{{{{ execution.id }}}}/s{i}\"\n"
            ));
            if i > 1 {
                out.push_str(&format!("    depends_on: [s{}]\n", i - 1));
            }
        }
        out
    }

    /// `branches` parallel chains of `length` `http/request` steps (`b<i>_s<j>`), then a
    /// `join` step after the last step of every branch; every request goes to
    /// `http://<server>/<execution id>/<step name>`. Returns the YAML and the step names.
    pub fn http_fan_workflow(
        name: &str,
        branches: usize,
        length: usize,
        server: SocketAddr,
    ) -> (String, Vec<String>) {
        let mut out = format!("name: {name}\ntimeout: 10m\nsteps:\n");
        let mut names = Vec::new();
        let step = |out: &mut String, step: &str, deps: &[String]| {
            out.push_str(&format!(
                "  - name: {step}\n    action: http/request\n    params:\n      url: \"http://{server}/{{{{ execution.id }}}}/{step}\"\n"
            ));
            if !deps.is_empty() {
                out.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
            }
        };
        let mut tails = Vec::new();
        for b in 1..=branches {
            for s in 1..=length {
                let this = format!("b{b}_s{s}");
                let deps = if s > 1 {
                    vec![format!("b{b}_s{}", s - 1)]
                } else {
                    Vec::new()
                };
                step(&mut out, &this, &deps);
                names.push(this.clone());
                if s == length {
                    tails.push(this);
                }
            }
        }
        step(&mut out, "join", &tails);
        names.push("join".to_owned());
        (out, names)
    }

    // -----------------------------------------------------------------------------------------
    // Counting HTTP server
    // -----------------------------------------------------------------------------------------

    /// A local HTTP/1.1 server (keep-alive) that counts the requests it receives per path
    /// (counted as soon as the request head is read), waits `delay`, and answers
    /// `200 {"ok":true}`.
    pub struct CountingServer {
        /// Where it listens.
        pub addr: SocketAddr,
        counts: Arc<Mutex<HashMap<String, u64>>>,
        acceptor: JoinHandle<()>,
    }

    impl std::fmt::Debug for CountingServer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CountingServer")
                .field("addr", &self.addr)
                .finish_non_exhaustive()
        }
    }

    impl CountingServer {
        /// Starts listening on a free port of 127.0.0.1.
        pub async fn start(delay: Duration) -> Result<CountingServer> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let counts = Arc::new(Mutex::new(HashMap::new()));
            let acceptor = {
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let counts = Arc::clone(&counts);
                        tokio::spawn(serve_counting(stream, counts, delay));
                    }
                })
            };
            Ok(CountingServer {
                addr,
                counts,
                acceptor,
            })
        }

        /// Requests received at `path` so far.
        pub fn count(&self, path: &str) -> u64 {
            self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
        }

        /// Every path with its count.
        pub fn counts(&self) -> HashMap<String, u64> {
            self.counts.lock().unwrap().clone()
        }

        /// All requests received.
        pub fn total(&self) -> u64 {
            self.counts.lock().unwrap().values().sum()
        }
    }

    impl Drop for CountingServer {
        fn drop(&mut self) {
            self.acceptor.abort();
        }
    }

    async fn serve_counting(
        mut stream: TcpStream,
        counts: Arc<Mutex<HashMap<String, u64>>>,
        delay: Duration,
    ) {
        let _ = stream.set_nodelay(true);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            // Read one request head.
            let head_end = loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break pos + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let path = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("")
                .to_owned();
            let content_length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + content_length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + content_length);
            *counts.lock().unwrap().entry(path).or_insert(0) += 1;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let body = b"{\"ok\":true}";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if stream.write_all(response.as_bytes()).await.is_err()
                || stream.write_all(body).await.is_err()
            {
                return;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Misc
    // -----------------------------------------------------------------------------------------

    /// A small xorshift PRNG (no dependency); print the seed so a run can be reproduced.
    #[derive(Debug, Clone)]
    pub struct Rng(u64);

    impl Rng {
        /// Seeded from `MANTLE_TEST_SEED` when set, else randomly; returns the seed too.
        pub fn from_env() -> (Rng, u64) {
            let seed = std::env::var("MANTLE_TEST_SEED")
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 | 1);
            (Rng(seed.max(1)), seed)
        }

        /// The next random number.
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// A random duration in `[lo, hi]`.
        pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
            let span = hi.saturating_sub(lo).as_micros() as u64;
            lo + Duration::from_micros(if span == 0 {
                0
            } else {
                self.next_u64() % (span + 1)
            })
        }
    }

    /// The `p`-th percentile (0–100) of `values` (sorted in place), nearest-rank.
    pub fn percentile(values: &mut [f64], p: f64) -> f64 {
        if values.is_empty() {
            return f64::NAN;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    }

    // -----------------------------------------------------------------------------------------
    // Reading the store directly
    // -----------------------------------------------------------------------------------------

    /// One row of `step_attempts`, as stored.
    #[derive(Debug, Clone)]
    pub struct DbAttempt {
        /// The execution.
        pub execution_id: uuid::Uuid,
        /// The step.
        pub step_name: String,
        /// The attempt number.
        pub attempt: i32,
        /// `running`, `completed`, `failed`, `cancelled`, ...
        pub status: String,
        /// Why it failed or was cancelled.
        pub error: Option<String>,
    }

    /// What the store holds about executions: every attempt, every event's
    /// `(execution, seq)`, and every execution's `(id, status)`.
    #[derive(Debug, Clone, Default)]
    pub struct DbSnapshot {
        /// Every row of `step_attempts`.
        pub attempts: Vec<DbAttempt>,
        /// `(execution_id, seq)` of every row of `execution_events`.
        pub events: Vec<(uuid::Uuid, i64)>,
        /// `(id, status)` of every execution.
        pub executions: Vec<(uuid::Uuid, String)>,
    }

    type AttemptTuple = (uuid::Uuid, String, i32, String, Option<String>);

    const SNAPSHOT_ATTEMPTS: &str =
        "SELECT execution_id, step_name, attempt, status, error FROM step_attempts";
    const SNAPSHOT_EVENTS: &str = "SELECT execution_id, seq FROM execution_events";
    const SNAPSHOT_EXECUTIONS: &str = "SELECT id, status FROM executions";

    fn snapshot_from(
        attempts: Vec<AttemptTuple>,
        events: Vec<(uuid::Uuid, i64)>,
        executions: Vec<(uuid::Uuid, String)>,
    ) -> DbSnapshot {
        DbSnapshot {
            attempts: attempts
                .into_iter()
                .map(
                    |(execution_id, step_name, attempt, status, error)| DbAttempt {
                        execution_id,
                        step_name,
                        attempt,
                        status,
                        error,
                    },
                )
                .collect(),
            events,
            executions,
        }
    }

    /// Reads a [`DbSnapshot`] from a PostgreSQL database.
    pub async fn pg_snapshot(url: &str) -> Result<DbSnapshot> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let attempts: Vec<AttemptTuple> = sqlx::query_as(SNAPSHOT_ATTEMPTS)
            .fetch_all(&mut conn)
            .await?;
        let events: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as(SNAPSHOT_EVENTS).fetch_all(&mut conn).await?;
        let executions: Vec<(uuid::Uuid, String)> = sqlx::query_as(SNAPSHOT_EXECUTIONS)
            .fetch_all(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(snapshot_from(attempts, events, executions))
    }

    /// Reads a [`DbSnapshot`] from the daemon's SQLite file (`<data dir>/mantle.db`).
    pub async fn sqlite_snapshot(data_dir: &std::path::Path) -> Result<DbSnapshot> {
        use sqlx::Connection;
        let path = data_dir.join("mantle.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_secs(10));
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let attempts: Vec<AttemptTuple> = sqlx::query_as(SNAPSHOT_ATTEMPTS)
            .fetch_all(&mut conn)
            .await?;
        let events: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as(SNAPSHOT_EVENTS).fetch_all(&mut conn).await?;
        let executions: Vec<(uuid::Uuid, String)> = sqlx::query_as(SNAPSHOT_EXECUTIONS)
            .fetch_all(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(snapshot_from(attempts, events, executions))
    }

    impl DbSnapshot {
        /// Problems with the store's invariants: an (execution, step) with more than one
        /// `completed` attempt, or an execution whose event seqs are not exactly `1..=n`.
        pub fn integrity_problems(&self) -> Vec<String> {
            let mut problems = Vec::new();
            let mut completed: HashMap<(uuid::Uuid, &str), Vec<i32>> = HashMap::new();
            for a in &self.attempts {
                if a.status == "completed" {
                    completed
                        .entry((a.execution_id, a.step_name.as_str()))
                        .or_default()
                        .push(a.attempt);
                }
            }
            let mut dup: Vec<_> = completed.iter().filter(|(_, v)| v.len() > 1).collect();
            dup.sort_by_key(|((id, step), _)| (*id, *step));
            for ((id, step), attempts) in dup {
                problems.push(format!(
                    "execution {id} step {step}: {} completed attempts {attempts:?}",
                    attempts.len()
                ));
            }
            let mut seqs: HashMap<uuid::Uuid, Vec<i64>> = HashMap::new();
            for (id, seq) in &self.events {
                seqs.entry(*id).or_default().push(*seq);
            }
            for (id, _) in &self.executions {
                let mut list = seqs.remove(id).unwrap_or_default();
                list.sort_unstable();
                let expected: Vec<i64> = (1..=list.len() as i64).collect();
                if list != expected {
                    problems.push(format!(
                        "execution {id}: event seqs are not 1..={}: {list:?}",
                        list.len()
                    ));
                }
            }
            for id in seqs.keys() {
                problems.push(format!("events of unknown execution {id}"));
            }
            problems
        }

        /// The attempts of one execution's step.
        pub fn attempts_of(&self, id: uuid::Uuid, step: &str) -> Vec<&DbAttempt> {
            self.attempts
                .iter()
                .filter(|a| a.execution_id == id && a.step_name == step)
                .collect()
        }
    }

    /// Every attempt and event of one execution as stored, one line each, for failure
    /// messages. `database_url`: PostgreSQL; `None`: the SQLite file in `data_dir`. Times
    /// are read as text so that both backends' column types decode the same way.
    pub async fn dump_execution(
        database_url: Option<&str>,
        data_dir: &std::path::Path,
        id: uuid::Uuid,
    ) -> Result<String> {
        use sqlx::Connection;
        type Row = (
            String,
            i32,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let attempts_sql = "SELECT step_name, attempt, status, error, \
             CAST(start_time AS TEXT), CAST(end_time AS TEXT) FROM step_attempts \
             WHERE execution_id = $1 ORDER BY start_time, step_name, attempt";
        let events_sql = "SELECT seq, CAST(time AS TEXT), kind, step_name, attempt, status, message \
             FROM execution_events WHERE execution_id = $1 ORDER BY seq";
        type Ev = (
            i64,
            Option<String>,
            String,
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<String>,
        );
        let (attempts, events): (Vec<Row>, Vec<Ev>) = match database_url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let a = sqlx::query_as(attempts_sql)
                    .bind(id)
                    .fetch_all(&mut conn)
                    .await?;
                let e = sqlx::query_as(events_sql)
                    .bind(id)
                    .fetch_all(&mut conn)
                    .await?;
                let _ = conn.close().await;
                (a, e)
            }
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(data_dir.join("mantle.db"))
                    .busy_timeout(Duration::from_secs(10));
                let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
                let a = sqlx::query_as(attempts_sql)
                    .bind(id)
                    .fetch_all(&mut conn)
                    .await?;
                let e = sqlx::query_as(events_sql)
                    .bind(id)
                    .fetch_all(&mut conn)
                    .await?;
                let _ = conn.close().await;
                (a, e)
            }
        };
        let mut out = format!("execution {id}: attempts\n");
        for (step, attempt, status, error, start, end) in attempts {
            out.push_str(&format!(
                "  {step} #{attempt} {status} start={} end={} {}\n",
                start.unwrap_or_default(),
                end.unwrap_or_default(),
                error.unwrap_or_default()
            ));
        }
        out.push_str("events\n");
        for (seq, time, kind, step, attempt, status, message) in events {
            out.push_str(&format!(
                "  {seq} {} {kind} {} #{} {} {}\n",
                time.unwrap_or_default(),
                step.unwrap_or_default(),
                attempt.unwrap_or_default(),
                status.unwrap_or_default(),
                message.unwrap_or_default()
            ));
        }
        Ok(out)
    }

    /// Whether an attempt was cancelled because its daemon died (the engine's wording).
    pub fn is_interrupted(status: &str, error: Option<&str>) -> bool {
        status == "cancelled" && error.is_some_and(|e| e.contains("interrupted"))
    }

    /// Checks the counting server against the recorded attempts of one (execution, step):
    /// a checkpointed step's request is never sent again. Exactly: every `completed` or
    /// `failed` attempt sent its request, an attempt interrupted by a crash may or may not
    /// have sent it (the crash may fall between the durable "running" record and the send),
    /// and no request is sent without a recorded attempt. So
    /// `completed + failed <= requests <= completed + failed + interrupted`.
    /// Returns a problem description, or `None`.
    pub fn request_count_problem(
        what: &str,
        requests: u64,
        attempts: &[(String, Option<String>)],
    ) -> Option<String> {
        let finished = attempts
            .iter()
            .filter(|(s, _)| s == "completed" || s == "failed")
            .count() as u64;
        let interrupted = attempts
            .iter()
            .filter(|(s, e)| is_interrupted(s, e.as_deref()))
            .count() as u64;
        let completed = attempts.iter().filter(|(s, _)| s == "completed").count();
        if completed > 1 {
            return Some(format!(
                "{what}: {completed} completed attempts: {attempts:?}"
            ));
        }
        if requests < finished || requests > finished + interrupted {
            return Some(format!(
                "{what}: {requests} requests received, but {finished} completed/failed and \
                 {interrupted} interrupted attempts recorded: {attempts:?}"
            ));
        }
        None
    }
}

// =============================================================================================
// END reliability helpers
// =============================================================================================
