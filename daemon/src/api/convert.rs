//! Proto ↔ domain conversions.

use chrono::{DateTime, Utc};
use mantle_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

use crate::auth::Caller;

/// Converts a domain value into its protobuf message. The API layer's own trait: the
/// domain types live in `mantle-model` and the messages in `mantle-proto`, so `From`
/// cannot be implemented between them here.
pub trait IntoProto<T> {
    fn into_proto(self) -> T;
}
use crate::model::tenant::{ApiKey, Tenant};

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An optional request timestamp; an out-of-range value is INVALID_ARGUMENT naming `field`.
pub fn from_timestamp(field: &str, t: Option<Timestamp>) -> Result<Option<DateTime<Utc>>, Status> {
    t.map(|t| {
        u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
            .ok_or_else(|| Status::invalid_argument(format!("{field}: not a valid timestamp")))
    })
    .transpose()
}

impl IntoProto<pb::Tenant> for Tenant {
    fn into_proto(self) -> pb::Tenant {
        pb::Tenant {
            name: self.name,
            id: self.id.to_string(),
            display_name: self.display_name,
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
            settings: Some(pb::TenantSettings {
                max_steps_per_workflow: self
                    .settings
                    .max_steps_per_workflow
                    .map_or(0, |n| n as i32),
                max_runtime_minutes: self.settings.max_runtime_minutes.map_or(0, |n| n as i32),
                allowed_domains: self.settings.allowed_domains.unwrap_or_default(),
                rate_limit_per_minute: self.settings.rate_limit_per_minute.map_or(0, |n| n as i32),
                max_concurrent_executions: self
                    .settings
                    .max_concurrent_executions
                    .map_or(0, |n| n as i32),
                max_queued_executions: self.settings.max_queued_executions.map_or(0, |n| n as i32),
                webhook_url: self.settings.webhook_url.unwrap_or_default(),
                webhook_secret: self.settings.webhook_secret.unwrap_or_default(),
                max_cost_usd_per_execution: self
                    .settings
                    .max_cost_usd_per_execution
                    .unwrap_or_default(),
                max_tokens_per_day: self
                    .settings
                    .max_tokens_per_day
                    .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)),
                default_credentials: self.settings.default_credentials.into_iter().collect(),
                retention: self.settings.retention.map(|d| prost_types::Duration {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
            }),
        }
    }
}

/// Requested settings: 0 and empty mean "no limit of the tenant's own". A cost that is not
/// 0 is kept as it is, for the domain to refuse a negative or non-finite one.
pub fn tenant_settings(s: pb::TenantSettings) -> crate::model::tenant::TenantSettings {
    crate::model::tenant::TenantSettings {
        max_steps_per_workflow: (s.max_steps_per_workflow > 0)
            .then_some(s.max_steps_per_workflow as u32),
        max_runtime_minutes: (s.max_runtime_minutes > 0).then_some(s.max_runtime_minutes as u32),
        allowed_domains: (!s.allowed_domains.is_empty()).then_some(s.allowed_domains),
        rate_limit_per_minute: (s.rate_limit_per_minute > 0)
            .then_some(s.rate_limit_per_minute as u32),
        max_concurrent_executions: (s.max_concurrent_executions > 0)
            .then_some(s.max_concurrent_executions as u32),
        max_queued_executions: (s.max_queued_executions > 0)
            .then_some(s.max_queued_executions as u32),
        webhook_url: (!s.webhook_url.is_empty()).then_some(s.webhook_url),
        webhook_secret: (!s.webhook_secret.is_empty()).then_some(s.webhook_secret),
        max_cost_usd_per_execution: cost_cap(s.max_cost_usd_per_execution),
        max_tokens_per_day: token_cap(s.max_tokens_per_day),
        default_credentials: s.default_credentials.into_iter().collect(),
        retention: retention(s.retention.as_ref()),
    }
}

