//! Domain types of stored workflow definitions.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One stored, immutable version of a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub tenant_id: Uuid,
    pub name: String,
    pub version: i64,
    pub content_hash: String,
    pub description: String,
    /// The normalized spec as JSON (what the hash covers and the engine reads).
    pub spec_json: String,
    /// The YAML as applied.
    pub source: String,
    pub create_time: DateTime<Utc>,
}

/// A workflow in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionSummary {
    pub name: String,
    pub latest_version: i64,
    pub description: String,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A version in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: i64,
    pub content_hash: String,
    pub create_time: DateTime<Utc>,
}

/// What an apply stores when the content changed.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub tenant_id: Uuid,
    pub name: String,
    pub content_hash: String,
    pub description: String,
    pub spec_json: String,
    pub source: String,
    pub now: DateTime<Utc>,
    /// The version's triggers: a new version replaces the workflow's registered triggers
    /// with these (a trigger of the same key keeps its id, pause and last fire).
    pub triggers: Vec<crate::trigger::NewTrigger>,
}
