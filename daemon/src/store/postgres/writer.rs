//! Group commit of checkpoints on PostgreSQL.
//!
//! Drivers hand their transitions to a few writer tasks, each with a connection of its own.
//! A writer takes everything queued (up to [`MAX_BATCH`]) and writes it as ONE statement:
//! one round trip and one commit for many executions' transitions. Each transition keeps
//! its own fence: its rows are written only if its execution still has the lease epoch it
//! was claimed with; the statement returns the transitions that held. If the statement
//! fails as a whole, every transition of the batch is written again on its own, so one bad
//! transition fails alone.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex, mpsc};

use super::super::shared::map_err;
use super::super::{Error, Job, NewRow, Result, Work};

/// Largest number of transitions written by one statement.
const MAX_BATCH: usize = 128;

/// Starts `writers` tasks; they end when every sender is dropped.
pub(super) fn start(connect: PgConnectOptions, writers: usize) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..writers.max(1) {
        tokio::spawn(run(connect.clone(), rx.clone()));
    }
    tx
}

async fn run(connect: PgConnectOptions, rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    // Connected before the first checkpoint needs it (when that fails, the first batch
    // tries again and reports the error to its drivers).
    let mut conn = writer_connection(&connect).await.ok();
    loop {
        // One writer at a time takes what is queued; the others wait for the next jobs
        // while this batch is in flight.
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let results = write_batch(&connect, &mut conn, &batch).await;
        for (job, result) in batch.into_iter().zip(results) {
            job.answer(result);
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

async fn write_batch(
    connect: &PgConnectOptions,
    conn: &mut Option<PgConnection>,
    batch: &[Job],
) -> Vec<Result<()>> {
    let c = match conn {
        Some(c) => c,
        None => match writer_connection(connect).await {
            Ok(c) => conn.insert(c),
            Err(why) => return unavailable(batch, why.to_string()),
        },
    };
    let jobs: Vec<&Job> = batch.iter().collect();
    match write(c, &jobs).await {
        Ok(held) => batch
            .iter()
            .enumerate()
            .map(|(i, job)| match job.work {
                Work::Transition(..) if !held.contains(&(i as i32)) => Err(Error::Fenced(job.id())),
                _ => Ok(()),
            })
            .collect(),
        Err(err) => {
            if !matches!(err, sqlx::Error::Database(_)) {
                // The connection may be broken: a new one next time.
                conn.take();
                return unavailable(batch, err.to_string());
            }
            if batch.len() == 1 {
                let id = batch[0].id();
                return vec![Err(map_err(|| format!("execution {id}"))(err))];
            }
            // One transition spoiled the statement: write each on its own.
            let mut results = Vec::with_capacity(batch.len());
            for job in batch {
                let id = job.id();
                results.push(match write(c, &[job]).await {
                    Ok(held) if held.is_empty() && matches!(job.work, Work::Transition(..)) => {
                        Err(Error::Fenced(id))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(map_err(|| format!("execution {id}"))(e)),
                });
            }
            results
        }
    }
}

/// Why a writer has no connection.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connecting timed out")]
    TimedOut,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

async fn writer_connection(connect: &PgConnectOptions) -> Result<PgConnection, ConnectError> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(connect))
        .await
        .map_err(|_| ConnectError::TimedOut)??;
    // A batch statement's plan does not depend on its parameters: plan each shape once per
    // connection instead of at every execution. Its statements reach rows only by key, but
    // a plan made while `executions` was small (a new database, or one whose statistics are
    // stale) scans the table, and a generic plan keeps doing so at every checkpoint as the
    // table grows: with sequential scans off the plan is an index lookup whatever the
    // statistics say.
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        .execute(&mut c)
        .await?;
    Ok(c)
}

fn unavailable(batch: &[Job], why: String) -> Vec<Result<()>> {
    batch
        .iter()
        .map(|_| Err(Error::Unavailable(why.clone())))
        .collect()
}

/// The parts a batch statement needs. Each shape has one SQL text (built once, see
/// [`Shape::sql`]), so the connection's prepared statement and plan for it are reused.
#[derive(Clone, Copy)]
struct Shape {
    /// More than one transition: rows are matched to their transition by index.
    several: bool,
    updates: bool,
    webhooks: bool,
    creates: bool,
    audits: bool,
    checkpoints: bool,
}

impl Shape {
    /// The statement of this shape, built on first use.
    fn sql(self) -> &'static str {
        static SQL: [std::sync::OnceLock<String>; 64] = [const { std::sync::OnceLock::new() }; 64];
        let key = usize::from(self.several)
            | usize::from(self.updates) << 1
            | usize::from(self.webhooks) << 2
            | usize::from(self.creates) << 3
            | usize::from(self.audits) << 4
            | usize::from(self.checkpoints) << 5;
        SQL[key].get_or_init(|| batch_sql(self))
    }
}

/// The batch statement, from typed arrays (`unnest`): `$1..$3` list the transitions'
/// executions and fencing epochs, `$4..$14` the attempts, `$15..$22` the events, then the
/// execution updates and webhook deliveries when the shape has them.
///
/// The fence: `held` share-locks, in id order, the execution rows whose lease epoch is
/// still the transition's. A claim by another daemon must wait for this commit, and a
/// transition whose epoch is stale is not in `held`, so none of its rows are written.
/// Locking in id order (as lease renewal does) means two writers never wait on each other
/// in a cycle. The statement returns the indexes of the transitions that held.
/// `unnest($n::t1[], $n+1::t2[], …)` for the next parameters, advancing `next` past them.
fn unnest(next: &mut usize, types: &[&str]) -> String {
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(k, t)| format!("${}::{t}[]", *next + k))
        .collect();
    *next += types.len();
    format!("unnest({})", arrays.join(", "))
}

