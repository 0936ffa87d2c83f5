//! Actions: the registry of what a step's `action` may name, with each action's declared
//! params schema. Validation checks workflows against it; the engine runs the same actions
//! through [`Connectors`]. Connectors never touch the store: they get params (templates
//! already rendered) and a credential, and return an output or an error.

pub mod core;
pub mod http;
pub mod net;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// Runs an action that does no I/O ([`ActionKind::Pure`]) at once; `None` for any other
/// action.
pub fn run_pure(
    action: &str,
    params: &serde_json::Map<String, Value>,
) -> Option<Result<Value, String>> {
    match self::action(action)?.run {
        Run::Pure(run) => Some(run(params)),
        Run::Effect(_) | Run::Timer => None,
    }
}

/// How an action runs, by its kind.
#[derive(Clone, Copy)]
pub enum Run {
    /// At once, inside the driver.
    Pure(fn(&serde_json::Map<String, Value>) -> Result<Value, String>),
    /// As a task: `build` makes the runner once, when the daemon starts.
    Effect(fn(&Setup) -> Result<Arc<dyn Effect>, String>),
    /// Nothing runs: the engine keeps the timer.
    Timer,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Run::Pure(_) => "Pure",
            Run::Effect(_) => "Effect",
            Run::Timer => "Timer",
        })
    }
}

/// What effect runners are built with: the daemon's outbound settings.
pub struct Setup {
    pub outbound: http::Outbound,
    /// `MANTLE_HTTP_MAX_BUFFERED_BYTES`.
    pub max_buffered_bytes: u64,
}

/// An action that talks to the world.
#[async_trait::async_trait]
pub trait Effect: Send + Sync {
    /// Runs once; `Err` is the step's error and whether a retry may fix it.
    async fn run(&self, inv: Invocation) -> Result<Value, ActionError>;
}

/// Runs actions: the pure ones at once, the effects with the runners built at start.
pub struct Connectors {
    effects: BTreeMap<&'static str, Arc<dyn Effect>>,
}

impl Connectors {
    /// Builds the runner of every effect of [`BUILTIN`].
    pub fn new(setup: &Setup) -> Result<Connectors, String> {
        Self::with(BUILTIN, setup)
    }

    /// Builds the runners of `actions`' effects (tests register their own actions).
    pub fn with(actions: &[&ActionSpec], setup: &Setup) -> Result<Connectors, String> {
        let mut effects = BTreeMap::new();
        for a in actions {
            if let Run::Effect(build) = a.run {
                effects.insert(a.name, build(setup)?);
            }
        }
        Ok(Connectors { effects })
    }

    /// Runs the action; `Err` is the step's error and whether a retry may fix it.
    pub async fn invoke(&self, inv: Invocation) -> Result<Value, ActionError> {
        if let Some(result) = run_pure(&inv.action, &inv.params) {
            return result.map_err(ActionError::transient);
        }
        match self.effects.get(inv.action.as_str()) {
            Some(effect) => effect.run(inv).await,
            None => Err(ActionError::permanent(format!(
                "unknown action {:?}",
                inv.action
            ))),
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
    /// Its output's `message` is also a line of the execution's log (`core/log`).
    pub logs: bool,
    /// How it runs; its [`ActionKind`] follows.
    pub run: Run,
}

impl ActionSpec {
    /// JSON Schema (draft 2020-12) of its params, from its declaration.
    pub fn params_schema(&self) -> Value {
        use serde_json::json;
        let mut properties = serde_json::Map::new();
        for p in self.params {
            let mut schema = match p.ty {
                ParamType::String => json!({"type": "string"}),
                ParamType::Integer => json!({"type": "integer"}),
                ParamType::Number => json!({"type": "number"}),
                ParamType::Boolean => json!({"type": "boolean"}),
                ParamType::Object => json!({"type": "object"}),
                ParamType::Array => json!({"type": "array"}),
                ParamType::Duration => json!({
                    "type": "string",
                    "pattern": "^\\s*([0-9]+(ms|s|m|h|d))+\\s*$",
                }),
                ParamType::OneOf(values) => json!({"type": "string", "enum": values}),
                ParamType::StatusList => json!({
                    "type": "array",
                    "items": {"anyOf": [
                        {"type": "integer", "minimum": 100, "maximum": 599},
                        {"type": "string", "pattern": "^[1-5][0-9]{2}(-[1-5][0-9]{2})?$"},
                    ]},
                }),
                ParamType::Any => json!({}),
            };
            schema["description"] = Value::from(p.description);
            properties.insert(p.name.to_owned(), schema);
        }
        let required: Vec<&str> = self
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name)
            .collect();
        let mut schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.name,
            "description": self.description,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": self.open_params,
        });
        if !self.exclusive.is_empty() {
            // At most one of each group: not all of a group's params at once.
            let groups: Vec<Value> = self
                .exclusive
                .iter()
                .map(|group| json!({"not": {"required": group}}))
                .collect();
            schema["allOf"] = Value::from(groups);
        }
        schema
    }

    /// How the engine runs it.
    pub fn kind(&self) -> ActionKind {
        match self.run {
            Run::Pure(_) => ActionKind::Pure,
            Run::Effect(_) => ActionKind::Effect,
            Run::Timer => ActionKind::Timer,
        }
    }
}

