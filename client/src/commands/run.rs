//! `mantlectl run NAME|FILE`: start an execution (applying the file first), optionally
//! waiting for it or following its progress.

use std::path::Path;

use mantle_client::Client;
use mantle_client::proto::Execution;
use serde_json::{Map, Value};

use super::definitions::{ApplyView, refused, report_refused};
use super::executions::{ExecutionView, conclude, parse_json};
use super::follow::{Show, wait_for};
use super::{Context, EXIT_ERROR, Exit};
use crate::cli::{RunArgs, WaitArgs};
use crate::output::{self, OutputFormat};

/// Whether `run`'s argument names a workflow file rather than a stored workflow: it ends
/// in `.yaml`/`.yml`, or a file of that name exists.
pub fn is_workflow_file(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml") || Path::new(target).is_file()
}

/// The type an input is declared with in a definition's `spec_json` (`string` when the
/// input is declared without a type); `None` for an undeclared input.
fn declared_type<'a>(spec: &'a Value, name: &str) -> Option<&'a str> {
    let input = spec.get("inputs")?.get(name)?;
    Some(
        input
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("string"),
    )
}

/// Converts `--input name=raw` to the declared type. Undeclared inputs (and unknown
/// types) stay strings, so the server reports them.
pub fn coerce_input(spec: &Value, name: &str, raw: &str) -> Result<Value, String> {
    let fail = |what: &str| format!("--input {name}: {raw:?} is not {what}");
    match declared_type(spec, name) {
        Some("integer") => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| fail("an integer")),
        Some("number") => {
            let text = raw.trim();
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::from(n));
            }
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| fail("a number"))
        }
        Some("boolean") => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(fail("a boolean (true or false)")),
        },
        Some("object") => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(fail("a JSON object")),
        },
        Some("array") => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Array(_)) => Ok(v),
            _ => Err(fail("a JSON array")),
        },
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Parses an inputs file: JSON for `.json`, YAML otherwise; it must hold an object.
pub fn parse_inputs_file(path: &Path, text: &str) -> anyhow::Result<Map<String, Value>> {
    let name = path.display();
    let is_json = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let value: Value = if is_json {
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{name}: invalid JSON: {e}"))?
    } else if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{name}: invalid YAML: {e}"))?
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => anyhow::bail!("{name}: inputs must be an object of input names to values"),
    }
}

/// The inputs to send: the file's, overridden by each `--input` converted by `spec`.
pub fn build_inputs(
    file_inputs: Map<String, Value>,
    flags: &[(String, String)],
    spec: &Value,
) -> anyhow::Result<Map<String, Value>> {
    let mut inputs = file_inputs;
    for (name, raw) in flags {
        let value = coerce_input(spec, name, raw).map_err(anyhow::Error::msg)?;
        inputs.insert(name.clone(), value);
    }
    Ok(inputs)
}

/// Applies the workflow file; returns the workflow's name, the stored version and its
/// spec. The apply summary goes to stderr; a refused file is reported there and ends
/// mantlectl with exit code 1.
async fn apply_file(client: &Client, path: &str) -> anyhow::Result<(String, i64, Value)> {
    let source =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
    match client.apply_definition(&source, path).await {
        Ok(response) => {
            let definition = response.definition.clone().unwrap_or_default();
            let summary = output::render(OutputFormat::Table, &ApplyView::from(response))?;
            eprint!("{summary}");
            Ok((
                definition.name,
                definition.version,
                parse_json(&definition.spec_json),
            ))
        }
        Err(err) => {
            let refusal = refused(err)?;
            report_refused(path, &refusal, false);
            Err(Exit(EXIT_ERROR).into())
        }
    }
}

/// `mantlectl run NAME|FILE`.
pub async fn run(ctx: &Context, args: &RunArgs) -> anyhow::Result<()> {
    let file_inputs = match &args.inputs_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            parse_inputs_file(path, &text)?
        }
        None => Map::new(),
    };
    let client = ctx.connect(true).await?;

    let (workflow, version, mut spec) = if is_workflow_file(&args.target) {
        let (name, applied, spec) = apply_file(&client, &args.target).await?;
        match args.version {
            Some(v) if v != applied => (name, v, Value::Null),
            _ => (name, applied, spec),
        }
    } else {
        (args.target.clone(), args.version.unwrap_or(0), Value::Null)
    };
    if !args.inputs.is_empty() && spec.is_null() {
        let definition = client.get_definition(&workflow, version).await?;
        spec = parse_json(&definition.spec_json);
    }
    let inputs = build_inputs(file_inputs, &args.inputs, &spec)?;

    let execution = client
        .start_execution(&workflow, version, &inputs, args.idempotency_key.as_deref())
        .await?;
    report_started(ctx, &client, execution, &args.waiting).await
}

