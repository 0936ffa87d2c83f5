//! `ai/completion`: a model call with durable tool use, on the OpenAI (Chat Completions) and
//! Anthropic (Messages) wire formats.
//!
//! The conversation goes in rounds: a model call, then the tools it asked for (at most
//! `max_tool_calls_per_round`, run concurrently). Each model answer and each tool result is
//! a checkpoint, durable before the loop goes on ([`Progress::checkpoint`]); an attempt
//! starts from the checkpoints of the ones before (after a crash, or a retry), so no model
//! call and no tool call that completed is made again. After `max_tool_rounds` rounds with
//! tools, one last call without tools asks for the answer. Every cap (the step's
//! `max_token_budget`, and those [`Progress::check_budget`] checks) is checked before each
//! model call, with the call's expected size.

pub mod anthropic;
pub mod openai;
pub mod prices;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::params::{self, schema_of};
use super::redact::Redactor;
use super::{
    ActionError, ActionSpec, Checkpoint, Credential, Effect, Estimate, Invocation, Progress, Run,
    Saved, Setup, Usage, credentials,
};
use wire::{Block, Message, Reply, Request, Role, ToolChoice, ToolDef, WireFormat};

pub use prices::Prices;

/// `ai/completion`.
pub const SPEC: ActionSpec = ActionSpec {
    name: "ai/completion",
    description: "Asks a model (OpenAI or Anthropic wire format) and runs the tools it calls, each model answer and tool result checkpointed; outputs {model, text, json, finish_reason, usage, tool_calls}.",
    params: schema_of::<Params>,
    output: schema_of::<Output>,
    credential_types: &[&credentials::OPENAI, &credentials::ANTHROPIC],
    logs: false,
    tools: true,
    run: Run::Effect(build),
};

const DEFAULT_ROUNDS: u32 = 10;
const DEFAULT_CALLS_PER_ROUND: u32 = 10;
/// Most rounds and calls per round a step may ask for.
const MAX_ROUNDS: u32 = 50;
const MAX_CALLS_PER_ROUND: u32 = 50;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest model answer read.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Largest schema (tool input, output) accepted, as JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// What the final call, after the round limit, asks.
const FINAL_REQUEST: &str = "You have used every tool round you were given. Answer now, as \
    well as you can with what you have gathered; do not call tools.";

/// The installation's settings of the action.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `MANTLE_AI_ALLOWED_BASE_URLS`: base URLs a step or secret may name besides the
    /// providers' own. The operator trusts them: they may be private addresses.
    pub allowed_base_urls: Vec<String>,
    /// `MANTLE_AI_PRICES_FILE` over the defaults.
    pub prices: Prices,
    /// `MANTLE_AI_MAX_TOOL_RESULT_BYTES`: a tool result sent to the model is cut there.
    pub max_tool_result_bytes: usize,
    /// `MANTLE_AI_MAX_CONVERSATION_BYTES`: the conversation sent in one call, at most.
    pub max_conversation_bytes: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            allowed_base_urls: Vec::new(),
            prices: Prices::default(),
            max_tool_result_bytes: 32 << 10,
            max_conversation_bytes: 1 << 20,
        }
    }
}

/// Which wire format, and whose API by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Provider {
    Openai,
    Anthropic,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    fn default_base_url(self) -> &'static str {
        match self {
            Provider::Openai => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com",
        }
    }

    fn wire(self) -> &'static dyn WireFormat {
        match self {
            Provider::Openai => &openai::OpenAi,
            Provider::Anthropic => &anthropic::Anthropic,
        }
    }
}

/// `ai/completion`'s params.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("allOf" = [
    {"not": {"required": ["prompt", "messages"]}},
    {"not": {"required": ["system_prompt", "system"]}},
    {"not": {"required": ["max_tool_rounds", "max_rounds"]}},
    {"not": {"required": ["max_tool_calls_per_round", "max_calls_per_round"]}}
]))]
struct Params {
    /// openai (Chat Completions wire format) or anthropic (Messages)
    provider: Provider,
    /// the model, such as gpt-4o-mini or claude-sonnet-4-5
    model: String,
    /// the user's message (or give messages)
    prompt: Option<String>,
    /// the conversation so far: [{role: user|assistant, content}]
    messages: Option<Vec<InMessage>>,
    /// the system prompt
    system_prompt: Option<String>,
    /// the system prompt (the original's spelling)
    system: Option<String>,
    /// sampling temperature
    temperature: Option<f64>,
    /// most tokens in each answer
    max_tokens: Option<u32>,
    /// JSON Schema the answer must fit: it is parsed and validated into output.json
    output_schema: Option<Value>,
    /// actions the model may call: [{name, description, input_schema, action, params, credential, timeout}]
    tools: Option<Vec<ToolParam>>,
    /// rounds of tool calls before a final answer is asked for (default 10, at most 50)
    max_tool_rounds: Option<u32>,
    /// max_tool_rounds (the original's spelling)
    max_rounds: Option<u32>,
    /// tool calls run per round; more get an error result (default 10, at most 50)
    max_tool_calls_per_round: Option<u32>,
    /// max_tool_calls_per_round (the original's spelling)
    max_calls_per_round: Option<u32>,
    /// most tokens (input and output, every round) the step may use
    max_token_budget: Option<u64>,
    /// base URL of the API (an OpenAI-compatible server); must be in MANTLE_AI_ALLOWED_BASE_URLS
    base_url: Option<String>,
    /// timeout of each model call (default 120s; the step's timeout bounds the whole loop)
    request_timeout: Option<params::Duration>,
}

