//! The library's error type.

use std::path::PathBuf;

use tonic::Code;

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

    /// The daemon answered with a response the client cannot use.
    #[error("invalid response from server: {0}")]
    InvalidResponse(String),
}

impl Error {
    /// The gRPC status code, if this error is a gRPC status.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }

    /// The gRPC status, if this error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Rpc(status) => Some(status),
            _ => None,
        }
    }

    /// True when the daemon could not be reached: a failed connection or an UNAVAILABLE status.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. }) || self.code() == Some(Code::Unavailable)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Rpc(Box::new(status))
    }
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

    #[test]
    fn error_chain_joins_distinct_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }
}
