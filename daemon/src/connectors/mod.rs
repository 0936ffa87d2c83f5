//! Actions: the registry of what a step's `action` may name, with each action's declared
//! params schema. Validation checks workflows against it; the engine runs the same actions
//! through [`Connectors`]. Connectors never touch the store: they get params (templates
//! already rendered) and a credential, and return an output or an error.

pub mod http;
pub mod net;
pub mod status;

use std::collections::BTreeMap;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use net::NetworkPolicy;

/// A secret's fields, handed to an action only when it runs.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    /// The secret type: `bearer`, `basic`, `header`, …
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One run of one action.
pub struct Invocation {
    pub action: String,
    pub params: serde_json::Map<String, Value>,
    pub credential: Option<Credential>,
    /// Fires when the step is cancelled; actions abort what they are doing.
    pub cancel: CancellationToken,
    /// The tenant's allowed domains for outbound requests; `None` allows any public host.
    pub allowed_domains: Option<std::sync::Arc<Vec<String>>>,
}

/// Why an action failed, and whether running it again may help.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionError {
    /// The step's error message.
    pub message: String,
    /// Whether another attempt may succeed: transport errors, timeouts, and the HTTP statuses
    /// 408, 429 and 5xx are; bad params, network-policy refusals and other statuses are not.
    pub retryable: bool,
    /// The HTTP status of a response that failed the step, for `retry.on`.
    pub status: Option<u16>,
    /// What the action produced before failing (an HTTP response with an error status):
    /// the step's output, readable downstream when the step continues on error.
    pub output: Option<Value>,
}

impl ActionError {
    /// A failure another attempt may fix.
    pub fn transient(message: impl Into<String>) -> ActionError {
        ActionError {
            message: message.into(),
            retryable: true,
            status: None,
            output: None,
        }
    }

    /// A failure no attempt can fix (bad params, a network-policy refusal): never retried.
    pub fn permanent(message: impl Into<String>) -> ActionError {
        ActionError {
            retryable: false,
            ..ActionError::transient(message)
        }
    }
}

impl From<String> for ActionError {
    /// Errors without a class (an engine failure around the action) may be retried, as
    /// the step's `retry` asks.
    fn from(message: String) -> ActionError {
        ActionError::transient(message)
    }
}

/// How the engine runs an action: what it dispatches on, never the action's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// No I/O, finishes at once: run inside the driver, its outcome written with the
    /// transition that starts it (`core/log`, `core/set`, `core/fail`).
    Pure,
    /// Talks to the world (`http/request`): runs as a task of its own, under the step's
    /// timeout and retry policy, its start written before it runs.
    Effect,
    /// A durable timer (`core/sleep`): the engine stores its end and keeps no task.
    Timer,
}

/// Whether `action` does no I/O and finishes at once (see [`ActionKind::Pure`]).
pub fn is_pure(action: &str) -> bool {
    self::action(action).is_some_and(|a| a.kind == ActionKind::Pure)
}

/// Runs an action that does no I/O (see [`is_pure`]) at once; `None` for any other action.
/// `core/fail`'s error may be retried, as the step's `retry` asks (its message may depend on
/// what changes between attempts, such as the time).
pub fn run_pure(
    action: &str,
    params: &serde_json::Map<String, Value>,
) -> Option<Result<Value, String>> {
    Some(match action {
        "core/log" => {
            let message = match params.get("message") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            Ok(serde_json::json!({ "message": message }))
        }
        "core/set" => Ok(Value::Object(params.clone())),
        "core/fail" => Err(match params.get("message") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "core/fail".to_owned(),
        }),
        _ => return None,
    })
}

/// Runs actions. `core/sleep` is not here: the engine keeps its timer durably.
pub struct Connectors {
    http: http::HttpConnector,
}

impl Connectors {
    pub fn new(outbound: http::Outbound, max_buffered_bytes: u64) -> Result<Connectors, String> {
        Ok(Connectors {
            http: http::HttpConnector::new(outbound, max_buffered_bytes)?,
        })
    }

    /// Runs the action; `Err` is the step's error and whether a retry may fix it.
    pub async fn invoke(&self, inv: Invocation) -> Result<Value, ActionError> {
        if let Some(result) = run_pure(&inv.action, &inv.params) {
            return result.map_err(ActionError::transient);
        }
        match inv.action.as_str() {
            "http/request" => self.http.run(inv).await,
            other => Err(ActionError::permanent(format!("unknown action {other:?}"))),
        }
    }
}

/// The type a param must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    /// A duration string such as `500ms`, `2s`, `5m`, `1h`.
    Duration,
    /// A list of HTTP statuses and ranges, such as `[200-299, 404]`.
    StatusList,
    /// One of the listed strings.
    OneOf(&'static [&'static str]),
    /// Anything.
    Any,
}

