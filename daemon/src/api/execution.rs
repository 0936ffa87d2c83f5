//! `mantle.v1.ExecutionService`.

use std::pin::Pin;

use mantle_proto::v1 as pb;
use mantle_proto::v1::execution_service_server::ExecutionService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{
    IntoProto, basic_execution, execution_status_from_pb, from_timestamp, view_from_pb,
};
use crate::executions::Executions;
use crate::model::execution::ExecutionFilter;
use crate::model::tenant::View;
use crate::tenancy::{page_request, page_token};

pub struct ExecutionApi {
    pub executions: Executions,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The filter of ListExecutions and CancelExecutions.
fn filter(
    workflow: &str,
    status: i32,
    created_after: Option<prost_types::Timestamp>,
    created_before: Option<prost_types::Timestamp>,
) -> Result<ExecutionFilter, Status> {
    Ok(ExecutionFilter {
        workflow: (!workflow.is_empty()).then(|| workflow.to_owned()),
        status: execution_status_from_pb(status)?,
        created_after: from_timestamp("created_after", created_after)?,
        created_before: from_timestamp("created_before", created_before)?,
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutionService for ExecutionApi {
    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let caller = caller(&request)?;
        let metadata_key = request
            .metadata()
            .get("idempotency-key")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::invalid_argument("idempotency-key: not printable ASCII"))
            })
            .transpose()?;
        let req = request.get_ref();
        let key = match (req.idempotency_key.as_str(), metadata_key) {
            ("", None) => None,
            ("", Some(m)) => Some(m),
            (f, None) => Some(f),
            (f, Some(m)) if f == m => Some(f),
            (_, Some(_)) => {
                return Err(Status::invalid_argument(
                    "idempotency_key: differs from the idempotency-key metadata; send one of them",
                ));
            }
        };
        let execution = self
            .executions
            .start(caller, &req.workflow, req.version, &req.inputs_json, key)
            .await?;
        Ok(Response::new(execution.into_proto()))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let caller = caller(&request)?;
        let (execution, usage) = self
            .executions
            .get_with_usage(caller, &request.get_ref().id)
            .await?;
        let mut execution = execution.into_proto();
        if usage.tokens() > 0 {
            execution.model_usage = Some(usage.into_proto());
        }
        Ok(Response::new(execution))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let filter = filter(
            &req.workflow,
            req.status,
            req.created_after,
            req.created_before,
        )?;
        let view = view_from_pb(req.view)?;
        let page = self.executions.list(caller, &filter, &page, view).await?;
        Ok(Response::new(pb::ListExecutionsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            executions: page
                .items
                .into_iter()
                .map(|e| match view {
                    View::Full => e.into_proto(),
                    View::Basic => basic_execution(e),
                })
                .collect(),
        }))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let caller = caller(&request)?;
        let execution = self
            .executions
            .cancel(caller, &request.get_ref().id)
            .await?;
        Ok(Response::new(execution.into_proto()))
    }

    async fn cancel_executions(
        &self,
        request: Request<pb::CancelExecutionsRequest>,
    ) -> Result<Response<pb::CancelExecutionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let filter = filter(
            &req.workflow,
            req.status,
            req.created_after,
            req.created_before,
        )?;
        let n = self.executions.cancel_matching(caller, &filter).await?;
        Ok(Response::new(pb::CancelExecutionsResponse {
            cancel_requested: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    async fn delete_execution(
        &self,
        request: Request<pb::DeleteExecutionRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        self.executions
            .delete(caller, &request.get_ref().id)
            .await?;
        Ok(Response::new(()))
    }

    async fn delete_executions(
        &self,
        request: Request<pb::DeleteExecutionsRequest>,
    ) -> Result<Response<pb::DeleteExecutionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let ended_before = from_timestamp("ended_before", req.ended_before)?
            .ok_or_else(|| Status::invalid_argument("ended_before: required"))?;
        let workflow = (!req.workflow.is_empty()).then_some(req.workflow.as_str());
        let n = self
            .executions
            .delete_finished(caller, ended_before, workflow)
            .await?;
        Ok(Response::new(pb::DeleteExecutionsResponse {
            deleted: i64::try_from(n).unwrap_or(i64::MAX),
        }))
    }

    async fn retry_execution(
        &self,
        request: Request<pb::RetryExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        let caller = caller(&request)?;
        let execution = self.executions.retry(caller, &request.get_ref().id).await?;
        Ok(Response::new(execution.into_proto()))
    }

    async fn list_step_attempts(
        &self,
        request: Request<pb::ListStepAttemptsRequest>,
    ) -> Result<Response<pb::ListStepAttemptsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let view = view_from_pb(req.view)?;
        let page = self
            .executions
            .attempts(caller, &req.id, &page, view)
            .await?;
        Ok(Response::new(pb::ListStepAttemptsResponse {
            attempts: page.items.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token: page_token(page.next_cursor.as_deref()),
        }))
    }

    type WatchExecutionStream = WatchStream;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let events = self
            .executions
            .follow(caller, &req.id, req.after_seq, self.shutdown.clone())
            .await?;
        let stream = ReceiverStream::new(events)
            .map(|event| event.map(IntoProto::into_proto).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
