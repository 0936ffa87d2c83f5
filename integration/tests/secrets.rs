//! Secrets end to end, with the real binaries: values redacted from everything the daemon
//! stores, streams or logs; missing and wrongly typed credentials; key rotation under load;
//! backup and restore with pg_dump; tampering and cross-tenant copies at the storage level;
//! key configuration errors; audit records.
//!
//! http/request steps call a local echo server (it answers with the request's headers), so
//! the daemons run with `MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS=true`. PostgreSQL parts follow
//! the harness's policy: skipped loudly when the server is unreachable, failed under CI=true.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mantle_integration::*;
use serde_json::json;
use sqlx::{Connection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use pb::secret_service_client::SecretServiceClient;
use pb::{ExecutionStatus as Ex, StepStatus as St};

type SecretsClient = SecretServiceClient<AuthChannel>;

/// Two well-formed keys, neither the harness's default.
const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Echo server
// ---------------------------------------------------------------------------------------------

/// One request the echo server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
}

/// A local HTTP/1.1 server answering every request with `{method, path, headers, body}` as
/// JSON (header names lower-cased). Paths under `/slow/` answer after `delay`; `/fail`
/// answers 400 with the same JSON; `/cut?pad=N` answers 400 with N padding characters
/// followed by `auth=<authorization header>` as text.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    async fn start(delay: Duration) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(echo_connection(stream, Arc::clone(&seen), delay));
                }
            })
        };
        Echo { addr, seen, task }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn echo_connection(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, delay: Duration) {
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
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = BTreeMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.to_owned(),
        headers: headers.clone(),
    });
    if path.starts_with("/slow/") {
        tokio::time::sleep(delay).await;
    }
    let echo = json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let (status, content_type, text) = if path == "/fail" {
        ("400 Bad Request", "application/json", echo.to_string())
    } else if path == "/cut" {
        let pad: usize = query
            .strip_prefix("pad=")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        (
            "400 Bad Request",
            "text/plain",
            format!("{}auth={auth}", "p".repeat(pad)),
        )
    } else {
        ("200 OK", "application/json", echo.to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Standard base64 with padding (the form of HTTP Basic credentials).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value unique to this run, `prefix-<24 hex>`.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..24]
    )
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn secrets_client(daemon: &Daemon, token: &str, tenant: Option<&str>) -> SecretsClient {
    let mut auth = Auth::new(Some(token));
    if let Some(t) = tenant {
        auth = auth.with_tenant(t);
    }
    SecretServiceClient::with_interceptor(daemon.channel().await, auth)
}

async fn create_secret(
    client: &mut SecretsClient,
    name: &str,
    kind: &str,
    values: &[(&str, &str)],
) -> pb::Secret {
    expect_ok(
        client
            .create_secret(pb::CreateSecretRequest {
                name: name.to_owned(),
                r#type: kind.to_owned(),
                fields: fields(values),
            })
            .await,
        &format!("CreateSecret {name}"),
    )
}

async fn list_all_secrets(client: &mut SecretsClient) -> Vec<pb::Secret> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = expect_ok(
            client
                .list_secrets(pb::ListSecretsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                })
                .await,
            "ListSecrets",
        );
        all.extend(page.secrets);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The key id the daemon knows a token by (`Caller.key_id`).
async fn key_id_of(daemon: &Daemon, token: &str) -> String {
    let mut system = daemon.system(Some(token)).await;
    expect_ok(
        system.get_server_info(pb::GetServerInfoRequest {}).await,
        "GetServerInfo",
    )
    .caller
    .expect("ServerInfo.caller")
    .key_id
}

/// Asserts that none of `needles` occurs in `haystack`, naming `what`.
fn assert_absent(haystack: &str, needles: &[String], what: &str) {
    for n in needles {
        if let Some(at) = haystack.find(n.as_str()) {
            let start = at.saturating_sub(120);
            let end = (at + n.len() + 120).min(haystack.len());
            panic!(
                "secret value {n:?} found in {what}: …{}…",
                String::from_utf8_lossy(&haystack.as_bytes()[start..end])
            );
        }
    }
}

