//! The audit log of mutating RPCs, and reading it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Error, invalid, validate_tenant_name};
use crate::auth::{Caller, Scope};
use crate::model::tenant::{ActionMatch, AuditEvent, AuditFilter, ResultMatch};
use crate::model::tenant::{Page, PageRequest};
use crate::store::Store;

/// The tenant a listing covers: a tenant key its own (naming another is NOT_FOUND); an
/// operator the named tenant, or every tenant (`None`).
pub async fn visible_tenant(
    store: &dyn Store,
    caller: &Caller,
    tenant: &str,
) -> Result<Option<Uuid>, Error> {
    if caller.scopes.grants(Scope::TenantsAdmin) {
        if tenant.is_empty() {
            return Ok(None);
        }
        validate_tenant_name(tenant)?;
        return Ok(Some(store.get_tenant(tenant).await?.id));
    }
    let own = caller
        .tenant
        .as_ref()
        .ok_or_else(|| Error::PermissionDenied("this token acts on no tenant".to_owned()))?;
    if !tenant.is_empty() && tenant != own.name {
        return Err(Error::NotFound(format!("tenant {tenant:?}")));
    }
    Ok(Some(own.id))
}

/// The gRPC status code names an audit event's result may hold, besides `OK`.
const REFUSAL_CODES: [&str; 16] = [
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The filters of a ListAuditEvents request; empty strings filter nothing. `action` ending
/// with `*` is a prefix; `result` is `OK`, a gRPC status code name or `refused` (anything
/// but OK), in any case.
pub fn audit_filter(
    actor: &str,
    action: &str,
    result: &str,
    since: Option<DateTime<Utc>>,
) -> Result<AuditFilter, Error> {
    // `*` alone matches every action.
    let action = if action.is_empty() || action == "*" {
        None
    } else {
        let (text, prefix) = match action.strip_suffix('*') {
            Some(text) => (text, true),
            None => (action, false),
        };
        if text.contains('*') {
            return Err(invalid(
                "action",
                format!("{action:?}: `*` may only end a prefix, as in `secret.*`"),
            ));
        }
        Some(if prefix {
            ActionMatch::Prefix(text.to_owned())
        } else {
            ActionMatch::Exact(text.to_owned())
        })
    };
    let result = match result.to_ascii_uppercase().as_str() {
        "" => None,
        "OK" => Some(ResultMatch::Ok),
        "REFUSED" => Some(ResultMatch::Refused),
        code if REFUSAL_CODES.contains(&code) => Some(ResultMatch::Code(code.to_owned())),
        _ => {
            return Err(invalid(
                "result",
                format!(
                    "{result:?} is not OK, refused or a gRPC status code name such as \
                     PERMISSION_DENIED"
                ),
            ));
        }
    };
    Ok(AuditFilter {
        actor: (!actor.is_empty()).then(|| actor.to_owned()),
        action,
        result,
        since,
    })
}

/// Refuses a page token that is not a row id (listings page by UUIDv7 ids).
pub fn check_uuid_cursor(page: &PageRequest) -> Result<(), Error> {
    match &page.after {
        Some(after) if Uuid::parse_str(after).is_err() => Err(Error::InvalidArgument {
            field: "page_token",
            message: "not a token returned by this server".to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Pairs each item with its tenant's name (empty when it has none or the tenant is gone),
/// looking each tenant up once.
pub async fn with_tenant_names<T>(
    store: &dyn Store,
    items: Vec<T>,
    tenant_of: impl Fn(&T) -> Option<Uuid>,
) -> Vec<(T, String)> {
    let mut names: HashMap<Uuid, String> = HashMap::new();
    let mut named = Vec::with_capacity(items.len());
    for item in items {
        let name = match tenant_of(&item) {
            None => String::new(),
            Some(id) => match names.get(&id) {
                Some(n) => n.clone(),
                None => {
                    let n = store
                        .get_tenant_by_id(id)
                        .await
                        .map(|t| t.name)
                        .unwrap_or_default();
                    names.insert(id, n.clone());
                    n
                }
            },
        };
        named.push((item, name));
    }
    named
}

/// Records and lists audit events.
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn Store>,
}

impl Audit {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Audit { store }
    }

    /// Records a mutating RPC's outcome in the background. `method` is a declared method's
    /// name (`mantle.v1.TenantService/CreateTenant`), never text a caller chose.
    pub fn record_rpc(&self, caller: &Caller, method: &'static str, result: &str) {
        let event = AuditEvent {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant.as_ref().map(|t| t.id),
            time: Utc::now(),
            actor: caller.key_id.clone(),
            action: method.to_owned(),
            resource: String::new(),
            result: result.to_owned(),
            detail: None,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.record_audit(&event).await {
                tracing::error!(error = %err, action = %event.action, "could not record the audit event");
            }
        });
    }

    /// A tenant key lists its tenant's events; an operator lists every event, or those of
    /// `tenant`; of those, the ones `filter` matches. Each event comes with its tenant's name
    /// (empty for installation-wide ones).
    pub async fn list(
        &self,
        caller: &Caller,
        tenant: &str,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<(AuditEvent, String)>, Error> {
        let tenant_id = visible_tenant(self.store.as_ref(), caller, tenant).await?;
        check_uuid_cursor(page)?;
        let events = self.store.list_audit(tenant_id, filter, page).await?;
        let items = with_tenant_names(self.store.as_ref(), events.items, |e| e.tenant_id).await;
        Ok(Page {
            items,
            next_cursor: events.next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(err: Error) -> String {
        err.to_string()
    }

    #[test]
    fn empty_filters_match_everything() {
        assert_eq!(
            audit_filter("", "", "", None).unwrap(),
            AuditFilter::default()
        );
        assert_eq!(audit_filter("", "*", "", None).unwrap().action, None);
    }

    #[test]
    fn actions_are_exact_or_prefixes_ending_with_a_star() {
        assert_eq!(
            audit_filter("", "secret.create", "", None).unwrap().action,
            Some(ActionMatch::Exact("secret.create".into()))
        );
        assert_eq!(
            audit_filter("", "mantle.v1.SecretService/*", "", None)
                .unwrap()
                .action,
            Some(ActionMatch::Prefix("mantle.v1.SecretService/".into()))
        );
        for bad in ["secret*.create", "*.create", "a**"] {
            let err = message(audit_filter("", bad, "", None).unwrap_err());
            assert!(err.starts_with("action: "), "{err}");
        }
    }

    #[test]
    fn results_are_ok_refused_or_code_names_in_any_case() {
        let result = |r: &str| audit_filter("", "", r, None).unwrap().result;
        assert_eq!(result("OK"), Some(ResultMatch::Ok));
        assert_eq!(result("ok"), Some(ResultMatch::Ok));
        assert_eq!(result("refused"), Some(ResultMatch::Refused));
        assert_eq!(
            result("permission_denied"),
            Some(ResultMatch::Code("PERMISSION_DENIED".into()))
        );
        let err = message(audit_filter("", "", "DENIED", None).unwrap_err());
        assert!(
            err.starts_with("result: \"DENIED\" is not OK, refused"),
            "{err}"
        );
    }

    #[test]
    fn actors_match_exactly() {
        assert_eq!(
            audit_filter("env:MANTLE_API_TOKEN", "", "", None)
                .unwrap()
                .actor
                .as_deref(),
            Some("env:MANTLE_API_TOKEN")
        );
    }
}
