//! A tenant's executions: start, read, follow, cancel, retry — with scope checks. Running
//! them is the engine's work; this layer decides who may ask for what.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::{self, Caller, Scope};
use crate::engine::{self, Engine, StartRequest};
use crate::model::execution::{Event, Execution, ExecutionFilter, StepAttempt};
use crate::model::tenant::{Page, PageRequest, TenantRef, View};
use crate::store::{self, Store};

/// Errors of execution management.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The store failed; its error is the cause, and says the kind.
    #[error("{}", crate::error::StoreMessage(.0))]
    Store(#[from] store::Error),
}

impl crate::error::ServiceError for Error {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind as K;
        match self {
            Error::InvalidArgument { .. } => K::InvalidArgument,
            Error::NotFound(_) => K::NotFound,
            Error::PermissionDenied(_) => K::PermissionDenied,
            Error::ResourceExhausted(_) => K::ResourceExhausted,
            Error::Unavailable(_) => K::Unavailable,
            Error::Internal(_) => K::Internal,
            Error::Store(err) => crate::error::ServiceError::kind(err),
        }
    }
}

impl From<engine::Error> for Error {
    fn from(err: engine::Error) -> Self {
        match err {
            engine::Error::InvalidArgument { field, message } => {
                Error::InvalidArgument { field, message }
            }
            engine::Error::ResourceExhausted(m) => Error::ResourceExhausted(m),
            engine::Error::Unavailable(m) => Error::Unavailable(m),
            engine::Error::Internal(m) => Error::Internal(m),
            engine::Error::Store(err) => Error::Store(err),
        }
    }
}

auth::impl_from_auth_error!(Error);

type Result<T, E = Error> = std::result::Result<T, E>;

/// Events a stream reads at once.
const FOLLOW_BATCH: u32 = 500;

/// How long a stream waits without a notice before it reads the log anyway: notices are
/// pushed, this is only the net under them.
const FOLLOW_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `event` is the execution's end.
fn ends_execution(event: &Event) -> bool {
    event.kind == crate::model::execution::EventKind::ExecutionStatus
        && event
            .status
            .as_deref()
            .and_then(crate::model::execution::ExecutionStatus::parse)
            .is_some_and(|s| s.is_terminal())
}

/// Parses an execution id; a malformed one is INVALID_ARGUMENT naming `id`.
pub fn parse_id(id: &str) -> Result<Uuid> {
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "id".to_owned(),
            message: "required".to_owned(),
        });
    }
    Uuid::parse_str(id).map_err(|_| Error::InvalidArgument {
        field: "id".to_owned(),
        message: format!("{id:?} is not an execution id"),
    })
}

/// Execution management.
#[derive(Clone)]
pub struct Executions {
    store: Arc<dyn Store>,
    engine: Engine,
}

impl Executions {
    pub fn new(store: Arc<dyn Store>, engine: Engine) -> Self {
        Executions { store, engine }
    }

    fn tenant(caller: &Caller, scope: Scope) -> Result<&TenantRef> {
        Ok(caller.acting_tenant(scope)?)
    }

