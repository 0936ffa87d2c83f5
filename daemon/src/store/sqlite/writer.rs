//! The SQLite checkpoint writer: a thread of its own with its own connection to the file.
//!
//! Drivers hand it transitions; it commits whatever is queued in one transaction, each
//! transition in a savepoint of its own (a fenced or failing one is rolled back alone), so
//! one fsync covers many executions' checkpoints. It calls SQLite directly: through the
//! sqlx pool every statement of a transition would be a round trip to a connection's
//! worker thread, which cost more than the commit itself.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use tokio::sync::mpsc;

use super::super::{Error, Job, NewRow, Result, Work};
use crate::model::execution::{Lease, Transition};

/// Largest number of transitions committed together.
const MAX_BATCH: usize = 256;

/// Opens the writer's connection and starts its thread; the thread ends when every
/// sender is dropped, after writing what was queued.
pub(super) fn start(path: &Path) -> Result<mpsc::UnboundedSender<Job>> {
    let open =
        |e: rusqlite::Error| Error::Config(format!("sqlite database {}: {e}", path.display()));
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open)?;
    // SQLite's own busy handler sleeps 1, 2, 5, 10… ms between tries: one collision with a
    // pool connection's write (an audit record, a lease renewal) would hold every waiting
    // execution for milliseconds. Retry every 100 µs instead, for as long as the pool waits.
    conn.busy_handler(Some(retry_soon)).map_err(open)?;
    // Every statement the writer runs stays prepared (rusqlite keeps 16 by default).
    conn.set_prepared_statement_cache_capacity(32);
    // The same durability as the pool's connections: WAL, fsync at every commit.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(open)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("sqlite-writer".to_owned())
        .spawn(move || run(conn, rx))
        .map_err(|e| Error::Internal(format!("starting the sqlite writer: {e}")))?;
    Ok(tx)
}

/// The writer's busy handler: another try in 100 µs, up to [`super::BUSY_TIMEOUT`].
fn retry_soon(tries: i32) -> bool {
    const PAUSE: Duration = Duration::from_micros(100);
    if PAUSE * tries.max(0) as u32 >= super::BUSY_TIMEOUT {
        return false;
    }
    // SQLite calls this on the writer's own thread, inside a statement: it must block.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(PAUSE);
    true
}

fn run(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Job>) {
    // Jobs queued behind a transition of the batch they were taken with: the next batch.
    let mut held: Vec<Job> = Vec::new();
    while let Some(batch) = next_batch(&mut rx, &mut held) {
        let results = write_batch(&mut conn, &batch);
        // Answered (and their tickets resolved) before the next batch looks at them.
        for (job, result) in batch.into_iter().zip(results) {
            job.answer(result);
        }
    }
}

/// The next batch: what the last one held back, then whatever is queued (waiting for a job
/// when there is nothing). A job whose predecessor is in the batch (jobs come in order, so
/// it was taken no later) is held for the next one: each transition of an execution has a
/// transaction of its own, after the one before it. `None` once every sender is gone.
fn next_batch(rx: &mut mpsc::UnboundedReceiver<Job>, held: &mut Vec<Job>) -> Option<Vec<Job>> {
    // The predecessors of held jobs were answered with the last batch, unless one follows
    // another held job: that one waits once more.
    let (mut batch, still): (Vec<Job>, Vec<Job>) =
        std::mem::take(held).into_iter().partition(|j| !j.waits());
    *held = still;
    if batch.is_empty() {
        batch.push(rx.blocking_recv()?);
    }
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) if job.waits() => held.push(job),
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn write_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<()>> {
    let all = |e: rusqlite::Error| {
        let text = e.to_string();
        batch
            .iter()
            .map(|_| Err(Error::Unavailable(text.clone())))
            .collect()
    };
    // IMMEDIATE: take the write lock now (waiting out the pool's writers), not on the first
    // write, where a busy database could not be waited for.
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        return all(e);
    }
    let results = if let [job] = batch {
        // Alone in its transaction: no savepoint needed, a failure rolls back just this.
        if let Err(err) = apply_job(conn, job) {
            rollback(conn);
            return vec![Err(err)];
        }
        vec![Ok(())]
    } else {
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = control(conn, "SAVEPOINT job") {
                rollback(conn);
                return all(e);
            }
            let applied = apply_job(conn, job);
            // A failed job's writes are undone alone; the others stay.
            let closed = match applied {
                Ok(()) => control(conn, "RELEASE job"),
                Err(_) => {
                    control(conn, "ROLLBACK TO job").and_then(|()| control(conn, "RELEASE job"))
                }
            };
            if let Err(e) = closed {
                rollback(conn);
                return all(e);
            }
            results.push(applied);
        }
        results
    };
    match control(conn, "COMMIT") {
        Ok(()) => results,
        Err(e) => {
            rollback(conn);
            all(e)
        }
    }
}