/// A message given in `messages`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: InRole,
    content: String,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum InRole {
    User,
    Assistant,
}

/// One tool, as the step declares it (its `params` are rendered by the engine per call).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolParam {
    /// how the model calls it
    pub name: String,
    /// what it does, for the model
    pub description: Option<String>,
    /// JSON Schema of its arguments (default: any object)
    pub input_schema: Option<Value>,
    /// the action it runs
    pub action: String,
    /// the action's params: templates reading tool.input
    pub params: Option<serde_json::Map<String, Value>>,
    /// the secret the action runs with
    pub credential: Option<String>,
    /// the action's timeout (default 60s)
    pub timeout: Option<params::Duration>,
}

/// `ai/completion`'s output.
#[derive(Serialize, JsonSchema)]
struct Output {
    /// the model that answered
    model: String,
    /// the answer
    text: String,
    /// the answer parsed, when it is JSON or output_schema is set
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<Value>,
    /// why the model stopped: stop, length, content_filter, …
    finish_reason: String,
    /// tokens of every round: {input_tokens, output_tokens, total_tokens, cost_usd}
    usage: OutputUsage,
    /// the tool calls made: [{round, name, arguments, result | error}]
    tool_calls: Vec<ToolCallRecord>,
    /// model calls made
    rounds: u32,
}

#[derive(Serialize, JsonSchema, Default)]
struct OutputUsage {
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// by the price table; absent when a model has no price
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_usd: Option<f64>,
}