/// Reports an execution just started (by `run` or `triggers fire`): without
/// --wait/--follow its id (-o json/yaml: the execution); with them, the final execution,
/// ending mantlectl with exit code 1 unless it completed.
pub async fn report_started(
    ctx: &Context,
    client: &Client,
    execution: Execution,
    waiting: &WaitArgs,
) -> anyhow::Result<()> {
    if !waiting.waits() {
        if ctx.output == OutputFormat::Table {
            println!("{}", execution.id);
            return Ok(());
        }
        return output::print(ctx.output, &ExecutionView::from(execution));
    }
    let id = execution.id;
    let show = if waiting.follow {
        eprintln!("execution {id} started");
        Show::Progress
    } else {
        Show::Nothing
    };
    let finished = wait_for(client, &id, 0, waiting.timeout, show).await?;
    let view = ExecutionView::from(finished);
    output::print(ctx.output, &view)?;
    conclude(&view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "name": "typed",
            "inputs": {
                "who": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"type": "number"},
                "loud": {"type": "boolean"},
                "extra": {"type": "object"},
                "tags": {"type": "array"},
                "plain": {"default": "x"}
            },
            "steps": [{"name": "a", "action": "core/log"}]
        })
    }

    #[test]
    fn inputs_are_converted_to_their_declared_types() {
        let spec = spec();
        assert_eq!(coerce_input(&spec, "who", "42").unwrap(), json!("42"));
        assert_eq!(coerce_input(&spec, "count", " 42 ").unwrap(), json!(42));
        assert_eq!(coerce_input(&spec, "count", "-7").unwrap(), json!(-7));
        assert_eq!(coerce_input(&spec, "ratio", "2").unwrap(), json!(2));
        assert_eq!(coerce_input(&spec, "ratio", "0.5").unwrap(), json!(0.5));
        assert_eq!(coerce_input(&spec, "loud", "true").unwrap(), json!(true));
        assert_eq!(coerce_input(&spec, "loud", "FALSE").unwrap(), json!(false));
        assert_eq!(
            coerce_input(&spec, "extra", r#"{"a": [1]}"#).unwrap(),
            json!({"a": [1]})
        );
        assert_eq!(
            coerce_input(&spec, "tags", r#"["x", 2]"#).unwrap(),
            json!(["x", 2])
        );
        // Declared without a type: a string.
        assert_eq!(coerce_input(&spec, "plain", "7").unwrap(), json!("7"));
    }

    #[test]
    fn undeclared_inputs_stay_strings_for_the_server_to_report() {
        assert_eq!(coerce_input(&spec(), "nope", "1").unwrap(), json!("1"));
        assert_eq!(
            coerce_input(&Value::Null, "count", "1").unwrap(),
            json!("1")
        );
    }

    #[test]
    fn values_that_do_not_fit_the_type_are_errors_naming_the_input() {
        let spec = spec();
        assert_eq!(
            coerce_input(&spec, "count", "4.5").unwrap_err(),
            r#"--input count: "4.5" is not an integer"#
        );
        assert!(coerce_input(&spec, "ratio", "abc").is_err());
        assert!(coerce_input(&spec, "ratio", "NaN").is_err());
        assert!(coerce_input(&spec, "loud", "yes").is_err());
        assert_eq!(
            coerce_input(&spec, "extra", "[1]").unwrap_err(),
            r#"--input extra: "[1]" is not a JSON object"#
        );
        assert!(coerce_input(&spec, "tags", "{}").is_err());
        assert!(coerce_input(&spec, "tags", "not json").is_err());
    }

    #[test]
    fn flags_override_the_inputs_file() {
        let file = parse_inputs_file(Path::new("in.yaml"), "who: file\ncount: 1\nextra: {a: 1}\n")
            .unwrap();
        let inputs = build_inputs(
            file,
            &[("count".into(), "5".into()), ("loud".into(), "true".into())],
            &spec(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(inputs),
            json!({"who": "file", "count": 5, "extra": {"a": 1}, "loud": true})
        );
        let err = build_inputs(Map::new(), &[("count".into(), "x".into())], &spec());
        assert!(err.is_err());
    }

    #[test]
    fn inputs_files_are_json_or_yaml_objects() {
        let json_file = parse_inputs_file(Path::new("in.JSON"), r#"{"n": 1.5}"#).unwrap();
        assert_eq!(json_file.get("n"), Some(&json!(1.5)));
        assert!(parse_inputs_file(Path::new("in.json"), "n: 1").is_err());
        let yaml = parse_inputs_file(Path::new("in.yml"), "tags: [a, b]\nok: true\n").unwrap();
        assert_eq!(Value::Object(yaml), json!({"tags": ["a", "b"], "ok": true}));
        assert!(
            parse_inputs_file(Path::new("in.yaml"), "")
                .unwrap()
                .is_empty()
        );
        let err = parse_inputs_file(Path::new("in.yaml"), "- a\n- b\n").unwrap_err();
        assert!(err.to_string().contains("must be an object"), "{err}");
    }

    #[test]
    fn file_targets_are_recognised() {
        assert!(is_workflow_file("flows/hello.yaml"));
        assert!(is_workflow_file("HELLO.YML"));
        assert!(!is_workflow_file("hello"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workflow");
        std::fs::write(&path, "name: x\n").unwrap();
        assert!(is_workflow_file(path.to_str().unwrap()));
        assert!(!is_workflow_file(dir.path().to_str().unwrap()));
    }
}
