//! The library's error type.

use std::path::PathBuf;

use mantle_proto::v1::{ValidationProblem, ValidationProblems};
use prost::Message as _;
use tonic::Code;

/// The `type_url` of the `google.protobuf.Any` status detail that lists a workflow
/// file's validation problems.
pub const VALIDATION_PROBLEMS_TYPE_URL: &str = "type.googleapis.com/mantle.v1.ValidationProblems";

/// Everything that can go wrong in the client library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon address could not be parsed.
    #[error("invalid address {input:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No connection could be established to the daemon.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The address that was dialled, for example `http://127.0.0.1:8080`.
        address: String,
        /// The transport error and its causes, joined with `: `.
        reason: String,
    },

    /// The daemon (or the transport) answered a call with a non-OK gRPC status.
    #[error("{}", format_status(.0))]
    Rpc(Box<tonic::Status>),

    /// The daemon refused a workflow file (INVALID_ARGUMENT) and listed its problems in
    /// the status details. Other INVALID_ARGUMENT answers are [`Error::Rpc`].
    #[error("{}", format_status(status))]
    Invalid {
        /// The INVALID_ARGUMENT status as received.
        status: Box<tonic::Status>,
        /// Every problem of the file, ordered by position; never empty.
        problems: Vec<ValidationProblem>,
    },

    /// A value cannot be sent as gRPC metadata (for example a token with a newline).
    #[error("invalid {field}: {reason}")]
    InvalidMetadata {
        /// Which value: `token` or `tenant`.
        field: &'static str,
        /// What is wrong with it. Never contains the value itself.
        reason: String,
    },

    /// The operator token file exists but cannot be used.
    #[error("cannot read operator token file {}: {reason}", path.display())]
    TokenFile {
        /// Path of the file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A duration such as `30d` or `12h` could not be parsed.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The duration as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Waiting for an execution took longer than the caller allowed; the execution goes on.
    #[error(
        "execution {id} did not finish within {}; it goes on (the wait ended, not the execution)",
        crate::duration::format_duration(*timeout)
    )]
    WaitTimeout {
        /// The execution waited for.
        id: String,
        /// How long the caller allowed.
        timeout: std::time::Duration,
    },

    /// The daemon answered with a response the client cannot use.
    #[error("invalid response from server: {0}")]
    InvalidResponse(String),
}

impl Error {
    /// The gRPC status code, if this error is a gRPC status.
    pub fn code(&self) -> Option<Code> {
        self.status().map(tonic::Status::code)
    }

