//! `mantlectl validate|plan|apply FILE…`: workflow files checked, compared with the
//! stored latest version, and stored, by the server.
//!
//! Each file is sent on its own, named by its path as given. A file the server refuses
//! (INVALID_ARGUMENT) or that cannot be read is reported and the next file is tried;
//! mantlectl then exits 1. Any other error (unreachable server, missing scope) stops at
//! once.

use std::fmt::Write as _;
use std::path::Path;

use mantle_client::proto::change::Kind;
use mantle_client::proto::{
    ApplyDefinitionResponse, Change, Plan, ValidateDefinitionResponse, ValidationProblem,
};
use mantle_client::{Error, format_status};
use serde::{Serialize, Serializer};
use tonic::Code;

use super::workflows::DefinitionView;
use super::{Context, EXIT_ERROR, Exit};
use crate::cli::FilesArgs;
use crate::output::{self, OutputFormat, Render};

/// A workflow file as read from disk.
struct SourceFile {
    /// The path as given on the command line; sent as the request's filename.
    name: String,
    /// The file's text.
    source: String,
}

/// Reads `path`; prints the failure to stderr and returns `None` when it cannot.
fn read_file(path: &Path) -> Option<SourceFile> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => Some(SourceFile { name, source }),
        Err(err) => {
            eprintln!("mantlectl: error: cannot read {name}: {err}");
            None
        }
    }
}

/// Why the server refused one file.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The file has these validation problems.
    Problems(Vec<ValidationProblem>),
    /// INVALID_ARGUMENT without problems (for example a file over the size limit).
    Other(String),
}

/// Splits per-file refusals (INVALID_ARGUMENT) from errors that end the command.
pub(crate) fn refused(err: Error) -> Result<Refused, Error> {
    if !err.problems().is_empty() {
        return Ok(Refused::Problems(err.problems().to_vec()));
    }
    match err.status() {
        Some(status) if status.code() == Code::InvalidArgument => {
            Ok(Refused::Other(format_status(status)))
        }
        _ => Err(err),
    }
}

