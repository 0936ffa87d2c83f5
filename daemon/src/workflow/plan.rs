//! Plans: what changes between the stored latest version of a workflow and a new file.

use std::collections::BTreeMap;

use serde_json::Value;

use super::spec::WorkflowSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One added, removed or changed element.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// `workflow`, `input`, `step`, `output` or `trigger`.
    pub section: &'static str,
    pub name: String,
    pub fields: Vec<FieldChange>,
}

/// A changed field inside an element; `None` where absent on that side.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// The changes from `old` (`None`: no stored version) to `new`.
pub fn diff(old: Option<&WorkflowSpec>, new: &WorkflowSpec) -> Vec<Change> {
    let empty = WorkflowSpec {
        name: new.name.clone(),
        description: String::new(),
        inputs: Default::default(),
        steps: Vec::new(),
        outputs: Default::default(),
        timeout_ms: None,
        triggers: Vec::new(),
        token_budget: None,
    };
    let is_new = old.is_none();
    let old = old.unwrap_or(&empty);
    let mut changes = Vec::new();

    // A new workflow lists what it adds; its own fields are not "changes".
    for (field, before, after) in if is_new {
        Vec::new()
    } else {
        vec![
            (
                "description",
                json_opt_str(&old.description),
                json_opt_str(&new.description),
            ),
            (
                "timeout",
                old.timeout_ms.map(duration_text),
                new.timeout_ms.map(duration_text),
            ),
            (
                "token_budget",
                old.token_budget.map(serde_json::Value::from),
                new.token_budget.map(serde_json::Value::from),
            ),
        ]
    } {
        if before != after {
            changes.push(Change {
                kind: ChangeKind::Changed,
                section: "workflow",
                name: field.to_owned(),
                fields: vec![FieldChange {
                    path: field.to_owned(),
                    before,
                    after,
                }],
            });
        }
    }

    let to_map = |items: Vec<(String, Value)>| items.into_iter().collect::<BTreeMap<_, _>>();
    compare(
        "input",
        &to_map(
            old.inputs
                .iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect(),
        ),
        &to_map(
            new.inputs
                .iter()
                .map(|(k, v)| (k.clone(), json(v)))
                .collect(),
        ),
        &mut changes,
    );
    compare(
        "step",
        &to_map(
            old.steps
                .iter()
                .map(|s| (s.name.clone(), as_written(json(s))))
                .collect(),
        ),
        &to_map(
            new.steps
                .iter()
                .map(|s| (s.name.clone(), as_written(json(s))))
                .collect(),
        ),
        &mut changes,
    );
    compare(
        "output",
        &to_map(
            old.outputs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect(),
        ),
        &to_map(
            new.outputs
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect(),
        ),
        &mut changes,
    );
    compare(
        "trigger",
        &to_map(old.triggers.iter().map(|t| (t.key(), json(t))).collect()),
        &to_map(new.triggers.iter().map(|t| (t.key(), json(t))).collect()),
        &mut changes,
    );
    changes
}

/// A duration as the file writes it (`1m30s`).
fn duration_text(ms: u64) -> Value {
    Value::from(crate::duration::format(std::time::Duration::from_millis(
        ms,
    )))
}

/// A step as the file spells it: durations as `timeout` and `retry.initial_backoff`, not
/// milliseconds; status ranges as `500-599`; without `needs`, which is derived from
/// `depends_on` and the expressions (their changes show instead).
fn as_written(mut step: Value) -> Value {
    let Some(fields) = step.as_object_mut() else {
        return step;
    };
    fields.remove("needs");
    if let Some(ms) = fields.remove("timeout_ms").and_then(|v| v.as_u64()) {
        fields.insert("timeout".to_owned(), duration_text(ms));
    }
    if let Some(retry) = fields.get_mut("retry").and_then(Value::as_object_mut) {
        for (from, to) in [
            ("initial_backoff_ms", "initial_backoff"),
            ("max_backoff_ms", "max_backoff"),
        ] {
            if let Some(ms) = retry.remove(from).and_then(|v| v.as_u64()) {
                retry.insert(to.to_owned(), duration_text(ms));
            }
        }
        if let Some(Value::Array(ranges)) = retry.get_mut("on") {
            for range in ranges.iter_mut() {
                if let Some([lo, hi]) = range.as_array().map(Vec::as_slice) {
                    *range = if lo == hi {
                        lo.clone()
                    } else {
                        Value::from(format!("{lo}-{hi}"))
                    };
                }
            }
        }
    }
    step
}

