//! A fake LLM server for the tests and examples of `ai/completion`.
//!
//! It speaks the OpenAI Chat Completions wire format (any path ending in `/chat/completions`;
//! clients use the base URL `{url}/v1`) and the Anthropic Messages wire format (any path
//! ending in `/messages`; clients use the base URL `{url}`), answers with scripted replies
//! and records every call.
//!
//! Scripts are keyed by the request's `model`. The turn answered is chosen by the number of
//! assistant messages already in the request's `messages` (0 → the first turn, 1 → the
//! second, …; past the end → the last), so a replayed request gets the same answer: ids
//! (`chatcmpl-fake-<turn>`, `msg_fake_<turn>`, `call_<turn>_<i>`, `toolu_<turn>_<i>`) are
//! derived from the turn too. Only OpenAI's `created` (seconds) changes between replays.
//!
//! `/echo` and `/echo/...` (any method) answer `{"method", "path", "query", "body"}` and are
//! recorded, so an `http` step of a test can hit the fake and be counted.
//!
//! ```no_run
//! # async fn demo() {
//! use mantle_integration::fake_llm::{FakeCall, FakeLlm, Turn};
//! use serde_json::json;
//!
//! let fake = FakeLlm::start().await;
//! fake.script(
//!     "gpt-test",
//!     vec![
//!         Turn::tools(vec![FakeCall::new("lookup", json!({"q": "rust"}))]),
//!         Turn::text("Rust is a language.").usage(120, 8),
//!     ],
//! );
//! let base_url = fake.openai_base_url(); // http://127.0.0.1:PORT/v1
//! # }
//! ```
//!
//! The `fake-llm` binary serves the same from a script file (see [`parse_script`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The largest request body accepted (by `Content-Length` or chunked); larger ones get 413.
pub const MAX_BODY: usize = 16 << 20;

/// The largest request head accepted.
const MAX_HEAD: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------------

/// A tool call the model makes in a scripted [`Turn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeCall {
    /// The tool's name.
    pub name: String,
    /// The arguments (default `{}`). OpenAI gets them as JSON text, Anthropic as `input`.
    #[serde(default = "empty_object")]
    pub arguments: Value,
    /// Sent verbatim as OpenAI's `arguments` text instead of [`FakeCall::arguments`], to test
    /// arguments that are not valid JSON. Anthropic ignores it (it sends `arguments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_arguments: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl FakeCall {
    /// A call of `name` with `arguments`.
    pub fn new(name: &str, arguments: Value) -> FakeCall {
        FakeCall {
            name: name.to_owned(),
            arguments,
            raw_arguments: None,
        }
    }

    /// A call of `name` whose OpenAI `arguments` text is `raw` verbatim (e.g. invalid JSON).
    pub fn raw(name: &str, raw: &str) -> FakeCall {
        FakeCall {
            name: name.to_owned(),
            arguments: empty_object(),
            raw_arguments: Some(raw.to_owned()),
        }
    }
}

/// The token counts a turn reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Usage {
    /// Input (prompt) tokens; default 10.
    pub input_tokens: u64,
    /// Output (completion) tokens; default 5.
    pub output_tokens: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            input_tokens: 10,
            output_tokens: 5,
        }
    }
}

/// One scripted answer of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Turn {
    /// The assistant's text (OpenAI `content`, else `null`; Anthropic a `text` block).
    pub text: Option<String>,
    /// The tools the model calls.
    pub tool_calls: Vec<FakeCall>,
    /// The token counts reported.
    pub usage: Usage,
    /// The HTTP status (default 200). A non-2xx status answers the provider's error body.
    pub status: u16,
    /// The error message of a non-2xx answer (default `scripted failure`).
    pub error: Option<String>,
    /// How long to hold the answer, in milliseconds; a client closing the connection
    /// meanwhile is recorded ([`Recorded::closed_by_client`]).
    pub delay_ms: u64,
    /// Overrides OpenAI's `finish_reason` / Anthropic's `stop_reason` (default
    /// `tool_calls`/`tool_use` when there are tool calls, else `stop`/`end_turn`).
    pub finish_reason: Option<String>,
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            text: None,
            tool_calls: Vec::new(),
            usage: Usage::default(),
            status: 200,
            error: None,
            delay_ms: 0,
            finish_reason: None,
        }
    }
}

