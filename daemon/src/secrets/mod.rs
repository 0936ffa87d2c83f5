//! Secrets: sealed at rest, resolved only when a step runs, redacted from everything the
//! engine stores or streams.

pub mod crypto;
pub use crate::model::secret as model;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::{self, Caller, Scope};
use crate::connectors::{Credential, credentials};
use crate::model::tenant::AuditEvent;
use crate::model::tenant::{Page, PageRequest, TenantRef};
use crate::store::{self, Store};
use crypto::{CryptoError, KeyRing};
use model::{SecretMeta, StoredSecret};

/// Most fields a secret may have, and the longest value.
const MAX_FIELDS: usize = 64;
const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Errors of secret management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
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
            Error::Store(err) => crate::error::ServiceError::kind(err),
        }
    }
}

auth::impl_from_auth_error!(Error);

type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a running step (or a webhook delivery) cannot have its credential; the message
/// names the credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential {name:?} not found")]
    NotFound { name: String, source: store::Error },
    #[error("credential {name:?}: {source}")]
    Store { name: String, source: store::Error },
    /// The sealed value cannot be opened with the keys at hand.
    #[error("credential {name:?}: {source}")]
    Sealed { name: String, source: CryptoError },
    /// Says where the text breaks, never what it holds: serde's own message may quote a
    /// decrypted value (it stays the `source`, for the code that handles it).
    #[error(
        "credential {name:?}: stored fields do not parse (at line {}, column {})",
        .source.line(),
        .source.column()
    )]
    Fields {
        name: String,
        source: serde_json::Error,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field: field.into(),
        message: message.into(),
    }
}

/// The additional data a secret's ciphertext is bound to: its tenant and name.
fn aad(tenant_id: Uuid, name: &str) -> Vec<u8> {
    format!("mantle secret\0{tenant_id}\0{name}").into_bytes()
}

