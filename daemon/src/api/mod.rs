//! The gRPC API: one file per service, plus the layers, conversions and the single error
//! mapping. This is the only module that imports tonic or mantle-proto. Each method
//! unwraps the request, calls one domain function and converts the result back.

mod audit;
mod convert;
mod definition;
mod error;
mod execution;
mod layers;
mod methods;
mod secret;
mod system;
mod tenant;
mod trigger;
mod webhook;

use std::future::Future;

use mantle_proto::v1::audit_service_server::AuditServiceServer;
use mantle_proto::v1::definition_service_server::DefinitionServiceServer;
use mantle_proto::v1::execution_service_server::ExecutionServiceServer;
use mantle_proto::v1::secret_service_server::SecretServiceServer;
use mantle_proto::v1::system_service_server::SystemServiceServer;
use mantle_proto::v1::tenant_service_server::TenantServiceServer;
use mantle_proto::v1::trigger_service_server::TriggerServiceServer;
use mantle_proto::v1::webhook_service_server::WebhookServiceServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::auth::{Authenticator, Caller};
use crate::definitions::Definitions;
use crate::executions::Executions;
use crate::health::Readiness;
use crate::store::Backend;
use crate::tenancy::Tenancy;

/// gRPC service names reported by `grpc.health.v1.Health`.
pub const SERVICE_NAMES: [&str; 8] = [
    "mantle.v1.TenantService",
    "mantle.v1.SystemService",
    "mantle.v1.DefinitionService",
    "mantle.v1.ExecutionService",
    "mantle.v1.SecretService",
    "mantle.v1.AuditService",
    "mantle.v1.WebhookService",
    "mantle.v1.TriggerService",
];

/// What the API serves.
pub struct ApiContext {
    pub authenticator: Authenticator,
    pub limiter: crate::tenancy::ratelimit::RateLimiter,
    pub audit: crate::tenancy::audit::Audit,
    /// For read-only listings that need no domain service of their own.
    pub store: std::sync::Arc<dyn crate::store::Store>,
    pub tenancy: Tenancy,
    pub definitions: Definitions,
    pub executions: Executions,
    pub secrets: crate::secrets::Secrets,
    pub triggers: crate::triggers::Triggers,
    pub backend: Backend,
    pub readiness: Readiness,
    /// The plain HTTP routes served on the same port.
    pub http: axum::Router,
    /// Fires when the daemon shuts down: open watch streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The authenticated caller, put in place by the auth layer.
fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

/// Serves gRPC and HTTP on `listener` until `shutdown` completes, then drains open
/// requests.
pub async fn serve(
    ctx: ApiContext,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health_reporter, ctx.readiness.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mantle_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mantle_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let routes = Routes::from(ctx.http)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TenantServiceServer::new(tenant::TenantApi {
            tenancy: ctx.tenancy,
            limiter: ctx.limiter.clone(),
        }))
        .add_service(DefinitionServiceServer::new(definition::DefinitionApi {
            definitions: ctx.definitions,
        }))
        .add_service(ExecutionServiceServer::new(execution::ExecutionApi {
            executions: ctx.executions,
            shutdown: ctx.shutdown,
        }))
        .add_service(SecretServiceServer::new(secret::SecretApi {
            secrets: ctx.secrets,
        }))
        .add_service(TriggerServiceServer::new(trigger::TriggerApi {
            triggers: ctx.triggers,
        }))
        .add_service(WebhookServiceServer::new(webhook::WebhookApi {
            store: ctx.store.clone(),
        }))
        .add_service(AuditServiceServer::new(audit::AuditApi {
            audit: ctx.audit.clone(),
        }))
        .add_service(SystemServiceServer::new(system::SystemApi {
            backend: ctx.backend,
        }));

    tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(layers::MetricsLayer)
        .layer(layers::AuthLayer {
            authenticator: ctx.authenticator,
            limiter: ctx.limiter,
            audit: ctx.audit.clone(),
        })
        .add_routes(routes)
        // Without TCP_NODELAY an answer larger than one segment waits ~40 ms for the
        // client's delayed ACK (Nagle's algorithm).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Mirrors readiness into gRPC health, overall and per service.
async fn report_health(reporter: tonic_health::server::HealthReporter, readiness: Readiness) {
    let mut rx = readiness.subscribe();
    loop {
        let status = if *rx.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        metrics::gauge!("mantle_database_up").set(if status == ServingStatus::Serving {
            1.0
        } else {
            0.0
        });
        reporter.set_service_status("", status).await;
        for name in SERVICE_NAMES {
            reporter.set_service_status(name, status).await;
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
}
