//! Waiting for an execution from the command line: `run`/`retry` with `--wait` or
//! `--follow`, and `logs --follow`. The daemon may restart meanwhile (a deploy): the wait
//! goes on, and mantlectl says once that the daemon is unreachable and once that it is
//! back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mantle_client::proto::execution_event::Kind;
use mantle_client::proto::{Execution, ExecutionEvent, StepStatus};
use mantle_client::{
    Client, Error, FollowOptions, FollowUpdate, format_duration, step_status_str,
    timestamp_to_datetime,
};

use super::executions::{event_line, print_event};
use crate::output::OutputFormat;

/// How often `--follow` says what is still running while no event arrives.
const QUIET_INTERVAL: Duration = Duration::from_secs(15);

/// What a wait shows as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nothing but the outage notes (`--wait`).
    Nothing,
    /// Event lines on stderr, and what is still running during a long step (`--follow`).
    Progress,
    /// Every event on stdout in the output format (`logs --follow`).
    Events(OutputFormat),
}

/// Waits until execution `id` has finished, showing what `show` asks for, and returns it.
/// Events after `after_seq` are shown. `timeout` ends the wait with
/// [`Error::WaitTimeout`] (the caller maps it to exit code 5).
pub async fn wait_for(
    client: &Client,
    id: &str,
    after_seq: i64,
    timeout: Option<Duration>,
    show: Show,
) -> Result<Execution, Error> {
    let options = FollowOptions {
        after_seq,
        timeout,
        quiet_interval: (show == Show::Progress).then_some(QUIET_INTERVAL),
    };
    let address = client.address().to_string();
    let mut progress = Progress::new(Instant::now());
    client
        .follow_execution(id, &options, |update| match update {
            FollowUpdate::Event(event) => {
                progress.record(event);
                match show {
                    Show::Nothing => {}
                    Show::Progress => eprintln!("{}", event_line(event)),
                    Show::Events(format) => print_event(format, event),
                }
            }
            FollowUpdate::Quiet => eprintln!("{}", progress.quiet_line(Utc::now())),
            FollowUpdate::Unreachable(err) => {
                eprintln!("{}", unreachable_note(&address, id, err, timeout));
            }
            FollowUpdate::Reconnected => {
                eprintln!("mantlectl: the daemon at {address} answers again; still waiting for execution {id}");
            }
        })
        .await
}

/// The one line said when the daemon stops answering during a wait.
fn unreachable_note(address: &str, id: &str, err: &Error, timeout: Option<Duration>) -> String {
    let until = match timeout {
        Some(t) => format!(
            "until it answers or --timeout {} passes",
            format_duration(t)
        ),
        None => "until it answers (Ctrl-C stops waiting, not the execution)".to_owned(),
    };
    format!(
        "mantlectl: the daemon at {address} cannot be reached ({err}); execution {id} goes on \
         there. Reconnecting {until}"
    )
}

/// The sequence number of the last event recorded for a finished execution (0 when it has
/// none). A watch ends after each terminal event, and a retried execution has several, so
/// it is watched again after the last event seen until a round brings nothing new.
pub async fn last_recorded_seq(client: &Client, id: &str) -> Result<i64, Error> {
    let mut last_seq = 0;
    loop {
        let mut events = client.watch_execution(id, last_seq).await?;
        let before = last_seq;
        while let Ok(next) = tokio::time::timeout(Duration::from_secs(1), events.next_event()).await
        {
            match next? {
                Some(event) => last_seq = last_seq.max(event.seq),
                None => break,
            }
        }
        if last_seq == before {
            return Ok(last_seq);
        }
    }
}

/// What `--follow` knows of an execution from its events: the steps under way.
#[derive(Debug)]
struct Progress {
    started: Instant,
    /// Steps whose latest event says running or pending, by name.
    active: BTreeMap<String, Active>,
    /// Whether the execution waits in its tenant's queue.
    queued: bool,
}

