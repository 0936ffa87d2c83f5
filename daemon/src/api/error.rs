//! The one place domain errors become gRPC statuses.

use tonic::{Code, Status};

use crate::{auth, tenancy};

impl From<tenancy::Error> for Status {
    fn from(err: tenancy::Error) -> Status {
        let code = match &err {
            tenancy::Error::InvalidArgument { .. } => Code::InvalidArgument,
            tenancy::Error::NotFound(_) => Code::NotFound,
            tenancy::Error::AlreadyExists(_) => Code::AlreadyExists,
            tenancy::Error::PermissionDenied(_) => Code::PermissionDenied,
            tenancy::Error::FailedPrecondition(_) => Code::FailedPrecondition,
            tenancy::Error::Unavailable(_) => Code::Unavailable,
            tenancy::Error::Internal(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

impl From<auth::Error> for Status {
    fn from(err: auth::Error) -> Status {
        let code = match &err {
            auth::Error::Unauthenticated(_) => Code::Unauthenticated,
            auth::Error::PermissionDenied(_) => Code::PermissionDenied,
            auth::Error::TenantNotFound(_) => Code::NotFound,
            auth::Error::Store(crate::store::Error::Unavailable(_)) => Code::Unavailable,
            auth::Error::Store(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

/// Internal errors are logged in full and answered with a short message.
fn status(code: Code, message: String) -> Status {
    match code {
        Code::Internal => {
            tracing::error!(error = %message, "internal error");
            Status::internal("internal error; see the daemon's log")
        }
        Code::Unavailable => {
            tracing::warn!(error = %message, "dependency unavailable");
            Status::unavailable(message)
        }
        _ => Status::new(code, message),
    }
}
