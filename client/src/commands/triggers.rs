//! `mantlectl triggers list|pause|resume|fire`.

use chrono::{DateTime, Utc};
use mantle_client::proto::{Trigger, TriggerFire};
use mantle_client::timestamp_to_datetime;
use serde::Serialize;

use super::Context;
use super::executions::parse_json;
use super::run::report_started;
use crate::cli::TriggersCommand;
use crate::output::{self, Render, Table, key_values, serialize_time, text_cell, time_cell};

/// The most characters of a last fire's result a table shows.
const RESULT_CELL_CHARS: usize = 60;

/// A trigger's last fire as mantlectl prints it.
#[derive(Debug, Serialize)]
struct FireView {
    /// When it was due (cron) or received (webhook, `triggers fire`).
    #[serde(serialize_with = "serialize_time")]
    scheduled_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    fire_time: Option<DateTime<Utc>>,
    /// The execution it started; null when it started none.
    execution_id: Option<String>,
    /// `started`, or `not started: ` and why.
    result: String,
}

impl From<TriggerFire> for FireView {
    fn from(f: TriggerFire) -> Self {
        FireView {
            scheduled_time: f.scheduled_time.as_ref().and_then(timestamp_to_datetime),
            fire_time: f.fire_time.as_ref().and_then(timestamp_to_datetime),
            execution_id: non_empty(f.execution_id),
            result: f.result,
        }
    }
}

