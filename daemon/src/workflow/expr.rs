//! CEL expressions and `{{ }}` templates: compiling, finding the steps they read, evaluating.
//!
//! Dependencies come from the expression's syntax tree: `steps.fetch…` and
//! `steps['fetch-data']…` both name a step; any other use of `steps` (a computed index, the
//! bare map) is refused, because the scheduler must know every dependency before it runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
};
use cel::common::value::Val;

use super::budget::{self, Budget, Exceeded};
use super::functions;
use super::problem::did_you_mean;

/// The variables an expression may read.
/// `tool` is set only in the params of an `ai/completion` tool (`tool.input`: the model's
/// arguments); the loader refuses it anywhere else.
pub const VARIABLES: [&str; 6] = ["inputs", "steps", "trigger", "env", "execution", "tool"];

/// A compiled expression and what it reads.
#[derive(Debug)]
pub struct Compiled {
    pub source: String,
    /// The expression as it runs: the parsed tree with every call and every loop iteration
    /// going through the metering function (see [`budget`]).
    expr: IdedExpr,
    /// The steps it reads, with the character offset of each reference.
    pub step_refs: Vec<(String, usize)>,
    /// The inputs it names (`inputs.x`, `inputs['x']`), with the offset of each.
    pub input_refs: Vec<(String, usize)>,
    reads: Reads,
}

impl Compiled {
    pub fn step_names(&self) -> BTreeSet<String> {
        self.step_refs.iter().map(|(n, _)| n.clone()).collect()
    }

    /// What the expression reads of each variable.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }
}

/// How much of one variable an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Read {
    #[default]
    Nothing,
    /// Only these keys of it (`inputs.name`, `trigger['payload']`).
    Keys(BTreeSet<String>),
    /// All of it: it is used as a whole somewhere (`size(inputs)`, `inputs[k]`).
    Whole,
}

impl Read {
    fn add_key(&mut self, key: &str) {
        match self {
            Read::Nothing => *self = Read::Keys(BTreeSet::from([key.to_owned()])),
            Read::Keys(keys) => {
                keys.insert(key.to_owned());
            }
            Read::Whole => {}
        }
    }

    fn merge(&mut self, other: &Read) {
        match other {
            Read::Nothing => {}
            Read::Whole => *self = Read::Whole,
            Read::Keys(keys) => keys.iter().for_each(|k| self.add_key(k)),
        }
    }
}

/// What a set of expressions reads: of each variable in [`VARIABLES`] nothing, some keys
/// (for `steps`, the step names) or all of it. Only that is bound when they are evaluated,
/// so an expression reading `inputs.name` does not pay for the rest of a large input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads([Read; 6]);

impl Reads {
    pub fn merge(&mut self, other: &Reads) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            mine.merge(theirs);
        }
    }

    /// Whether anything of variable `name` is read.
    pub fn reads_var(&self, name: &str) -> bool {
        VARIABLES
            .iter()
            .position(|v| *v == name)
            .is_some_and(|i| self.0[i] != Read::Nothing)
    }

    fn var(&mut self, name: &str) -> Option<&mut Read> {
        let i = VARIABLES.iter().position(|v| *v == name)?;
        Some(&mut self.0[i])
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
        input_refs: Vec::new(),
        reads: Reads::default(),
        errors: Vec::new(),
    };
    walk.expr(program.expression());
    if !walk.errors.is_empty() {
        return Err(walk.errors);
    }
    let Walk {
        step_refs,
        input_refs,
        mut reads,
        ..
    } = walk;
    for (name, _) in &step_refs {
        reads.0[1].add_key(name);
    }
    Ok(Compiled {
        source: source.to_owned(),
        expr: metered_tree(program.expression().clone()),
        step_refs,
        input_refs,
        reads,
    })
}

