//! Actions: the registry of what a step's `action` may name, with each action's declared
//! params schema. Validation checks workflows against it; the engine runs the same actions
//! through [`Connectors`]. Connectors never touch the store: they get params (templates
//! already rendered) and a credential, and return an output or an error.

pub mod ai;
pub mod core;
pub mod credentials;
pub mod http;
pub mod net;
pub mod params;
pub mod redact;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use credentials::CredentialType;
pub use net::NetworkPolicy;
pub use params::{Declared, ParamSpec, ParamType};

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
    /// What the engine offers an action that keeps its progress and calls other actions
    /// (`ai/completion`); `None` where there is none (a tool's own run, a test).
    pub progress: Option<Arc<dyn Progress>>,
}

/// A piece of an attempt's progress, to be made durable: an `ai/completion` step's model
/// answer or tool result.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// What it records (`model`, `tool`): the action's own word.
    pub kind: &'static str,
    pub body: Value,
    /// A model call's usage.
    pub usage: Option<Usage>,
    /// A line for the execution's log (secrets redacted by the engine).
    pub log: String,
}

/// A checkpoint read back: what an earlier attempt of the step made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub kind: String,
    pub body: Value,
    pub usage: Option<Usage>,
}

/// What one model call used.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Usage {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// In USD by the price table; `None` when the model has no price.
    pub cost_usd: Option<f64>,
}

/// What the next model call is expected to use, for the caps checked before it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    pub tokens: u64,
    /// `None` when the model has no price.
    pub cost_usd: Option<f64>,
}

/// The engine's side of an attempt that keeps its progress: checkpoints, budgets, tools.
#[async_trait::async_trait]
pub trait Progress: Send + Sync {
    /// What earlier attempts of the step made durable, in order.
    async fn saved(&self) -> Result<Vec<Saved>, ActionError>;
    /// Makes `checkpoint` durable: when this returns it survives a crash.
    async fn checkpoint(&self, checkpoint: Checkpoint) -> Result<(), ActionError>;
    /// Checks every cap of the workflow, the tenant and the installation before a model
    /// call; the error names the cap.
    async fn check_budget(&self, next: Estimate) -> Result<(), ActionError>;
    /// Runs the step's tool `name` with the model's `input` (checked against its schema
    /// already): its output, or the error's message (secrets redacted).
    async fn call_tool(&self, name: &str, input: Value) -> Result<Value, String>;
    /// The secret the tenant names for `provider` when a step names none.
    async fn default_credential(&self, provider: &str) -> Result<Option<Credential>, ActionError>;
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
    /// `MANTLE_AI_*`.
    pub ai: Arc<ai::Settings>,
}

/// An action that talks to the world.
#[async_trait::async_trait]
pub trait Effect: Send + Sync {
    /// Runs once; `Err` is the step's error and whether a retry may fix it.
    async fn run(&self, inv: Invocation) -> Result<Value, ActionError>;
}

/// Runs actions: the pure ones at once, the effects with the runners built at start.
pub struct Connectors {
    registry: Arc<Registry>,
    effects: BTreeMap<&'static str, Arc<dyn Effect>>,
}

impl Connectors {
    /// Builds the runner of every effect of `registry`.
    pub fn new(registry: Arc<Registry>, setup: &Setup) -> Result<Connectors, String> {
        let mut effects = BTreeMap::new();
        for a in registry.iter() {
            if let Run::Effect(build) = a.spec.run {
                effects.insert(a.spec.name, build(setup)?);
            }
        }
        Ok(Connectors { registry, effects })
    }

    /// The actions it runs.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs the action; `Err` is the step's error and whether a retry may fix it.
    pub async fn invoke(&self, inv: Invocation) -> Result<Value, ActionError> {
        if let Some(result) = self.registry.run_pure(&inv.action, &inv.params) {
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

/// What an action is: declared once, as a constant in its module.
#[derive(Debug, Clone, Copy)]
pub struct ActionSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// The JSON Schema of its params, derived from its typed `Params`
    /// ([`params::schema_of`]): validation, `ListActions` and the docs read it.
    pub params: fn() -> Value,
    /// The JSON Schema of its output, derived from its output type: what later steps read
    /// as `steps.NAME.output`.
    pub output: fn() -> Value,
    /// Credential types the action can use; empty when it takes no credential.
    pub credential_types: &'static [&'static CredentialType],
    /// Its output's `message` is also a line of the execution's log (`core/log`).
    pub logs: bool,
    /// Its `tools` param lists actions it calls (`ai/completion`): each tool's `params` are
    /// templates rendered per call with `tool.input`, not with the step's params.
    pub tools: bool,
    /// How it runs; its [`ActionKind`] follows.
    pub run: Run,
}

impl ActionSpec {
    /// How the engine runs it.
    pub fn kind(&self) -> ActionKind {
        match self.run {
            Run::Pure(_) => ActionKind::Pure,
            Run::Effect(_) => ActionKind::Effect,
            Run::Timer => ActionKind::Timer,
        }
    }
}

/// A registered action, with what its declaration gives once derived.
#[derive(Debug)]
pub struct Action {
    pub spec: &'static ActionSpec,
    /// Its params as the loader checks them.
    pub declared: Declared,
}

impl Action {
    /// JSON Schema (draft 2020-12) of its output.
    pub fn output_schema(&self) -> Value {
        (self.spec.output)()
    }