/// An attempt is written again as it moves (running, then finished): the last write wins.
const ON_ATTEMPT_CONFLICT: &str = "ON CONFLICT (execution_id, step_name, attempt) DO UPDATE SET \
    status = excluded.status, output = excluded.output, error = excluded.error, \
    wake_time = excluded.wake_time, start_time = excluded.start_time, end_time = excluded.end_time, \
    interrupted = excluded.interrupted";

fn batch_sql(shape: Shape) -> String {
    // How a row joins its transition: by index, or (one transition) to the only row.
    let on = |alias: &str| {
        if shape.several {
            format!("JOIN held h ON h.i = {alias}.i")
        } else {
            "CROSS JOIN held h".to_owned()
        }
    };
    let mut sql = String::from(
        "WITH held AS ( \
            SELECT t.i, e.id, e.tenant_id FROM ( \
                SELECT id, lease_epoch, tenant_id FROM executions WHERE id = ANY($2) \
                ORDER BY id FOR SHARE \
            ) e JOIN unnest($1::int[], $2::uuid[], $3::bigint[]) AS t(i, id, epoch) \
                ON t.id = e.id AND t.epoch = e.lease_epoch \
        )",
    );
    sql.push_str(&format!(
        ", att AS ( \
            INSERT INTO step_attempts (execution_id, step_name, attempt, tenant_id, generation, \
                status, output, error, wake_time, start_time, end_time, interrupted) \
            SELECT h.id, a.step_name, a.attempt, h.tenant_id, a.generation, a.status, a.output, \
                a.error, a.wake_time, a.start_time, a.end_time, a.interrupted \
            FROM unnest($4::int[], $5::text[], $6::int[], $7::int[], $8::text[], $9::text[], \
                $10::text[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], \
                $14::bool[]) \
                AS a(i, step_name, attempt, generation, status, output, error, wake_time, \
                start_time, end_time, interrupted) {} \
            {ON_ATTEMPT_CONFLICT} \
        ), ev AS ( \
            INSERT INTO execution_events (execution_id, seq, tenant_id, time, kind, step_name, \
                attempt, status, message) \
            SELECT h.id, v.seq, h.tenant_id, v.time, v.kind, v.step_name, v.attempt, v.status, \
                v.message \
            FROM unnest($15::int[], $16::bigint[], $17::timestamptz[], $18::text[], $19::text[], \
                $20::int[], $21::text[], $22::text[]) \
                AS v(i, seq, time, kind, step_name, attempt, status, message) {} \
        )",
        on("a"),
        on("v")
    ));
    let mut next = 23;
    if shape.updates {
        let arrays = unnest(
            &mut next,
            &[
                "int",
                "text",
                "text",
                "text",
                "timestamptz",
                "timestamptz",
                "timestamptz",
                "bool",
            ],
        );
        sql.push_str(&format!(
            ", ex AS ( \
                UPDATE executions e SET status = u.status, \
                    outputs = COALESCE(u.outputs, e.outputs), error = u.error, \
                    start_time = COALESCE(e.start_time, u.start_time), end_time = u.end_time, \
                    wake_time = u.wake_time, \
                    owner = CASE WHEN u.release THEN NULL ELSE e.owner END, \
                    lease_expires = CASE WHEN u.release THEN NULL ELSE e.lease_expires END \
                FROM {arrays} \
                    AS u(i, status, outputs, error, start_time, end_time, wake_time, release) \
                    {} \
                WHERE e.id = h.id \
            )",
            on("u")
        ));
    }
    if shape.webhooks {
        let arrays = unnest(
            &mut next,
            &[
                "int",
                "uuid",
                "text",
                "text",
                "text",
                "timestamptz",
                "timestamptz",
            ],
        );
        sql.push_str(&format!(
            ", wh AS ( \
                INSERT INTO webhook_deliveries (id, tenant_id, execution_id, url, secret_name, \
                    payload, status, attempts, next_attempt, create_time, expire_time) \
                SELECT w.id, h.tenant_id, h.id, w.url, w.secret_name, w.payload, 'pending', 0, \
                    w.create_time, w.create_time, w.expire_time \
                FROM {arrays} \
                    AS w(i, id, url, secret_name, payload, create_time, expire_time) {} \
            )",
            on("w")
        ));
    }
    if shape.creates {
        // One array per column of `NewRow::COLUMNS`, in its order.
        let arrays = unnest(
            &mut next,
            &[
                "uuid",
                "uuid",
                "text",
                "bigint",
                "text",
                "text",
                "text",
                "timestamptz",
                "timestamptz",
                "text",
                "timestamptz",
                "int",
            ],
        );
        let columns = NewRow::COLUMNS.join(", ");
        sql.push_str(&format!(
            ", cr AS ( \
                INSERT INTO executions ({columns}) SELECT * FROM {arrays} \
            )"
        ));
    }
    if shape.audits {
        let arrays = unnest(
            &mut next,
            &[
                "uuid",
                "uuid",
                "timestamptz",
                "text",
                "text",
                "text",
                "text",
                "text",
            ],
        );
        sql.push_str(&format!(
            ", au AS ( \
                INSERT INTO audit_events (id, tenant_id, time, actor, action, resource, result, \
                    detail) \
                SELECT * FROM {arrays} \
            )"
        ));
    }
    if shape.checkpoints {
        let arrays = unnest(
            &mut next,
            &[
                "int",
                "text",
                "int",
                "int",
                "int",
                "timestamptz",
                "text",
                "text",
                "bigint",
                "bigint",
                "float8",
                "text",
            ],
        );
        sql.push_str(&format!(
            ", ck AS ( \
                INSERT INTO step_checkpoints (execution_id, step_name, generation, seq, \
                    tenant_id, attempt, time, kind, model, input_tokens, output_tokens, \
                    cost_usd, body) \
                SELECT h.id, k.step_name, k.generation, k.seq, h.tenant_id, k.attempt, k.time, \
                    k.kind, k.model, k.input_tokens, k.output_tokens, k.cost_usd, k.body \
                FROM {arrays} \
                    AS k(i, step_name, generation, seq, attempt, time, kind, model, \
                    input_tokens, output_tokens, cost_usd, body) {} \
                ON CONFLICT DO NOTHING \
            )",
            on("k")
        ));
    }
    sql.push_str(" SELECT i FROM held");
    sql
}

