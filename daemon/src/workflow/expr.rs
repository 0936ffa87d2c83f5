//! CEL expressions and `{{ }}` templates: compiling, finding the steps they read, evaluating.
//!
//! Dependencies come from the expression's syntax tree: `steps.fetch…` and
//! `steps['fetch-data']…` both name a step; any other use of `steps` (a computed index, the
//! bare map) is refused, because the scheduler must know every dependency before it runs.

use std::collections::BTreeSet;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::functions;
use super::problem::did_you_mean;

/// The variables an expression may read.
pub const VARIABLES: [&str; 5] = ["inputs", "steps", "trigger", "env", "execution"];

/// A compiled expression and what it reads.
#[derive(Debug)]
pub struct Compiled {
    pub source: String,
    pub program: cel::Program,
    /// The steps it reads, with the character offset of each reference.
    pub step_refs: Vec<(String, usize)>,
}

impl Compiled {
    pub fn step_names(&self) -> BTreeSet<String> {
        self.step_refs.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// A problem inside an expression, at a character offset from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

/// Longest expression accepted, in characters.
pub const MAX_EXPR_CHARS: usize = 4096;
/// Deepest nesting of an expression accepted.
pub const MAX_EXPR_DEPTH: u16 = 32;

/// Compiles `source`, reporting syntax errors, unknown variables and dynamic step access.
/// The CEL parser recurses per nesting level: call it on a thread with a large stack
/// (see [`super::load::with_big_stack`]).
pub fn compile(source: &str) -> Result<Compiled, Vec<ExprError>> {
    let fail = |message: String| Err(vec![ExprError { offset: 0, message }]);
    if source.trim().is_empty() {
        return fail("empty expression".to_owned());
    }
    if source.chars().count() > MAX_EXPR_CHARS {
        return fail(format!(
            "expression longer than {MAX_EXPR_CHARS} characters"
        ));
    }
    if functions::env()
        .parser()
        .max_recursion_depth(MAX_EXPR_DEPTH)
        .parse(source)
        .is_err_and(|e| e.errors.iter().any(|e| e.msg.contains("ecursion limit")))
    {
        return fail(format!(
            "expression nested deeper than {MAX_EXPR_DEPTH} levels"
        ));
    }
    let program = functions::env().compile(source).map_err(|errs| {
        errs.errors
            .iter()
            .map(|e| ExprError {
                offset: line_col_to_offset(source, e.pos.0, e.pos.1),
                message: format!("invalid CEL: {}", e.msg),
            })
            .collect::<Vec<_>>()
    })?;
    let mut walk = Walk {
        info: program.source_info(),
        bound: Vec::new(),
        step_refs: Vec::new(),
        errors: Vec::new(),
    };
    walk.expr(program.expression());
    if !walk.errors.is_empty() {
        return Err(walk.errors);
    }
    let step_refs = walk.step_refs;
    Ok(Compiled {
        source: source.to_owned(),
        program,
        step_refs,
    })
}

/// The parser reports 1-based lines and columns.
fn line_col_to_offset(source: &str, line: isize, column: isize) -> usize {
    let line = line.max(1) as usize;
    let column = (column.max(1) - 1) as usize;
    let before: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(|l| l.chars().count())
        .sum();
    before + column
}

struct Walk<'a> {
    info: &'a cel::common::ast::SourceInfo,
    bound: Vec<String>,
    step_refs: Vec<(String, usize)>,
    errors: Vec<ExprError>,
}

impl Walk<'_> {
    fn offset(&self, e: &IdedExpr) -> usize {
        self.info
            .offset_for(e.id)
            .map_or(0, |(start, _)| start as usize)
    }

    fn is_free(&self, name: &str) -> bool {
        !self.bound.iter().any(|b| b == name)
    }