fn assert_bytes_absent(haystack: &[u8], needles: &[String], what: &str) {
    for n in needles {
        assert!(
            !haystack.windows(n.len()).any(|w| w == n.as_bytes()),
            "secret value {n:?} found in the bytes of {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Environments
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

const BASE_ENV: [(&str, &str); 4] = [
    ("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true"),
    ("MANTLE_ENGINE_LEASE_TTL", "2s"),
    ("MANTLE_ENGINE_POLL_INTERVAL", "200ms"),
    ("MANTLE_SHUTDOWN_GRACE_PERIOD", "20s"),
];

/// A daemon with a `*` key of tenant `default`, on its own data dir (and database).
struct Env {
    backend: Backend,
    daemon: Daemon,
    /// A `*` key of tenant `default`.
    token: String,
    operator: String,
    opts: DaemonOptions,
    db: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

async fn setup(backend: Backend, test: &str, extra: &[(&str, &str)]) -> Option<Env> {
    let dir = tempfile::Builder::new()
        .prefix("mantle-secrets-")
        .tempdir()
        .expect("tempdir");
    let (mut opts, db) = match backend {
        Backend::Sqlite => (DaemonOptions::sqlite(), None),
        Backend::Postgres => {
            let db = PgDatabase::create(&format!("{test}_on_postgres")).await?;
            (DaemonOptions::postgres(db.url.clone()), Some(db))
        }
    };
    opts.data_dir = Some(dir.path().join("data"));
    for (k, v) in BASE_ENV.iter().chain(extra) {
        opts = opts.env(*k, *v);
    }
    let daemon = Daemon::start_ok(opts.clone()).await;
    let operator = match &db {
        None => daemon.operator_token(),
        Some(db) => admin_key_create(&db.url, "it-operator").await,
    };
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    Some(Env {
        backend,
        daemon,
        token,
        operator,
        opts,
        db,
        _dir: dir,
    })
}

impl Env {
    async fn m(&self) -> Mantle {
        Mantle::connect(&self.daemon, &self.token).await
    }

    async fn secrets(&self) -> SecretsClient {
        secrets_client(&self.daemon, &self.token, None).await
    }

    /// SIGTERM; the daemon must exit 0.
    async fn stop(&mut self) {
        let status = self
            .daemon
            .sigterm(Duration::from_secs(30))
            .await
            .expect("SIGTERM");
        assert!(
            status.is_some_and(|s| s.success()),
            "daemon did not exit 0 after SIGTERM: {status:?}\n{}",
            self.daemon.diagnostics()
        );
    }

    async fn restart(&mut self) {
        self.daemon = Daemon::start_ok(self.opts.clone()).await;
    }

    fn sqlite_path(&self) -> PathBuf {
        self.daemon.data_dir().join("mantle.db")
    }

    async fn sqlite(&self) -> sqlx::SqliteConnection {
        let url = format!("sqlite://{}", self.sqlite_path().display());
        sqlx::SqliteConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"))
    }

    async fn pg(&self) -> sqlx::PgConnection {
        self.db.as_ref().expect("a PostgreSQL env").connect().await
    }

    /// Runs a query whose columns are all text (cast them in `pg`/`sqlite`); SQLite
    /// queries need the daemon stopped.
    async fn text_rows(&self, pg: &str, sqlite: &str) -> Vec<Vec<String>> {
        match self.backend {
            Backend::Postgres => {
                let mut c = self.pg().await;
                sqlx::query(sqlx::AssertSqlSafe(pg.to_owned()))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{pg}: {e}"))
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.try_get::<Option<String>, _>(i)
                                    .unwrap()
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .collect()
            }
            Backend::Sqlite => {
                let mut c = self.sqlite().await;
                sqlx::query(sqlx::AssertSqlSafe(sqlite.to_owned()))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sqlite}: {e}"))
                    .iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                r.try_get::<Option<String>, _>(i)
                                    .unwrap()
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// Executes a statement without parameters on the database.
    async fn execute(&self, sql: &str) -> u64 {
        match self.backend {
            Backend::Postgres => {
                let mut c = self.pg().await;
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .rows_affected()
            }
            Backend::Sqlite => {
                let mut c = self.sqlite().await;
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .rows_affected()
            }
        }
    }

    /// Flips one bit of the first byte of a secret's ciphertext in the database.
    async fn flip_ciphertext_byte(&self, tenant: &str, name: &str) {
        let select = "SELECT s.ciphertext FROM secrets s JOIN tenants t ON t.id = s.tenant_id \
                      WHERE t.name = $1 AND s.name = $2";
        let update = "UPDATE secrets SET ciphertext = $1 \
                      WHERE name = $2 AND tenant_id = (SELECT id FROM tenants WHERE name = $3)";
        let affected = match self.backend {
            Backend::Postgres => {
                let mut c = self.pg().await;
                let mut ct: Vec<u8> = sqlx::query_scalar(select)
                    .bind(tenant)
                    .bind(name)
                    .fetch_one(&mut c)
                    .await
                    .expect("reading the ciphertext");
                ct[0] ^= 1;
                sqlx::query(update)
                    .bind(ct)
                    .bind(name)
                    .bind(tenant)
                    .execute(&mut c)
                    .await
                    .expect("writing the ciphertext")
                    .rows_affected()
            }
            Backend::Sqlite => {
                let mut c = self.sqlite().await;
                let mut ct: Vec<u8> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(select.replace('$', "?")))
                        .bind(tenant)
                        .bind(name)
                        .fetch_one(&mut c)
                        .await
                        .expect("reading the ciphertext");
                ct[0] ^= 1;
                sqlx::query(sqlx::AssertSqlSafe(update.replace('$', "?")))
                    .bind(ct)
                    .bind(name)
                    .bind(tenant)
                    .execute(&mut c)
                    .await
                    .expect("writing the ciphertext")
                    .rows_affected()
            }
        };
        assert_eq!(affected, 1, "flipping a byte of {tenant}/{name}");
    }

    /// `mantlectl ARGS -o json` with the `*` key; must succeed.
    async fn mantlectl_json(&self, args: &[&str]) -> String {
        let home = tempfile::tempdir().expect("home");
        let mut cmd = mantlectl_command(home.path());
        cmd.env("MANTLE_DATA_DIR", home.path().join("no-data"))
            .arg("--address")
            .arg(self.daemon.addr.to_string())
            .arg("--token")
            .arg(&self.token)
            .args(args)
            .args(["-o", "json"]);
        let output = run_with_timeout(cmd, Duration::from_secs(30))
            .await
            .expect("mantlectl");
        assert!(output.status.success(), "{}", describe_output(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

/// Runs a scenario on SQLite and on PostgreSQL: `<name>::sqlite`, `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both_backends!(
    secrets_redacted_everywhere,
    secrets_missing_or_wrong_type,
    secrets_tampering_and_tenant_binding,
    secrets_audit,
);

// ---------------------------------------------------------------------------------------------
// a. Redaction end to end
// ---------------------------------------------------------------------------------------------

const LEAK: &str = r#"
name: leak
steps:
  - name: bearer
    action: http/request
    credential: api-token
    params:
      url: "BASE/echo/bearer"
      method: POST
      json: {note: hello}
  - name: basic
    action: http/request
    credential: basic-cred
    params:
      url: "BASE/echo/basic"
  - name: header
    action: http/request
    credential: header-cred
    params:
      url: "BASE/echo/header"
  - name: log
    action: core/log
    params:
      message: "bearer={{ steps.bearer.output.body.headers.authorization }} basic={{ steps.basic.output.body.headers.authorization }} header={{ steps.header.output.body.headers['x-api-key'] }}"
  - name: copy
    action: core/set
    params:
      bearer: "{{ steps.bearer.output.body.headers.authorization }}"
      basic: "{{ steps.basic.output.body.headers.authorization }}"
      header: "{{ steps.header.output.body.headers['x-api-key'] }}"
      logged: "{{ steps.log.output.message }}"
outputs:
  bearer: steps.copy.output.bearer
  basic: steps.copy.output.basic
  header: steps.copy.output.header
  logged: steps.copy.output.logged
"#;

const LEAK_ERROR: &str = r#"
name: leak-error
steps:
  - name: rejected
    action: http/request
    credential: api-token
    params:
      url: "BASE/fail"
"#;

async fn secrets_redacted_everywhere(backend: Backend) {
    let Some(mut env) = setup(
        backend,
        "secrets_redacted_everywhere",
        &[("MANTLE_LOG_LEVEL", "debug")],
    )
    .await
    else {
        return;
    };
    let echo = Echo::start(Duration::ZERO).await;
    let token = unique("tok");
    let user = unique("user");
    let password = unique("pass");
    let header_value = unique("hdr");
    let basic = base64(format!("{user}:{password}").as_bytes());
    let needles = vec![
        token.clone(),
        user.clone(),
        password.clone(),
        basic.clone(),
        header_value.clone(),
    ];

    let mut secrets = env.secrets().await;
    create_secret(&mut secrets, "api-token", "bearer", &[("token", &token)]).await;
    create_secret(
        &mut secrets,
        "basic-cred",
        "basic",
        &[("username", &user), ("password", &password)],
    )
    .await;
    create_secret(
        &mut secrets,
        "header-cred",
        "header",
        &[("name", "X-Api-Key"), ("value", &header_value)],
    )
    .await;

    let mut m = env.m().await;
    m.apply(&LEAK.replace("BASE", &echo.base())).await;
    m.apply(&LEAK_ERROR.replace("BASE", &echo.base())).await;
    let (ok, ok_attempts) = m.run("leak", "", WAIT).await;
    assert_eq!(
        ok.status,
        Ex::Completed as i32,
        "{ok:?}\n{}",
        describe_attempts(&ok_attempts)
    );
    let (failed, failed_attempts) = m.run("leak-error", "", WAIT).await;
    assert_eq!(failed.status, Ex::Failed as i32, "{failed:?}");

    // The echo server did receive the real credentials.
    let seen = echo.seen();
    let header_of = |path: &str, name: &str| {
        seen.iter()
            .find(|s| s.path == path)
            .and_then(|s| s.headers.get(name).cloned())
            .unwrap_or_else(|| panic!("no request to {path} with {name}: {seen:?}"))
    };
    assert_eq!(
        header_of("/echo/bearer", "authorization"),
        format!("Bearer {token}")
    );
    assert_eq!(
        header_of("/echo/basic", "authorization"),
        format!("Basic {basic}")
    );
    assert_eq!(header_of("/echo/header", "x-api-key"), header_value);
    assert_eq!(
        header_of("/fail", "authorization"),
        format!("Bearer {token}")
    );

    // Outputs carry `***` where the values were.
    let outputs = json(&ok.outputs_json);
    assert_eq!(
        outputs,
        json!({
            "bearer": "Bearer ***",
            "basic": "Basic ***",
            "header": "***",
            "logged": "bearer=Bearer *** basic=Basic *** header=***",
        })
    );
    let bearer_output = json(&only_attempt(&ok_attempts, "bearer").output_json);
    assert_eq!(
        bearer_output["body"]["headers"]["authorization"],
        "Bearer ***"
    );
    let rejected = only_attempt(&failed_attempts, "rejected");
    assert_eq!(rejected.status, St::Failed as i32);
    assert!(
        rejected.error.contains("Bearer ***") && rejected.error.contains("answered 400"),
        "{}",
        rejected.error
    );
    assert!(failed.error.contains("***"), "{}", failed.error);

    // GetExecution, ListStepAttempts, WatchExecution.
    let mut everything = String::new();
    for (execution, attempts) in [(&ok, &ok_attempts), (&failed, &failed_attempts)] {
        let again = m.get(&execution.id).await;
        everything += &format!("{again:?}\n{attempts:?}\n");
        let events = m
            .watch(&execution.id, 0, WAIT)
            .await
            .expect("WatchExecution");
        everything += &format!("{events:?}\n");
        if execution.id == ok.id {
            let logs: Vec<&str> = events
                .iter()
                .filter(|e| e.kind == pb::execution_event::Kind::Log as i32)
                .map(|e| e.message.as_str())
                .collect();
            assert_eq!(
                logs,
                ["bearer=Bearer *** basic=Basic *** header=***"],
                "{events:?}"
            );
        } else {
            assert!(
                events.iter().any(|e| e.message.contains("Bearer ***")),
                "the failure event shows the redacted error: {events:?}"
            );
        }
    }
    assert_absent(&everything, &needles, "the API's answers");

    // mantlectl status/logs -o json.
    for id in [&ok.id, &failed.id] {
        let status = env.mantlectl_json(&["status", id]).await;
        assert!(status.contains("***"), "{status}");
        assert_absent(&status, &needles, "mantlectl status -o json");
        let logs = env.mantlectl_json(&["logs", id]).await;
        assert_absent(&logs, &needles, "mantlectl logs -o json");
        if *id == ok.id {
            assert!(logs.contains("Bearer ***"), "{logs}");
        }
    }

    // The database.
    match backend {
        Backend::Postgres => {
            let mut c = env.pg().await;
            for table in ["executions", "step_attempts", "execution_events", "secrets"] {
                let text: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT string_agg(t::text, E'\\n') FROM {table} t"
                )))
                .fetch_one(&mut c)
                .await
                .unwrap_or_else(|e| panic!("reading {table}: {e}"));
                let text = text.unwrap_or_default();
                assert!(!text.is_empty(), "{table} is empty");
                assert_absent(&text, &needles, &format!("PostgreSQL table {table}"));
                let hex_needles: Vec<String> = needles.iter().map(|n| hex(n.as_bytes())).collect();
                assert_absent(
                    &text,
                    &hex_needles,
                    &format!("PostgreSQL table {table} (hex)"),
                );
                if table == "step_attempts" || table == "execution_events" {
                    assert!(text.contains("***"), "{table} holds no `***`:\n{text}");
                }
            }
        }
        Backend::Sqlite => {
            // Stop first: the bytes then include everything the WAL held.
            env.stop().await;
            let dir = env.daemon.data_dir().to_owned();
            let mut searched = Vec::new();
            let mut stars = false;
            for entry in std::fs::read_dir(&dir).expect("data dir") {
                let path = entry.expect("entry").path();
                if path.is_file() {
                    let bytes = std::fs::read(&path).expect("reading a data file");
                    assert_bytes_absent(&bytes, &needles, &path.display().to_string());
                    stars |= bytes.windows(3).any(|w| w == b"***");
                    searched.push(path);
                }
            }
            assert!(
                searched.iter().any(|p| p.ends_with("mantle.db")),
                "{searched:?}"
            );
            assert!(stars, "no data file holds `***`: {searched:?}");
            for (table, column) in [("step_attempts", "output"), ("execution_events", "message")] {
                let rows = env
                    .text_rows(
                        "",
                        &format!("SELECT group_concat({column}, char(10)) FROM {table}"),
                    )
                    .await;
                let text = rows.concat().concat();
                assert!(
                    text.contains("***"),
                    "{table}.{column} holds no `***`: {text}"
                );
                assert_absent(&text, &needles, &format!("SQLite {table}.{column}"));
            }
        }
    }

    // The daemon's log (at debug level).
    let log = env.daemon.stderr();
    assert!(!log.is_empty(), "the daemon logged nothing");
    assert_absent(&log, &needles, "the daemon's stderr log");
}

/// An error that quotes the response body is truncated to 200 characters; a value cut in
/// two by the truncation must not show its first part either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_redacted_in_truncated_errors() {
    let Some(env) = setup(Backend::Sqlite, "secrets_redacted_in_truncated_errors", &[]).await
    else {
        return;
    };
    let echo = Echo::start(Duration::ZERO).await;
    let token = unique("tok");
    let mut secrets = env.secrets().await;
    create_secret(&mut secrets, "api-token", "bearer", &[("token", &token)]).await;
    // Body: 170 padding characters, `auth=Bearer ` (12), then the token: its first 18
    // characters fall inside the 200 the error quotes.
    let source = LEAK_ERROR
        .replace("BASE/fail", &format!("{}/cut?pad=170", echo.base()))
        .replace("leak-error", "cut");
    let mut m = env.m().await;
    m.apply(&source).await;
    let (execution, attempts) = m.run("cut", "", WAIT).await;
    assert_eq!(execution.status, Ex::Failed as i32);
    let error = &only_attempt(&attempts, "rejected").error;
    assert!(error.contains("answered 400"), "{error}");
    assert_absent(
        &format!("{error}\n{}", execution.error),
        &[token[..12].to_owned()],
        "a truncated error (the start of the token)",
    );
}

// ---------------------------------------------------------------------------------------------
// b. Missing credential, wrong type
// ---------------------------------------------------------------------------------------------

const USE_CREDENTIAL: &str = r#"
name: NAME
steps:
  - name: call
    action: http/request
    credential: CREDENTIAL
    params:
      url: "BASE/echo"
"#;

fn use_credential(name: &str, credential: &str, base: &str) -> String {
    USE_CREDENTIAL
        .replace("NAME", name)
        .replace("CREDENTIAL", credential)
        .replace("BASE", base)
}

async fn secrets_missing_or_wrong_type(backend: Backend) {
    let Some(env) = setup(backend, "secrets_missing_or_wrong_type", &[]).await else {
        return;
    };
    let echo = Echo::start(Duration::ZERO).await;
    let mut secrets = env.secrets().await;
    let key_value = unique("openai");
    create_secret(&mut secrets, "llm", "openai", &[("api_key", &key_value)]).await;
    create_secret(&mut secrets, "gone", "bearer", &[("token", &unique("t"))]).await;
    let mut m = env.m().await;
    m.apply(&use_credential("missing", "x", &echo.base())).await;
    m.apply(&use_credential("wrong-type", "llm", &echo.base()))
        .await;
    m.apply(&use_credential("deleted", "gone", &echo.base()))
        .await;

    let (execution, attempts) = m.run("missing", "", WAIT).await;
    assert_eq!(execution.status, Ex::Failed as i32);
    let error = &only_attempt(&attempts, "call").error;
    assert!(error.contains(r#"credential "x" not found"#), "{error}");
    assert!(
        execution.error.contains(r#"credential "x" not found"#),
        "{}",
        execution.error
    );

    let (execution, attempts) = m.run("wrong-type", "", WAIT).await;
    assert_eq!(execution.status, Ex::Failed as i32);
    let error = &only_attempt(&attempts, "call").error;
    assert!(
        error.contains(r#"credential "llm" has type openai"#)
            && error.contains("http/request uses bearer, basic or header credentials"),
        "{error}"
    );
    assert!(!error.contains(&key_value), "{error}");

    // A deleted secret is missing from then on.
    expect_ok(
        secrets
            .delete_secret(pb::DeleteSecretRequest {
                name: "gone".into(),
            })
            .await,
        "DeleteSecret",
    );
    let (execution, attempts) = m.run("deleted", "", WAIT).await;
    assert_eq!(execution.status, Ex::Failed as i32);
    assert!(
        only_attempt(&attempts, "call")
            .error
            .contains(r#"credential "gone" not found"#),
        "{}",
        describe_attempts(&attempts)
    );
    assert!(
        echo.seen().is_empty(),
        "no request was sent: {:?}",
        echo.seen()
    );

    // An action that takes no credential refuses one when the file is validated.
    let refused = m
        .defs
        .apply_definition(pb::ApplyDefinitionRequest {
            source: "name: logcred\nsteps:\n  - name: l\n    action: core/log\n    credential: llm\n    params: {message: hi}\n".into(),
            filename: "logcred.yaml".into(),
        })
        .await;
    assert_code(
        refused,
        tonic::Code::InvalidArgument,
        "credential on core/log",
    );
}

// ---------------------------------------------------------------------------------------------
// c. Rotation under load (PostgreSQL)
// ---------------------------------------------------------------------------------------------

/// What the echo server must see for one secret.
#[derive(Debug, Clone)]
enum Expect {
    Authorization(String),
    ApiKey(String),
}

/// Creates `count` secrets in `tenant` (bearer, basic and header in turn) and returns what
/// a request using each must carry, by name.
async fn create_many(
    client: &mut SecretsClient,
    tenant: &str,
    count: usize,
) -> (BTreeMap<String, Expect>, String) {
    let mut expected = BTreeMap::new();
    let mut key_id = String::new();
    for i in 0..count {
        let name = format!("s{i:03}");
        let value = unique(&format!("{tenant}-{i}"));
        let secret = match i % 3 {
            0 => {
                expected.insert(
                    name.clone(),
                    Expect::Authorization(format!("Bearer {value}")),
                );
                create_secret(client, &name, "bearer", &[("token", &value)]).await
            }
            1 => {
                let user = format!("u{i}-{tenant}");
                expected.insert(
                    name.clone(),
                    Expect::Authorization(format!(
                        "Basic {}",
                        base64(format!("{user}:{value}").as_bytes())
                    )),
                );
                create_secret(
                    client,
                    &name,
                    "basic",
                    &[("username", &user), ("password", &value)],
                )
                .await
            }
            _ => {
                expected.insert(name.clone(), Expect::ApiKey(value.clone()));
                create_secret(
                    client,
                    &name,
                    "header",
                    &[("name", "X-Api-Key"), ("value", &value)],
                )
                .await
            }
        };
        key_id = secret.key_id;
    }
    (expected, key_id)
}

/// A workflow of five chained http/request steps, each using one of the tenant's secrets
/// and calling `/slow/<tenant>/<secret>`.
fn five_calls(tenant: &str, base: &str) -> String {
    let mut source = String::from("name: five-calls\nsteps:\n");
    for i in 0..5 {
        source += &format!(
            "  - name: call{i}\n    action: http/request\n    credential: s{i:03}\n    params:\n      url: \"{base}/slow/{tenant}/s{i:03}\"\n"
        );
        if i > 0 {
            source += &format!("    depends_on: [call{}]\n", i - 1);
        }
    }
    source
}

/// A workflow with one http/request step per secret (`count` of them, in parallel), each
/// calling `/all/<tenant>/<secret>`.
fn all_calls(tenant: &str, base: &str, count: usize) -> String {
    let mut source = String::from("name: all-calls\nsteps:\n");
    for i in 0..count {
        source += &format!(
            "  - name: call{i}\n    action: http/request\n    credential: s{i:03}\n    params:\n      url: \"{base}/all/{tenant}/s{i:03}\"\n"
        );
    }
    source
}

/// Every request to `/slow|all/<tenant>/<secret>` carried that secret's values.
fn check_seen(echo: &Echo, expected: &HashMap<String, BTreeMap<String, Expect>>) -> usize {
    let seen = echo.seen();
    for s in &seen {
        let mut parts = s.path.trim_start_matches('/').split('/').skip(1);
        let (tenant, name) = (parts.next().unwrap(), parts.next().unwrap());
        match &expected[tenant][name] {
            Expect::Authorization(v) => assert_eq!(
                s.headers.get("authorization"),
                Some(v),
                "request to {}",
                s.path
            ),
            Expect::ApiKey(v) => {
                assert_eq!(s.headers.get("x-api-key"), Some(v), "request to {}", s.path)
            }
        }
    }
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_rotation_under_load() {
    let Some(db) = PgDatabase::create("secrets_rotation_under_load").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut base = DaemonOptions::postgres(db.url.clone());
    base.data_dir = Some(dir.path().join("data"));
    for (k, v) in BASE_ENV {
        base = base.env(k, v);
    }
    let with_keys = |current: &str, previous: &str| {
        base.clone()
            .env("MANTLE_ENCRYPTION_KEY", current)
            .env("MANTLE_ENCRYPTION_KEY_PREVIOUS", previous)
    };

    let mut daemon = Daemon::start_ok(with_keys(K1, "")).await;
    let operator = admin_key_create(&db.url, "it-operator").await;
    let echo = Echo::start(Duration::from_millis(400)).await;
    let tenants: Vec<String> = (0..3).map(|i| random_name(&format!("rot{i}"))).collect();
    let mut expected = HashMap::new();
    let mut k1_id = String::new();
    let mut keys = HashMap::new();
    for tenant in &tenants {
        create_tenant(&daemon, &operator, tenant).await;
        let key = create_api_key(&daemon, &operator, tenant, &["*"]).await;
        let mut client = secrets_client(&daemon, &key, None).await;
        let (e, id) = create_many(&mut client, tenant, 100).await;
        expected.insert(tenant.clone(), e);
        k1_id = id;
        let mut m = Mantle::connect(&daemon, &key).await;
        m.apply(&five_calls(tenant, &echo.base())).await;
        m.apply(&all_calls(tenant, &echo.base(), 100)).await;
        keys.insert(tenant.clone(), key);
    }

    // 30 executions, 10 per tenant, each five calls of 400 ms in a row.
    let mut started = Vec::new();
    for tenant in &tenants {
        let mut m = Mantle::connect(&daemon, &keys[tenant]).await;
        for _ in 0..10 {
            started.push((tenant.clone(), m.start_ok("five-calls", "").await.id));
        }
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            echo.seen().len() >= 10
        })
        .await,
        "the executions did not start calling"
    );

    // Restart with K2, K1 as the previous key, while they run.
    let status = daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("SIGTERM");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let daemon = Daemon::start_ok(with_keys(K2, K1)).await;
    let mut running = 0;
    for (tenant, id) in &started {
        let mut m = Mantle::connect(&daemon, &keys[tenant]).await;
        if !is_terminal_status(m.get(id).await.status) {
            running += 1;
        }
    }
    assert!(running > 0, "every execution finished before the rotation");

    let mut admin = secrets_client(&daemon, &operator, None).await;
    let rotation = expect_ok(
        admin
            .rotate_encryption_key(pb::RotateEncryptionKeyRequest { batch_size: 50 })
            .await,
        "RotateEncryptionKey",
    );
    assert_ne!(rotation.key_id, k1_id);
    let k2_id = rotation.key_id.clone();
    assert_eq!(
        (rotation.rotated, rotation.remaining),
        (300, 0),
        "{rotation:?}"
    );
    // A second call has nothing left to do.
    let again = expect_ok(
        admin
            .rotate_encryption_key(pb::RotateEncryptionKeyRequest { batch_size: 50 })
            .await,
        "RotateEncryptionKey again",
    );
    assert_eq!(
        (again.key_id.as_str(), again.rotated, again.remaining),
        (k2_id.as_str(), 0, 0)
    );

    for (tenant, id) in &started {
        let mut m = Mantle::connect(&daemon, &keys[tenant]).await;
        let done = m.wait_terminal(id, WAIT).await;
        let attempts = m.attempts(id).await;
        assert_eq!(
            done.status,
            Ex::Completed as i32,
            "{done:?}\n{}",
            describe_attempts(&attempts)
        );
    }
    let calls = check_seen(&echo, &expected);
    assert!(calls >= 150, "only {calls} calls were made");

    for tenant in &tenants {
        let mut client = secrets_client(&daemon, &keys[tenant], None).await;
        let all = list_all_secrets(&mut client).await;
        assert_eq!(all.len(), 100);
        for s in &all {
            assert_eq!(s.key_id, k2_id, "{tenant}/{}", s.name);
        }
        let one = expect_ok(
            client
                .get_secret(pb::GetSecretRequest {
                    name: "s042".into(),
                })
                .await,
            "GetSecret",
        );
        assert_eq!(one.key_id, k2_id);
    }
    drop(daemon);

    // K2 alone: starts, and every secret still opens.
    let mut daemon = Daemon::start_ok(with_keys(K2, "")).await;
    let before = echo.seen().len();
    for tenant in &tenants {
        let mut m = Mantle::connect(&daemon, &keys[tenant]).await;
        let (done, attempts) = m.run("five-calls", "", WAIT).await;
        assert_eq!(
            done.status,
            Ex::Completed as i32,
            "{done:?}\n{}",
            describe_attempts(&attempts)
        );
    }
    assert_eq!(check_seen(&echo, &expected), before + 15);
    // Every one of the 300 secrets opens with K2 alone.
    for tenant in &tenants {
        let mut m = Mantle::connect(&daemon, &keys[tenant]).await;
        let (done, attempts) = m.run("all-calls", "", WAIT).await;
        assert_eq!(
            done.status,
            Ex::Completed as i32,
            "{done:?}\n{}",
            describe_attempts(&attempts)
        );
    }
    assert_eq!(check_seen(&echo, &expected), before + 15 + 300);
    let status = daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("SIGTERM");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // K1 alone: refused, one line naming both key ids.
    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATABASE_URL", &db.url)
        .env("MANTLE_DATA_DIR", dir.path().join("data"))
        .env("MANTLE_ENCRYPTION_KEY", K1);
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&k1_id) && lines[0].contains(&k2_id),
        "the error names both key ids ({k1_id}, {k2_id}): {}",
        lines[0]
    );
    assert!(!stderr.contains(K1), "the key itself is printed: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// d. Backup and recovery (PostgreSQL)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_backup_and_restore() {
    let (Some(pg_dump), Some(pg_restore)) = (pg_tool("pg_dump"), pg_tool("pg_restore")) else {
        if in_ci() {
            panic!("secrets_backup_and_restore: pg_dump/pg_restore not found (CI=true)");
        }
        eprintln!(
            "\n*** SKIPPED secrets_backup_and_restore: pg_dump/pg_restore not found in \
             /usr/lib/postgresql/*/bin or PATH.\n"
        );
        return;
    };
    let Some(source) = PgDatabase::create("secrets_backup_and_restore").await else {
        return;
    };
    let Some(restored) = PgDatabase::create("secrets_backup_and_restore_target").await else {
        return;
    };
    let echo = Echo::start(Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = |url: &str, key: &str, data: &str| {
        let mut o = DaemonOptions::postgres(url)
            .env("MANTLE_ENCRYPTION_KEY", key)
            .env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true");
        o.data_dir = Some(dir.path().join(data));
        o
    };

    let mut daemon = Daemon::start_ok(opts(&source.url, K1, "a")).await;
    let operator = admin_key_create(&source.url, "it-operator").await;
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let value = unique("backup-token");
    let mut secrets = secrets_client(&daemon, &token, None).await;
    create_secret(&mut secrets, "api-token", "bearer", &[("token", &value)]).await;
    Mantle::connect(&daemon, &token)
        .await
        .apply(&use_credential("call", "api-token", &echo.base()))
        .await;
    let status = daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("SIGTERM");
    assert!(status.is_some_and(|s| s.success()));

    let dump = dir.path().join("mantle.dump");
    let mut cmd = Command::new(&pg_dump);
    cmd.args(["-Fc", "-d", &source.url, "-f"]).arg(&dump);
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .expect("pg_dump");
    assert!(
        output.status.success(),
        "pg_dump: {}",
        describe_output(&output)
    );
    let bytes = std::fs::read(&dump).expect("the dump");
    assert_bytes_absent(&bytes, std::slice::from_ref(&value), "the pg_dump file");
    let mut cmd = Command::new(&pg_restore);
    cmd.args(["--no-owner", "-d", &restored.url]).arg(&dump);
    let output = run_with_timeout(cmd, Duration::from_secs(60))
        .await
        .expect("pg_restore");
    assert!(
        output.status.success(),
        "pg_restore: {}",
        describe_output(&output)
    );

    // The same key: the restored secret works.
    let daemon = Daemon::start_ok(opts(&restored.url, K1, "b")).await;
    let mut m = Mantle::connect(&daemon, &token).await;
    let (done, attempts) = m.run("call", "", WAIT).await;
    assert_eq!(
        done.status,
        Ex::Completed as i32,
        "{done:?}\n{}",
        describe_attempts(&attempts)
    );
    let seen = echo.seen();
    assert_eq!(
        seen.last().and_then(|s| s.headers.get("authorization")),
        Some(&format!("Bearer {value}"))
    );
    drop(daemon);

    // Another key: refused.
    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATABASE_URL", &restored.url)
        .env("MANTLE_DATA_DIR", dir.path().join("c"))
        .env("MANTLE_ENCRYPTION_KEY", K2);
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("MANTLE_ENCRYPTION_KEY"), "{}", lines[0]);
    assert!(lines[0].contains("key id"), "{}", lines[0]);
}

// ---------------------------------------------------------------------------------------------
// e. Tampering and isolation at the storage level; key configuration
// ---------------------------------------------------------------------------------------------

async fn secrets_tampering_and_tenant_binding(backend: Backend) {
    let Some(mut env) = setup(backend, "secrets_tampering_and_tenant_binding", &[]).await else {
        return;
    };
    let echo = Echo::start(Duration::ZERO).await;
    let tenant_b = random_name("tb");
    create_tenant(&env.daemon, &env.operator, &tenant_b).await;
    let token_b = create_api_key(&env.daemon, &env.operator, &tenant_b, &["*"]).await;
    let a_value = unique("a-token");
    let mut a = env.secrets().await;
    create_secret(&mut a, "shared", "bearer", &[("token", &a_value)]).await;
    create_secret(&mut a, "flipped", "bearer", &[("token", &unique("f"))]).await;
    let mut b = secrets_client(&env.daemon, &token_b, None).await;
    create_secret(&mut b, "shared", "bearer", &[("token", &unique("b-token"))]).await;
    env.m()
        .await
        .apply(&use_credential("use-flipped", "flipped", &echo.base()))
        .await;
    Mantle::connect(&env.daemon, &token_b)
        .await
        .apply(&use_credential("use-shared", "shared", &echo.base()))
        .await;

    // SQLite is changed with the daemon stopped; PostgreSQL the same way for symmetry.
    env.stop().await;
    env.flip_ciphertext_byte("default", "flipped").await;
    let copied = env
        .execute(&format!(
            "UPDATE secrets SET (ciphertext, nonce, key_id) = \
             (SELECT s.ciphertext, s.nonce, s.key_id FROM secrets s JOIN tenants t \
              ON t.id = s.tenant_id WHERE t.name = 'default' AND s.name = 'shared') \
             WHERE name = 'shared' AND tenant_id = (SELECT id FROM tenants WHERE name = '{tenant_b}')"
        ))
        .await;
    assert_eq!(copied, 1);
    env.restart().await;

    let mut m = env.m().await;
    let (done, attempts) = m.run("use-flipped", "", WAIT).await;
    assert_eq!(done.status, Ex::Failed as i32);
    let error = &only_attempt(&attempts, "call").error;
    assert!(
        error.contains(r#"credential "flipped""#) && error.contains("altered"),
        "{error}"
    );

    let mut mb = Mantle::connect(&env.daemon, &token_b).await;
    let (done, attempts) = mb.run("use-shared", "", WAIT).await;
    assert_eq!(done.status, Ex::Failed as i32);
    let error = &only_attempt(&attempts, "call").error;
    assert!(
        error.contains(r#"credential "shared""#) && error.contains("altered"),
        "{error}"
    );
    assert!(!error.contains(&a_value));
    assert!(echo.seen().is_empty(), "{:?}", echo.seen());

    // Tenant A's own secret still works.
    env.m()
        .await
        .apply(&use_credential("use-shared-a", "shared", &echo.base()))
        .await;
    let (done, _) = m.run("use-shared-a", "", WAIT).await;
    assert_eq!(done.status, Ex::Completed as i32, "{done:?}");
    assert_eq!(
        echo.seen()[0].headers.get("authorization"),
        Some(&format!("Bearer {a_value}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_malformed_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = format!("{}z", &K1[..62]);
    assert_eq!(bad.len(), 63);
    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATA_DIR", dir.path())
        .env("MANTLE_ENCRYPTION_KEY", &bad);
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("MANTLE_ENCRYPTION_KEY") && lines[0].contains("63"),
        "{}",
        lines[0]
    );
    assert!(!stderr.contains(&bad), "the key is echoed: {stderr}");

    // 64 characters that are not all hexadecimal.
    let bad = format!("{}zz", &K1[..62]);
    let mut cmd = mantle_command();
    cmd.env("MANTLE_DATA_DIR", dir.path())
        .env("MANTLE_ENCRYPTION_KEY", K2)
        .env("MANTLE_ENCRYPTION_KEY_PREVIOUS", &bad);
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        lines.len() == 1 && lines[0].contains("MANTLE_ENCRYPTION_KEY_PREVIOUS"),
        "{stderr}"
    );
    assert!(!stderr.contains(&bad), "the key is echoed: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_postgres_requires_a_key() {
    let Some(db) = PgDatabase::create("secrets_postgres_requires_a_key").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = mantle_command();
    cmd.env_remove("MANTLE_ENCRYPTION_KEY")
        .env("MANTLE_DATABASE_URL", &db.url)
        .env("MANTLE_DATA_DIR", dir.path());
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("MANTLE_ENCRYPTION_KEY is required with PostgreSQL"),
        "{}",
        lines[0]
    );
    assert!(
        !dir.path().join("encryption-key").exists(),
        "no key file is generated for PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sqlite_generates_and_reuses_a_key_file() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut opts = DaemonOptions::sqlite()
        .env("MANTLE_ENCRYPTION_KEY", "")
        .env("MANTLE_HTTP_ALLOW_PRIVATE_NETWORKS", "true");
    opts.data_dir = Some(data.clone());
    let echo = Echo::start(Duration::ZERO).await;

    let mut daemon = Daemon::start_ok(opts.clone()).await;
    let key_file = data.join("encryption-key");
    let meta = std::fs::metadata(&key_file).expect("the generated key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).expect("key file");
    assert_eq!(key.trim().len(), 64, "{key:?}");
    assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        daemon.stderr().contains("generated an encryption key"),
        "{}",
        daemon.stderr()
    );
    assert!(!daemon.stderr().contains(key.trim()), "the key is logged");

    let operator = daemon.operator_token();
    let token = create_api_key(&daemon, &operator, "default", &["*"]).await;
    let value = unique("sqlite-token");
    let mut secrets = secrets_client(&daemon, &token, None).await;
    let created = create_secret(&mut secrets, "api-token", "bearer", &[("token", &value)]).await;
    Mantle::connect(&daemon, &token)
        .await
        .apply(&use_credential("call", "api-token", &echo.base()))
        .await;
    let status = daemon
        .sigterm(Duration::from_secs(30))
        .await
        .expect("SIGTERM");
    assert!(status.is_some_and(|s| s.success()));

    // Restart: the same file, the same key, the secret still opens.
    let daemon = Daemon::start_ok(opts).await;
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    let mut secrets = secrets_client(&daemon, &token, None).await;
    let got = expect_ok(
        secrets
            .get_secret(pb::GetSecretRequest {
                name: "api-token".into(),
            })
            .await,
        "GetSecret",
    );
    assert_eq!(got.key_id, created.key_id);
    let mut m = Mantle::connect(&daemon, &token).await;
    let (done, attempts) = m.run("call", "", WAIT).await;
    assert_eq!(
        done.status,
        Ex::Completed as i32,
        "{done:?}\n{}",
        describe_attempts(&attempts)
    );
    assert_eq!(
        echo.seen()[0].headers.get("authorization"),
        Some(&format!("Bearer {value}"))
    );
    drop(daemon);

    // A damaged key file is reported, naming the file.
    std::fs::write(&key_file, "not-a-key\n").unwrap();
    let mut cmd = mantle_command();
    cmd.env_remove("MANTLE_ENCRYPTION_KEY")
        .env("MANTLE_DATA_DIR", &data);
    let (code, lines, stderr) = serve_refused(cmd).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        lines.len() == 1 && lines[0].contains("encryption-key"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// f. Audit
// ---------------------------------------------------------------------------------------------

async fn secrets_audit(backend: Backend) {
    let Some(mut env) = setup(backend, "secrets_audit", &[]).await else {
        return;
    };
    let tenant_key_id = key_id_of(&env.daemon, &env.token).await;
    let operator_key_id = key_id_of(&env.daemon, &env.operator).await;
    let value = unique("audit-token");
    let mut secrets = env.secrets().await;
    create_secret(&mut secrets, "audited", "bearer", &[("token", &value)]).await;
    expect_ok(
        secrets
            .update_secret(pb::UpdateSecretRequest {
                name: "audited".into(),
                fields: fields(&[("token", &unique("audit-new"))]),
            })
            .await,
        "UpdateSecret",
    );
    expect_ok(
        secrets
            .delete_secret(pb::DeleteSecretRequest {
                name: "audited".into(),
            })
            .await,
        "DeleteSecret",
    );
    let mut admin = secrets_client(&env.daemon, &env.operator, None).await;
    let rotation = expect_ok(
        admin
            .rotate_encryption_key(pb::RotateEncryptionKeyRequest { batch_size: 0 })
            .await,
        "RotateEncryptionKey",
    );
    // Refused calls change nothing and are not recorded as changes.
    let reader = create_api_key(&env.daemon, &env.operator, "default", &["secrets:read"]).await;
    let mut r = secrets_client(&env.daemon, &reader, None).await;
    assert_code(
        r.create_secret(pb::CreateSecretRequest {
            name: "nope".into(),
            r#type: "bearer".into(),
            fields: fields(&[("token", "abcdef")]),
        })
        .await,
        tonic::Code::PermissionDenied,
        "CreateSecret without secrets:write",
    );

    if backend == Backend::Sqlite {
        env.stop().await;
    }
    let rows = env
        .text_rows(
            "SELECT actor, action, resource, time::text, result, coalesce(detail, '') \
             FROM audit_events WHERE action LIKE 'secret.%' OR action LIKE 'encryption_key.%' \
             ORDER BY time, id",
            "SELECT actor, action, resource, time, result, coalesce(detail, '') \
             FROM audit_events WHERE action LIKE 'secret.%' OR action LIKE 'encryption_key.%' \
             ORDER BY time, id",
        )
        .await;
    let summary: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    let expected = vec![
        (
            tenant_key_id.clone(),
            "secret.create".to_owned(),
            "secrets/audited".to_owned(),
        ),
        (
            tenant_key_id.clone(),
            "secret.update".to_owned(),
            "secrets/audited".to_owned(),
        ),
        (
            tenant_key_id.clone(),
            "secret.delete".to_owned(),
            "secrets/audited".to_owned(),
        ),
        (
            operator_key_id.clone(),
            "encryption_key.rotate".to_owned(),
            format!("encryption_keys/{}", rotation.key_id),
        ),
    ];
    assert_eq!(summary, expected, "{rows:?}");
    for row in &rows {
        assert!(!row[3].is_empty(), "an audit event without a time: {row:?}");
        assert_eq!(row[4], "OK");
        assert!(
            !row.join(" ").contains(&value),
            "a value in the audit log: {row:?}"
        );
    }
}

#[test]
fn base64_matches_the_standard() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"alice:hunter22"), "YWxpY2U6aHVudGVyMjI=");
}

// ---------------------------------------------------------------------------------------------
// mantlectl
// ---------------------------------------------------------------------------------------------

/// `mantlectl secrets …` against a daemon: values go in from a file or flags and never come
/// out, not even in errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_mantlectl_commands() {
    let Some(env) = setup(Backend::Sqlite, "secrets_mantlectl_commands", &[]).await else {
        return;
    };
    let home = tempfile::tempdir().expect("home");
    let run = |token: &str, args: &[&str]| {
        let mut cmd = mantlectl_command(home.path());
        cmd.env("MANTLE_DATA_DIR", home.path().join("no-data"))
            .arg("--address")
            .arg(env.daemon.addr.to_string())
            .arg("--token")
            .arg(token)
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(30))
    };
    let user = unique("cli-user");
    let password = unique("cli-pass");
    let file = home.path().join("github.yaml");
    std::fs::write(
        &file,
        format!("username: {user}\npassword: \"{password}\"\n"),
    )
    .unwrap();
    let needles = [user.clone(), password.clone()];

    let file_arg = file.display().to_string();
    let out = run(
        &env.token,
        &[
            "secrets",
            "create",
            "github",
            "--type",
            "basic",
            "--from-file",
            &file_arg,
            "-o",
            "json",
        ],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let created = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(created["name"], "github");
    assert_eq!(created["type"], "basic");
    assert_eq!(created["field_names"], json!(["password", "username"]));
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    assert_eq!(key_id.len(), 16);

    let new_password = unique("cli-new");
    let field = format!("password={new_password}");
    let user_field = format!("username={user}");
    let mut all_output = describe_output(&out);
    for args in [
        vec!["secrets", "get", "github"],
        vec!["secrets", "list"],
        vec!["secrets", "list", "-o", "yaml"],
        vec![
            "secrets",
            "update",
            "github",
            "--field",
            &user_field,
            "--field",
            &field,
        ],
    ] {
        let out = run(&env.token, &args).await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", describe_output(&out));
        all_output += &describe_output(&out);
    }
    assert!(
        all_output.contains("github  basic  password,username"),
        "{all_output}"
    );

    // Errors name the field, never the value.
    let out = run(
        &env.token,
        &[
            "secrets",
            "update",
            "github",
            "--field",
            &format!("token={password}"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let text = describe_output(&out);
    assert!(text.contains("fields.token"), "{text}");
    all_output += &text;
    let out = run(
        &env.token,
        &[
            "secrets", "create", "x", "--type", "bearer", "--field", &password,
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    all_output += &describe_output(&out);
    let needles_now: Vec<String> = needles.iter().cloned().chain([new_password]).collect();
    assert_absent(&all_output, &needles_now, "mantlectl's output");

    // Rotation is an operator command.
    let out = run(&env.token, &["secrets", "rotate-key"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenants:admin"));
    let out = run(
        &env.operator,
        &["secrets", "rotate-key", "--batch-size", "10", "-o", "json"],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout)),
        json!({"key_id": key_id, "rotated": 0, "remaining": 0})
    );

    let out = run(&env.token, &["secrets", "delete", "github"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = run(&env.token, &["secrets", "get", "github"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
