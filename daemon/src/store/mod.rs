//! Persistence. Traits here speak domain types; `sqlite/` and `postgres/` implement them.
//! This is the only module that imports sqlx.

pub mod postgres;
mod shared;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::definition::{Definition, DefinitionSummary, NewVersion, VersionInfo};
use crate::model::execution::{
    Checkpoint, Created, Delivery, DeliveryOutcome, Event, Execution, ExecutionFilter, Lease,
    NewExecution, Order, StepAttempt, Ticket, Transition, UsageTotal,
};
use crate::model::secret::Sealed;
use crate::model::secret::{SecretMeta, StoredSecret};
use crate::model::tenant::{
    ApiKey, AuditEvent, NewApiKey, Page, PageRequest, Tenant, TenantUpdate, View,
};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The database cannot be reached right now.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The configured database URL or file cannot be used.
    #[error("{0}")]
    Config(String),
    #[error("database error: {0}")]
    Internal(String),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// A cap was reached (the tenant's queue is full).
    #[error("{0}")]
    Exhausted(String),
    /// The writer no longer holds the execution's lease; nothing was written.
    #[error("lease lost: another daemon owns execution {0}")]
    Fenced(uuid::Uuid),
    /// A transition that was not tried: it was queued behind one of its execution's that
    /// was not written (see [`Order`](crate::model::execution::Order)). Once that one is
    /// written, it can go again at once.
    #[error("database unavailable: an earlier checkpoint of this execution was not written")]
    BehindAFailure,
    /// The database has migrations this binary does not know: a newer binary applied them.
    /// The message names them and what to do.
    #[error("{0}")]
    NewerSchema(String),
}

impl Error {
    /// Whether this is [`Error::BehindAFailure`].
    pub fn is_behind_a_failure(&self) -> bool {
        matches!(self, Error::BehindAFailure)
    }

    /// Whether the same write may succeed later (the database is away or busy, or the write
    /// waited on one that was not written); any other error will come again, and retrying
    /// would loop.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::BehindAFailure)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a store's group-commit writers write (`sqlite/writer.rs`, `postgres/writer.rs`):
/// everything queued is committed together, each job with its own outcome.
enum Work {
    /// A driver's checkpoint, written only while `lease` holds.
    Transition(Lease, std::sync::Arc<Transition>),
    /// A new execution with nothing to check first (see [`NewRow::simple`]).
    Create(Box<NewRow>),
    /// An audit record.
    Audit(Box<AuditEvent>),
}

struct Job {
    work: Work,
    /// The transition this one is queued behind, whose outcome may not be known yet.
    after: Option<Ticket>,
    /// Resolved with this job's outcome.
    ticket: Option<Ticket>,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Job {
    /// Whether it must wait for a later batch: the transition it follows is not written yet.
    fn waits(&self) -> bool {
        self.after.as_ref().is_some_and(|t| t.outcome().is_none())
    }

    /// The job follows a transition that was not written, so nothing of it may be.
    fn follows_failure(&self) -> bool {
        self.after.as_ref().and_then(Ticket::outcome) == Some(false)
    }

    /// Resolves the job's ticket, then answers its submitter.
    fn answer(self, result: Result<()>) {
        if let Some(ticket) = &self.ticket {
            ticket.resolve(result.is_ok());
        }
        let _ = self.done.send(result);
    }

    /// The execution (or audit record) the job is about, for its error.
    fn id(&self) -> uuid::Uuid {
        match &self.work {
            Work::Transition(lease, _) => lease.execution_id,
            Work::Create(row) => row.id,
            Work::Audit(e) => e.id,
        }
    }
}

fn stopped() -> Error {
    Error::Unavailable("the database writers stopped".to_owned())
}

/// Queues a job for the writers, or answers it at once when it follows a transition that
/// was not written (or the writers are gone).
fn hand_over(queue: &tokio::sync::mpsc::UnboundedSender<Job>, job: Job) {
    if job.follows_failure() {
        return job.answer(Err(Error::BehindAFailure));
    }
    if let Err(tokio::sync::mpsc::error::SendError(job)) = queue.send(job) {
        job.answer(Err(stopped()));
    }
}

/// The queue to a store's writers; closing it lets them finish what is queued and stop.
struct Writers {
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>>,
    /// The writers commit jobs in the order queued and hold back a job whose `after` is not
    /// settled (SQLite's one writer thread). Otherwise (PostgreSQL's writers, several at
    /// once) a job is handed to them only once what it follows is written.
    in_order: bool,
}

impl Writers {
    fn new(queue: tokio::sync::mpsc::UnboundedSender<Job>, in_order: bool) -> Writers {
        Writers {
            queue: std::sync::Mutex::new(Some(queue)),
            in_order,
        }
    }

