//! The one place domain errors become gRPC statuses.

use tonic::{Code, Status};

use prost::Message;

use crate::{auth, definitions, executions, secrets, tenancy};

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
            auth::Error::Store(
                crate::store::Error::Unavailable(_) | crate::store::Error::BehindAFailure,
            ) => Code::Unavailable,
            auth::Error::Store(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

impl From<definitions::Error> for Status {
    fn from(err: definitions::Error) -> Status {
        let code = match &err {
            definitions::Error::Invalid { file, problems } => {
                return invalid_workflow(file, problems);
            }
            definitions::Error::InvalidArgument { .. } => Code::InvalidArgument,
            definitions::Error::NotFound(_) => Code::NotFound,
            definitions::Error::PermissionDenied(_) => Code::PermissionDenied,
            definitions::Error::ResourceExhausted(_) => Code::ResourceExhausted,
            definitions::Error::Unavailable(_) => Code::Unavailable,
            definitions::Error::Internal(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

impl From<executions::Error> for Status {
    fn from(err: executions::Error) -> Status {
        let code = match &err {
            executions::Error::InvalidArgument { .. } => Code::InvalidArgument,
            executions::Error::NotFound(_) => Code::NotFound,
            executions::Error::PermissionDenied(_) => Code::PermissionDenied,
            executions::Error::FailedPrecondition(_) => Code::FailedPrecondition,
            executions::Error::ResourceExhausted(_) => Code::ResourceExhausted,
            executions::Error::Unavailable(_) => Code::Unavailable,
            executions::Error::Internal(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

impl From<secrets::Error> for Status {
    fn from(err: secrets::Error) -> Status {
        let code = match &err {
            secrets::Error::InvalidArgument { .. } => Code::InvalidArgument,
            secrets::Error::NotFound(_) => Code::NotFound,
            secrets::Error::AlreadyExists(_) => Code::AlreadyExists,
            secrets::Error::PermissionDenied(_) => Code::PermissionDenied,
            secrets::Error::FailedPrecondition(_) => Code::FailedPrecondition,
            secrets::Error::Unavailable(_) => Code::Unavailable,
            secrets::Error::Internal(_) => Code::Internal,
        };
        status(code, err.to_string())
    }
}

/// `google.rpc.Status`, the standard envelope of rich error details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// Most problems repeated in the plain status message (all are in the details).
const PROBLEMS_IN_MESSAGE: usize = 20;

/// INVALID_ARGUMENT listing every problem: in the message for people, and as
/// `mantle.v1.ValidationProblems` in the details for programs.
fn invalid_workflow(file: &str, problems: &[crate::workflow::Problem]) -> Status {
    let mut message = format!(
        "{file}: the workflow has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(PROBLEMS_IN_MESSAGE) {
        message.push('\n');
        message.push_str(&p.render(file));
    }
    if problems.len() > PROBLEMS_IN_MESSAGE {
        message.push_str(&format!(
            "\n… and {} more",
            problems.len() - PROBLEMS_IN_MESSAGE
        ));
    }
    let details = mantle_proto::v1::ValidationProblems {
        problems: problems
            .iter()
            .map(|p| super::convert::problem(file, p))
            .collect(),
    };
    let rpc_status = RpcStatus {
        code: Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/mantle.v1.ValidationProblems".to_owned(),
            value: details.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::InvalidArgument,
        message,
        rpc_status.encode_to_vec().into(),
    )
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
