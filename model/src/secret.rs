//! Domain types of secrets and audit events.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A secret's metadata: never its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub kind: String,
    pub field_names: Vec<String>,
    pub key_id: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A secret as stored: metadata and the sealed fields (a JSON object of strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub tenant_id: Uuid,
    pub meta: SecretMeta,
    pub sealed: Sealed,
}

/// A sealed value: which key, which nonce, and the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}
