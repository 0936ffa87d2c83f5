//! Tenants and API keys: the rules of who may create, see and change them.
//!
//! Every function takes the [`Caller`] explicitly. Operators (scope `tenants:admin`) manage
//! everything; a tenant's own key may only read its own tenant, and gets NOT_FOUND for any
//! other, exactly as if it did not exist.

pub mod audit;
pub use crate::model::tenant as model;
pub mod ratelimit;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::{self, Caller, Scope, ScopeSet, token};
use crate::store::{self, Store};
use model::{
    ApiKey, DEFAULT_TENANT_NAME, NewApiKey, Page, PageRequest, Tenant, TenantRef, TenantSettings,
    TenantUpdate,
};

/// Default and maximum `page_size` of list calls.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;
const MAX_LABEL_LEN: usize = 200;

/// Errors of tenant and key management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed; its error is the cause, and says the kind.
    #[error("{}", crate::error::StoreMessage(.0))]
    Store(#[from] store::Error),
}

impl crate::error::ServiceError for Error {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            Error::InvalidArgument { .. } => K::InvalidArgument,
            Error::NotFound(_) => K::NotFound,
            Error::PermissionDenied(_) => K::PermissionDenied,
            Error::FailedPrecondition(_) => K::FailedPrecondition,
            Error::Store(err) => crate::error::ServiceError::kind(err),
        }
    }
}

auth::impl_from_auth_error!(Error);

type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// Checks a tenant name: a DNS label (1–63 of `a-z0-9-`, starting with a letter, not
/// ending with `-`).
pub fn validate_tenant_name(name: &str) -> Result<()> {
    if crate::model::tenant::is_valid_name(name) {
        Ok(())
    } else if name.is_empty() {
        Err(invalid("name", "required"))
    } else {
        Err(invalid(
            "name",
            format!(
                "{name:?} is not a valid tenant name: use 1 to 63 lowercase letters, digits \
                 and '-', starting with a letter and not ending with '-'"
            ),
        ))
    }
}

/// Most entries in a tenant's allowed domains.
pub const MAX_ALLOWED_DOMAINS: usize = 100;

/// Checks allowed-domain entries: host names, or `*.` followed by one.
pub fn validate_domains(domains: &[String]) -> Result<()> {
    if domains.len() > MAX_ALLOWED_DOMAINS {
        return Err(invalid(
            "settings.allowed_domains",
            format!("at most {MAX_ALLOWED_DOMAINS} entries"),
        ));
    }
    for d in domains {
        let host = d.strip_prefix("*.").unwrap_or(d);
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(invalid(
                "settings.allowed_domains",
                format!("{d:?} is not a host name or a *.domain pattern"),
            ));
        }
    }
    Ok(())
}

/// Checks a webhook URL (absolute http or https) and secret name.
fn validate_webhook(url: Option<&str>, secret: Option<&str>) -> Result<()> {
    if let Some(url) = url {
        let ok = url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(invalid(
                "settings.webhook_url",
                format!("{url:?} is not an absolute http or https URL"),
            ));
        }
    }
    if let Some(secret) = secret
        && !crate::workflow::load::is_valid_name(secret)
    {
        return Err(invalid(
            "settings.webhook_secret",
            format!("{secret:?} is not a secret name"),
        ));
    }
    Ok(())
}

/// Checks the settings of `ai/completion`: a cost cap that is a finite number of dollars,
/// not negative; default credentials of known providers naming valid secret names (by the
/// rule every secret name follows; whether the secret exists is not checked, since it may
/// be created later).
pub fn validate_ai_settings(
    max_cost_usd_per_execution: Option<f64>,
    default_credentials: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    if let Some(cost) = max_cost_usd_per_execution
        && !(cost.is_finite() && cost >= 0.0)
    {
        return Err(invalid(
            "settings.max_cost_usd_per_execution",
            format!("{cost} is not a number of US dollars: use a finite number, not negative"),
        ));
    }
    for (provider, secret) in default_credentials.into_iter().flatten() {
        if !model::AI_PROVIDERS.contains(&provider.as_str()) {
            return Err(invalid(
                "settings.default_credentials",
                format!(
                    "unknown provider {provider:?}; expected {}",
                    model::AI_PROVIDERS.join(" or ")
                ),
            ));
        }
        // The rule the secrets module checks every secret name by.
        if !crate::workflow::load::is_valid_name(secret) {
            let why = if secret.is_empty() {
                "a secret name is required".to_owned()
            } else {
                format!(
                    "{secret:?} is not a valid secret name: use 1 to 63 lowercase letters, \
                     digits, '-' and '_', starting with a letter and not ending with '-'"
                )
            };
            return Err(invalid(
                "settings.default_credentials",
                format!("{provider}: {why}"),
            ));
        }
    }
    Ok(())
}

