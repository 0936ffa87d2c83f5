//! Property tests of the workflow loader:
//! - `load` never panics: on arbitrary text, on random YAML trees made of the schema's own
//!   words, and on random edits of a valid workflow;
//! - random acyclic workflows, whose dependencies are written through a mix of `depends_on`,
//!   `if: steps.X…` and `{{ steps['X']… }}` templates, validate and their `needs` are exactly
//!   the generated dependencies;
//! - one added back-edge that closes a single cycle gives exactly one problem, naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::load;

const CASES: u32 = 96;

// ---------------------------------------------------------------------------------------------
// (a) No panics
// ---------------------------------------------------------------------------------------------

/// A valid workflow touching most of the schema, the seed of the mutation test.
const SEED: &str = r#"name: fetch-report
description: Fetches a report.
inputs:
  city: {type: string, required: true}
  retries: {type: integer, default: 3, enum: [1, 3, 5]}
steps:
  - name: fetch-data
    action: http/request
    params:
      url: "https://example.com/{{ inputs.city }}"
      method: GET
      headers: {accept: application/json}
    retry: {max_attempts: 3, backoff: exponential}
    timeout: 30s
  - name: summarize
    action: core/set
    if: steps['fetch-data'].output.status == 200 && size(steps['fetch-data'].output.body) > 0
    params:
      count: "{{ size(steps['fetch-data'].output.body) }}"
      list: ["{{ inputs.city }}", 2, {k: v}]
  - name: wait
    action: core/sleep
    depends_on: [summarize]
    params: {duration: 2s}
    continue_on_error: true
  - name: log
    action: core/log
    depends_on: wait
    params:
      message: 'done: {{ steps.summarize.output.count }}'
outputs:
  count: steps.summarize.output.count
timeout: 1h
triggers:
  - type: cron
    schedule: "*/5 * * * *"
    timezone: Europe/Berlin
  - type: webhook
    path: /hooks/report
"#;

/// Words of the schema, so random trees reach deep into validation.
const KEYS: &[&str] = &[
    "name",
    "description",
    "inputs",
    "steps",
    "outputs",
    "timeout",
    "triggers",
    "action",
    "params",
    "credential",
    "if",
    "depends_on",
    "retry",
    "continue_on_error",
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "backoff",
    "type",
    "required",
    "default",
    "enum",
    "schedule",
    "timezone",
    "path",
    "secret",
    "hooks",
    "a",
    "b-c",
];

const SCALARS: &[&str] = &[
    "a",
    "b-c",
    "{{ steps.a.output }}",
    "\"{{ steps['b-c'].output.x }}\"",
    "{{ inputs.x",
    "\"x }} {{\"",
    "steps.a.output.v == 1",
    "steps[inputs.k]",
    "size(",
    "cron",
    "webhook",
    "\"*/5 * * * *\"",
    "/hooks/x",
    "/hooks/../x",
    "Europe/Berlin",
    "1s",
    "0s",
    "5x",
    "string",
    "integer",
    "exponential",
    "GET",
    "true",
    "false",
    "null",
    "~",
    "0",
    "-1",
    "1.5",
    "1e400",
    "99999999999999999999",
    "[]",
    "{}",
    "''",
    "\"\"",
    "&anchor x",
    "*anchor",
    "!!str 1",
    "!!binary aGk=",
    "|",
    ">-",
    "\"\\u00e9\\t\"",
    "#",
];

/// A YAML tree to render as text.
#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    List(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

/// The registered actions' names, and their params' names.
fn action_words(params: bool) -> Vec<String> {
    let actions = crate::connectors::Registry::builtin();
    if params {
        actions
            .iter()
            .flat_map(|a| a.declared.params.iter().map(|p| p.name.clone()))
            .collect()
    } else {
        actions.names().map(str::to_owned).collect()
    }
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SCALARS).prop_map(str::to_owned),
        2 => prop::sample::select(action_words(false)),
        1 => "[ -~]{0,16}",
        1 => any::<i64>().prop_map(|i| i.to_string()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KEYS).prop_map(str::to_owned),
        2 => prop::sample::select(action_words(true)),
        1 => "[a-zA-Z_ -]{1,8}",
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    scalar()
        .prop_map(Tree::Scalar)
        .prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::List),
                prop::collection::vec((key(), inner), 0..6).prop_map(Tree::Map),
            ]
        })
}