    fn expr(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if !self.is_free(name) {
                    return;
                }
                if name == "steps" {
                    self.errors.push(ExprError {
                        offset: self.offset(e),
                        message:
                            "`steps` must be followed by a step name, as in steps.fetch.output \
                                  or steps['fetch-data'].output"
                                .to_owned(),
                    });
                } else if !VARIABLES.contains(&name.as_str()) {
                    let hint = match did_you_mean(name, VARIABLES) {
                        Some(v) => format!("; did you mean {v:?}?"),
                        None => format!("; expressions can read {}", VARIABLES.join(", ")),
                    };
                    self.errors.push(ExprError {
                        offset: self.offset(e),
                        message: format!("unknown variable {name:?}{hint}"),
                    });
                }
            }
            Expr::Select(select) => {
                if let Expr::Ident(root) = &select.operand.expr
                    && root == "steps"
                    && self.is_free("steps")
                {
                    let at = self.offset(&select.operand);
                    self.step_refs.push((select.field.clone(), at));
                } else {
                    self.expr(&select.operand);
                }
            }
            Expr::Call(call) => {
                if call.func_name == "_[_]"
                    && call.args.len() == 2
                    && matches!(&call.args[0].expr, Expr::Ident(r) if r == "steps")
                    && self.is_free("steps")
                {
                    let at = self.offset(&call.args[0]);
                    match &call.args[1].expr {
                        Expr::Literal(LiteralValue::String(name)) => {
                            self.step_refs.push((name.inner().to_owned(), at));
                        }
                        _ => self.errors.push(ExprError {
                            offset: at,
                            message: "steps must be indexed by a literal step name, as in \
                                      steps['fetch-data']; computed names are not allowed"
                                .to_owned(),
                        }),
                    }
                    return;
                }
                if let Some(target) = &call.target {
                    self.expr(target);
                }
                for arg in &call.args {
                    self.expr(arg);
                }
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                self.expr(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                self.expr(&c.loop_cond);
                self.expr(&c.loop_step);
                self.expr(&c.result);
                self.bound.truncate(depth);
            }
            Expr::List(list) => list.elements.iter().for_each(|el| self.expr(el)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.expr(&m.key);
                        self.expr(&m.value);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => self.expr(&f.value),
                        EntryExpr::MapEntry(m) => {
                            self.expr(&m.key);
                            self.expr(&m.value);
                        }
                    }
                }
            }
        }
    }
}

/// One piece of a template string.
#[derive(Debug)]
pub enum Segment {
    Text(String),
    /// An expression, with the character offset of its first character in the string.
    Expr(Box<Compiled>, usize),
}

/// A string with `{{ expr }}` parts.
#[derive(Debug)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// Whether the string is one template and nothing else, so it yields a typed value.
    pub fn is_single_expression(&self) -> bool {
        matches!(self.segments.as_slice(), [Segment::Expr(..)])
    }

    pub fn step_names(&self) -> BTreeSet<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Expr(c, _) => Some(c.step_names()),
                Segment::Text(_) => None,
            })
            .flatten()
            .collect()
    }
}

/// Parses `{{ … }}` templates in `text`; `Ok(None)` when it contains none.
/// Errors carry offsets from the start of `text`.
pub fn parse_template(text: &str) -> Result<Option<Template>, Vec<ExprError>> {
    match template_parts(text) {
        (None, _) => Ok(None),
        (Some(t), errors) if errors.is_empty() => Ok(Some(t)),
        (Some(_), errors) => Err(errors),
    }
}

/// Like [`parse_template`], but keeps the parts that compiled next to the errors of those
/// that did not, so a validator can still check the good parts' step references.
pub fn template_parts(text: &str) -> (Option<Template>, Vec<ExprError>) {
    if !text.contains("{{") {
        return (None, Vec::new());
    }
    let (segments, errors) = split_template(text);
    (Some(Template { segments }), errors)
}

fn split_template(text: &str) -> (Vec<Segment>, Vec<ExprError>) {
    let trimmed_single = {
        let t = text.trim();
        t.starts_with("{{")
            && t.ends_with("}}")
            && t[2..t.len() - 2].find("{{").is_none()
            && t[2..t.len() - 2].find("}}").is_none()
    };
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    let mut consumed_chars = 0usize;
    while let Some(start) = rest.find("{{") {
        let literal = &rest[..start];
        let after_open = &rest[start + 2..];
        let open_offset = consumed_chars + literal.chars().count();
        let Some(end) = after_open.find("}}") else {
            errors.push(ExprError {
                offset: open_offset,
                message: "unterminated template: `{{` without a closing `}}`".to_owned(),
            });
            return (segments, errors);
        };
        if !literal.is_empty() && !trimmed_single {
            segments.push(Segment::Text(literal.to_owned()));
        }
        let inner = &after_open[..end];
        let inner_offset = open_offset + 2;
        match compile(inner) {
            Ok(compiled) => segments.push(Segment::Expr(Box::new(compiled), inner_offset)),
            Err(errs) => errors.extend(errs.into_iter().map(|e| ExprError {
                offset: inner_offset + e.offset,
                message: e.message,
            })),
        }
        consumed_chars = inner_offset + inner.chars().count() + 2;
        rest = &after_open[end + 2..];
    }
    if !rest.is_empty() && !trimmed_single {
        segments.push(Segment::Text(rest.to_owned()));
    }
    (segments, errors)
}

/// The values an expression can read.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub inputs: serde_json::Value,
    /// Step name → `{output, error, status}`.
    pub steps: serde_json::Value,
    pub trigger: serde_json::Value,
    pub env: serde_json::Value,
    pub execution: serde_json::Value,
}