#[derive(Serialize, JsonSchema, Clone)]
struct ToolCallRecord {
    round: u32,
    name: String,
    arguments: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A model answer as checkpointed.
#[derive(Serialize, Deserialize)]
struct ModelEntry {
    round: u32,
    /// The call after the round limit, without tools.
    #[serde(rename = "final")]
    final_call: bool,
    reply: Reply,
}

/// A tool result as checkpointed.
#[derive(Serialize, Deserialize, Clone)]
struct ToolEntry {
    round: u32,
    id: String,
    name: String,
    arguments: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One round: the model's answer and the results of the tools it asked for, by call id.
struct Round {
    reply: Reply,
    final_call: bool,
    results: BTreeMap<String, ToolEntry>,
    usage: Usage,
}

fn build(setup: &Setup) -> Result<Arc<dyn Effect>, String> {
    let guarded = super::http::guarded_client(&setup.outbound)?;
    // Base URLs the operator listed may be private (a model server next to the daemon).
    let trusted = super::http::guarded_client(&super::http::Outbound {
        policy: super::NetworkPolicy {
            allow_private: true,
        },
        proxy: setup.outbound.proxy.clone(),
    })?;
    Ok(Arc::new(Completion {
        guarded,
        trusted,
        outbound: setup.outbound.clone(),
        settings: setup.ai.clone(),
    }))
}

struct Completion {
    guarded: reqwest::Client,
    trusted: reqwest::Client,
    outbound: super::http::Outbound,
    settings: Arc<Settings>,
}

#[async_trait::async_trait]
impl Effect for Completion {
    async fn run(&self, inv: Invocation) -> Result<Value, ActionError> {
        let cancel = inv.cancel.clone();
        tokio::select! {
            result = self.complete(inv) => result,
            () = cancel.cancelled() => Err(ActionError::transient("cancelled")),
        }
    }
}

/// A step's params, checked, with what the loop needs.
struct Plan {
    p: Params,
    provider: Provider,
    initial: Vec<Message>,
    system: Option<String>,
    tools: Vec<ToolDef>,
    validators: BTreeMap<String, jsonschema::Validator>,
    output_validator: Option<jsonschema::Validator>,
    max_rounds: u32,
    max_calls: u32,
}

fn plan(p: Params) -> Result<Plan, String> {
    let provider = p.provider;
    let initial = match (&p.prompt, &p.messages) {
        (Some(prompt), None) => vec![Message::user_text(prompt.clone())],
        (None, Some(messages)) if !messages.is_empty() => messages
            .iter()
            .map(|m| Message {
                role: match m.role {
                    InRole::User => Role::User,
                    InRole::Assistant => Role::Assistant,
                },
                content: vec![Block::Text {
                    text: m.content.clone(),
                }],
            })
            .collect(),
        (None, Some(_)) => return Err("params.messages: give at least one message".to_owned()),
        _ => return Err("params: give prompt or messages".to_owned()),
    };
    let max_rounds = p.max_tool_rounds.or(p.max_rounds).unwrap_or(DEFAULT_ROUNDS);
    if !(1..=MAX_ROUNDS).contains(&max_rounds) {
        return Err(format!(
            "params.max_tool_rounds: {max_rounds} is not within 1 to {MAX_ROUNDS}"
        ));
    }
    let max_calls = p
        .max_tool_calls_per_round
        .or(p.max_calls_per_round)
        .unwrap_or(DEFAULT_CALLS_PER_ROUND);
    if !(1..=MAX_CALLS_PER_ROUND).contains(&max_calls) {
        return Err(format!(
            "params.max_tool_calls_per_round: {max_calls} is not within 1 to {MAX_CALLS_PER_ROUND}"
        ));
    }
    let mut tools = Vec::new();
    let mut validators = BTreeMap::new();
    for (i, t) in p.tools.iter().flatten().enumerate() {
        let schema = t
            .input_schema
            .clone()
            .unwrap_or_else(|| json!({"type": "object"}));
        let validator =
            compile_schema(&schema).map_err(|e| format!("params.tools[{i}].input_schema: {e}"))?;
        validators.insert(t.name.clone(), validator);
        tools.push(ToolDef {
            name: t.name.clone(),
            description: t.description.clone().unwrap_or_default(),
            input_schema: schema,
        });
    }
    let output_validator = p
        .output_schema
        .as_ref()
        .map(|s| compile_schema(s).map_err(|e| format!("params.output_schema: {e}")))
        .transpose()?;
    Ok(Plan {
        system: p.system_prompt.clone().or_else(|| p.system.clone()),
        provider,
        initial,
        tools,
        validators,
        output_validator,
        max_rounds,
        max_calls,
        p,
    })
}

/// Compiles a JSON Schema a tenant gave, bounded in size; refuses remote references.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    let size = crate::model::json_len(schema);
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {size} bytes, over the limit of {MAX_SCHEMA_BYTES}"
        ));
    }
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object".to_owned());
    }
    // Patterns run on the `regex` engine (linear time, bounded size), never backtracking;
    // no remote reference is fetched (the crate is built without resolvers).
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20),
        )
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// The first way `value` does not fit `validator`, as `at /path: why`.
fn misfit(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    validator.iter_errors(value).next().map(|e| {
        let path = e.instance_path().to_string();
        let at = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        format!("at {at}: {e}")
    })
}

