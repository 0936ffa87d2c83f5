//! HTTP status lists, as `ok_status` and `retry.on` write them: statuses (`404`) and
//! inclusive ranges (`200-299`), each between 100 and 599.

use serde::{Deserialize, Serialize};

/// A set of HTTP statuses, as inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, range: (u16, u16)) {
        self.0.push(range);
    }

    /// Parses a list given as JSON (a rendered param); errors name the entry, as
    /// `[1]: ...`.
    pub fn from_json(value: &serde_json::Value) -> Result<StatusSet, String> {
        let items = value
            .as_array()
            .ok_or("expected a list of statuses or ranges such as [200-299, 404]")?;
        let mut set = StatusSet::default();
        for (i, item) in items.iter().enumerate() {
            let range = match item {
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .ok_or_else(|| format!("{n} is not a status"))
                    .and_then(status_range),
                serde_json::Value::String(s) => parse_entry(s),
                other => Err(format!("expected a status or a range, found {other}")),
            };
            set.push(range.map_err(|e| format!("[{i}]: {e}"))?);
        }
        Ok(set)
    }
}

/// A single status as a range of one.
pub fn status_range(status: i64) -> Result<(u16, u16), String> {
    match u16::try_from(status) {
        Ok(s) if (100..=599).contains(&s) => Ok((s, s)),
        _ => Err(format!("{status} is not an HTTP status (100 to 599)")),
    }
}

/// `"404"` or `"200-299"`.
pub fn parse_entry(text: &str) -> Result<(u16, u16), String> {
    let number = |t: &str| {
        t.trim()
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not a status or a range such as 200-299"))
            .and_then(status_range)
            .map(|(s, _)| s)
    };
    match text.split_once('-') {
        None => number(text).map(|s| (s, s)),
        Some((lo, hi)) => {
            let (lo, hi) = (number(lo)?, number(hi)?);
            if lo > hi {
                return Err(format!("{text:?}: the range ends before it starts"));
            }
            Ok((lo, hi))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_and_ranges() {
        let set = StatusSet::from_json(&json!(["200-299", 404, " 500 - 503 "])).unwrap();
        for ok in [200, 250, 299, 404, 500, 503] {
            assert!(set.contains(ok), "{ok}");
        }
        for no in [199, 300, 403, 405, 504] {
            assert!(!set.contains(no), "{no}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |v| StatusSet::from_json(&v).unwrap_err();
        assert_eq!(
            err(json!([200, 600])),
            "[1]: 600 is not an HTTP status (100 to 599)"
        );
        assert_eq!(
            err(json!(["299-200"])),
            "[0]: \"299-200\": the range ends before it starts"
        );
        assert!(err(json!(["2xx"])).contains("not a status or a range"));
        assert!(err(json!([true])).starts_with("[0]: expected a status or a range"));
        assert!(err(json!(404)).starts_with("expected a list"));
    }
}
