//! `mantle.v1.TenantService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::tenant_service_server::TenantService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{IntoProto, from_timestamp};
use crate::model::tenant::TenantUpdate;
use crate::tenancy::{KeyRequest, Tenancy, page_request, page_token};

pub struct TenantApi {
    pub tenancy: Tenancy,
    /// Told of a changed tenant, so its new rate limit applies at once on this daemon.
    pub limiter: crate::tenancy::ratelimit::RateLimiter,
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let settings = req
            .settings
            .clone()
            .map(super::convert::tenant_settings)
            .unwrap_or_default();
        let tenant = self
            .tenancy
            .create_tenant(caller, &req.name, &req.display_name, settings)
            .await?;
        Ok(Response::new(tenant.into_proto()))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = caller(&request)?;
        let tenant = self
            .tenancy
            .get_tenant(caller, &request.get_ref().name)
            .await?;
        Ok(Response::new(tenant.into_proto()))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let page = self.tenancy.list_tenants(caller, &page).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            tenants: page.items.into_iter().map(IntoProto::into_proto).collect(),
        }))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let settings = req.settings.clone().unwrap_or_default();
        let mut update = TenantUpdate {
            display_name: req.display_name.clone(),
            ..TenantUpdate::default()
        };
        let positive = |n: i32| (n > 0).then_some(n as u32);
        for path in req.settings_mask.iter().flat_map(|m| &m.paths) {
            match path.trim_start_matches("settings.") {
                "webhook_url" => {
                    update.webhook_url = Some(
                        (!settings.webhook_url.is_empty()).then(|| settings.webhook_url.clone()),
                    )
                }
                "webhook_secret" => {
                    update.webhook_secret = Some(
                        (!settings.webhook_secret.is_empty())
                            .then(|| settings.webhook_secret.clone()),
                    )
                }
                "max_concurrent_executions" => {
                    update.max_concurrent_executions =
                        Some(positive(settings.max_concurrent_executions))
                }
                "max_queued_executions" => {
                    update.max_queued_executions = Some(positive(settings.max_queued_executions))
                }
                "rate_limit_per_minute" => {
                    update.rate_limit_per_minute = Some(positive(settings.rate_limit_per_minute))
                }
                "max_steps_per_workflow" => {
                    update.max_steps_per_workflow = Some(positive(settings.max_steps_per_workflow))
                }
                "max_runtime_minutes" => {
                    update.max_runtime_minutes = Some(positive(settings.max_runtime_minutes))
                }
                "allowed_domains" => {
                    update.allowed_domains = Some(
                        (!settings.allowed_domains.is_empty())
                            .then(|| settings.allowed_domains.clone()),
                    );
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "settings_mask: unknown field {other:?}; use max_steps_per_workflow, max_runtime_minutes, allowed_domains, rate_limit_per_minute, max_concurrent_executions, max_queued_executions, webhook_url or webhook_secret"
                    )));
                }
            }
        }
        for (field, n) in [
            ("max_steps_per_workflow", settings.max_steps_per_workflow),
            ("rate_limit_per_minute", settings.rate_limit_per_minute),
            (
                "max_concurrent_executions",
                settings.max_concurrent_executions,
            ),
            ("max_queued_executions", settings.max_queued_executions),
            ("max_runtime_minutes", settings.max_runtime_minutes),
        ] {
            if n < 0 {
                return Err(Status::invalid_argument(format!(
                    "settings.{field}: must not be negative"
                )));
            }
        }
        let tenant = self
            .tenancy
            .update_tenant(caller, &req.name, &update)
            .await?;
        self.limiter.forget(tenant.id);
        Ok(Response::new(tenant.into_proto()))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        self.tenancy
            .delete_tenant(caller, &request.get_ref().name)
            .await?;
        Ok(Response::new(()))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let created = self
            .tenancy
            .create_api_key(
                caller,
                &KeyRequest {
                    tenant: &req.tenant,
                    name: &req.name,
                    scopes: &req.scopes,
                    expire_time: from_timestamp("expire_time", req.expire_time)?,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(created.key.into_proto()),
            token: created.token,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let page = self
            .tenancy
            .list_api_keys(caller, &req.tenant, req.show_revoked, &page)
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            api_keys: page.items.into_iter().map(IntoProto::into_proto).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&request)?;
        let key = self
            .tenancy
            .revoke_api_key(caller, &request.get_ref().id)
            .await?;
        Ok(Response::new(key.into_proto()))
    }
}
