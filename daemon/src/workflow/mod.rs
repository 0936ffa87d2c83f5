//! Workflow definitions: YAML with positions, validation, CEL and templates, the step DAG,
//! normalization and plans.

pub mod budget;
pub mod cron;
pub mod dag;
pub mod expr;
pub mod functions;
pub mod load;
pub mod plan;
pub mod problem;
pub mod spec;
pub mod yaml;

pub use load::{Loaded, load};
pub use problem::Problem;
pub use spec::WorkflowSpec;

#[cfg(test)]
mod proptests;
