//! The typed client: one gRPC channel, credentials attached to every call, retries.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mantle_proto::v1::audit_service_client::AuditServiceClient;
use mantle_proto::v1::definition_service_client::DefinitionServiceClient;
use mantle_proto::v1::execution_service_client::ExecutionServiceClient;
use mantle_proto::v1::secret_service_client::SecretServiceClient;
use mantle_proto::v1::system_service_client::SystemServiceClient;
use mantle_proto::v1::tenant_service_client::TenantServiceClient;
use mantle_proto::v1::trigger_service_client::TriggerServiceClient;
use mantle_proto::v1::webhook_service_client::WebhookServiceClient;
use mantle_proto::v1::{
    ActionInfo, AuditEvent, ListActionsRequest, ListAuditEventsRequest,
    ListWebhookDeliveriesRequest, WebhookDelivery,
};
use mantle_proto::v1::{
    ApiKey, ApplyDefinitionRequest, ApplyDefinitionResponse, CreateApiKeyRequest,
    CreateApiKeyResponse, CreateTenantRequest, Definition, DefinitionSummary, DefinitionVersion,
    DeleteDefinitionRequest, DeleteTenantRequest, GetDefinitionRequest, GetServerInfoRequest,
    GetTenantRequest, ListApiKeysRequest, ListDefinitionVersionsRequest, ListDefinitionsRequest,
    ListTenantsRequest, Plan, PlanDefinitionRequest, RevokeApiKeyRequest,
    RollbackDefinitionRequest, ServerInfo, Tenant, UpdateTenantRequest, ValidateDefinitionRequest,
    ValidateDefinitionResponse,
};
use mantle_proto::v1::{
    CancelExecutionRequest, CancelExecutionsRequest, DeleteExecutionRequest,
    DeleteExecutionsRequest, Execution, ExecutionEvent, ExecutionStatus, GetExecutionRequest,
    ListExecutionsRequest, ListStepAttemptsRequest, RetryExecutionRequest, StartExecutionRequest,
    StepAttempt, View, WatchExecutionRequest,
};
use mantle_proto::v1::{
    CreateSecretRequest, DeleteSecretRequest, GetSecretRequest, ListSecretsRequest,
    RotateEncryptionKeyRequest, RotateEncryptionKeyResponse, Secret, UpdateSecretRequest,
};
use mantle_proto::v1::{
    FireTriggerRequest, ListTriggersRequest, PauseTriggerRequest, ResumeTriggerRequest, Trigger,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::error_chain;
use crate::execution::{
    ExecutionEvents, is_terminal, is_transient_watch_error, rewatch_delay, terminal_status_of,
};
use crate::{Address, AuditFilter, DeliveryFilter, Error, ExecutionFilter, RetryPolicy};

/// Metadata key naming the tenant an operator key acts on.
pub const TENANT_METADATA: &str = "x-mantle-tenant";

/// How many items list calls ask for per page.
const PAGE_SIZE: i32 = 500;

/// The largest page the server hands out.
const MAX_PAGE_SIZE: usize = 1000;

/// How long a watch may stay silent before the execution is checked with GetExecution.
const WATCH_IDLE_CHECK: Duration = Duration::from_secs(30);

/// How long to wait for each missed event when catching up after a dropped watch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The channel type of every generated client this crate hands out.
pub type AuthChannel = InterceptedService<Channel, AuthInterceptor>;

/// How to reach and authenticate to the daemon.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where the daemon listens.
    pub address: Address,
    /// Bearer token sent as `authorization: Bearer <token>`; `None` sends no token.
    pub token: Option<String>,
    /// Tenant sent as `x-mantle-tenant` (lets operator keys act on another tenant).
    pub tenant: Option<String>,
    /// How long to wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Deadline of each attempt of a call; also sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    /// When to retry failed calls and connection attempts.
    pub retry: RetryPolicy,
}