    /// JSON Schema (draft 2020-12) of its params, titled and described.
    pub fn params_schema(&self) -> Value {
        let mut schema = self.declared.schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("title".into(), Value::from(self.spec.name));
            obj.insert("description".into(), Value::from(self.spec.description));
        }
        schema
    }
}

/// The actions a daemon runs, by name.
#[derive(Debug)]
pub struct Registry {
    actions: Vec<Action>,
}

impl Registry {
    /// Registers `specs`, in order.
    ///
    /// # Panics
    /// When two share a name: a mistake in the list, found by every test that builds it.
    pub fn new<'a>(specs: impl IntoIterator<Item = &'a &'static ActionSpec>) -> Registry {
        let mut actions: Vec<Action> = Vec::new();
        for &spec in specs {
            assert!(
                actions.iter().all(|a| a.spec.name != spec.name),
                "action {} is registered twice",
                spec.name
            );
            actions.push(Action {
                spec,
                declared: Declared::from_schema((spec.params)()),
            });
        }
        Registry { actions }
    }

    /// The built-in actions ([`BUILTIN`]).
    pub fn builtin() -> &'static Registry {
        static BUILTIN_REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry::new(BUILTIN));
        &BUILTIN_REGISTRY
    }

    pub fn get(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.spec.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter()
    }

    /// Every action name, for suggestions.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.actions.iter().map(|a| a.spec.name)
    }

    /// Runs a pure action at once; `None` for any other action.
    pub fn run_pure(
        &self,
        action: &str,
        params: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, String>> {
        match self.get(action)?.spec.run {
            Run::Pure(run) => Some(run(params)),
            Run::Effect(_) | Run::Timer => None,
        }
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
    &ai::SPEC,
];

#[cfg(test)]
mod registry_tests {
    use super::*;

    /// Params of a test action.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct EchoParams {
        /// what to answer
        say: String,
    }

    /// An action of a test: its spec and its runner, registered by naming it in a list.
    const ECHO: ActionSpec = ActionSpec {
        name: "test/echo",
        description: "Answers its params.",
        params: params::schema_of::<EchoParams>,
        output: params::schema_of::<EchoOutput>,
        credential_types: &[],
        logs: false,
        tools: false,
        run: Run::Effect(|_| Ok(Arc::new(Echo))),
    };

    #[derive(serde::Serialize, schemars::JsonSchema)]
    struct EchoOutput {
        /// what it was asked to say
        said: String,
    }

    struct Echo;

    #[async_trait::async_trait]
    impl Effect for Echo {
        async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
            let p: EchoParams = params::parse(&inv.params).map_err(ActionError::permanent)?;
            Ok(serde_json::to_value(EchoOutput { said: p.say }).expect("an output serializes"))
        }
    }

    fn invocation(action: &str, params: Value) -> Invocation {
        Invocation {
            action: action.to_owned(),
            params: params.as_object().cloned().unwrap_or_default(),
            credential: None,
            cancel: tokio_util::sync::CancellationToken::new(),
            allowed_domains: None,
            progress: None,
        }
    }

    fn setup() -> Setup {
        Setup {
            outbound: http::Outbound::default(),
            max_buffered_bytes: 1 << 20,
            ai: Arc::default(),
        }
    }

    fn connectors(specs: &[&'static ActionSpec]) -> Connectors {
        Connectors::new(Arc::new(Registry::new(specs)), &setup()).unwrap()
    }

    #[tokio::test]
    async fn a_registered_action_runs_by_its_name() {
        let connectors = connectors(&[&ECHO, &core::SET]);
        let out = connectors
            .invoke(invocation("test/echo", serde_json::json!({"say": "hi"})))
            .await;
        assert_eq!(out, Ok(serde_json::json!({"said": "hi"})));
        assert_eq!(ECHO.kind(), ActionKind::Effect);
        // Its params are parsed into its type; a bad one is named, and never retried.
        let err = connectors
            .invoke(invocation("test/echo", serde_json::json!({"say": 3})))
            .await
            .unwrap_err();
        assert!(
            err.message.starts_with("params.say: invalid type"),
            "{err:?}"
        );
        assert!(!err.retryable);
        // Pure actions run from their spec, without a runner.
        let out = connectors
            .invoke(invocation("core/set", serde_json::json!({"say": "hi"})))
            .await;
        assert_eq!(out, Ok(serde_json::json!({"say": "hi"})));
        // Not registered: refused for good, naming it.
        let err = self::connectors(&[&core::SET])
            .invoke(invocation("test/echo", serde_json::json!({})))
            .await
            .unwrap_err();
        assert_eq!(err.message, "unknown action \"test/echo\"");
        assert!(!err.retryable);
    }

    #[test]
    fn outputs_have_the_fields_their_schemas_declare() {
        let registry = Registry::builtin();
        let fields = |name: &str| -> Vec<String> {
            let schema = registry.get(name).unwrap().output_schema();
            schema["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        };
        let params = |v: Value| v.as_object().cloned().unwrap();
        let logged = registry
            .run_pure("core/log", &params(serde_json::json!({"message": 3})))
            .unwrap()
            .unwrap();
        let keys: Vec<String> = logged.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, fields("core/log"));
        assert_eq!(logged["message"], "3");
        assert_eq!(fields("http/request"), ["body", "headers", "status", "url"]);
        let sleep = registry.get("core/sleep").unwrap().output_schema();
        assert_eq!(sleep["additionalProperties"], false);
        let set = registry.get("core/set").unwrap().output_schema();
        assert_eq!(set["type"], "object");
        assert!(set.get("properties").is_none());
    }

    #[test]
    #[should_panic(expected = "action core/set is registered twice")]
    fn an_action_registered_twice_is_a_mistake() {
        Registry::new(&[&core::SET, &core::SET]);
    }

    #[test]
    fn params_schemas_come_from_the_params_types() {
        let registry = Registry::builtin();
        let http = registry.get("http/request").unwrap().params_schema();
        assert_eq!(http["title"], "http/request");
        assert_eq!(http["required"], serde_json::json!(["url"]));
        assert_eq!(http["additionalProperties"], false);
        assert_eq!(http["properties"]["method"]["enum"][0], "GET");
        assert_eq!(http["properties"]["ok_status"]["type"], "array");
        assert_eq!(http["properties"]["timeout"]["type"], "string");
        assert_eq!(
            http["allOf"],
            serde_json::json!([{"not": {"required": ["body", "json"]}}])
        );
        // Every param is described, from its doc comment.
        let declared = &registry.get("http/request").unwrap().declared;
        assert_eq!(declared.params.len(), 10);
        for p in &declared.params {
            assert!(!p.description.is_empty(), "{}", p.name);
        }
        assert_eq!(
            declared.param("timeout").unwrap().description,
            "request timeout (default 30s)"
        );
        let set = &registry.get("core/set").unwrap().declared;
        assert!(set.open && set.params.is_empty());
        let sleep = registry.get("core/sleep").unwrap().params_schema();
        assert_eq!(sleep["required"], serde_json::json!(["duration"]));
        assert_eq!(sleep["additionalProperties"], false);
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
                ("ai/completion", ActionKind::Effect),
            ]
        );
        assert!(
            BUILTIN
                .iter()
                .filter(|a| a.logs)
                .map(|a| a.name)
                .eq(["core/log"])
        );
        // Credential types are the secrets' own.
        for a in BUILTIN {
            for t in a.credential_types {
                assert!(credentials::find(t.name).is_some(), "{}", t.name);
            }
        }
    }

    /// The action table of docs/workflows.md names every built-in action, each of its
    /// params and credential types, and nothing else.
    #[test]
    fn the_docs_action_table_matches_the_registry() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/workflows.md"));
        let rows: Vec<(&str, &str)> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once("` | "))
            .filter(|(name, _)| name.contains('/'))
            .collect();
        let documented: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
        let registered: Vec<&str> = Registry::builtin().names().collect();
        assert_eq!(documented, registered);
        for (name, row) in rows {
            let action = Registry::builtin().get(name).unwrap();
            for p in &action.declared.params {
                assert!(row.contains(&format!("`{}`", p.name)), "{name}: {}", p.name);
            }
            for t in action.spec.credential_types {
                assert!(row.contains(&format!("`{}`", t.name)), "{name}: {}", t.name);
            }
            // The output column names the output's fields.
            let output = row.rsplit(" | ").next().unwrap_or_default();
            for field in action.output_schema()["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(f, _)| f)
            {
                assert!(output.contains(field.as_str()), "{name}: output {field}");
            }
        }
    }
}