#[derive(Debug)]
struct Active {
    attempt: i32,
    status: StepStatus,
    since: Option<DateTime<Utc>>,
    message: String,
}

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress {
            started,
            active: BTreeMap::new(),
            queued: false,
        }
    }

    fn record(&mut self, event: &ExecutionEvent) {
        match Kind::try_from(event.kind).unwrap_or_default() {
            Kind::StepStatus => {
                let status = StepStatus::try_from(event.step_status).unwrap_or_default();
                if matches!(status, StepStatus::Running | StepStatus::Pending) {
                    self.active.insert(
                        event.step_name.clone(),
                        Active {
                            attempt: event.attempt,
                            status,
                            since: event.time.as_ref().and_then(timestamp_to_datetime),
                            message: event.message.clone(),
                        },
                    );
                } else {
                    self.active.remove(&event.step_name);
                }
            }
            Kind::ExecutionStatus => {
                self.queued =
                    event.execution_status == mantle_client::proto::ExecutionStatus::Queued as i32;
            }
            Kind::Log | Kind::Unspecified => {}
        }
    }

    /// `21:40:05 … still running after 1m5s: step fetch attempt 1 running for 45s`.
    fn quiet_line(&self, now: DateTime<Utc>) -> String {
        let waited = format_duration(self.started.elapsed());
        let mut line = format!("{} … ", now.format("%H:%M:%S"));
        if self.queued {
            line.push_str(&format!(
                "still queued after {waited} (the tenant's concurrency cap is reached)"
            ));
            return line;
        }
        line.push_str(&format!("still running after {waited}"));
        const SHOWN: usize = 3;
        let steps: Vec<String> = self
            .active
            .iter()
            .take(SHOWN)
            .map(|(name, a)| {
                let mut text = format!(
                    "step {name} attempt {} {}",
                    a.attempt,
                    step_status_str(a.status as i32)
                );
                if let Some(since) = a.since {
                    let took = (now - since).to_std().unwrap_or_default();
                    text.push_str(&format!(" for {}", format_duration(took)));
                }
                if !a.message.is_empty() {
                    text.push_str(&format!(" ({})", a.message));
                }
                text
            })
            .collect();
        if !steps.is_empty() {
            line.push_str(": ");
            line.push_str(&steps.join("; "));
        }
        if self.active.len() > SHOWN {
            line.push_str(&format!(" and {} more", self.active.len() - SHOWN));
        }
        line.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, status: StepStatus, seconds: i64, message: &str) -> ExecutionEvent {
        ExecutionEvent {
            kind: Kind::StepStatus as i32,
            step_name: name.into(),
            attempt: 1,
            step_status: status as i32,
            time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn quiet_lines_name_the_steps_under_way() {
        let now = DateTime::from_timestamp(1_700_049_660, 0).unwrap(); // 12:01:00 UTC
        let mut progress = Progress::new(Instant::now());
        assert_eq!(
            progress.quiet_line(now),
            "12:01:00 … still running after 0s"
        );
        progress.record(&step("fetch", StepStatus::Running, 1_700_049_615, ""));
        progress.record(&step("a", StepStatus::Running, 1_700_049_600, ""));
        progress.record(&step("a", StepStatus::Completed, 1_700_049_601, ""));
        progress.record(&step(
            "b",
            StepStatus::Pending,
            1_700_049_650,
            "retry at 2023-11-15T12:01:10.000Z",
        ));
        assert_eq!(
            progress.quiet_line(now),
            "12:01:00 … still running after 0s: step b attempt 1 pending for 10s (retry at \
             2023-11-15T12:01:10.000Z); step fetch attempt 1 running for 45s"
        );
        let queued = ExecutionEvent {
            kind: Kind::ExecutionStatus as i32,
            execution_status: mantle_client::proto::ExecutionStatus::Queued as i32,
            ..Default::default()
        };
        progress.record(&queued);
        assert!(progress.quiet_line(now).contains("still queued"));
    }

    #[test]
    fn many_steps_are_summed_up() {
        let now = DateTime::from_timestamp(1_700_049_660, 0).unwrap();
        let mut progress = Progress::new(Instant::now());
        for name in ["a", "b", "c", "d", "e"] {
            progress.record(&step(name, StepStatus::Running, 1_700_049_600, ""));
        }
        let line = progress.quiet_line(now);
        assert!(
            line.ends_with("step c attempt 1 running for 1m and 2 more"),
            "{line}"
        );
    }

    #[test]
    fn the_outage_note_says_the_execution_goes_on() {
        let err = Error::from(tonic::Status::unavailable("connection refused"));
        let note = unreachable_note("http://127.0.0.1:8080", "x1", &err, None);
        assert!(
            note.contains("cannot be reached (unavailable: connection refused)"),
            "{note}"
        );
        assert!(note.contains("execution x1 goes on there"), "{note}");
        let note = unreachable_note(
            "http://127.0.0.1:8080",
            "x1",
            &err,
            Some(Duration::from_secs(90)),
        );
        assert!(
            note.ends_with("until it answers or --timeout 1m30s passes"),
            "{note}"
        );
    }
}