/// `e` with every call wrapped in the metering function, and every loop made to charge at
/// each iteration. Left as they are: the shapes the interpreter evaluates specially, the
/// loop step of `all()`/`exists()` (`@result && x`, whose errors wait for a later element
/// that may decide the result) and of `map()`/`filter()` (`@result + [x]`, appended in
/// place); their parts are metered instead.
fn metered_tree(e: IdedExpr) -> IdedExpr {
    let id = e.id;
    let expr = match e.expr {
        Expr::Call(call) => {
            let call = CallExpr {
                func_name: call.func_name,
                target: call.target.map(|t| Box::new(metered_tree(*t))),
                args: call.args.into_iter().map(metered_tree).collect(),
            };
            return meter(IdedExpr {
                id,
                expr: Expr::Call(call),
            });
        }
        Expr::Select(mut select) => {
            select.operand = Box::new(metered_tree(*select.operand));
            Expr::Select(select)
        }
        Expr::List(mut list) => {
            list.elements = list.elements.into_iter().map(metered_tree).collect();
            return meter(IdedExpr {
                id,
                expr: Expr::List(list),
            });
        }
        Expr::Map(mut map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(m) = &mut entry.expr {
                    m.key = metered_tree(std::mem::take(&mut m.key));
                    m.value = metered_tree(std::mem::take(&mut m.value));
                }
            }
            return meter(IdedExpr {
                id,
                expr: Expr::Map(map),
            });
        }
        Expr::Struct(mut s) => {
            for entry in &mut s.entries {
                match &mut entry.expr {
                    EntryExpr::StructField(f) => {
                        f.value = metered_tree(std::mem::take(&mut f.value));
                    }
                    EntryExpr::MapEntry(m) => {
                        m.key = metered_tree(std::mem::take(&mut m.key));
                        m.value = metered_tree(std::mem::take(&mut m.value));
                    }
                }
            }
            return meter(IdedExpr {
                id,
                expr: Expr::Struct(s),
            });
        }
        Expr::Comprehension(mut c) => {
            let accu = c.accu_var.clone();
            c.iter_range = metered_tree(std::mem::take(&mut c.iter_range));
            c.accu_init = metered_tree(std::mem::take(&mut c.accu_init));
            let cond_is_literal = matches!(c.loop_cond.expr, Expr::Literal(_));
            if !cond_is_literal {
                // `@not_strictly_false(@result)` of all()/exists(): a call, so metered, and
                // evaluated at every iteration.
                c.loop_cond = metered_tree(std::mem::take(&mut c.loop_cond));
            }
            let step = std::mem::take(&mut c.loop_step);
            c.loop_step = match loop_step_shape(&step, &accu) {
                Shape::Fold => {
                    let mut step = step;
                    if let Expr::Call(call) = &mut step.expr {
                        let x = call.args.pop().expect("a fold has two arguments");
                        let x = metered_tree(x);
                        // A literal loop condition charges nothing: the element does.
                        call.args.push(if cond_is_literal { meter(x) } else { x });
                    }
                    step
                }
                Shape::Append => metered_append(step),
                Shape::Other => meter(metered_tree(step)),
            };
            c.result = metered_tree(std::mem::take(&mut c.result));
            Expr::Comprehension(c)
        }
        other @ (Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_)) => other,
    };
    IdedExpr { id, expr }
}

/// `@mantle_meter(e)`: charges one unit, then yields `e`.
fn meter(e: IdedExpr) -> IdedExpr {
    IdedExpr {
        id: e.id,
        expr: Expr::Call(CallExpr {
            func_name: budget::METER.to_owned(),
            target: None,
            args: vec![e],
        }),
    }
}

enum Shape {
    /// `accu && x` or `accu || x`.
    Fold,
    /// `accu + [x]`, or `guard ? accu + [x] : accu`.
    Append,
    Other,
}

fn loop_step_shape(step: &IdedExpr, accu: &str) -> Shape {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == accu);
    let is_append = |e: &IdedExpr| match &e.expr {
        Expr::Call(c) if c.func_name == operators::ADD && c.target.is_none() => {
            matches!(c.args.as_slice(), [l, r] if is_accu(l) && matches!(r.expr, Expr::List(_)))
        }
        _ => false,
    };
    match &step.expr {
        Expr::Call(c)
            if c.target.is_none()
                && (c.func_name == operators::LOGICAL_AND
                    || c.func_name == operators::LOGICAL_OR)
                && c.args.len() == 2
                && is_accu(&c.args[0]) =>
        {
            Shape::Fold
        }
        _ if is_append(step) => Shape::Append,
        Expr::Call(c)
            if c.func_name == operators::CONDITIONAL
                && c.target.is_none()
                && matches!(c.args.as_slice(), [_, s, o] if is_append(s) && is_accu(o)) =>
        {
            Shape::Append
        }
        _ => Shape::Other,
    }
}