fn apply_job(conn: &Connection, job: &Job) -> Result<()> {
    if job.follows_failure() {
        return Err(Error::BehindAFailure);
    }
    match &job.work {
        Work::Transition(lease, t) => apply(conn, *lease, t),
        Work::Create(row) => create(conn, row),
        Work::Audit(e) => audit(conn, e),
    }
}

/// A transaction-control statement, prepared once: preparing BEGIN and COMMIT at every
/// batch cost a visible share of a chain step's time.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Ends a failed transaction; when even that fails, the connection is no longer in one.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    }
}

/// The text form sqlx gives a timestamp in SQLite, so both read and compare the same.
fn time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
}

fn store_err(id: uuid::Uuid) -> impl Fn(rusqlite::Error) -> Error {
    move |e| match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation)
            if e.sqlite_error().is_some_and(|f| {
                f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }) =>
        {
            Error::AlreadyExists(format!("execution {id}"))
        }
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen,
        ) => Error::Unavailable(e.to_string()),
        _ => Error::Internal(format!("execution {id}: {e}")),
    }
}

fn create(conn: &Connection, row: &NewRow) -> Result<()> {
    // Built once: a start's insert is on the writer's hot path.
    static INSERT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| NewRow::insert_sql(|k| format!("?{k}")));
    conn.prepare_cached(&INSERT)
        .and_then(|mut s| {
            s.execute(params![
                row.id.as_bytes(),
                row.tenant_id.as_bytes(),
                row.workflow,
                row.version,
                row.status,
                row.inputs,
                row.trigger,
                time(Some(row.create_time)),
                time(row.deadline),
                row.owner,
                time(row.lease_expires),
                row.lease_epoch,
            ])
        })
        .map_err(store_err(row.id))?;
    Ok(())
}

fn audit(conn: &Connection, e: &crate::model::tenant::AuditEvent) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_events (id, tenant_id, time, actor, action, resource, result, \
         detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.id.as_bytes(),
            e.tenant_id.as_ref().map(|t| t.as_bytes().to_vec()),
            time(Some(e.time)),
            e.actor,
            e.action,
            e.resource,
            e.result,
            e.detail,
        ])
    })
    .map_err(|err| Error::Internal(format!("audit events: {err}")))?;
    Ok(())
}

/// A checkpoint of a running attempt. Written again (a transition resent after its commit
/// was not known), it stays as first written.
const CHECKPOINT_SQL: &str = "INSERT INTO step_checkpoints (execution_id, step_name, \
    generation, seq, tenant_id, attempt, time, kind, model, input_tokens, output_tokens, \
    cost_usd, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
    ON CONFLICT DO NOTHING";

