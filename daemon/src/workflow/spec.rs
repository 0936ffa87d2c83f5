//! The validated workflow, as stored (normalized JSON) and as the engine reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::connectors::status::StatusSet;

/// A validated workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    pub steps: Vec<StepSpec>,
    /// Output name → CEL expression, evaluated when the execution completes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Timeout of the whole execution, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
    /// Model tokens (input and output) every `ai/completion` step of an execution may use
    /// together, checked before each model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl InputType {
    pub const NAMES: [&'static str; 6] =
        ["string", "number", "integer", "boolean", "object", "array"];

    pub fn parse(s: &str) -> Option<InputType> {
        Some(match s {
            "string" => InputType::String,
            "number" => InputType::Number,
            "integer" => InputType::Integer,
            "boolean" => InputType::Boolean,
            "object" => InputType::Object,
            "array" => InputType::Array,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
        }
    }

    /// Whether a JSON value is of this type.
    pub fn admits(self, v: &serde_json::Value) -> bool {
        match self {
            InputType::String => v.is_string(),
            InputType::Number => v.is_number(),
            InputType::Integer => {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            InputType::Boolean => v.is_boolean(),
            InputType::Object => v.is_object(),
            InputType::Array => v.is_array(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    #[serde(rename = "type")]
    pub ty: InputType,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Explicit `depends_on` entries as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Every step this one waits for: explicit plus those its expressions reference, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
}

/// Exponential backoff: attempt n waits `initial * multiplier^(n-1)`, capped at `max`, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrySpec {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    /// HTTP statuses retried besides the retryable ones (408, 429, 5xx).
    #[serde(default, skip_serializing_if = "StatusSet::is_empty")]
    pub on: StatusSet,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: 1,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            on: StatusSet::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TriggerSpec {
    Cron {
        schedule: String,
        /// An IANA time zone; UTC when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        /// Which missed times fire after downtime; `latest` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catchup: Option<Catchup>,
        /// The inputs of the executions it starts.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        inputs: serde_json::Map<String, serde_json::Value>,
        /// The version it starts; the latest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
    },
    /// New messages of an IMAP folder.
    Email {
        /// The name of the `imap` secret of the mailbox.
        mailbox: String,
        #[serde(default = "default_folder")]
        folder: String,
        #[serde(default)]
        filter: EmailFilter,
        #[serde(default = "default_poll_interval_ms")]
        poll_interval_ms: u64,
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        inputs: serde_json::Map<String, serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
    },
    Webhook {
        path: String,
        /// Name of the secret holding the HMAC key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<i64>,
    },
}

/// Which of the times a cron trigger missed (the daemons were down) fire when it is
/// scheduled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Catchup {
    /// None: the next time to come fires.
    None,
    /// The most recent missed time fires once.
    Latest,
    /// Every missed time fires, at most [`Catchup::MAX_ALL`] of them (the latest).
    All,
}

impl Catchup {
    pub const MAX_ALL: usize = 100;

    pub fn parse(s: &str) -> Option<Catchup> {
        match s {
            "none" => Some(Catchup::None),
            "latest" => Some(Catchup::Latest),
            "all" => Some(Catchup::All),
            _ => None,
        }
    }
}

fn default_folder() -> String {
    "INBOX".to_owned()
}

fn default_poll_interval_ms() -> u64 {
    60_000
}

/// Which messages of its folder an email trigger starts executions for (among those that
/// arrived after it was registered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailFilter {
    #[default]
    Unseen,
    All,
    Flagged,
    Recent,
}

impl EmailFilter {
    pub const NAMES: [&'static str; 4] = ["unseen", "all", "flagged", "recent"];

    pub fn parse(s: &str) -> Option<EmailFilter> {
        match s {
            "unseen" => Some(EmailFilter::Unseen),
            "all" => Some(EmailFilter::All),
            "flagged" => Some(EmailFilter::Flagged),
            "recent" => Some(EmailFilter::Recent),
            _ => None,
        }
    }

    /// The IMAP SEARCH criterion.
    pub fn criterion(self) -> &'static str {
        match self {
            EmailFilter::Unseen => "UNSEEN",
            EmailFilter::All => "ALL",
            EmailFilter::Flagged => "FLAGGED",
            EmailFilter::Recent => "RECENT",
        }
    }
}

/// The shortest poll interval of an email trigger.
pub const MIN_POLL_INTERVAL_MS: u64 = 5_000;

impl TriggerSpec {
    /// The version it starts, when the file pins one (`version:`); else the latest.
    pub fn version(&self) -> Option<i64> {
        match self {
            TriggerSpec::Cron { version, .. }
            | TriggerSpec::Webhook { version, .. }
            | TriggerSpec::Email { version, .. } => *version,
        }
    }

    /// A stable identity for plans: `cron <schedule>` or `webhook <path>`.
    pub fn key(&self) -> String {
        match self {
            TriggerSpec::Cron { schedule, .. } => format!("cron {schedule}"),
            TriggerSpec::Webhook { path, .. } => format!("webhook {path}"),
            TriggerSpec::Email {
                mailbox, folder, ..
            } => format!("email {mailbox}/{folder}"),
        }
    }
}