impl Completion {
    async fn complete(&self, inv: Invocation) -> Result<Value, ActionError> {
        let p: Params = params::parse(&inv.params).map_err(ActionError::permanent)?;
        let plan = plan(p).map_err(ActionError::permanent)?;
        let progress = inv.progress.clone().ok_or_else(|| {
            ActionError::permanent("ai/completion runs only as a step of an execution")
        })?;
        let provider = plan.provider;
        let credential = match inv.credential {
            Some(c) => c,
            None => progress
                .default_credential(provider.name())
                .await?
                .ok_or_else(|| {
                    ActionError::permanent(format!(
                        "ai/completion needs a credential: name a secret of type {0} in the \
                         step's credential, or set the tenant's default_credentials.{0}",
                        provider.name()
                    ))
                })?,
        };
        if credential.kind != provider.name() {
            return Err(ActionError::permanent(format!(
                "credential {:?} is a {} secret; provider {} needs a {} secret",
                credential.name,
                credential.kind,
                provider.name(),
                provider.name()
            )));
        }
        let redactor = Redactor::for_credential(&credential);
        let (url, client) = self
            .endpoint(&plan, &credential)
            .map_err(ActionError::permanent)?;
        let wire = provider.wire();
        let headers = wire.headers(&credential.fields).map_err(|e| {
            ActionError::permanent(format!("credential {:?}: {e}", credential.name))
        })?;
        let timeout = plan
            .p
            .request_timeout
            .map_or(DEFAULT_REQUEST_TIMEOUT, |d| d.0);
        let call = Call {
            client,
            url,
            headers,
            wire,
            timeout,
            redactor: &redactor,
            provider,
        };

        // Go on from what earlier attempts made durable.
        let mut rounds = replay(progress.saved().await?)?;
        loop {
            if let Some(last) = rounds.last_mut() {
                if last.reply.tool_calls.is_empty() {
                    return finish(&plan, &rounds, &self.settings);
                }
                if last.final_call {
                    return Err(ActionError::permanent(format!(
                        "the model still asked for tools after max_tool_rounds ({}) rounds and \
                         a last call without tools",
                        plan.max_rounds
                    )));
                }
                let round = rounds.len() as u32;
                let last = rounds.last_mut().expect("a round");
                self.run_tools(&plan, &progress, round, last, &redactor)
                    .await?;
            }
            let final_call = rounds.len() as u32 >= plan.max_rounds;
            let round = rounds.len() as u32 + 1;
            let mut messages = transcript(&plan, &rounds, &self.settings)?;
            if final_call {
                messages.push(Message::user_text(FINAL_REQUEST));
            }
            let request = Request {
                model: &plan.p.model,
                system: plan.system.as_deref(),
                messages: &messages,
                tools: &plan.tools,
                tool_choice: if final_call {
                    ToolChoice::None
                } else {
                    ToolChoice::Auto
                },
                temperature: plan.p.temperature,
                max_tokens: plan.p.max_tokens,
                output_schema: plan.p.output_schema.as_ref(),
            };
            let body = wire.body(&request);
            // Caps, before the call: what it is expected to use, at least the last call's
            // input (the conversation only grows) and its answer's limit.
            let used = total(&rounds);
            let expected_input = (crate::model::json_len(&body) as u64 / 4)
                .max(rounds.last().map_or(0, |r| r.usage.input_tokens));
            let expected_output = u64::from(plan.p.max_tokens.unwrap_or(0));
            let expected = expected_input + expected_output;
            if let Some(budget) = plan.p.max_token_budget
                && used.tokens() as u64 + expected > budget
            {
                return Err(ActionError::permanent(format!(
                    "stopped before model call {round}: max_token_budget {budget} would be \
                     exceeded ({} tokens used, the call is expected to use about {expected})",
                    used.tokens()
                )));
            }
            progress
                .check_budget(Estimate {
                    tokens: expected,
                    cost_usd: self.settings.prices.cost(
                        &plan.p.model,
                        expected_input,
                        expected_output,
                    ),
                })
                .await?;
            let reply = call.send(&body).await?;
            let model = if reply.model.is_empty() {
                plan.p.model.clone()
            } else {
                reply.model.clone()
            };
            let usage = Usage {
                cost_usd: self.settings.prices.cost(
                    &model,
                    reply.usage.input_tokens,
                    reply.usage.output_tokens,
                ),
                model: model.clone(),
                input_tokens: reply.usage.input_tokens,
                output_tokens: reply.usage.output_tokens,
            };
            let log = if reply.tool_calls.is_empty() {
                format!(
                    "round {round}: {model} answered ({}, {} tokens)",
                    reply.finish_reason,
                    usage.input_tokens + usage.output_tokens
                )
            } else {
                let names: Vec<&str> = reply
                    .tool_calls
                    .iter()
                    .filter_map(|c| match c {
                        Block::ToolCall { name, .. } => Some(name.as_str()),
                        _ => None,
                    })
                    .collect();
                format!(
                    "round {round}: {model} asked for {} tool call{}: {} ({} tokens)",
                    names.len(),
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    usage.input_tokens + usage.output_tokens
                )
            };
            let entry = ModelEntry {
                round,
                final_call,
                reply,
            };
            progress
                .checkpoint(Checkpoint {
                    kind: "model",
                    body: serde_json::to_value(&entry).expect("a model entry serializes"),
                    usage: Some(usage.clone()),
                    log: redactor.text(&log),
                })
                .await?;
            rounds.push(Round {
                reply: entry.reply,
                final_call,
                results: BTreeMap::new(),
                usage,
            });
        }
    }

    /// The URL of the API's endpoint, and the client that may reach it: the provider's own,
    /// or a base URL the operator allowed (from the step, else from the secret).
    fn endpoint(
        &self,
        plan: &Plan,
        credential: &Credential,
    ) -> Result<(reqwest::Url, reqwest::Client), String> {
        let wire = plan.provider.wire();
        let given = plan
            .p
            .base_url
            .as_deref()
            .map(|u| ("params.base_url", u))
            .or_else(|| {
                credential
                    .fields
                    .get("base_url")
                    .map(|u| ("the credential's base_url", u.as_str()))
            });
        let (base, client) = match given {
            None => (plan.provider.default_base_url(), &self.guarded),
            Some((_, u)) if u.trim_end_matches('/') == plan.provider.default_base_url() => {
                (plan.provider.default_base_url(), &self.guarded)
            }
            Some((what, u)) => {
                let u = u.trim_end_matches('/');
                if !self
                    .settings
                    .allowed_base_urls
                    .iter()
                    .any(|a| a.trim_end_matches('/') == u)
                {
                    return Err(format!(
                        "{what}: {u} is not an allowed base URL (the operator lists them in \
                         MANTLE_AI_ALLOWED_BASE_URLS)"
                    ));
                }
                (u, &self.trusted)
            }
        };
        let url = reqwest::Url::parse(&format!("{base}{}", wire.path()))
            .map_err(|e| format!("base URL {base}: {e}"))?;
        let policy = if std::ptr::eq(client, &self.trusted) {
            super::NetworkPolicy {
                allow_private: true,
            }
        } else {
            self.outbound.policy
        };
        super::http::check_url(&url, policy).map_err(|e| format!("base URL {base}: {e}"))?;
        Ok((url, client.clone()))
    }

