//! Who is calling: bearer token → [`Caller`] (tenant, scopes, operator or not).
//!
//! Four kinds of token authenticate: API keys stored in the database (tenant keys and
//! operator keys), the single `MANTLE_API_TOKEN` of single-tenant mode, which acts as
//! the tenant `default` with every scope and is also an operator, and the tenant keys of
//! the keys file (`MANTLE_TENANT_KEYS_PATH`, see [`keys_file`]). The caller is built per
//! request and passed explicitly; nothing about it is process-global.

pub mod keys_file;
pub mod token;

use std::sync::Arc;

use chrono::{Duration, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::tenant::{DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME, TenantRef};
use crate::store::{self, Store};

pub use crate::model::scope::{Scope, ScopeSet, UnknownScope};

/// How often a key's `last_use_time` is written at most.
const LAST_USE_RESOLUTION: Duration = Duration::seconds(60);

/// The minimum length of `MANTLE_API_TOKEN`.
pub const MIN_STATIC_TOKEN_LEN: usize = 16;

/// The authenticated identity of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API key id, `env:MANTLE_API_TOKEN`, or `file:<name>` for a keys file key.
    pub key_id: String,
    /// The tenant the request acts on; `None` only for an operator that named none and
    /// when no tenant applies.
    pub tenant: Option<TenantRef>,
    pub scopes: ScopeSet,
    pub operator: bool,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("x-mantle-tenant: tenant {0:?} not found")]
    TenantNotFound(String),
    /// The store failed; its error is the cause.
    #[error("{0}")]
    Store(#[from] store::Error),
}

impl crate::error::ServiceError for Error {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            Error::Unauthenticated(_) => K::Unauthenticated,
            Error::PermissionDenied(_) => K::PermissionDenied,
            Error::TenantNotFound(_) => K::NotFound,
            // Authentication tells a missing key or tenant apart before it fails: any other
            // store failure is the daemon's, unless the database is away.
            Error::Store(err) => match crate::error::ServiceError::kind(err) {
                K::Unavailable => K::Unavailable,
                _ => K::Internal,
            },
        }
    }
}

/// Implements `From<auth::Error>` for a domain error with `PermissionDenied(String)`,
/// `NotFound(String)` and `Store(store::Error)` variants, alike for every domain: a caller
/// without valid credentials or the scope is refused, a tenant named in `x-mantle-tenant`
/// that does not exist is not found, and a store failure stays the cause.
macro_rules! impl_from_auth_error {
    ($error:ident) => {
        impl From<$crate::auth::Error> for $error {
            fn from(err: $crate::auth::Error) -> Self {
                use $crate::auth::Error as Auth;
                match err {
                    Auth::Unauthenticated(msg) => $error::PermissionDenied(msg.to_owned()),
                    Auth::PermissionDenied(msg) => $error::PermissionDenied(msg),
                    Auth::TenantNotFound(name) => $error::NotFound(format!("tenant {name:?}")),
                    Auth::Store(err) => $error::Store(err),
                }
            }
        }
    };
}
pub(crate) use impl_from_auth_error;

impl Caller {
    /// Succeeds when the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.grants(scope) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "this token lacks the scope {scope:?}",
                scope = scope.as_str()
            )))
        }
    }

    /// The tenant the caller acts on, once it holds `scope`.
    pub fn acting_tenant(&self, scope: Scope) -> Result<&TenantRef, Error> {
        self.require(scope)?;
        self.tenant
            .as_ref()
            .ok_or_else(|| Error::PermissionDenied("this token acts on no tenant".to_owned()))
    }
}

/// The static token of single-tenant mode, kept only as a hash.
#[derive(Clone)]
pub struct StaticToken {
    hash: [u8; 32],
}

/// Why a token an operator chose (`MANTLE_API_TOKEN`, a keys file's) cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("must be at least {MIN_STATIC_TOKEN_LEN} characters long")]
    TooShort,
    #[error("must be printable ASCII without spaces")]
    NotPrintable,
}

impl TokenError {
    /// Checks a chosen token: printable ASCII without spaces, at least
    /// [`MIN_STATIC_TOKEN_LEN`] characters.
    pub fn check(token: &str) -> Result<(), TokenError> {
        if token.len() < MIN_STATIC_TOKEN_LEN {
            Err(TokenError::TooShort)
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            Err(TokenError::NotPrintable)
        } else {
            Ok(())
        }
    }
}