pub(crate) const fn param(
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

/// Every built-in action: registering one is one line here (its module declares its
/// [`ActionSpec`], and how it runs in `run`).
pub const BUILTIN: &[&ActionSpec] = &[
    &core::LOG,
    &core::SET,
    &core::SLEEP,
    &core::FAIL,
    &http::SPEC,
];

/// Looks an action up by name.
pub fn action(name: &str) -> Option<&'static ActionSpec> {
    BUILTIN.iter().copied().find(|a| a.name == name)
}

/// Every action name, for suggestions.
pub fn action_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|a| a.name)
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    /// An action of a test: its spec and its runner, registered by naming it in a list.
    const ECHO: ActionSpec = ActionSpec {
        name: "test/echo",
        description: "Answers its params.",
        params: &[param("say", ParamType::String, true, "what to answer")],
        open_params: false,
        exclusive: &[],
        credential_types: &[],
        logs: false,
        run: Run::Effect(|_| Ok(Arc::new(Echo))),
    };

    struct Echo;

    #[async_trait::async_trait]
    impl Effect for Echo {
        async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
            Ok(Value::Object(inv.params))
        }
    }

    fn invocation(action: &str, params: Value) -> Invocation {
        Invocation {
            action: action.to_owned(),
            params: params.as_object().cloned().unwrap_or_default(),
            credential: None,
            cancel: tokio_util::sync::CancellationToken::new(),
            allowed_domains: None,
        }
    }

    fn setup() -> Setup {
        Setup {
            outbound: http::Outbound::default(),
            max_buffered_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn a_registered_action_runs_by_its_name() {
        let connectors = Connectors::with(&[&ECHO, &core::SET], &setup()).unwrap();
        let said = serde_json::json!({"say": "hi"});
        let out = connectors
            .invoke(invocation("test/echo", said.clone()))
            .await;
        assert_eq!(out, Ok(said.clone()));
        assert_eq!(ECHO.kind(), ActionKind::Effect);
        // Pure actions run from their spec, without a runner.
        let out = connectors.invoke(invocation("core/set", said)).await;
        assert_eq!(out, Ok(serde_json::json!({"say": "hi"})));
        // Not registered: refused for good, naming it.
        let err = Connectors::with(&[&core::SET], &setup())
            .unwrap()
            .invoke(invocation("test/echo", serde_json::json!({})))
            .await
            .unwrap_err();
        assert_eq!(err.message, "unknown action \"test/echo\"");
        assert!(!err.retryable);
    }

    #[test]
    fn params_schemas_come_from_the_declarations() {
        let http = http::SPEC.params_schema();
        assert_eq!(http["required"], serde_json::json!(["url"]));
        assert_eq!(http["additionalProperties"], false);
        assert_eq!(http["properties"]["method"]["enum"][0], "GET");
        assert_eq!(http["properties"]["ok_status"]["type"], "array");
        assert_eq!(http["properties"]["timeout"]["type"], "string");
        assert_eq!(
            http["allOf"],
            serde_json::json!([{"not": {"required": ["body", "json"]}}])
        );
        // Every declared param is in the schema, described.
        for p in http::SPEC.params {
            assert!(
                http["properties"][p.name]["description"].is_string(),
                "{}",
                p.name
            );
        }
        assert_eq!(core::SET.params_schema()["additionalProperties"], true);
        assert_eq!(
            core::SLEEP.params_schema()["required"],
            serde_json::json!(["duration"])
        );
    }

    #[test]
    fn every_builtin_action_declares_how_it_runs() {
        let kinds: Vec<(&str, ActionKind)> = BUILTIN.iter().map(|a| (a.name, a.kind())).collect();
        assert_eq!(
            kinds,
            [
                ("core/log", ActionKind::Pure),
                ("core/set", ActionKind::Pure),
                ("core/sleep", ActionKind::Timer),
                ("core/fail", ActionKind::Pure),
                ("http/request", ActionKind::Effect),
            ]
        );
        assert!(
            BUILTIN
                .iter()
                .filter(|a| a.logs)
                .map(|a| a.name)
                .eq(["core/log"])
        );
    }
}
