//! The workflow validation corpus, checked against the real `mantle validate` binary.
//!
//! - `fixtures/workflows/invalid/NN-name.yaml`: each must make `mantle validate` exit 1 and
//!   print exactly `NN-name.expected` on stdout (one `FILE:LINE:COL: PATH: message` line per
//!   problem). The binary runs from `fixtures/workflows`, so files print as `invalid/NN-name.yaml`.
//! - `fixtures/workflows/valid/*.yaml` and `examples/*.yaml` (at the repository root) must
//!   print nothing on stdout and exit 0.
//!
//! Updating the snapshots: run with `UPDATE_SNAPSHOTS=1`, e.g.
//! `UPDATE_SNAPSHOTS=1 cargo nextest run -p mantle-integration -E 'test(/corpus/)'`, and the
//! `.expected` files are rewritten from the current output instead of compared. Review the
//! diff (`git diff integration/fixtures`) before keeping it: an `.expected` file states what
//! the validator SHOULD print. Some were written by hand where the validator's output was
//! known to be wrong (a misplaced column, a misleading message): rewriting them from the
//! current output would accept the bug, so only update when the new output is right.
//!
//! Adding a case: write `invalid/NN-short-name.yaml`, run with `UPDATE_SNAPSHOTS=1`, and check
//! by eye that every line and column points at the offending key, value or expression part.

use std::path::{Path, PathBuf};
use std::process::Output;

use mantle_integration::{describe_output, mantle_command};

/// Fewest invalid files the corpus may hold: a guard against a glob that silently matches nothing.
const MIN_INVALID: usize = 40;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workflows")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The `.yaml` files directly in `dir`, sorted by name.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Runs `mantle validate <relative>` from `cwd`.
fn validate(cwd: &Path, relative: &str) -> Output {
    let mut cmd = mantle_command();
    cmd.current_dir(cwd).args(["validate", relative]);
    cmd.output()
        .unwrap_or_else(|err| panic!("running mantle validate {relative}: {err}"))
}

fn updating() -> bool {
    std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[test]
fn invalid_corpus_matches_expected_output() {
    let root = fixtures_dir();
    let files = yaml_files(&root.join("invalid"));
    assert!(
        files.len() >= MIN_INVALID,
        "the invalid corpus has {} files; expected at least {MIN_INVALID}",
        files.len()
    );
    let update = updating();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let relative = format!("invalid/{name}");
        let expected_path = file.with_extension("expected");
        let output = validate(&root, &relative);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.code() != Some(1) {
            failures.push(format!(
                "{relative}: expected exit code 1\n{}",
                describe_output(&output)
            ));
            continue;
        }
        if stdout.trim().is_empty() {
            failures.push(format!("{relative}: exit 1 but nothing on stdout"));
            continue;
        }
        if update {
            std::fs::write(&expected_path, &stdout)
                .unwrap_or_else(|err| panic!("writing {}: {err}", expected_path.display()));
            continue;
        }
        let expected = match std::fs::read_to_string(&expected_path) {
            Ok(text) => text,
            Err(err) => {
                failures.push(format!(
                    "{relative}: cannot read {} ({err}); run with UPDATE_SNAPSHOTS=1 to create it\n\
                     --- actual ---\n{stdout}",
                    expected_path.display()
                ));
                continue;
            }
        };
        if stdout != expected {
            failures.push(format!(
                "{relative}: output differs\n--- expected ---\n{expected}--- actual ---\n{stdout}"
            ));
        }
    }
    // Every .expected needs its .yaml (a renamed fixture leaves a stale snapshot behind).
    for entry in std::fs::read_dir(root.join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expected")
            && !path.with_extension("yaml").is_file()
        {
            failures.push(format!("{}: no matching .yaml", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid fixtures failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Asserts that every file of `dir` validates: exit 0 and nothing on stdout.
fn assert_all_valid(dir: &Path, label: &str, at_least: usize) {
    let files = yaml_files(dir);
    assert!(
        files.len() >= at_least,
        "{label}: {} files in {}; expected at least {at_least}",
        files.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let output = validate(dir, &name);
        if !output.status.success() || !output.stdout.is_empty() {
            failures.push(format!("{label}/{name}:\n{}", describe_output(&output)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} {label} files do not validate:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_corpus_validates() {
    assert_all_valid(&fixtures_dir().join("valid"), "valid", 5);
}

#[test]
fn examples_corpus_validates() {
    assert_all_valid(&examples_dir(), "examples", 4);
}

/// Several files at once: every file's problems are printed, and the exit code is 1 when any
/// file has a problem.
#[test]
fn corpus_files_validate_together() {
    let root = fixtures_dir();
    let output = validate_many(
        &root,
        &[
            "valid/minimal.yaml",
            "invalid/14-duplicate-step-name.yaml",
            "invalid/57-webhook-duplicate.yaml",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        describe_output(&output)
    );
    let expected: String = [
        "invalid/14-duplicate-step-name.expected",
        "invalid/57-webhook-duplicate.expected",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(root.join(p)).unwrap())
    .collect();
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);

    let output = validate_many(&root, &["valid/minimal.yaml", "valid/diamond.yaml"]);
    assert!(output.status.success(), "{}", describe_output(&output));
    assert!(output.stdout.is_empty(), "{}", describe_output(&output));
}

fn validate_many(cwd: &Path, files: &[&str]) -> Output {
    let mut cmd = mantle_command();
    cmd.current_dir(cwd).arg("validate").args(files);
    cmd.output().expect("running mantle validate")
}

/// Warnings go to stderr with their position and do not fail the file.
#[test]
fn warnings_go_to_stderr_and_do_not_fail() {
    let output = validate(&fixtures_dir().join("valid"), "triggers.yaml");
    assert!(output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "warning: triggers.yaml:11:5: triggers[3]: a webhook trigger without `secret`"
        ) && !stderr.contains("triggers[2]"),
        "{}",
        describe_output(&output)
    );
}
