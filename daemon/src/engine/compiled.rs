//! A workflow version prepared for running: every expression and template compiled once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::workflow::budget::{self, Budget, Exceeded};
use crate::workflow::expr::{self, Compiled, Reads, Scope, Template};
use crate::workflow::spec::{RetrySpec, StepSpec, WorkflowSpec};

/// A param value with its templates compiled.
#[derive(Debug)]
pub enum ParamTree {
    Literal(Value),
    Template(Template),
    List(Vec<ParamTree>),
    Map(Vec<(String, ParamTree)>),
}

impl ParamTree {
    fn compile(value: &Value) -> Result<ParamTree, String> {
        Ok(match value {
            Value::String(s) => match expr::parse_template(s) {
                Ok(Some(t)) => ParamTree::Template(t),
                Ok(None) => ParamTree::Literal(value.clone()),
                Err(errors) => {
                    return Err(errors
                        .into_iter()
                        .map(|e| e.message)
                        .collect::<Vec<_>>()
                        .join("; "));
                }
            },
            Value::Array(items) => ParamTree::List(
                items
                    .iter()
                    .map(ParamTree::compile)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => ParamTree::Map(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), ParamTree::compile(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => ParamTree::Literal(other.clone()),
        })
    }

    /// Evaluates every template in `ctx`; `path` names the param in errors.
    pub fn render(&self, ctx: &cel::Context<'_, '_>, path: &str) -> Result<Value, String> {
        match self {
            ParamTree::Literal(v) => Ok(v.clone()),
            ParamTree::Template(t) => expr::render_in(t, ctx).map_err(|e| format!("{path}: {e}")),
            ParamTree::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, p)| p.render(ctx, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            ParamTree::Map(entries) => entries
                .iter()
                .map(|(k, p)| Ok((k.clone(), p.render(ctx, &format!("{path}.{k}"))?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(Value::Object),
        }
    }

    /// Adds what its templates read to `reads`.
    fn reads(&self, reads: &mut Reads) {
        match self {
            ParamTree::Literal(_) => {}
            ParamTree::Template(t) => reads.merge(&t.reads()),
            ParamTree::List(items) => items.iter().for_each(|p| p.reads(reads)),
            ParamTree::Map(entries) => entries.iter().for_each(|(_, p)| p.reads(reads)),
        }
    }
}

/// A tool of an `ai/completion` step, ready to run: its params are rendered per call, with
/// `tool.input` (and `inputs.tool_input`) set to the model's arguments.
#[derive(Debug)]
pub struct CompiledTool {
    pub name: String,
    pub action: String,
    pub kind: crate::connectors::ActionKind,
    pub credential: Option<String>,
    /// The action's timeout.
    pub timeout: std::time::Duration,
    pub params: Vec<(String, ParamTree)>,
    pub params_reads: Reads,
    /// As [`CompiledStep::heavy`].
    pub heavy: AtomicBool,
}

/// A tool's action runs this long at most when it gives no `timeout`.
pub const DEFAULT_TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl CompiledTool {
    /// Renders the tool's params under `budget` on this thread.
    pub fn prepare_params(
        &self,
        scope: &Scope,
        budget: Budget,
    ) -> (
        Result<serde_json::Map<String, Value>, String>,
        Option<Exceeded>,
    ) {
        let ctx = scope.context(&self.params_reads);
        let (params, _, exceeded) = budget::metered(budget, || {
            self.params
                .iter()
                .map(|(k, p)| {
                    Ok((
                        k.clone(),
                        p.render(&ctx, &format!("tools.{}.params.{k}", self.name))?,
                    ))
                })
                .collect()
        });
        (params, exceeded)
    }
}

/// Takes the tools out of an `ai/completion` step's params: each tool's `params` compiled
/// for rendering per call; the rest of each tool stays in the step's params.
fn take_tools(
    step: &str,
    params: &mut serde_json::Map<String, Value>,
    actions: &crate::connectors::Registry,
) -> Result<Vec<CompiledTool>, String> {
    let Some(Value::Array(tools)) = params.get_mut("tools") else {
        return Ok(Vec::new());
    };
    let mut compiled = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter_mut().enumerate() {
        let at = format!("step {step}: params.tools[{i}]");
        let Some(tool) = tool.as_object_mut() else {
            return Err(format!("{at}: not a map"));
        };
        let text = |k: &str| tool.get(k).and_then(Value::as_str).map(str::to_owned);
        let name = text("name").ok_or_else(|| format!("{at}.name: missing"))?;
        let action = text("action").ok_or_else(|| format!("{at}.action: missing"))?;
        let kind = actions
            .get(&action)
            .ok_or_else(|| format!("{at}.action: unknown action {action:?}"))?
            .spec
            .kind();
        let timeout = match text("timeout") {
            Some(t) => crate::duration::parse(&t).map_err(|e| format!("{at}.timeout: {e}"))?,
            None => DEFAULT_TOOL_TIMEOUT,
        };
        let credential = text("credential");
        let params = match tool.remove("params") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        ParamTree::compile(v).map_err(|e| format!("{at}.params.{k}: {e}"))?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?,
            None => Vec::new(),
            Some(_) => return Err(format!("{at}.params: not a map")),
        };
        let mut params_reads = Reads::default();
        params.iter().for_each(|(_, p)| p.reads(&mut params_reads));
        compiled.push(CompiledTool {
            name,
            action,
            kind,
            credential,
            timeout,
            params,
            params_reads,
            heavy: AtomicBool::new(false),
        });
    }
    Ok(compiled)
}

/// One step, ready to run.
#[derive(Debug)]
pub struct CompiledStep {
    pub spec: StepSpec,
    /// How the engine runs its action.
    pub kind: crate::connectors::ActionKind,
    /// Whether its output's `message` is a log line (see `ActionSpec::logs`).
    pub logs: bool,
    pub condition: Option<Compiled>,
    pub params: Vec<(String, ParamTree)>,
    /// Its action keeps its progress and calls others (`ai/completion`): its attempts get a
    /// [`crate::connectors::Progress`].
    pub keeps_progress: bool,
    /// The tools of such an action.
    pub tools: Arc<Vec<CompiledTool>>,
    pub retry: RetrySpec,
    /// The steps it depends on (`spec.needs`), by index.
    pub needs: Vec<usize>,
    /// What its `if` reads, and what its params read.
    pub condition_reads: Reads,
    pub params_reads: Reads,
    /// Set once its expressions needed more than the small budget of the async runtime:
    /// from then on they are evaluated in the CPU pool at once (see `engine::eval`).
    pub heavy: AtomicBool,
}

/// What a step needs evaluated before it starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    /// Its `if`: `None` when it has none or it was not asked for.
    pub condition: Option<Result<bool, String>>,
    /// Its params: `None` when not asked for, or when the `if` did not hold.
    pub params: Option<Result<serde_json::Map<String, Value>, String>>,
}

impl CompiledStep {
    pub fn render_params(
        &self,
        ctx: &cel::Context<'_, '_>,
    ) -> Result<serde_json::Map<String, Value>, String> {
        self.params
            .iter()
            .map(|(k, p)| Ok((k.clone(), p.render(ctx, &format!("params.{k}"))?)))
            .collect()
    }

    /// Evaluates, under `budget` on this thread, the step's `if` (when `condition`) and then,
    /// when it holds, its params (when `params`). Errors, a limit's included, are in the
    /// result; the limit that was exceeded, if any, is returned beside it.
    pub fn prepare(
        &self,
        scope: &Scope,
        budget: Budget,
        condition: bool,
        params: bool,
    ) -> (Prepared, Option<Exceeded>) {
        let mut reads = Reads::default();
        if condition {
            reads.merge(&self.condition_reads);
        }
        if params {
            reads.merge(&self.params_reads);
        }
        let ctx = scope.context(&reads);
        let (prepared, _, exceeded) = budget::metered(budget, || {
            let mut prepared = Prepared::default();
            if condition && let Some(c) = &self.condition {
                let holds = expr::evaluate_in(c, &ctx).and_then(|v| match v {
                    Value::Bool(b) => Ok(b),
                    other => Err(format!("expected true or false, got {other}")),
                });
                let go_on = holds == Ok(true);
                prepared.condition = Some(holds);
                if !go_on {
                    return prepared;
                }
            }
            if params {
                prepared.params = Some(self.render_params(&ctx));
            }
            prepared
        });
        (prepared, exceeded)
    }

    /// Renders the step's params under `budget` on this thread.
    pub fn prepare_params(
        &self,
        scope: &Scope,
        budget: Budget,
    ) -> (
        Result<serde_json::Map<String, Value>, String>,
        Option<Exceeded>,
    ) {
        let (prepared, exceeded) = self.prepare(scope, budget, false, true);
        (
            prepared
                .params
                .unwrap_or_else(|| Err("params were not rendered".to_owned())),
            exceeded,
        )
    }
}

/// A workflow version ready to run.
#[derive(Debug)]
pub struct CompiledWorkflow {
    pub spec: WorkflowSpec,
    pub steps: Vec<CompiledStep>,
    pub outputs: Vec<(String, Compiled)>,
    /// What the outputs read.
    pub outputs_reads: Reads,
    /// As [`CompiledStep::heavy`], for the outputs.
    pub outputs_heavy: AtomicBool,
}

impl CompiledWorkflow {
    /// Evaluates the workflow's outputs under `budget` on this thread.
    pub fn evaluate_outputs(
        &self,
        scope: &Scope,
        budget: Budget,
    ) -> (
        Result<serde_json::Map<String, Value>, String>,
        Option<Exceeded>,
    ) {
        let ctx = scope.context(&self.outputs_reads);
        let (outputs, _, exceeded) = budget::metered(budget, || {
            self.outputs
                .iter()
                .map(|(name, c)| {
                    let value =
                        expr::evaluate_in(c, &ctx).map_err(|e| format!("output {name}: {e}"))?;
                    Ok((name.clone(), value))
                })
                .collect()
        });
        (outputs, exceeded)
    }
}

impl CompiledWorkflow {
    /// Compiles a stored spec. Expressions were validated when the version was applied, so
    /// an error here means the stored data is damaged.
    pub fn compile(spec: WorkflowSpec) -> Result<CompiledWorkflow, String> {
        crate::workflow::load::with_big_stack(move || Self::compile_here(spec))
    }

    /// [`CompiledWorkflow::compile`] on this thread, which must have a large stack (the CPU
    /// pool's threads do), against the built-in actions.
    pub fn compile_here(spec: WorkflowSpec) -> Result<CompiledWorkflow, String> {
        Self::compile_with(spec, crate::connectors::Registry::builtin())
    }

    /// [`CompiledWorkflow::compile_here`], finding the steps' actions in `actions`.
    pub fn compile_with(
        spec: WorkflowSpec,
        actions: &crate::connectors::Registry,
    ) -> Result<CompiledWorkflow, String> {
        {
            let mut steps = Vec::with_capacity(spec.steps.len());
            for s in &spec.steps {
                let condition = s
                    .condition
                    .as_deref()
                    .map(|c| {
                        expr::compile(c)
                            .map_err(|e| format!("step {}: if: {}", s.name, e[0].message))
                    })
                    .transpose()?;
                let action = actions
                    .get(&s.action)
                    .ok_or_else(|| format!("step {}: unknown action {:?}", s.name, s.action))?;
                let mut step_params = s.params.clone();
                let tools = if action.spec.tools {
                    take_tools(&s.name, &mut step_params, actions)?
                } else {
                    Vec::new()
                };
                let params = step_params
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            ParamTree::compile(v)
                                .map_err(|e| format!("step {}: params.{k}: {e}", s.name))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let condition_reads = condition
                    .as_ref()
                    .map(|c| c.reads().clone())
                    .unwrap_or_default();
                let mut params_reads = Reads::default();
                params.iter().for_each(|(_, p)| p.reads(&mut params_reads));
                steps.push(CompiledStep {
                    keeps_progress: action.spec.tools,
                    tools: Arc::new(tools),
                    kind: action.spec.kind(),
                    logs: action.spec.logs,
                    spec: s.clone(),
                    condition,
                    params,
                    retry: s.retry.clone().unwrap_or_default(),
                    needs: Vec::new(),
                    condition_reads,
                    params_reads,
                    heavy: AtomicBool::new(false),
                });
            }
            let outputs = spec
                .outputs
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        expr::compile(v).map_err(|e| format!("output {k}: {}", e[0].message))?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let index: BTreeMap<String, usize> = steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.spec.name.clone(), i))
                .collect();
            for step in &mut steps {
                step.needs = step
                    .spec
                    .needs
                    .iter()
                    .filter_map(|n| index.get(n).copied())
                    .collect();
            }
            let mut outputs_reads = Reads::default();
            outputs
                .iter()
                .for_each(|(_, c)| outputs_reads.merge(c.reads()));
            Ok(CompiledWorkflow {
                spec,
                steps,
                outputs,
                outputs_reads,
                outputs_heavy: AtomicBool::new(false),
            })
        }
    }
}

/// Checks start inputs against the workflow's declarations and applies defaults (taking the
/// given values, not copying them: inputs may be megabytes). Errors name the input, as
/// `inputs.NAME: …`.
pub fn resolve_inputs(
    spec: &WorkflowSpec,
    mut given: serde_json::Map<String, Value>,
) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    if let Some(name) = given.keys().find(|n| !spec.inputs.contains_key(*n)) {
        let declared: Vec<&str> = spec.inputs.keys().map(String::as_str).collect();
        let hint = crate::workflow::problem::suggestion(name, declared.iter().copied());
        return Err(format!(
            "inputs.{name}: the workflow declares no such input{hint}{}",
            if declared.is_empty() {
                String::new()
            } else {
                format!(" (declared: {})", declared.join(", "))
            }
        ));
    }
    for (name, decl) in &spec.inputs {
        match given.remove(name) {
            Some(v) => {
                if !decl.ty.admits(&v) {
                    return Err(format!(
                        "inputs.{name}: expected {}, got {}",
                        decl.ty.as_str(),
                        crate::workflow::problem::quote_value(&v)
                    ));
                }
                if let Some(allowed) = &decl.allowed
                    && !allowed.contains(&v)
                {
                    let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                    return Err(format!(
                        "inputs.{name}: {} is not one of {}",
                        crate::workflow::problem::quote_value(&v),
                        list.join(", ")
                    ));
                }
                out.insert(name.clone(), v);
            }
            None => match &decl.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None if decl.required => {
                    return Err(format!("inputs.{name}: required input is missing"));
                }
                None => {}
            },
        }
    }
    Ok(Value::Object(out))
}
