//! From YAML text to a validated [`WorkflowSpec`], reporting every problem at once with its
//! line, column and YAML path.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::dag;
use super::expr::{self, ExprError};
use super::problem::{Problem, Problems, suggestion};
use super::spec::{
    Catchup, EmailFilter, InputSpec, InputType, MIN_POLL_INTERVAL_MS, RetrySpec, StepSpec,
    TriggerSpec, WorkflowSpec,
};
use super::yaml::{self, Key, Node, Pos, Value};
use crate::connectors::status::StatusSet;
use crate::connectors::{self, Action, CredentialType, ParamType, Registry};

/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 1000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u64 = 100;
/// Most expressions (`if`, outputs, `{{ }}` templates) one workflow file may hold: each is
/// compiled when the file is checked, so this bounds the work one file asks for.
pub const MAX_EXPRESSIONS: usize = 10_000;
/// Largest normalized form (the stored JSON) of a workflow: aliases can make it larger than
/// its file. With the file (at most 1 MiB) it fits one answer of `GetDefinition`, and two of
/// them fit a plan.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024 + 512 * 1024;

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "inputs",
    "steps",
    "outputs",
    "timeout",
    "triggers",
    "token_budget",
];
const TOOL_FIELDS: &[&str] = &[
    "name",
    "description",
    "input_schema",
    "action",
    "params",
    "credential",
    "timeout",
];
const STEP_FIELDS: &[&str] = &[
    "name",
    "action",
    "params",
    "credential",
    "if",
    "depends_on",
    "retry",
    "timeout",
    "continue_on_error",
];
const INPUT_FIELDS: &[&str] = &["type", "required", "default", "description", "enum"];
const RETRY_FIELDS: &[&str] = &[
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "backoff",
    "on",
];
/// Fields of the original Mantle that this version does not implement.
const UNSUPPORTED: &[&str] = &["max_parallel_executions", "on_limit", "hooks"];
const UNSUPPORTED_STEP: &[&str] = &["registry_credential", "max_parallel", "artifacts"];

/// A validated workflow with its normalized form.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: WorkflowSpec,
    /// Canonical JSON of the spec: what is stored, and what the hash covers.
    pub normalized: String,
    /// SHA-256 of `normalized`, hex: whitespace, comments and key order do not change it.
    pub content_hash: String,
    /// What is valid but will not do what the file seems to say (a trigger that does not
    /// fire, an input that is never declared), ordered by position.
    pub warnings: Vec<Problem>,
    /// Every step's `credential`, where it is written: checked against the tenant's
    /// secrets by whoever knows the tenant.
    pub credentials: Vec<CredentialRef>,
}

/// A step's `credential:` and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRef {
    pub name: String,
    pub pos: Pos,
    /// `steps[2].credential`.
    pub path: String,
    /// The step's action, and the secret types it takes.
    pub action: String,
    pub types: &'static [&'static CredentialType],
}

/// The warning of a webhook trigger without a secret.
const NO_SECRET: &str = "a webhook trigger without `secret` refuses every request (401): name \
     a stored secret with a `token` field (type bearer) that senders sign with";

/// Stack for validation: the YAML deserializer and the CEL parser recurse per nesting level.
const STACK_BYTES: usize = 64 * 1024 * 1024;