    /// The gRPC status, if this error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Rpc(status) | Error::Invalid { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The validation problems of a refused workflow file; empty for every other error.
    pub fn problems(&self) -> &[ValidationProblem] {
        match self {
            Error::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// True when the daemon could not be reached: a failed connection or an UNAVAILABLE status.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. }) || self.code() == Some(Code::Unavailable)
    }
}

impl From<tonic::Status> for Error {
    /// INVALID_ARGUMENT statuses whose details list validation problems become
    /// [`Error::Invalid`]; everything else [`Error::Rpc`].
    fn from(status: tonic::Status) -> Self {
        let problems = validation_problems(&status);
        if problems.is_empty() {
            Error::Rpc(Box::new(status))
        } else {
            Error::Invalid {
                status: Box::new(status),
                problems,
            }
        }
    }
}

/// `google.rpc.Status`: what a server encodes into the `grpc-status-details-bin`
/// trailer (tonic exposes those bytes as [`tonic::Status::details`]).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The validation problems carried in the details of an INVALID_ARGUMENT status: every
/// `mantle.v1.ValidationProblems` detail, concatenated. Empty for other codes, for
/// statuses without details and for details that cannot be decoded.
pub fn validation_problems(status: &tonic::Status) -> Vec<ValidationProblem> {
    if status.code() != Code::InvalidArgument || status.details().is_empty() {
        return Vec::new();
    }
    let Ok(rpc_status) = RpcStatus::decode(status.details()) else {
        return Vec::new();
    };
    rpc_status
        .details
        .iter()
        .filter(|any| any.type_url == VALIDATION_PROBLEMS_TYPE_URL)
        .filter_map(|any| ValidationProblems::decode(any.value.as_slice()).ok())
        .flat_map(|p| p.problems)
        .collect()
}

/// A gRPC status code in lowercase words, for example `permission denied`.
pub fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// `<code in words>: <message>`, or just the code when the message is empty.
pub fn format_status(status: &tonic::Status) -> String {
    let words = code_words(status.code());
    let message = status.message().trim();
    if message.is_empty() {
        words.to_owned()
    } else {
        format!("{words}: {message}")
    }
}

/// Joins an error and its chain of sources with `: `, skipping a source whose text the
/// previous message already ends with (transport errors often repeat their cause).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_show_code_in_words_and_message() {
        let err = Error::from(tonic::Status::permission_denied(
            "missing scope tenants:admin",
        ));
        assert_eq!(
            err.to_string(),
            "permission denied: missing scope tenants:admin"
        );
        assert_eq!(err.code(), Some(Code::PermissionDenied));
    }

    #[test]
    fn rpc_errors_without_message_show_only_the_code() {
        let err = Error::from(tonic::Status::new(Code::FailedPrecondition, "  "));
        assert_eq!(err.to_string(), "failed precondition");
    }

    #[test]
    fn every_code_has_lowercase_words() {
        for code in 0..=16 {
            let words = code_words(Code::from_i32(code));
            assert!(!words.is_empty());
            assert_eq!(words, words.to_lowercase());
            assert!(!words.contains('_'));
        }
        assert_eq!(code_words(Code::Unauthenticated), "unauthenticated");
        assert_eq!(code_words(Code::AlreadyExists), "already exists");
    }

    #[test]
    fn unreachable_covers_connect_and_unavailable_only() {
        let connect = Error::Connect {
            address: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert!(connect.is_unreachable());
        assert!(Error::from(tonic::Status::unavailable("down")).is_unreachable());
        assert!(!Error::from(tonic::Status::not_found("x")).is_unreachable());
        assert_eq!(
            connect.to_string(),
            "cannot connect to http://127.0.0.1:1: connection refused"
        );
    }

    fn problem(line: u32, path: &str, message: &str) -> ValidationProblem {
        ValidationProblem {
            file: "hello.yaml".into(),
            line,
            column: 3,
            path: path.into(),
            message: message.into(),
        }
    }

    /// An INVALID_ARGUMENT status whose details hold `details` as `google.rpc.Status`.
    fn status_with_details(details: Vec<prost_types::Any>) -> tonic::Status {
        let encoded = RpcStatus {
            code: Code::InvalidArgument as i32,
            message: "hello.yaml: 2 problems".into(),
            details,
        }
        .encode_to_vec();
        tonic::Status::with_details(
            Code::InvalidArgument,
            "hello.yaml: 2 problems",
            encoded.into(),
        )
    }

    fn problems_any(problems: Vec<ValidationProblem>) -> prost_types::Any {
        prost_types::Any {
            type_url: VALIDATION_PROBLEMS_TYPE_URL.into(),
            value: ValidationProblems { problems }.encode_to_vec(),
        }
    }

    #[test]
    fn invalid_argument_details_decode_to_problems() {
        let expected = vec![
            problem(2, "steps[0].action", "unknown action core/lgo"),
            problem(7, "", "missing field name"),
        ];
        let status = status_with_details(vec![
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
                value: vec![0x0a, 0x01, b'x'],
            },
            problems_any(expected.clone()),
        ]);
        assert_eq!(validation_problems(&status), expected);
        let err = Error::from(status);
        assert!(matches!(err, Error::Invalid { .. }));
        assert_eq!(err.problems(), expected.as_slice());
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        assert_eq!(err.status().unwrap().message(), "hello.yaml: 2 problems");
        assert_eq!(err.to_string(), "invalid argument: hello.yaml: 2 problems");
        assert!(!err.is_unreachable());
    }

    #[test]
    fn statuses_without_problems_stay_plain_rpc_errors() {
        let plain = Error::from(tonic::Status::invalid_argument("source: required"));
        assert!(matches!(plain, Error::Rpc(_)));
        assert!(plain.problems().is_empty());

        let no_problem_detail = status_with_details(vec![]);
        assert!(validation_problems(&no_problem_detail).is_empty());
        assert!(matches!(Error::from(no_problem_detail), Error::Rpc(_)));

        let garbage =
            tonic::Status::with_details(Code::InvalidArgument, "bad", vec![0xff, 0xff].into());
        assert!(validation_problems(&garbage).is_empty());

        // Problems are only read from INVALID_ARGUMENT.
        let encoded = status_with_details(vec![problems_any(vec![problem(1, "", "x")])])
            .details()
            .to_vec();
        let other = tonic::Status::with_details(Code::Internal, "oops", encoded.into());
        assert!(validation_problems(&other).is_empty());
        assert!(
            Error::from(tonic::Status::not_found("x"))
                .problems()
                .is_empty()
        );
    }

    #[test]
    fn error_chain_joins_distinct_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
