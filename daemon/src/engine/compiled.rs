//! A workflow version prepared for running: every expression and template compiled once.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::workflow::expr::{self, Compiled, Scope, Template};
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

    /// Evaluates every template; `path` names the param in errors.
    pub fn render(&self, scope: &Scope, path: &str) -> Result<Value, String> {
        match self {
            ParamTree::Literal(v) => Ok(v.clone()),
            ParamTree::Template(t) => expr::render(t, scope).map_err(|e| format!("{path}: {e}")),
            ParamTree::List(items) => items
                .iter()
                .enumerate()
                .map(|(i, p)| p.render(scope, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            ParamTree::Map(entries) => entries
                .iter()
                .map(|(k, p)| Ok((k.clone(), p.render(scope, &format!("{path}.{k}"))?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(Value::Object),
        }
    }
}

/// One step, ready to run.
#[derive(Debug)]
pub struct CompiledStep {
    pub spec: StepSpec,
    pub condition: Option<Compiled>,
    pub params: Vec<(String, ParamTree)>,
    pub retry: RetrySpec,
    /// The steps it depends on (`spec.needs`), by index.
    pub needs: Vec<usize>,
}

impl CompiledStep {
    pub fn render_params(&self, scope: &Scope) -> Result<serde_json::Map<String, Value>, String> {
        self.params
            .iter()
            .map(|(k, p)| Ok((k.clone(), p.render(scope, &format!("params.{k}"))?)))
            .collect()
    }
}

/// A workflow version ready to run.
#[derive(Debug)]
pub struct CompiledWorkflow {
    pub spec: WorkflowSpec,
    pub steps: Vec<CompiledStep>,
    pub outputs: Vec<(String, Compiled)>,
}

impl CompiledWorkflow {
    /// Compiles a stored spec. Expressions were validated when the version was applied, so
    /// an error here means the stored data is damaged.
    pub fn compile(spec: WorkflowSpec) -> Result<CompiledWorkflow, String> {
        crate::workflow::load::with_big_stack(move || {
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
                let params = s
                    .params
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            ParamTree::compile(v)
                                .map_err(|e| format!("step {}: params.{k}: {e}", s.name))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                steps.push(CompiledStep {
                    spec: s.clone(),
                    condition,
                    params,
                    retry: s.retry.clone().unwrap_or_default(),
                    needs: Vec::new(),
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
            Ok(CompiledWorkflow {
                spec,
                steps,
                outputs,
            })
        })
    }
}

/// Checks start inputs against the workflow's declarations and applies defaults.
/// Errors name the input, as `inputs.NAME: …`.
pub fn resolve_inputs(
    spec: &WorkflowSpec,
    given: &serde_json::Map<String, Value>,
) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    for name in given.keys() {
        if !spec.inputs.contains_key(name) {
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
    }
    for (name, decl) in &spec.inputs {
        match given.get(name) {
            Some(v) => {
                if !decl.ty.admits(v) {
                    return Err(format!(
                        "inputs.{name}: expected {}, got {v}",
                        decl.ty.as_str()
                    ));
                }
                if let Some(allowed) = &decl.allowed
                    && !allowed.contains(v)
                {
                    let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                    return Err(format!(
                        "inputs.{name}: {v} is not one of {}",
                        list.join(", ")
                    ));
                }
                out.insert(name.clone(), v.clone());
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