fn validate_label(field: &'static str, value: &str) -> Result<()> {
    if value.chars().count() > MAX_LABEL_LEN {
        return Err(invalid(
            field,
            format!("at most {MAX_LABEL_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Validates `page_size`/`page_token` of a list request.
pub fn page_request(page_size: i32, page_token: &str) -> Result<PageRequest> {
    let limit = match page_size {
        n if n < 0 => return Err(invalid("page_size", "must not be negative")),
        0 => DEFAULT_PAGE_SIZE,
        n => (n as u32).min(MAX_PAGE_SIZE),
    };
    let after = if page_token.is_empty() {
        None
    } else {
        let bytes = hex::decode(page_token)
            .map_err(|_| invalid("page_token", "not a token returned by this server"))?;
        Some(
            String::from_utf8(bytes)
                .map_err(|_| invalid("page_token", "not a token returned by this server"))?,
        )
    };
    Ok(PageRequest { limit, after })
}

/// Encodes a store cursor as an opaque page token.
pub fn page_token(cursor: Option<&str>) -> String {
    cursor.map(hex::encode).unwrap_or_default()
}

/// A created key together with its plaintext token, which exists only in this value.
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// What a new key asks for.
pub struct KeyRequest<'a> {
    /// Tenant name, or empty for an operator key.
    pub tenant: &'a str,
    pub name: &'a str,
    pub scopes: &'a [String],
    pub expire_time: Option<DateTime<Utc>>,
}

/// Tenant and API key management.
#[derive(Clone)]
pub struct Tenancy {
    store: Arc<dyn Store>,
    /// Which addresses a tenant's webhook URL may name (as deliveries will be checked).
    network: crate::connectors::NetworkPolicy,
}

impl Tenancy {
    pub fn new(store: Arc<dyn Store>, network: crate::connectors::NetworkPolicy) -> Self {
        Tenancy { store, network }
    }

    /// Refuses a webhook URL whose host is not a global unicast address, or a name that
    /// resolves only to such addresses: deliveries to it would be refused every time. A
    /// name that does not resolve now is accepted (each delivery is checked again).
    async fn check_webhook_target(&self, url: Option<&str>) -> Result<()> {
        let Some(url) = url else {
            return Ok(());
        };
        if self.network.allow_private {
            return Ok(());
        }
        let Ok(parsed) = url::Url::parse(url) else {
            return Ok(());
        };
        let refused = |why: String| {
            invalid(
                "settings.webhook_url",
                format!("{url:?} cannot receive deliveries: {why}"),
            )
        };
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.network.check(ip.into()).map_err(refused),
            Some(url::Host::Ipv6(ip)) => self.network.check(ip.into()).map_err(refused),
            Some(url::Host::Domain(host)) => {
                let port = parsed.port_or_known_default().unwrap_or(443);
                let lookup = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    tokio::net::lookup_host((host, port)),
                )
                .await;
                let Ok(Ok(addrs)) = lookup else {
                    return Ok(());
                };
                let checks: Vec<_> = addrs.map(|a| self.network.check(a.ip())).collect();
                match checks.iter().find_map(|c| c.as_ref().err()) {
                    Some(why) if checks.iter().all(Result::is_err) => {
                        Err(refused(format!("{host} resolves to {why}")))
                    }
                    _ => Ok(()),
                }
            }
            None => Ok(()),
        }
    }

    pub async fn create_tenant(
        &self,
        caller: &Caller,
        name: &str,
        display_name: &str,
        settings: TenantSettings,
    ) -> Result<Tenant> {
        caller.require(Scope::TenantsAdmin)?;
        validate_tenant_name(name)?;
        validate_label("display_name", display_name)?;
        if let Some(domains) = &settings.allowed_domains {
            validate_domains(domains)?;
        }
        validate_webhook(
            settings.webhook_url.as_deref(),
            settings.webhook_secret.as_deref(),
        )?;
        validate_ai_settings(
            settings.max_cost_usd_per_execution,
            Some(&settings.default_credentials),
        )?;
        self.check_webhook_target(settings.webhook_url.as_deref())
            .await?;
        let now = Utc::now();
        let tenant = Tenant {
            id: uuid::Uuid::now_v7(),
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            create_time: now,
            update_time: now,
            settings,
        };
        self.store.create_tenant(&tenant).await?;
        tracing::info!(tenant = %name, key_id = %caller.key_id, "tenant created");
        Ok(tenant)
    }

    pub async fn get_tenant(&self, caller: &Caller, name: &str) -> Result<Tenant> {
        validate_tenant_name(name)?;
        if !caller.scopes.grants(Scope::TenantsAdmin)
            && caller.tenant.as_ref().is_none_or(|t| t.name != name)
        {
            return Err(Error::NotFound(format!("tenant {name:?}")));
        }
        Ok(self.store.get_tenant(name).await?)
    }

    pub async fn list_tenants(&self, caller: &Caller, page: &PageRequest) -> Result<Page<Tenant>> {
        caller.require(Scope::TenantsAdmin)?;
        Ok(self.store.list_tenants(page).await?)
    }

    pub async fn update_tenant(
        &self,
        caller: &Caller,
        name: &str,
        update: &TenantUpdate,
    ) -> Result<Tenant> {
        caller.require(Scope::TenantsAdmin)?;
        validate_tenant_name(name)?;
        if let Some(display_name) = &update.display_name {
            validate_label("display_name", display_name)?;
        }
        if let Some(Some(domains)) = &update.allowed_domains {
            validate_domains(domains)?;
        }
        validate_webhook(
            update.webhook_url.as_ref().and_then(|u| u.as_deref()),
            update.webhook_secret.as_ref().and_then(|s| s.as_deref()),
        )?;
        validate_ai_settings(
            update.max_cost_usd_per_execution.flatten(),
            update.default_credentials.as_ref(),
        )?;
        self.check_webhook_target(update.webhook_url.as_ref().and_then(|u| u.as_deref()))
            .await?;
        Ok(self.store.update_tenant(name, update, Utc::now()).await?)
    }

    pub async fn delete_tenant(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Scope::TenantsAdmin)?;
        validate_tenant_name(name)?;
        if name == DEFAULT_TENANT_NAME {
            return Err(Error::FailedPrecondition(
                "name: the tenant \"default\" cannot be deleted".to_owned(),
            ));
        }
        // Its executions first, in the batches of retention, so that a large tenant's
        // deletion never holds the database for long; the rest goes in one transaction.
        let tenant = self.store.get_tenant(name).await?;
        let deleted = crate::retention::delete_in_batches(
            self.store.as_ref(),
            tenant.id,
            crate::store::Doomed::All,
            None,
        )
        .await?;
        self.store.delete_tenant(name).await?;
        tracing::info!(tenant = %name, executions = deleted.executions, key_id = %caller.key_id, "tenant deleted");
        Ok(())
    }

    pub async fn create_api_key(
        &self,
        caller: &Caller,
        req: &KeyRequest<'_>,
    ) -> Result<CreatedKey> {
        caller.require(Scope::TenantsAdmin)?;
        let tenant = if req.tenant.is_empty() {
            None
        } else {
            validate_tenant_name(req.tenant).map_err(|_| {
                invalid(
                    "tenant",
                    format!("{:?} is not a valid tenant name", req.tenant),
                )
            })?;
            Some(TenantRef::from(&self.store.get_tenant(req.tenant).await?))
        };
        let created = self.mint_key(tenant.as_ref(), req).await?;
        tracing::info!(key = %created.key.id, tenant = %req.tenant, by = %caller.key_id, "api key created");
        Ok(created)
    }

    /// Mints an operator key without a caller: for `mantle admin-key create` and the
    /// embedded store's first start.
    pub async fn bootstrap_operator_key(&self, name: &str) -> Result<CreatedKey> {
        let scopes = [Scope::TenantsAdmin.as_str().to_owned()];
        let req = KeyRequest {
            tenant: "",
            name,
            scopes: &scopes,
            expire_time: None,
        };
        self.mint_key(None, &req).await
    }

    async fn mint_key(
        &self,
        tenant: Option<&TenantRef>,
        req: &KeyRequest<'_>,
    ) -> Result<CreatedKey> {
        validate_label("name", req.name)?;
        let scopes = parse_scopes(req.scopes, tenant.is_some())?;
        let now = Utc::now();
        if let Some(expire) = req.expire_time
            && expire <= now
        {
            return Err(invalid("expire_time", "must be in the future"));
        }
        let minted = token::mint();
        let key = self
            .store
            .create_api_key(&NewApiKey {
                id: minted.id,
                tenant_id: tenant.map(|t| t.id),
                name: req.name.to_owned(),
                scopes,
                token_hash: minted.hash,
                create_time: now,
                expire_time: req.expire_time,
            })
            .await?;
        Ok(CreatedKey {
            key,
            token: minted.token,
        })
    }

    pub async fn list_api_keys(
        &self,
        caller: &Caller,
        tenant: &str,
        show_revoked: bool,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>> {
        caller.require(Scope::TenantsAdmin)?;
        let tenant_id = if tenant.is_empty() {
            None
        } else {
            validate_tenant_name(tenant)
                .map_err(|_| invalid("tenant", format!("{tenant:?} is not a valid tenant name")))?;
            Some(self.store.get_tenant(tenant).await?.id)
        };
        Ok(self
            .store
            .list_api_keys(tenant_id, show_revoked, page)
            .await?)
    }

    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<ApiKey> {
        caller.require(Scope::TenantsAdmin)?;
        if id.is_empty() {
            return Err(invalid("id", "required"));
        }
        let key = self.store.revoke_api_key(id, Utc::now()).await?;
        tracing::info!(key = %id, by = %caller.key_id, "api key revoked");
        Ok(key)
    }

    /// Whether any active operator key exists (to hint at `mantle admin-key create`).
    pub async fn has_operator_key(&self) -> Result<bool> {
        let page = PageRequest {
            limit: 1,
            after: None,
        };
        Ok(!self
            .store
            .list_api_keys(None, false, &page)
            .await?
            .items
            .is_empty())
    }
}

fn parse_scopes(names: &[String], tenant_key: bool) -> Result<ScopeSet> {
    if names.is_empty() {
        return Err(invalid("scopes", "at least one scope is required"));
    }
    let scopes = names
        .iter()
        .map(|n| n.trim().parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("scopes", e.to_string()))?;
    for scope in &scopes {
        if tenant_key && !scope.is_tenant_scope() {
            return Err(invalid(
                "scopes",
                format!(
                    "{scope} is an operator scope; create an operator key with an empty tenant"
                ),
            ));
        }
        if !tenant_key && scope.is_tenant_scope() {
            return Err(invalid(
                "scopes",
                format!("operator keys hold only tenants:admin, not {scope}"),
            ));
        }
    }
    Ok(ScopeSet::new(scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for good in ["a", "acme", "acme-prod-2", &"a".repeat(63)] {
            assert!(validate_tenant_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "1acme",
            "acme-",
            "ac_me",
            "ac.me",
            &"a".repeat(64),
        ] {
            let err = validate_tenant_name(bad).unwrap_err();
            assert!(err.to_string().starts_with("name: "), "{err}");
        }
    }

    #[test]
    fn ai_settings() {
        let creds = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(validate_ai_settings(None, None).is_ok());
        assert!(
            validate_ai_settings(
                Some(2.5),
                Some(&creds(&[
                    ("openai", "my-openai-key"),
                    ("anthropic", "claude_1")
                ]))
            )
            .is_ok()
        );
        assert!(validate_ai_settings(Some(0.0), Some(&BTreeMap::new())).is_ok());
        for cost in [-0.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = validate_ai_settings(Some(cost), None).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("settings.max_cost_usd_per_execution: "),
                "{err}"
            );
        }
        let err = validate_ai_settings(None, Some(&creds(&[("x", "key")]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings.default_credentials: unknown provider \"x\"; expected openai or anthropic"
        );
        for bad in ["", "My-Key", "1key", "key-", "a b", &"k".repeat(64)] {
            let err = validate_ai_settings(None, Some(&creds(&[("anthropic", bad)]))).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            assert!(
                err.to_string()
                    .starts_with("settings.default_credentials: anthropic: "),
                "{err}"
            );
        }
    }

    #[test]
    fn page_requests() {
        assert_eq!(page_request(0, "").unwrap().limit, DEFAULT_PAGE_SIZE);
        assert_eq!(page_request(5000, "").unwrap().limit, MAX_PAGE_SIZE);
        assert!(
            page_request(-1, "")
                .unwrap_err()
                .to_string()
                .starts_with("page_size:")
        );
        assert!(
            page_request(10, "zz")
                .unwrap_err()
                .to_string()
                .starts_with("page_token:")
        );
        let token = page_token(Some("acme"));
        assert_eq!(
            page_request(10, &token).unwrap().after.as_deref(),
            Some("acme")
        );
        assert_eq!(page_token(None), "");
    }

    #[test]
    fn key_scopes_match_key_kind() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_scopes(&s(&["executions:read", "*"]), true).is_ok());
        assert!(parse_scopes(&s(&["tenants:admin"]), false).is_ok());
        for (scopes, tenant_key) in [
            (s(&[]), true),
            (s(&["tenants:admin"]), true),
            (s(&["*"]), false),
            (s(&["executions:delete"]), true),
        ] {
            let err = parse_scopes(&scopes, tenant_key).unwrap_err();
            assert!(err.to_string().starts_with("scopes: "), "{err}");
        }
    }
}