/// A trigger as mantlectl prints it. The fields of the other type (a cron trigger's
/// schedule, a webhook's path) are left out rather than printed empty.
#[derive(Debug, Serialize)]
struct TriggerView {
    id: String,
    workflow: String,
    /// `cron` or `webhook`.
    #[serde(rename = "type")]
    kind: String,
    /// `cron <schedule>` or `webhook <path>`.
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// `none`, `latest` or `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    catchup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// The name of the secret that signs a webhook's POSTs (never its value).
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_name: Option<String>,
    /// A cron trigger's `inputs_json`, parsed; left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<serde_json::Value>,
    version: i64,
    paused: bool,
    #[serde(serialize_with = "serialize_time")]
    next_fire_time: Option<DateTime<Utc>>,
    /// Null when it never fired.
    last_fire: Option<FireView>,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    update_time: Option<DateTime<Utc>>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<Trigger> for TriggerView {
    fn from(t: Trigger) -> Self {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(timestamp_to_datetime);
        TriggerView {
            next_fire_time: time(&t.next_fire_time),
            create_time: time(&t.create_time),
            update_time: time(&t.update_time),
            inputs: (!t.inputs_json.is_empty()).then(|| parse_json(&t.inputs_json)),
            last_fire: t.last_fire.map(FireView::from),
            id: t.id,
            workflow: t.workflow,
            kind: t.r#type,
            key: t.key,
            schedule: non_empty(t.schedule),
            timezone: non_empty(t.timezone),
            catchup: non_empty(t.catchup),
            path: non_empty(t.path),
            secret_name: non_empty(t.secret_name),
            version: t.version,
            paused: t.paused,
        }
    }
}

/// `text`, cut to `max` characters with `…` at the end when longer.
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl TriggerView {
    /// What makes it fire: `0 8 * * 1-5 (Europe/Berlin)` or the webhook's path.
    fn spec(&self) -> String {
        match (&self.schedule, &self.timezone, &self.path) {
            (Some(schedule), Some(tz), _) => format!("{schedule} ({tz})"),
            (Some(schedule), None, _) => schedule.clone(),
            (None, _, Some(path)) => path.clone(),
            (None, _, None) => text_cell(&self.key),
        }
    }

    fn paused_cell(&self) -> String {
        if self.paused { "yes" } else { "no" }.to_owned()
    }

    /// The last fire's time and result, or `-` when it never fired.
    fn last_fire_cell(&self) -> String {
        match &self.last_fire {
            None => "-".to_owned(),
            Some(f) => format!(
                "{} {}",
                time_cell(f.fire_time.or(f.scheduled_time)),
                shortened(&f.result, RESULT_CELL_CHARS)
            ),
        }
    }
}

impl Render for TriggerView {
    fn table(&self) -> String {
        let mut rows = vec![
            ("id", self.id.clone()),
            ("workflow", format!("{}@{}", self.workflow, self.version)),
            ("type", self.kind.clone()),
            ("spec", self.spec()),
        ];
        if let Some(catchup) = &self.catchup {
            rows.push(("catchup", catchup.clone()));
        }
        if let Some(inputs) = &self.inputs {
            rows.push(("inputs", inputs.to_string()));
        }
        if self.path.is_some() {
            rows.push((
                "secret",
                self.secret_name.clone().unwrap_or_else(|| "-".to_owned()),
            ));
        }
        rows.push(("paused", self.paused_cell()));
        rows.push(("next fire", time_cell(self.next_fire_time)));
        rows.push(("last fire", self.last_fire_cell()));
        if let Some(id) = self.last_fire.as_ref().and_then(|f| f.execution_id.clone()) {
            rows.push(("last execution", id));
        }
        rows.push(("created", time_cell(self.create_time)));
        rows.push(("updated", time_cell(self.update_time)));
        key_values(&rows)
    }
}

/// Several triggers; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct TriggerList(Vec<TriggerView>);

impl Render for TriggerList {
    fn table(&self) -> String {
        let mut table = Table::new(&[
            "ID",
            "WORKFLOW",
            "TYPE",
            "SPEC",
            "PAUSED",
            "NEXT FIRE",
            "LAST FIRE",
        ]);
        for t in &self.0 {
            table.row(vec![
                t.id.clone(),
                t.workflow.clone(),
                t.kind.clone(),
                t.spec(),
                t.paused_cell(),
                time_cell(t.next_fire_time),
                t.last_fire_cell(),
            ]);
        }
        table.render()
    }
}

/// `mantlectl triggers …`. Triggers belong to the tenant, so x-mantle-tenant is sent.
pub async fn run(ctx: &Context, command: TriggersCommand) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    match command {
        TriggersCommand::List { workflow } => {
            let triggers = client
                .list_triggers(workflow.as_deref().filter(|w| !w.is_empty()))
                .await?;
            output::print(
                ctx.output,
                &TriggerList(triggers.into_iter().map(TriggerView::from).collect()),
            )
        }
        TriggersCommand::Pause { id } => {
            let trigger = client.pause_trigger(&id).await?;
            output::print(ctx.output, &TriggerView::from(trigger))
        }
        TriggersCommand::Resume { id } => {
            let trigger = client.resume_trigger(&id).await?;
            output::print(ctx.output, &TriggerView::from(trigger))
        }
        TriggersCommand::Fire { id, waiting } => {
            let execution = client.fire_trigger(&id).await?;
            report_started(ctx, &client, execution, &waiting).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn cron() -> Trigger {
        Trigger {
            id: "t1".into(),
            workflow: "report".into(),
            r#type: "cron".into(),
            key: "cron 0 8 * * 1-5".into(),
            schedule: "0 8 * * 1-5".into(),
            timezone: "Europe/Berlin".into(),
            catchup: "latest".into(),
            inputs_json: r#"{"team":"ops"}"#.into(),
            version: 3,
            next_fire_time: at(1_700_035_200),
            last_fire: Some(TriggerFire {
                scheduled_time: at(1_700_000_000),
                fire_time: at(1_700_000_001),
                execution_id: "e1".into(),
                result: "started".into(),
            }),
            create_time: at(1_699_000_000),
            update_time: at(1_699_000_000),
            ..Default::default()
        }
    }

    fn webhook() -> Trigger {
        Trigger {
            id: "t2".into(),
            workflow: "deploy".into(),
            r#type: "webhook".into(),
            key: "webhook /github".into(),
            path: "/github".into(),
            secret_name: "gh-hook".into(),
            version: 1,
            paused: true,
            create_time: at(1_699_000_000),
            update_time: at(1_699_000_500),
            ..Default::default()
        }
    }

    #[test]
    fn triggers_read_as_a_table() {
        let mut refused = webhook();
        refused.id = "t3".into();
        refused.paused = false;
        refused.last_fire = Some(TriggerFire {
            scheduled_time: at(1_700_000_005),
            fire_time: at(1_700_000_005),
            execution_id: String::new(),
            result: format!("not started: over the concurrency cap {}", "x".repeat(100)),
        });
        let table = render(
            OutputFormat::Table,
            &TriggerList(vec![cron().into(), webhook().into(), refused.into()]),
        )
        .unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID  WORKFLOW  TYPE     SPEC                         PAUSED  NEXT FIRE             \
             LAST FIRE"
        );
        assert_eq!(
            lines[1],
            "t1  report    cron     0 8 * * 1-5 (Europe/Berlin)  no      2023-11-15T08:00:00Z  \
             2023-11-14T22:13:21Z started"
        );
        assert_eq!(
            lines[2],
            "t2  deploy    webhook  /github                      yes     -                     -"
        );
        assert!(
            lines[3].starts_with(
                "t3  deploy    webhook  /github                      no      -                     \
                 2023-11-14T22:13:25Z not started: over the concurrency cap xx"
            ),
            "{table}"
        );
        assert!(lines[3].ends_with("x…"), "{table}");
    }

    #[test]
    fn one_trigger_reads_as_key_values() {
        let table = render(OutputFormat::Table, &TriggerView::from(cron())).unwrap();
        assert_eq!(
            table,
            "id:              t1\n\
             workflow:        report@3\n\
             type:            cron\n\
             spec:            0 8 * * 1-5 (Europe/Berlin)\n\
             catchup:         latest\n\
             inputs:          {\"team\":\"ops\"}\n\
             paused:          no\n\
             next fire:       2023-11-15T08:00:00Z\n\
             last fire:       2023-11-14T22:13:21Z started\n\
             last execution:  e1\n\
             created:         2023-11-03T08:26:40Z\n\
             updated:         2023-11-03T08:26:40Z\n"
        );
        let table = render(OutputFormat::Table, &TriggerView::from(webhook())).unwrap();
        assert!(table.contains("spec:       /github\n"), "{table}");
        assert!(table.contains("secret:     gh-hook\n"), "{table}");
        assert!(table.contains("paused:     yes\n"), "{table}");
        assert!(!table.contains("catchup"), "{table}");
        assert!(!table.contains("last execution"), "{table}");
    }

    #[test]
    fn json_leaves_out_the_other_type_s_fields() {
        let json = render(
            OutputFormat::Json,
            &TriggerList(vec![cron().into(), webhook().into()]),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let cron = &value[0];
        assert_eq!(cron["type"], "cron");
        assert_eq!(cron["schedule"], "0 8 * * 1-5");
        assert_eq!(cron["timezone"], "Europe/Berlin");
        assert_eq!(cron["catchup"], "latest");
        assert_eq!(cron["inputs"], serde_json::json!({"team": "ops"}));
        assert_eq!(cron["next_fire_time"], "2023-11-15T08:00:00Z");
        assert_eq!(cron["last_fire"]["execution_id"], "e1");
        assert_eq!(cron["last_fire"]["result"], "started");
        assert!(cron.get("path").is_none() && cron.get("secret_name").is_none());
        let hook = &value[1];
        assert_eq!(hook["path"], "/github");
        assert_eq!(hook["secret_name"], "gh-hook");
        assert_eq!(hook["paused"], true);
        assert_eq!(hook["last_fire"], serde_json::Value::Null);
        assert_eq!(hook["next_fire_time"], serde_json::Value::Null);
        for field in ["schedule", "timezone", "catchup", "inputs"] {
            assert!(hook.get(field).is_none(), "{field}: {json}");
        }
    }

    #[test]
    fn a_fire_that_started_nothing_has_no_execution() {
        let fire = FireView::from(TriggerFire {
            scheduled_time: at(5),
            fire_time: None,
            execution_id: String::new(),
            result: "not started: workflow deleted".into(),
        });
        let value = serde_json::to_value(&fire).unwrap();
        assert_eq!(value["execution_id"], serde_json::Value::Null);
        assert_eq!(value["fire_time"], serde_json::Value::Null);
        assert_eq!(value["scheduled_time"], "1970-01-01T00:00:05Z");
    }
}
