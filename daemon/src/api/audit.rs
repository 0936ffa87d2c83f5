//! `mantle.v1.AuditService`.

use mantle_proto::v1 as pb;
use mantle_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::{from_timestamp, timestamp};
use crate::tenancy::audit::{Audit, audit_filter};
use crate::tenancy::{page_request, page_token};

pub struct AuditApi {
    pub audit: Audit,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let since = from_timestamp("since", req.since)?;
        let filter = audit_filter(&req.actor, &req.action, &req.result, since)?;
        let page = self.audit.list(caller, &req.tenant, &filter, &page).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            events: page
                .items
                .into_iter()
                .map(|(e, tenant)| pb::AuditEvent {
                    id: e.id.to_string(),
                    tenant,
                    time: Some(timestamp(e.time)),
                    actor: e.actor,
                    action: e.action,
                    resource: e.resource,
                    result: e.result,
                    detail: e.detail.unwrap_or_default(),
                })
                .collect(),
        }))
    }
}
