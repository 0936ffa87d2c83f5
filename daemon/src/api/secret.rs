//! `mantle.v1.SecretService`.

use std::collections::BTreeMap;

use mantle_proto::v1 as pb;
use mantle_proto::v1::secret_service_server::SecretService;
use tonic::{Request, Response, Status};

use super::caller;
use super::convert::timestamp;
use crate::model::secret::SecretMeta;
use crate::secrets::Secrets;
use crate::tenancy::{page_request, page_token};

/// Default number of secrets re-encrypted per batch.
const DEFAULT_ROTATION_BATCH: u32 = 100;

pub struct SecretApi {
    pub secrets: Secrets,
}

fn to_pb(m: SecretMeta) -> pb::Secret {
    pb::Secret {
        name: m.name,
        r#type: m.kind,
        field_names: m.field_names,
        create_time: Some(timestamp(m.create_time)),
        update_time: Some(timestamp(m.update_time)),
        key_id: m.key_id,
    }
}

fn fields(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn create_secret(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let meta = self
            .secrets
            .create(caller, &req.name, &req.r#type, &fields(&req.fields))
            .await?;
        Ok(Response::new(to_pb(meta)))
    }

    async fn update_secret(
        &self,
        request: Request<pb::UpdateSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let meta = self
            .secrets
            .update(caller, &req.name, &fields(&req.fields))
            .await?;
        Ok(Response::new(to_pb(meta)))
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::Secret>, Status> {
        let caller = caller(&request)?;
        let meta = self.secrets.get(caller, &request.get_ref().name).await?;
        Ok(Response::new(to_pb(meta)))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let page = page_request(req.page_size, &req.page_token)?;
        let page = self.secrets.list(caller, &page).await?;
        Ok(Response::new(pb::ListSecretsResponse {
            next_page_token: page_token(page.next_cursor.as_deref()),
            secrets: page.items.into_iter().map(to_pb).collect(),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request)?;
        self.secrets.delete(caller, &request.get_ref().name).await?;
        Ok(Response::new(()))
    }

    async fn rotate_encryption_key(
        &self,
        request: Request<pb::RotateEncryptionKeyRequest>,
    ) -> Result<Response<pb::RotateEncryptionKeyResponse>, Status> {
        let caller = caller(&request)?;
        let batch = match request.get_ref().batch_size {
            n if n < 0 => return Err(Status::invalid_argument("batch_size: must not be negative")),
            0 => DEFAULT_ROTATION_BATCH,
            n => n as u32,
        };
        let rotation = self.secrets.rotate(caller, batch).await?;
        Ok(Response::new(pb::RotateEncryptionKeyResponse {
            key_id: self.secrets.key_id().to_owned(),
            rotated: rotation.rotated,
            remaining: rotation.remaining,
        }))
    }
}
