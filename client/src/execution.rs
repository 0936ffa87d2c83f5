//! Executions: status names, list filters, the event stream and waiting for the end.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mantle_proto::v1::execution_event::Kind;
use mantle_proto::v1::{ExecutionEvent, ExecutionStatus, StepStatus};
use tokio_stream::Stream;
use tonic::Code;

use crate::Error;

/// The lower-case name of an execution status without its prefix, such as `completed`
/// or `timed_out`.
pub fn execution_status_name(status: ExecutionStatus) -> &'static str {
    match status {
        ExecutionStatus::Unspecified => "unspecified",
        ExecutionStatus::Pending => "pending",
        ExecutionStatus::Queued => "queued",
        ExecutionStatus::Running => "running",
        ExecutionStatus::Completed => "completed",
        ExecutionStatus::Failed => "failed",
        ExecutionStatus::Cancelled => "cancelled",
        ExecutionStatus::TimedOut => "timed_out",
    }
}

/// [`execution_status_name`] of a raw enum value (`unspecified` for unknown values).
pub fn execution_status_str(status: i32) -> &'static str {
    execution_status_name(ExecutionStatus::try_from(status).unwrap_or_default())
}

/// Parses a status name as [`execution_status_name`] prints it; case does not matter, and
/// the proto spelling (`EXECUTION_STATUS_TIMED_OUT`) and `timed-out` are accepted too.
pub fn parse_execution_status(name: &str) -> Option<ExecutionStatus> {
    let lower = name.trim().to_ascii_lowercase().replace('-', "_");
    let bare = lower.strip_prefix("execution_status_").unwrap_or(&lower);
    [
        ExecutionStatus::Pending,
        ExecutionStatus::Queued,
        ExecutionStatus::Running,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Cancelled,
        ExecutionStatus::TimedOut,
    ]
    .into_iter()
    .find(|s| execution_status_name(*s) == bare)
}

/// Whether an execution in `status` has finished: completed, failed, cancelled or timed out.
pub fn is_terminal(status: ExecutionStatus) -> bool {
    matches!(
        status,
        ExecutionStatus::Completed
            | ExecutionStatus::Failed
            | ExecutionStatus::Cancelled
            | ExecutionStatus::TimedOut
    )
}

/// The lower-case name of a step status without its prefix, such as `running`.
pub fn step_status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Unspecified => "unspecified",
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
        StepStatus::Cancelled => "cancelled",
    }
}

/// [`step_status_name`] of a raw enum value (`unspecified` for unknown values).
pub fn step_status_str(status: i32) -> &'static str {
    step_status_name(StepStatus::try_from(status).unwrap_or_default())
}

/// The execution status an event reports as finished, if it is an EXECUTION_STATUS event
/// with a terminal status.
pub fn terminal_status_of(event: &ExecutionEvent) -> Option<ExecutionStatus> {
    if Kind::try_from(event.kind).ok() != Some(Kind::ExecutionStatus) {
        return None;
    }
    ExecutionStatus::try_from(event.execution_status)
        .ok()
        .filter(|s| is_terminal(*s))
}

/// Which executions [`Client::list_executions`](crate::Client::list_executions) returns.
/// The default matches every execution of the tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Only executions of this workflow.
    pub workflow: Option<String>,
    /// Only executions in this state.
    pub status: Option<ExecutionStatus>,
    /// Only executions started at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only executions started before this time.
    pub created_before: Option<DateTime<Utc>>,
}

/// The events of a `WatchExecution` call, in sequence order. The stream ends after the
/// event that finishes the execution (or when the server closes it); a broken
/// connection is an error item.
pub struct ExecutionEvents {
    inner: tonic::Streaming<ExecutionEvent>,
}

impl std::fmt::Debug for ExecutionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionEvents").finish_non_exhaustive()
    }
}

impl ExecutionEvents {
    pub(crate) fn new(inner: tonic::Streaming<ExecutionEvent>) -> ExecutionEvents {
        ExecutionEvents { inner }
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next_event(&mut self) -> Result<Option<ExecutionEvent>, Error> {
        Ok(self.inner.message().await?)
    }
}

impl Stream for ExecutionEvents {
    type Item = Result<ExecutionEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(Error::from)))
    }
}