/// Checks a type and its fields.
pub fn validate_fields(kind: &str, fields: &BTreeMap<String, String>) -> Result<()> {
    let Some(ty) = credentials::find(kind) else {
        let names: Vec<&str> = credentials::ALL.iter().map(|t| t.name).collect();
        let hint = crate::workflow::problem::suggestion(kind, names.iter().copied());
        return Err(invalid(
            "type",
            format!(
                "unknown type {kind:?}{hint}; use one of {}",
                names.join(", ")
            ),
        ));
    };
    if fields.is_empty() {
        return Err(invalid("fields", "at least one field is required"));
    }
    if fields.len() > MAX_FIELDS {
        return Err(invalid("fields", format!("at most {MAX_FIELDS} fields")));
    }
    for (name, value) in fields {
        let ok_name = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_name {
            return Err(invalid(
                format!("fields.{name}"),
                "field names are 1 to 63 letters, digits, '_' and '-'",
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(invalid(
                format!("fields.{name}"),
                format!("at most {MAX_VALUE_BYTES} bytes"),
            ));
        }
        if !ty.has_field(name) {
            let known: Vec<&str> = ty.required.iter().chain(ty.optional).copied().collect();
            return Err(invalid(
                format!("fields.{name}"),
                format!(
                    "a {kind} secret has no field {name:?}; its fields are {}",
                    known.join(", ")
                ),
            ));
        }
    }
    for r in ty.required {
        match fields.get(*r) {
            None => {
                return Err(invalid(
                    format!("fields.{r}"),
                    format!("required for a {kind} secret"),
                ));
            }
            Some(v) if v.is_empty() => {
                return Err(invalid(format!("fields.{r}"), "must not be empty"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if crate::workflow::load::is_valid_name(name) {
        Ok(())
    } else if name.is_empty() {
        Err(invalid("name", "required"))
    } else {
        Err(invalid(
            "name",
            format!(
                "{name:?} is not a valid secret name: use 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter"
            ),
        ))
    }
}

/// Verifies at start that the configured keys are the ones this database uses, so a wrong
/// key stops the daemon now instead of failing every step later. Records a new key when a
/// rotation begins (or on first use).
pub async fn check_keys(store: &dyn Store, ring: &KeyRing) -> std::result::Result<(), String> {
    let recorded = store.encryption_keys().await.map_err(|e| e.to_string())?;
    let find = |id: &str| recorded.iter().find(|(k, _, _)| k == id);
    if let Some((_, check, _)) = find(ring.current_id())
        && !ring.verify_check_value(check)
    {
        return Err(format!(
            "MANTLE_ENCRYPTION_KEY does not match the key recorded as {}",
            ring.current_id()
        ));
    }
    let active = recorded.first().map(|(k, _, _)| k.clone());
    match active.as_deref() {
        None => {}
        Some(a) if a == ring.current_id() => {}
        Some(a) if Some(a) == ring.previous_id() => {
            let check = find(a).map(|(_, c, _)| c.clone());
            if check.is_some_and(|c| !ring.verify_check_value(&c)) {
                return Err(format!(
                    "MANTLE_ENCRYPTION_KEY_PREVIOUS does not match the key recorded as {a}"
                ));
            }
        }
        Some(a) => {
            return Err(format!(
                "MANTLE_ENCRYPTION_KEY (key id {}) is not the key this database uses (key id {a}); \
                 start with the same key, or to change keys set the old one as \
                 MANTLE_ENCRYPTION_KEY_PREVIOUS and run RotateEncryptionKey",
                ring.current_id()
            ));
        }
    }
    for key_id in store.secret_key_ids().await.map_err(|e| e.to_string())? {
        if !ring.knows(&key_id) {
            return Err(format!(
                "secrets in this database are sealed with key {key_id}, which is neither \
                 MANTLE_ENCRYPTION_KEY ({}) nor MANTLE_ENCRYPTION_KEY_PREVIOUS",
                ring.current_id()
            ));
        }
    }
    if active.as_deref() != Some(ring.current_id()) {
        store
            .record_encryption_key(ring.current_id(), &ring.check_value(), Utc::now())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub rotated: i64,
    pub remaining: i64,
}

/// Secret management and resolution.
#[derive(Clone)]
pub struct Secrets {
    store: Arc<dyn Store>,
    ring: Arc<KeyRing>,
}

impl Secrets {
    pub fn new(store: Arc<dyn Store>, ring: Arc<KeyRing>) -> Self {
        Secrets { store, ring }
    }

    fn tenant(caller: &Caller, scope: Scope) -> Result<&TenantRef> {
        Ok(caller.acting_tenant(scope)?)
    }

    async fn audit(
        &self,
        caller: &Caller,
        tenant: Option<Uuid>,
        action: &str,
        resource: String,
        detail: Option<String>,
    ) {
        let event = AuditEvent {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            time: Utc::now(),
            actor: caller.key_id.clone(),
            action: action.to_owned(),
            resource,
            result: "OK".to_owned(),
            detail,
        };
        if let Err(err) = self.store.record_audit(&event).await {
            tracing::error!(error = %err, action, "could not record the audit event");
        }
    }

    fn seal(
        &self,
        tenant_id: Uuid,
        name: &str,
        fields: &BTreeMap<String, String>,
    ) -> crypto::Sealed {
        let plaintext = Zeroizing::new(serde_json::to_vec(fields).expect("string maps serialize"));
        self.ring.seal(&aad(tenant_id, name), &plaintext)
    }

    pub async fn create(
        &self,
        caller: &Caller,
        name: &str,
        kind: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<SecretMeta> {
        let tenant = Self::tenant(caller, Scope::SecretsWrite)?;
        check_name(name)?;
        validate_fields(kind, fields)?;
        let now = Utc::now();
        let sealed = self.seal(tenant.id, name, fields);
        let secret = StoredSecret {
            tenant_id: tenant.id,
            meta: SecretMeta {
                name: name.to_owned(),
                kind: kind.to_owned(),
                field_names: fields.keys().cloned().collect(),
                key_id: sealed.key_id.clone(),
                create_time: now,
                update_time: now,
            },
            sealed,
        };
        self.store.create_secret(&secret).await?;
        self.audit(
            caller,
            Some(tenant.id),
            "secret.create",
            format!("secrets/{name}"),
            Some(format!("type {kind}")),
        )
        .await;
        Ok(secret.meta)
    }

    pub async fn update(
        &self,
        caller: &Caller,
        name: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<SecretMeta> {
        let tenant = Self::tenant(caller, Scope::SecretsWrite)?;
        check_name(name)?;
        let mut secret = self.store.get_secret(tenant.id, name).await?;
        validate_fields(&secret.meta.kind, fields)?;
        secret.sealed = self.seal(tenant.id, name, fields);
        secret.meta.key_id = secret.sealed.key_id.clone();
        secret.meta.field_names = fields.keys().cloned().collect();
        secret.meta.update_time = Utc::now();
        self.store.update_secret(&secret).await?;
        self.audit(
            caller,
            Some(tenant.id),
            "secret.update",
            format!("secrets/{name}"),
            None,
        )
        .await;
        Ok(secret.meta)
    }

    pub async fn get(&self, caller: &Caller, name: &str) -> Result<SecretMeta> {
        let tenant = Self::tenant(caller, Scope::SecretsRead)?;
        check_name(name)?;
        Ok(self.store.get_secret(tenant.id, name).await?.meta)
    }

    pub async fn list(&self, caller: &Caller, page: &PageRequest) -> Result<Page<SecretMeta>> {
        let tenant = Self::tenant(caller, Scope::SecretsRead)?;
        Ok(self.store.list_secrets(tenant.id, page).await?)
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<()> {
        let tenant = Self::tenant(caller, Scope::SecretsWrite)?;
        check_name(name)?;
        self.store.delete_secret(tenant.id, name).await?;
        self.audit(
            caller,
            Some(tenant.id),
            "secret.delete",
            format!("secrets/{name}"),
            None,
        )
        .await;
        Ok(())
    }

    /// Re-encrypts every secret not sealed with the current key, `batch` at a time, while
    /// the daemon serves.
    pub async fn rotate(&self, caller: &Caller, batch: u32) -> Result<Rotation> {
        caller.require(Scope::TenantsAdmin)?;
        let rotation = self.rotate_all(batch).await?;
        self.audit(
            caller,
            None,
            "encryption_key.rotate",
            format!("encryption_keys/{}", self.ring.current_id()),
            Some(format!(
                "{} secrets re-encrypted, {} remaining",
                rotation.rotated, rotation.remaining
            )),
        )
        .await;
        Ok(rotation)
    }

    /// The rotation loop, also used by `mantle secrets rotate-key`.
    pub async fn rotate_all(&self, batch: u32) -> Result<Rotation> {
        let batch = batch.clamp(1, 10_000);
        let mut rotated = 0i64;
        let mut skipped = std::collections::HashSet::new();
        loop {
            let secrets = self
                .store
                .secrets_not_sealed_with(self.ring.current_id(), batch + skipped.len() as u32)
                .await?;
            let todo: Vec<StoredSecret> = secrets
                .into_iter()
                .filter(|s| !skipped.contains(&(s.tenant_id, s.meta.name.clone())))
                .collect();
            if todo.is_empty() {
                break;
            }
            for mut s in todo {
                let aad = aad(s.tenant_id, &s.meta.name);
                let plaintext = match self.ring.open(&s.sealed, &aad) {
                    Ok(p) => p,
                    Err(err) => {
                        tracing::error!(tenant = %s.tenant_id, secret = %s.meta.name, error = %err, "cannot re-encrypt secret");
                        skipped.insert((s.tenant_id, s.meta.name.clone()));
                        continue;
                    }
                };
                let old = s.sealed.key_id.clone();
                s.sealed = self.ring.seal(&aad, &plaintext);
                if self.store.reseal_secret(&s, &old).await? {
                    rotated += 1;
                }
            }
        }
        let remaining = self
            .store
            .count_secrets_not_sealed_with(self.ring.current_id())
            .await?;
        Ok(Rotation { rotated, remaining })
    }

    /// A secret's fields for a running step.
    pub async fn credential(
        &self,
        tenant_id: Uuid,
        name: &str,
    ) -> std::result::Result<Credential, CredentialError> {
        let name = name.to_owned();
        let secret = match self.store.get_secret(tenant_id, &name).await {
            Ok(s) => s,
            Err(source @ store::Error::NotFound(_)) => {
                return Err(CredentialError::NotFound { name, source });
            }
            Err(source) => return Err(CredentialError::Store { name, source }),
        };
        let plaintext = match self.ring.open(&secret.sealed, &aad(tenant_id, &name)) {
            Ok(plaintext) => plaintext,
            Err(source) => return Err(CredentialError::Sealed { name, source }),
        };
        match serde_json::from_slice(&plaintext) {
            Ok(fields) => Ok(Credential {
                name,
                kind: secret.meta.kind,
                fields,
            }),
            Err(source) => Err(CredentialError::Fields { name, source }),
        }
    }

    pub fn key_id(&self) -> &str {
        self.ring.current_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn types_require_their_fields() {
        assert!(validate_fields("bearer", &fields(&[("token", "t")])).is_ok());
        assert!(validate_fields("basic", &fields(&[("username", "u"), ("password", "p")])).is_ok());
        assert!(validate_fields("generic", &fields(&[("anything", "x")])).is_ok());
        let err = validate_fields("basic", &fields(&[("username", "u")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fields.password: required for a basic secret"
        );
        let err =
            validate_fields("bearer", &fields(&[("token", "t"), ("extra", "x")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("fields.extra: a bearer secret has no field"),
            "{err}"
        );
        let err = validate_fields("baerer", &fields(&[("token", "t")])).unwrap_err();
        assert!(err.to_string().contains("did you mean \"bearer\""), "{err}");
        let err = validate_fields("bearer", &fields(&[("token", "")])).unwrap_err();
        assert_eq!(err.to_string(), "fields.token: must not be empty");
        assert!(validate_fields("generic", &BTreeMap::new()).is_err());
    }

    #[test]
    fn aad_binds_tenant_and_name() {
        let t = Uuid::from_u128(7);
        assert_ne!(aad(t, "a"), aad(t, "b"));
        assert_ne!(aad(t, "a"), aad(Uuid::from_u128(8), "a"));
    }

    /// A credential that cannot be had says which, and keeps why: the store's error, or
    /// the key ring's.
    #[tokio::test]
    async fn a_credential_error_keeps_its_cause() {
        use crate::model::tenant::DEFAULT_TENANT_ID;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::testing::sqlite_store(dir.path()).await;
        let secrets = |key: &str| {
            Secrets::new(
                store.clone(),
                Arc::new(KeyRing::from_hex(key, None).unwrap()),
            )
        };
        let sealing = secrets(&"0a".repeat(32));
        let caller = Caller {
            key_id: "test".to_owned(),
            tenant: Some(TenantRef {
                id: DEFAULT_TENANT_ID,
                name: "default".to_owned(),
            }),
            scopes: auth::ScopeSet::new([Scope::SecretsWrite]),
            operator: false,
        };
        sealing
            .create(&caller, "api", "bearer", &fields(&[("token", "t")]))
            .await
            .unwrap();
        let found = sealing.credential(DEFAULT_TENANT_ID, "api").await.unwrap();
        assert_eq!(found.fields, fields(&[("token", "t")]));

        let err = sealing
            .credential(DEFAULT_TENANT_ID, "nope")
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                CredentialError::NotFound {
                    source: store::Error::NotFound(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "credential \"nope\" not found");

        let other_key = secrets(&"0b".repeat(32));
        let err = other_key
            .credential(DEFAULT_TENANT_ID, "api")
            .await
            .unwrap_err();
        let CredentialError::Sealed {
            source: cause @ CryptoError::UnknownKey(_),
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(err.to_string(), format!("credential \"api\": {cause}"));
        let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<CryptoError>());
        assert_eq!(source, Some(cause));
    }

    #[test]
    fn a_credential_that_does_not_parse_is_not_quoted() {
        let source =
            serde_json::from_str::<BTreeMap<String, String>>(r#"{"token": 98765432}"#).unwrap_err();
        assert!(source.to_string().contains("98765432"), "{source}");
        let err = CredentialError::Fields {
            name: "api".into(),
            source,
        };
        assert_eq!(
            err.to_string(),
            "credential \"api\": stored fields do not parse (at line 1, column 18)"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