/// Reports a refused file: problems as `FILE:LINE:COL: PATH: message` lines to stdout
/// (or stderr when stdout carries JSON/YAML), anything else as an error on stderr.
pub(crate) fn report_refused(file: &str, refusal: &Refused, to_stdout: bool) {
    match refusal {
        Refused::Problems(problems) => {
            let text = problem_lines(problems, file);
            if to_stdout {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
        }
        Refused::Other(message) => eprintln!("mantlectl: error: {file}: {message}"),
    }
}

/// One line per problem, each ending with a newline.
fn problem_lines(problems: &[ValidationProblem], file: &str) -> String {
    problems
        .iter()
        .map(|p| problem_line(p, file) + "\n")
        .collect()
}

/// `FILE:LINE:COL: PATH: message`. The server's `file` is the name that was sent;
/// `file` stands in when it is empty. A missing path, line or column is left out.
fn problem_line(problem: &ValidationProblem, file: &str) -> String {
    let mut line = if problem.file.is_empty() {
        file.to_owned()
    } else {
        problem.file.clone()
    };
    if problem.line > 0 {
        let _ = write!(line, ":{}", problem.line);
        if problem.column > 0 {
            let _ = write!(line, ":{}", problem.column);
        }
    }
    line.push_str(": ");
    if !problem.path.is_empty() {
        line.push_str(&problem.path);
        line.push_str(": ");
    }
    line.push_str(&problem.message);
    // One problem per line, whatever the message holds.
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A validation problem in JSON/YAML output.
#[derive(Debug, Serialize)]
struct ProblemView {
    file: String,
    line: u32,
    column: u32,
    path: String,
    message: String,
}

impl From<ValidationProblem> for ProblemView {
    fn from(p: ValidationProblem) -> Self {
        ProblemView {
            file: p.file,
            line: p.line,
            column: p.column,
            path: p.path,
            message: p.message,
        }
    }
}

/// Prints warnings to stderr, one `warning: FILE:LINE:COL: PATH: message` line each.
fn print_warnings(warnings: &[ValidationProblem]) {
    for w in warnings {
        let path = if w.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", w.path)
        };
        eprintln!(
            "warning: {}:{}:{}: {path}{}",
            w.file, w.line, w.column, w.message
        );
    }
}

fn warning_views(warnings: &[ValidationProblem]) -> Vec<ProblemView> {
    warnings.iter().cloned().map(ProblemView::from).collect()
}

/// The outcome of validating one file, for -o json/yaml.
#[derive(Debug, Serialize)]
struct ValidationView {
    file: String,
    valid: bool,
    /// Empty when invalid.
    name: String,
    content_hash: String,
    step_count: u32,
    problems: Vec<ProblemView>,
    warnings: Vec<ProblemView>,
}

/// `FILE: ok (NAME, N steps)`.
fn ok_line(file: &str, response: &ValidateDefinitionResponse) -> String {
    let plural = if response.step_count == 1 { "" } else { "s" };
    format!(
        "{file}: ok ({}, {} step{plural})",
        response.name, response.step_count
    )
}

impl Render for ValidationView {
    fn table(&self) -> String {
        // Table output is written as the files are checked; see `validate`.
        String::new()
    }
}

/// A field of a changed element, for JSON/YAML. `before`/`after` are the JSON text of
/// the values, empty where the field is absent on that side.
#[derive(Debug, Serialize)]
struct FieldChangeView {
    path: String,
    before: String,
    after: String,
}

/// One added, removed or changed element, for JSON/YAML.
#[derive(Debug, Serialize)]
struct ChangeView {
    /// `added`, `removed`, `changed` (or `unspecified`).
    kind: &'static str,
    section: String,
    name: String,
    fields: Vec<FieldChangeView>,
}

fn kind_of(change: &Change) -> Kind {
    Kind::try_from(change.kind).unwrap_or(Kind::Unspecified)
}

impl From<Change> for ChangeView {
    fn from(c: Change) -> Self {
        let kind = match kind_of(&c) {
            Kind::Added => "added",
            Kind::Removed => "removed",
            Kind::Changed => "changed",
            Kind::Unspecified => "unspecified",
        };
        ChangeView {
            kind,
            section: c.section,
            name: c.name,
            fields: c
                .fields
                .into_iter()
                .map(|f| FieldChangeView {
                    path: f.path,
                    before: f.before,
                    after: f.after,
                })
                .collect(),
        }
    }
}

/// `+ step fetch`, `- input city`, `~ step fetch` (followed by one indented
/// `path: before → after` line per changed field), one per change.
fn change_lines(changes: &[Change]) -> String {
    let mut out = String::new();
    for change in changes {
        let sign = match kind_of(change) {
            Kind::Added => '+',
            Kind::Removed => '-',
            Kind::Changed => '~',
            Kind::Unspecified => '?',
        };
        let _ = writeln!(out, "{sign} {} {}", change.section, change.name);
        for field in &change.fields {
            let _ = writeln!(
                out,
                "    {}: {} → {}",
                field.path,
                value_or_unset(&field.before),
                value_or_unset(&field.after)
            );
        }
    }
    out
}

fn value_or_unset(json: &str) -> &str {
    if json.is_empty() { "(unset)" } else { json }
}

/// `Plan: N to add, M to change, K to remove.`
fn plan_summary(changes: &[Change]) -> String {
    let count = |kind: Kind| changes.iter().filter(|c| kind_of(c) == kind).count();
    format!(
        "Plan: {} to add, {} to change, {} to remove.",
        count(Kind::Added),
        count(Kind::Changed),
        count(Kind::Removed)
    )
}

/// `workflow NAME: 1 → 2`, `… new workflow` or `… no changes`.
fn plan_header(plan: &Plan) -> String {
    let what = if !plan.changed {
        "no changes".to_owned()
    } else if plan.current_version == 0 {
        "new workflow".to_owned()
    } else {
        format!("{} → {}", plan.current_version, plan.current_version + 1)
    };
    format!("workflow {}: {what}", plan.name)
}

/// A plan as mantlectl prints it.
#[derive(Debug, Serialize)]
struct PlanView {
    #[serde(skip)]
    plan: Plan,
    name: String,
    current_version: i64,
    changed: bool,
    content_hash: String,
    changes: Vec<ChangeView>,
    warnings: Vec<ProblemView>,
}

impl From<Plan> for PlanView {
    fn from(plan: Plan) -> Self {
        PlanView {
            name: plan.name.clone(),
            current_version: plan.current_version,
            changed: plan.changed,
            content_hash: plan.content_hash.clone(),
            changes: plan.changes.iter().cloned().map(ChangeView::from).collect(),
            warnings: warning_views(&plan.warnings),
            plan,
        }
    }
}

impl Render for PlanView {
    /// Header, change lines, summary; like `terraform plan`.
    fn table(&self) -> String {
        format!(
            "{}\n{}{}\n",
            plan_header(&self.plan),
            change_lines(&self.plan.changes),
            plan_summary(&self.plan.changes)
        )
    }
}

/// The result of applying one file.
#[derive(Debug, Serialize)]
pub(crate) struct ApplyView {
    /// The latest version after the call, without its source (that is the file).
    definition: DefinitionView,
    created: bool,
    changes: Vec<ChangeView>,
    warnings: Vec<ProblemView>,
    #[serde(skip)]
    raw_changes: Vec<Change>,
}

impl From<ApplyDefinitionResponse> for ApplyView {
    fn from(response: ApplyDefinitionResponse) -> Self {
        let mut definition = DefinitionView::from(response.definition.unwrap_or_default());
        definition.source = None;
        ApplyView {
            definition,
            created: response.created,
            changes: response
                .changes
                .iter()
                .cloned()
                .map(ChangeView::from)
                .collect(),
            warnings: warning_views(&response.warnings),
            raw_changes: response.changes,
        }
    }
}

impl Render for ApplyView {
    /// The change lines, then `applied NAME version V` or `NAME unchanged at version V`.
    fn table(&self) -> String {
        let d = &self.definition;
        let outcome = if self.created {
            format!("applied {} version {}", d.name, d.version)
        } else {
            format!("{} unchanged at version {}", d.name, d.version)
        };
        format!("{}{outcome}\n", change_lines(&self.raw_changes))
    }
}

/// The results of several files: one object for one file, a list for several.
#[derive(Debug)]
struct Results<T>(Vec<T>);

impl<T: Serialize> Serialize for Results<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            all => all.serialize(serializer),
        }
    }
}

