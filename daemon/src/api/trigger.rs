//! `mantle.v1.TriggerService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::trigger_service_server::TriggerService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::IntoProto;
use crate::triggers::Triggers;

pub struct TriggerApi {
    pub triggers: Triggers,
}

#[tonic::async_trait]
impl TriggerService for TriggerApi {
    async fn list_triggers(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        let caller = caller(&request)?;
        let triggers = self
            .triggers
            .list(caller, &request.get_ref().workflow)
            .await?;
        Ok(Response::new(pb::ListTriggersResponse {
            triggers: triggers.into_iter().map(IntoProto::into_proto).collect(),
        }))
    }

    async fn pause_trigger(
        &self,
        request: Request<pb::PauseTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let caller = caller(&request)?;
        let trigger = self.triggers.pause(caller, &request.get_ref().id).await?;
        Ok(Response::new(trigger.into_proto()))
    }

    async fn resume_trigger(
        &self,
        request: Request<pb::ResumeTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let caller = caller(&request)?;
        let trigger = self.triggers.resume(caller, &request.get_ref().id).await?;
        Ok(Response::new(trigger.into_proto()))
    }

    async fn fire_trigger(
        &self,
        request: Request<pb::FireTriggerRequest>,
    ) -> Result<Response<pb::FireTriggerResponse>, Status> {
        let caller = caller(&request)?;
        let execution = self.triggers.fire(caller, &request.get_ref().id).await?;
        Ok(Response::new(pb::FireTriggerResponse {
            execution: Some(execution.into_proto()),
        }))
    }
}