    pub async fn start(
        &self,
        caller: &Caller,
        workflow: &str,
        version: i64,
        inputs_json: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Execution> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        if let Some(key) = idempotency_key
            && (key.is_empty()
                || key.len() > 255
                || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        {
            return Err(Error::InvalidArgument {
                field: "idempotency_key".to_owned(),
                message: "1 to 255 printable ASCII characters".to_owned(),
            });
        }
        if workflow.is_empty() {
            return Err(Error::InvalidArgument {
                field: "workflow".to_owned(),
                message: "required".to_owned(),
            });
        }
        if version < 0 {
            return Err(Error::InvalidArgument {
                field: "version".to_owned(),
                message: "must be 0 (latest) or a version number".to_owned(),
            });
        }
        let inputs = if inputs_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str::<serde_json::Value>(inputs_json) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => {
                    return Err(Error::InvalidArgument {
                        field: "inputs_json".to_owned(),
                        message: format!("expected a JSON object, got {other}"),
                    });
                }
                Err(e) => {
                    return Err(Error::InvalidArgument {
                        field: "inputs_json".to_owned(),
                        message: format!("not valid JSON: {e}"),
                    });
                }
            }
        };
        let execution = self
            .engine
            .start(StartRequest {
                tenant_id: tenant.id,
                workflow: workflow.to_owned(),
                version: (version > 0).then_some(version),
                inputs,
                trigger: serde_json::json!({"type": "api"}),
                idempotency_key: idempotency_key.map(str::to_owned),
                fire: None,
                fingerprint: None,
                trigger_input: false,
            })
            .await?;
        tracing::info!(execution = %execution.id, tenant = %tenant.name, workflow = %execution.workflow, version = execution.version, key_id = %caller.key_id, "execution started");
        Ok(execution)
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        Ok(self.store.get_execution(tenant.id, parse_id(id)?).await?)
    }

    /// The execution with what its model calls used so far.
    pub async fn get_with_usage(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Execution, crate::model::execution::UsageTotal)> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        let id = parse_id(id)?;
        // The execution first: it is the tenant's, or the answer is NOT_FOUND.
        let execution = self.store.get_execution(tenant.id, id).await?;
        let usage = self.store.execution_usage(id).await?;
        Ok((execution, usage))
    }

    pub async fn list(
        &self,
        caller: &Caller,
        filter: &ExecutionFilter,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<Execution>> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        if let Some(after) = &page.after
            && Uuid::parse_str(after).is_err()
        {
            return Err(Error::InvalidArgument {
                field: "page_token".to_owned(),
                message: "not a token returned by this server".to_owned(),
            });
        }
        Ok(self
            .store
            .list_executions(tenant.id, filter, page, view)
            .await?)
    }

    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        let execution = self.engine.cancel(tenant.id, parse_id(id)?).await?;
        tracing::info!(execution = %execution.id, key_id = %caller.key_id, "cancellation requested");
        Ok(execution)
    }

    /// Requests the cancellation of every unfinished execution `filter` matches; returns
    /// how many. At least one filter is needed, so that no request cancels everything by
    /// omission.
    pub async fn cancel_matching(&self, caller: &Caller, filter: &ExecutionFilter) -> Result<u64> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        if filter.workflow.is_none()
            && filter.status.is_none()
            && filter.created_after.is_none()
            && filter.created_before.is_none()
        {
            return Err(Error::InvalidArgument {
                field: "workflow".to_owned(),
                message: "set at least one of workflow, status, created_after and created_before"
                    .to_owned(),
            });
        }
        if let Some(status) = filter.status.filter(|s| s.is_terminal()) {
            return Err(Error::InvalidArgument {
                field: "status".to_owned(),
                message: format!(
                    "{} executions have finished; only pending, queued or running ones can be cancelled",
                    status.as_str()
                ),
            });
        }
        let n = self.engine.cancel_matching(tenant.id, filter).await?;
        tracing::info!(tenant = %tenant.name, count = n, key_id = %caller.key_id, "bulk cancellation requested");
        Ok(n)
    }

    /// Deletes a finished execution with everything that belongs to it.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        let id = parse_id(id)?;
        let deleted = self.store.delete_execution(tenant.id, id).await?;
        crate::retention::record(deleted);
        tracing::info!(execution = %id, key_id = %caller.key_id, "execution deleted");
        Ok(())
    }

    /// Deletes the finished executions that ended before `ended_before` (of `workflow` if
    /// set), in batches; returns how many.
    pub async fn delete_finished(
        &self,
        caller: &Caller,
        ended_before: chrono::DateTime<chrono::Utc>,
        workflow: Option<&str>,
    ) -> Result<u64> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        let deleted = crate::retention::delete_in_batches(
            self.store.as_ref(),
            tenant.id,
            store::Doomed::Finished {
                ended_before,
                workflow,
            },
            None,
        )
        .await?;
        tracing::info!(tenant = %tenant.name, executions = deleted.executions, key_id = %caller.key_id, "finished executions deleted");
        Ok(deleted.executions)
    }

    pub async fn retry(&self, caller: &Caller, id: &str) -> Result<Execution> {
        let tenant = Self::tenant(caller, Scope::ExecutionsWrite)?;
        let execution = self.engine.retry(tenant.id, parse_id(id)?).await?;
        tracing::info!(execution = %execution.id, key_id = %caller.key_id, "execution retried");
        Ok(execution)
    }

    pub async fn attempts(
        &self,
        caller: &Caller,
        id: &str,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<StepAttempt>> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        let id = parse_id(id)?;
        match self.store.list_attempts(tenant.id, id, page, view).await {
            // The cursor did not parse: not one this server gave.
            Err(store::Error::NotFound(what)) if what == "page" => Err(Error::InvalidArgument {
                field: "page_token".to_owned(),
                message: "not a token returned by this server".to_owned(),
            }),
            other => Ok(other?),
        }
    }

    /// Events after `after`, at most `limit`.
    pub async fn events(
        &self,
        caller: &Caller,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        Ok(self.store.list_events(tenant.id, id, after, limit).await?)
    }

    /// Follows execution `id`'s events after `after`: they come in order on the returned
    /// receiver, which ends once the execution has finished and every event was sent (a
    /// retried execution's stream goes on past its earlier terminal event), or with an
    /// error item; `shutdown` ends it with UNAVAILABLE. It reads the log only when told
    /// that it grew (see `engine::watch`), and once in a long while besides.
    pub async fn follow(
        &self,
        caller: &Caller,
        id: &str,
        after: i64,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Event>>> {
        if after < 0 {
            return Err(Error::InvalidArgument {
                field: "after_seq".to_owned(),
                message: "must not be negative".to_owned(),
            });
        }
        // NOT_FOUND (or PERMISSION_DENIED) now rather than inside the stream.
        let finished = self.get(caller, id).await?.status.is_terminal();
        let id = parse_id(id)?;
        let mut watch = self.watch(caller, id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let executions = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            let mut cursor = after;
            // A finished execution watched from past its end has nothing to send: the first
            // pass looks at its status as at the end of a log.
            let mut first = true;
            loop {
                // Notices from here on wake the wait below, even those sent while reading.
                watch.mark_seen();
                let events = match executions.events(&caller, id, cursor, FOLLOW_BATCH).await {
                    Ok(e) => e,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                let caught_up = events.len() < FOLLOW_BATCH as usize;
                let mut last_ended = false;
                for event in events {
                    cursor = event.seq;
                    last_ended = ends_execution(&event);
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !caught_up {
                    continue;
                }
                // The last event ended the execution: done, unless it was retried meanwhile.
                let maybe_ended = last_ended || (first && finished);
                first = false;
                if maybe_ended {
                    match executions.get(&caller, &id.to_string()).await {
                        Ok(e) if e.status.is_terminal() => return,
                        // Retried meanwhile: its next events are notified like any.
                        Ok(_) => {}
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    () = watch.changed() => {}
                    () = tokio::time::sleep(FOLLOW_RECHECK) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => {
                        let _ = tx.send(Err(Error::Unavailable(
                            "the daemon is shutting down; watch again from the last seq".to_owned(),
                        ))).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Registers a stream following execution `id`'s events for the caller's tenant;
    /// RESOURCE_EXHAUSTED when the tenant holds as many streams as it may.
    pub fn watch(&self, caller: &Caller, id: Uuid) -> Result<crate::engine::watch::Watch> {
        let tenant = Self::tenant(caller, Scope::ExecutionsRead)?;
        self.engine.watch(tenant.id, id).map_err(|too_many| {
            metrics::counter!("mantle_cap_rejections_total", "tenant_id" => tenant.id.to_string(), "kind" => "watch_streams").increment(1);
            Error::ResourceExhausted(format!(
                "the tenant has {} WatchExecution streams open, its limit \
                 (MANTLE_MAX_WATCH_STREAMS): close one, or follow the execution with \
                 GetExecution",
                too_many.cap
            ))
        })
    }
}