/// A requested retention: unset or 0 is the installation's default. One that is not whole
/// positive seconds was refused before ([`check_retention`]).
pub fn retention(d: Option<&prost_types::Duration>) -> Option<std::time::Duration> {
    d.filter(|d| d.seconds > 0)
        .map(|d| std::time::Duration::from_secs(d.seconds.unsigned_abs()))
}

/// Refuses a retention that is negative or not whole seconds.
pub fn check_retention(d: Option<&prost_types::Duration>) -> Result<(), tonic::Status> {
    match d {
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(tonic::Status::invalid_argument(
            "settings.retention: must not be negative",
        )),
        Some(d) if d.nanos != 0 => Err(tonic::Status::invalid_argument(
            "settings.retention: whole seconds only",
        )),
        _ => Ok(()),
    }
}

/// A requested cost cap: 0 is none; anything else is kept for the domain to check.
pub fn cost_cap(usd: f64) -> Option<f64> {
    (usd != 0.0).then_some(usd)
}

/// A requested daily token cap: 0 (or a negative number, refused before) is none.
pub fn token_cap(tokens: i64) -> Option<u64> {
    u64::try_from(tokens).ok().filter(|n| *n > 0)
}

impl IntoProto<pb::ApiKey> for ApiKey {
    fn into_proto(self) -> pb::ApiKey {
        pb::ApiKey {
            id: self.id,
            tenant: self.tenant.map(|t| t.name).unwrap_or_default(),
            name: self.name,
            scopes: self.scopes.names(),
            create_time: Some(timestamp(self.create_time)),
            expire_time: self.expire_time.map(timestamp),
            revoke_time: self.revoke_time.map(timestamp),
            last_use_time: self.last_use_time.map(timestamp),
        }
    }
}

impl From<&Caller> for pb::Caller {
    fn from(c: &Caller) -> Self {
        pb::Caller {
            tenant: c
                .tenant
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            scopes: c.scopes.names(),
            operator: c.operator,
            key_id: c.key_id.clone(),
        }
    }
}