/// Renders block style, switching to flow style for small collections now and then.
fn render(tree: &Tree, indent: usize, flow: bool, out: &mut String) {
    let pad = " ".repeat(indent);
    match tree {
        Tree::Scalar(s) => {
            let _ = writeln!(out, "{s}");
        }
        Tree::List(items) if flow || items.is_empty() => {
            out.push_str(&flow_text(tree));
            out.push('\n');
        }
        Tree::Map(entries) if flow || entries.is_empty() => {
            out.push_str(&flow_text(tree));
            out.push('\n');
        }
        Tree::List(items) => {
            out.push('\n');
            for item in items {
                let _ = write!(out, "{pad}- ");
                render(item, indent + 2, items.len() == 1, out);
            }
        }
        Tree::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                let _ = write!(out, "{pad}{k}: ");
                render(v, indent + 2, entries.len() == 2, out);
            }
        }
    }
}

fn flow_text(tree: &Tree) -> String {
    match tree {
        Tree::Scalar(s) => s.clone(),
        Tree::List(items) => format!(
            "[{}]",
            items.iter().map(flow_text).collect::<Vec<_>>().join(", ")
        ),
        Tree::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{k}: {}", flow_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One edit of a text: insert a character at, or delete the character at, a position.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        ' ', '\n', '\t', ':', '-', '{', '}', '[', ']', '"', '\'', '#', '&', '*', '!', '|', '>',
        '.', ',', '?', '%', '@', '`', '\\', 'a', 'Z', '0', '9', 'é', '\u{0}', '\u{feff}',
    ]);
    prop_oneof![
        (any::<usize>(), interesting).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply_edits(source: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = source.chars().collect();
    for e in edits {
        match *e {
            Edit::Insert(i, c) => {
                let at = i % (chars.len() + 1);
                chars.insert(at, c);
            }
            Edit::Delete(i) if !chars.is_empty() => {
                let at = i % chars.len();
                chars.remove(at);
            }
            Edit::Delete(_) => {}
        }
    }
    chars.into_iter().collect()
}

/// Loads and, when it fails, checks the problems are well-formed.
fn load_checked(source: &str) -> Result<(), TestCaseError> {
    match load(source) {
        Ok(loaded) => {
            prop_assert!(!loaded.spec.steps.is_empty());
            prop_assert_eq!(loaded.content_hash.len(), 64);
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty(), "an error without problems");
            for p in &problems {
                prop_assert!(
                    !p.message.is_empty(),
                    "a problem without a message: {:?}",
                    p
                );
                prop_assert!(
                    p.pos.line >= 1 && p.pos.column >= 1,
                    "a problem without a position: {:?}",
                    p
                );
            }
            let mut sorted = problems.clone();
            sorted.sort();
            prop_assert_eq!(&sorted, &problems, "problems are not sorted by position");
        }
    }
    Ok(())
}

#[test]
fn proptests_the_mutation_seed_is_valid() {
    load(SEED).unwrap_or_else(|p| panic!("the seed workflow does not validate: {p:?}"));
}

proptest! {
    #![proptest_config(Config::with_cases(CASES))]

    #[test]
    fn proptests_load_never_panics_on_arbitrary_strings(source in any::<String>()) {
        load_checked(&source)?;
    }

    #[test]
    fn proptests_load_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_checked(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn proptests_load_never_panics_on_random_yaml(t in tree(), with_header in any::<bool>()) {
        let mut text = String::new();
        if with_header {
            text.push_str("name: random\n");
        }
        match &t {
            Tree::Map(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    let _ = write!(text, "{k}: ");
                    render(v, 2, false, &mut text);
                }
            }
            other => render(other, 0, false, &mut text),
        }
        load_checked(&text)?;
    }

    #[test]
    fn proptests_load_never_panics_on_mutated_workflows(edits in prop::collection::vec(edit(), 1..4)) {
        load_checked(&apply_edits(SEED, &edits))?;
    }
}