/// Meters an append step in place: its guard and each appended element charge, the shape
/// the interpreter appends in place stays.
fn metered_append(mut step: IdedExpr) -> IdedExpr {
    let Expr::Call(call) = &mut step.expr else {
        return step;
    };
    if call.func_name == operators::CONDITIONAL {
        let guard = std::mem::take(&mut call.args[0]);
        call.args[0] = meter(metered_tree(guard));
        let inner = std::mem::take(&mut call.args[1]);
        call.args[1] = metered_append(inner);
    } else if let Some(IdedExpr {
        expr: Expr::List(list),
        ..
    }) = call.args.get_mut(1)
    {
        list.elements = std::mem::take(&mut list.elements)
            .into_iter()
            .map(|e| meter(metered_tree(e)))
            .collect();
    }
    step
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
    input_refs: Vec<(String, usize)>,
    reads: Reads,
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

    /// The variable `e` names, when it is a free (not loop-bound) one.
    fn variable<'e>(&self, e: &'e IdedExpr) -> Option<&'e str> {
        match &e.expr {
            Expr::Ident(name) if self.is_free(name) && VARIABLES.contains(&name.as_str()) => {
                Some(name)
            }
            _ => None,
        }
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
                } else if let Some(read) = self.reads.var(name) {
                    // The variable as a whole.
                    *read = Read::Whole;
                } else {
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
            Expr::Select(select) => match self.variable(&select.operand) {
                Some("steps") => {
                    let at = self.offset(&select.operand);
                    self.step_refs.push((select.field.clone(), at));
                }
                Some(var) => {
                    if var == "inputs" {
                        let at = self.offset(&select.operand);
                        self.input_refs.push((select.field.clone(), at));
                    }
                    if let Some(read) = self.reads.var(var) {
                        read.add_key(&select.field);
                    }
                }
                None => self.expr(&select.operand),
            },
            Expr::Call(call) => {
                // `v['key']`, `v[?'key']` and `v.?key`: one key of a variable.
                let keyed = [
                    operators::INDEX,
                    operators::OPT_INDEX,
                    operators::OPT_SELECT,
                ]
                .contains(&call.func_name.as_str())
                    && call.target.is_none()
                    && call.args.len() == 2;
                if keyed && let Some(var) = self.variable(&call.args[0]) {
                    let at = self.offset(&call.args[0]);
                    match (&call.args[1].expr, var) {
                        (Expr::Literal(LiteralValue::String(key)), "steps") => {
                            self.step_refs.push((key.inner().to_owned(), at));
                        }
                        (Expr::Literal(LiteralValue::String(key)), var) => {
                            if var == "inputs" {
                                self.input_refs.push((key.inner().to_owned(), at));
                            }
                            if let Some(read) = self.reads.var(var) {
                                read.add_key(key.inner());
                            }
                        }
                        (_, "steps") => self.errors.push(ExprError {
                            offset: at,
                            message: "steps must be indexed by a literal step name, as in \
                                      steps['fetch-data']; computed names are not allowed"
                                .to_owned(),
                        }),
                        (_, _) => {
                            self.expr(&call.args[0]);
                            self.expr(&call.args[1]);
                        }
                    }
                    return;
                }
                // `lists.range(3)`, `strings.quote(s)`, `optional.of(x)`: a namespaced
                // function, whose namespace is no variable.
                let namespaced = matches!(
                    call.target.as_deref().map(|t| &t.expr),
                    Some(Expr::Ident(ns)) if self.is_free(ns)
                        && functions::function_names().contains(&format!("{ns}.{}", call.func_name).as_str())
                );
                if let Some(target) = call.target.as_deref().filter(|_| !namespaced) {
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

/// A JSON value that the evaluations reading it share, with its size as JSON.
#[derive(Debug, Clone)]
pub struct Shared {
    pub value: Arc<serde_json::Value>,
    /// Its length as JSON text.
    pub bytes: usize,
}

impl Shared {
    pub fn new(value: serde_json::Value) -> Shared {
        let bytes = json_len(&value);
        Shared {
            value: Arc::new(value),
            bytes,
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            value: Arc::new(serde_json::Value::Null),
            bytes: 4,
        }
    }
}

pub use crate::model::json_len;

/// What expressions see of a finished step: `steps.NAME.output`, `.error`, `.status`.
#[derive(Debug, Clone)]
pub struct StepView {
    pub output: Option<Shared>,
    pub error: Option<String>,
    pub status: &'static str,
}

/// The values expressions can read.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub inputs: Shared,
    /// Finished steps by name.
    pub steps: BTreeMap<String, StepView>,
    pub trigger: Shared,
    pub env: Shared,
    pub execution: Shared,
    /// In a tool's params only: `{name, input}`.
    pub tool: Shared,
}

impl Scope {
    /// The JSON size of what `reads` binds: whether an evaluation is small can be judged
    /// before anything is bound.
    pub fn weight(&self, reads: &Reads) -> usize {
        let mut total = 0;
        for (i, read) in reads.0.iter().enumerate() {
            total += match (i, read) {
                (_, Read::Nothing) => 0,
                (1, Read::Keys(names)) => names
                    .iter()
                    .filter_map(|n| self.steps.get(n))
                    .map(|s| s.output.as_ref().map_or(2, |o| o.bytes) + 32)
                    .sum(),
                (1, Read::Whole) => self
                    .steps
                    .values()
                    .map(|s| s.output.as_ref().map_or(2, |o| o.bytes) + 32)
                    .sum(),
                (i, _) => self.variable(i).map_or(0, |v| v.bytes),
            };
        }
        total
    }

    fn variable(&self, i: usize) -> Option<&Shared> {
        match i {
            0 => Some(&self.inputs),
            2 => Some(&self.trigger),
            3 => Some(&self.env),
            4 => Some(&self.execution),
            5 => Some(&self.tool),
            _ => None,
        }
    }

    /// A CEL context holding what `reads` reads of this scope. Its values borrow the
    /// scope's strings instead of copying them.
    pub fn context<'v>(&'v self, reads: &Reads) -> cel::Context<'v, 'v> {
        let mut ctx = cel::Context::with_env(functions::env());
        for (i, name) in VARIABLES.iter().enumerate() {
            let read = &reads.0[i];
            if *read == Read::Nothing {
                continue;
            }
            let value: Box<dyn Val + 'v> = if i == 1 {
                let wanted = |n: &String| match read {
                    Read::Keys(keys) => keys.contains(n),
                    _ => true,
                };
                let map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = self
                    .steps
                    .iter()
                    .filter(|(n, _)| wanted(n))
                    .map(|(n, step)| (CelMapKey::from(n.as_str()), step_val(step)))
                    .collect();
                Box::new(CelMap::from(map))
            } else {
                let shared = self
                    .variable(i)
                    .expect("every variable but steps is shared");
                match (read, shared.value.as_ref()) {
                    (Read::Keys(keys), serde_json::Value::Object(object)) => {
                        let map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = keys
                            .iter()
                            .filter_map(|k| object.get_key_value(k.as_str()))
                            .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                            .collect();
                        Box::new(CelMap::from(map))
                    }
                    (_, value) => json_val(value),
                }
            };
            ctx.add_variable_as_val(*name, value);
        }
        ctx
    }
}