impl<T: Render> Render for Results<T> {
    fn table(&self) -> String {
        let tables: Vec<String> = self.0.iter().map(Render::table).collect();
        tables.join("\n")
    }
}

/// Collects structured results (JSON/YAML) or prints table results as they come.
struct Printer<T> {
    format: OutputFormat,
    results: Vec<T>,
    printed: usize,
}

impl<T: Render> Printer<T> {
    fn new(format: OutputFormat) -> Self {
        Printer {
            format,
            results: Vec::new(),
            printed: 0,
        }
    }

    fn structured(&self) -> bool {
        self.format != OutputFormat::Table
    }

    /// Tables go out at once, separated by blank lines; JSON/YAML wait for `finish`.
    fn add(&mut self, result: T) -> anyhow::Result<()> {
        if self.structured() {
            self.results.push(result);
            return Ok(());
        }
        self.separate();
        output::print(self.format, &result)
    }

    /// Starts the next file's table output, after a blank line unless it is the first.
    fn separate(&mut self) {
        if self.printed > 0 {
            println!();
        }
        self.printed += 1;
    }

    /// Prints the collected JSON/YAML results, if any.
    fn finish(self) -> anyhow::Result<()> {
        if self.results.is_empty() {
            return Ok(());
        }
        output::print(self.format, &Results(self.results))
    }
}