// ---------------------------------------------------------------------------------------------
// (b), (c) Random DAGs
// ---------------------------------------------------------------------------------------------

/// How a dependency is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    DependsOn,
    If,
    /// `{{ steps.X.output.v }}` (bracket form for hyphenated names).
    TemplateDot,
    /// `"… {{ steps['X'].output }} …"`.
    TemplateBracket,
}

fn via() -> impl Strategy<Value = Via> {
    prop::sample::select(vec![
        Via::DependsOn,
        Via::If,
        Via::TemplateDot,
        Via::TemplateBracket,
    ])
}

/// Names alternate between plain (`s0`) and hyphenated (`step-1`) ones.
fn step_name(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("s{i}")
    } else {
        format!("step-{i}")
    }
}

fn step_ref(name: &str, dot: bool) -> String {
    if dot && !name.contains('-') {
        format!("steps.{name}")
    } else {
        format!("steps['{name}']")
    }
}

/// A workflow: for each step, its dependencies (indices) and how each is written, plus
/// whether a lone `depends_on` entry is written as a scalar.
#[derive(Debug, Clone)]
struct Dag {
    deps: Vec<Vec<(usize, Via)>>,
    scalar_depends_on: Vec<bool>,
}

/// Up to `max` steps, each depending on a random subset of the earlier ones.
fn dag(max: usize) -> impl Strategy<Value = Dag> {
    (1..=max)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(
                    prop::collection::vec((any::<prop::sample::Index>(), via()), 0..4),
                    n,
                ),
                prop::collection::vec(any::<bool>(), n),
            )
        })
        .prop_map(|(raw, scalar_depends_on)| {
            let deps = raw
                .into_iter()
                .enumerate()
                .map(|(i, picks)| {
                    let mut seen = BTreeSet::new();
                    let mut out = Vec::new();
                    if i == 0 {
                        return out;
                    }
                    for (index, how) in picks {
                        let d = index.index(i);
                        if seen.insert(d) {
                            out.push((d, how));
                        }
                    }
                    out
                })
                .collect();
            Dag {
                deps,
                scalar_depends_on,
            }
        })
}

fn render_dag(dag: &Dag) -> String {
    let mut out = String::from("name: generated\nsteps:\n");
    for (i, deps) in dag.deps.iter().enumerate() {
        let _ = writeln!(out, "  - name: {}", step_name(i));
        let _ = writeln!(out, "    action: core/set");
        let explicit: Vec<String> = deps
            .iter()
            .filter(|(_, v)| *v == Via::DependsOn)
            .map(|(d, _)| step_name(*d))
            .collect();
        if explicit.len() == 1 && dag.scalar_depends_on[i] {
            let _ = writeln!(out, "    depends_on: {}", explicit[0]);
        } else if !explicit.is_empty() {
            let _ = writeln!(out, "    depends_on: [{}]", explicit.join(", "));
        }
        let conditions: Vec<String> = deps
            .iter()
            .filter(|(_, v)| *v == Via::If)
            .enumerate()
            .map(|(k, (d, _))| {
                let r = step_ref(&step_name(*d), k.is_multiple_of(2));
                format!("{r}.status == 'succeeded'")
            })
            .collect();
        if !conditions.is_empty() {
            let _ = writeln!(out, "    if: {}", conditions.join(" && "));
        }
        let _ = writeln!(out, "    params:");
        let _ = writeln!(out, "      own: {i}");
        for (k, (d, how)) in deps.iter().enumerate() {
            let name = step_name(*d);
            match how {
                Via::TemplateDot => {
                    let _ = writeln!(
                        out,
                        "      p{k}: \"{{{{ {}.output.own }}}}\"",
                        step_ref(&name, true)
                    );
                }
                Via::TemplateBracket => {
                    let _ = writeln!(
                        out,
                        "      p{k}: \"got {{{{ {}.output }}}} here\"",
                        step_ref(&name, false)
                    );
                }
                Via::DependsOn | Via::If => {}
            }
        }
    }
    out
}