impl ClientOptions {
    /// Options for `address` with no token, no tenant, a 5 s connect timeout, a 30 s
    /// request timeout and the default retry policy.
    pub fn new(address: Address) -> ClientOptions {
        ClientOptions {
            address,
            token: None,
            tenant: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// Adds `authorization: Bearer <token>` and `x-mantle-tenant` to every request.
#[derive(Clone, Default)]
pub struct AuthInterceptor {
    authorization: Option<MetadataValue<Ascii>>,
    tenant: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInterceptor")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl AuthInterceptor {
    /// Validates the token and tenant as metadata values. Empty values count as unset.
    pub fn new(token: Option<&str>, tenant: Option<&str>) -> Result<AuthInterceptor, Error> {
        let authorization = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {token}")
                        .parse()
                        .map_err(|_| Error::InvalidMetadata {
                            field: "token",
                            reason: "contains characters that cannot be sent in metadata"
                                .to_owned(),
                        })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let tenant = match tenant.map(str::trim).filter(|t| !t.is_empty()) {
            Some(tenant) => Some(tenant.parse().map_err(|_| Error::InvalidMetadata {
                field: "tenant",
                reason: "contains characters that cannot be sent in metadata".to_owned(),
            })?),
            None => None,
        };
        Ok(AuthInterceptor {
            authorization,
            tenant,
        })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(value) = &self.authorization {
            metadata.insert("authorization", value.clone());
        }
        if let Some(value) = &self.tenant {
            metadata.insert(TENANT_METADATA, value.clone());
        }
        Ok(request)
    }
}

/// The result of a gRPC health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// The server did not say.
    Unknown,
    /// The service answers requests.
    Serving,
    /// The service is up but cannot answer (for example the database is unreachable).
    NotServing,
    /// The server does not know the service (only from the streaming Watch call).
    ServiceUnknown,
}

impl HealthStatus {
    /// The protocol's name of the status, for example `SERVING`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Serving => "SERVING",
            HealthStatus::NotServing => "NOT_SERVING",
            HealthStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }

    fn from_proto(status: i32) -> HealthStatus {
        match ServingStatus::try_from(status) {
            Ok(ServingStatus::Serving) => HealthStatus::Serving,
            Ok(ServingStatus::NotServing) => HealthStatus::NotServing,
            Ok(ServingStatus::ServiceUnknown) => HealthStatus::ServiceUnknown,
            Ok(ServingStatus::Unknown) | Err(_) => HealthStatus::Unknown,
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to create with [`Client::create_api_key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewApiKey {
    /// Tenant the key acts on; empty creates an operator key.
    pub tenant: String,
    /// Free-form label.
    pub name: String,
    /// Scopes to grant; at least one.
    pub scopes: Vec<String>,
    /// When the key stops working; `None` means never.
    pub expire_time: Option<DateTime<Utc>>,
}

/// A connected client of the Mantle daemon. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    interceptor: AuthInterceptor,
    address: Address,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl Client {
    /// Connects to `address` (`host:port`, `http://…` or `https://…`) with an optional
    /// bearer token and default options.
    pub async fn connect_to(address: &str, token: Option<&str>) -> Result<Client, Error> {
        let mut options = ClientOptions::new(Address::parse(address)?);
        options.token = token.map(str::to_owned);
        Client::connect(options).await
    }

    /// Connects with `options`. Connection failures are retried per `options.retry`;
    /// the final failure is [`Error::Connect`], naming the address.
    pub async fn connect(options: ClientOptions) -> Result<Client, Error> {
        let interceptor =
            AuthInterceptor::new(options.token.as_deref(), options.tenant.as_deref())?;
        let endpoint = endpoint(&options)?;
        let mut attempt = 1;
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) if attempt < options.retry.max_attempts => {
                    tokio::time::sleep(options.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) => {
                    return Err(Error::Connect {
                        address: options.address.to_string(),
                        reason: connect_reason(&err),
                    });
                }
            }
        };
        Ok(Client {
            channel,
            interceptor,
            address: options.address,
            request_timeout: options.request_timeout,
            retry: options.retry,
        })
    }

    /// The daemon's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// A client sharing this connection that sends `token` instead (`None`: no token).
    pub fn with_token(&self, token: Option<&str>) -> Result<Client, Error> {
        let mut client = self.clone();
        client.interceptor.authorization = AuthInterceptor::new(token, None)?.authorization;
        Ok(client)
    }

    /// A client sharing this connection that sends `x-mantle-tenant: tenant` instead
    /// (`None`: no tenant metadata).
    pub fn with_tenant(&self, tenant: Option<&str>) -> Result<Client, Error> {
        let mut client = self.clone();
        client.interceptor.tenant = AuthInterceptor::new(None, tenant)?.tenant;
        Ok(client)
    }

    /// The generated TenantService client, with credentials attached.
    pub fn tenant_service(&self) -> TenantServiceClient<AuthChannel> {
        TenantServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated SystemService client, with credentials attached.
    pub fn system_service(&self) -> SystemServiceClient<AuthChannel> {
        SystemServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated DefinitionService client, with credentials attached.
    pub fn definition_service(&self) -> DefinitionServiceClient<AuthChannel> {
        DefinitionServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated ExecutionService client, with credentials attached.
    pub fn execution_service(&self) -> ExecutionServiceClient<AuthChannel> {
        ExecutionServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated SecretService client, with credentials attached.
    pub fn secret_service(&self) -> SecretServiceClient<AuthChannel> {
        SecretServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated AuditService client, with credentials attached.
    pub fn audit_service(&self) -> AuditServiceClient<AuthChannel> {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated TriggerService client, with credentials attached.
    pub fn trigger_service(&self) -> TriggerServiceClient<AuthChannel> {
        TriggerServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated WebhookService client, with credentials attached.
    pub fn webhook_service(&self) -> WebhookServiceClient<AuthChannel> {
        WebhookServiceClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// The generated grpc.health.v1 client.
    pub fn health_service(&self) -> HealthClient<AuthChannel> {
        HealthClient::with_interceptor(self.channel.clone(), self.interceptor.clone())
    }

    /// Runs one unary call with the deadline and retry policy. `idempotent_read` allows
    /// retrying DEADLINE_EXCEEDED.
    async fn call<Req, Resp, F, Fut>(
        &self,
        idempotent_read: bool,
        message: Req,
        mut send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut attempt = 1;
        loop {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(self.request_timeout);
            let result = match tokio::time::timeout(self.request_timeout, send(request)).await {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no response within {} s",
                    self.request_timeout.as_secs_f64()
                ))),
            };
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if self
                        .retry
                        .should_retry(status.code(), idempotent_read, attempt) =>
                {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// SystemService.GetServerInfo: the daemon's version and database, and who the caller is.
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        self.call(true, GetServerInfoRequest {}, |r| {
            let mut c = self.system_service();
            async move { c.get_server_info(r).await }
        })
        .await
    }

    /// grpc.health.v1 Check of `service`; `""` asks about the server as a whole.
    /// An unknown service name is a NOT_FOUND error.
    pub async fn health(&self, service: &str) -> Result<HealthStatus, Error> {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let response = self
            .call(true, request, |r| {
                let mut c = self.health_service();
                async move { c.check(r).await }
            })
            .await?;
        Ok(HealthStatus::from_proto(response.status))
    }

    /// Creates a tenant. `display_name` may be empty.
    pub async fn create_tenant(&self, name: &str, display_name: &str) -> Result<Tenant, Error> {
        self.create_tenant_with_settings(name, display_name, Default::default())
            .await
    }

    /// Creates a tenant with limits (0 and empty: none of its own).
    pub async fn create_tenant_with_settings(
        &self,
        name: &str,
        display_name: &str,
        settings: crate::proto::TenantSettings,
    ) -> Result<Tenant, Error> {
        let request = CreateTenantRequest {
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            settings: Some(settings),
        };
        self.call(false, request, |r| {
            let mut c = self.tenant_service();
            async move { c.create_tenant(r).await }
        })
        .await
    }

    /// Returns one tenant by name.
    pub async fn get_tenant(&self, name: &str) -> Result<Tenant, Error> {
        let request = GetTenantRequest {
            name: name.to_owned(),
        };
        self.call(true, request, |r| {
            let mut c = self.tenant_service();
            async move { c.get_tenant(r).await }
        })
        .await
    }

    /// Lists every tenant, following pages, ordered by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, Error> {
        let mut tenants = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListTenantsRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.tenant_service();
                    async move { c.list_tenants(r).await }
                })
                .await?;
            tenants.extend(page.tenants);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(tenants);
            }
        }
    }

    /// Changes a tenant's display name (`None` leaves it unchanged, `Some("")` clears it).
    pub async fn update_tenant(
        &self,
        name: &str,
        display_name: Option<&str>,
    ) -> Result<Tenant, Error> {
        self.update_tenant_settings(name, display_name, Default::default(), Vec::new())
            .await
    }

    /// Changes a tenant's display name and the settings named in `mask`
    /// (see `UpdateTenantRequest.settings_mask`; a named field set to 0 or empty clears it).
    pub async fn update_tenant_settings(
        &self,
        name: &str,
        display_name: Option<&str>,
        settings: crate::proto::TenantSettings,
        mask: Vec<String>,
    ) -> Result<Tenant, Error> {
        let request = UpdateTenantRequest {
            name: name.to_owned(),
            display_name: display_name.map(str::to_owned),
            settings: Some(settings),
            settings_mask: (!mask.is_empty()).then_some(prost_types::FieldMask { paths: mask }),
        };
        self.call(false, request, |r| {
            let mut c = self.tenant_service();
            async move { c.update_tenant(r).await }
        })
        .await
    }

    /// Deletes a tenant and revokes its API keys.
    pub async fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let request = DeleteTenantRequest {
            name: name.to_owned(),
        };
        self.call(false, request, |r| {
            let mut c = self.tenant_service();
            async move { c.delete_tenant(r).await }
        })
        .await
    }

    /// Creates an API key. The token in the response is shown only this once.
    pub async fn create_api_key(&self, key: &NewApiKey) -> Result<CreateApiKeyResponse, Error> {
        let request = CreateApiKeyRequest {
            tenant: key.tenant.clone(),
            name: key.name.clone(),
            scopes: key.scopes.clone(),
            expire_time: key.expire_time.map(datetime_to_timestamp),
        };
        let response = self
            .call(false, request, |r| {
                let mut c = self.tenant_service();
                async move { c.create_api_key(r).await }
            })
            .await?;
        if response.api_key.is_none() || response.token.is_empty() {
            return Err(Error::InvalidResponse(
                "CreateApiKey returned no key or no token".to_owned(),
            ));
        }
        Ok(response)
    }

    /// Lists the API keys of `tenant` (empty: operator keys), newest first, following pages.
    pub async fn list_api_keys(
        &self,
        tenant: &str,
        show_revoked: bool,
    ) -> Result<Vec<ApiKey>, Error> {
        let mut keys = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListApiKeysRequest {
                tenant: tenant.to_owned(),
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
                show_revoked,
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.tenant_service();
                    async move { c.list_api_keys(r).await }
                })
                .await?;
            keys.extend(page.api_keys);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(keys);
            }
        }
    }

