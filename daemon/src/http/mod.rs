//! The plain HTTP routes served on the gRPC port: `/healthz`, `/readyz`, `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::Readiness;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct HttpState {
    readiness: Readiness,
    metrics: Metrics,
}

/// The HTTP router; unauthenticated, like Kubernetes probes and Prometheus expect.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { readiness, metrics })
}

const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, JSON, r#"{"status":"ok"}"#)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, JSON, r#"{"status":"ok"}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            r#"{"status":"unavailable","reason":"database unreachable"}"#,
        )
    }
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