/// The sorted names each step needs.
fn expected_needs(dag: &Dag) -> Vec<Vec<String>> {
    dag.deps
        .iter()
        .map(|deps| {
            deps.iter()
                .map(|(d, _)| step_name(*d))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .collect()
}

/// Number of distinct paths from `from` to `to` along "needs" edges (capped at 2), and one of them.
fn paths(dag: &Dag, from: usize, to: usize) -> (usize, Vec<usize>) {
    fn go(
        dag: &Dag,
        at: usize,
        to: usize,
        memo: &mut BTreeMap<usize, (usize, Vec<usize>)>,
    ) -> (usize, Vec<usize>) {
        if at == to {
            return (1, vec![to]);
        }
        if let Some(found) = memo.get(&at) {
            return found.clone();
        }
        let mut count = 0;
        let mut path = Vec::new();
        for (d, _) in &dag.deps[at] {
            let (c, p) = go(dag, *d, to, memo);
            if c > 0 && path.is_empty() {
                path = std::iter::once(at).chain(p).collect();
            }
            count = (count + c).min(2);
        }
        memo.insert(at, (count, path.clone()));
        (count, path)
    }
    go(dag, from, to, &mut BTreeMap::new())
}

proptest! {
    #![proptest_config(Config::with_cases(CASES))]

    #[test]
    fn proptests_random_dags_validate_with_their_needs(dag in dag(14)) {
        let source = render_dag(&dag);
        let loaded = match load(&source) {
            Ok(l) => l,
            Err(problems) => {
                return Err(TestCaseError::fail(format!("{problems:#?}\n{source}")));
            }
        };
        let needs: Vec<Vec<String>> = loaded.spec.steps.iter().map(|s| s.needs.clone()).collect();
        prop_assert_eq!(needs, expected_needs(&dag), "{}", source);
        for (i, step) in loaded.spec.steps.iter().enumerate() {
            let explicit: Vec<String> = dag.deps[i]
                .iter()
                .filter(|(_, v)| *v == Via::DependsOn)
                .map(|(d, _)| step_name(*d))
                .collect();
            prop_assert_eq!(&step.depends_on, &explicit);
        }
    }

    #[test]
    fn proptests_one_back_edge_is_one_cycle_problem(
        dag in dag(10),
        pick in any::<prop::sample::Index>(),
        how in via(),
    ) {
        // Pairs (j, i) with exactly one path j → … → i (j == i included): making i need j
        // closes exactly one cycle, i → j → … → i.
        let n = dag.deps.len();
        let mut candidates = Vec::new();
        for j in 0..n {
            for i in 0..=j {
                let (count, path) = paths(&dag, j, i);
                if count == 1 {
                    candidates.push((j, i, path));
                }
            }
        }
        let (j, i, path) = candidates[pick.index(candidates.len())].clone();
        let mut cyclic = dag.clone();
        cyclic.deps[i].push((j, how));
        let source = render_dag(&cyclic);
        let problems = match load(&source) {
            Ok(_) => return Err(TestCaseError::fail(format!("a cycle validated:\n{source}"))),
            Err(p) => p,
        };
        prop_assert_eq!(problems.len(), 1, "{:#?}\n{}", problems, source);
        let message = &problems[0].message;
        if i == j {
            prop_assert_eq!(
                message,
                &format!("step {:?} depends on itself", step_name(i)),
                "{}",
                source
            );
        } else {
            // The cycle in "needs" order: i → j → … → i, starting at its smallest name.
            let mut cycle: Vec<String> = std::iter::once(i)
                .chain(path[..path.len() - 1].iter().copied())
                .map(step_name)
                .collect();
            let min = (0..cycle.len()).min_by_key(|k| cycle[*k].clone()).unwrap();
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            prop_assert_eq!(
                message,
                &format!("dependency cycle: {}", cycle.join(" → ")),
                "{}",
                source
            );
        }
    }
}
