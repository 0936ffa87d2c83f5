//! Proto ↔ domain conversions.

use chrono::{DateTime, Utc};
use mantle_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status;

use crate::auth::Caller;
use crate::tenancy::model::{ApiKey, Tenant};

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
        }
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

impl From<crate::definitions::model::Definition> for pb::Definition {
    fn from(d: crate::definitions::model::Definition) -> Self {
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

impl From<crate::definitions::PlanResult> for pb::Plan {
    fn from(p: crate::definitions::PlanResult) -> Self {
        pb::Plan {
            name: p.name,
            current_version: p.current_version,
            changed: p.changed,
            content_hash: p.content_hash,
            changes: p.changes.into_iter().map(Into::into).collect(),
        }
    }
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
