//! The `core/*` actions: pure ones (no I/O, run inside the driver) and the durable timer.

use serde_json::{Map, Value};

use super::{ActionSpec, ParamType, Run, param};

/// `core/log`.
pub const LOG: ActionSpec = ActionSpec {
    name: "core/log",
    description: "Writes a message to the execution's log; outputs {message}.",
    params: &[param("message", ParamType::String, true, "the text to log")],
    open_params: false,
    exclusive: &[],
    credential_types: &[],
    logs: true,
    run: Run::Pure(log),
};

/// `core/set`.
pub const SET: ActionSpec = ActionSpec {
    name: "core/set",
    description: "Outputs its params as they evaluate: every param becomes an output field.",
    params: &[],
    open_params: true,
    exclusive: &[],
    credential_types: &[],
    logs: false,
    run: Run::Pure(set),
};

/// `core/sleep`: the engine keeps its timer durably; nothing runs.
pub const SLEEP: ActionSpec = ActionSpec {
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
    logs: false,
    run: Run::Timer,
};

/// `core/fail`.
pub const FAIL: ActionSpec = ActionSpec {
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
    logs: false,
    run: Run::Pure(fail),
};

fn log(params: &Map<String, Value>) -> Result<Value, String> {
    let message = match params.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(serde_json::json!({ "message": message }))
}

fn set(params: &Map<String, Value>) -> Result<Value, String> {
    Ok(Value::Object(params.clone()))
}

/// Its error may be retried, as the step's `retry` asks (its message may depend on what
/// changes between attempts, such as the time).
fn fail(params: &Map<String, Value>) -> Result<Value, String> {
    Err(match params.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "core/fail".to_owned(),
    })
}