/// Evaluates a compiled expression to JSON.
pub fn evaluate(compiled: &Compiled, scope: &Scope) -> Result<serde_json::Value, String> {
    let mut ctx = cel::Context::with_env(functions::env());
    for (name, value) in [
        ("inputs", &scope.inputs),
        ("steps", &scope.steps),
        ("trigger", &scope.trigger),
        ("env", &scope.env),
        ("execution", &scope.execution),
    ] {
        ctx.add_variable_from_value(name, functions::json_to_value(value.clone()));
    }
    let value = compiled
        .program
        .execute(&ctx)
        .map_err(|e| format!("evaluating {:?}: {e}", compiled.source))?;
    value.json().map_err(|e| {
        format!(
            "evaluating {:?}: the result cannot be represented as JSON: {e}",
            compiled.source
        )
    })
}

/// Renders a template: a single expression keeps its type, anything else becomes a string.
pub fn render(template: &Template, scope: &Scope) -> Result<serde_json::Value, String> {
    if let [Segment::Expr(c, _)] = template.segments.as_slice() {
        return evaluate(c, scope);
    }
    let mut out = String::new();
    for segment in &template.segments {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Expr(c, _) => match evaluate(c, scope)? {
                serde_json::Value::String(s) => out.push_str(&s),
                serde_json::Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(serde_json::Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps_of(src: &str) -> Vec<String> {
        compile(src).unwrap().step_names().into_iter().collect()
    }

    #[test]
    fn step_references_from_the_syntax_tree() {
        assert_eq!(
            steps_of("steps.a.output.ok && size(steps['fetch-data'].output.items) > 0"),
            ["a", "fetch-data"]
        );
        assert_eq!(steps_of("has(steps.b.output.x)"), ["b"]);
        assert_eq!(
            steps_of("[1, 2].exists(steps, steps > 1)"),
            Vec::<String>::new()
        );
        assert_eq!(steps_of("inputs.n + 1"), Vec::<String>::new());
        assert_eq!(steps_of("'steps.fake' + inputs.x"), Vec::<String>::new());
    }

    #[test]
    fn dynamic_and_unknown_access_is_refused() {
        let err = compile("steps[inputs.name].output").unwrap_err();
        assert!(err[0].message.contains("literal step name"), "{err:?}");
        assert_eq!(err[0].offset, 0);
        let err = compile("size(steps)").unwrap_err();
        assert!(
            err[0].message.contains("must be followed by a step name"),
            "{err:?}"
        );
        let err = compile("input.x == 1").unwrap_err();
        assert_eq!(
            err[0].message,
            "unknown variable \"input\"; did you mean \"inputs\"?"
        );
        assert_eq!(err[0].offset, 0);
    }

    #[test]
    fn syntax_errors_point_inside_the_expression() {
        let err = compile("inputs.x &&").unwrap_err();
        assert!(err[0].message.starts_with("invalid CEL:"), "{err:?}");
        assert!(err[0].offset >= 9, "{err:?}");
    }

    #[test]
    fn templates() {
        assert!(parse_template("plain").unwrap().is_none());
        let t = parse_template("{{ inputs.n }}").unwrap().unwrap();
        assert!(t.is_single_expression());
        let t = parse_template("  {{ inputs.n }} ").unwrap().unwrap();
        assert!(t.is_single_expression());
        let t = parse_template("n={{ inputs.n }} of {{ steps.a.output.total }}")
            .unwrap()
            .unwrap();
        assert!(!t.is_single_expression());
        assert_eq!(t.step_names().into_iter().collect::<Vec<_>>(), ["a"]);
        let err = parse_template("x {{ inputs.n").unwrap_err();
        assert_eq!(err[0].offset, 2);
        let err = parse_template("ab {{ inputs.n + }}").unwrap_err();
        assert!(err[0].offset >= 6, "{err:?}");
    }

    #[test]
    fn rendering_keeps_types_for_single_expressions() {
        let scope = Scope {
            inputs: json!({"n": 3, "name": "x"}),
            steps: json!({"a": {"output": {"total": 7}}}),
            ..Scope::default()
        };
        let t = parse_template("{{ inputs.n + 1 }}").unwrap().unwrap();
        assert_eq!(render(&t, &scope).unwrap(), json!(4));
        let t = parse_template("{{ inputs.name }}-{{ steps.a.output.total }}")
            .unwrap()
            .unwrap();
        assert_eq!(render(&t, &scope).unwrap(), json!("x-7"));
        let c = compile("steps.a.output.total > inputs.n").unwrap();
        assert_eq!(evaluate(&c, &scope).unwrap(), json!(true));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn deep_and_long_expressions_are_refused() {
        crate::workflow::load::with_big_stack(|| {
            let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
            let err = compile(&deep).unwrap_err();
            assert!(err[0].message.contains("nested deeper"), "{err:?}");
            let calls = format!("{}1{}", "size(".repeat(100), ")".repeat(100));
            assert!(compile(&calls).is_err());
            let ok = format!("{}1{}", "(".repeat(10), ")".repeat(10));
            assert!(compile(&ok).is_ok());
            let long = format!("'{}'", "x".repeat(MAX_EXPR_CHARS));
            assert!(
                compile(&long).unwrap_err()[0]
                    .message
                    .contains("longer than")
            );
        });
    }
}
