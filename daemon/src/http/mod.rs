//! The plain HTTP routes served on the gRPC port: `/healthz`, `/readyz`, `/metrics`, and
//! `POST /hooks/<tenant>/<path>` for webhook triggers (`triggers::webhook`).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::health::Readiness;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct HttpState {
    readiness: Readiness,
    metrics: Metrics,
    triggers: crate::triggers::Triggers,
}

/// The HTTP router; unauthenticated, like Kubernetes probes and Prometheus expect
/// (webhook requests prove themselves with their trigger's secret). A webhook body is at
/// most `max_body` bytes.
pub fn router(
    readiness: Readiness,
    metrics: Metrics,
    triggers: crate::triggers::Triggers,
    max_body: usize,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/hooks/{tenant}/{*path}",
            post(hook).layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .with_state(HttpState {
            readiness,
            metrics,
            triggers,
        })
}

async fn hook(
    State(state): State<HttpState>,
    axum::extract::Path((tenant, path)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use crate::triggers::webhook::{Refused, Request};
    let headers = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let path = format!("/{path}");
    let outcome = state
        .triggers
        .receive(Request {
            tenant: &tenant,
            path: &path,
            headers,
            body: &body,
            now: chrono::Utc::now(),
        })
        .await;
    let error = |status: StatusCode, message: String| {
        (
            status,
            JSON,
            serde_json::json!({ "error": message }).to_string(),
        )
            .into_response()
    };
    match outcome {
        Ok(a) => (
            StatusCode::ACCEPTED,
            JSON,
            serde_json::json!({
                "execution_id": a.execution_id.to_string(),
                "duplicate": !a.new,
            })
            .to_string(),
        )
            .into_response(),
        Err(r @ Refused::NotFound) => error(StatusCode::NOT_FOUND, r.to_string()),
        Err(r @ Refused::Unauthenticated(_)) => error(StatusCode::UNAUTHORIZED, r.to_string()),
        Err(r @ Refused::Paused) => error(StatusCode::CONFLICT, r.to_string()),
        Err(Refused::RateLimited(after)) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                Refused::RateLimited(after).to_string(),
            );
            if let Ok(v) = after.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
        Err(Refused::Start(e)) => {
            use crate::error::{ErrorKind, ServiceError};
            let status = match e.kind() {
                ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
        Err(Refused::Unavailable(m)) => {
            tracing::warn!(error = %m, "webhook request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; retry".to_owned(),
            )
        }
    }
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