impl Turn {
    /// A text answer.
    pub fn text(text: &str) -> Turn {
        Turn {
            text: Some(text.to_owned()),
            ..Turn::default()
        }
    }

    /// An answer that calls `calls` (and says nothing).
    pub fn tools(calls: Vec<FakeCall>) -> Turn {
        Turn {
            tool_calls: calls,
            ..Turn::default()
        }
    }

    /// A failure: `status` with the provider's error body carrying `message`.
    pub fn failure(status: u16, message: &str) -> Turn {
        Turn {
            status,
            error: Some(message.to_owned()),
            ..Turn::default()
        }
    }

    /// Adds text to the answer (e.g. beside tool calls).
    pub fn with_text(mut self, text: &str) -> Turn {
        self.text = Some(text.to_owned());
        self
    }

    /// Sets the token counts.
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Turn {
        self.usage = Usage {
            input_tokens,
            output_tokens,
        };
        self
    }

    /// Sets the HTTP status (non-2xx: the provider's error body).
    pub fn status(mut self, status: u16) -> Turn {
        self.status = status;
        self
    }

    /// Sets the error message of a non-2xx answer.
    pub fn error(mut self, message: &str) -> Turn {
        self.error = Some(message.to_owned());
        self
    }

    /// Holds the answer for `delay`.
    pub fn delay(mut self, delay: Duration) -> Turn {
        self.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Overrides the finish (stop) reason.
    pub fn finish_reason(mut self, reason: &str) -> Turn {
        self.finish_reason = Some(reason.to_owned());
        self
    }
}

/// Parses a script file: a JSON object mapping each model to its turns, in order. A turn is
/// a [`Turn`] object (every field optional) or, for short, a string (a text answer):
///
/// ```json
/// {
///   "gpt-test": [
///     {"tool_calls": [{"name": "lookup", "arguments": {"q": "rust"}}]},
///     {"text": "Rust is a language.", "usage": {"input_tokens": 120, "output_tokens": 8}}
///   ],
///   "claude-test": ["Hello!"],
///   "flaky": [{"status": 503, "error": "overloaded"}, "Recovered."]
/// }
/// ```
///
/// Unknown fields are errors; so is a model with no turns.
pub fn parse_script(text: &str) -> Result<BTreeMap<String, Vec<Turn>>> {
    let value: Value = serde_json::from_str(text).context("the script is not valid JSON")?;
    let Value::Object(models) = value else {
        bail!("the script must be a JSON object mapping each model to a list of turns");
    };
    let mut script = BTreeMap::new();
    for (model, turns) in models {
        let Value::Array(turns) = turns else {
            bail!("model {model:?}: expected a list of turns");
        };
        if turns.is_empty() {
            bail!("model {model:?}: needs at least one turn");
        }
        let turns = turns
            .into_iter()
            .enumerate()
            .map(|(i, turn)| match turn {
                Value::String(text) => Ok(Turn::text(&text)),
                other => serde_json::from_value::<Turn>(other)
                    .with_context(|| format!("model {model:?}, turn {i}")),
            })
            .collect::<Result<Vec<_>>>()?;
        script.insert(model, turns);
    }
    Ok(script)
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// Which wire format a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// OpenAI Chat Completions (a path ending in `/chat/completions`).
    OpenAi,
    /// Anthropic Messages (a path ending in `/messages`).
    Anthropic,
    /// Anything else (`/echo/...`, unknown paths).
    Other,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Other => "other",
        })
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The wire format, by path.
    pub provider: Provider,
    /// Request method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query (after `?`), empty when none.
    pub query: String,
    /// Request headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON; `Null` when it is not JSON.
    pub body: Value,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// The request's `model` (empty when none, and for [`Provider::Other`]).
    pub model: String,
    /// The turn chosen: the number of assistant messages in the request (0 for `Other`).
    pub turn: usize,
    /// The status answered (or that would have been, when the client closed first).
    pub status: u16,
    /// Whether the client closed the connection before the (delayed) answer was written.
    pub closed_by_client: bool,
    /// When the request was read.
    pub at: Instant,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request's `messages`.
    pub fn messages(&self) -> &[Value] {
        self.body["messages"].as_array().map_or(&[], Vec::as_slice)
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    scripts: HashMap<String, Vec<Turn>>,
    key: Option<String>,
    calls: Vec<Recorded>,
    log: bool,
}

