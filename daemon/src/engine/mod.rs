//! The durable execution engine.

pub mod model;