fn step_val<'v>(step: &'v StepView) -> Box<dyn Val + 'v> {
    static EMPTY: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| serde_json::json!({}));
    let mut map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = HashMap::with_capacity(3);
    let output = step.output.as_ref().map_or(&*EMPTY, |o| o.value.as_ref());
    map.insert(CelMapKey::from("output"), json_val(output));
    map.insert(
        CelMapKey::from("error"),
        match &step.error {
            Some(e) => Box::new(CelString::from(e.as_str())),
            None => Box::new(CelNull),
        },
    );
    map.insert(
        CelMapKey::from("status"),
        Box::new(CelString::from(step.status)),
    );
    Box::new(CelMap::from(map))
}

/// A JSON value as CEL sees it: objects as maps, arrays as lists, integers as `int` when they
/// fit in an `i64` (else `double`), strings borrowed. As [`functions::json_to_value`].
pub fn json_val(json: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as Json;
    match json {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(f)) => Box::new(CelDouble::from(f)),
            (None, None) => Box::new(CelDouble::from(f64::NAN)),
        },
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        Json::Object(object) => Box::new(CelMap::from(
            object
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// Why an evaluation gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// The expression failed: a missing key, a wrong type, a function's error.
    Failed(String),
    /// It went over a limit; `message` says where.
    Limit { exceeded: Exceeded, message: String },
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Failed(m) | EvalError::Limit { message: m, .. } => f.write_str(m),
        }
    }
}