/// The fake LLM server; stops accepting connections when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    acceptor: JoinHandle<()>,
}

impl fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLlm")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeLlm {
    /// Starts listening on a free port of 127.0.0.1.
    pub async fn start() -> FakeLlm {
        FakeLlm::bind(0).await.expect("starting the fake LLM")
    }

    /// Starts listening on `port` of 127.0.0.1 (0: a free port).
    pub async fn bind(port: u16) -> Result<FakeLlm> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    tokio::spawn(serve_connection(stream, Arc::clone(&state)));
                }
            })
        };
        Ok(FakeLlm {
            addr,
            state,
            acceptor,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the Anthropic base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the OpenAI base URL.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// `http://127.0.0.1:PORT`: the Anthropic base URL.
    pub fn anthropic_base_url(&self) -> String {
        self.url()
    }

    /// Scripts `model` (replacing its script): the request with k assistant messages gets
    /// `turns[k]`, or the last turn past the end.
    pub fn script(&self, model: &str, turns: Vec<Turn>) {
        assert!(!turns.is_empty(), "model {model:?} needs at least one turn");
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(model.to_owned(), turns);
    }

    /// Scripts every model of `script` (as [`parse_script`] returns).
    pub fn script_all(&self, script: BTreeMap<String, Vec<Turn>>) {
        for (model, turns) in script {
            self.script(&model, turns);
        }
    }

    /// Requires `key`: OpenAI requests must carry `Authorization: Bearer <key>`, Anthropic
    /// ones `x-api-key: <key>`; others get 401 (and are recorded).
    pub fn require_key(&self, key: &str) {
        self.state.lock().unwrap().key = Some(key.to_owned());
    }

    /// Logs one line per call to stderr (provider, model, turn, status).
    pub fn log_to_stderr(&self) {
        self.state.lock().unwrap().log = true;
    }

    /// Every request so far, in arrival order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The LLM requests (OpenAI or Anthropic) for `model` so far.
    pub fn calls_for(&self, model: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.provider != Provider::Other && c.model == model)
            .cloned()
            .collect()
    }

    /// The number of LLM requests for `model` so far.
    pub fn count(&self, model: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.provider != Provider::Other && c.model == model)
            .count()
    }

    /// The `/echo` requests whose path starts with `path_prefix`.
    pub fn echo_calls(&self, path_prefix: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| is_echo(&c.path) && c.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// The number of `/echo` requests whose path starts with `path_prefix`.
    pub fn echo_count(&self, path_prefix: &str) -> usize {
        self.echo_calls(path_prefix).len()
    }

    /// Waits until `model` got at least `n` requests; returns whether it did within `timeout`.
    pub async fn wait_for_calls(&self, model: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count(model) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

fn is_echo(path: &str) -> bool {
    path == "/echo" || path.starts_with("/echo/")
}

/// A request as read off the wire.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
struct Answer {
    status: u16,
    body: Value,
    delay: Duration,
}

enum ReadError {
    /// The connection closed or failed before a whole request came.
    Gone,
    /// The body is larger than [`MAX_BODY`]; the head was read.
    TooLarge(Request),
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Gone);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(ReadError::Gone),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (target.to_owned(), String::new()),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
    };
    let rest = buf.split_off(head_end + 4);

    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let content_length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !chunked && content_length > MAX_BODY {
        return Err(ReadError::TooLarge(request));
    }
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Err(ReadError::Gone);
    }

    let mut body = rest;
    if chunked {
        loop {
            match dechunk(&body) {
                Some(Ok(decoded)) => {
                    body = decoded;
                    break;
                }
                Some(Err(())) => return Err(ReadError::Gone),
                None => {}
            }
            if body.len() > MAX_BODY + (1 << 20) {
                return Err(ReadError::TooLarge(request));
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(ReadError::Gone),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        if body.len() > MAX_BODY {
            return Err(ReadError::TooLarge(request));
        }
    } else {
        body.reserve(content_length.saturating_sub(body.len()));
        while body.len() < content_length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(ReadError::Gone),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(content_length);
    }
    request.body = body;
    Ok(request)
}

/// Decodes a chunked body: `None` while incomplete, `Err` when malformed.
fn dechunk(mut data: &[u8]) -> Option<Result<Vec<u8>, ()>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let Ok(size_text) = std::str::from_utf8(&data[..line_end]) else {
            return Some(Err(()));
        };
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return Some(Err(()));
        };
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line; wait for it.
            return data.windows(2).position(|w| w == b"\r\n").map(|_| Ok(out));
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let (record, answer) = match read_request(&mut stream).await {
        Ok(request) => {
            let state = state.lock().unwrap();
            route(&state, request)
        }
        Err(ReadError::Gone) => return,
        Err(ReadError::TooLarge(request)) => {
            let provider = provider_of(&request.path);
            let answer = Answer {
                status: 413,
                body: error_body(
                    provider,
                    413,
                    &format!("the request body is larger than {MAX_BODY} bytes"),
                ),
                delay: Duration::ZERO,
            };
            (record_of(provider, request, String::new(), 0, 413), answer)
        }
    };

    let index = {
        let mut state = state.lock().unwrap();
        if state.log {
            eprintln!(
                "fake-llm: {} {} {} model={:?} turn={} status={}",
                record.provider,
                record.method,
                record.path,
                record.model,
                record.turn,
                record.status
            );
        }
        state.calls.push(record);
        state.calls.len() - 1
    };

    if !answer.delay.is_zero() {
        let until = tokio::time::Instant::now() + answer.delay;
        let mut scratch = [0u8; 1024];
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                read = stream.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => {
                        let mut state = state.lock().unwrap();
                        let call = &mut state.calls[index];
                        call.closed_by_client = true;
                        if state.log {
                            let call = &state.calls[index];
                            eprintln!(
                                "fake-llm: {} model={:?} turn={}: the client closed the connection",
                                call.provider, call.model, call.turn
                            );
                        }
                        return;
                    }
                    Ok(_) => {}
                },
            }
        }
    }

    let body = answer.body.to_string();
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        answer.status,
        reason_phrase(answer.status),
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn provider_of(path: &str) -> Provider {
    if is_echo(path) {
        Provider::Other
    } else if path.ends_with("/chat/completions") {
        Provider::OpenAi
    } else if path.ends_with("/messages") {
        Provider::Anthropic
    } else {
        Provider::Other
    }
}