/// Runs `f` on a thread with a stack deep enough for the nesting limits of YAML and CEL
/// (async worker threads have small stacks).
pub fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("workflow-load".to_owned())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, f)
            .expect("spawning the validation thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Parses and validates a workflow file against the built-in actions, on a thread of its
/// own with a large stack.
pub fn load(source: &str) -> Result<Loaded, Vec<Problem>> {
    with_big_stack(|| load_here(source, Registry::builtin()))
}

/// Parses and validates a workflow file against `actions` on this thread, which must have a
/// stack as large as [`with_big_stack`] gives (the CPU pool's threads do).
pub fn load_here(source: &str, actions: &Registry) -> Result<Loaded, Vec<Problem>> {
    let root = yaml::parse(source).map_err(|e| {
        vec![Problem {
            pos: e.pos,
            path: String::new(),
            message: e.message,
        }]
    })?;
    let mut d = Decoder {
        source,
        actions,
        problems: Problems::default(),
        warnings: Problems::default(),
        expressions: 0,
        input_refs: Vec::new(),
        credentials: Vec::new(),
    };
    let spec = d.workflow(&root);
    match spec {
        Some(spec) if d.problems.is_empty() => {
            let normalized = serde_json::to_string(&spec).expect("a workflow spec serializes");
            if normalized.len() > MAX_SPEC_BYTES {
                return Err(vec![Problem {
                    pos: root.pos,
                    path: String::new(),
                    message: format!(
                        "the workflow is {} bytes once its YAML aliases are expanded, over the \
                         limit of {MAX_SPEC_BYTES} bytes (1.5 MiB)",
                        normalized.len()
                    ),
                }]);
            }
            let content_hash = hex::encode(Sha256::digest(normalized.as_bytes()));
            d.warn_undeclared_inputs(&spec);
            Ok(Loaded {
                spec,
                normalized,
                content_hash,
                warnings: d.warnings.into_sorted(),
                credentials: d.credentials,
            })
        }
        _ => Err(d.problems.into_sorted()),
    }
}

/// Checks a workflow or step name: `[a-z][a-z0-9_-]*`, at most 63 characters, not ending in `-`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `path` is inside a tool's params (`steps[0].params.tools[1].params.url`), where
/// `tool` is set.
fn is_tool_params(path: &str) -> bool {
    path.split_once(".params.tools[")
        .is_some_and(|(_, rest)| rest.contains("].params"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// How many source characters inside a `quote`-quoted scalar spell its first `value_chars`
/// characters: an escape such as `\"` or `''` is two source characters for one.
fn raw_chars(raw: &str, quote: char, value_chars: usize) -> usize {
    let mut chars = raw.chars();
    let mut consumed = 0;
    for _ in 0..value_chars {
        match (quote, chars.next()) {
            ('"', Some('\\')) => {
                let width = match chars.next() {
                    Some('x') => 3,
                    Some('u') => 5,
                    Some('U') => 9,
                    _ => 1,
                };
                for _ in 1..width {
                    chars.next();
                }
                consumed += 1 + width;
            }
            ('\'', Some('\'')) => {
                chars.next();
                consumed += 2;
            }
            (_, Some(_)) => consumed += 1,
            (_, None) => break,
        }
    }
    consumed
}

/// A step as decoded, with what validation needs beyond the spec.
struct StepDraft {
    spec: StepSpec,
    path: String,
    pos: Pos,
    /// Steps referenced by `if` and params, with where each reference was written.
    refs: Vec<(String, Pos, String)>,
    /// `depends_on` entries with their positions.
    explicit: Vec<(String, Pos, String)>,
}

struct Decoder<'s> {
    source: &'s str,
    /// The actions steps may name.
    actions: &'s Registry,
    problems: Problems,
    warnings: Problems,
    /// Expressions met so far (see [`MAX_EXPRESSIONS`]).
    expressions: usize,
    /// Every `inputs.NAME` read, where, and under which path.
    input_refs: Vec<(String, Pos, String)>,
    credentials: Vec<CredentialRef>,
}

impl Decoder<'_> {
    /// Counts `n` more expressions at `node`; false (once with a problem) past the limit,
    /// when they are not compiled.
    fn count_expressions(&mut self, node: &Node, path: &str, n: usize) -> bool {
        let before = self.expressions;
        self.expressions = self.expressions.saturating_add(n);
        if self.expressions <= MAX_EXPRESSIONS {
            return true;
        }
        if before <= MAX_EXPRESSIONS {
            self.add(
                node.pos,
                path,
                format!(
                    "the file holds more than {MAX_EXPRESSIONS} expressions (`if`, outputs and \
                     {{{{ }}}} templates); a workflow may have at most {MAX_EXPRESSIONS}"
                ),
            );
        }
        false
    }

    fn add(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.problems.add(pos, path, message);
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            other => {
                self.add(
                    node.pos,
                    path,
                    format!("expected a mapping, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reports keys that are not in `allowed`, with a suggestion.
    fn check_keys(
        &mut self,
        entries: &[(Key, Node)],
        path: &str,
        allowed: &[&str],
        unsupported: &[&str],
    ) {
        for (key, _) in entries {
            if allowed.contains(&key.name.as_str()) {
                continue;
            }
            let at = join(path, &key.name);
            if unsupported.contains(&key.name.as_str()) {
                self.add(
                    key.pos,
                    &at,
                    format!("{:?} is not supported by this version of Mantle", key.name),
                );
            } else {
                let hint = suggestion(&key.name, allowed.iter().copied());
                self.add(key.pos, &at, format!("unknown field {:?}{hint}", key.name));
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.add(
                    node.pos,
                    path,
                    format!("expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.add(
                    node.pos,
                    path,
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn duration_ms(&mut self, node: &Node, path: &str) -> Option<u64> {
        let Value::Str(text) = &node.value else {
            self.add(
                node.pos,
                path,
                format!(
                    "expected a duration such as 500ms, 2s or 5m, found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let text = text.clone();
        match crate::duration::parse(&text) {
            Ok(d) if d.is_zero() => {
                self.add(node.pos, path, "must be longer than zero");
                None
            }
            Ok(d) => Some(d.as_millis().min(u128::from(u64::MAX)) as u64),
            Err(e) => {
                self.add(node.pos, path, e);
                None
            }
        }
    }

    /// Where a character offset inside a scalar string lies in the file.
    /// Where the character at `offset` of a scalar's value was written: exact for
    /// single-line scalars (escapes in quoted ones included), the scalar's start otherwise.
    fn pos_in(&self, node: &Node, text: &str, offset: usize) -> Pos {
        if text.contains('\n') {
            return node.pos;
        }
        let raw = match self
            .source
            .get(node.offset..)
            .and_then(|s| s.chars().next())
        {
            Some(q @ ('"' | '\'')) => 1 + raw_chars(&self.source[node.offset + 1..], q, offset),
            _ => offset,
        };
        Pos {
            line: node.pos.line,
            column: node.pos.column + raw as u32,
        }
    }

    fn expr_errors(&mut self, node: &Node, text: &str, path: &str, errors: Vec<ExprError>) {
        for e in errors {
            let pos = self.pos_in(node, text, e.offset);
            self.add(pos, path, e.message);
        }
    }

    fn workflow(&mut self, root: &Node) -> Option<WorkflowSpec> {
        if matches!(root.value, Value::Null) {
            self.add(
                root.pos,
                "",
                "the file is empty; a workflow needs at least `name` and `steps`",
            );
            return None;
        }
        let Value::Map(entries) = &root.value else {
            self.add(
                root.pos,
                "",
                format!(
                    "expected a mapping with at least `name` and `steps`, found {}",
                    root.value.kind()
                ),
            );
            return None;
        };
        self.check_keys(entries, "", TOP_FIELDS, UNSUPPORTED);
        let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);

        let name = match field("name") {
            Some(n) => self.string(n, "name").filter(|s| {
                let ok = is_valid_name(s);
                if !ok {
                    self.add(
                        n.pos,
                        "name",
                        format!(
                            "{s:?} is not a valid workflow name: use 1 to 63 lowercase letters, digits, \
                             '-' and '_', starting with a letter and not ending with '-'"
                        ),
                    );
                }
                ok
            }),
            None => {
                self.add(root.pos, "name", "required field is missing");
                None
            }
        };
        let description = field("description")
            .and_then(|n| self.string(n, "description"))
            .unwrap_or_default();
        let timeout_ms = field("timeout").and_then(|n| self.duration_ms(n, "timeout"));
        let token_budget = field("token_budget").and_then(|n| match n.value {
            Value::Int(i) if i > 0 => Some(i as u64),
            Value::Int(i) => {
                self.add(
                    n.pos,
                    "token_budget",
                    format!("must be a positive number of tokens, got {i}"),
                );
                None
            }
            _ => {
                self.add(
                    n.pos,
                    "token_budget",
                    format!(
                        "expected a positive integer (tokens), found {}",
                        n.value.kind()
                    ),
                );
                None
            }
        });
        let inputs = field("inputs").map(|n| self.inputs(n)).unwrap_or_default();
        let triggers = field("triggers")
            .map(|n| self.triggers(n))
            .unwrap_or_default();

        let drafts = match field("steps") {
            Some(n) => self.steps(n),
            None => {
                self.add(
                    root.pos,
                    "steps",
                    "required field is missing: a workflow needs at least one step",
                );
                Vec::new()
            }
        };
        let names: BTreeMap<String, Pos> = drafts
            .iter()
            .map(|d| (d.spec.name.clone(), d.pos))
            .collect();
        let outputs = field("outputs")
            .map(|n| self.outputs(n, &names))
            .unwrap_or_default();
        let steps = self.resolve_dependencies(drafts, &names);

        Some(WorkflowSpec {
            name: name?,
            description,
            inputs,
            steps,
            outputs,
            timeout_ms,
            triggers,
            token_budget,
        })
    }

    fn inputs(&mut self, node: &Node) -> BTreeMap<String, InputSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "inputs") else {
            return out;
        };
        for (key, value) in entries {
            let path = join("inputs", &key.name);
            let valid = key.name.len() <= 63
                && key
                    .name
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && key
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                self.add(
                    key.pos,
                    &path,
                    format!(
                        "{:?} is not a valid input name: use lowercase letters, digits and '_' \
                         (a '-' would read as minus in expressions)",
                        key.name
                    ),
                );
            }
            if let Some(spec) = self.input(value, &path) {
                out.insert(key.name.clone(), spec);
            }
        }
        out
    }

    fn input(&mut self, node: &Node, path: &str) -> Option<InputSpec> {
        let entries = self.map(node, path)?;
        self.check_keys(entries, path, INPUT_FIELDS, &[]);
        let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
        let ty = match field("type") {
            None => Some(InputType::String),
            Some(n) => {
                let p = join(path, "type");
                let text = self.string(n, &p)?;
                let parsed = InputType::parse(&text);
                if parsed.is_none() {
                    let mut hint = suggestion(&text, InputType::NAMES);
                    if hint.is_empty() {
                        hint = format!("; use one of {}", InputType::NAMES.join(", "));
                    }
                    self.add(n.pos, &p, format!("unknown type {text:?}{hint}"));
                }
                parsed
            }
        };
        let required = field("required")
            .and_then(|n| self.boolean(n, &join(path, "required")))
            .unwrap_or(false);
        let description = field("description")
            .and_then(|n| self.string(n, &join(path, "description")))
            .unwrap_or_default();
        let ty = ty?;
        let check = |d: &mut Self, n: &Node, p: &str| -> bool {
            let v = n.to_json();
            let ok = ty.admits(&v);
            if !ok {
                d.add(
                    n.pos,
                    p,
                    format!(
                        "expected {} (the input's type), found {}",
                        ty.as_str(),
                        n.value.kind()
                    ),
                );
            }
            ok
        };
        let allowed = match field("enum") {
            None => None,
            Some(n) => {
                let p = join(path, "enum");
                match &n.value {
                    Value::Seq(items) if !items.is_empty() => {
                        let mut ok = true;
                        for (i, item) in items.iter().enumerate() {
                            ok &= check(self, item, &format!("{p}[{i}]"));
                        }
                        ok.then(|| items.iter().map(Node::to_json).collect::<Vec<_>>())
                    }
                    Value::Seq(_) => {
                        self.add(n.pos, &p, "must list at least one value");
                        None
                    }
                    other => {
                        self.add(
                            n.pos,
                            &p,
                            format!("expected a list, found {}", other.kind()),
                        );
                        None
                    }
                }
            }
        };
        let default = match field("default") {
            None => None,
            Some(n) => {
                let p = join(path, "default");
                if check(self, n, &p) {
                    let v = n.to_json();
                    if let Some(values) = &allowed
                        && !values.contains(&v)
                    {
                        self.add(
                            n.pos,
                            &p,
                            format!(
                                "{v} is not one of the input's enum values: {}",
                                values
                                    .iter()
                                    .map(serde_json::Value::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                    }
                    if required {
                        self.add(
                            n.pos,
                            &p,
                            "a required input cannot have a default; remove one of them",
                        );
                    }
                    Some(v)
                } else {
                    None
                }
            }
        };
        Some(InputSpec {
            ty,
            required,
            default,
            description,
            allowed,
        })
    }

    fn outputs(&mut self, node: &Node, steps: &BTreeMap<String, Pos>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "outputs") else {
            return out;
        };
        for (key, value) in entries {
            let path = join("outputs", &key.name);
            if !is_valid_name(&key.name) {
                self.add(
                    key.pos,
                    &path,
                    format!("{:?} is not a valid output name", key.name),
                );
            }
            let Some(text) = self.string(value, &path) else {
                continue;
            };
            if !self.count_expressions(value, &path, 1) {
                continue;
            }
            match expr::compile(&text) {
                Ok(c) => {
                    for (step, offset) in &c.step_refs {
                        self.check_step_ref(step, steps, self.pos_in(value, &text, *offset), &path);
                    }
                    self.note_inputs(&c, value, &text, 0, &path);
                    out.insert(key.name.clone(), text);
                }
                Err(errors) => self.expr_errors(value, &text, &path, errors),
            }
        }
        out
    }

    fn check_step_ref(
        &mut self,
        step: &str,
        steps: &BTreeMap<String, Pos>,
        pos: Pos,
        path: &str,
    ) -> bool {
        if steps.contains_key(step) {
            return true;
        }
        let hint = suggestion(step, steps.keys().map(String::as_str));
        self.add(
            pos,
            path,
            format!("unknown step {step:?} in expression{hint}"),
        );
        false
    }

    /// A trigger's `inputs`: a map, as JSON.
    fn trigger_inputs(
        &mut self,
        node: Option<&Node>,
        path: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        match node.map(|n| (n, n.to_json())) {
            Some((_, serde_json::Value::Object(map))) => map,
            Some((n, _)) => {
                self.add(
                    n.pos,
                    &join(path, "inputs"),
                    format!("expected a map of inputs, found {}", n.value.kind()),
                );
                serde_json::Map::new()
            }
            None => serde_json::Map::new(),
        }
    }

    fn triggers(&mut self, node: &Node) -> Vec<TriggerSpec> {
        let mut out = Vec::new();
        let Value::Seq(items) = &node.value else {
            self.add(
                node.pos,
                "triggers",
                format!("expected a list, found {}", node.value.kind()),
            );
            return out;
        };
        let mut paths: BTreeMap<String, Pos> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("triggers[{i}]");
            let Some(entries) = self.map(item, &path) else {
                continue;
            };
            let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
            let Some(ty_node) = field("type") else {
                self.add(
                    item.pos,
                    &join(&path, "type"),
                    "required field is missing: use cron, webhook or email",
                );
                continue;
            };
            let Some(ty) = self.string(ty_node, &join(&path, "type")) else {
                continue;
            };
            let version = field("version").and_then(|n| {
                let p = join(&path, "version");
                match &n.value {
                    Value::Int(v) if *v > 0 => Some(*v),
                    _ => {
                        self.add(n.pos, &p, "expected a version number (1 or more)");
                        None
                    }
                }
            });
            match ty.as_str() {
                "cron" => {
                    self.check_keys(
                        entries,
                        &path,
                        &[
                            "type", "schedule", "timezone", "catchup", "inputs", "version",
                        ],
                        &[],
                    );
                    let schedule = match field("schedule") {
                        Some(n) => self.cron(n, &join(&path, "schedule")),
                        None => {
                            self.add(
                                item.pos,
                                &join(&path, "schedule"),
                                "required field is missing",
                            );
                            None
                        }
                    };
                    let timezone = field("timezone").and_then(|n| {
                        let p = join(&path, "timezone");
                        let tz = self.string(n, &p)?;
                        if tz.parse::<chrono_tz::Tz>().is_err() {
                            self.add(n.pos, &p, format!("unknown time zone {tz:?}; use an IANA name such as Europe/Berlin or UTC"));
                            return None;
                        }
                        Some(tz)
                    });
                    let catchup = field("catchup").and_then(|n| {
                        let p = join(&path, "catchup");
                        let text = self.string(n, &p)?;
                        let c = Catchup::parse(&text);
                        if c.is_none() {
                            self.add(
                                n.pos,
                                &p,
                                format!("unknown catchup {text:?}; use none, latest or all"),
                            );
                        }
                        c
                    });
                    let inputs = self.trigger_inputs(field("inputs"), &path);
                    if let Some(schedule) = schedule {
                        out.push(TriggerSpec::Cron {
                            schedule,
                            timezone,
                            catchup,
                            inputs,
                            version,
                        });
                    }
                }
                "webhook" => {
                    self.check_keys(entries, &path, &["type", "path", "secret", "version"], &[]);
                    let hook_path = match field("path") {
                        Some(n) => self.webhook_path(n, &join(&path, "path"), &mut paths),
                        None => {
                            self.add(item.pos, &join(&path, "path"), "required field is missing");
                            None
                        }
                    };
                    let secret =
                        field("secret").and_then(|n| self.string(n, &join(&path, "secret")));
                    if let Some(p) = hook_path {
                        if secret.is_none() {
                            self.warnings.add(item.pos, &path, NO_SECRET);
                        }
                        out.push(TriggerSpec::Webhook {
                            path: p,
                            secret,
                            version,
                        });
                    }
                }
                "email" => {
                    self.check_keys(
                        entries,
                        &path,
                        &[
                            "type",
                            "mailbox",
                            "folder",
                            "filter",
                            "poll_interval",
                            "inputs",
                        ],
                        &[],
                    );
                    let mailbox = match field("mailbox") {
                        Some(n) => self.string(n, &join(&path, "mailbox")),
                        None => {
                            self.add(
                                item.pos,
                                &join(&path, "mailbox"),
                                "required field is missing: the name of an imap secret",
                            );
                            None
                        }
                    };
                    let folder = field("folder")
                        .and_then(|n| self.string(n, &join(&path, "folder")))
                        .unwrap_or_else(|| "INBOX".to_owned());
                    let filter = match field("filter") {
                        Some(n) => {
                            let p = join(&path, "filter");
                            self.string(n, &p).and_then(|text| {
                                let f = EmailFilter::parse(&text);
                                if f.is_none() {
                                    self.add(
                                        n.pos,
                                        &p,
                                        format!(
                                            "unknown filter {text:?}; use {}",
                                            EmailFilter::NAMES.join(", ")
                                        ),
                                    );
                                }
                                f
                            })
                        }
                        None => Some(EmailFilter::Unseen),
                    };
                    let poll_interval_ms = match field("poll_interval") {
                        Some(n) => {
                            let p = join(&path, "poll_interval");
                            self.duration_ms(n, &p).and_then(|ms| {
                                if ms < MIN_POLL_INTERVAL_MS {
                                    self.add(n.pos, &p, "at least 5s");
                                    None
                                } else {
                                    Some(ms)
                                }
                            })
                        }
                        None => Some(60_000),
                    };
                    let inputs = self.trigger_inputs(field("inputs"), &path);
                    if let (Some(mailbox), Some(filter), Some(poll_interval_ms)) =
                        (mailbox, filter, poll_interval_ms)
                    {
                        out.push(TriggerSpec::Email {
                            mailbox,
                            folder,
                            filter,
                            poll_interval_ms,
                            inputs,
                            version,
                        });
                    }
                }
                other => {
                    let mut hint = suggestion(other, ["cron", "webhook", "email"]);
                    if hint.is_empty() {
                        hint = "; use cron, webhook or email".to_owned();
                    }
                    self.add(
                        ty_node.pos,
                        &join(&path, "type"),
                        format!("unknown trigger type {other:?}{hint}"),
                    );
                }
            }
        }
        out
    }

    /// Notes the inputs an expression at `base` in `text` (the string of `node`) reads.
    fn note_inputs(
        &mut self,
        c: &expr::Compiled,
        node: &Node,
        text: &str,
        base: usize,
        path: &str,
    ) {
        let in_tool = is_tool_params(path);
        if c.reads().reads_var("tool") && !in_tool {
            self.add(
                node.pos,
                path,
                "`tool` is set only in the params of an ai/completion tool",
            );
        }
        for (name, offset) in &c.input_refs {
            if in_tool && name == "tool_input" {
                continue;
            }
            let pos = self.pos_in(node, text, base + offset);
            self.input_refs.push((name.clone(), pos, path.to_owned()));
        }
    }

    /// Warns about every read of an input the workflow does not declare: starts refuse
    /// undeclared inputs, so it is always absent.
    fn warn_undeclared_inputs(&mut self, spec: &WorkflowSpec) {
        // A webhook's or an email's start sets `inputs.trigger` (the Go original's spelling).
        let trigger_input = spec
            .triggers
            .iter()
            .any(|t| !matches!(t, TriggerSpec::Cron { .. }));
        for (name, pos, path) in std::mem::take(&mut self.input_refs) {
            if spec.inputs.contains_key(&name) || (trigger_input && name == "trigger") {
                continue;
            }
            let mut hint = suggestion(&name, spec.inputs.keys().map(String::as_str));
            if hint.is_empty() && !spec.inputs.is_empty() {
                let names: Vec<&str> = spec.inputs.keys().map(String::as_str).collect();
                hint = format!("; declared: {}", names.join(", "));
            }
            self.warnings.add(
                pos,
                path,
                format!(
                    "the workflow declares no input {name:?}, so inputs.{name} is never set \
                     (a start refuses undeclared inputs){hint}"
                ),
            );
        }
    }

    fn cron(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.string(node, path)?;
        let fields = text.split_whitespace().count();
        let alias = text.trim_start().starts_with('@');
        if !alias && fields != 5 && fields != 6 {
            let extra = if fields > 6 {
                " (years are not supported)"
            } else {
                ""
            };
            self.add(
                node.pos,
                path,
                format!(
                    "invalid cron schedule {text:?}: expected five fields, minute hour day-of-month \
                     month day-of-week (or six, with seconds first), found {fields}{extra}"
                ),
            );
            return None;
        }
        match crate::workflow::cron::parse(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                let reason = e.to_string();
                let reason = reason
                    .trim_end_matches('.')
                    .replace("Component error: ", "");
                let ranges =
                    "minute 0-59, hour 0-23, day-of-month 1-31, month 1-12, day-of-week 0-7";
                self.add(
                    node.pos,
                    path,
                    format!("invalid cron schedule {text:?}: {reason} (ranges: {ranges})"),
                );
                None
            }
        }
    }

    fn webhook_path(
        &mut self,
        node: &Node,
        path: &str,
        seen: &mut BTreeMap<String, Pos>,
    ) -> Option<String> {
        let text = self.string(node, path)?;
        let rest = text.strip_prefix("/hooks/");
        let valid = rest.is_some_and(|r| {
            !r.is_empty()
                && text.len() <= 200
                && !r
                    .split('/')
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./~".contains(&b))
        });
        if !valid {
            self.add(
                node.pos,
                path,
                format!(
                    "invalid webhook path {text:?}: it must start with /hooks/ and continue with \
                     letters, digits and - _ . ~ / (no empty, . or .. segments), at most 200 characters"
                ),
            );
            return None;
        }
        if let Some(first) = seen.get(&text) {
            self.add(
                node.pos,
                path,
                format!("webhook path {text:?} is already used at {first}"),
            );
            return None;
        }
        seen.insert(text.clone(), node.pos);
        Some(text)
    }

    fn steps(&mut self, node: &Node) -> Vec<StepDraft> {
        let Value::Seq(items) = &node.value else {
            self.add(
                node.pos,
                "steps",
                format!("expected a list of steps, found {}", node.value.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.add(node.pos, "steps", "a workflow needs at least one step");
        }
        if items.len() > MAX_STEPS {
            self.add(
                node.pos,
                "steps",
                format!(
                    "{} steps; a workflow may have at most {MAX_STEPS}",
                    items.len()
                ),
            );
            return Vec::new();
        }
        let mut drafts: Vec<StepDraft> = Vec::new();
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("steps[{i}]");
            if let Some(draft) = self.step(item, &path) {
                if let Some(first) = seen.get(&draft.spec.name) {
                    self.add(
                        draft.pos,
                        &join(&path, "name"),
                        format!(
                            "duplicate step name {:?}; first defined at {first}",
                            draft.spec.name
                        ),
                    );
                    continue;
                }
                seen.insert(draft.spec.name.clone(), draft.pos);
                drafts.push(draft);
            }
        }
        drafts
    }

    fn step(&mut self, node: &Node, path: &str) -> Option<StepDraft> {
        let entries = self.map(node, path)?;
        self.check_keys(entries, path, STEP_FIELDS, UNSUPPORTED_STEP);
        let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);

        let (name, name_pos) = match field("name") {
            Some(n) => {
                let p = join(path, "name");
                let name = self.string(n, &p)?;
                if !is_valid_name(&name) {
                    self.add(
                        n.pos,
                        &p,
                        format!(
                            "{name:?} is not a valid step name: use 1 to 63 lowercase letters, digits, \
                             '-' and '_', starting with a letter and not ending with '-'"
                        ),
                    );
                    return None;
                }
                (name, n.pos)
            }
            None => {
                self.add(node.pos, &join(path, "name"), "required field is missing");
                return None;
            }
        };

        let action = match field("action") {
            Some(n) => {
                let p = join(path, "action");
                self.string(n, &p).inspect(|a| {
                    if self.actions.get(a).is_none() {
                        let hint = suggestion(a, self.actions.names());
                        self.add(n.pos, &p, format!("unknown action {a:?}{hint}"));
                    }
                })
            }
            None => {
                self.add(node.pos, &join(path, "action"), "required field is missing");
                None
            }
        };
        let actions = self.actions;
        let spec_of_action = action.as_deref().and_then(|a| actions.get(a));

        let mut refs = Vec::new();
        let params = match field("params") {
            None => serde_json::Map::new(),
            Some(n) => self.params(n, &join(path, "params"), spec_of_action, &mut refs),
        };
        if field("params").is_none()
            && let Some(spec) = spec_of_action
        {
            for p in spec.declared.params.iter().filter(|p| p.required) {
                self.add(
                    node.pos,
                    &join(path, "params"),
                    format!("missing required param {:?} of {}", p.name, spec.spec.name),
                );
            }
        }

        let credential = field("credential").and_then(|n| {
            let p = join(path, "credential");
            let c = self.string(n, &p)?;
            if let Some(Action { spec, .. }) = spec_of_action {
                if spec.credential_types.is_empty() {
                    self.add(n.pos, &p, format!("{} takes no credential", spec.name));
                } else {
                    self.credentials.push(CredentialRef {
                        name: c.clone(),
                        pos: n.pos,
                        path: p.clone(),
                        action: spec.name.to_owned(),
                        types: spec.credential_types,
                    });
                }
            }
            Some(c)
        });

        let condition = field("if").and_then(|n| {
            let p = join(path, "if");
            let text = match &n.value {
                Value::Bool(b) => b.to_string(),
                _ => self.string(n, &p)?,
            };
            if !self.count_expressions(n, &p, 1) {
                return Some(text);
            }
            match expr::compile(&text) {
                Ok(c) => {
                    for (step, offset) in &c.step_refs {
                        refs.push((step.clone(), self.pos_in(n, &text, *offset), p.clone()));
                    }
                    self.note_inputs(&c, n, &text, 0, &p);
                }
                Err(errors) => self.expr_errors(n, &text, &p, errors),
            }
            Some(text)
        });

        let mut explicit = Vec::new();
        if let Some(n) = field("depends_on") {
            let p = join(path, "depends_on");
            match &n.value {
                Value::Str(s) => explicit.push((s.clone(), n.pos, p)),
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        if let Some(s) = self.string(item, &ip) {
                            explicit.push((s, item.pos, ip));
                        }
                    }
                }
                other => self.add(
                    n.pos,
                    &p,
                    format!("expected a list of step names, found {}", other.kind()),
                ),
            }
        }

        let retry = field("retry").and_then(|n| self.retry(n, &join(path, "retry")));
        let timeout_ms = field("timeout").and_then(|n| {
            if let Some(timer) =
                spec_of_action.filter(|a| a.spec.kind() == connectors::ActionKind::Timer)
            {
                self.add(
                    n.pos,
                    &join(path, "timeout"),
                    format!(
                        "{} takes no timeout: its duration is its limit",
                        timer.spec.name
                    ),
                );
                return None;
            }
            self.duration_ms(n, &join(path, "timeout"))
        });
        let continue_on_error = field("continue_on_error")
            .and_then(|n| self.boolean(n, &join(path, "continue_on_error")))
            .unwrap_or(false);

        Some(StepDraft {
            spec: StepSpec {
                name,
                action: action.unwrap_or_default(),
                params,
                credential,
                condition,
                depends_on: explicit.iter().map(|(s, _, _)| s.clone()).collect(),
                needs: Vec::new(),
                retry,
                timeout_ms,
                continue_on_error,
            },
            path: path.to_owned(),
            pos: name_pos,
            refs,
            explicit,
        })
    }

    fn retry(&mut self, node: &Node, path: &str) -> Option<RetrySpec> {
        let entries = self.map(node, path)?;
        self.check_keys(entries, path, RETRY_FIELDS, &[]);
        let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
        let mut spec = RetrySpec::default();
        match field("max_attempts") {
            Some(n) => match n.value {
                Value::Int(v) if (1..=MAX_ATTEMPTS as i64).contains(&v) => {
                    spec.max_attempts = v as u32
                }
                Value::Int(_) => self.add(
                    n.pos,
                    &join(path, "max_attempts"),
                    format!("must be between 1 and {MAX_ATTEMPTS}"),
                ),
                ref other => self.add(
                    n.pos,
                    &join(path, "max_attempts"),
                    format!("expected an integer, found {}", other.kind()),
                ),
            },
            None => self.add(
                node.pos,
                &join(path, "max_attempts"),
                "required field is missing",
            ),
        }
        if let Some(n) = field("backoff") {
            let p = join(path, "backoff");
            match self.string(n, &p).as_deref() {
                Some("fixed") => spec.multiplier = 1.0,
                Some("exponential") => spec.multiplier = 2.0,
                Some(other) => self.add(
                    n.pos,
                    &p,
                    format!(
                        "unknown backoff {other:?}; use fixed or exponential (or set multiplier)"
                    ),
                ),
                None => {}
            }
        }
        if let Some(n) = field("initial_backoff")
            && let Some(ms) = self.duration_ms(n, &join(path, "initial_backoff"))
        {
            spec.initial_backoff_ms = ms;
        }
        if let Some(n) = field("max_backoff")
            && let Some(ms) = self.duration_ms(n, &join(path, "max_backoff"))
        {
            spec.max_backoff_ms = ms;
            if ms < spec.initial_backoff_ms {
                self.add(
                    n.pos,
                    &join(path, "max_backoff"),
                    "must not be shorter than initial_backoff",
                );
            }
        }
        if let Some(n) = field("multiplier") {
            let p = join(path, "multiplier");
            let v = match n.value {
                Value::Int(i) => Some(i as f64),
                Value::Float(f) => Some(f),
                ref other => {
                    self.add(
                        n.pos,
                        &p,
                        format!("expected a number, found {}", other.kind()),
                    );
                    None
                }
            };
            if let Some(v) = v {
                if (1.0..=10.0).contains(&v) {
                    spec.multiplier = v;
                } else {
                    self.add(n.pos, &p, "must be between 1 and 10");
                }
            }
        }
        if let Some(n) = field("on") {
            spec.on = self.status_list(n, &join(path, "on"), false);
        }
        Some(spec)
    }

    /// A list of HTTP statuses and ranges (`[429, 500-599]`). With `templates`, entries
    /// (or the whole list) may be templates, checked when the step runs.
    fn status_list(&mut self, node: &Node, path: &str, templates: bool) -> StatusSet {
        let mut set = StatusSet::default();
        let Value::Seq(items) = &node.value else {
            self.add(
                node.pos,
                path,
                format!(
                    "expected a list of HTTP statuses or ranges such as [200-299, 404], found {}",
                    node.value.kind()
                ),
            );
            return set;
        };
        for (i, item) in items.iter().enumerate() {
            let range = match &item.value {
                Value::Int(v) => crate::connectors::status::status_range(*v),
                Value::Str(t) if templates && t.contains("{{") => continue,
                Value::Str(t) => crate::connectors::status::parse_entry(t),
                other => Err(format!(
                    "expected a status or a range such as 200-299, found {}",
                    other.kind()
                )),
            };
            match range {
                Ok(r) => set.push(r),
                Err(e) => self.add(item.pos, &format!("{path}[{i}]"), e),
            }
        }
        set
    }

    /// Converts params to JSON, checks them against the action's schema, and collects the
    /// step references of their templates.
    fn params(
        &mut self,
        node: &Node,
        path: &str,
        action: Option<&Action>,
        refs: &mut Vec<(String, Pos, String)>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let Some(entries) = self.map(node, path) else {
            return serde_json::Map::new();
        };
        let mut out = serde_json::Map::new();
        for (key, value) in entries {
            let p = join(path, &key.name);
            self.templates(value, &p, refs);
            out.insert(key.name.clone(), value.to_json());
        }
        if let Some(action) = action {
            self.declared_params(node, entries, path, action, refs);
        }
        out
    }

    /// Checks params (templates checked already) against what `action` declares.
    fn declared_params(
        &mut self,
        node: &Node,
        entries: &[(Key, Node)],
        path: &str,
        action: &Action,
        refs: &mut Vec<(String, Pos, String)>,
    ) {
        let Action { spec, declared } = action;
        for (key, value) in entries {
            let p = join(path, &key.name);
            match declared.param(&key.name) {
                None if !declared.open => {
                    let hint =
                        suggestion(&key.name, declared.params.iter().map(|d| d.name.as_str()));
                    self.add(
                        key.pos,
                        &p,
                        format!("unknown param {:?} of {}{hint}", key.name, spec.name),
                    );
                }
                None => {}
                Some(decl) => {
                    self.check_param_type(value, &p, &decl.ty);
                    if spec.tools && key.name == "tools" {
                        self.tools(value, &p, refs);
                    }
                }
            }
        }
        for decl in declared.params.iter().filter(|d| d.required) {
            if !entries.iter().any(|(k, _)| k.name == decl.name) {
                self.add(
                    node.pos,
                    path,
                    format!("missing required param {:?} of {}", decl.name, spec.name),
                );
            }
        }
        for group in &declared.exclusive {
            let present: Vec<&(Key, Node)> = entries
                .iter()
                .filter(|(k, _)| group.contains(&k.name))
                .collect();
            if present.len() > 1 {
                let (k, _) = present[1];
                self.add(
                    k.pos,
                    &join(path, &k.name),
                    format!(
                        "{} are mutually exclusive; give only one of them",
                        group.join(" and ")
                    ),
                );
            }
        }
    }

    /// The `tools` of an action that calls others: each names a registered action that may
    /// be a tool, its params fit that action, its credential one of its types, its
    /// `input_schema` is a JSON Schema; only its params hold templates.
    fn tools(&mut self, node: &Node, path: &str, refs: &mut Vec<(String, Pos, String)>) {
        let Value::Seq(items) = &node.value else {
            return;
        };
        let mut names: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(entries) = self.map(item, &p) else {
                continue;
            };
            self.check_keys(entries, &p, TOOL_FIELDS, &[]);
            let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
            for (k, v) in entries.iter().filter(|(k, _)| k.name != "params") {
                if let Value::Str(text) = &v.value
                    && text.contains("{{")
                {
                    self.add(
                        v.pos,
                        &join(&p, &k.name),
                        "templates are allowed only in a tool's params",
                    );
                }
            }
            match field("name") {
                Some(n) => {
                    if let Some(name) = self.string(n, &join(&p, "name")) {
                        let valid = !name.is_empty()
                            && name.len() <= 64
                            && name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                        if !valid {
                            self.add(
                                n.pos,
                                &join(&p, "name"),
                                format!(
                                    "{name:?} is not a valid tool name: use 1 to 64 letters, \
                                     digits, '_' and '-'"
                                ),
                            );
                        } else if names.contains(&name) {
                            self.add(
                                n.pos,
                                &join(&p, "name"),
                                format!("tool {name:?} is declared twice"),
                            );
                        }
                        names.push(name);
                    }
                }
                None => self.add(item.pos, &join(&p, "name"), "required field is missing"),
            }
            if let Some(n) = field("description") {
                self.string(n, &join(&p, "description"));
            }
            if let Some(n) = field("input_schema") {
                let json = n.to_json();
                if let Err(e) = crate::connectors::ai::compile_schema(&json) {
                    self.add(n.pos, &join(&p, "input_schema"), e);
                }
            }
            if let Some(n) = field("timeout") {
                self.duration_ms(n, &join(&p, "timeout"));
            }
            let actions = self.actions;
            let action = match field("action") {
                Some(n) => {
                    let ap = join(&p, "action");
                    self.string(n, &ap).and_then(|a| match actions.get(&a) {
                        None => {
                            let hint = suggestion(&a, actions.names());
                            self.add(n.pos, &ap, format!("unknown action {a:?}{hint}"));
                            None
                        }
                        Some(found) if found.spec.tools => {
                            self.add(n.pos, &ap, format!("{a} cannot be a tool"));
                            None
                        }
                        Some(found) if found.spec.kind() == connectors::ActionKind::Timer => {
                            self.add(
                                n.pos,
                                &ap,
                                format!("{a} cannot be a tool: a tool answers at once"),
                            );
                            None
                        }
                        Some(found) => Some(found),
                    })
                }
                None => {
                    self.add(item.pos, &join(&p, "action"), "required field is missing");
                    None
                }
            };
            match field("params") {
                Some(n) => {
                    if let (Some(a), Some(entries)) = (action, self.map(n, &join(&p, "params"))) {
                        self.declared_params(n, entries, &join(&p, "params"), a, refs);
                    }
                }
                None => {
                    if let Some(a) = action {
                        for d in a.declared.params.iter().filter(|d| d.required) {
                            self.add(
                                item.pos,
                                &join(&p, "params"),
                                format!("missing required param {:?} of {}", d.name, a.spec.name),
                            );
                        }
                    }
                }
            }
            if let Some(n) = field("credential") {
                let cp = join(&p, "credential");
                if let Some(c) = self.string(n, &cp)
                    && let Some(a) = action
                {
                    if a.spec.credential_types.is_empty() {
                        self.add(n.pos, &cp, format!("{} takes no credential", a.spec.name));
                    } else {
                        self.credentials.push(CredentialRef {
                            name: c,
                            pos: n.pos,
                            path: cp,
                            action: a.spec.name.to_owned(),
                            types: a.spec.credential_types,
                        });
                    }
                }
            }
        }
    }

    fn templates(&mut self, node: &Node, path: &str, refs: &mut Vec<(String, Pos, String)>) {
        match &node.value {
            Value::Str(text) => {
                if !self.count_expressions(node, path, text.matches("{{").count()) {
                    return;
                }
                let (template, errors) = expr::template_parts(text);
                for seg in template.iter().flat_map(|t| &t.segments) {
                    if let expr::Segment::Expr(c, base) = seg {
                        for (step, offset) in &c.step_refs {
                            refs.push((
                                step.clone(),
                                self.pos_in(node, text, base + offset),
                                path.to_owned(),
                            ));
                        }
                        self.note_inputs(c, node, text, *base, path);
                    }
                }
                self.expr_errors(node, text, path, errors);
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.templates(item, &format!("{path}[{i}]"), refs);
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    self.templates(v, &join(path, &k.name), refs);
                }
            }
            _ => {}
        }
    }

    fn check_param_type(&mut self, node: &Node, path: &str, ty: &ParamType) {
        // A template may evaluate to anything; its value is checked when the step runs.
        if let Value::Str(s) = &node.value
            && s.contains("{{")
        {
            return;
        }
        let ok = match (&node.value, ty) {
            (_, ParamType::Any) => true,
            (Value::Str(_), ParamType::String) => true,
            (Value::Int(_), ParamType::Integer) => true,
            (Value::Int(_) | Value::Float(_), ParamType::Number) => true,
            (Value::Bool(_), ParamType::Boolean) => true,
            (Value::Map(_), ParamType::Object) => true,
            (Value::Seq(_), ParamType::Array) => true,
            (_, ParamType::StatusList) => {
                self.status_list(node, path, true);
                return;
            }
            (Value::Str(s), ParamType::Duration) => match crate::duration::parse(s) {
                Ok(_) => true,
                Err(e) => {
                    self.add(node.pos, path, e);
                    return;
                }
            },
            (Value::Str(s), ParamType::OneOf(values)) => {
                if values.contains(s) {
                    true
                } else {
                    let hint = suggestion(s, values.iter().map(String::as_str));
                    self.add(
                        node.pos,
                        path,
                        format!("{s:?} is not {}{hint}", ty.describe()),
                    );
                    return;
                }
            }
            _ => false,
        };
        if !ok {
            self.add(
                node.pos,
                path,
                format!("expected {}, found {}", ty.describe(), node.value.kind()),
            );
        }
    }

    /// Checks every reference, computes `needs`, and reports cycles.
    fn resolve_dependencies(
        &mut self,
        drafts: Vec<StepDraft>,
        names: &BTreeMap<String, Pos>,
    ) -> Vec<StepSpec> {
        let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for d in &drafts {
            let mut set = BTreeSet::new();
            for (step, pos, path) in &d.explicit {
                if names.contains_key(step) {
                    set.insert(step.clone());
                } else {
                    let hint = suggestion(step, names.keys().map(String::as_str));
                    self.add(*pos, path, format!("unknown step {step:?}{hint}"));
                }
            }
            for (step, pos, path) in &d.refs {
                if self.check_step_ref(step, names, *pos, path) {
                    set.insert(step.clone());
                }
            }
            needs.insert(d.spec.name.clone(), set);
        }
        for cycle in dag::cycles(&needs) {
            let first = &cycle[0];
            let draft = drafts.iter().find(|d| &d.spec.name == first);
            let (pos, path) =
                draft.map_or((Pos::default(), String::new()), |d| (d.pos, d.path.clone()));
            let message = if cycle.len() == 2 {
                format!("step {first:?} depends on itself")
            } else {
                format!("dependency cycle: {}", cycle.join(" → "))
            };
            self.add(pos, &path, message);
        }
        drafts
            .into_iter()
            .map(|d| {
                let mut spec = d.spec;
                spec.needs = needs
                    .remove(&spec.name)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                spec
            })
            .collect()
    }
}

#[cfg(test)]
mod expression_limit_tests {
    use super::*;

    #[test]
    fn aliases_cannot_blow_a_workflow_up_past_its_limit() {
        let item = "x".repeat(2000);
        let list: Vec<String> = (0..100).map(|i| format!("\"{item}{i}\"")).collect();
        let mut source = format!(
            "name: blowup\nsteps:\n  - name: a\n    action: core/set\n    params:\n      big: &big [{}]\n",
            list.join(", ")
        );
        for i in 0..20 {
            source.push_str(&format!("      copy{i}: *big\n"));
        }
        assert!(source.len() < 300_000);
        let problems = load(&source).unwrap_err();
        assert!(
            problems[0]
                .message
                .contains("once its YAML aliases are expanded"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_file_with_too_many_expressions_is_refused_without_compiling_them_all() {
        let mut source =
            String::from("name: many\nsteps:\n  - name: a\n    action: core/set\n    params:\n");
        for i in 0..(MAX_EXPRESSIONS + 5) {
            source.push_str(&format!("      k{i}: \"{{{{ inputs.x + {i} }}}}\"\n"));
        }
        let start = std::time::Instant::now();
        let problems = load(&source).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        let p = problems
            .iter()
            .find(|p| p.message.contains("more than 10000 expressions"))
            .unwrap_or_else(|| panic!("{problems:?}"));
        assert!(p.path.starts_with("steps[0].params.k"), "{p:?}");
        assert_eq!(
            problems
                .iter()
                .filter(|p| p.message.contains("expressions"))
                .count(),
            1
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(src: &str) -> Vec<String> {
        load(src)
            .unwrap_err()
            .iter()
            .map(|p| p.render("w.yaml"))
            .collect()
    }

    const GOOD: &str = r#"
name: fetch-report
description: Fetches a report and posts a summary.
inputs:
  city:
    type: string
    required: true
  retries:
    type: integer
    default: 3
steps:
  - name: fetch-data
    action: http/request
    params:
      url: "https://example.com/{{ inputs.city }}"
  - name: summarize
    action: core/set
    if: steps['fetch-data'].output.status == 200
    params:
      count: "{{ size(steps['fetch-data'].output.body) }}"
  - name: log
    action: core/log
    depends_on: [summarize]
    params:
      message: done
outputs:
  count: steps.summarize.output.count
triggers:
  - type: cron
    schedule: "*/5 * * * *"
    timezone: Europe/Berlin
  - type: webhook
    path: /hooks/report
"#;

    /// The tools of an `ai/completion` step are checked like steps: their actions, their
    /// params against those actions, their schemas and credentials; `tool` is read only in
    /// their params, where `inputs.tool_input` is no undeclared input.
    #[test]
    fn ai_tools_are_checked_where_they_are_written() {
        let good = r#"
name: agent
token_budget: 1000
steps:
  - name: fetch
    action: http/request
    params: {url: "https://example.com"}
  - name: agent
    action: ai/completion
    credential: key
    params:
      provider: openai
      model: gpt-4o
      prompt: hi
      max_rounds: 3
      tools:
        - name: lookup
          input_schema: {type: object, properties: {q: {type: string}}}
          action: http/request
          credential: token
          timeout: 5s
          params:
            url: "https://example.com/{{ tool.input.q }}/{{ inputs.tool_input.q }}"
            headers: {x: "{{ steps.fetch.output.status }}"}
        - name: note
          action: core/set
          params: {fact: "{{ tool.input.fact }}"}
"#;
        let loaded = load(good).unwrap();
        assert_eq!(loaded.spec.token_budget, Some(1000));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        // A tool's step references are the step's dependencies.
        assert_eq!(loaded.spec.steps[1].needs, ["fetch"]);
        let creds: Vec<(&str, &str)> = loaded
            .credentials
            .iter()
            .map(|c| (c.name.as_str(), c.path.as_str()))
            .collect();
        assert_eq!(
            creds,
            [
                ("token", "steps[1].params.tools[0].credential"),
                ("key", "steps[1].credential")
            ]
        );
        let bad = r#"
name: agent
token_budget: -1
steps:
  - name: agent
    action: ai/completion
    params:
      provider: openai
      model: gpt-4o
      prompt: "{{ tool.input }}"
      tools:
        - name: lookup
          description: "{{ inputs.x }}"
          input_schema: {type: 12}
          action: http/request
          params: {uri: "https://example.com/{{ tool.input.q }}"}
        - name: lookup
          action: ai/completion
        - name: "bad name"
          action: core/sleep
        - name: late
          action: core/log
          credential: key
          params: {message: hi, extra: 1}
          colour: red
"#;
        assert_eq!(
            problems(bad),
            [
                "w.yaml:3:15: token_budget: must be a positive number of tokens, got -1",
                "w.yaml:10:15: steps[0].params.prompt: `tool` is set only in the params of an ai/completion tool",
                "w.yaml:13:24: steps[0].params.tools[0].description: templates are allowed only in a tool's params",
                "w.yaml:14:25: steps[0].params.tools[0].input_schema: not a valid JSON Schema: 12 is not valid under any of the schemas listed in the 'anyOf' keyword",
                "w.yaml:16:19: steps[0].params.tools[0].params: missing required param \"url\" of http/request",
                "w.yaml:16:20: steps[0].params.tools[0].params.uri: unknown param \"uri\" of http/request; did you mean \"url\"?",
                "w.yaml:17:17: steps[0].params.tools[1].name: tool \"lookup\" is declared twice",
                "w.yaml:18:19: steps[0].params.tools[1].action: ai/completion cannot be a tool",
                "w.yaml:19:17: steps[0].params.tools[2].name: \"bad name\" is not a valid tool name: use 1 to 64 letters, digits, '_' and '-'",
                "w.yaml:20:19: steps[0].params.tools[2].action: core/sleep cannot be a tool: a tool answers at once",
                "w.yaml:23:23: steps[0].params.tools[3].credential: core/log takes no credential",
                "w.yaml:24:33: steps[0].params.tools[3].params.extra: unknown param \"extra\" of core/log",
                "w.yaml:25:11: steps[0].params.tools[3].colour: unknown field \"colour\"",
            ]
        );
    }

    #[test]
    fn a_valid_workflow_loads_with_dependencies() {
        let loaded = load(GOOD).unwrap();
        let spec = &loaded.spec;
        assert_eq!(spec.name, "fetch-report");
        assert_eq!(spec.steps[1].needs, ["fetch-data"]);
        assert_eq!(spec.steps[2].needs, ["summarize"]);
        assert!(spec.steps[0].needs.is_empty());
        assert_eq!(spec.inputs["retries"].default, Some(serde_json::json!(3)));
        assert_eq!(loaded.content_hash.len(), 64);
    }

    #[test]
    fn formatting_does_not_change_the_hash() {
        let a = load(GOOD).unwrap();
        let reformatted = GOOD.replace("  - name: log", "  # a comment\n  - name: log");
        let b = load(&reformatted).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        let changed = load(&GOOD.replace("message: done", "message: finished")).unwrap();
        assert_ne!(a.content_hash, changed.content_hash);
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let src = "name: Bad_Name\nsteps:\n  - name: a\n    acton: core/log\n  - name: a\n    action: htp/request\n";
        let got = problems(src);
        assert_eq!(
            got,
            [
                "w.yaml:1:7: name: \"Bad_Name\" is not a valid workflow name: use 1 to 63 lowercase letters, digits, '-' and '_', starting with a letter and not ending with '-'",
                "w.yaml:3:5: steps[0].action: required field is missing",
                "w.yaml:4:5: steps[0].acton: unknown field \"acton\"; did you mean \"action\"?",
                "w.yaml:5:11: steps[1].name: duplicate step name \"a\"; first defined at 3:11",
                "w.yaml:6:13: steps[1].action: unknown action \"htp/request\"; did you mean \"http/request\"?",
            ]
        );
    }

    #[test]
    fn expression_problems_point_inside_the_expression() {
        let src = "name: x\nsteps:\n  - name: a\n    action: core/log\n    params:\n      message: \"hi {{ steps.nope.output }}\"\n";
        let got = problems(src);
        assert_eq!(
            got,
            ["w.yaml:6:23: steps[0].params.message: unknown step \"nope\" in expression"]
        );
    }

    #[test]
    fn status_lists_are_checked_where_they_are_written() {
        let src = "name: x\nsteps:\n  - name: a\n    action: http/request\n    params:\n      url: https://example.com\n      ok_status: [200-299, 700, \"{{ 404 }}\"]\n    retry: {max_attempts: 2, on: [429, 4xx, 500-400]}\n";
        let got = problems(src);
        assert_eq!(
            got,
            [
                "w.yaml:7:28: steps[0].params.ok_status[1]: 700 is not an HTTP status (100 to 599)",
                "w.yaml:8:40: steps[0].retry.on[1]: \"4xx\" is not a status or a range such as 200-299",
                "w.yaml:8:45: steps[0].retry.on[2]: \"500-400\": the range ends before it starts",
            ]
        );
        let ok = load(
            &src.replace(", 700", "")
                .replace(", 4xx, 500-400", ", 400-404"),
        )
        .expect("valid status lists");
        let retry = &ok.spec.steps[0].retry;
        let retry = retry.as_ref().expect("retry");
        assert!(retry.on.contains(429) && retry.on.contains(403) && !retry.on.contains(405));
    }

    #[test]
    fn warnings_name_open_webhooks_and_undeclared_inputs() {
        let src = "name: x\ninputs:\n  user_id: {type: integer}\ntriggers:\n  - type: cron\n    schedule: \"0 8 * * 1-5\"\n  - {type: webhook, path: /hooks/x}\nsteps:\n  - name: a\n    action: core/log\n    if: has(inputs.usr_id)\n    params:\n      message: \"{{ inputs.user_id }} {{ inputs['region'] }}\"\noutputs:\n  o: inputs.user_id + inputs.extra\n";
        let loaded = load(src).expect("warnings do not fail a file");
        let got: Vec<String> = loaded.warnings.iter().map(|w| w.render("w.yaml")).collect();
        assert_eq!(
            got,
            [
                format!("w.yaml:7:5: triggers[1]: {NO_SECRET}"),
                "w.yaml:11:13: steps[0].if: the workflow declares no input \"usr_id\", so inputs.usr_id is never set (a start refuses undeclared inputs); did you mean \"user_id\"?".to_owned(),
                "w.yaml:13:41: steps[0].params.message: the workflow declares no input \"region\", so inputs.region is never set (a start refuses undeclared inputs); declared: user_id".to_owned(),
                "w.yaml:15:23: outputs.o: the workflow declares no input \"extra\", so inputs.extra is never set (a start refuses undeclared inputs); declared: user_id".to_owned(),
            ]
        );
        // Declared inputs and no triggers: nothing to say.
        let quiet = &GOOD[..GOOD.find("triggers:").unwrap()];
        assert_eq!(load(quiet).unwrap().warnings, []);
    }

    #[test]
    fn email_triggers_take_defaults_and_name_bad_fields() {
        let src = "name: x\ntriggers:\n  - {type: email, mailbox: inbox}\nsteps:\n  - name: a\n    action: core/log\n    params: {message: hi}\n";
        let loaded = load(src).unwrap();
        assert_eq!(
            loaded.spec.triggers,
            [TriggerSpec::Email {
                mailbox: "inbox".into(),
                folder: "INBOX".into(),
                filter: EmailFilter::Unseen,
                poll_interval_ms: 60_000,
                inputs: serde_json::Map::new(),
                version: None,
            }]
        );
        assert_eq!(loaded.spec.triggers[0].key(), "email inbox/INBOX");
        let bad = "name: x\ntriggers:\n  - type: email\n    filter: unread\n    poll_interval: 1s\nsteps:\n  - name: a\n    action: core/log\n    params: {message: hi}\n";
        assert_eq!(
            problems(bad),
            [
                "w.yaml:3:5: triggers[0].mailbox: required field is missing: the name of an imap secret",
                "w.yaml:4:13: triggers[0].filter: unknown filter \"unread\"; use unseen, all, flagged, recent",
                "w.yaml:5:20: triggers[0].poll_interval: at least 5s",
            ]
        );
    }

    #[test]
    fn cycles_are_printed_as_paths() {
        let src = "name: x\nsteps:\n  - name: a\n    action: core/log\n    depends_on: [c]\n    params: {message: a}\n  - name: b\n    action: core/log\n    params:\n      message: \"{{ steps.a.output.message }}\"\n  - name: c\n    action: core/log\n    if: steps.b.output.message == 'x'\n    params: {message: c}\n";
        let got = problems(src);
        assert_eq!(
            got,
            ["w.yaml:3:11: steps[0]: dependency cycle: a → c → b → a"]
        );
    }
}
