//! What kind of failure a domain error is, in the domain's own terms: each domain error
//! enum says its [`ErrorKind`] (an exhaustive `match`, so a new variant must choose one),
//! and the API layer maps kinds to gRPC codes in one place (`api/error.rs`). Domain
//! modules never see `tonic`.

/// The kinds of failure an answer can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong, whatever the state (a bad field).
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// No credentials, or ones that are not valid.
    Unauthenticated,
    /// Valid credentials without the right to do this.
    PermissionDenied,
    /// The request is right but the resource's state refuses it (cancelling an ended
    /// execution twice, a key that is in use).
    FailedPrecondition,
    /// A cap or a rate limit.
    ResourceExhausted,
    /// Something the daemon depends on is away; the same request may pass later.
    Unavailable,
    /// A bug or a broken invariant: logged in full, answered briefly.
    Internal,
}

/// A domain error that knows its [`ErrorKind`].
pub trait ServiceError: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

impl ServiceError for crate::store::Error {
    fn kind(&self) -> ErrorKind {
        use crate::store::Error as E;
        match self {
            E::Unavailable(_) | E::BehindAFailure => ErrorKind::Unavailable,
            // Store errors that reach an answer unconverted are the daemon's problem.
            E::NotFound(_)
            | E::AlreadyExists(_)
            | E::Config(_)
            | E::Internal(_)
            | E::Conflict(_)
            | E::Exhausted(_)
            | E::Fenced(_) => ErrorKind::Internal,
        }
    }
}