    /// Queues `work` and waits for its commit.
    async fn submit(&self, work: Work) -> Result<()> {
        self.submit_in(work, Order::default()).await
    }

    /// Queues `work` in the place `order` gives it and waits for its commit.
    async fn submit_in(&self, work: Work, order: Order) -> Result<()> {
        let (done, result) = tokio::sync::oneshot::channel();
        let ticket = order.ticket.clone();
        let job = Job {
            work,
            after: order.after,
            ticket: order.ticket,
            done,
        };
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match queue {
            None => job.answer(Err(stopped())),
            Some(queue) if self.in_order || !job.waits() => hand_over(&queue, job),
            // Writers that may take jobs in any order get it once what it follows is
            // written, by a task of its own: the submitter need not be awake for it.
            Some(queue) => {
                tokio::spawn(async move {
                    if let Some(earlier) = &job.after {
                        earlier.settled().await;
                    }
                    hand_over(&queue, job);
                });
            }
        }
        let answer = result.await.unwrap_or_else(|_| Err(stopped()));
        // Writers resolve the tickets of the jobs they answer; one dropped unanswered did not.
        if let (Some(ticket), Err(_)) = (&ticket, &answer)
            && ticket.outcome().is_none()
        {
            ticket.resolve(false);
        }
        answer
    }

    fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A new execution's row: the one way one is written. Every insert (the checkpoint
/// writers' group commit, and a start that claims an idempotency key or checks a
/// concurrency cap first) writes [`NewRow::COLUMNS`] from it, in that order.
struct NewRow {
    id: uuid::Uuid,
    tenant_id: uuid::Uuid,
    workflow: String,
    version: i64,
    /// `pending`, or `queued` behind the tenant's concurrency cap.
    status: &'static str,
    inputs: String,
    trigger: String,
    create_time: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    /// The starter's lease, which a queued execution does not have yet.
    owner: Option<String>,
    lease_expires: Option<DateTime<Utc>>,
    lease_epoch: i32,
}

impl NewRow {
    /// The columns it fills, in the order every statement binds them.
    const COLUMNS: &[&str] = &[
        "id",
        "tenant_id",
        "workflow",
        "version",
        "status",
        "inputs",
        "trigger_info",
        "create_time",
        "deadline",
        "owner",
        "lease_expires",
        "lease_epoch",
    ];

    /// Pending and leased to its starter (epoch 1), or queued without a lease.
    fn new(e: &NewExecution, lease_expires: DateTime<Utc>, queued: bool) -> NewRow {
        NewRow {
            id: e.id,
            tenant_id: e.tenant_id,
            workflow: e.workflow.clone(),
            version: e.version,
            status: if queued { "queued" } else { "pending" },
            inputs: e.inputs.to_string(),
            trigger: e.trigger.to_string(),
            create_time: e.now,
            deadline: e.deadline,
            owner: (!queued).then(|| e.owner.clone()),
            lease_expires: (!queued).then_some(lease_expires),
            lease_epoch: if queued { 0 } else { 1 },
        }
    }

    /// The row of a start with nothing to check first (no idempotency key, no concurrency
    /// cap), which the writers insert; `None` when the start must check something first.
    fn simple(e: &NewExecution, lease_expires: DateTime<Utc>) -> Option<NewRow> {
        if e.idempotency.is_some() || e.concurrency.is_some() || e.fire.is_some() {
            return None;
        }
        Some(NewRow::new(e, lease_expires, false))
    }

