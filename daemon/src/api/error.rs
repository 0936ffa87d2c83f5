//! The one place domain errors become gRPC statuses.

use tonic::{Code, Status};

use prost::Message;

use crate::error::{ErrorKind, ServiceError};
use crate::{auth, definitions, executions, secrets, tenancy};

/// The one mapping from a domain error's kind to a gRPC code.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// A domain error as an answer: its kind's code, its message (see [`status`]).
fn service_status(err: &dyn ServiceError) -> Status {
    status(code(err.kind()), err.to_string())
}

impl From<tenancy::Error> for Status {
    fn from(err: tenancy::Error) -> Status {
        service_status(&err)
    }
}

impl From<auth::Error> for Status {
    fn from(err: auth::Error) -> Status {
        service_status(&err)
    }
}

impl From<definitions::Error> for Status {
    fn from(err: definitions::Error) -> Status {
        match &err {
            definitions::Error::Invalid { file, problems } => invalid_workflow(file, problems),
            _ => service_status(&err),
        }
    }
}

impl From<executions::Error> for Status {
    fn from(err: executions::Error) -> Status {
        service_status(&err)
    }
}

impl From<secrets::Error> for Status {
    fn from(err: secrets::Error) -> Status {
        service_status(&err)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    /// Every variant of every domain error that reaches an answer, and its code.
    #[test]
    fn each_domain_error_has_its_code() {
        let s = || "x".to_owned();
        let cases: Vec<(Status, Code)> = vec![
            (
                tenancy::Error::InvalidArgument {
                    field: "f",
                    message: s(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (tenancy::Error::NotFound(s()).into(), Code::NotFound),
            (
                tenancy::Error::PermissionDenied(s()).into(),
                Code::PermissionDenied,
            ),
            (
                tenancy::Error::FailedPrecondition(s()).into(),
                Code::FailedPrecondition,
            ),
            (
                tenancy::Error::Store(store::Error::AlreadyExists(s())).into(),
                Code::AlreadyExists,
            ),
            (
                auth::Error::Unauthenticated("no token").into(),
                Code::Unauthenticated,
            ),
            (
                auth::Error::PermissionDenied(s()).into(),
                Code::PermissionDenied,
            ),
            (auth::Error::TenantNotFound(s()).into(), Code::NotFound),
            (
                auth::Error::Store(store::Error::Unavailable(s())).into(),
                Code::Unavailable,
            ),
            (
                auth::Error::Store(store::Error::BehindAFailure).into(),
                Code::Unavailable,
            ),
            (
                auth::Error::Store(store::Error::NotFound(s())).into(),
                Code::Internal,
            ),
            (
                auth::Error::Store(store::Error::Fenced(uuid::Uuid::nil())).into(),
                Code::Internal,
            ),
            (
                auth::Error::Store(store::Error::Conflict(s())).into(),
                Code::Internal,
            ),
            (
                definitions::Error::Invalid {
                    file: s(),
                    problems: Vec::new(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                definitions::Error::InvalidArgument {
                    field: "f",
                    message: s(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (definitions::Error::NotFound(s()).into(), Code::NotFound),
            (
                definitions::Error::PermissionDenied(s()).into(),
                Code::PermissionDenied,
            ),
            (
                definitions::Error::ResourceExhausted(s()).into(),
                Code::ResourceExhausted,
            ),
            (
                definitions::Error::Unavailable(s()).into(),
                Code::Unavailable,
            ),
            (definitions::Error::Internal(s()).into(), Code::Internal),
            (
                definitions::Error::Store(store::Error::NotFound(s())).into(),
                Code::NotFound,
            ),
            (
                executions::Error::InvalidArgument {
                    field: s(),
                    message: s(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (executions::Error::NotFound(s()).into(), Code::NotFound),
            (
                executions::Error::PermissionDenied(s()).into(),
                Code::PermissionDenied,
            ),
            (
                executions::Error::ResourceExhausted(s()).into(),
                Code::ResourceExhausted,
            ),
            (
                executions::Error::Unavailable(s()).into(),
                Code::Unavailable,
            ),
            (executions::Error::Internal(s()).into(), Code::Internal),
            (
                executions::Error::Store(store::Error::Conflict(s())).into(),
                Code::FailedPrecondition,
            ),
            (
                secrets::Error::InvalidArgument {
                    field: s(),
                    message: s(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (secrets::Error::NotFound(s()).into(), Code::NotFound),
            (
                secrets::Error::PermissionDenied(s()).into(),
                Code::PermissionDenied,
            ),
            (
                secrets::Error::Store(store::Error::Unavailable(s())).into(),
                Code::Unavailable,
            ),
        ];
        for (i, (status, want)) in cases.into_iter().enumerate() {
            assert_eq!(status.code(), want, "case {i}: {status:?}");
            if want == Code::Internal {
                assert_eq!(
                    status.message(),
                    "internal error; see the daemon's log",
                    "case {i}: internal errors are answered briefly"
                );
            }
        }
    }

    /// Every store error, the code of an answer it caused and the answer's message.
    fn store_errors() -> Vec<(store::Error, Code, &'static str)> {
        vec![
            (
                store::Error::NotFound("workflow \"w\"".to_owned()),
                Code::NotFound,
                "workflow \"w\" not found",
            ),
            (
                store::Error::AlreadyExists("secret \"s\"".to_owned()),
                Code::AlreadyExists,
                "secret \"s\" already exists",
            ),
            (
                store::Error::Unavailable("pool timed out".to_owned()),
                Code::Unavailable,
                "pool timed out",
            ),
            (
                store::Error::BehindAFailure,
                Code::Unavailable,
                "database unavailable: an earlier checkpoint of this execution was not written",
            ),
            (
                store::Error::Conflict("execution e is running".to_owned()),
                Code::FailedPrecondition,
                "execution e is running",
            ),
            (
                store::Error::Exhausted("the queue is full".to_owned()),
                Code::ResourceExhausted,
                "the queue is full",
            ),
            (
                store::Error::Config("bad url".to_owned()),
                Code::Internal,
                "bad url",
            ),
            (
                store::Error::Internal("boom".to_owned()),
                Code::Internal,
                "boom",
            ),
            (
                store::Error::NewerSchema("the database schema is newer".to_owned()),
                Code::Internal,
                "the database schema is newer",
            ),
            (
                store::Error::Fenced(uuid::Uuid::nil()),
                Code::Internal,
                "lease lost on execution 00000000-0000-0000-0000-000000000000",
            ),
        ]
    }

    /// The store error that caused `err`, found through `source()`.
    fn store_cause<'e>(err: &'e (dyn std::error::Error + 'static)) -> &'e store::Error {
        err.source()
            .and_then(|cause| cause.downcast_ref::<store::Error>())
            .unwrap_or_else(|| panic!("{err:?} has no store error as its cause"))
    }

    /// A domain error made from a store error keeps it as its cause (not its text), answers
    /// the code the store error's kind says, with the message the answers always had.
    #[test]
    fn a_store_error_stays_the_cause_of_each_domain_error() {
        fn check<E>(domain: &str, make: impl Fn(store::Error) -> E)
        where
            E: ServiceError + 'static,
            Status: From<E>,
        {
            for (store_err, want, message) in store_errors() {
                let shown = format!("{store_err:?}");
                let err = make(store_err);
                assert_eq!(format!("{:?}", store_cause(&err)), shown, "{domain}");
                assert_eq!(err.to_string(), message, "{domain}: {shown}");
                let status = Status::from(err);
                assert_eq!(status.code(), want, "{domain}: {shown}");
                if want != Code::Internal {
                    assert_eq!(status.message(), message, "{domain}: {shown}");
                }
            }
        }
        check("tenancy", tenancy::Error::from);
        check("tenancy, through auth", |e| {
            tenancy::Error::from(auth::Error::from(e))
        });
        check("definitions", definitions::Error::from);
        check("definitions, through auth", |e| {
            definitions::Error::from(auth::Error::from(e))
        });
        check("executions", executions::Error::from);
        check("executions, through the engine", |e| {
            executions::Error::from(crate::engine::Error::from(e))
        });
        check("secrets", secrets::Error::from);
        check("secrets, through auth", |e| {
            secrets::Error::from(auth::Error::from(e))
        });
    }

    /// Every domain tells a refused caller alike (one `From<auth::Error>`).
    #[test]
    fn each_domain_tells_a_refused_caller_alike() {
        fn check<E>(domain: &str, make: impl Fn(auth::Error) -> E)
        where
            Status: From<E>,
        {
            let cases = [
                (
                    auth::Error::Unauthenticated("no token"),
                    Code::PermissionDenied,
                    "no token",
                ),
                (
                    auth::Error::PermissionDenied("lacks a scope".to_owned()),
                    Code::PermissionDenied,
                    "lacks a scope",
                ),
                (
                    auth::Error::TenantNotFound("acme".to_owned()),
                    Code::NotFound,
                    "tenant \"acme\" not found",
                ),
            ];
            for (err, want, message) in cases {
                let status = Status::from(make(err));
                assert_eq!(
                    (status.code(), status.message()),
                    (want, message),
                    "{domain}"
                );
            }
        }
        check("tenancy", tenancy::Error::from);
        check("definitions", definitions::Error::from);
        check("executions", executions::Error::from);
        check("secrets", secrets::Error::from);
    }

    /// Authentication keeps the store error as its cause too, but answers UNAVAILABLE or
    /// INTERNAL only: a missing key or tenant is told apart before the store fails.
    #[test]
    fn a_store_error_in_authentication_is_unavailable_or_internal() {
        for (store_err, want, _) in store_errors() {
            let shown = store_err.to_string();
            let err = auth::Error::from(store_err);
            assert_eq!(store_cause(&err).to_string(), shown);
            assert_eq!(err.to_string(), shown);
            let expected = match want {
                Code::Unavailable => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            };
            assert_eq!(err.kind(), expected, "{shown}");
        }
    }

    /// Invalid workflow files carry their problems in the details.
    #[test]
    fn an_invalid_file_carries_its_problems() {
        let problem = crate::workflow::Problem {
            pos: crate::workflow::yaml::Pos { line: 3, column: 5 },
            path: "steps[0]".to_owned(),
            message: "bad".to_owned(),
        };
        let status: Status = definitions::Error::Invalid {
            file: "w.yaml".to_owned(),
            problems: vec![problem],
        }
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("w.yaml:3:5: steps[0]: bad"),
            "{}",
            status.message()
        );
        assert!(!status.details().is_empty());
    }
}
