//! `mantlectl status|logs|cancel|retry ID` and `mantlectl executions list`: executions as
//! mantlectl prints them, and event lines.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mantle_client::proto::execution_event::Kind;
use mantle_client::proto::{Execution, ExecutionEvent, ExecutionStatus, StepAttempt};
use mantle_client::{
    Client, ExecutionFilter, execution_status_str, step_status_str, timestamp_to_datetime,
};
use serde::Serialize;

use super::follow::{Show, last_recorded_seq, wait_for};
use super::{Context, EXIT_ERROR, Exit};
use crate::cli::{ExecutionsCommand, WaitArgs};
use crate::output::{
    self, OutputFormat, Render, Table, duration_cell, key_values, serialize_time, text_cell,
    time_cell,
};

/// How long `logs` without --follow waits for another event before it stops.
const LOGS_IDLE: Duration = Duration::from_secs(1);

/// `text` parsed as JSON: null when empty, the text itself when it is not JSON.
pub fn parse_json(text: &str) -> serde_json::Value {
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// A JSON value for a table cell: compact JSON, or `-` for null.
fn json_cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The exit code of `run --wait|--follow` for an execution that ended in `status`: 0
/// only for COMPLETED.
pub fn exit_code(status: ExecutionStatus) -> u8 {
    if status == ExecutionStatus::Completed {
        0
    } else {
        EXIT_ERROR
    }
}

/// Ends mantlectl with [`exit_code`] of `execution`, after it has been printed.
pub fn conclude(execution: &ExecutionView) -> anyhow::Result<()> {
    match exit_code(execution.status_enum()) {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}

/// An execution as mantlectl prints it.
#[derive(Debug, Serialize)]
pub struct ExecutionView {
    pub id: String,
    pub workflow: String,
    pub version: i64,
    /// Lower-case, without prefix: `completed`, `timed_out`, …
    pub status: &'static str,
    /// `inputs_json`, parsed.
    pub inputs: serde_json::Value,
    /// `outputs_json`, parsed; null until completed.
    pub outputs: serde_json::Value,
    pub error: String,
    #[serde(serialize_with = "serialize_time")]
    pub create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    pub end_time: Option<DateTime<Utc>>,
    /// `trigger_json`, parsed.
    pub trigger: serde_json::Value,
    /// What its model calls used (GetExecution only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_usage: Option<serde_json::Value>,
    #[serde(skip)]
    raw_status: i32,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        ExecutionView {
            status: execution_status_str(e.status),
            raw_status: e.status,
            inputs: parse_json(&e.inputs_json),
            outputs: parse_json(&e.outputs_json),
            trigger: parse_json(&e.trigger_json),
            model_usage: e.model_usage.map(|u| {
                serde_json::json!({
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cost_usd": u.cost_usd,
                })
            }),
            create_time: e.create_time.as_ref().and_then(timestamp_to_datetime),
            start_time: e.start_time.as_ref().and_then(timestamp_to_datetime),
            end_time: e.end_time.as_ref().and_then(timestamp_to_datetime),
            id: e.id,
            workflow: e.workflow,
            version: e.version,
            error: e.error,
        }
    }
}

impl ExecutionView {
    fn status_enum(&self) -> ExecutionStatus {
        ExecutionStatus::try_from(self.raw_status).unwrap_or_default()
    }

    /// From the first step's start (or the creation) to the end; `-` while unfinished.
    fn duration(&self) -> String {
        duration_cell(self.start_time.or(self.create_time), self.end_time)
    }
}

impl Render for ExecutionView {
    fn table(&self) -> String {
        let mut rows = vec![
            ("id", self.id.clone()),
            ("workflow", format!("{}@{}", self.workflow, self.version)),
            ("status", self.status.to_owned()),
            ("created", time_cell(self.create_time)),
            ("duration", self.duration()),
            ("error", text_cell(&self.error)),
            ("inputs", json_cell(&self.inputs)),
            ("outputs", json_cell(&self.outputs)),
        ];
        if let Some(u) = &self.model_usage {
            rows.push((
                "model usage",
                format!(
                    "{} tokens in, {} out, ${:.6}",
                    u["input_tokens"],
                    u["output_tokens"],
                    u["cost_usd"].as_f64().unwrap_or_default()
                ),
            ));
        }
        key_values(&rows)
    }
}

/// A step attempt as mantlectl prints it.
#[derive(Debug, Serialize)]
struct AttemptView {
    step_name: String,
    attempt: i32,
    status: &'static str,
    /// `output_json`, parsed; null until completed.
    output: serde_json::Value,
    error: String,
    #[serde(serialize_with = "serialize_time")]
    start_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    end_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    wake_time: Option<DateTime<Utc>>,
}

impl From<StepAttempt> for AttemptView {
    fn from(a: StepAttempt) -> Self {
        AttemptView {
            status: step_status_str(a.status),
            output: parse_json(&a.output_json),
            start_time: a.start_time.as_ref().and_then(timestamp_to_datetime),
            end_time: a.end_time.as_ref().and_then(timestamp_to_datetime),
            wake_time: a.wake_time.as_ref().and_then(timestamp_to_datetime),
            step_name: a.step_name,
            attempt: a.attempt,
            error: a.error,
        }
    }
}

/// `status ID`: the execution and its attempts.
#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(flatten)]
    execution: ExecutionView,
    attempts: Vec<AttemptView>,
}