fn record_of(
    provider: Provider,
    request: Request,
    model: String,
    turn: usize,
    status: u16,
) -> Recorded {
    let body = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    Recorded {
        provider,
        method: request.method,
        path: request.path,
        query: request.query,
        headers: request.headers,
        body,
        raw_body: String::from_utf8_lossy(&request.body).into_owned(),
        model,
        turn,
        status,
        closed_by_client: false,
        at: Instant::now(),
    }
}

/// Chooses the answer to `request` and records it.
fn route(state: &State, request: Request) -> (Recorded, Answer) {
    let provider = provider_of(&request.path);
    let immediate = |status: u16, body: Value| Answer {
        status,
        body,
        delay: Duration::ZERO,
    };
    if provider == Provider::Other {
        let answer = if is_echo(&request.path) {
            let body = if request.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&request.body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&request.body).into_owned())
                })
            };
            immediate(
                200,
                json!({
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "body": body,
                }),
            )
        } else {
            immediate(
                404,
                error_body(provider, 404, &format!("no route for {}", request.path)),
            )
        };
        let status = answer.status;
        return (
            record_of(provider, request, String::new(), 0, status),
            answer,
        );
    }

    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let turn = body["messages"].as_array().map_or(0, |messages| {
        messages.iter().filter(|m| m["role"] == "assistant").count()
    });
    let answer = answer_llm(state, provider, &request, &body, &model, turn);
    let status = answer.status;
    (record_of(provider, request, model, turn, status), answer)
}

