//! Redaction: secret values are replaced by `***` in whatever the engine stores or streams.

use base64::Engine as _;
use serde_json::Value;

use super::Credential;

/// Shortest value redacted; shorter ones would mangle ordinary text.
pub const MIN_REDACTED_LEN: usize = 4;

/// The strings to hide for a credential: each field value, and the encoded forms an HTTP
/// exchange may echo (the Basic authorization value).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    pub fn for_credential(credential: &Credential) -> Redactor {
        let mut needles: Vec<String> = credential.fields.values().cloned().collect();
        if let (Some(user), Some(pass)) = (
            credential.fields.get("username"),
            credential.fields.get("password"),
        ) {
            needles
                .push(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")));
        }
        needles.retain(|n| n.chars().count() >= MIN_REDACTED_LEN);
        // Longest first, so a value containing another is hidden whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Redactor { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        out
    }

    /// Redacts every string in a JSON value, keys included.
    pub fn value(&self, v: Value) -> Value {
        if self.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.text(&k), self.value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn hides_values_and_encoded_basic_auth() {
        let cred = Credential {
            name: "c".into(),
            kind: "basic".into(),
            fields: BTreeMap::from([
                ("username".into(), "alice".into()),
                ("password".into(), "hunter22".into()),
            ]),
        };
        let r = Redactor::for_credential(&cred);
        let echoed = serde_json::json!({
            "headers": {"authorization": format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:hunter22"))},
            "body": ["user alice", {"hunter22": "x"}],
        });
        let out = r.value(echoed).to_string();
        assert!(!out.contains("hunter22") && !out.contains("alice"), "{out}");
        assert!(!out.contains("YWxpY2U6aHVudGVyMjI="), "{out}");
        assert!(out.contains("Basic ***"), "{out}");
    }

    #[test]
    fn short_values_are_left_alone() {
        let cred = Credential {
            name: "c".into(),
            kind: "generic".into(),
            fields: BTreeMap::from([("k".into(), "ab".into())]),
        };
        assert_eq!(Redactor::for_credential(&cred).text("abc"), "abc");
    }
}
