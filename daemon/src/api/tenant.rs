//! `mantle.v1.TenantService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::tenant_service_server::TenantService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{IntoProto, cost_cap, from_timestamp, token_cap};
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
        if req
            .settings
            .as_ref()
            .is_some_and(|s| s.max_tokens_per_day < 0)
        {
            return Err(Status::invalid_argument(
                "settings.max_tokens_per_day: must not be negative",
            ));
        }
        super::convert::check_retention(req.settings.as_ref().and_then(|s| s.retention.as_ref()))?;
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
                "max_cost_usd_per_execution" => {
                    update.max_cost_usd_per_execution =
                        Some(cost_cap(settings.max_cost_usd_per_execution))
                }
                "max_tokens_per_day" => {
                    update.max_tokens_per_day = Some(token_cap(settings.max_tokens_per_day))
                }
                "default_credentials" => {
                    update.default_credentials = Some(
                        settings
                            .default_credentials
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    )
                }
                "retention" => {
                    super::convert::check_retention(settings.retention.as_ref())?;
                    update.retention = Some(super::convert::retention(settings.retention.as_ref()))
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "settings_mask: unknown field {other:?}; use max_steps_per_workflow, max_runtime_minutes, allowed_domains, rate_limit_per_minute, max_concurrent_executions, max_queued_executions, webhook_url, webhook_secret, max_cost_usd_per_execution, max_tokens_per_day, default_credentials or retention"
                    )));
                }
            }
        }
        for (field, n) in [
            (
                "max_steps_per_workflow",
                settings.max_steps_per_workflow.into(),
            ),
            (
                "rate_limit_per_minute",
                settings.rate_limit_per_minute.into(),
            ),
            (
                "max_concurrent_executions",
                settings.max_concurrent_executions.into(),
            ),
            (
                "max_queued_executions",
                settings.max_queued_executions.into(),
            ),
            ("max_runtime_minutes", settings.max_runtime_minutes.into()),
            ("max_tokens_per_day", settings.max_tokens_per_day),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Caller, Scope, ScopeSet};

    async fn api(dir: &std::path::Path) -> TenantApi {
        let store = crate::testing::sqlite_store(dir).await;
        TenantApi {
            tenancy: Tenancy::new(store.clone(), crate::connectors::NetworkPolicy::default()),
            limiter: crate::tenancy::ratelimit::RateLimiter::new(
                store,
                crate::tenancy::ratelimit::Backend::Memory,
            ),
        }
    }

    fn operator<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Caller {
            key_id: "test".to_owned(),
            tenant: None,
            scopes: ScopeSet::new([Scope::TenantsAdmin]),
            operator: true,
        });
        request
    }

    fn update(name: &str, settings: pb::TenantSettings, paths: &[&str]) -> pb::UpdateTenantRequest {
        pb::UpdateTenantRequest {
            name: name.to_owned(),
            display_name: None,
            settings: Some(settings),
            settings_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        }
    }

    fn credentials(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The settings of ai/completion are set when the tenant is created, changed by the
    /// mask, read back, and cleared by 0 and an empty map.
    #[tokio::test]
    async fn tenant_ai_settings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path()).await;
        let created = api
            .create_tenant(operator(pb::CreateTenantRequest {
                name: "acme".to_owned(),
                display_name: String::new(),
                settings: Some(pb::TenantSettings {
                    max_cost_usd_per_execution: 2.5,
                    max_tokens_per_day: 100_000,
                    default_credentials: credentials(&[("openai", "my-openai-key")]),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        let s = created.settings.unwrap();
        assert_eq!(s.max_cost_usd_per_execution, 2.5);
        assert_eq!(s.max_tokens_per_day, 100_000);
        assert_eq!(
            s.default_credentials,
            credentials(&[("openai", "my-openai-key")])
        );

        // Only what the mask names changes; a named map is replaced whole.
        let changed = api
            .update_tenant(operator(update(
                "acme",
                pb::TenantSettings {
                    max_tokens_per_day: 5,
                    default_credentials: credentials(&[("anthropic", "claude")]),
                    ..Default::default()
                },
                &["settings.max_tokens_per_day", "default_credentials"],
            )))
            .await
            .unwrap()
            .into_inner()
            .settings
            .unwrap();
        assert_eq!(changed.max_cost_usd_per_execution, 2.5);
        assert_eq!(changed.max_tokens_per_day, 5);
        assert_eq!(
            changed.default_credentials,
            credentials(&[("anthropic", "claude")])
        );
        let got = api
            .get_tenant(operator(pb::GetTenantRequest {
                name: "acme".to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
            .settings
            .unwrap();
        assert_eq!(got, changed);

        let cleared = api
            .update_tenant(operator(update(
                "acme",
                pb::TenantSettings::default(),
                &[
                    "max_cost_usd_per_execution",
                    "max_tokens_per_day",
                    "default_credentials",
                ],
            )))
            .await
            .unwrap()
            .into_inner()
            .settings
            .unwrap();
        assert_eq!(cleared, pb::TenantSettings::default());
    }

    /// Bad values are refused with INVALID_ARGUMENT naming the field, on create and on
    /// update, and nothing is changed.
    #[tokio::test]
    async fn tenant_ai_settings_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path()).await;
        let cases: &[(pb::TenantSettings, &str, &str)] = &[
            (
                pb::TenantSettings {
                    default_credentials: credentials(&[("x", "key")]),
                    ..Default::default()
                },
                "default_credentials",
                "settings.default_credentials: unknown provider \"x\"; expected openai or anthropic",
            ),
            (
                pb::TenantSettings {
                    default_credentials: credentials(&[("openai", "Not A Name")]),
                    ..Default::default()
                },
                "default_credentials",
                "settings.default_credentials: openai: \"Not A Name\" is not a valid secret name",
            ),
            (
                pb::TenantSettings {
                    default_credentials: credentials(&[("anthropic", "")]),
                    ..Default::default()
                },
                "default_credentials",
                "settings.default_credentials: anthropic: a secret name is required",
            ),
            (
                pb::TenantSettings {
                    max_cost_usd_per_execution: -1.0,
                    ..Default::default()
                },
                "max_cost_usd_per_execution",
                "settings.max_cost_usd_per_execution: -1 is not a number of US dollars",
            ),
            (
                pb::TenantSettings {
                    max_cost_usd_per_execution: f64::NAN,
                    ..Default::default()
                },
                "max_cost_usd_per_execution",
                "settings.max_cost_usd_per_execution: NaN is not a number of US dollars",
            ),
            (
                pb::TenantSettings {
                    max_cost_usd_per_execution: f64::INFINITY,
                    ..Default::default()
                },
                "max_cost_usd_per_execution",
                "settings.max_cost_usd_per_execution: inf is not a number of US dollars",
            ),
            (
                pb::TenantSettings {
                    max_tokens_per_day: -1,
                    ..Default::default()
                },
                "max_tokens_per_day",
                "settings.max_tokens_per_day: must not be negative",
            ),
        ];
        for (i, (settings, path, message)) in cases.iter().enumerate() {
            let err = api
                .create_tenant(operator(pb::CreateTenantRequest {
                    name: format!("bad{i}"),
                    display_name: String::new(),
                    settings: Some(settings.clone()),
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with(message), "{}", err.message());
            let err = api
                .update_tenant(operator(update("default", settings.clone(), &[path])))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with(message), "{}", err.message());
        }
        let default = api
            .get_tenant(operator(pb::GetTenantRequest {
                name: "default".to_owned(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(default.settings.unwrap(), pb::TenantSettings::default());
    }
}