type Time = Option<chrono::DateTime<chrono::Utc>>;

/// A batch as the statement's parameter arrays, one column per array.
#[derive(Default)]
struct Columns<'a> {
    t_i: Vec<i32>,
    t_id: Vec<uuid::Uuid>,
    t_epoch: Vec<i64>,
    a_i: Vec<i32>,
    a_step: Vec<&'a str>,
    a_attempt: Vec<i32>,
    a_generation: Vec<i32>,
    a_status: Vec<&'static str>,
    a_output: Vec<Option<String>>,
    a_error: Vec<Option<&'a str>>,
    a_wake: Vec<Time>,
    a_start: Vec<Time>,
    a_end: Vec<Time>,
    a_interrupted: Vec<bool>,
    v_i: Vec<i32>,
    v_seq: Vec<i64>,
    v_time: Vec<chrono::DateTime<chrono::Utc>>,
    v_kind: Vec<&'static str>,
    v_step: Vec<Option<&'a str>>,
    v_attempt: Vec<Option<i32>>,
    v_status: Vec<Option<&'a str>>,
    v_message: Vec<Option<&'a str>>,
    u_i: Vec<i32>,
    u_status: Vec<&'static str>,
    u_outputs: Vec<Option<String>>,
    u_error: Vec<Option<&'a str>>,
    u_start: Vec<Time>,
    u_end: Vec<Time>,
    u_wake: Vec<Time>,
    u_release: Vec<bool>,
    w_i: Vec<i32>,
    w_id: Vec<uuid::Uuid>,
    w_url: Vec<&'a str>,
    w_secret: Vec<Option<&'a str>>,
    w_payload: Vec<&'a str>,
    w_create: Vec<chrono::DateTime<chrono::Utc>>,
    w_expire: Vec<chrono::DateTime<chrono::Utc>>,
    creates: Vec<&'a NewRow>,
    audits: Vec<&'a crate::model::tenant::AuditEvent>,
    k_i: Vec<i32>,
    k_step: Vec<&'a str>,
    k_generation: Vec<i32>,
    k_seq: Vec<i32>,
    k_attempt: Vec<i32>,
    k_time: Vec<chrono::DateTime<chrono::Utc>>,
    k_kind: Vec<&'a str>,
    k_model: Vec<Option<&'a str>>,
    k_input: Vec<i64>,
    k_output: Vec<i64>,
    k_cost: Vec<f64>,
    k_body: Vec<String>,
}