    /// Revokes an API key and returns it.
    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey, Error> {
        let request = RevokeApiKeyRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.tenant_service();
            async move { c.revoke_api_key(r).await }
        })
        .await
    }

    /// The actions a step may name, by name, each with its params' JSON Schema
    /// (`params_schema_json`). Needs `definitions:read`.
    pub async fn list_actions(&self) -> Result<Vec<ActionInfo>, Error> {
        let response = self
            .call(false, ListActionsRequest {}, |r| {
                let mut c = self.definition_service();
                async move { c.list_actions(r).await }
            })
            .await?;
        Ok(response.actions)
    }

    /// Checks a workflow file without storing anything. `filename` (may be empty) names
    /// the file in problem reports. A file with problems is [`Error::Invalid`], whose
    /// [`Error::problems`] lists them. Needs `definitions:read`.
    pub async fn validate_definition(
        &self,
        source: &str,
        filename: &str,
    ) -> Result<ValidateDefinitionResponse, Error> {
        let request = ValidateDefinitionRequest {
            source: source.to_owned(),
            filename: filename.to_owned(),
        };
        self.call(true, request, |r| {
            let mut c = self.definition_service();
            async move { c.validate_definition(r).await }
        })
        .await
    }

    /// Compares a workflow file with the latest stored version of the same workflow.
    /// Problems are reported as by [`Client::validate_definition`]. Needs `definitions:read`.
    pub async fn plan_definition(&self, source: &str, filename: &str) -> Result<Plan, Error> {
        let request = PlanDefinitionRequest {
            source: source.to_owned(),
            filename: filename.to_owned(),
        };
        self.call(true, request, |r| {
            let mut c = self.definition_service();
            async move { c.plan_definition(r).await }
        })
        .await
    }

    /// Stores a workflow file as a new version if its content changed; the response says
    /// whether it did and what changed. Problems are reported as by
    /// [`Client::validate_definition`]. Needs `definitions:write`.
    pub async fn apply_definition(
        &self,
        source: &str,
        filename: &str,
    ) -> Result<ApplyDefinitionResponse, Error> {
        let request = ApplyDefinitionRequest {
            source: source.to_owned(),
            filename: filename.to_owned(),
        };
        let response = self
            .call(false, request, |r| {
                let mut c = self.definition_service();
                async move { c.apply_definition(r).await }
            })
            .await?;
        if response.definition.is_none() {
            return Err(Error::InvalidResponse(
                "ApplyDefinition returned no definition".to_owned(),
            ));
        }
        Ok(response)
    }

    /// Applies version `to_version` of workflow `name` again as a new version (nothing is
    /// stored when it is the latest already). Needs `definitions:write`.
    pub async fn rollback_definition(
        &self,
        name: &str,
        to_version: i64,
    ) -> Result<ApplyDefinitionResponse, Error> {
        let request = RollbackDefinitionRequest {
            name: name.to_owned(),
            to_version,
        };
        let response = self
            .call(false, request, |r| {
                let mut c = self.definition_service();
                async move { c.rollback_definition(r).await }
            })
            .await?;
        if response.definition.is_none() {
            return Err(Error::InvalidResponse(
                "RollbackDefinition returned no definition".to_owned(),
            ));
        }
        Ok(response)
    }

    /// One stored version of a workflow; `version` 0 means the latest. Needs
    /// `definitions:read`.
    pub async fn get_definition(&self, name: &str, version: i64) -> Result<Definition, Error> {
        let request = GetDefinitionRequest {
            name: name.to_owned(),
            version,
        };
        self.call(true, request, |r| {
            let mut c = self.definition_service();
            async move { c.get_definition(r).await }
        })
        .await
    }

    /// Lists the tenant's workflows ordered by name, following pages. Needs
    /// `definitions:read`.
    pub async fn list_definitions(&self) -> Result<Vec<DefinitionSummary>, Error> {
        let mut definitions = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListDefinitionsRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.definition_service();
                    async move { c.list_definitions(r).await }
                })
                .await?;
            definitions.extend(page.definitions);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(definitions);
            }
        }
    }

    /// Lists the versions of one workflow, newest first, following pages. Needs
    /// `definitions:read`.
    pub async fn list_definition_versions(
        &self,
        name: &str,
    ) -> Result<Vec<DefinitionVersion>, Error> {
        let mut versions = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListDefinitionVersionsRequest {
                name: name.to_owned(),
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.definition_service();
                    async move { c.list_definition_versions(r).await }
                })
                .await?;
            versions.extend(page.versions);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(versions);
            }
        }
    }

    /// Deletes a workflow: it leaves listings and cannot be started; applying it again
    /// continues its version numbers. Needs `definitions:write`.
    pub async fn delete_definition(&self, name: &str) -> Result<(), Error> {
        let request = DeleteDefinitionRequest {
            name: name.to_owned(),
        };
        self.call(false, request, |r| {
            let mut c = self.definition_service();
            async move { c.delete_definition(r).await }
        })
        .await
    }

    /// Stores a new secret of type `kind` (generic, bearer, basic, header, openai,
    /// anthropic or postgres) with its field values, and returns its metadata. The values
    /// are sent once and never returned. ALREADY_EXISTS when the name is taken; a missing
    /// or unknown field is INVALID_ARGUMENT naming it (`fields.password: …`). Needs
    /// `secrets:write`.
    pub async fn create_secret(
        &self,
        name: &str,
        kind: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<Secret, Error> {
        let request = CreateSecretRequest {
            name: name.to_owned(),
            r#type: kind.to_owned(),
            fields: fields.clone().into_iter().collect(),
        };
        self.call(false, request, |r| {
            let mut c = self.secret_service();
            async move { c.create_secret(r).await }
        })
        .await
    }

    /// Replaces all of a secret's field values (its type stays) and returns its metadata.
    /// Needs `secrets:write`.
    pub async fn update_secret(
        &self,
        name: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<Secret, Error> {
        let request = UpdateSecretRequest {
            name: name.to_owned(),
            fields: fields.clone().into_iter().collect(),
        };
        self.call(false, request, |r| {
            let mut c = self.secret_service();
            async move { c.update_secret(r).await }
        })
        .await
    }

    /// A secret's metadata: type, field names, key id, times; never its values. Needs
    /// `secrets:read`.
    pub async fn get_secret(&self, name: &str) -> Result<Secret, Error> {
        let request = GetSecretRequest {
            name: name.to_owned(),
        };
        self.call(true, request, |r| {
            let mut c = self.secret_service();
            async move { c.get_secret(r).await }
        })
        .await
    }

    /// Lists the tenant's secrets (metadata only) ordered by name, following pages. Needs
    /// `secrets:read`.
    pub async fn list_secrets(&self) -> Result<Vec<Secret>, Error> {
        let mut secrets = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListSecretsRequest {
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.secret_service();
                    async move { c.list_secrets(r).await }
                })
                .await?;
            secrets.extend(page.secrets);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(secrets);
            }
        }
    }

    /// Deletes a secret; steps naming it fail from then on. Needs `secrets:write`.
    pub async fn delete_secret(&self, name: &str) -> Result<(), Error> {
        let request = DeleteSecretRequest {
            name: name.to_owned(),
        };
        self.call(false, request, |r| {
            let mut c = self.secret_service();
            async move { c.delete_secret(r).await }
        })
        .await
    }

    /// Re-encrypts every secret of every tenant still sealed with the daemon's
    /// MANTLE_ENCRYPTION_KEY_PREVIOUS under its MANTLE_ENCRYPTION_KEY, `batch_size` per
    /// transaction (0: the server's default, 100). `remaining` is 0 when every secret is
    /// sealed with the current key. Needs `tenants:admin`.
    pub async fn rotate_encryption_key(
        &self,
        batch_size: u32,
    ) -> Result<RotateEncryptionKeyResponse, Error> {
        let request = RotateEncryptionKeyRequest {
            batch_size: i32::try_from(batch_size).unwrap_or(i32::MAX),
        };
        self.call(false, request, |r| {
            let mut c = self.secret_service();
            async move { c.rotate_encryption_key(r).await }
        })
        .await
    }

    /// Starts an execution of `workflow` at `version` (0: the latest) with `inputs`; the
    /// server checks them against the workflow's declared inputs and applies defaults.
    /// Answers at once with the stored execution, which runs in the background. Needs
    /// `executions:write`. With an `idempotency_key`, repeating the call (a retry after a
    /// lost answer, say) returns the execution the first call started.
    pub async fn start_execution(
        &self,
        workflow: &str,
        version: i64,
        inputs: &serde_json::Map<String, serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Execution, Error> {
        let inputs_json = if inputs.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(inputs.clone()).to_string()
        };
        let request = StartExecutionRequest {
            workflow: workflow.to_owned(),
            version,
            inputs_json,
            idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
        };
        // Idempotent when keyed: safe to retry even after an answer was lost.
        self.call(idempotency_key.is_some(), request, |r| {
            let mut c = self.execution_service();
            async move { c.start_execution(r).await }
        })
        .await
    }

    /// Returns one execution. Needs `executions:read`.
    pub async fn get_execution(&self, id: &str) -> Result<Execution, Error> {
        let request = GetExecutionRequest { id: id.to_owned() };
        self.call(true, request, |r| {
            let mut c = self.execution_service();
            async move { c.get_execution(r).await }
        })
        .await
    }

    /// Lists the executions matching `filter`, newest first, following pages; at most
    /// `limit` of them when given. `View::Basic` leaves out their inputs, outputs and
    /// trigger. Needs `executions:read`.
    pub async fn list_executions(
        &self,
        filter: &ExecutionFilter,
        limit: Option<usize>,
        view: View,
    ) -> Result<Vec<Execution>, Error> {
        let mut executions = Vec::new();
        let mut page_token = String::new();
        loop {
            let Some(page_size) = page_size_for(limit, executions.len()) else {
                return Ok(executions);
            };
            let request = ListExecutionsRequest {
                workflow: filter.workflow.clone().unwrap_or_default(),
                status: filter.status.unwrap_or_default() as i32,
                created_after: filter.created_after.map(datetime_to_timestamp),
                created_before: filter.created_before.map(datetime_to_timestamp),
                page_size,
                page_token: page_token.clone(),
                view: view as i32,
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.execution_service();
                    async move { c.list_executions(r).await }
                })
                .await?;
            executions.extend(page.executions);
            if let Some(limit) = limit {
                executions.truncate(limit);
            }
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(executions);
            }
        }
    }

    /// Lists the audit events matching `filter`, newest first, following pages; at most
    /// `limit` of them when given (the pages asked for are no larger than that). Any valid
    /// token may read the log: a tenant key its tenant's events, an operator key every
    /// event.
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        limit: Option<usize>,
    ) -> Result<Vec<AuditEvent>, Error> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let Some(page_size) = page_size_for(limit, events.len()) else {
                return Ok(events);
            };
            let request = ListAuditEventsRequest {
                tenant: filter.tenant.clone().unwrap_or_default(),
                page_size,
                page_token: page_token.clone(),
                actor: filter.actor.clone().unwrap_or_default(),
                action: filter.action.clone().unwrap_or_default(),
                result: filter.result.clone().unwrap_or_default(),
                since: filter.since.map(datetime_to_timestamp),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.audit_service();
                    async move { c.list_audit_events(r).await }
                })
                .await?;
            events.extend(page.events);
            if let Some(limit) = limit {
                events.truncate(limit);
            }
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(events);
            }
        }
    }

    /// Lists the webhook deliveries matching `filter`, newest first, following pages; at
    /// most `limit` of them when given. `View::Basic` leaves out their payloads. Any valid
    /// token may list them: a tenant key its tenant's, an operator key every tenant's.
    pub async fn list_webhook_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: Option<usize>,
        view: View,
    ) -> Result<Vec<WebhookDelivery>, Error> {
        let mut deliveries = Vec::new();
        let mut page_token = String::new();
        loop {
            let Some(page_size) = page_size_for(limit, deliveries.len()) else {
                return Ok(deliveries);
            };
            let request = ListWebhookDeliveriesRequest {
                tenant: filter.tenant.clone().unwrap_or_default(),
                page_size,
                page_token: page_token.clone(),
                view: view as i32,
                status: filter
                    .status
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                execution_id: filter.execution_id.clone().unwrap_or_default(),
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.webhook_service();
                    async move { c.list_webhook_deliveries(r).await }
                })
                .await?;
            deliveries.extend(page.deliveries);
            if let Some(limit) = limit {
                deliveries.truncate(limit);
            }
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(deliveries);
            }
        }
    }

    /// Lists the tenant's triggers (of `workflow` only, when given), ordered by workflow,
    /// then by key (`cron <schedule>`, `webhook <path>`). Needs `definitions:read`.
    pub async fn list_triggers(&self, workflow: Option<&str>) -> Result<Vec<Trigger>, Error> {
        let request = ListTriggersRequest {
            workflow: workflow.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(true, request, |r| {
                let mut c = self.trigger_service();
                async move { c.list_triggers(r).await }
            })
            .await?;
        Ok(response.triggers)
    }

    /// Pauses a trigger (by its id): it starts no execution until resumed. Returns the
    /// trigger. Needs `definitions:write`.
    pub async fn pause_trigger(&self, id: &str) -> Result<Trigger, Error> {
        let request = PauseTriggerRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.trigger_service();
            async move { c.pause_trigger(r).await }
        })
        .await
    }

    /// Resumes a paused trigger (by its id) and returns it. Needs `definitions:write`.
    pub async fn resume_trigger(&self, id: &str) -> Result<Trigger, Error> {
        let request = ResumeTriggerRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.trigger_service();
            async move { c.resume_trigger(r).await }
        })
        .await
    }

    /// Starts one execution of a trigger's workflow now, as the trigger would, and returns
    /// it at once; it runs in the background (see [`Client::wait_execution`]). Needs
    /// `executions:write`.
    pub async fn fire_trigger(&self, id: &str) -> Result<Execution, Error> {
        let request = FireTriggerRequest { id: id.to_owned() };
        let response = self
            .call(false, request, |r| {
                let mut c = self.trigger_service();
                async move { c.fire_trigger(r).await }
            })
            .await?;
        response
            .execution
            .ok_or_else(|| Error::InvalidResponse("FireTrigger returned no execution".to_owned()))
    }

    /// Cancels an execution: running steps are stopped and it ends as CANCELLED; a
    /// finished execution is returned unchanged. Needs `executions:write`.
    pub async fn cancel_execution(&self, id: &str) -> Result<Execution, Error> {
        let request = CancelExecutionRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.execution_service();
            async move { c.cancel_execution(r).await }
        })
        .await
    }

    /// Requests the cancellation of every unfinished execution `filter` matches (at least one
    /// filter); returns how many, at once. Needs `executions:write`.
    pub async fn cancel_executions(&self, filter: &ExecutionFilter) -> Result<i64, Error> {
        let request = CancelExecutionsRequest {
            workflow: filter.workflow.clone().unwrap_or_default(),
            status: filter.status.unwrap_or_default() as i32,
            created_after: filter.created_after.map(datetime_to_timestamp),
            created_before: filter.created_before.map(datetime_to_timestamp),
        };
        let response = self
            .call(true, request, |r| {
                let mut c = self.execution_service();
                async move { c.cancel_executions(r).await }
            })
            .await?;
        Ok(response.cancel_requested)
    }

    /// Deletes a finished execution with its attempts, events and deliveries. Needs
    /// `executions:write`.
    pub async fn delete_execution(&self, id: &str) -> Result<(), Error> {
        let request = DeleteExecutionRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.execution_service();
            async move { c.delete_execution(r).await }
        })
        .await
    }

    /// Deletes the finished executions that ended before `ended_before`, of `workflow` if
    /// given; returns how many. Needs `executions:write`.
    pub async fn delete_executions(
        &self,
        ended_before: DateTime<Utc>,
        workflow: Option<&str>,
    ) -> Result<i64, Error> {
        let request = DeleteExecutionsRequest {
            ended_before: Some(datetime_to_timestamp(ended_before)),
            workflow: workflow.unwrap_or_default().to_owned(),
        };
        let response = self
            .call(true, request, |r| {
                let mut c = self.execution_service();
                async move { c.delete_executions(r).await }
            })
            .await?;
        Ok(response.deleted)
    }

    /// Continues a failed, cancelled or timed-out execution: completed steps keep their
    /// outputs, failed and cancelled steps run again. Needs `executions:write`.
    pub async fn retry_execution(&self, id: &str) -> Result<Execution, Error> {
        let request = RetryExecutionRequest { id: id.to_owned() };
        self.call(false, request, |r| {
            let mut c = self.execution_service();
            async move { c.retry_execution(r).await }
        })
        .await
    }

    /// Every attempt of every step of an execution, with their outputs, in the order they
    /// started, following pages. Needs `executions:read`.
    pub async fn list_step_attempts(&self, id: &str) -> Result<Vec<StepAttempt>, Error> {
        let mut attempts = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListStepAttemptsRequest {
                id: id.to_owned(),
                page_size: i32::try_from(MAX_PAGE_SIZE).unwrap_or(PAGE_SIZE),
                page_token: page_token.clone(),
                view: View::Full as i32,
            };
            let page = self
                .call(true, request, |r| {
                    let mut c = self.execution_service();
                    async move { c.list_step_attempts(r).await }
                })
                .await?;
            attempts.extend(page.attempts);
            if !next_page(&mut page_token, page.next_page_token)? {
                return Ok(attempts);
            }
        }
    }

    /// Streams an execution's events after sequence number `after_seq` (0: from the
    /// beginning). The stream ends after the event that finishes the execution. Opening
    /// the stream is retried like a read; the stream itself has no deadline. Needs
    /// `executions:read`.
    pub async fn watch_execution(
        &self,
        id: &str,
        after_seq: i64,
    ) -> Result<ExecutionEvents, Error> {
        let message = WatchExecutionRequest {
            id: id.to_owned(),
            after_seq,
        };
        let mut attempt = 1;
        loop {
            let mut c = self.execution_service();
            let request = tonic::Request::new(message.clone());
            let result = match tokio::time::timeout(
                self.request_timeout,
                c.watch_execution(request),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no response within {} s",
                    self.request_timeout.as_secs_f64()
                ))),
            };
            match result {
                Ok(response) => return Ok(ExecutionEvents::new(response.into_inner())),
                Err(status) if self.retry.should_retry(status.code(), true, attempt) => {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Waits until an execution has finished (completed, failed, cancelled or timed out)
    /// and returns it, through daemon restarts, for at most `timeout` (`None`: as long as
    /// it takes). See [`Client::follow_execution`].
    pub async fn wait_execution(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Execution, Error> {
        let options = FollowOptions {
            timeout,
            ..FollowOptions::default()
        };
        self.follow_execution(id, &options, |_| {}).await
    }

    /// Watches an execution until it has finished, calling `on_update` once for every
    /// event after `options.after_seq` in sequence order, and returns the final execution.
    ///
    /// Following survives a daemon restart or a switch to another replica: when the stream
    /// drops, the execution is polled with GetExecution and watched again from the last
    /// event seen, so no event is reported twice. While the daemon cannot be reached the
    /// client keeps trying, with a backoff of 250 ms doubling to 5 s, reporting
    /// [`FollowUpdate::Unreachable`] once per outage and [`FollowUpdate::Reconnected`] when
    /// it answers again. A stream silent for 30 s is checked with GetExecution too.
    /// Errors that are answers (NOT_FOUND, PERMISSION_DENIED, …) end the wait, and so does
    /// `options.timeout` ([`Error::WaitTimeout`]; the execution goes on).
    pub async fn follow_execution<F>(
        &self,
        id: &str,
        options: &FollowOptions,
        mut on_update: F,
    ) -> Result<Execution, Error>
    where
        F: FnMut(FollowUpdate<'_>),
    {
        let mut follower = Follower {
            client: self,
            id,
            last_seq: options.after_seq,
            quiet_interval: options.quiet_interval,
            outage: false,
            on_update: &mut on_update,
        };
        match options.timeout {
            None => follower.run().await,
            Some(timeout) => tokio::time::timeout(timeout, follower.run())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::WaitTimeout {
                        id: id.to_owned(),
                        timeout,
                    })
                }),
        }
    }
}

