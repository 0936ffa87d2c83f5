//! Typed Rust client for the Mantle daemon's gRPC API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mantle_client::Error> {
//! use mantle_client::{Address, Client, ClientOptions, resolve_token_from_env};
//!
//! let address = Address::parse("127.0.0.1:8080")?;
//! // --token / MANTLE_TOKEN, else the operator token file of the daemon at `address`.
//! let resolved = resolve_token_from_env(None, &address)?;
//! let mut options = ClientOptions::new(address);
//! options.token = resolved.token;
//! let client = Client::connect(options).await?;
//! let tenant = client.create_tenant("acme", "Acme Inc.").await?;
//! println!("created {}", tenant.name);
//! # Ok(())
//! # }
//! ```
//!
//! Every call carries `authorization: Bearer <token>` (and `x-mantle-tenant` when a tenant
//! is set). Calls failing with UNAVAILABLE are retried, and DEADLINE_EXCEEDED is retried
//! for reads; see [`RetryPolicy`].
//!
//! Executions: [`Client::start_execution`] answers at once; [`Client::wait_execution`]
//! (or [`Client::follow_execution`], which also reports each event) watches the
//! execution until it finishes, polling and re-watching when the stream drops.
//!
//! Listings follow pages up to an optional limit: [`Client::list_executions`] with an
//! [`ExecutionFilter`], [`Client::list_audit_events`] with an [`AuditFilter`] and
//! [`Client::list_webhook_deliveries`] with a [`DeliveryFilter`].
//!
//! Triggers: [`Client::list_triggers`], [`Client::pause_trigger`],
//! [`Client::resume_trigger`], and [`Client::fire_trigger`], which starts an execution now.
//!
//! A workflow file the daemon refuses (Validate/Plan/ApplyDefinition answering
//! INVALID_ARGUMENT with `mantle.v1.ValidationProblems` in the status details) is
//! [`Error::Invalid`]; [`Error::problems`] lists each problem with its line and column.

mod address;
mod client;
mod duration;
mod error;
mod execution;
mod filters;
mod retry;
mod token;

pub use address::{Address, DEFAULT_ADDRESS, is_local_host};
pub use client::{
    AuthChannel, AuthInterceptor, Client, ClientOptions, FollowOptions, FollowUpdate, HealthStatus,
    NewApiKey, TENANT_METADATA, datetime_to_timestamp, timestamp_to_datetime,
};
pub use duration::{format_duration, parse_duration};
pub use error::{
    Error, VALIDATION_PROBLEMS_TYPE_URL, code_words, format_status, validation_problems,
};
pub use execution::{
    ExecutionEvents, ExecutionFilter, execution_status_name, execution_status_str, is_terminal,
    parse_execution_status, step_status_name, step_status_str, terminal_status_of,
};
pub use filters::{AuditFilter, DeliveryFilter, DeliveryStatus};
pub use retry::RetryPolicy;
pub use token::{
    DATA_DIR_ENV, OPERATOR_TOKEN_FILE, OperatorToken, ResolvedToken, TOKEN_ENV, TokenEnv,
    TokenSource, data_dir, read_operator_token, resolve_token, resolve_token_from_env,
};

/// The generated protobuf messages and clients of package `mantle.v1`.
pub use mantle_proto::v1 as proto;

/// Version of this crate (and of `mantlectl`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