/// `MANTLE_API_TOKEN` cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("MANTLE_API_TOKEN: {0}")]
pub struct ApiTokenError(#[source] pub TokenError);

impl StaticToken {
    /// Validates `MANTLE_API_TOKEN` (see [`TokenError::check`]).
    pub fn new(token: &str) -> Result<Self, ApiTokenError> {
        TokenError::check(token).map_err(ApiTokenError)?;
        Ok(StaticToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.hash).into()
    }
}

/// Resolves bearer tokens to callers.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    static_token: Option<StaticToken>,
    keys_file: Option<Arc<keys_file::KeysFile>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, static_token: Option<StaticToken>) -> Self {
        Authenticator {
            store,
            static_token,
            keys_file: None,
        }
    }

    /// Also accepts the keys of the tenant keys file.
    pub fn with_keys_file(mut self, keys_file: Arc<keys_file::KeysFile>) -> Self {
        self.keys_file = Some(keys_file);
        self
    }

    /// Authenticates `authorization` (the whole metadata value) and resolves the tenant the
    /// request acts on from `tenant_header` (`x-mantle-tenant`).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        tenant_header: Option<&str>,
    ) -> Result<Caller, Error> {
        let Some(value) = authorization else {
            return Err(Error::Unauthenticated(
                "missing authorization metadata; send `authorization: Bearer <token>`",
            ));
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
        else {
            return Err(Error::Unauthenticated(
                "authorization metadata must have the form `Bearer <token>`",
            ));
        };
        let tenant_header = tenant_header.map(str::trim).filter(|t| !t.is_empty());

        if let Some(static_token) = &self.static_token
            && static_token.matches(token)
        {
            let scopes = ScopeSet::new([Scope::AllTenantScopes, Scope::TenantsAdmin]);
            return self
                .operator_caller("env:MANTLE_API_TOKEN".to_owned(), scopes, tenant_header)
                .await;
        }

        if let Some(keys_file) = &self.keys_file {
            let keys = keys_file.keys();
            if let Some(key) = keys.lookup(token) {
                return self.file_key_caller(key, tenant_header).await;
            }
        }

        let invalid = Error::Unauthenticated("invalid, expired or revoked token");
        let Some(key_id) = token::key_id(token) else {
            return Err(invalid);
        };
        let Some((key, stored_hash)) = self.store.api_key_credential(key_id).await? else {
            return Err(invalid);
        };
        let now = Utc::now();
        if !token::matches(token, &stored_hash) || !key.is_active(now) {
            return Err(invalid);
        }
        if key
            .last_use_time
            .is_none_or(|t| now - t > LAST_USE_RESOLUTION)
        {
            let store = self.store.clone();
            let id = key.id.clone();
            tokio::spawn(async move {
                if let Err(err) = store.touch_api_key(&id, now).await {
                    tracing::debug!(key_id = %id, error = %err, "could not record key use");
                }
            });
        }

        match key.tenant {
            None => {
                self.operator_caller(key.id, key.scopes, tenant_header)
                    .await
            }
            Some(tenant) => {
                if let Some(named) = tenant_header
                    && named != tenant.name
                {
                    return Err(Error::PermissionDenied(format!(
                        "x-mantle-tenant: this key acts only on tenant {:?}",
                        tenant.name
                    )));
                }
                Ok(Caller {
                    key_id: key.id,
                    tenant: Some(tenant),
                    scopes: key.scopes,
                    operator: false,
                })
            }
        }
    }

    /// A keys file key acts only on its tenant, which must exist.
    async fn file_key_caller(
        &self,
        key: &keys_file::FileKey,
        tenant_header: Option<&str>,
    ) -> Result<Caller, Error> {
        let tenant = match self.store.get_tenant(&key.tenant).await {
            Ok(t) => TenantRef::from(&t),
            Err(store::Error::NotFound(_)) => {
                return Err(Error::Unauthenticated(
                    "the tenant of this key does not exist",
                ));
            }
            Err(err) => return Err(err.into()),
        };
        if let Some(named) = tenant_header
            && named != tenant.name
        {
            return Err(Error::PermissionDenied(format!(
                "x-mantle-tenant: this key acts only on tenant {:?}",
                tenant.name
            )));
        }
        Ok(Caller {
            key_id: key.key_id.clone(),
            tenant: Some(tenant),
            // Validated at load: tenant scopes only, never tenants:admin.
            scopes: ScopeSet::new(key.scopes.iter().filter(|s| s.is_tenant_scope())),
            operator: false,
        })
    }

    /// An operator acts on the tenant it names, or on `default`.
    async fn operator_caller(
        &self,
        key_id: String,
        scopes: ScopeSet,
        tenant_header: Option<&str>,
    ) -> Result<Caller, Error> {
        let tenant = match tenant_header {
            None | Some(DEFAULT_TENANT_NAME) => TenantRef {
                id: DEFAULT_TENANT_ID,
                name: DEFAULT_TENANT_NAME.to_owned(),
            },
            Some(name) => match self.store.get_tenant(name).await {
                Ok(t) => TenantRef::from(&t),
                Err(store::Error::NotFound(_)) => {
                    return Err(Error::TenantNotFound(name.to_owned()));
                }
                Err(err) => return Err(err.into()),
            },
        };
        // Operators may act on any tenant's resources as well as manage tenants.
        let scopes = ScopeSet::new(scopes.iter().chain([Scope::AllTenantScopes]));
        Ok(Caller {
            key_id,
            tenant: Some(tenant),
            scopes,
            operator: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_token_rules() {
        let err = StaticToken::new("short").err().unwrap();
        assert_eq!(err, ApiTokenError(TokenError::TooShort));
        assert_eq!(
            err.to_string(),
            "MANTLE_API_TOKEN: must be at least 16 characters long"
        );
        let err = StaticToken::new("has a space in it!!").err().unwrap();
        assert_eq!(
            err.to_string(),
            "MANTLE_API_TOKEN: must be printable ASCII without spaces"
        );
        let cause = std::error::Error::source(&err).and_then(|c| c.downcast_ref::<TokenError>());
        assert_eq!(cause, Some(&TokenError::NotPrintable));
        let t = StaticToken::new("0123456789abcdef").unwrap();
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches(""));
    }

    #[test]
    fn require_names_the_missing_scope() {
        let caller = Caller {
            key_id: "k".into(),
            tenant: None,
            scopes: ScopeSet::new([Scope::ExecutionsRead]),
            operator: false,
        };
        assert!(caller.require(Scope::ExecutionsRead).is_ok());
        let err = caller.require(Scope::TenantsAdmin).unwrap_err();
        assert!(err.to_string().contains("tenants:admin"), "{err}");
    }
}