/// What [`Client::follow_execution`] reports as it follows an execution.
#[derive(Debug)]
pub enum FollowUpdate<'a> {
    /// The next event of the execution; each is reported once, in sequence order.
    Event(&'a ExecutionEvent),
    /// No event for [`FollowOptions::quiet_interval`] (reported again after each further
    /// interval without one).
    Quiet,
    /// The daemon cannot be reached (the error says why); reported once per outage. The
    /// execution goes on on the server, and the client keeps trying.
    Unreachable(&'a Error),
    /// The daemon answers again after [`FollowUpdate::Unreachable`].
    Reconnected,
}

/// How [`Client::follow_execution`] follows an execution.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// Report the events after this sequence number (0: from the first).
    pub after_seq: i64,
    /// Stop waiting after this long with [`Error::WaitTimeout`]; `None`: as long as it
    /// takes.
    pub timeout: Option<Duration>,
    /// Report [`FollowUpdate::Quiet`] after this long without an event; `None`: never.
    pub quiet_interval: Option<Duration>,
}

/// The state of one [`Client::follow_execution`].
struct Follower<'a> {
    client: &'a Client,
    id: &'a str,
    last_seq: i64,
    quiet_interval: Option<Duration>,
    /// Whether an outage has been reported and the daemon has not answered since.
    outage: bool,
    on_update: &'a mut dyn FnMut(FollowUpdate<'_>),
}

