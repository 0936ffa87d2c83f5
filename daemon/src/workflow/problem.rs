//! Validation problems: what is wrong, where (line, column, YAML path), in plain words.

use std::fmt;

use super::yaml::Pos;

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub pos: Pos,
    /// The YAML path, such as `steps[1].params.url`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl Problem {
    /// `FILE:LINE:COL: PATH: message`.
    pub fn render(&self, file: &str) -> String {
        if self.path.is_empty() {
            format!("{file}:{}: {}", self.pos, self.message)
        } else {
            format!("{file}:{}: {}: {}", self.pos, self.path, self.message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("<input>"))
    }
}

/// Collects problems; the order they are reported in is by position.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn add(&mut self, pos: Pos, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            pos,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_sorted(mut self) -> Vec<Problem> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + usize::from(word.len() > 6);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// Appends `; did you mean "x"?` when a close candidate exists.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match did_you_mean(word, candidates) {
        Some(c) => format!("; did you mean {c:?}?"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut before: Vec<usize> = prev.clone();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            // A swap of two neighbours counts as one edit (optimal string alignment).
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                cur[j + 1] = cur[j + 1].min(before[j - 1] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// A value quoted in an error message: its JSON, cut after 64 characters (an input may be
/// megabytes).
pub fn quote_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let fields = [
            "name",
            "action",
            "params",
            "depends_on",
            "continue_on_error",
        ];
        assert_eq!(did_you_mean("acton", fields), Some("action"));
        assert_eq!(did_you_mean("dependson", fields), Some("depends_on"));
        assert_eq!(did_you_mean("param", fields), Some("params"));
        assert_eq!(did_you_mean("zzzzzz", fields), None);
        assert_eq!(did_you_mean("POTS", ["GET", "POST", "PUT"]), Some("POST"));
        assert_eq!(suggestion("nme", fields), "; did you mean \"name\"?");
    }
}