impl Render for StatusView {
    fn table(&self) -> String {
        let mut table = Table::new(&["STEP", "ATTEMPT", "STATUS", "STARTED", "DURATION", "ERROR"]);
        for a in &self.attempts {
            table.row(vec![
                a.step_name.clone(),
                a.attempt.to_string(),
                a.status.to_owned(),
                time_cell(a.start_time),
                duration_cell(a.start_time, a.end_time),
                text_cell(&a.error),
            ]);
        }
        format!("{}\n{}", self.execution.table(), table.render())
    }
}

/// Several executions; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ExecutionList(Vec<ExecutionView>);

impl Render for ExecutionList {
    fn table(&self) -> String {
        let mut table = Table::new(&["ID", "WORKFLOW", "VERSION", "STATUS", "CREATED", "DURATION"]);
        for e in &self.0 {
            table.row(vec![
                e.id.clone(),
                e.workflow.clone(),
                e.version.to_string(),
                e.status.to_owned(),
                time_cell(e.create_time),
                e.duration(),
            ]);
        }
        table.render()
    }
}

/// One event as a line: `12:00:01 step fetch attempt 1 running`,
/// `12:00:02 step fetch attempt 1 failed: <error>`, `12:00:02 [greet] Hello`,
/// `12:00:03 execution completed`. The time is the time of day in UTC.
pub fn event_line(event: &ExecutionEvent) -> String {
    let time = event
        .time
        .as_ref()
        .and_then(timestamp_to_datetime)
        .map_or_else(
            || "--:--:--".to_owned(),
            |t| t.format("%H:%M:%S").to_string(),
        );
    let with_message = |text: String| {
        if event.message.is_empty() {
            text
        } else {
            format!("{text}: {}", event.message)
        }
    };
    let what = match Kind::try_from(event.kind).unwrap_or_default() {
        Kind::ExecutionStatus => with_message(format!(
            "execution {}",
            execution_status_str(event.execution_status)
        )),
        Kind::StepStatus => with_message(format!(
            "step {} attempt {} {}",
            event.step_name,
            event.attempt,
            step_status_str(event.step_status)
        )),
        Kind::Log => format!("[{}] {}", event.step_name, event.message),
        Kind::Unspecified => with_message(format!("event {}", event.seq)),
    };
    // One event per line, whatever the message holds.
    format!("{time} {what}")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An event in JSON/YAML output (`logs -o json` prints one JSON object per line).
#[derive(Debug, Serialize)]
struct EventView {
    seq: i64,
    #[serde(serialize_with = "serialize_time")]
    time: Option<DateTime<Utc>>,
    /// `execution_status`, `step_status`, `log` (or `unspecified`).
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_status: Option<&'static str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    step_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    attempt: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_status: Option<&'static str>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl From<&ExecutionEvent> for EventView {
    fn from(e: &ExecutionEvent) -> Self {
        let kind = Kind::try_from(e.kind).unwrap_or_default();
        EventView {
            seq: e.seq,
            time: e.time.as_ref().and_then(timestamp_to_datetime),
            kind: match kind {
                Kind::ExecutionStatus => "execution_status",
                Kind::StepStatus => "step_status",
                Kind::Log => "log",
                Kind::Unspecified => "unspecified",
            },
            execution_status: (kind == Kind::ExecutionStatus)
                .then(|| execution_status_str(e.execution_status)),
            step_name: e.step_name.clone(),
            attempt: e.attempt,
            step_status: (kind == Kind::StepStatus).then(|| step_status_str(e.step_status)),
            message: e.message.clone(),
        }
    }
}

/// Prints one event of `logs` to stdout: a line, a JSON line or a YAML document.
pub fn print_event(format: OutputFormat, event: &ExecutionEvent) {
    let text = match format {
        OutputFormat::Table => event_line(event) + "\n",
        OutputFormat::Json => match serde_json::to_string(&EventView::from(event)) {
            Ok(json) => json + "\n",
            Err(_) => return,
        },
        OutputFormat::Yaml => match serde_saphyr::to_string(&EventView::from(event)) {
            Ok(yaml) => format!("---\n{}", yaml.trim_end_matches('\n')) + "\n",
            Err(_) => return,
        },
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth failing over.
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Prints an execution in the output format.
pub fn print_execution(ctx: &Context, execution: Execution) -> anyhow::Result<()> {
    output::print(ctx.output, &ExecutionView::from(execution))
}

/// `mantlectl status ID`.
pub async fn status(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    let (execution, attempts) =
        tokio::try_join!(client.get_execution(id), client.list_step_attempts(id))?;
    output::print(
        ctx.output,
        &StatusView {
            execution: execution.into(),
            attempts: grouped_by_step(attempts)
                .into_iter()
                .map(AttemptView::from)
                .collect(),
        },
    )
}

/// The attempts grouped by step, each step's in attempt order; steps in the order their
/// first attempt started (the server lists attempts by start time).
fn grouped_by_step(attempts: Vec<StepAttempt>) -> Vec<StepAttempt> {
    let mut first_seen: std::collections::HashMap<String, usize> = Default::default();
    for a in &attempts {
        let next = first_seen.len();
        first_seen.entry(a.step_name.clone()).or_insert(next);
    }
    let mut attempts = attempts;
    attempts.sort_by_key(|a| (first_seen[&a.step_name], a.attempt));
    attempts
}

/// `mantlectl logs ID [--follow]`.
pub async fn logs(ctx: &Context, id: &str, follow: bool) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    if follow {
        wait_for(&client, id, 0, None, Show::Events(ctx.output)).await?;
        return Ok(());
    }
    print_recorded_events(&client, id, ctx.output).await
}

/// The events recorded so far. A watch ends after each terminal event (a retried
/// execution has several), so it is reopened after the last event seen until a round
/// brings nothing new; a stream that stays quiet for [`LOGS_IDLE`] (a running
/// execution) is left.
async fn print_recorded_events(
    client: &Client,
    id: &str,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut last_seq = 0;
    loop {
        let mut events = client.watch_execution(id, last_seq).await?;
        let before = last_seq;
        let mut ended = false;
        while let Ok(next) = tokio::time::timeout(LOGS_IDLE, events.next_event()).await {
            match next? {
                Some(event) if event.seq > last_seq => {
                    last_seq = event.seq;
                    print_event(format, &event);
                }
                Some(_) => {}
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if !ended || last_seq == before {
            return Ok(());
        }
    }
}

/// `mantlectl cancel ID`. Cancelling a finished execution changes nothing; that is said
/// in one line on stderr (exit 0), and the execution is printed as always.
pub async fn cancel(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    let before = client.get_execution(id).await?;
    let status = ExecutionStatus::try_from(before.status).unwrap_or_default();
    if mantle_client::is_terminal(status) {
        eprintln!(
            "execution {id} already ended ({}); nothing to cancel",
            execution_status_str(before.status)
        );
        return print_execution(ctx, before);
    }
    print_execution(ctx, client.cancel_execution(id).await?)
}

/// `mantlectl retry ID [--wait|--follow]`. The events of the retry are those after the
/// execution's last recorded event.
pub async fn retry(ctx: &Context, id: &str, waiting: &WaitArgs) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    if !waiting.waits() {
        return print_execution(ctx, client.retry_execution(id).await?);
    }
    let after_seq = last_recorded_seq(&client, id).await?;
    client.retry_execution(id).await?;
    let show = if waiting.follow {
        eprintln!("execution {id} retried");
        Show::Progress
    } else {
        Show::Nothing
    };
    let finished = wait_for(&client, id, after_seq, waiting.timeout, show).await?;
    let view = ExecutionView::from(finished);
    output::print(ctx.output, &view)?;
    conclude(&view)
}

/// `mantlectl executions …`.
pub async fn run(ctx: &Context, command: ExecutionsCommand) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    match command {
        ExecutionsCommand::List {
            workflow,
            status,
            limit,
            full,
        } => {
            let filter = ExecutionFilter {
                workflow: workflow.filter(|w| !w.is_empty()),
                status,
                ..Default::default()
            };
            let limit = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            let view = if full {
                mantle_client::proto::View::Full
            } else {
                mantle_client::proto::View::Basic
            };
            let executions = client.list_executions(&filter, limit, view).await?;
            output::print(
                ctx.output,
                &ExecutionList(executions.into_iter().map(ExecutionView::from).collect()),
            )
        }
        ExecutionsCommand::Cancel { workflow, status } => {
            let filter = ExecutionFilter {
                workflow: workflow.filter(|w| !w.is_empty()),
                status,
                ..Default::default()
            };
            let n = client.cancel_executions(&filter).await?;
            println!("cancellation requested for {n} executions");
            Ok(())
        }
        ExecutionsCommand::Delete {
            id,
            before,
            workflow,
        } => {
            if let Some(id) = id {
                client.delete_execution(&id).await?;
                println!("execution {id} deleted");
                return Ok(());
            }
            let before = before.expect("clap requires an id or --before");
            let n = client
                .delete_executions(before, workflow.as_deref())
                .await?;
            println!(
                "deleted {n} executions that ended before {}",
                before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;
    use mantle_client::proto::StepStatus;

    fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    fn execution(status: ExecutionStatus) -> Execution {
        Execution {
            id: "0190f1a2-0000-7000-8000-000000000001".into(),
            workflow: "hello".into(),
            version: 2,
            status: status as i32,
            inputs_json: r#"{"who":"world"}"#.into(),
            outputs_json: r#"{"message":"Hello, world!"}"#.into(),
            error: String::new(),
            create_time: at(1_700_000_000, 0),
            start_time: at(1_700_000_000, 500_000_000),
            end_time: at(1_700_000_002, 0),
            trigger_json: r#"{"type":"api"}"#.into(),
            model_usage: None,
        }
    }

    #[test]
    fn model_usage_is_shown_when_there_is_some() {
        let plain = ExecutionView::from(execution(ExecutionStatus::Completed));
        assert!(!plain.table().contains("model usage"));
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("model_usage")
                .is_none()
        );
        let mut e = execution(ExecutionStatus::Completed);
        e.model_usage = Some(mantle_client::proto::ModelUsage {
            input_tokens: 1200,
            output_tokens: 300,
            cost_usd: 0.0045,
        });
        let view = ExecutionView::from(e);
        assert!(
            view.table()
                .contains("model usage:  1200 tokens in, 300 out, $0.004500"),
            "{}",
            view.table()
        );
        assert_eq!(
            serde_json::to_value(&view).unwrap()["model_usage"]["output_tokens"],
            300
        );
    }

    fn event(kind: Kind) -> ExecutionEvent {
        ExecutionEvent {
            seq: 4,
            // 12:00:01 UTC
            time: at(1_700_049_601, 250_000_000),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_completed_exits_0() {
        assert_eq!(exit_code(ExecutionStatus::Completed), 0);
        for status in [
            ExecutionStatus::Failed,
            ExecutionStatus::Cancelled,
            ExecutionStatus::TimedOut,
            ExecutionStatus::Running,
            ExecutionStatus::Unspecified,
        ] {
            assert_eq!(exit_code(status), EXIT_ERROR, "{status:?}");
        }
        assert!(conclude(&execution(ExecutionStatus::Completed).into()).is_ok());
        let err = conclude(&execution(ExecutionStatus::TimedOut).into()).unwrap_err();
        assert_eq!(err.downcast_ref::<Exit>().map(|e| e.0), Some(EXIT_ERROR));
    }

    #[test]
    fn step_events_read_as_progress_lines() {
        let mut e = event(Kind::StepStatus);
        e.step_name = "fetch".into();
        e.attempt = 1;
        e.step_status = StepStatus::Running as i32;
        assert_eq!(event_line(&e), "12:00:01 step fetch attempt 1 running");
        e.step_status = StepStatus::Completed as i32;
        assert_eq!(event_line(&e), "12:00:01 step fetch attempt 1 completed");
        e.step_status = StepStatus::Failed as i32;
        e.message = "http 500".into();
        assert_eq!(
            event_line(&e),
            "12:00:01 step fetch attempt 1 failed: http 500"
        );
    }

    #[test]
    fn log_and_execution_events() {
        let mut log = event(Kind::Log);
        log.step_name = "greet".into();
        log.attempt = 1;
        log.message = "Hello\nworld".into();
        assert_eq!(event_line(&log), "12:00:01 [greet] Hello world");

        let mut done = event(Kind::ExecutionStatus);
        done.execution_status = ExecutionStatus::TimedOut as i32;
        assert_eq!(event_line(&done), "12:00:01 execution timed_out");
        done.execution_status = ExecutionStatus::Failed as i32;
        done.message = "step fetch failed".into();
        assert_eq!(
            event_line(&done),
            "12:00:01 execution failed: step fetch failed"
        );

        let mut odd = event(Kind::Unspecified);
        odd.time = None;
        assert_eq!(event_line(&odd), "--:--:-- event 4");
    }

    #[test]
    fn event_json_names_kind_and_statuses() {
        let mut e = event(Kind::StepStatus);
        e.step_name = "fetch".into();
        e.attempt = 2;
        e.step_status = StepStatus::Pending as i32;
        let value = serde_json::to_value(EventView::from(&e)).unwrap();
        assert_eq!(value["kind"], "step_status");
        assert_eq!(value["step_status"], "pending");
        assert_eq!(value["attempt"], 2);
        assert!(value.get("execution_status").is_none());
        assert_eq!(value["time"], "2023-11-15T12:00:01.250Z");
    }

    #[test]
    fn execution_table_shows_workflow_at_version_and_duration() {
        let view = ExecutionView::from(execution(ExecutionStatus::Completed));
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "id:        0190f1a2-0000-7000-8000-000000000001\n\
             workflow:  hello@2\n\
             status:    completed\n\
             created:   2023-11-14T22:13:20Z\n\
             duration:  1.5s\n\
             error:     -\n\
             inputs:    {\"who\":\"world\"}\n\
             outputs:   {\"message\":\"Hello, world!\"}\n"
        );
    }

    #[test]
    fn execution_json_parses_the_json_fields() {
        let mut e = execution(ExecutionStatus::TimedOut);
        e.outputs_json = String::new();
        e.end_time = None;
        let json = render(OutputFormat::Json, &ExecutionView::from(e)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["status"], "timed_out");
        assert_eq!(value["inputs"]["who"], "world");
        assert_eq!(value["outputs"], serde_json::Value::Null);
        assert_eq!(value["trigger"]["type"], "api");
        assert_eq!(value["end_time"], serde_json::Value::Null);
        assert!(value.get("raw_status").is_none());
    }

    #[test]
    fn status_lists_attempts() {
        let attempts = vec![
            StepAttempt {
                step_name: "fetch".into(),
                attempt: 1,
                status: StepStatus::Failed as i32,
                error: "http 500".into(),
                start_time: at(1_700_000_000, 0),
                end_time: at(1_700_000_000, 200_000_000),
                ..Default::default()
            },
            StepAttempt {
                step_name: "fetch".into(),
                attempt: 2,
                status: StepStatus::Running as i32,
                start_time: at(1_700_000_001, 0),
                ..Default::default()
            },
        ];
        let view = StatusView {
            execution: execution(ExecutionStatus::Running).into(),
            attempts: attempts.into_iter().map(AttemptView::from).collect(),
        };
        let table = render(OutputFormat::Table, &view).unwrap();
        assert!(
            table.ends_with(
                "\nSTEP   ATTEMPT  STATUS   STARTED               DURATION  ERROR\n\
                 fetch  1        failed   2023-11-14T22:13:20Z  200ms     http 500\n\
                 fetch  2        running  2023-11-14T22:13:21Z  -         -\n"
            ),
            "{table}"
        );
        let value: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &view).unwrap()).unwrap();
        assert_eq!(value["status"], "running");
        assert_eq!(value["attempts"][0]["status"], "failed");
        assert_eq!(value["attempts"][1]["output"], serde_json::Value::Null);
    }

    #[test]
    fn status_groups_attempts_by_step() {
        let attempt = |step: &str, n: i32| StepAttempt {
            step_name: step.into(),
            attempt: n,
            ..Default::default()
        };
        // By start time: fetch 1, load 1, fetch 2, load 2, fetch 3.
        let grouped = grouped_by_step(vec![
            attempt("fetch", 1),
            attempt("load", 1),
            attempt("fetch", 2),
            attempt("load", 2),
            attempt("fetch", 3),
        ]);
        let order: Vec<(String, i32)> = grouped
            .into_iter()
            .map(|a| (a.step_name, a.attempt))
            .collect();
        assert_eq!(
            order,
            [
                ("fetch".to_owned(), 1),
                ("fetch".to_owned(), 2),
                ("fetch".to_owned(), 3),
                ("load".to_owned(), 1),
                ("load".to_owned(), 2)
            ]
        );
    }

    #[test]
    fn list_table_has_one_row_per_execution() {
        let mut running = execution(ExecutionStatus::Running);
        running.end_time = None;
        let list = ExecutionList(vec![
            running.into(),
            execution(ExecutionStatus::Completed).into(),
        ]);
        let table = render(OutputFormat::Table, &list).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                    WORKFLOW  VERSION  STATUS     CREATED               DURATION"
        );
        assert!(
            lines[1].ends_with("running    2023-11-14T22:13:20Z  -"),
            "{table}"
        );
        assert!(
            lines[2].ends_with("completed  2023-11-14T22:13:20Z  1.5s"),
            "{table}"
        );
    }

    #[test]
    fn json_fields_parse_leniently() {
        assert_eq!(parse_json(""), serde_json::Value::Null);
        assert_eq!(parse_json("{oops"), serde_json::json!("{oops"));
        assert_eq!(json_cell(&serde_json::Value::Null), "-");
        assert_eq!(json_cell(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