impl Follower<'_> {
    async fn run(&mut self) -> Result<Execution, Error> {
        let mut drops = 0u32;
        loop {
            match self.client.watch_execution(self.id, self.last_seq).await {
                Ok(events) => {
                    self.answered();
                    if let Some(execution) = self.read(events, &mut drops).await? {
                        return Ok(execution);
                    }
                }
                Err(err) if is_transient_watch_error(&err) => self.unreachable(&err),
                Err(err) => return Err(err),
            }
            // The stream dropped before the end: poll, then watch again.
            if let Some(execution) = self.poll_finished().await? {
                return Ok(execution);
            }
            drops += 1;
            tokio::time::sleep(rewatch_delay(drops)).await;
        }
    }

    /// Reports the stream's events until the execution has finished (`Some`) or the
    /// stream ends or breaks (`None`).
    async fn read(
        &mut self,
        mut events: ExecutionEvents,
        drops: &mut u32,
    ) -> Result<Option<Execution>, Error> {
        let mut last_check = tokio::time::Instant::now();
        let mut last_news = last_check;
        loop {
            let check_at = last_check + WATCH_IDLE_CHECK;
            let wake_at = match self.quiet_interval {
                Some(quiet) => check_at.min(last_news + quiet),
                None => check_at,
            };
            match tokio::time::timeout_at(wake_at, events.next_event()).await {
                Ok(Ok(Some(event))) => {
                    if event.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = event.seq;
                    *drops = 0;
                    last_news = tokio::time::Instant::now();
                    (self.on_update)(FollowUpdate::Event(&event));
                    // A retried execution runs again after a terminal event, and the log
                    // goes on after it.
                    if terminal_status_of(&event).is_some()
                        && let Some(execution) = self.poll_finished().await?
                    {
                        return Ok(Some(execution));
                    }
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(err)) if is_transient_watch_error(&err) => return Ok(None),
                Ok(Err(err)) => return Err(err),
                Err(_elapsed) => {
                    let now = tokio::time::Instant::now();
                    if self
                        .quiet_interval
                        .is_some_and(|quiet| now >= last_news + quiet)
                    {
                        last_news = now;
                        (self.on_update)(FollowUpdate::Quiet);
                    }
                    if now >= check_at {
                        last_check = now;
                        if let Some(execution) = self.poll_finished().await? {
                            return Ok(Some(execution));
                        }
                    }
                }
            }
        }
    }

    /// The execution if it has finished, with the events not seen yet reported first.
    /// While the daemon cannot be reached this keeps asking (the caller's timeout ends it).
    async fn poll_finished(&mut self) -> Result<Option<Execution>, Error> {
        let mut failures = 0u32;
        let execution = loop {
            match self.client.get_execution(self.id).await {
                Ok(execution) => break execution,
                Err(err) if is_transient_watch_error(&err) => {
                    self.unreachable(&err);
                    failures += 1;
                    tokio::time::sleep(rewatch_delay(failures)).await;
                }
                Err(err) => return Err(err),
            }
        };
        self.answered();
        if !execution_finished(&execution) {
            return Ok(None);
        }
        self.drain().await;
        Ok(Some(execution))
    }

    /// Best effort: reports the events after `last_seq` of a finished execution that were
    /// not seen yet: those a dropped watch missed, and those after an earlier terminal
    /// event (a watch ends at each one; a retried execution has several).
    async fn drain(&mut self) {
        loop {
            let Ok(mut events) = self.client.watch_execution(self.id, self.last_seq).await else {
                return;
            };
            let before = self.last_seq;
            while let Ok(Ok(Some(event))) =
                tokio::time::timeout(DRAIN_TIMEOUT, events.next_event()).await
            {
                if event.seq > self.last_seq {
                    self.last_seq = event.seq;
                    (self.on_update)(FollowUpdate::Event(&event));
                }
            }
            if self.last_seq == before {
                return;
            }
        }
    }

    fn unreachable(&mut self, err: &Error) {
        if !self.outage {
            self.outage = true;
            (self.on_update)(FollowUpdate::Unreachable(err));
        }
    }

    fn answered(&mut self) {
        if self.outage {
            self.outage = false;
            (self.on_update)(FollowUpdate::Reconnected);
        }
    }
}