    /// Runs the tools the round's answer asked for that have no result yet, concurrently,
    /// and checkpoints each result as it comes.
    async fn run_tools(
        &self,
        plan: &Plan,
        progress: &Arc<dyn Progress>,
        round: u32,
        last: &mut Round,
        redactor: &Redactor,
    ) -> Result<(), ActionError> {
        let mut set = tokio::task::JoinSet::new();
        for (i, call) in last.reply.tool_calls.iter().enumerate() {
            let Block::ToolCall {
                id,
                name,
                arguments,
            } = call
            else {
                continue;
            };
            if last.results.contains_key(id) {
                continue;
            }
            let entry = |result: Result<Value, String>| ToolEntry {
                round,
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
                result: result.as_ref().ok().cloned(),
                error: result.err(),
            };
            // Refused at once: its error goes back to the model.
            let refused = if i as u32 >= plan.max_calls {
                Some(format!(
                    "not run: the model asked for {} tool calls in one round, and at most {} \
                     run (max_tool_calls_per_round)",
                    last.reply.tool_calls.len(),
                    plan.max_calls
                ))
            } else if let Some(validator) = plan.validators.get(name) {
                if !arguments.is_object() {
                    Some(format!(
                        "the arguments are not a JSON object: {}",
                        truncate(&arguments.to_string(), 200)
                    ))
                } else {
                    misfit(validator, arguments).map(|why| {
                        format!("the arguments do not fit the tool's input_schema: {why}")
                    })
                }
            } else {
                let names: Vec<&str> = plan.tools.iter().map(|t| t.name.as_str()).collect();
                Some(format!(
                    "unknown tool {name:?}; the tools are: {}",
                    names.join(", ")
                ))
            };
            match refused {
                Some(error) => {
                    set.spawn(std::future::ready(entry(Err(error))));
                }
                None => {
                    let progress = progress.clone();
                    let (name, arguments) = (name.clone(), arguments.clone());
                    let mut e = entry(Ok(Value::Null));
                    set.spawn(async move {
                        let result = progress.call_tool(&name, arguments).await;
                        e.result = result.as_ref().ok().cloned();
                        e.error = result.err();
                        e
                    });
                }
            }
        }
        while let Some(done) = set.join_next().await {
            let mut entry =
                done.map_err(|e| ActionError::transient(format!("a tool call: {e}")))?;
            if let Some(result) = &entry.result {
                let size = crate::model::json_len(result);
                if size > self.settings.max_tool_result_bytes {
                    let text = result.to_string();
                    entry.result = Some(Value::String(format!(
                        "{}…[cut: the result is {size} bytes, over the limit of {}]",
                        truncate(&text, self.settings.max_tool_result_bytes),
                        self.settings.max_tool_result_bytes
                    )));
                }
            }
            if let Some(error) = &entry.error {
                entry.error = Some(truncate(error, self.settings.max_tool_result_bytes));
            }
            let log = match (&entry.result, &entry.error) {
                (_, Some(error)) => format!(
                    "round {round}: tool {} failed: {}",
                    entry.name,
                    truncate(error, 300)
                ),
                (Some(result), None) => format!(
                    "round {round}: tool {} returned {} bytes",
                    entry.name,
                    crate::model::json_len(result)
                ),
                (None, None) => format!("round {round}: tool {} returned nothing", entry.name),
            };
            progress
                .checkpoint(Checkpoint {
                    kind: "tool",
                    body: serde_json::to_value(&entry).expect("a tool entry serializes"),
                    usage: None,
                    log: redactor.text(&log),
                })
                .await?;
            last.results.insert(entry.id.clone(), entry);
        }
        Ok(())
    }
}

