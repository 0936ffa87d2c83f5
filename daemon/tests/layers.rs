//! The module layering ARCHITECTURE.md states, checked on the source: the store depends on
//! the passive types of `mantle-model` only (`crate::model`), and the daemon's modules depend
//! on each other without cycles (the wiring on top, `api`, `server`, `cli`, is left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules every layer may use: leaves with no dependency of their own in the daemon.
const LEAVES: &[&str] = &["model", "error", "duration", "cpu", "testing", "meter"];
/// The wiring, which may use anything.
const TOP: &[&str] = &[
    "api",
    "server",
    "cli",
    "lib",
    "main",
    "http",
    "health",
    "telemetry",
    "config",
];

/// `crate::NAME` paths used under `dir` (a module directory or file).
fn uses(path: &Path, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            uses(&entry.unwrap().path(), out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if TOP.contains(&name.as_str()) {
            continue;
        }
        let mut deps = BTreeSet::new();
        uses(&path, &mut deps);
        deps.remove(&name);
        deps.retain(|d| !LEAVES.contains(&d.as_str()));
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn the_store_depends_on_the_model_only() {
    // The model is a crate of its own: the compiler keeps it from the daemon.
    let graph = graph();
    assert_eq!(
        graph["store"],
        BTreeSet::new(),
        "store uses {:?}",
        graph["store"]
    );
    assert_eq!(
        graph["connectors"],
        BTreeSet::new(),
        "connectors use {:?}",
        graph["connectors"]
    );
}

#[test]
fn modules_depend_on_each_other_without_cycles() {
    let graph = graph();
    // Depth-first search, keeping the path: a module met again on it closes a cycle.
    fn visit<'g>(
        m: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("a cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