    /// `INSERT INTO executions (COLUMNS) VALUES (...)`, `placeholder(k)` writing the k-th
    /// value (from 1).
    fn insert_sql(placeholder: impl Fn(usize) -> String) -> String {
        let values: Vec<String> = (1..=Self::COLUMNS.len()).map(placeholder).collect();
        format!(
            "INSERT INTO executions ({}) VALUES ({})",
            Self::COLUMNS.join(", "),
            values.join(", ")
        )
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A migration known to the binary and whether the database has it, or one the database
/// recorded that the binary does not know (a newer binary applied it).
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    /// When it was applied; `None` while pending.
    pub applied_at: Option<DateTime<Utc>>,
    /// Whether this binary knows the migration.
    pub known: bool,
}

impl MigrationStatus {
    /// `applied`, `pending`, or `unknown` (applied, but not known to this binary).
    pub fn state(&self) -> &'static str {
        match (self.known, self.applied_at.is_some()) {
            (false, _) => "unknown",
            (true, true) => "applied",
            (true, false) => "pending",
        }
    }
}

/// [`Error::NewerSchema`] when the database has migrations this binary does not know: a
/// binary this old must not write to a schema it does not understand.
pub fn refuse_newer_schema(status: &[MigrationStatus]) -> Result<()> {
    let unknown: Vec<String> = status
        .iter()
        .filter(|m| !m.known)
        .map(|m| format!("{} {:?}", m.version, m.description))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let newest = status
        .iter()
        .filter(|m| m.known)
        .map(|m| m.version)
        .max()
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    let (noun, verb) = if unknown.len() == 1 {
        ("migration", "is")
    } else {
        ("migrations", "are")
    };
    Err(Error::NewerSchema(format!(
        "the database schema is newer than this binary ({noun} {} {verb} applied in the \
         database but unknown to mantle {}, whose newest migration is {newest}): run the \
         mantle version that applied it (or a newer one), or restore a backup taken before \
         that upgrade into a new database (see docs/backup.md)",
        unknown.join(", "),
        env!("CARGO_PKG_VERSION"),
    )))
}

/// Tenants and API keys.
#[async_trait::async_trait]
pub trait TenantStore: Send + Sync {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()>;
    async fn get_tenant(&self, name: &str) -> Result<Tenant>;
    async fn get_tenant_by_id(&self, id: uuid::Uuid) -> Result<Tenant>;
    /// Takes one request from a tenant's rate-limit bucket kept in the database (so every
    /// replica shares it), with the database clock. PostgreSQL only.
    async fn take_rate_limit(
        &self,
        tenant_id: uuid::Uuid,
        limit_per_minute: u32,
    ) -> Result<crate::model::rate::Decision>;
    async fn list_tenants(&self, page: &PageRequest) -> Result<Page<Tenant>>;
    async fn update_tenant(
        &self,
        name: &str,
        update: &TenantUpdate,
        now: DateTime<Utc>,
    ) -> Result<Tenant>;
    /// Deletes the tenant and its API keys.
    async fn delete_tenant(&self, name: &str) -> Result<()>;

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey>;
    /// Keys of one tenant (or operator keys for `None`), newest first.
    async fn list_api_keys(
        &self,
        tenant_id: Option<uuid::Uuid>,
        show_revoked: bool,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>>;
    async fn get_api_key(&self, id: &str) -> Result<ApiKey>;
    /// A key and its token hash, for authentication; `None` when no such key exists.
    async fn api_key_credential(&self, id: &str) -> Result<Option<(ApiKey, Vec<u8>)>>;
    /// Sets `revoke_time` unless already set; returns the key.
    async fn revoke_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<ApiKey>;
    async fn touch_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<()>;
}

/// Workflow definitions, always scoped by tenant.
#[async_trait::async_trait]
pub trait DefinitionStore: Send + Sync {
    /// Stores `v` as the next version unless the latest live version has the same content
    /// hash. Concurrent applies of one workflow are serialized. Returns the latest version
    /// and whether it was created.
    async fn apply_definition(&self, v: &NewVersion) -> Result<(Definition, bool)>;
    /// A version (`None`: the latest) of a workflow that is not deleted.
    async fn get_definition(
        &self,
        tenant_id: uuid::Uuid,
        name: &str,
        version: Option<i64>,
    ) -> Result<Definition>;
    /// Workflows that are not deleted, by name.
    async fn list_definitions(
        &self,
        tenant_id: uuid::Uuid,
        page: &PageRequest,
    ) -> Result<Page<DefinitionSummary>>;
    /// Versions of a workflow that is not deleted, newest first.
    async fn list_definition_versions(
        &self,
        tenant_id: uuid::Uuid,
        name: &str,
        page: &PageRequest,
    ) -> Result<Page<VersionInfo>>;
    /// A version whether or not the workflow was deleted since: executions pinned it.
    async fn get_pinned_version(
        &self,
        tenant_id: uuid::Uuid,
        name: &str,
        version: i64,
    ) -> Result<Definition>;
    /// Marks a workflow deleted; its versions stay readable to executions.
    async fn delete_definition(
        &self,
        tenant_id: uuid::Uuid,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// Executions, their step attempts and events. Writes that advance an execution present
/// the lease's fencing token and fail with [`Error::Fenced`] once another daemon took over.
#[async_trait::async_trait]
pub trait ExecutionStore: Send + Sync {
    /// Inserts a pending execution owned (leased) by `e.owner` — unless its idempotency key
    /// was used before: then the earlier execution if the request was the same, and
    /// [`Error::Conflict`] if it was not.
    async fn create_execution(&self, e: &NewExecution) -> Result<Created>;
    /// Moves queued executions to pending (claimable) while their tenant has free slots
    /// under its concurrency cap (bounded by `global_max`); returns how many.
    async fn promote_queued(&self, global_max: Option<u32>) -> Result<u64>;
    /// Queued executions per tenant, across every daemon (tenants with none are absent).
    async fn count_queued(&self) -> Result<Vec<(uuid::Uuid, i64)>>;
    /// Writes a transition in one transaction, if `lease` is still held.
    async fn write_transition(&self, lease: Lease, t: &Transition) -> Result<()> {
        self.queue_transition(lease, std::sync::Arc::new(t.clone()), Order::default())
            .await
    }
    /// Writes a transition like [`ExecutionStore::write_transition`], in the place `order`
    /// gives it: behind `order.after`, which may not be durable yet, it is committed in a
    /// later transaction than that one, and not at all if that one was not written.
    /// `order.ticket` is resolved with its outcome. So a driver can hand over its next
    /// checkpoint while the previous one commits, and a writer that commits in order
    /// (SQLite's) goes from one to the next without waiting for the driver.
    ///
    /// The contract the driver's commit pipeline (`engine::pipeline`) relies on:
    /// - The first poll of the returned future queues the transition: its place is fixed
    ///   then, whoever polls it later (the pipeline polls it once with a waker that does
    ///   nothing, and waits for the answer only when it needs it). Transitions each queued
    ///   behind the one before are committed in the order of their first polls.
    /// - The answers come in that order: a transition is answered when it is committed or
    ///   refused, and one behind it is committed only after that, in a later transaction.
    ///   So waiting for the newest answer waits for all of them, with one wake-up (the
    ///   pipeline needs the order only for that: it takes every answer).
    /// - A transition that is not written fails every transition queued behind it (and
    ///   behind those) with [`Error::BehindAFailure`], unwritten, and resolves their tickets
    ///   as not written; they may be queued again, behind live tickets, once it is written.
    async fn queue_transition(
        &self,
        lease: Lease,
        t: std::sync::Arc<Transition>,
        order: Order,
    ) -> Result<()>;
    /// The execution, all its attempts, and the last event sequence number.
    async fn load_execution(&self, id: uuid::Uuid) -> Result<(Execution, Vec<StepAttempt>, i64)>;
    /// Leases up to `limit` executions that need work and whose lease is free or expired.
    async fn claim_executions(&self, owner: &str, lease_ms: u64, limit: u32) -> Result<Vec<Lease>>;
    /// Extends the leases `owner` holds on `ids` (the executions it drives); returns those
    /// it still holds, with their cancel flags. A lease not named is left to expire, so an
    /// execution its owner no longer drives is claimed again instead of being kept forever.
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[uuid::Uuid],
        lease_ms: u64,
    ) -> Result<Vec<(uuid::Uuid, bool)>>;
    /// Gives up one lease so another daemon can take the execution at once.
    async fn release_lease(&self, lease: Lease) -> Result<()>;
    /// Sets the cancel flag of a non-terminal execution (one statement); returns the
    /// execution.
    async fn request_cancel(&self, tenant_id: uuid::Uuid, id: uuid::Uuid) -> Result<Execution>;
    /// Sets the cancel flag of at most `limit` unfinished executions `filter` matches whose
    /// flag is not set yet, in one statement; returns their ids.
    async fn request_cancel_matching(
        &self,
        tenant_id: uuid::Uuid,
        filter: &ExecutionFilter,
        limit: u32,
    ) -> Result<Vec<uuid::Uuid>>;
    /// Makes a failed, cancelled or timed-out execution runnable again in a new generation,
    /// leased by `owner`.
    async fn retry_execution(
        &self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Lease>;
    async fn get_execution(&self, tenant_id: uuid::Uuid, id: uuid::Uuid) -> Result<Execution>;
    /// Newest first.
    /// Executions newest first; a page ends at [`MAX_PAGE_BYTES`] (their sizes are read
    /// first, so no more are loaded than returned), and a BASIC one has no inputs, outputs
    /// or trigger.
    ///
    /// [`MAX_PAGE_BYTES`]: crate::model::tenant::MAX_PAGE_BYTES
    async fn list_executions(
        &self,
        tenant_id: uuid::Uuid,
        filter: &ExecutionFilter,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<Execution>>;
    /// An execution's attempts in the order they started (those not started yet last), a
    /// page at a time as [`Store::list_executions`]; a BASIC page has no outputs.
    async fn list_attempts(
        &self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<StepAttempt>>;
    /// The last event number of each of `ids` that has events (any tenant's: for telling
    /// this daemon's watch streams that a log grew, never answered to a caller).
    async fn last_event_seqs(&self, ids: &[uuid::Uuid]) -> Result<Vec<(uuid::Uuid, i64)>>;
    /// The checkpoints of an execution's step in `generation`, in order (every one: an
    /// attempt reads them all to go on from them; a step makes a bounded number).
    async fn list_checkpoints(
        &self,
        id: uuid::Uuid,
        step_name: &str,
        generation: i32,
    ) -> Result<Vec<Checkpoint>>;
    /// The model usage an execution's checkpoints record, every generation's.
    async fn execution_usage(&self, id: uuid::Uuid) -> Result<UsageTotal>;
    /// The model usage a tenant's checkpoints record since `since`.
    async fn tenant_usage_since(
        &self,
        tenant_id: uuid::Uuid,
        since: DateTime<Utc>,
    ) -> Result<UsageTotal>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn list_events(
        &self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>>;
}

/// Secrets (sealed), the encryption keys' check values, and the audit log.
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync {
    async fn create_secret(&self, secret: &StoredSecret) -> Result<()>;
    /// Replaces the sealed fields (and field names) of an existing secret.
    async fn update_secret(&self, secret: &StoredSecret) -> Result<()>;
    async fn get_secret(&self, tenant_id: uuid::Uuid, name: &str) -> Result<StoredSecret>;
    /// By name.
    async fn list_secrets(
        &self,
        tenant_id: uuid::Uuid,
        page: &PageRequest,
    ) -> Result<Page<SecretMeta>>;
    async fn delete_secret(&self, tenant_id: uuid::Uuid, name: &str) -> Result<()>;
    /// Up to `limit` secrets of any tenant not sealed with `key_id`.
    async fn secrets_not_sealed_with(&self, key_id: &str, limit: u32) -> Result<Vec<StoredSecret>>;
    /// Replaces a secret's ciphertext if it is still sealed with `old_key_id`; returns
    /// whether it was (a concurrent update wins otherwise).
    async fn reseal_secret(&self, secret: &StoredSecret, old_key_id: &str) -> Result<bool>;
    async fn count_secrets_not_sealed_with(&self, key_id: &str) -> Result<i64>;
    /// Every key id some secret is sealed with.
    async fn secret_key_ids(&self) -> Result<Vec<String>>;
    /// Recorded keys with their check values, newest first.
    async fn encryption_keys(&self) -> Result<Vec<(String, Sealed, DateTime<Utc>)>>;
    async fn record_encryption_key(
        &self,
        key_id: &str,
        check: &Sealed,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// Webhook deliveries: queued with an execution's end (in its transition), then claimed,
/// sent and finished by the delivery loop of any daemon.
#[async_trait::async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Takes up to `limit` due webhook deliveries for `hold_ms` (another daemon will not
    /// send them meanwhile).
    async fn claim_deliveries(
        &self,
        claim: &crate::model::execution::DeliveryClaim,
    ) -> Result<Vec<Delivery>>;
    async fn finish_delivery(
        &self,
        id: uuid::Uuid,
        attempts: i32,
        outcome: &DeliveryOutcome,
    ) -> Result<()>;
    /// Deliveries `filter` matches, newest first; `tenant_id: None` lists every tenant's.
    /// A page ends at [`MAX_PAGE_BYTES`], and a BASIC one has no payloads.
    ///
    /// [`MAX_PAGE_BYTES`]: crate::model::tenant::MAX_PAGE_BYTES
    async fn list_deliveries(
        &self,
        tenant_id: Option<uuid::Uuid>,
        filter: &crate::model::delivery::DeliveryFilter,
        page: &PageRequest,
        view: View,
    ) -> Result<Page<Delivery>>;
}

/// The idempotency keys of `StartExecution`, claimed in [`ExecutionStore::create_execution`].
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Deletes idempotency keys that expired before `now`; returns how many.
    async fn sweep_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64>;
}

/// What one deletion removed: executions, and every row (theirs included) that went with
/// them: step attempts, events, checkpoints, webhook deliveries, idempotency keys and
/// trigger fires; and how long it held its transaction open (from the moment it had the
/// write, so not counting a wait for SQLite's lock), by which batches are sized.
/// Equality compares what was deleted, not the time it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deleted {
    pub executions: u64,
    pub rows: u64,
    pub held: Duration,
}

impl PartialEq for Deleted {
    fn eq(&self, other: &Deleted) -> bool {
        (self.executions, self.rows) == (other.executions, other.rows)
    }
}

impl Eq for Deleted {}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, other: Deleted) {
        self.executions += other.executions;
        self.rows += other.rows;
        self.held += other.held;
    }
}

/// Which of a tenant's executions a batched deletion takes.
#[derive(Debug, Clone, Copy)]
pub enum Doomed<'a> {
    /// Finished before `ended_before`, of `workflow` if set.
    Finished {
        ended_before: DateTime<Utc>,
        workflow: Option<&'a str>,
    },
    /// Every one, finished or not (the tenant is being deleted).
    All,
}

/// Deleting old data in small batches (retention, manual deletion, tenant deletion), and
/// the lease that lets one daemon at a time do it.
#[async_trait::async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes at most `limit` of the tenant's executions that `doomed` names, oldest first,
    /// with everything that belongs to them, in one short transaction.
    async fn delete_executions(
        &self,
        tenant_id: uuid::Uuid,
        doomed: Doomed<'_>,
        limit: u32,
    ) -> Result<Deleted>;
    /// Deletes one finished execution with everything that belongs to them. NotFound when
    /// the tenant has no such execution, Conflict when it has not finished.
    async fn delete_execution(&self, tenant_id: uuid::Uuid, id: uuid::Uuid) -> Result<Deleted>;
    /// How many of the tenant's executions finished before `ended_before`.
    async fn count_finished_before(
        &self,
        tenant_id: uuid::Uuid,
        ended_before: DateTime<Utc>,
    ) -> Result<u64>;
    /// Deletes at most `limit` audit events older than `before`, oldest first.
    async fn delete_audit_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;
    /// Gives back to the file system at most `max_pages` pages that deletions freed (SQLite's
    /// incremental vacuum); returns how many. PostgreSQL's autovacuum does this itself: 0.
    async fn reclaim_space(&self, max_pages: u32) -> Result<u64>;
    /// Takes or renews the installation-wide lease `name` for `owner` until `expires`,
    /// unless another owner holds it past `now`. Whether `owner` holds it.
    async fn take_singleton_lease(
        &self,
        name: &str,
        owner: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<bool>;
}

/// The audit log: who changed what, when, with which result.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Records one event, through the writers' group commit (no commit of its own).
    async fn record_audit(&self, event: &AuditEvent) -> Result<()>;
    /// Events `filter` matches, newest first; `tenant_id: None` lists every tenant's and the
    /// installation's events.
    async fn list_audit(
        &self,
        tenant_id: Option<uuid::Uuid>,
        filter: &crate::model::tenant::AuditFilter,
        page: &PageRequest,
    ) -> Result<Page<AuditEvent>>;
}

/// Registered triggers (apply writes them with the version, in
/// [`DefinitionStore::apply_definition`]) and what their fires did. Fires themselves are
/// recorded by [`ExecutionStore::create_execution`] with the execution they start.
#[async_trait::async_trait]
pub trait TriggerStore: Send + Sync {
    /// The tenant's triggers (of one workflow when given), by workflow and key.
    async fn list_triggers(
        &self,
        tenant_id: uuid::Uuid,
        workflow: Option<&str>,
    ) -> Result<Vec<crate::model::trigger::Trigger>>;
    async fn get_trigger(
        &self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<crate::model::trigger::Trigger>;
    /// The tenant's webhook trigger of `path`.
    async fn find_webhook_trigger(
        &self,
        tenant_id: uuid::Uuid,
        path: &str,
    ) -> Result<crate::model::trigger::Trigger>;
    async fn set_trigger_paused(
        &self,
        tenant_id: uuid::Uuid,
        id: uuid::Uuid,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<crate::model::trigger::Trigger>;
    /// Every tenant's triggers of `kind` that are not paused: what a scheduler fires.
    async fn active_triggers(&self, kind: &str) -> Result<Vec<crate::model::trigger::Trigger>>;
    /// How many triggers of `kind` there are and their latest update: changes when one is
    /// registered, changed, paused, resumed or removed. Cheap: a scheduler asks every second.
    async fn trigger_changes(&self, kind: &str) -> Result<(i64, Option<DateTime<Utc>>)>;
    /// Takes the polling of trigger `id` until `until`, unless another daemon holds it past
    /// `now`; whether it was taken.
    async fn claim_trigger_poll(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Stores how far the trigger read (email: its folder's UIDVALIDITY and last UID).
    async fn set_trigger_state(&self, id: uuid::Uuid, state: &serde_json::Value) -> Result<()>;
    /// Notes what a fire did, unless a later scheduled time was noted already.
    async fn note_fire(
        &self,
        trigger_id: uuid::Uuid,
        fire: &crate::model::trigger::LastFire,
    ) -> Result<()>;
}

/// Everything the daemon stores.
#[async_trait::async_trait]
pub trait Store:
    TenantStore
    + DefinitionStore
    + ExecutionStore
    + DeliveryStore
    + IdempotencyStore
    + SecretStore
    + AuditStore
    + TriggerStore
    + RetentionStore
{
    fn backend(&self) -> Backend;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;
    /// Every migration the binary knows, in order, then any the database recorded that it
    /// does not know.
    async fn migration_status(&self) -> Result<Vec<MigrationStatus>>;
    /// Applies pending migrations (serialized across replicas on PostgreSQL); refuses, with
    /// [`Error::NewerSchema`], a database that has migrations the binary does not know.
    async fn migrate(&self) -> Result<()>;
    /// Writes a consistent copy of the database to `dest`, which must not exist, while
    /// daemons serve; returns its size in bytes. SQLite only (PostgreSQL: `pg_dump`).
    async fn backup(&self, dest: &Path) -> Result<u64>;
    /// Closes the connections (SQLite folds its write-ahead log into the database file).
    async fn close(&self);
    /// Whether leases of daemons that are gone can be taken at once (SQLite: the file lock
    /// proves no other daemon runs) rather than after they expire.
    fn single_daemon(&self) -> bool {
        self.backend() == Backend::Sqlite
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `postgres://…`, `sqlite://…`, or empty for `mantle.db` in the data directory.
    pub url: String,
    pub data_dir: std::path::PathBuf,
    pub max_connections: u32,
    /// How long to keep retrying an unreachable database before giving up.
    pub connect_timeout: Duration,
    /// SQLite only: lock the database file so no second daemon can open it.
    pub exclusive: bool,
}

/// Opens (and for SQLite, creates) the configured database. Does not migrate.
pub async fn open(options: &OpenOptions) -> Result<Arc<dyn Store>> {
    if options.url.starts_with("postgres://") || options.url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(options).await?))
    } else if let Some(path) = sqlite_path(options) {
        Ok(Arc::new(sqlite::SqliteStore::open(&path, options).await?))
    } else {
        Err(Error::Config(format!(
            "database URL {:?}: unsupported scheme; use postgres://… or sqlite://…",
            redact_url(&options.url)
        )))
    }
}

/// The SQLite database file `options` name (`None` when they name another database).
pub fn sqlite_path(options: &OpenOptions) -> Option<std::path::PathBuf> {
    if options.url.is_empty() {
        return Some(default_sqlite_path(&options.data_dir));
    }
    let rest = options.url.strip_prefix("sqlite:")?;
    Some(std::path::PathBuf::from(
        rest.trim_start_matches("//")
            .split('?')
            .next()
            .unwrap_or(rest),
    ))
}

/// The default SQLite database file inside a data directory.
pub fn default_sqlite_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("mantle.db")
}

/// A database URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("garbage"), "garbage");
    }
}