/// Rebuilds the rounds from checkpoints.
fn replay(saved: Vec<Saved>) -> Result<Vec<Round>, ActionError> {
    let damaged = |e: serde_json::Error| {
        ActionError::permanent(format!("a checkpoint of this step cannot be read: {e}"))
    };
    let mut rounds: Vec<Round> = Vec::new();
    for s in saved {
        match s.kind.as_str() {
            "model" => {
                let entry: ModelEntry = serde_json::from_value(s.body).map_err(damaged)?;
                rounds.push(Round {
                    usage: s.usage.unwrap_or_else(|| Usage {
                        model: entry.reply.model.clone(),
                        input_tokens: entry.reply.usage.input_tokens,
                        output_tokens: entry.reply.usage.output_tokens,
                        cost_usd: None,
                    }),
                    reply: entry.reply,
                    final_call: entry.final_call,
                    results: BTreeMap::new(),
                });
            }
            "tool" => {
                let entry: ToolEntry = serde_json::from_value(s.body).map_err(damaged)?;
                if let Some(round) = rounds.last_mut() {
                    round.results.insert(entry.id.clone(), entry);
                }
            }
            other => {
                return Err(ActionError::permanent(format!(
                    "a checkpoint of this step has an unknown kind {other:?}"
                )));
            }
        }
    }
    Ok(rounds)
}

/// Usage of every round.
fn total(rounds: &[Round]) -> crate::model::execution::UsageTotal {
    let mut t = crate::model::execution::UsageTotal::default();
    for r in rounds {
        t.input_tokens += r.usage.input_tokens as i64;
        t.output_tokens += r.usage.output_tokens as i64;
    }
    t
}

/// The conversation to send: the step's messages, then each round's answer and its tool
/// results. Over the size limit, the oldest tool results are left out (saying so), the
/// newest kept; if that is not enough the step fails.
fn transcript(
    plan: &Plan,
    rounds: &[Round],
    settings: &Settings,
) -> Result<Vec<Message>, ActionError> {
    let mut messages = plan.initial.clone();
    for round in rounds {
        messages.push(round.reply.message());
        let results: Vec<Block> = round
            .reply
            .tool_calls
            .iter()
            .filter_map(|c| match c {
                Block::ToolCall { id, .. } => round.results.get(id),
                _ => None,
            })
            .map(|e| Block::ToolResult {
                id: e.id.clone(),
                name: e.name.clone(),
                content: match (&e.result, &e.error) {
                    (_, Some(error)) => error.clone(),
                    (Some(Value::String(s)), None) => s.clone(),
                    (Some(v), None) => v.to_string(),
                    (None, None) => "null".to_owned(),
                },
                is_error: e.error.is_some(),
            })
            .collect();
        if !results.is_empty() {
            messages.push(Message {
                role: Role::User,
                content: results,
            });
        }
    }
    let size = |m: &[Message]| {
        m.iter()
            .map(|m| serde_json::to_string(m).map_or(0, |s| s.len()))
            .sum::<usize>()
    };
    let mut bytes = size(&messages);
    'elide: for message in &mut messages {
        for block in &mut message.content {
            if bytes <= settings.max_conversation_bytes {
                break 'elide;
            }
            if let Block::ToolResult { content, .. } = block {
                let before = content.len();
                *content = "[left out: the conversation is over its size limit]".to_owned();
                bytes = bytes.saturating_sub(before) + content.len();
            }
        }
    }
    if bytes > settings.max_conversation_bytes {
        return Err(ActionError::permanent(format!(
            "the conversation is {bytes} bytes, over the limit of {} \
             (MANTLE_AI_MAX_CONVERSATION_BYTES)",
            settings.max_conversation_bytes
        )));
    }
    Ok(messages)
}

/// The step's output from the last round's answer.
fn finish(plan: &Plan, rounds: &[Round], settings: &Settings) -> Result<Value, ActionError> {
    let last = rounds.last().expect("a finished loop has a round");
    let used = total(rounds);
    let mut cost = Some(0.0);
    for r in rounds {
        cost = match (
            cost,
            settings
                .prices
                .cost(&r.usage.model, r.usage.input_tokens, r.usage.output_tokens),
        ) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    let mut tool_calls = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        for c in &r.reply.tool_calls {
            if let Block::ToolCall { id, .. } = c
                && let Some(e) = r.results.get(id)
            {
                tool_calls.push(ToolCallRecord {
                    round: i as u32 + 1,
                    name: e.name.clone(),
                    arguments: e.arguments.clone(),
                    result: e.result.clone(),
                    error: e.error.clone(),
                });
            }
        }
    }
    let text = last.reply.text.clone();
    let parsed = parse_json_answer(&text);
    let mut output = Output {
        model: last.usage.model.clone(),
        json: None,
        finish_reason: last.reply.finish_reason.clone(),
        usage: OutputUsage {
            input_tokens: used.input_tokens as u64,
            output_tokens: used.output_tokens as u64,
            total_tokens: used.tokens() as u64,
            cost_usd: cost,
        },
        tool_calls,
        rounds: rounds.len() as u32,
        text,
    };
    match (&plan.output_validator, parsed) {
        (None, parsed) => {
            output.json = parsed;
            Ok(serde_json::to_value(output).expect("an output serializes"))
        }
        (Some(validator), Some(json)) => match misfit(validator, &json) {
            None => {
                output.json = Some(json);
                Ok(serde_json::to_value(output).expect("an output serializes"))
            }
            Some(why) => Err(ActionError {
                output: Some(serde_json::to_value(output).expect("an output serializes")),
                ..ActionError::permanent(format!("the answer does not fit output_schema: {why}"))
            }),
        },
        (Some(_), None) => Err(ActionError {
            message: format!(
                "the answer is not JSON, and output_schema asks for JSON: {}",
                truncate(&output.text, 200)
            ),
            output: Some(serde_json::to_value(output).expect("an output serializes")),
            ..ActionError::permanent("")
        }),
    }
}