/// Ends the command: exit 1 if a file failed, else success. A fatal error still prints
/// what was done before it.
fn conclude<T: Render>(
    printer: Printer<T>,
    failed: bool,
    fatal: Option<Error>,
) -> anyhow::Result<()> {
    printer.finish()?;
    if let Some(err) = fatal {
        return Err(err.into());
    }
    if failed {
        return Err(Exit(EXIT_ERROR).into());
    }
    Ok(())
}

/// `mantlectl validate FILE…`.
pub async fn validate(ctx: &Context, args: &FilesArgs) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    let mut printer = Printer::<ValidationView>::new(ctx.output);
    let mut failed = false;
    for path in &args.files {
        let Some(file) = read_file(path) else {
            failed = true;
            continue;
        };
        match client.validate_definition(&file.source, &file.name).await {
            Ok(response) if printer.structured() => printer.add(ValidationView {
                file: file.name,
                valid: true,
                warnings: warning_views(&response.warnings),
                name: response.name,
                content_hash: response.content_hash,
                step_count: response.step_count,
                problems: Vec::new(),
            })?,
            Ok(response) => {
                print_warnings(&response.warnings);
                eprintln!("{}", ok_line(&file.name, &response))
            }
            Err(err) => {
                let refusal = match refused(err) {
                    Ok(refusal) => refusal,
                    Err(fatal) => return conclude(printer, failed, Some(fatal)),
                };
                failed = true;
                match refusal {
                    Refused::Problems(problems) if printer.structured() => {
                        printer.add(ValidationView {
                            file: file.name,
                            valid: false,
                            name: String::new(),
                            content_hash: String::new(),
                            step_count: 0,
                            problems: problems.into_iter().map(ProblemView::from).collect(),
                            warnings: Vec::new(),
                        })?
                    }
                    refusal => report_refused(&file.name, &refusal, true),
                }
            }
        }
    }
    conclude(printer, failed, None)
}

/// `mantlectl plan FILE…`.
pub async fn plan(ctx: &Context, args: &FilesArgs) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    let mut printer = Printer::<PlanView>::new(ctx.output);
    let mut failed = false;
    for path in &args.files {
        let Some(file) = read_file(path) else {
            failed = true;
            continue;
        };
        match client.plan_definition(&file.source, &file.name).await {
            Ok(plan) => {
                if !printer.structured() {
                    print_warnings(&plan.warnings);
                }
                printer.add(PlanView::from(plan))?
            }
            Err(err) => match refused(err) {
                Ok(refusal) => {
                    failed = true;
                    let to_stdout = !printer.structured();
                    if to_stdout && matches!(refusal, Refused::Problems(_)) {
                        printer.separate();
                    }
                    report_refused(&file.name, &refusal, to_stdout);
                }
                Err(fatal) => return conclude(printer, failed, Some(fatal)),
            },
        }
    }
    conclude(printer, failed, None)
}

