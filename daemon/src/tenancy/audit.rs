//! The audit log of mutating RPCs, and reading it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::{Error, validate_tenant_name};
use crate::auth::{Caller, Scope};
use crate::secrets::model::AuditEvent;
use crate::store::Store;
use crate::tenancy::model::{Page, PageRequest};

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
    /// `tenant`. Each event comes with its tenant's name (empty for installation-wide ones).
    pub async fn list(
        &self,
        caller: &Caller,
        tenant: &str,
        page: &PageRequest,
    ) -> Result<Page<(AuditEvent, String)>, Error> {
        let tenant_id = visible_tenant(self.store.as_ref(), caller, tenant).await?;
        check_uuid_cursor(page)?;
        let events = self.store.list_audit(tenant_id, page).await?;
        let items = with_tenant_names(self.store.as_ref(), events.items, |e| e.tenant_id).await;
        Ok(Page {
            items,
            next_cursor: events.next_cursor,
        })
    }
}
