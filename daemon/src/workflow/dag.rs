//! The step graph: edges from each step to the steps it needs, cycle detection, and order.

use std::collections::{BTreeMap, BTreeSet};

/// Finds every dependency cycle. Each cycle is returned once, as the path of step names
/// starting and ending at the same step (`a → b → a`), beginning at its smallest name.
/// `needs` maps each step to the steps it waits for; unknown names are ignored here.
pub fn cycles(needs: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = needs.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut stack: Vec<&str> = Vec::new();

    fn visit<'a>(
        node: &'a str,
        needs: &'a BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        marks.insert(node, Mark::Active);
        stack.push(node);
        for next in needs.get(node).into_iter().flatten() {
            match marks.get(next.as_str()) {
                None => {}
                Some(Mark::Active) => {
                    let start = stack.iter().position(|n| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    // Rotate so the smallest name comes first, for a stable report.
                    let min = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| n.as_str())
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(min);
                    let first = cycle[0].clone();
                    cycle.push(first);
                    found.insert(cycle);
                }
                Some(Mark::New) => visit(next, needs, marks, stack, found),
                Some(Mark::Done) => {}
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }

    for name in needs.keys() {
        if marks.get(name.as_str()) == Some(&Mark::New) {
            visit(name, needs, &mut marks, &mut stack, &mut found);
        }
    }
    found.into_iter().collect()
}

/// A topological order (dependencies first), or `None` when there is a cycle.
pub fn order(needs: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut remaining: BTreeMap<&str, usize> = needs
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.iter().filter(|d| needs.contains_key(*d)).count(),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(needs.len());
    loop {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        if ready.is_empty() {
            break;
        }
        for r in ready {
            remaining.remove(r);
            out.push(r.to_owned());
            for (k, v) in needs {
                if v.contains(r)
                    && let Some(n) = remaining.get_mut(k.as_str())
                {
                    *n -= 1;
                }
            }
        }
    }
    remaining.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn finds_cycles_as_paths() {
        let g = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        assert_eq!(cycles(&g), vec![vec!["a", "c", "b", "a"]]);
        let g = graph(&[("a", &["a"])]);
        assert_eq!(cycles(&g), vec![vec!["a", "a"]]);
        let g = graph(&[("a", &["b"]), ("b", &[]), ("c", &["b", "a"])]);
        assert!(cycles(&g).is_empty());
        assert_eq!(order(&g).unwrap(), ["b", "a", "c"]);
    }

    proptest! {
        /// Edges only from later to earlier steps make an acyclic graph: no cycle is
        /// reported and the order respects every edge.
        #[test]
        fn random_dags_have_no_cycles(n in 1usize..30, edges in prop::collection::vec((0usize..30, 0usize..30), 0..80)) {
            let mut g: BTreeMap<String, BTreeSet<String>> = (0..n).map(|i| (format!("s{i:02}"), BTreeSet::new())).collect();
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b {
                    g.get_mut(&format!("s{a:02}")).unwrap().insert(format!("s{b:02}"));
                }
            }
            prop_assert!(cycles(&g).is_empty());
            let order = order(&g).unwrap();
            prop_assert_eq!(order.len(), n);
            let pos: BTreeMap<_, _> = order.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
            for (k, deps) in &g {
                for d in deps {
                    prop_assert!(pos[d] < pos[k]);
                }
            }
        }

        /// A ring of k steps is reported as exactly that cycle.
        #[test]
        fn random_rings_are_reported(k in 1usize..12, extra in 0usize..5) {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for i in 0..k {
                g.entry(format!("r{i:02}")).or_default().insert(format!("r{:02}", (i + 1) % k));
            }
            for j in 0..extra {
                g.entry(format!("x{j}")).or_default().insert("r00".to_owned());
            }
            let found = cycles(&g);
            prop_assert_eq!(found.len(), 1);
            prop_assert_eq!(found[0].len(), k + 1);
            prop_assert!(order(&g).is_none());
        }
    }
}
