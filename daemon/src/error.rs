//! What kind of failure a domain error is, in the domain's own terms: each domain error
//! enum says its [`ErrorKind`] (an exhaustive `match`, so a new variant must choose one),
//! and the API layer maps kinds to gRPC codes in one place (`api/error.rs`). Domain
//! modules never see `tonic`.
//!
//! A domain error caused by another keeps it as its `source()`: a store error, in a `Store`
//! variant whose kind is the store error's (one mapping, below). Its message stays whole
//! (answers show only the message), so a chain printed in full repeats the cause.

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

/// What a store error means to the domain operation that met it: the one mapping of store
/// errors, which every domain error carrying one as its cause delegates to.
impl ServiceError for crate::store::Error {
    fn kind(&self) -> ErrorKind {
        use crate::store::Error as E;
        match self {
            E::NotFound(_) => ErrorKind::NotFound,
            E::AlreadyExists(_) => ErrorKind::AlreadyExists,
            E::Conflict(_) => ErrorKind::FailedPrecondition,
            E::Exhausted(_) => ErrorKind::ResourceExhausted,
            E::Unavailable(_) | E::BehindAFailure => ErrorKind::Unavailable,
            E::Config(_) | E::Internal(_) | E::Fenced(_) | E::NewerSchema(_) => ErrorKind::Internal,
        }
    }
}

/// The message of a domain error caused by a store error: the store's own, without the
/// `database unavailable: ` and `database error: ` prefixes (the domain's answers never had
/// them), and a lost lease said briefly. The store error itself is the domain error's
/// `source()`.
pub struct StoreMessage<'a>(pub &'a crate::store::Error);

impl std::fmt::Display for StoreMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::store::Error as E;
        match self.0 {
            E::Unavailable(message) | E::Internal(message) => f.write_str(message),
            E::Fenced(id) => write!(f, "lease lost on execution {id}"),
            other => std::fmt::Display::fmt(other, f),
        }
    }
}
