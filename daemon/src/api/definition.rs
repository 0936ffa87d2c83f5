//! `mantle.v1.DefinitionService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::definition_service_server::DefinitionService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{IntoProto, plan, problems, timestamp};
use crate::definitions::Definitions;
use crate::definitions::file_name;
use crate::tenancy::{page_request, page_token};

pub struct DefinitionApi {
    pub definitions: Definitions,
}

#[tonic::async_trait]
impl DefinitionService for DefinitionApi {
    async fn validate_definition(
        &self,
        request: Request<pb::ValidateDefinitionRequest>,
    ) -> Result<Response<pb::ValidateDefinitionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let checked = self
            .definitions
            .validate(caller, &req.source, &req.filename)
            .await?;
        Ok(Response::new(pb::ValidateDefinitionResponse {
            warnings: problems(file_name(&req.filename), &checked.warnings),
            name: checked.loaded.spec.name,
            content_hash: checked.loaded.content_hash,
            step_count: checked.loaded.spec.steps.len() as u32,
        }))
    }

    async fn plan_definition(
        &self,
        request: Request<pb::PlanDefinitionRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let result = self
            .definitions
            .plan(caller, &req.source, &req.filename)
            .await?;
        Ok(Response::new(plan(file_name(&req.filename), result)))
    }

    async fn apply_definition(
        &self,
        request: Request<pb::ApplyDefinitionRequest>,
    ) -> Result<Response<pb::ApplyDefinitionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let applied = self
            .definitions
            .apply(caller, &req.source, &req.filename)
            .await?;
        Ok(Response::new(applied_response(&req.filename, applied)))
    }

    async fn rollback_definition(
        &self,
        request: Request<pb::RollbackDefinitionRequest>,
    ) -> Result<Response<pb::ApplyDefinitionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let applied = self
            .definitions
            .rollback(caller, &req.name, req.to_version)
            .await?;
        let filename = format!("{}@v{}", req.name, req.to_version);
        Ok(Response::new(applied_response(&filename, applied)))
    }

    async fn list_actions(
        &self,
        request: Request<pb::ListActionsRequest>,
    ) -> Result<Response<pb::ListActionsResponse>, Status> {
        let caller = caller(&request)?;
        let actions = self.definitions.actions(caller)?;
        Ok(Response::new(pb::ListActionsResponse {
            actions: actions
                .iter()
                .map(|a| pb::ActionInfo {
                    name: a.spec.name.to_owned(),
                    description: a.spec.description.to_owned(),
                    kind: match a.spec.kind() {
                        crate::connectors::ActionKind::Pure => "pure",
                        crate::connectors::ActionKind::Effect => "effect",
                        crate::connectors::ActionKind::Timer => "timer",
                    }
                    .to_owned(),
                    credential_types: a
                        .spec
                        .credential_types
                        .iter()
                        .map(|t| t.name.to_owned())
                        .collect(),
                    params_schema_json: a.params_schema().to_string(),
                    output_schema_json: a.output_schema().to_string(),
                })
                .collect(),
        }))
    }

    async fn get_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let definition = self.definitions.get(caller, &req.name, req.version).await?;
        Ok(Response::new(definition.into_proto()))
    }

    async fn list_definitions(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Result<Response<pb::ListDefinitionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let page = self.definitions.list(caller, &page).await?;
        Ok(Response::new(pb::ListDefinitionsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            definitions: page
                .items
                .into_iter()
                .map(|d| pb::DefinitionSummary {
                    name: d.name,
                    latest_version: d.latest_version,
                    description: d.description,
                    create_time: Some(timestamp(d.create_time)),
                    update_time: Some(timestamp(d.update_time)),
                })
                .collect(),
        }))
    }

    async fn list_definition_versions(
        &self,
        request: Request<pb::ListDefinitionVersionsRequest>,
    ) -> Result<Response<pb::ListDefinitionVersionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let page = self.definitions.versions(caller, &req.name, &page).await?;
        Ok(Response::new(pb::ListDefinitionVersionsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            versions: page
                .items
                .into_iter()
                .map(|v| pb::DefinitionVersion {
                    version: v.version,
                    content_hash: v.content_hash,
                    create_time: Some(timestamp(v.create_time)),
                })
                .collect(),
        }))
    }

    async fn delete_definition(
        &self,
        request: Request<pb::DeleteDefinitionRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        self.definitions
            .delete(caller, &request.get_ref().name)
            .await?;
        Ok(Response::new(()))
    }
}

/// The answer of ApplyDefinition and RollbackDefinition.
fn applied_response(
    filename: &str,
    applied: crate::definitions::ApplyResult,
) -> pb::ApplyDefinitionResponse {
    pb::ApplyDefinitionResponse {
        warnings: problems(file_name(filename), &applied.warnings),
        definition: Some(applied.definition.into_proto()),
        created: applied.created,
        changes: applied.changes.into_iter().map(Into::into).collect(),
    }
}