impl ParamType {
    pub fn describe(self) -> String {
        match self {
            ParamType::String => "a string".into(),
            ParamType::Integer => "an integer".into(),
            ParamType::Number => "a number".into(),
            ParamType::Boolean => "a boolean".into(),
            ParamType::Object => "a mapping".into(),
            ParamType::Array => "a list".into(),
            ParamType::Duration => "a duration such as 500ms, 2s or 5m".into(),
            ParamType::StatusList => {
                "a list of HTTP statuses or ranges such as [200-299, 404]".into()
            }
            ParamType::OneOf(values) => format!("one of {}", values.join(", ")),
            ParamType::Any => "any value".into(),
        }
    }
}

/// One declared param.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub description: &'static str,
}

/// Params that exclude each other: at most one of them may be given.
pub type Exclusive = &'static [&'static str];

/// What an action accepts.
#[derive(Debug, Clone, Copy)]
pub struct ActionSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamSpec],
    /// Whether params not declared are accepted (for actions such as `core/set`).
    pub open_params: bool,
    /// Groups of params of which at most one may be set.
    pub exclusive: &'static [Exclusive],
    /// Credential types the action can use; empty when it takes no credential.
    pub credential_types: &'static [&'static str],
    /// How the engine runs it.
    pub kind: ActionKind,
    /// Its output's `message` is also a line of the execution's log (`core/log`).
    pub logs: bool,
}

const fn param(
    name: &'static str,
    ty: ParamType,
    required: bool,
    description: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required,
        description,
    }
}

const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Every built-in action.
pub const BUILTIN: &[ActionSpec] = &[
    ActionSpec {
        name: "core/log",
        description: "Writes a message to the execution's log; outputs {message}.",
        params: &[param("message", ParamType::String, true, "the text to log")],
        open_params: false,
        exclusive: &[],
        credential_types: &[],
        kind: ActionKind::Pure,
        logs: true,
    },
    ActionSpec {
        name: "core/set",
        description: "Outputs its params as they evaluate: every param becomes an output field.",
        params: &[],
        open_params: true,
        exclusive: &[],
        credential_types: &[],
        kind: ActionKind::Pure,
        logs: false,
    },
    ActionSpec {
        name: "core/sleep",
        description: "Waits durably for a duration; survives restarts without holding a task.",
        params: &[param(
            "duration",
            ParamType::Duration,
            true,
            "how long to wait, such as 500ms, 2s, 5m",
        )],
        open_params: false,
        exclusive: &[],
        credential_types: &[],
        kind: ActionKind::Timer,
        logs: false,
    },
    ActionSpec {
        name: "core/fail",
        description: "Fails the step with a message.",
        params: &[param(
            "message",
            ParamType::String,
            true,
            "the error message",
        )],
        open_params: false,
        exclusive: &[],
        credential_types: &[],
        kind: ActionKind::Pure,
        logs: false,
    },
    ActionSpec {
        name: "http/request",
        description: "Sends an HTTP request; outputs {status, headers, body, url} (body parsed when JSON), also when the status fails the step.",
        params: &[
            param(
                "url",
                ParamType::String,
                true,
                "absolute http:// or https:// URL",
            ),
            param(
                "method",
                ParamType::OneOf(HTTP_METHODS),
                false,
                "HTTP method (default GET)",
            ),
            param("headers", ParamType::Object, false, "request headers"),
            param(
                "query",
                ParamType::Object,
                false,
                "query parameters added to the URL",
            ),
            param("body", ParamType::String, false, "raw request body"),
            param("json", ParamType::Any, false, "a value sent as a JSON body"),
            param(
                "timeout",
                ParamType::Duration,
                false,
                "request timeout (default 30s)",
            ),
            param(
                "follow_redirects",
                ParamType::Boolean,
                false,
                "follow redirects (default true, at most 10)",
            ),
            param(
                "max_response_bytes",
                ParamType::Integer,
                false,
                "response size cap (default 10 MiB)",
            ),
            param(
                "ok_status",
                ParamType::StatusList,
                false,
                "statuses that count as success, such as [200-299, 404] (default: below 400)",
            ),
        ],
        open_params: false,
        exclusive: &[&["body", "json"]],
        credential_types: &["bearer", "basic", "header"],
        kind: ActionKind::Effect,
        logs: false,
    },
];

/// Looks an action up by name.
pub fn action(name: &str) -> Option<&'static ActionSpec> {
    BUILTIN.iter().find(|a| a.name == name)
}

/// Every action name, for suggestions.
pub fn action_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|a| a.name)
}