impl<'a> Columns<'a> {
    fn of(jobs: &[&'a Job]) -> Columns<'a> {
        let mut c = Columns::default();
        for (i, job) in jobs.iter().enumerate() {
            let i = i as i32;
            let (lease, t) = match &job.work {
                Work::Transition(lease, t) => (lease, t),
                Work::Create(row) => {
                    c.creates.push(row);
                    continue;
                }
                Work::Audit(e) => {
                    c.audits.push(e);
                    continue;
                }
            };
            c.t_i.push(i);
            c.t_id.push(lease.execution_id);
            c.t_epoch.push(lease.epoch);
            // The last write of each attempt only: one statement cannot upsert a row twice.
            let first = c.a_i.len();
            for a in t.attempts.iter().rev() {
                let dup = (first..c.a_i.len())
                    .any(|k| c.a_step[k] == a.step_name.as_str() && c.a_attempt[k] == a.attempt);
                if dup {
                    continue;
                }
                c.a_i.push(i);
                c.a_step.push(&a.step_name);
                c.a_attempt.push(a.attempt);
                c.a_generation.push(a.generation);
                c.a_status.push(a.status.as_str());
                c.a_output.push(a.output.as_ref().map(Value::to_string));
                c.a_error.push(a.error.as_deref());
                c.a_wake.push(a.wake_time);
                c.a_start.push(a.start_time);
                c.a_end.push(a.end_time);
                c.a_interrupted.push(a.interrupted);
            }
            for e in &t.events {
                c.v_i.push(i);
                c.v_seq.push(e.seq);
                c.v_time.push(e.time);
                c.v_kind.push(e.kind.as_str());
                c.v_step.push(e.step_name.as_deref());
                c.v_attempt.push(e.attempt);
                c.v_status.push(e.status.as_deref());
                c.v_message.push(e.message.as_deref());
            }
            if let Some(u) = &t.execution {
                c.u_i.push(i);
                c.u_status.push(u.status.as_str());
                c.u_outputs.push(u.outputs.as_ref().map(Value::to_string));
                c.u_error.push(u.error.as_deref());
                c.u_start.push(u.start_time);
                c.u_end.push(u.end_time);
                c.u_wake.push(u.wake_time);
                c.u_release.push(u.release);
            }
            for k in &t.checkpoints {
                let usage = k.usage.as_ref();
                c.k_i.push(i);
                c.k_step.push(&k.step_name);
                c.k_generation.push(k.generation);
                c.k_seq.push(k.seq);
                c.k_attempt.push(k.attempt);
                c.k_time.push(k.time);
                c.k_kind.push(&k.kind);
                c.k_model.push(usage.map(|u| u.model.as_str()));
                c.k_input.push(usage.map_or(0, |u| u.input_tokens));
                c.k_output.push(usage.map_or(0, |u| u.output_tokens));
                c.k_cost.push(usage.map_or(0.0, |u| u.cost_usd));
                c.k_body.push(k.body.to_string());
            }
            if let Some(w) = &t.webhook {
                c.w_i.push(i);
                c.w_id.push(w.id);
                c.w_url.push(&w.url);
                c.w_secret.push(w.secret_name.as_deref());
                c.w_payload.push(&w.payload);
                c.w_create.push(w.create_time);
                c.w_expire.push(w.expire_time);
            }
        }
        c
    }
}

/// Writes `jobs` in one statement; returns the indexes of the transitions that held their
/// lease (and were written).
async fn write(conn: &mut PgConnection, jobs: &[&Job]) -> Result<Vec<i32>, sqlx::Error> {
    if let [job] = jobs
        && let Work::Transition(lease, t) = &job.work
        && let ([a], [e], None, None) = (&t.attempts[..], &t.events[..], &t.execution, &t.webhook)
        && t.checkpoints.is_empty()
    {
        return write_step(conn, *lease, a, e).await;
    }
    let c = Columns::of(jobs);
    // A batch of several has every part, so one plan serves every such batch; a batch of one
    // (a chain's step, a lone start) has only what it needs, in one of a few plans.
    let several = jobs.len() > 1;
    let shape = Shape {
        several,
        updates: several || !c.u_i.is_empty(),
        webhooks: several || !c.w_i.is_empty(),
        creates: several || !c.creates.is_empty(),
        audits: several || !c.audits.is_empty(),
        // Rare (an ai/completion step's progress): not in every batch's plan.
        checkpoints: !c.k_i.is_empty(),
    };
    let Columns {
        t_i,
        t_id,
        t_epoch,
        a_i,
        a_step,
        a_attempt,
        a_generation,
        a_status,
        a_output,
        a_error,
        a_wake,
        a_start,
        a_end,
        a_interrupted,
        v_i,
        v_seq,
        v_time,
        v_kind,
        v_step,
        v_attempt,
        v_status,
        v_message,
        u_i,
        u_status,
        u_outputs,
        u_error,
        u_start,
        u_end,
        u_wake,
        u_release,
        w_i,
        w_id,
        w_url,
        w_secret,
        w_payload,
        w_create,
        w_expire,
        creates,
        audits,
        k_i,
        k_step,
        k_generation,
        k_seq,
        k_attempt,
        k_time,
        k_kind,
        k_model,
        k_input,
        k_output,
        k_cost,
        k_body,
    } = c;
    let mut query = sqlx::query_scalar(shape.sql())
        .bind(t_i)
        .bind(t_id)
        .bind(t_epoch)
        .bind(a_i)
        .bind(a_step)
        .bind(a_attempt)
        .bind(a_generation)
        .bind(a_status)
        .bind(a_output)
        .bind(a_error)
        .bind(a_wake)
        .bind(a_start)
        .bind(a_end)
        .bind(a_interrupted)
        .bind(v_i)
        .bind(v_seq)
        .bind(v_time)
        .bind(v_kind)
        .bind(v_step)
        .bind(v_attempt)
        .bind(v_status)
        .bind(v_message);
    if shape.updates {
        query = query
            .bind(u_i)
            .bind(u_status)
            .bind(u_outputs)
            .bind(u_error)
            .bind(u_start)
            .bind(u_end)
            .bind(u_wake)
            .bind(u_release);
    }
    if shape.webhooks {
        query = query
            .bind(w_i)
            .bind(w_id)
            .bind(w_url)
            .bind(w_secret)
            .bind(w_payload)
            .bind(w_create)
            .bind(w_expire);
    }
    if shape.creates {
        let text = |f: fn(&NewRow) -> &str| creates.iter().map(|r| f(r)).collect::<Vec<&str>>();
        query = query
            .bind(creates.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(creates.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
            .bind(text(|r| &r.workflow))
            .bind(creates.iter().map(|r| r.version).collect::<Vec<_>>())
            .bind(text(|r| r.status))
            .bind(text(|r| &r.inputs))
            .bind(text(|r| &r.trigger))
            .bind(creates.iter().map(|r| r.create_time).collect::<Vec<_>>())
            .bind(creates.iter().map(|r| r.deadline).collect::<Vec<_>>())
            .bind(
                creates
                    .iter()
                    .map(|r| r.owner.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(creates.iter().map(|r| r.lease_expires).collect::<Vec<_>>())
            .bind(creates.iter().map(|r| r.lease_epoch).collect::<Vec<_>>());
    }
    if shape.audits {
        query = query
            .bind(audits.iter().map(|e| e.id).collect::<Vec<_>>())
            .bind(audits.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
            .bind(audits.iter().map(|e| e.time).collect::<Vec<_>>())
            .bind(audits.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>())
            .bind(audits.iter().map(|e| e.action.as_str()).collect::<Vec<_>>())
            .bind(
                audits
                    .iter()
                    .map(|e| e.resource.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(audits.iter().map(|e| e.result.as_str()).collect::<Vec<_>>())
            .bind(
                audits
                    .iter()
                    .map(|e| e.detail.as_deref())
                    .collect::<Vec<_>>(),
            );
    }
    if shape.checkpoints {
        query = query
            .bind(k_i)
            .bind(k_step)
            .bind(k_generation)
            .bind(k_seq)
            .bind(k_attempt)
            .bind(k_time)
            .bind(k_kind)
            .bind(k_model)
            .bind(k_input)
            .bind(k_output)
            .bind(k_cost)
            .bind(k_body);
    }
    query.fetch_all(conn).await
}

/// The statement of a transition that records one attempt and one event (a pure step of a
/// chain, a step that ends alone): scalar parameters, so the database decodes no arrays
/// and runs no `unnest`, which cost more than the inserts themselves. Fenced like the
/// batch statement; returns `[0]` when the lease held.
static STEP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH held AS ( \
        SELECT id, tenant_id FROM executions WHERE id = $1 AND lease_epoch = $2 FOR SHARE \
    ), att AS ( \
        INSERT INTO step_attempts (execution_id, step_name, attempt, tenant_id, generation, \
            status, output, error, wake_time, start_time, end_time, interrupted) \
        SELECT h.id, $3, $4, h.tenant_id, $5, $6, $7, $8, $9, $10, $11, $12 FROM held h \
        {ON_ATTEMPT_CONFLICT} \
    ), ev AS ( \
        INSERT INTO execution_events (execution_id, seq, tenant_id, time, kind, step_name, \
            attempt, status, message) \
        SELECT h.id, $13, h.tenant_id, $14, $15, $16, $17, $18, $19 FROM held h \
    ) SELECT 0::int FROM held"
    )
});

async fn write_step(
    conn: &mut PgConnection,
    lease: crate::model::execution::Lease,
    a: &crate::model::execution::StepAttempt,
    e: &crate::model::execution::Event,
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(STEP_SQL.as_str())
        .bind(lease.execution_id)
        .bind(lease.epoch)
        .bind(&a.step_name)
        .bind(a.attempt)
        .bind(a.generation)
        .bind(a.status.as_str())
        .bind(a.output.as_ref().map(Value::to_string))
        .bind(a.error.as_deref())
        .bind(a.wake_time)
        .bind(a.start_time)
        .bind(a.end_time)
        .bind(a.interrupted)
        .bind(e.seq)
        .bind(e.time)
        .bind(e.kind.as_str())
        .bind(e.step_name.as_deref())
        .bind(e.attempt)
        .bind(e.status.as_deref())
        .bind(e.message.as_deref())
        .fetch_all(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that cannot connect keeps the driver's error, and reports its text.
    #[tokio::test]
    async fn a_failed_connection_keeps_the_drivers_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let connect = PgConnectOptions::new().host("127.0.0.1").port(port);
        let err = writer_connection(&connect).await.unwrap_err();
        let ConnectError::Database(cause @ sqlx::Error::Io(_)) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(err.to_string(), cause.to_string());
        assert_eq!(ConnectError::TimedOut.to_string(), "connecting timed out");
    }
}
