//! The Mantle daemon: a durable workflow engine behind a gRPC control plane.
//!
//! Layers, from the outside in: `api` (gRPC) and `http` (probes, metrics) → `auth` and
//! `tenancy` (who may do what) → `store` (persistence, the only sqlx user). See
//! ARCHITECTURE.md for the invariants.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod cpu;
pub mod definitions;
pub mod duration;
pub mod engine;
pub mod error;
pub mod executions;
pub mod health;
pub mod http;
/// The passive types, a crate of their own (`mantle-model`).
pub use mantle_model as model;
pub mod retention;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tenancy;
#[cfg(test)]
mod testing;
pub mod triggers;
pub mod webhooks;
pub mod workflow;

/// Counts the heap bytes of metered threads: the bytes an expression evaluation holds are
/// known at every step of it (see `workflow::budget`). Elsewhere it is the system allocator.
#[global_allocator]
static ALLOCATOR: mantle_meter::Counting = mantle_meter::Counting;

/// The daemon's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
