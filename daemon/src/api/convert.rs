//! Proto ↔ domain conversions.

use chrono::{DateTime, Utc};
use mantle_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

use crate::auth::Caller;
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

impl From<Tenant> for pb::Tenant {
    fn from(t: Tenant) -> Self {
        pb::Tenant {
            name: t.name,
            id: t.id.to_string(),
            display_name: t.display_name,
            create_time: Some(timestamp(t.create_time)),
            update_time: Some(timestamp(t.update_time)),
            settings: Some(pb::TenantSettings {
                max_steps_per_workflow: t.settings.max_steps_per_workflow.map_or(0, |n| n as i32),
                max_runtime_minutes: t.settings.max_runtime_minutes.map_or(0, |n| n as i32),
                allowed_domains: t.settings.allowed_domains.unwrap_or_default(),
                rate_limit_per_minute: t.settings.rate_limit_per_minute.map_or(0, |n| n as i32),
                max_concurrent_executions: t
                    .settings
                    .max_concurrent_executions
                    .map_or(0, |n| n as i32),
                max_queued_executions: t.settings.max_queued_executions.map_or(0, |n| n as i32),
                webhook_url: t.settings.webhook_url.unwrap_or_default(),
                webhook_secret: t.settings.webhook_secret.unwrap_or_default(),
            }),
        }
    }
}

/// Requested settings: 0 and empty mean "no limit of the tenant's own".
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
    }
}

impl From<ApiKey> for pb::ApiKey {
    fn from(k: ApiKey) -> Self {
        pb::ApiKey {
            id: k.id,
            tenant: k.tenant.map(|t| t.name).unwrap_or_default(),
            name: k.name,
            scopes: k.scopes.names(),
            create_time: Some(timestamp(k.create_time)),
            expire_time: k.expire_time.map(timestamp),
            revoke_time: k.revoke_time.map(timestamp),
            last_use_time: k.last_use_time.map(timestamp),
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

impl From<crate::model::definition::Definition> for pb::Definition {
    fn from(d: crate::model::definition::Definition) -> Self {
        pb::Definition {
            name: d.name,
            version: d.version,
            content_hash: d.content_hash,
            description: d.description,
            source: d.source,
            spec_json: d.spec_json,
            create_time: Some(timestamp(d.create_time)),
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
        ..e.into()
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

impl From<crate::model::execution::Execution> for pb::Execution {
    fn from(e: crate::model::execution::Execution) -> Self {
        pb::Execution {
            id: e.id.to_string(),
            workflow: e.workflow,
            version: e.version,
            status: execution_status(e.status) as i32,
            inputs_json: e.inputs.to_string(),
            outputs_json: json_text(e.outputs),
            error: e.error.unwrap_or_default(),
            create_time: Some(timestamp(e.create_time)),
            start_time: e.start_time.map(timestamp),
            end_time: e.end_time.map(timestamp),
            trigger_json: e.trigger.to_string(),
        }
    }
}

impl From<crate::model::execution::StepAttempt> for pb::StepAttempt {
    fn from(a: crate::model::execution::StepAttempt) -> Self {
        pb::StepAttempt {
            step_name: a.step_name,
            attempt: a.attempt,
            status: step_status(a.status) as i32,
            output_json: json_text(a.output),
            error: a.error.unwrap_or_default(),
            start_time: a.start_time.map(timestamp),
            end_time: a.end_time.map(timestamp),
            wake_time: a.wake_time.map(timestamp),
        }
    }
}

impl From<crate::model::execution::Event> for pb::ExecutionEvent {
    fn from(e: crate::model::execution::Event) -> Self {
        use crate::model::execution::{EventKind, ExecutionStatus, StepStatus};
        let kind = match e.kind {
            EventKind::ExecutionStatus => pb::execution_event::Kind::ExecutionStatus,
            EventKind::StepStatus => pb::execution_event::Kind::StepStatus,
            EventKind::Log => pb::execution_event::Kind::Log,
        };
        let status = e.status.as_deref();
        pb::ExecutionEvent {
            seq: e.seq,
            time: Some(timestamp(e.time)),
            kind: kind as i32,
            execution_status: match e.kind {
                EventKind::ExecutionStatus => status
                    .and_then(ExecutionStatus::parse)
                    .map_or(0, |s| execution_status(s) as i32),
                _ => 0,
            },
            step_name: e.step_name.unwrap_or_default(),
            attempt: e.attempt.unwrap_or_default(),
            step_status: match e.kind {
                EventKind::StepStatus => status
                    .and_then(StepStatus::parse)
                    .map_or(0, |s| step_status(s) as i32),
                _ => 0,
            },
            message: e.message.unwrap_or_default(),
        }
    }
}