/// Runs `f` (evaluations with [`evaluate_in`] and [`render_in`]) on this thread under
/// `budget`. A limit it went over is the error, whatever `f` made of it.
pub fn run<T>(budget: Budget, f: impl FnOnce() -> Result<T, String>) -> Result<T, EvalError> {
    let (result, _used, exceeded) = budget::metered(budget, f);
    match (exceeded, result) {
        (None, result) => result.map_err(EvalError::Failed),
        (Some(exceeded), Err(message)) if message.contains(&exceeded.to_string()) => {
            Err(EvalError::Limit { exceeded, message })
        }
        (Some(exceeded), _) => Err(EvalError::Limit {
            message: exceeded.to_string(),
            exceeded,
        }),
    }
}

/// Evaluates a compiled expression to JSON in `ctx` (a [`Scope::context`] holding at least
/// what it reads).
pub fn evaluate_in(
    compiled: &Compiled,
    ctx: &cel::Context<'_, '_>,
) -> Result<serde_json::Value, String> {
    let value = cel::Value::resolve(&compiled.expr, ctx);
    if let Some(exceeded) = budget::exceeded() {
        return Err(format!("evaluating {:?}: {exceeded}", compiled.source));
    }
    let value = value.map_err(|e| format!("evaluating {:?}: {e}", compiled.source))?;
    value.json().map_err(|e| {
        format!(
            "evaluating {:?}: the result cannot be represented as JSON: {e}",
            compiled.source
        )
    })
}

