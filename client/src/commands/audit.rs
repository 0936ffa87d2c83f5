//! `mantlectl audit list`.

use chrono::{DateTime, Utc};
use mantle_client::proto::AuditEvent;
use mantle_client::{AuditFilter, timestamp_to_datetime};
use serde::Serialize;

use super::Context;
use crate::cli::{AuditCommand, AuditListArgs};
use crate::output::{self, Render, Table, serialize_time, text_cell, time_cell};

/// An audit event as mantlectl prints it.
#[derive(Debug, Serialize)]
struct AuditEventView {
    id: String,
    /// Empty for installation-wide events (key rotations).
    tenant: String,
    #[serde(serialize_with = "serialize_time")]
    time: Option<DateTime<Utc>>,
    actor: String,
    action: String,
    resource: String,
    /// `OK` or the gRPC status code name of the refusal.
    result: String,
    detail: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        AuditEventView {
            time: e.time.as_ref().and_then(timestamp_to_datetime),
            id: e.id,
            tenant: e.tenant,
            actor: e.actor,
            action: e.action,
            resource: e.resource,
            result: e.result,
            detail: e.detail,
        }
    }
}

/// Several events, newest first; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct AuditEventList(Vec<AuditEventView>);

impl Render for AuditEventList {
    fn table(&self) -> String {
        let mut table = Table::new(&["TIME", "TENANT", "ACTOR", "ACTION", "RESOURCE", "RESULT"]);
        for e in &self.0 {
            table.row(vec![
                time_cell(e.time),
                text_cell(&e.tenant),
                text_cell(&e.actor),
                e.action.clone(),
                text_cell(&e.resource),
                e.result.clone(),
            ]);
        }
        table.render()
    }
}

/// `mantlectl audit …`.
pub async fn run(ctx: &Context, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List(args) => list(ctx, &args).await,
    }
}

/// `mantlectl audit list`: --tenant is the request's tenant (not x-mantle-tenant), so an
/// operator without one lists every tenant's events.
async fn list(ctx: &Context, args: &AuditListArgs) -> anyhow::Result<()> {
    let client = ctx.connect(false).await?;
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let filter = AuditFilter {
        tenant: ctx.tenant.clone(),
        actor: nonempty(&args.actor),
        action: nonempty(&args.action),
        result: nonempty(&args.result),
        since: args.since,
    };
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let events = client.list_audit_events(&filter, Some(limit)).await?;
    output::print(
        ctx.output,
        &AuditEventList(events.into_iter().map(AuditEventView::from).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    fn event() -> AuditEvent {
        AuditEvent {
            id: "0190f1a2-0000-7000-8000-000000000001".into(),
            tenant: "acme".into(),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000,
            }),
            actor: "3f2a".into(),
            action: "mantle.v1.DefinitionService/DeleteDefinition".into(),
            resource: String::new(),
            result: "NOT_FOUND".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn events_read_as_a_table() {
        let mut rotation = event();
        rotation.tenant = String::new();
        rotation.action = "encryption_key.rotate".into();
        rotation.resource = "encryption_keys/k2".into();
        rotation.result = "OK".into();
        let list = AuditEventList(vec![event().into(), rotation.into()]);
        assert_eq!(
            render(OutputFormat::Table, &list).unwrap(),
            "TIME                  TENANT  ACTOR  ACTION                                        \
             RESOURCE            RESULT\n\
             2023-11-14T22:13:20Z  acme    3f2a   mantle.v1.DefinitionService/DeleteDefinition  \
             -                   NOT_FOUND\n\
             2023-11-14T22:13:20Z  -       3f2a   encryption_key.rotate                         \
             encryption_keys/k2  OK\n"
        );
    }

    #[test]
    fn events_in_json_carry_every_field() {
        let json = render(OutputFormat::Json, &AuditEventList(vec![event().into()])).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["time"], "2023-11-14T22:13:20.250Z");
        assert_eq!(value[0]["result"], "NOT_FOUND");
        assert_eq!(value[0]["tenant"], "acme");
        assert_eq!(value[0]["detail"], "");
    }
}