fn answer_llm(
    state: &State,
    provider: Provider,
    request: &Request,
    body: &Value,
    model: &str,
    turn: usize,
) -> Answer {
    let fail = |status: u16, message: &str| Answer {
        status,
        body: error_body(provider, status, message),
        delay: Duration::ZERO,
    };
    if let Some(key) = &state.key {
        let authorized = match provider {
            Provider::OpenAi => request.header("authorization").is_some_and(|v| {
                v.split_once(' ').is_some_and(|(scheme, token)| {
                    scheme.eq_ignore_ascii_case("bearer") && token.trim() == key
                })
            }),
            _ => request.header("x-api-key") == Some(key.as_str()),
        };
        if !authorized {
            return fail(
                401,
                match provider {
                    Provider::OpenAi => "missing or incorrect API key (Authorization: Bearer)",
                    _ => "missing or incorrect x-api-key",
                },
            );
        }
    }
    if request.method != "POST" {
        return fail(405, &format!("{} is not allowed; use POST", request.method));
    }
    if !body.is_object() {
        return fail(400, "the request body is not a JSON object");
    }
    if model.is_empty() {
        return fail(400, "model: field required");
    }
    if body["stream"] == true {
        return fail(400, "the fake LLM does not stream; send stream: false");
    }
    let Some(turns) = state.scripts.get(model) else {
        return fail(404, &format!("model {model:?} is not scripted"));
    };
    let scripted = &turns[turn.min(turns.len() - 1)];
    let delay = Duration::from_millis(scripted.delay_ms);
    if !(200..300).contains(&scripted.status) {
        let message = scripted.error.as_deref().unwrap_or("scripted failure");
        return Answer {
            status: scripted.status,
            body: error_body(provider, scripted.status, message),
            delay,
        };
    }
    let body = match provider {
        Provider::OpenAi => openai_reply(scripted, model, turn),
        _ => anthropic_reply(scripted, model, turn),
    };
    Answer {
        status: scripted.status,
        body,
        delay,
    }
}

fn openai_reply(turn: &Turn, model: &str, index: usize) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": turn.text,
    });
    if !turn.tool_calls.is_empty() {
        let calls: Vec<Value> = turn
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let arguments = call
                    .raw_arguments
                    .clone()
                    .unwrap_or_else(|| call.arguments.to_string());
                json!({
                    "id": format!("call_{index}_{i}"),
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments},
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let finish_reason = turn.finish_reason.clone().unwrap_or_else(|| {
        if turn.tool_calls.is_empty() {
            "stop".to_owned()
        } else {
            "tool_calls".to_owned()
        }
    });
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "id": format!("chatcmpl-fake-{index}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": turn.usage.input_tokens,
            "completion_tokens": turn.usage.output_tokens,
            "total_tokens": turn.usage.input_tokens + turn.usage.output_tokens,
        },
    })
}

fn anthropic_reply(turn: &Turn, model: &str, index: usize) -> Value {
    let mut content = Vec::new();
    if let Some(text) = &turn.text {
        content.push(json!({"type": "text", "text": text}));
    }
    for (i, call) in turn.tool_calls.iter().enumerate() {
        content.push(json!({
            "type": "tool_use",
            "id": format!("toolu_{index}_{i}"),
            "name": call.name,
            "input": call.arguments,
        }));
    }
    let stop_reason = turn.finish_reason.clone().unwrap_or_else(|| {
        if turn.tool_calls.is_empty() {
            "end_turn".to_owned()
        } else {
            "tool_use".to_owned()
        }
    });
    json!({
        "id": format!("msg_fake_{index}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": turn.usage.input_tokens,
            "output_tokens": turn.usage.output_tokens,
        },
    })
}

/// The provider's error body: `{"error":{"type","message"}}`, and for Anthropic
/// `{"type":"error","error":{...}}`.
fn error_body(provider: Provider, status: u16, message: &str) -> Value {
    let kind = match status {
        400 | 405 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let error = json!({"type": kind, "message": message});
    match provider {
        Provider::Anthropic => json!({"type": "error", "error": error}),
        _ => json!({"error": error}),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// Reads and parses a script file (see [`parse_script`]).
pub fn load_script(path: &std::path::Path) -> Result<BTreeMap<String, Vec<Turn>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the script {}", path.display()))?;
    parse_script(&text).with_context(|| format!("in the script {}", path.display()))
}

/// Parses the `fake-llm` binary's arguments: `[--port N] [--script FILE]`.
pub fn parse_args(args: &[String]) -> Result<(u16, Option<std::path::PathBuf>)> {
    let mut port = 0;
    let mut script = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or_else(|| anyhow!("{name} needs a value"))
        };
        match flag {
            "--port" => {
                let text = value("--port")?;
                port = text
                    .parse()
                    .with_context(|| format!("--port {text:?} is not a port"))?;
            }
            "--script" => script = Some(std::path::PathBuf::from(value("--script")?)),
            "-h" | "--help" => bail!("usage: fake-llm [--port N] [--script FILE]"),
            other => {
                bail!("unknown argument {other:?}; usage: fake-llm [--port N] [--script FILE]")
            }
        }
    }
    Ok((port, script))
}