/// Whether an error while watching may be cured by polling and watching again: the
/// connection broke or the server was unavailable, rather than the request being refused.
pub(crate) fn is_transient_watch_error(err: &Error) -> bool {
    match err {
        Error::Connect { .. } => true,
        Error::Rpc(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Unimplemented
        ),
        _ => false,
    }
}

/// The pause before watching again after the stream dropped `failures` times in a row:
/// 250 ms doubling up to 5 s.
pub(crate) fn rewatch_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    Duration::from_millis(250)
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_lower_case_without_prefix() {
        assert_eq!(
            execution_status_name(ExecutionStatus::Completed),
            "completed"
        );
        assert_eq!(
            execution_status_name(ExecutionStatus::TimedOut),
            "timed_out"
        );
        assert_eq!(execution_status_str(99), "unspecified");
        assert_eq!(step_status_str(StepStatus::Skipped as i32), "skipped");
        assert_eq!(step_status_str(-1), "unspecified");
    }

    #[test]
    fn status_names_parse_back() {
        for s in [
            ExecutionStatus::Pending,
            ExecutionStatus::Queued,
            ExecutionStatus::Running,
            ExecutionStatus::Completed,
            ExecutionStatus::Failed,
            ExecutionStatus::Cancelled,
            ExecutionStatus::TimedOut,
        ] {
            assert_eq!(parse_execution_status(execution_status_name(s)), Some(s));
        }
        assert_eq!(
            parse_execution_status("EXECUTION_STATUS_TIMED_OUT"),
            Some(ExecutionStatus::TimedOut)
        );
        assert_eq!(
            parse_execution_status("Timed-Out"),
            Some(ExecutionStatus::TimedOut)
        );
        assert_eq!(parse_execution_status("unspecified"), None);
        assert_eq!(parse_execution_status("done"), None);
    }

    #[test]
    fn terminal_statuses() {
        assert!(is_terminal(ExecutionStatus::Completed));
        assert!(is_terminal(ExecutionStatus::Failed));
        assert!(is_terminal(ExecutionStatus::Cancelled));
        assert!(is_terminal(ExecutionStatus::TimedOut));
        assert!(!is_terminal(ExecutionStatus::Running));
        assert!(!is_terminal(ExecutionStatus::Pending));
        assert!(!is_terminal(ExecutionStatus::Queued));
        assert!(!is_terminal(ExecutionStatus::Unspecified));
    }

    #[test]
    fn only_terminal_execution_status_events_finish() {
        let mut event = ExecutionEvent {
            seq: 3,
            kind: Kind::ExecutionStatus as i32,
            execution_status: ExecutionStatus::Failed as i32,
            ..Default::default()
        };
        assert_eq!(terminal_status_of(&event), Some(ExecutionStatus::Failed));
        event.execution_status = ExecutionStatus::Running as i32;
        assert_eq!(terminal_status_of(&event), None);
        let step = ExecutionEvent {
            kind: Kind::StepStatus as i32,
            execution_status: ExecutionStatus::Completed as i32,
            ..Default::default()
        };
        assert_eq!(terminal_status_of(&step), None);
    }

    #[test]
    fn transient_errors_are_transport_failures_only() {
        assert!(is_transient_watch_error(&Error::from(
            tonic::Status::unavailable("x")
        )));
        assert!(is_transient_watch_error(&Error::from(tonic::Status::new(
            Code::Unknown,
            "h2 protocol error"
        ))));
        assert!(!is_transient_watch_error(&Error::from(
            tonic::Status::not_found("x")
        )));
        assert!(!is_transient_watch_error(&Error::from(
            tonic::Status::permission_denied("x")
        )));
    }

    #[test]
    fn rewatch_delay_grows_and_caps() {
        assert_eq!(rewatch_delay(1), Duration::from_millis(250));
        assert_eq!(rewatch_delay(2), Duration::from_millis(500));
        assert_eq!(rewatch_delay(10), Duration::from_secs(5));
    }
}