/// Whether an execution has finished.
fn execution_finished(execution: &Execution) -> bool {
    is_terminal(ExecutionStatus::try_from(execution.status).unwrap_or_default())
}

/// The page size to ask for when `have` items of at most `limit` are in hand: what is
/// still wanted (at most the largest page), or [`PAGE_SIZE`] without a limit; `None` once
/// the limit is reached.
fn page_size_for(limit: Option<usize>, have: usize) -> Option<i32> {
    match limit.map(|l| l.saturating_sub(have)) {
        Some(0) => None,
        Some(n) => Some(i32::try_from(n.min(MAX_PAGE_SIZE)).unwrap_or(PAGE_SIZE)),
        None => Some(PAGE_SIZE),
    }
}

/// Moves to the next page token; false when there are no more pages. A server that
/// hands back the token it was just given would loop forever, so that is an error.
fn next_page(current: &mut String, next: String) -> Result<bool, Error> {
    if next.is_empty() {
        return Ok(false);
    }
    if next == *current {
        return Err(Error::InvalidResponse(
            "server returned the same page token twice".to_owned(),
        ));
    }
    *current = next;
    Ok(true)
}

fn endpoint(options: &ClientOptions) -> Result<Endpoint, Error> {
    let invalid = |reason: String| Error::InvalidAddress {
        input: options.address.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(options.address.uri())
        .map_err(|e| invalid(error_chain(&e)))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("mantle-client/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| invalid(error_chain(&e)))?;
    if options.address.tls {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|e| invalid(format!("tls: {}", error_chain(&e))))?;
    }
    Ok(endpoint)
}

/// The useful part of a transport error: its causes, without tonic's generic
/// "transport error" prefix.
fn connect_reason(err: &tonic::transport::Error) -> String {
    let chain = error_chain(err);
    chain
        .strip_prefix("transport error: ")
        .unwrap_or(&chain)
        .to_lowercase()
}

/// Converts a protobuf timestamp to UTC; `None` for out-of-range values.
pub fn timestamp_to_datetime(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// Converts a UTC time to a protobuf timestamp.
pub fn datetime_to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interceptor_adds_bearer_token_and_tenant() {
        let mut interceptor = AuthInterceptor::new(Some("mntl_ab_cd"), Some("acme")).unwrap();
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        let md = request.metadata();
        assert_eq!(md.get("authorization").unwrap(), "Bearer mntl_ab_cd");
        assert_eq!(md.get(TENANT_METADATA).unwrap(), "acme");
    }

    #[test]
    fn interceptor_without_values_adds_nothing() {
        let mut interceptor = AuthInterceptor::new(Some(" "), None).unwrap();
        let request = interceptor.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert!(request.metadata().get(TENANT_METADATA).is_none());
    }

    #[test]
    fn interceptor_rejects_tokens_unfit_for_metadata_without_echoing_them() {
        let err = AuthInterceptor::new(Some("secret\nvalue"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid token: contains characters that cannot be sent in metadata"
        );
        assert!(!format!("{err:?}").contains("secret"));
    }

    #[test]
    fn interceptor_debug_redacts_the_token() {
        let interceptor = AuthInterceptor::new(Some("mntl_secret"), None).unwrap();
        assert!(!format!("{interceptor:?}").contains("mntl_secret"));
    }

    #[test]
    fn interceptor_values_can_be_swapped_independently() {
        let base = AuthInterceptor::new(Some("a"), Some("acme")).unwrap();
        let mut swapped = base.clone();
        swapped.authorization = AuthInterceptor::new(Some("b"), None).unwrap().authorization;
        let request = swapped.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer b");
        assert_eq!(request.metadata().get(TENANT_METADATA).unwrap(), "acme");
    }

    #[test]
    fn health_status_names() {
        assert_eq!(HealthStatus::from_proto(1), HealthStatus::Serving);
        assert_eq!(HealthStatus::from_proto(2), HealthStatus::NotServing);
        assert_eq!(HealthStatus::from_proto(99), HealthStatus::Unknown);
        assert_eq!(HealthStatus::NotServing.to_string(), "NOT_SERVING");
    }

    #[test]
    fn next_page_stops_on_empty_and_rejects_repeats() {
        let mut token = String::new();
        assert!(!next_page(&mut token, String::new()).unwrap());
        assert!(next_page(&mut token, "p2".into()).unwrap());
        assert_eq!(token, "p2");
        assert!(next_page(&mut token, "p2".into()).is_err());
    }

    #[test]
    fn pages_ask_for_what_is_still_wanted() {
        assert_eq!(page_size_for(Some(50), 0), Some(50));
        assert_eq!(page_size_for(Some(2500), 1000), Some(1000));
        assert_eq!(page_size_for(Some(2500), 2000), Some(500));
        assert_eq!(page_size_for(Some(50), 50), None);
        assert_eq!(page_size_for(None, 10_000), Some(PAGE_SIZE));
    }

    #[test]
    fn timestamps_round_trip() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000,
        };
        let dt = timestamp_to_datetime(&ts).unwrap();
        assert_eq!(datetime_to_timestamp(dt), ts);
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(timestamp_to_datetime(&bad), None);
    }
}
