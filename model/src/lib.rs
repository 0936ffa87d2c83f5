//! The passive types the domains and the store share: what an execution, a tenant, a
//! secret, a definition, a webhook delivery and a scope are, and the rate limit's
//! arithmetic. They depend on nothing else of the daemon, so the store depends on them and
//! not on the domains that use the store (each domain re-exports its own as `model`).

pub mod definition;
pub mod delivery;
pub mod execution;
pub mod rate;
pub mod scope;
pub mod secret;
pub mod tenant;