/// The answer as JSON: all of it, or inside a ```json fence.
fn parse_json_answer(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let inner = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))?
        .strip_suffix("```")?;
    serde_json::from_str(inner.trim()).ok()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// One model call's fixed parts.
struct Call<'a> {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    wire: &'static dyn WireFormat,
    timeout: Duration,
    redactor: &'a Redactor,
    provider: Provider,
}

impl Call<'_> {
    /// Sends `body`: the answer, or an error retryable as an HTTP status is (408, 429, 5xx,
    /// and transport errors).
    async fn send(&self, body: &Value) -> Result<Reply, ActionError> {
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let method = reqwest::Method::POST;
        let mut response = req
            .send()
            .await
            .map_err(|e| super::http::describe_send_error(&method, &self.url, &e))?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| super::http::describe_send_error(&method, &self.url, &e))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ActionError::transient(format!(
                    "{}: the answer is over {MAX_ANSWER_BYTES} bytes",
                    self.provider.name()
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !(200..300).contains(&status) {
            let detail = json
                .as_ref()
                .and_then(|j| self.wire.error_message(j))
                .unwrap_or_else(|| truncate(&String::from_utf8_lossy(&bytes), 300));
            return Err(ActionError {
                message: self.redactor.text(&format!(
                    "{} answered {status}: {detail}",
                    self.provider.name()
                )),
                retryable: super::http::retryable_status(status),
                status: Some(status),
                output: None,
            });
        }
        let json = json.ok_or_else(|| {
            ActionError::transient(format!(
                "{}'s answer is not JSON: {}",
                self.provider.name(),
                truncate(&String::from_utf8_lossy(&bytes), 200)
            ))
        })?;
        self.wire.parse(&json).map_err(|e| {
            ActionError::transient(format!(
                "{}'s answer cannot be read: {e}",
                self.provider.name()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, name: &str, arguments: Value) -> Block {
        Block::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
        }
    }

    fn reply(text: &str, calls: Vec<Block>, input: u64, output: u64) -> Reply {
        Reply {
            model: "m".into(),
            text: text.into(),
            finish_reason: if calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            }
            .into(),
            tool_calls: calls,
            usage: wire::Usage {
                input_tokens: input,
                output_tokens: output,
            },
        }
    }

    fn saved_model(round: u32, r: Reply) -> Saved {
        Saved {
            kind: "model".into(),
            usage: Some(Usage {
                model: r.model.clone(),
                input_tokens: r.usage.input_tokens,
                output_tokens: r.usage.output_tokens,
                cost_usd: None,
            }),
            body: serde_json::to_value(ModelEntry {
                round,
                final_call: false,
                reply: r,
            })
            .unwrap(),
        }
    }

    fn saved_tool(round: u32, id: &str, result: Result<Value, String>) -> Saved {
        Saved {
            kind: "tool".into(),
            usage: None,
            body: serde_json::to_value(ToolEntry {
                round,
                id: id.into(),
                name: "t".into(),
                arguments: json!({}),
                result: result.as_ref().ok().cloned(),
                error: result.err(),
            })
            .unwrap(),
        }
    }

    fn plan_of(v: Value) -> Result<Plan, String> {
        plan(params::parse(v.as_object().unwrap())?)
    }

    #[test]
    fn checkpoints_rebuild_the_conversation_in_order() {
        let saved = vec![
            saved_model(
                1,
                reply(
                    "",
                    vec![call("a", "t", json!({"q": 1})), call("b", "t", json!({}))],
                    100,
                    10,
                ),
            ),
            saved_tool(1, "b", Ok(json!({"n": 2}))),
            saved_tool(1, "a", Err("boom".into())),
            saved_model(2, reply("done", vec![], 150, 20)),
        ];
        let rounds = replay(saved).unwrap();
        assert_eq!(rounds.len(), 2);
        assert_eq!(total(&rounds).tokens(), 280);
        let plan = plan_of(json!({"provider": "openai", "model": "m", "prompt": "hi"})).unwrap();
        let messages = transcript(&plan, &rounds, &Settings::default()).unwrap();
        // The prompt, the answer with its calls, their results in the calls' order, the
        // last answer.
        assert_eq!(messages.len(), 4);
        assert_eq!(
            messages[2].content,
            vec![
                Block::ToolResult {
                    id: "a".into(),
                    name: "t".into(),
                    content: "boom".into(),
                    is_error: true
                },
                Block::ToolResult {
                    id: "b".into(),
                    name: "t".into(),
                    content: "{\"n\":2}".into(),
                    is_error: false
                },
            ]
        );
        assert_eq!(messages[3].role, Role::Assistant);
        let bad = replay(vec![Saved {
            kind: "other".into(),
            body: json!({}),
            usage: None,
        }]);
        assert!(bad.is_err());
    }

    #[test]
    fn an_oversized_conversation_leaves_out_the_oldest_results() {
        let big = "x".repeat(600);
        let saved = vec![
            saved_model(1, reply("", vec![call("a", "t", json!({}))], 1, 1)),
            saved_tool(1, "a", Ok(Value::String(big.clone()))),
            saved_model(2, reply("", vec![call("b", "t", json!({}))], 1, 1)),
            saved_tool(2, "b", Ok(Value::String(big.clone()))),
        ];
        let rounds = replay(saved).unwrap();
        let plan = plan_of(json!({"provider": "openai", "model": "m", "prompt": "hi"})).unwrap();
        let settings = Settings {
            max_conversation_bytes: 1200,
            ..Settings::default()
        };
        let messages = transcript(&plan, &rounds, &settings).unwrap();
        let content = |m: &Message| match &m.content[0] {
            Block::ToolResult { content, .. } => content.clone(),
            _ => panic!("a tool result"),
        };
        assert!(content(&messages[2]).starts_with("[left out"));
        assert_eq!(content(&messages[4]), big);
        let tiny = Settings {
            max_conversation_bytes: 100,
            ..Settings::default()
        };
        let err = transcript(&plan, &rounds, &tiny).err().unwrap();
        assert!(
            err.message.contains("over the limit of 100"),
            "{}",
            err.message
        );
    }

    #[test]
    fn params_are_checked_with_their_aliases() {
        let ok = plan_of(json!({"provider": "anthropic", "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "system": "be brief", "max_rounds": 3, "max_calls_per_round": 2})).unwrap();
        assert_eq!((ok.max_rounds, ok.max_calls), (3, 2));
        assert_eq!(ok.system.as_deref(), Some("be brief"));
        let cases = [
            (
                json!({"provider": "openai", "model": "m"}),
                "params: give prompt or messages",
            ),
            (
                json!({"provider": "openai", "model": "m", "prompt": "x", "max_tool_rounds": 0}),
                "params.max_tool_rounds: 0 is not within 1 to 50",
            ),
            (
                json!({"provider": "openai", "model": "m", "prompt": "x", "max_tool_calls_per_round": 51}),
                "params.max_tool_calls_per_round: 51 is not within 1 to 50",
            ),
            (
                json!({"provider": "openai", "model": "m", "prompt": "x", "output_schema": {"type": 7}}),
                "params.output_schema: not a valid JSON Schema",
            ),
            (
                json!({"provider": "openai", "model": "m", "prompt": "x",
                "tools": [{"name": "t", "action": "core/set", "input_schema": {"minimum": "x"}}]}),
                "params.tools[0].input_schema: not a valid JSON Schema",
            ),
        ];
        for (params, want) in cases {
            let err = plan_of(params).err().unwrap();
            assert!(err.starts_with(want), "{err}");
        }
    }

    /// A tenant's schema cannot make validation slow: patterns run in linear time, remote
    /// references are not fetched, and size is bounded.
    #[test]
    fn hostile_schemas_are_bounded() {
        let evil = compile_schema(&json!({"type": "string", "pattern": "^(a+)+$"})).unwrap();
        let started = std::time::Instant::now();
        let input = Value::String(format!("{}!", "a".repeat(5000)));
        assert!(misfit(&evil, &input).is_some());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(compile_schema(&json!({"$ref": "http://169.254.169.254/schema"})).is_err());
        let big = json!({"enum": ["x".repeat(MAX_SCHEMA_BYTES)]});
        assert!(compile_schema(&big).unwrap_err().contains("over the limit"));
        assert!(compile_schema(&json!("string")).is_err());
    }

    #[test]
    fn a_json_answer_is_parsed_bare_or_fenced() {
        assert_eq!(parse_json_answer(" {\"a\": 1} "), Some(json!({"a": 1})));
        assert_eq!(parse_json_answer("```json\n[1]\n```"), Some(json!([1])));
        assert_eq!(parse_json_answer("hello"), None);
        assert_eq!(truncate("héllo", 2), "h");
    }
}
