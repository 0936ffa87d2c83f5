//! The `core/*` actions: pure ones (no I/O, run inside the driver) and the durable timer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::params::{self, Duration, inline_schema, parse, schema_of};
use super::{ActionSpec, Run};

/// `core/log`.
pub const LOG: ActionSpec = ActionSpec {
    name: "core/log",
    description: "Writes a message to the execution's log; outputs {message}.",
    params: schema_of::<LogParams>,
    output: schema_of::<LogOutput>,
    credential_types: &[],
    logs: true,
    tools: false,
    run: Run::Pure(log),
};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogParams {
    /// the text to log
    message: Message,
}

/// `core/log`'s output.
#[derive(Serialize, JsonSchema)]
struct LogOutput {
    /// the text logged
    message: String,
}

/// The output of an action that outputs nothing: `{}`.
#[derive(Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

/// `core/set`.
pub const SET: ActionSpec = ActionSpec {
    name: "core/set",
    description: "Outputs its params as they evaluate: every param becomes an output field.",
    params: schema_of::<Map<String, Value>>,
    output: schema_of::<Map<String, Value>>,
    credential_types: &[],
    logs: false,
    tools: false,
    run: Run::Pure(set),
};

/// `core/sleep`: the engine keeps its timer durably; nothing runs.
pub const SLEEP: ActionSpec = ActionSpec {
    name: "core/sleep",
    description: "Waits durably for a duration; survives restarts without holding a task.",
    params: schema_of::<SleepParams>,
    output: schema_of::<Nothing>,
    credential_types: &[],
    logs: false,
    tools: false,
    run: Run::Timer,
};

/// `core/sleep`'s params: the engine reads them to set its timer.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    /// how long to wait, such as 500ms, 2s, 5m
    pub duration: Duration,
}

impl SleepParams {
    /// How long a rendered `core/sleep` waits; the error names the param.
    pub fn wait(params: &Map<String, Value>) -> Result<std::time::Duration, String> {
        parse::<SleepParams>(params).map(|p| p.duration.0)
    }
}

/// `core/fail`.
pub const FAIL: ActionSpec = ActionSpec {
    name: "core/fail",
    description: "Fails the step with a message.",
    params: schema_of::<FailParams>,
    output: schema_of::<Nothing>,
    credential_types: &[],
    logs: false,
    tools: false,
    run: Run::Pure(fail),
};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FailParams {
    /// the error message
    message: Message,
}

/// A message: text, or any other value written as JSON (an expression may give one).
struct Message(String);

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Message, D::Error> {
        Ok(Message(match Value::deserialize(d)? {
            Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

inline_schema!(Message, {"type": "string"});

fn log(p: &Map<String, Value>) -> Result<Value, String> {
    let LogParams { message } = params::parse(p)?;
    Ok(serde_json::to_value(LogOutput { message: message.0 }).expect("an output serializes"))
}

fn set(params: &Map<String, Value>) -> Result<Value, String> {
    Ok(Value::Object(params.clone()))
}

/// Its error may be retried, as the step's `retry` asks (its message may depend on what
/// changes between attempts, such as the time).
fn fail(p: &Map<String, Value>) -> Result<Value, String> {
    let FailParams { message } = params::parse(p)?;
    Err(message.0)
}