fn json_opt_str(s: &str) -> Option<Value> {
    (!s.is_empty()).then(|| Value::from(s))
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn compare(
    section: &'static str,
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
    out: &mut Vec<Change>,
) {
    for (name, before) in old {
        match new.get(name) {
            None => out.push(Change {
                kind: ChangeKind::Removed,
                section,
                name: name.clone(),
                fields: Vec::new(),
            }),
            Some(after) if after != before => {
                let mut fields = Vec::new();
                field_diff("", Some(before), Some(after), &mut fields);
                out.push(Change {
                    kind: ChangeKind::Changed,
                    section,
                    name: name.clone(),
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for name in new.keys().filter(|k| !old.contains_key(*k)) {
        out.push(Change {
            kind: ChangeKind::Added,
            section,
            name: name.clone(),
            fields: Vec::new(),
        });
    }
}

/// Descends into objects so a change reads `params.url`, not the whole params map.
fn field_diff(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<FieldChange>,
) {
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                field_diff(&p, a.get(k), b.get(k), out);
            }
        }
        (a, b) if a != b => out.push(FieldChange {
            path: if path.is_empty() {
                "value".to_owned()
            } else {
                path.to_owned()
            },
            before: a.cloned(),
            after: b.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::load;

    const BASE: &str = "name: p\ninputs:\n  who: {type: string, default: world}\nsteps:\n  - name: a\n    action: core/log\n    params: {message: hi}\n  - name: b\n    action: core/log\n    params: {message: bye}\n";

    #[test]
    fn a_new_workflow_adds_everything() {
        let new = load(BASE).unwrap().spec;
        let changes = diff(None, &new);
        let names: Vec<_> = changes
            .iter()
            .map(|c| (c.kind, c.section, c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (ChangeKind::Added, "input", "who"),
                (ChangeKind::Added, "step", "a"),
                (ChangeKind::Added, "step", "b"),
            ]
        );
    }

    #[test]
    fn shows_exactly_the_change_made() {
        let old = load(BASE).unwrap().spec;
        let new = load(&BASE.replace("message: bye", "message: ciao"))
            .unwrap()
            .spec;
        let changes = diff(Some(&old), &new);
        assert_eq!(
            changes,
            [Change {
                kind: ChangeKind::Changed,
                section: "step",
                name: "b".into(),
                fields: vec![FieldChange {
                    path: "params.message".into(),
                    before: Some("bye".into()),
                    after: Some("ciao".into()),
                }],
            }]
        );
        assert!(diff(Some(&old), &old).is_empty());
    }

    #[test]
    fn fields_are_spelled_as_in_the_file() {
        let old = load(BASE).unwrap().spec;
        let src = BASE.replace(
            "params: {message: bye}\n",
            "params: {message: \"{{ steps.a.output.message }}\"}\n    timeout: 90s\n    retry: {max_attempts: 3, initial_backoff: 500ms, max_backoff: 1m, on: [404, 500-503]}\n",
        );
        let new = load(&src).unwrap().spec;
        let changes = diff(Some(&old), &new);
        let fields: Vec<(String, String)> = changes[0]
            .fields
            .iter()
            .map(|f| {
                let text = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), Value::to_string);
                (f.path.clone(), text(&f.after))
            })
            .collect();
        assert_eq!(
            fields,
            [
                ("params.message".to_owned(), "\"{{ steps.a.output.message }}\"".to_owned()),
                (
                    "retry".to_owned(),
                    r#"{"initial_backoff":"500ms","max_attempts":3,"max_backoff":"1m","multiplier":2.0,"on":[404,"500-503"]}"#.to_owned()
                ),
                ("timeout".to_owned(), "\"1m30s\"".to_owned()),
            ],
            "no needs, no _ms"
        );
    }

    #[test]
    fn removals_and_workflow_fields() {
        let old = load(BASE).unwrap().spec;
        let src = "name: p\ndescription: now described\ntimeout: 5m\nsteps:\n  - name: a\n    action: core/log\n    params: {message: hi}\n";
        let new = load(src).unwrap().spec;
        let kinds: Vec<_> = diff(Some(&old), &new)
            .iter()
            .map(|c| (c.kind, c.section, c.name.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Changed, "workflow", "description".to_owned()),
                (ChangeKind::Changed, "workflow", "timeout".to_owned()),
                (ChangeKind::Removed, "input", "who".to_owned()),
                (ChangeKind::Removed, "step", "b".to_owned()),
            ]
        );
    }
}