/// Renders a template in `ctx`: a single expression keeps its type, anything else becomes
/// a string.
pub fn render_in(
    template: &Template,
    ctx: &cel::Context<'_, '_>,
) -> Result<serde_json::Value, String> {
    if let [Segment::Expr(c, _)] = template.segments.as_slice() {
        return evaluate_in(c, ctx);
    }
    let mut out = String::new();
    for segment in &template.segments {
        match segment {
            Segment::Text(t) => out.push_str(t),
            Segment::Expr(c, _) => match evaluate_in(c, ctx)? {
                serde_json::Value::String(s) => out.push_str(&s),
                serde_json::Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
        budget::reserve(0).map_err(|e| e.to_string())?;
    }
    Ok(serde_json::Value::String(out))
}

impl Template {
    /// What its expressions read.
    pub fn reads(&self) -> Reads {
        let mut reads = Reads::default();
        for segment in &self.segments {
            if let Segment::Expr(c, _) = segment {
                reads.merge(c.reads());
            }
        }
        reads
    }
}

/// Evaluates one expression against `scope` under `budget`, on this thread.
pub fn evaluate(
    compiled: &Compiled,
    scope: &Scope,
    budget: Budget,
) -> Result<serde_json::Value, EvalError> {
    let ctx = scope.context(compiled.reads());
    run(budget, || evaluate_in(compiled, &ctx))
}

/// Renders a template against `scope` under `budget`, on this thread.
pub fn render(
    template: &Template,
    scope: &Scope,
    budget: Budget,
) -> Result<serde_json::Value, EvalError> {
    let ctx = scope.context(&template.reads());
    run(budget, || render_in(template, &ctx))
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
    fn namespaced_functions_are_not_variables() {
        for source in [
            "lists.range(3)",
            "strings.quote('a')",
            "optional.of(1).hasValue()",
        ] {
            assert!(compile(source).is_ok(), "{source}");
        }
        let err = compile("lists.nothing(3)").unwrap_err();
        assert!(
            err[0].message.contains("unknown variable \"lists\""),
            "{err:?}"
        );
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

    fn scope() -> Scope {
        let mut scope = Scope {
            inputs: Shared::new(json!({"n": 3, "name": "x", "l": [1, 2, 3]})),
            ..Scope::default()
        };
        scope.steps.insert(
            "a".to_owned(),
            StepView {
                output: Some(Shared::new(json!({"total": 7}))),
                error: None,
                status: "completed",
            },
        );
        scope
    }

    fn budget() -> Budget {
        Budget::new(&budget::ExprLimits::default())
    }

    #[test]
    fn rendering_keeps_types_for_single_expressions() {
        let scope = scope();
        let t = parse_template("{{ inputs.n + 1 }}").unwrap().unwrap();
        assert_eq!(render(&t, &scope, budget()).unwrap(), json!(4));
        let t = parse_template("{{ inputs.name }}-{{ steps.a.output.total }}")
            .unwrap()
            .unwrap();
        assert_eq!(render(&t, &scope, budget()).unwrap(), json!("x-7"));
        let c = compile("steps.a.output.total > inputs.n").unwrap();
        assert_eq!(evaluate(&c, &scope, budget()).unwrap(), json!(true));
    }

    #[test]
    fn only_what_is_read_is_bound() {
        let c = compile("inputs.n + size(inputs['l'])").unwrap();
        assert_eq!(
            c.reads().0[0],
            Read::Keys(BTreeSet::from(["l".to_owned(), "n".to_owned()]))
        );
        assert_eq!(evaluate(&c, &scope(), budget()).unwrap(), json!(6));
        // A key that is not there fails as it would with the whole map bound.
        let c = compile("has(inputs.missing) || inputs.missing == 1").unwrap();
        let err = evaluate(&c, &scope(), budget()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // A whole use binds the whole variable.
        let c = compile("size(inputs) == 3 && inputs.n == 3").unwrap();
        assert_eq!(c.reads().0[0], Read::Whole);
        assert_eq!(evaluate(&c, &scope(), budget()).unwrap(), json!(true));
        // A loop variable named like a variable is not the variable.
        let c = compile("[1].map(inputs, inputs + 1)[0] == 2").unwrap();
        assert_eq!(c.reads().0[0], Read::Nothing);
        assert_eq!(evaluate(&c, &scope(), budget()).unwrap(), json!(true));
        let c = compile("steps.a.output.total").unwrap();
        assert_eq!(c.reads().0[1], Read::Keys(BTreeSet::from(["a".to_owned()])));
        assert!(scope().weight(c.reads()) > 0);
        assert_eq!(scope().weight(&Reads::default()), 0);
    }

    #[test]
    fn loops_keep_their_results_when_metered() {
        let scope = scope();
        for (source, expected) in [
            ("inputs.l.map(x, x * 2)", json!([2, 4, 6])),
            ("inputs.l.map(x, x > 1, x * 10)", json!([20, 30])),
            ("inputs.l.filter(x, x != 2)", json!([1, 3])),
            ("inputs.l.all(x, x > 0)", json!(true)),
            ("inputs.l.exists(x, x == 3)", json!(true)),
            ("inputs.l.exists_one(x, x >= 2)", json!(false)),
            ("inputs.l.sortBy(x, -x)", json!([3, 2, 1])),
            // An error that a later element decides away, as CEL says.
            ("[0, 1].exists(x, 1 / x == 1)", json!(true)),
            ("[0, -1].all(x, 1 / x > 0)", json!(false)),
            ("default(inputs.missing, 5)", json!(5)),
        ] {
            let c = compile(source).unwrap();
            assert_eq!(
                evaluate(&c, &scope, budget()).unwrap(),
                expected,
                "{source}"
            );
        }
    }

    #[test]
    fn every_iteration_of_every_loop_is_charged() {
        let limits = budget::ExprLimits {
            max_cost: 50_000,
            ..budget::ExprLimits::default()
        };
        let scope = Scope {
            inputs: Shared::new(json!({"l": (0..1000).collect::<Vec<_>>()})),
            ..Scope::default()
        };
        for source in [
            "inputs.l.all(x, inputs.l.all(y, x + y >= 0))",
            "inputs.l.exists(x, inputs.l.exists(y, x + y < 0))",
            "inputs.l.map(x, inputs.l.map(y, y)).size()",
            "inputs.l.filter(x, inputs.l.filter(y, true).size() > 0).size()",
            "inputs.l.exists_one(x, inputs.l.exists_one(y, y == x))",
            "inputs.l.sortBy(x, inputs.l.filter(y, y < x).size()).size()",
            // A swallowed error does not let the loop go on.
            "inputs.l.all(x, inputs.l.all(y, x + y >= 0)) || true",
            "default(inputs.l.all(x, inputs.l.all(y, x + y >= 0)), true)",
        ] {
            let c = compile(source).unwrap();
            let start = std::time::Instant::now();
            let err = evaluate(&c, &scope, Budget::new(&limits)).unwrap_err();
            assert!(
                matches!(
                    err,
                    EvalError::Limit {
                        exceeded: Exceeded::Cost { limit: 50_000 },
                        ..
                    }
                ),
                "{source}: {err:?}"
            );
            assert!(err.to_string().contains("MANTLE_EXPR_MAX_COST"), "{err}");
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{source}"
            );
        }
        // Copies of a list are bytes held: that limit stops them first.
        let c = compile("inputs.l.map(x, inputs.l).size()").unwrap();
        let err = evaluate(&c, &scope, Budget::new(&limits)).unwrap_err();
        assert!(
            matches!(
                err,
                EvalError::Limit {
                    exceeded: Exceeded::Bytes { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("MANTLE_EXPR_MAX_VALUE_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn functions_that_build_large_values_check_first() {
        let limits = budget::ExprLimits {
            max_bytes: 1 << 20,
            ..budget::ExprLimits::default()
        };
        let scope = Scope {
            inputs: Shared::new(json!({"s": "a".repeat(45_000), "l": vec!["x"; 1000]})),
            ..Scope::default()
        };
        for source in [
            // 45 000 × 45 000 bytes.
            "size(inputs.s.replace('a', inputs.s))",
            "size(inputs.s.replace('', inputs.s))",
            "size(inputs.l.join(inputs.s))",
            "size(lists.range(1000000))",
            "size(jsonEncode(inputs.l.map(x, inputs.s)))",
            "inputs.l.map(x, inputs.s + inputs.s).size()",
        ] {
            let c = compile(source).unwrap();
            let start = std::time::Instant::now();
            let err = evaluate(&c, &scope, Budget::new(&limits)).unwrap_err();
            assert!(
                matches!(
                    err,
                    EvalError::Limit {
                        exceeded: Exceeded::Bytes { .. },
                        ..
                    }
                ),
                "{source}: {err:?}"
            );
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{source}"
            );
        }
        // Within the budget they work as before.
        for (source, expected) in [
            ("'banana'.replace('a', 'o')", json!("bonono")),
            ("'banana'.replace('a', 'o', 2)", json!("bonona")),
            ("['a', 'b'].join('-')", json!("a-b")),
            ("['a', 'b'].join()", json!("ab")),
            ("[1, 2, 2, 1].distinct()", json!([1, 2])),
            ("['b', 'a', 'b'].distinct()", json!(["b", "a"])),
            ("[[1], [1], 2].distinct()", json!([[1], 2])),
            ("lists.range(3)", json!([0, 1, 2])),
            ("'abc123'.matches('[0-9]+$')", json!(true)),
            ("matches('abc', '^b')", json!(false)),
        ] {
            let c = compile(source).unwrap();
            assert_eq!(
                evaluate(&c, &scope, Budget::new(&limits)).unwrap(),
                expected,
                "{source}"
            );
        }
        let c = compile("'a'.matches('(')").unwrap();
        let err = evaluate(&c, &scope, Budget::new(&limits)).unwrap_err();
        assert!(matches!(err, EvalError::Failed(_)), "{err:?}");
        assert!(err.to_string().contains("not a valid regex"), "{err}");
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
