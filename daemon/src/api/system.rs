//! `mantle.v1.SystemService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::system_service_server::SystemService;
use tonic::{Request, Response, Status};

use super::caller;
use crate::store::Backend;

pub struct SystemApi {
    pub backend: Backend,
}

#[tonic::async_trait]
impl SystemService for SystemApi {
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::ServerInfo {
            version: crate::VERSION.to_owned(),
            database: self.backend.as_str().to_owned(),
            caller: Some(caller.into()),
        }))
    }
}