/// The statements of one transition. The fence comes first: inside the write transaction
/// nobody else can move the lease, so when it holds, everything after may be written.
fn apply(conn: &Connection, lease: Lease, t: &Transition) -> Result<()> {
    let id = lease.execution_id;
    let err = store_err(id);
    let tenant: Option<Vec<u8>> = conn
        .prepare_cached("SELECT tenant_id FROM executions WHERE id = ?1 AND lease_epoch = ?2")
        .and_then(|mut s| {
            let mut rows = s.query(params![id.as_bytes(), lease.epoch])?;
            rows.next()?.map(|r| r.get(0)).transpose()
        })
        .map_err(&err)?;
    let Some(tenant) = tenant else {
        return Err(Error::Fenced(id));
    };
    if !t.attempts.is_empty() {
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO step_attempts (execution_id, step_name, attempt, tenant_id, \
                 generation, status, output, error, wake_time, start_time, end_time, \
                 interrupted) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (execution_id, step_name, attempt) DO UPDATE SET \
                 status = excluded.status, output = excluded.output, error = excluded.error, \
                 wake_time = excluded.wake_time, start_time = excluded.start_time, \
                 end_time = excluded.end_time, interrupted = excluded.interrupted",
            )
            .map_err(&err)?;
        for a in &t.attempts {
            insert
                .execute(params![
                    id.as_bytes(),
                    a.step_name,
                    a.attempt,
                    tenant,
                    a.generation,
                    a.status.as_str(),
                    a.output.as_ref().map(|o| o.to_string()),
                    a.error,
                    time(a.wake_time),
                    time(a.start_time),
                    time(a.end_time),
                    a.interrupted,
                ])
                .map_err(&err)?;
        }
    }
    if !t.events.is_empty() {
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO execution_events (execution_id, seq, tenant_id, time, kind, \
                 step_name, attempt, status, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(&err)?;
        for ev in &t.events {
            insert
                .execute(params![
                    id.as_bytes(),
                    ev.seq,
                    tenant,
                    time(Some(ev.time)),
                    ev.kind.as_str(),
                    ev.step_name,
                    ev.attempt,
                    ev.status,
                    ev.message,
                ])
                .map_err(&err)?;
        }
    }
    if !t.checkpoints.is_empty() {
        let mut insert = conn.prepare_cached(CHECKPOINT_SQL).map_err(&err)?;
        for c in &t.checkpoints {
            let usage = c.usage.as_ref();
            insert
                .execute(params![
                    id.as_bytes(),
                    c.step_name,
                    c.generation,
                    c.seq,
                    tenant,
                    c.attempt,
                    time(Some(c.time)),
                    c.kind,
                    usage.map(|u| u.model.as_str()),
                    usage.map_or(0, |u| u.input_tokens),
                    usage.map_or(0, |u| u.output_tokens),
                    usage.map_or(0.0, |u| u.cost_usd),
                    c.body.to_string(),
                ])
                .map_err(&err)?;
        }
    }
    if let Some(w) = &t.webhook {
        conn.prepare_cached(
            "INSERT INTO webhook_deliveries (id, tenant_id, execution_id, url, secret_name, \
             payload, status, attempts, next_attempt, create_time, expire_time) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                w.id.as_bytes(),
                tenant,
                id.as_bytes(),
                w.url,
                w.secret_name,
                w.payload,
                time(Some(w.create_time)),
                time(Some(w.expire_time)),
            ])
        })
        .map_err(&err)?;
    }
    if let Some(u) = &t.execution {
        conn.prepare_cached(
            "UPDATE executions SET status = ?2, outputs = COALESCE(?3, outputs), \
             error = ?4, start_time = COALESCE(start_time, ?5), end_time = ?6, \
             wake_time = ?7, \
             owner = CASE WHEN ?8 THEN NULL ELSE owner END, \
             lease_expires = CASE WHEN ?8 THEN NULL ELSE lease_expires END \
             WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                id.as_bytes(),
                u.status.as_str(),
                u.outputs.as_ref().map(|o| o.to_string()),
                u.error,
                time(u.start_time),
                time(u.end_time),
                time(u.wake_time),
                u.release,
            ])
        })
        .map_err(&err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::execution::{Order, Ticket};

    fn job(id: u128, order: Order) -> Job {
        Job {
            work: Work::Transition(
                Lease {
                    execution_id: uuid::Uuid::from_u128(id),
                    epoch: 1,
                },
                std::sync::Arc::new(Transition::default()),
            ),
            after: order.after,
            ticket: order.ticket,
            done: tokio::sync::oneshot::channel().0,
        }
    }

    fn ids(batch: &[Job]) -> Vec<u128> {
        batch.iter().map(|j| j.id().as_u128()).collect()
    }

    #[test]
    fn an_execution_has_one_transition_per_batch_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (t1, t2) = (Ticket::default(), Ticket::default());
        // Execution 1 queues three transitions, each behind the one before; 2 queues one.
        tx.send(job(
            1,
            Order {
                after: None,
                ticket: Some(t1.clone()),
            },
        ))
        .unwrap();
        tx.send(job(2, Order::default())).unwrap();
        tx.send(job(
            1,
            Order {
                after: Some(t1.clone()),
                ticket: Some(t2.clone()),
            },
        ))
        .unwrap();
        tx.send(job(
            1,
            Order {
                after: Some(t2.clone()),
                ticket: None,
            },
        ))
        .unwrap();
        let mut held = Vec::new();
        let batch = next_batch(&mut rx, &mut held).unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        assert_eq!(held.len(), 2);
        // The first one answered: its follower goes next, the one behind that still waits.
        t1.resolve(true);
        let batch = next_batch(&mut rx, &mut held).unwrap();
        assert_eq!(ids(&batch), [1]);
        assert!(batch[0].after.is_some());
        assert_eq!(held.len(), 1);
        t2.resolve(true);
        let batch = next_batch(&mut rx, &mut held).unwrap();
        assert_eq!(ids(&batch), [1]);
        assert!(held.is_empty());
        drop(tx);
        assert!(next_batch(&mut rx, &mut held).is_none());
    }
}