/// `mantlectl apply FILE…`.
pub async fn apply(ctx: &Context, args: &FilesArgs) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    let mut printer = Printer::<ApplyView>::new(ctx.output);
    let mut failed = false;
    for path in &args.files {
        let Some(file) = read_file(path) else {
            failed = true;
            continue;
        };
        match client.apply_definition(&file.source, &file.name).await {
            Ok(response) => {
                if !printer.structured() {
                    print_warnings(&response.warnings);
                }
                printer.add(ApplyView::from(response))?
            }
            Err(err) => match refused(err) {
                Ok(refusal) => {
                    failed = true;
                    let to_stdout = !printer.structured();
                    if to_stdout && matches!(refusal, Refused::Problems(_)) {
                        printer.separate();
                    }
                    report_refused(&file.name, &refusal, to_stdout);
                }
                Err(fatal) => return conclude(printer, failed, Some(fatal)),
            },
        }
    }
    conclude(printer, failed, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;
    use mantle_client::proto::{Definition, FieldChange};

    fn change(kind: Kind, section: &str, name: &str, fields: &[(&str, &str, &str)]) -> Change {
        Change {
            kind: kind as i32,
            section: section.into(),
            name: name.into(),
            fields: fields
                .iter()
                .map(|(path, before, after)| FieldChange {
                    path: (*path).into(),
                    before: (*before).into(),
                    after: (*after).into(),
                })
                .collect(),
        }
    }

    fn sample_changes() -> Vec<Change> {
        vec![
            change(Kind::Removed, "input", "city", &[]),
            change(
                Kind::Changed,
                "step",
                "fetch",
                &[
                    ("params.url", r#""a""#, r#""b""#),
                    ("retry.max_attempts", "", "3"),
                    ("timeout", r#""5s""#, ""),
                ],
            ),
            change(Kind::Added, "step", "notify", &[]),
        ]
    }

    fn plan(current_version: i64, changed: bool, changes: Vec<Change>) -> Plan {
        Plan {
            name: "hello".into(),
            current_version,
            changed,
            content_hash: "abc".into(),
            changes,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn plan_renders_like_terraform() {
        let view = PlanView::from(plan(1, true, sample_changes()));
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "workflow hello: 1 → 2\n\
             - input city\n\
             ~ step fetch\n\
             \x20   params.url: \"a\" → \"b\"\n\
             \x20   retry.max_attempts: (unset) → 3\n\
             \x20   timeout: \"5s\" → (unset)\n\
             + step notify\n\
             Plan: 1 to add, 1 to change, 1 to remove.\n"
        );
    }

    #[test]
    fn plan_headers_for_new_and_unchanged_workflows() {
        let new = PlanView::from(plan(
            0,
            true,
            vec![change(Kind::Added, "step", "greet", &[])],
        ));
        assert_eq!(
            render(OutputFormat::Table, &new).unwrap(),
            "workflow hello: new workflow\n+ step greet\nPlan: 1 to add, 0 to change, 0 to remove.\n"
        );
        let same = PlanView::from(plan(4, false, vec![]));
        assert_eq!(
            render(OutputFormat::Table, &same).unwrap(),
            "workflow hello: no changes\nPlan: 0 to add, 0 to change, 0 to remove.\n"
        );
    }

    #[test]
    fn workflow_section_changes_name_the_field() {
        let changes = vec![change(
            Kind::Changed,
            "workflow",
            "description",
            &[("description", "", r#""Greets.""#)],
        )];
        assert_eq!(
            change_lines(&changes),
            "~ workflow description\n    description: (unset) → \"Greets.\"\n"
        );
        let unknown = vec![change(Kind::Unspecified, "trigger", "cron 0 * * * *", &[])];
        assert_eq!(change_lines(&unknown), "? trigger cron 0 * * * *\n");
    }

    #[test]
    fn plan_json_is_structured() {
        let view = PlanView::from(plan(1, true, sample_changes()));
        let json = render(OutputFormat::Json, &view).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["name"], "hello");
        assert_eq!(value["current_version"], 1);
        assert_eq!(value["changed"], true);
        assert_eq!(value["changes"][0]["kind"], "removed");
        assert_eq!(value["changes"][1]["kind"], "changed");
        assert_eq!(value["changes"][1]["fields"][0]["path"], "params.url");
        assert_eq!(value["changes"][1]["fields"][0]["before"], r#""a""#);
        assert_eq!(value["changes"][1]["fields"][1]["before"], "");
        assert_eq!(value["changes"][2]["kind"], "added");
        assert!(value.get("plan").is_none());
        let yaml = render(OutputFormat::Yaml, &view).unwrap();
        assert!(yaml.contains("kind: changed"), "{yaml}");
    }

    fn applied(created: bool, changes: Vec<Change>) -> ApplyView {
        ApplyView::from(ApplyDefinitionResponse {
            warnings: Vec::new(),
            definition: Some(Definition {
                name: "hello".into(),
                version: 2,
                content_hash: "abc".into(),
                description: String::new(),
                source: "name: hello\n".into(),
                spec_json: r#"{"name":"hello"}"#.into(),
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
            }),
            created,
            changes,
        })
    }

    #[test]
    fn apply_prints_changes_then_the_outcome() {
        let view = applied(true, sample_changes()[..1].to_vec());
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "- input city\napplied hello version 2\n"
        );
        let same = applied(false, vec![]);
        assert_eq!(
            render(OutputFormat::Table, &same).unwrap(),
            "hello unchanged at version 2\n"
        );
    }

    #[test]
    fn apply_json_leaves_out_the_source() {
        let json = render(OutputFormat::Json, &applied(true, sample_changes())).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["created"], true);
        assert_eq!(value["definition"]["name"], "hello");
        assert_eq!(value["definition"]["version"], 2);
        assert_eq!(value["definition"]["spec"]["name"], "hello");
        assert!(value["definition"].get("source").is_none(), "{json}");
        assert_eq!(value["changes"].as_array().map(Vec::len), Some(3));
        assert!(value.get("raw_changes").is_none());
    }

    #[test]
    fn one_result_is_an_object_several_a_list() {
        let one = Results(vec![applied(true, vec![])]);
        let value: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &one).unwrap()).unwrap();
        assert!(value.is_object());
        let two = Results(vec![applied(true, vec![]), applied(false, vec![])]);
        let value: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json, &two).unwrap()).unwrap();
        assert_eq!(value.as_array().map(Vec::len), Some(2));
    }

    fn problem(file: &str, line: u32, column: u32, path: &str, message: &str) -> ValidationProblem {
        ValidationProblem {
            file: file.into(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        }
    }

    #[test]
    fn problems_print_as_file_line_column_path_message() {
        let problems = [
            problem(
                "flows/hello.yaml",
                4,
                13,
                "steps[0].action",
                "unknown action core/lgo; did you mean core/log?",
            ),
            problem("flows/hello.yaml", 1, 1, "", "missing field steps"),
        ];
        assert_eq!(
            problem_lines(&problems, "flows/hello.yaml"),
            "flows/hello.yaml:4:13: steps[0].action: unknown action core/lgo; did you mean \
             core/log?\n\
             flows/hello.yaml:1:1: missing field steps\n"
        );
    }

    #[test]
    fn problem_lines_fill_in_missing_parts() {
        assert_eq!(
            problem_line(&problem("", 2, 0, "name", "required"), "a.yaml"),
            "a.yaml:2: name: required"
        );
        assert_eq!(
            problem_line(&problem("", 0, 0, "", "not YAML:\nbad"), "a.yaml"),
            "a.yaml: not YAML: bad"
        );
    }

    #[test]
    fn refusals_are_per_file_only_for_invalid_argument() {
        let with_problems = Error::Invalid {
            status: Box::new(tonic::Status::invalid_argument("2 problems")),
            problems: vec![problem("a.yaml", 1, 1, "", "x")],
        };
        assert!(matches!(
            refused(with_problems),
            Ok(Refused::Problems(p)) if p.len() == 1
        ));
        let too_big = Error::from(tonic::Status::invalid_argument("source: at most 1 MiB"));
        assert!(matches!(
            refused(too_big),
            Ok(Refused::Other(m)) if m == "invalid argument: source: at most 1 MiB"
        ));
        let denied = Error::from(tonic::Status::permission_denied("needs definitions:write"));
        assert!(refused(denied).is_err());
    }

    #[test]
    fn ok_line_names_workflow_and_steps() {
        let response = ValidateDefinitionResponse {
            name: "hello".into(),
            content_hash: "abc".into(),
            step_count: 3,
            warnings: Vec::new(),
        };
        assert_eq!(
            ok_line("hello.yaml", &response),
            "hello.yaml: ok (hello, 3 steps)"
        );
    }
}