impl IntoProto<pb::Definition> for crate::model::definition::Definition {
    fn into_proto(self) -> pb::Definition {
        pb::Definition {
            name: self.name,
            version: self.version,
            content_hash: self.content_hash,
            description: self.description,
            source: self.source,
            spec_json: self.spec_json,
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

impl From<crate::workflow::plan::Change> for pb::Change {
    fn from(c: crate::workflow::plan::Change) -> Self {
        use crate::workflow::plan::ChangeKind;
        let kind = match c.kind {
            ChangeKind::Added => pb::change::Kind::Added,
            ChangeKind::Removed => pb::change::Kind::Removed,
            ChangeKind::Changed => pb::change::Kind::Changed,
        };
        let json = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
        pb::Change {
            kind: kind as i32,
            section: c.section.to_owned(),
            name: c.name,
            fields: c
                .fields
                .into_iter()
                .map(|f| pb::FieldChange {
                    path: f.path,
                    before: json(f.before),
                    after: json(f.after),
                })
                .collect(),
        }
    }
}

/// A plan of the file named `file` (in its warnings).
pub fn plan(file: &str, p: crate::definitions::PlanResult) -> pb::Plan {
    pb::Plan {
        name: p.name,
        current_version: p.current_version,
        changed: p.changed,
        content_hash: p.content_hash,
        changes: p.changes.into_iter().map(Into::into).collect(),
        warnings: problems(file, &p.warnings),
    }
}

/// Validation problems (or warnings) of the file named `file`.
pub fn problems(file: &str, list: &[crate::workflow::Problem]) -> Vec<pb::ValidationProblem> {
    list.iter().map(|p| problem(file, p)).collect()
}

/// A validation problem as the API reports it.
pub fn problem(file: &str, p: &crate::workflow::Problem) -> pb::ValidationProblem {
    pb::ValidationProblem {
        file: file.to_owned(),
        line: p.pos.line,
        column: p.pos.column,
        path: p.path.clone(),
        message: p.message.clone(),
    }
}

fn json_text(v: Option<serde_json::Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub fn execution_status(s: crate::model::execution::ExecutionStatus) -> pb::ExecutionStatus {
    use crate::model::execution::ExecutionStatus as S;
    match s {
        S::Pending => pb::ExecutionStatus::Pending,
        S::Queued => pb::ExecutionStatus::Queued,
        S::Running => pb::ExecutionStatus::Running,
        S::Completed => pb::ExecutionStatus::Completed,
        S::Failed => pb::ExecutionStatus::Failed,
        S::Cancelled => pb::ExecutionStatus::Cancelled,
        S::TimedOut => pb::ExecutionStatus::TimedOut,
    }
}

/// A filter status; UNSPECIFIED means none.
pub fn execution_status_from_pb(
    value: i32,
) -> Result<Option<crate::model::execution::ExecutionStatus>, Status> {
    use crate::model::execution::ExecutionStatus as S;
    let status = pb::ExecutionStatus::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("status: unknown value {value}")))?;
    Ok(match status {
        pb::ExecutionStatus::Unspecified => None,
        pb::ExecutionStatus::Pending => Some(S::Pending),
        pb::ExecutionStatus::Queued => Some(S::Queued),
        pb::ExecutionStatus::Running => Some(S::Running),
        pb::ExecutionStatus::Completed => Some(S::Completed),
        pb::ExecutionStatus::Failed => Some(S::Failed),
        pb::ExecutionStatus::Cancelled => Some(S::Cancelled),
        pb::ExecutionStatus::TimedOut => Some(S::TimedOut),
    })
}

/// A listing's view; unspecified is BASIC.
pub fn view_from_pb(value: i32) -> Result<crate::model::tenant::View, Status> {
    use crate::model::tenant::View;
    match pb::View::try_from(value) {
        Ok(pb::View::Unspecified | pb::View::Basic) => Ok(View::Basic),
        Ok(pb::View::Full) => Ok(View::Full),
        Err(_) => Err(Status::invalid_argument(format!(
            "view: unknown value {value}; use VIEW_BASIC or VIEW_FULL"
        ))),
    }
}

/// An execution as a BASIC listing shows it: without inputs, outputs and trigger.
pub fn basic_execution(e: crate::model::execution::Execution) -> pb::Execution {
    pb::Execution {
        inputs_json: String::new(),
        outputs_json: String::new(),
        trigger_json: String::new(),
        ..e.into_proto()
    }
}

fn step_status(s: crate::model::execution::StepStatus) -> pb::StepStatus {
    use crate::model::execution::StepStatus as S;
    match s {
        S::Pending => pb::StepStatus::Pending,
        S::Running => pb::StepStatus::Running,
        S::Completed => pb::StepStatus::Completed,
        S::Failed => pb::StepStatus::Failed,
        S::Skipped => pb::StepStatus::Skipped,
        S::Cancelled => pb::StepStatus::Cancelled,
    }
}

impl IntoProto<pb::Execution> for crate::model::execution::Execution {
    fn into_proto(self) -> pb::Execution {
        pb::Execution {
            id: self.id.to_string(),
            workflow: self.workflow,
            version: self.version,
            status: execution_status(self.status) as i32,
            inputs_json: self.inputs.to_string(),
            outputs_json: json_text(self.outputs),
            error: self.error.unwrap_or_default(),
            create_time: Some(timestamp(self.create_time)),
            start_time: self.start_time.map(timestamp),
            end_time: self.end_time.map(timestamp),
            trigger_json: self.trigger.to_string(),
            model_usage: None,
        }
    }
}

impl IntoProto<pb::ModelUsage> for crate::model::execution::UsageTotal {
    fn into_proto(self) -> pb::ModelUsage {
        pb::ModelUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_usd,
        }
    }
}

impl IntoProto<pb::StepAttempt> for crate::model::execution::StepAttempt {
    fn into_proto(self) -> pb::StepAttempt {
        pb::StepAttempt {
            step_name: self.step_name,
            attempt: self.attempt,
            status: step_status(self.status) as i32,
            output_json: json_text(self.output),
            error: self.error.unwrap_or_default(),
            start_time: self.start_time.map(timestamp),
            end_time: self.end_time.map(timestamp),
            wake_time: self.wake_time.map(timestamp),
        }
    }
}

impl IntoProto<pb::ExecutionEvent> for crate::model::execution::Event {
    fn into_proto(self) -> pb::ExecutionEvent {
        use crate::model::execution::{EventKind, ExecutionStatus, StepStatus};
        let kind = match self.kind {
            EventKind::ExecutionStatus => pb::execution_event::Kind::ExecutionStatus,
            EventKind::StepStatus => pb::execution_event::Kind::StepStatus,
            EventKind::Log => pb::execution_event::Kind::Log,
        };
        let status = self.status.as_deref();
        pb::ExecutionEvent {
            seq: self.seq,
            time: Some(timestamp(self.time)),
            kind: kind as i32,
            execution_status: match self.kind {
                EventKind::ExecutionStatus => status
                    .and_then(ExecutionStatus::parse)
                    .map_or(0, |s| execution_status(s) as i32),
                _ => 0,
            },
            step_name: self.step_name.unwrap_or_default(),
            attempt: self.attempt.unwrap_or_default(),
            step_status: match self.kind {
                EventKind::StepStatus => status
                    .and_then(StepStatus::parse)
                    .map_or(0, |s| step_status(s) as i32),
                _ => 0,
            },
            message: self.message.unwrap_or_default(),
        }
    }
}

impl IntoProto<pb::Trigger> for crate::triggers::TriggerInfo {
    fn into_proto(self) -> pb::Trigger {
        trigger(self.trigger, self.next_fire_time)
    }
}

/// A registered trigger as the API shows it: its spec's fields spread out (a cron
/// trigger's defaults filled in), the name of a webhook's secret and never more of it.
pub fn trigger(
    t: crate::model::trigger::Trigger,
    next_fire_time: Option<DateTime<Utc>>,
) -> pb::Trigger {
    let text = |name: &str| {
        t.spec
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let cron = t.kind == "cron";
    let or_default = |value: Option<String>, default: &str| match value {
        Some(v) => v,
        None if cron => default.to_owned(),
        None => String::new(),
    };
    let inputs_json = match t.spec.get("inputs") {
        Some(serde_json::Value::Object(map)) if !map.is_empty() => {
            serde_json::Value::Object(map.clone()).to_string()
        }
        _ => String::new(),
    };
    pb::Trigger {
        id: t.id.to_string(),
        workflow: t.workflow,
        key: t.key,
        schedule: text("schedule").unwrap_or_default(),
        timezone: or_default(text("timezone"), "UTC"),
        catchup: or_default(text("catchup"), "latest"),
        path: text("path").unwrap_or_default(),
        secret_name: text("secret").unwrap_or_default(),
        inputs_json,
        r#type: t.kind,
        version: t.version,
        paused: t.paused,
        next_fire_time: next_fire_time.map(timestamp),
        last_fire: t.last_fire.map(|f| pb::TriggerFire {
            scheduled_time: Some(timestamp(f.scheduled_time)),
            fire_time: Some(timestamp(f.fire_time)),
            execution_id: f.execution_id.map(|id| id.to_string()).unwrap_or_default(),
            result: f.result,
        }),
        create_time: Some(timestamp(t.create_time)),
        update_time: Some(timestamp(t.update_time)),
        mailbox: text("mailbox").unwrap_or_default(),
        folder: text("folder").unwrap_or_default(),
        filter: text("filter").unwrap_or_default(),
        pinned_version: t
            .spec
            .get("version")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or_default(),
        poll_interval: t
            .spec
            .get("poll_interval_ms")
            .and_then(serde_json::Value::as_u64)
            .map(|ms| crate::duration::format(std::time::Duration::from_millis(ms)))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::model::trigger::{LastFire, Trigger};

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    fn stored(kind: &str, key: &str, spec: serde_json::Value) -> Trigger {
        Trigger {
            id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            tenant_id: Uuid::from_u128(7),
            workflow: "report".into(),
            key: key.into(),
            kind: kind.into(),
            spec,
            version: 3,
            paused: false,
            last_fire: None,
            state: serde_json::Value::Null,
            create_time: at(1_700_000_000),
            update_time: at(1_700_000_100),
        }
    }

    #[test]
    fn convert_cron_trigger_spreads_its_spec() {
        let mut t = stored(
            "cron",
            "cron 0 8 * * 1-5",
            json!({
                "type": "cron",
                "schedule": "0 8 * * 1-5",
                "timezone": "Europe/Berlin",
                "catchup": "all",
                "inputs": {"who": "team", "n": 2}
            }),
        );
        t.paused = true;
        t.last_fire = Some(LastFire {
            scheduled_time: at(1_700_000_200),
            fire_time: at(1_700_000_201),
            execution_id: Some(Uuid::from_u128(9)),
            result: "started".into(),
        });
        let p = trigger(t, Some(at(1_700_086_400)));
        assert_eq!(p.id, "01900000-0000-7000-8000-000000000001");
        assert_eq!(
            (p.workflow.as_str(), p.r#type.as_str(), p.key.as_str()),
            ("report", "cron", "cron 0 8 * * 1-5")
        );
        assert_eq!(
            (p.schedule.as_str(), p.timezone.as_str(), p.catchup.as_str()),
            ("0 8 * * 1-5", "Europe/Berlin", "all")
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&p.inputs_json).unwrap(),
            json!({"who": "team", "n": 2})
        );
        assert_eq!((p.path.as_str(), p.secret_name.as_str()), ("", ""));
        assert_eq!((p.version, p.paused), (3, true));
        assert_eq!(p.next_fire_time, Some(timestamp(at(1_700_086_400))));
        let fire = p.last_fire.expect("last fire");
        assert_eq!(fire.scheduled_time, Some(timestamp(at(1_700_000_200))));
        assert_eq!(fire.fire_time, Some(timestamp(at(1_700_000_201))));
        assert_eq!(fire.execution_id, Uuid::from_u128(9).to_string());
        assert_eq!(fire.result, "started");
        assert_eq!(p.create_time, Some(timestamp(at(1_700_000_000))));
        assert_eq!(p.update_time, Some(timestamp(at(1_700_000_100))));
    }

    #[test]
    fn convert_cron_trigger_fills_in_the_defaults() {
        let t = stored(
            "cron",
            "cron @hourly",
            json!({"type": "cron", "schedule": "@hourly", "inputs": {}}),
        );
        let p = trigger(t, None);
        assert_eq!(
            (
                p.timezone.as_str(),
                p.catchup.as_str(),
                p.inputs_json.as_str()
            ),
            ("UTC", "latest", "")
        );
        assert_eq!((p.next_fire_time, p.last_fire), (None, None));
    }

    #[test]
    fn convert_webhook_trigger_names_its_secret_only() {
        let mut t = stored(
            "webhook",
            "webhook /github",
            json!({"type": "webhook", "path": "/github", "secret": "gh-hook"}),
        );
        t.last_fire = Some(LastFire {
            scheduled_time: at(5),
            fire_time: at(5),
            execution_id: None,
            result: "not started: tenant over its concurrency cap".into(),
        });
        let p = trigger(t, None);
        assert_eq!(
            (p.r#type.as_str(), p.path.as_str(), p.secret_name.as_str()),
            ("webhook", "/github", "gh-hook")
        );
        assert_eq!(
            (p.schedule.as_str(), p.timezone.as_str(), p.catchup.as_str()),
            ("", "", "")
        );
        assert_eq!(p.inputs_json, "");
        assert!(p.next_fire_time.is_none());
        let fire = p.last_fire.expect("last fire");
        assert_eq!(fire.execution_id, "");
        assert_eq!(fire.result, "not started: tenant over its concurrency cap");
        let unsigned = trigger(
            stored(
                "webhook",
                "webhook /open",
                json!({"type": "webhook", "path": "/open"}),
            ),
            None,
        );
        assert_eq!(unsigned.secret_name, "");
    }
}
