//! `mantle.v1.WebhookService`.

use std::sync::Arc;

use mantle_proto::v1 as pb;
use mantle_proto::v1::webhook_service_server::WebhookService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::timestamp;
use crate::store::Store;
use crate::tenancy::{page_request, page_token};

pub struct WebhookApi {
    pub store: Arc<dyn Store>,
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let view = super::convert::view_from_pb(req.view)?;
        let filter = crate::webhooks::delivery_filter(&req.status, &req.execution_id)?;
        let page = crate::webhooks::list(
            self.store.as_ref(),
            caller,
            &req.tenant,
            &filter,
            &page,
            view,
        )
        .await?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            deliveries: page
                .items
                .into_iter()
                .map(|(d, tenant)| pb::WebhookDelivery {
                    id: d.id.to_string(),
                    tenant,
                    execution_id: d.execution_id.to_string(),
                    url: d.url,
                    next_attempt_time: (d.status == "pending").then(|| timestamp(d.next_attempt)),
                    status: d.status,
                    attempts: d.attempts,
                    last_error: d.last_error.unwrap_or_default(),
                    last_http_status: d.last_status.unwrap_or_default(),
                    create_time: Some(timestamp(d.create_time)),
                    delivered_time: d.delivered_time.map(timestamp),
                    payload: d.payload,
                })
                .collect(),
        }))
    }
}
