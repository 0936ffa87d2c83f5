//! How the engine evaluates a step's expressions without letting one tenant stall the
//! daemon.
//!
//! An evaluation first runs where the engine is, on the async runtime, under a small
//! budget ([`INLINE`]): nearly every expression of a real workflow fits, and pays nothing
//! more. One that does not fit is abandoned and evaluated again in the CPU pool
//! ([`crate::cpu`]) under the installation's budget (`MANTLE_EXPR_*`), in its tenant's turn,
//! and its step is marked so that its later evaluations go to the pool at once. So are
//! evaluations of large variables: binding them is work too. Evaluations are pure (`now()`
//! aside), so running one again changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cpu::CpuPool;
use crate::workflow::budget::{Budget, Exceeded, ExprLimits};

/// The budget of an evaluation on the async runtime.
pub const INLINE: ExprLimits = ExprLimits {
    max_cost: 2_000,
    max_bytes: 1024 * 1024,
    timeout: Duration::from_micros(300),
};

/// Variables larger than this (as JSON) are bound in the pool, not on the runtime.
pub const INLINE_WEIGHT: usize = 64 * 1024;

/// The name the small budget's time limit goes by: running over it sends the evaluation to
/// the pool.
const INLINE_TIME: &str = "the inline budget";

/// A time limit that stands for a timeout of the step or the execution.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub limit: Duration,
    /// Names it in the error: `the step's timeout`, `the workflow's timeout`.
    pub what: &'static str,
}

impl Deadline {
    /// The nearer of two deadlines.
    pub fn nearer(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.at <= b.at { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// Evaluates expressions for the engine.
#[derive(Clone)]
pub struct Evaluator {
    pool: CpuPool,
    limits: ExprLimits,
}

impl Evaluator {
    pub fn new(pool: CpuPool, limits: ExprLimits) -> Evaluator {
        Evaluator { pool, limits }
    }

    pub fn limits(&self) -> &ExprLimits {
        &self.limits
    }

    pub fn pool(&self) -> &CpuPool {
        &self.pool
    }

    fn full(&self, deadline: Option<Deadline>, cancel: Option<&CancellationToken>) -> Budget {
        let mut budget = Budget::new(&self.limits);
        if let Some(d) = deadline {
            budget = budget.until(d.at, d.limit, d.what);
        }
        if let Some(c) = cancel {
            budget = budget.cancelled_by(c.clone());
        }
        budget
    }

    fn small(&self, deadline: Option<Deadline>) -> Budget {
        let mut budget = self.full(deadline, None);
        budget.max_cost = budget.max_cost.min(INLINE.max_cost);
        budget.max_bytes = budget.max_bytes.min(INLINE.max_bytes);
        budget.until(Instant::now() + INLINE.timeout, INLINE.timeout, INLINE_TIME)
    }

    /// Whether going over `exceeded` in the small budget means the full one may do.
    fn escalates(&self, exceeded: &Exceeded) -> bool {
        match exceeded {
            Exceeded::Cost { limit } => *limit < self.limits.max_cost,
            Exceeded::Bytes { limit } => *limit < self.limits.max_bytes,
            Exceeded::Time { what, .. } => *what == INLINE_TIME,
            Exceeded::Cancelled => false,
        }
    }

    /// Runs `work` at once under the small budget, unless `heavy` is set or the variables it
    /// binds weigh more than [`INLINE_WEIGHT`]. `None` when it does not fit: then `heavy` is
    /// set, and the work must go to the pool ([`Evaluator::pooled`]).
    pub fn inline<T>(
        &self,
        heavy: &AtomicBool,
        weight: usize,
        deadline: Option<Deadline>,
        work: impl FnOnce(Budget) -> (T, Option<Exceeded>),
    ) -> Option<T> {
        if heavy.load(Ordering::Relaxed) || weight > INLINE_WEIGHT {
            return None;
        }
        let (value, exceeded) = work(self.small(deadline));
        match exceeded {
            Some(e) if self.escalates(&e) => {
                heavy.store(true, Ordering::Relaxed);
                None
            }
            _ => Some(value),
        }
    }

    /// Runs `work` in the CPU pool, in `tenant`'s turn, under the full budget.
    pub async fn pooled<T: Send + 'static>(
        &self,
        tenant: Uuid,
        deadline: Option<Deadline>,
        cancel: Option<&CancellationToken>,
        work: impl FnOnce(Budget) -> (T, Option<Exceeded>) + Send + 'static,
    ) -> Result<T, crate::cpu::Stopped> {
        // The budget starts when the job does: the time it waits for its turn is not its
        // own (the step's and the execution's deadlines are absolute, and hold anyway).
        let this = self.clone();
        let cancel = cancel.cloned();
        let tenant_label = tenant.to_string();
        let result = self
            .pool
            .run(tenant, move || work(this.full(deadline, cancel.as_ref())))
            .await?;
        if let Some(exceeded) = &result.1 {
            metrics::counter!(
                "mantle_expr_limit_exceeded_total",
                "tenant_id" => tenant_label,
                "limit" => limit_label(exceeded)
            )
            .increment(1);
        }
        Ok(result.0)
    }

    /// [`Evaluator::inline`], else [`Evaluator::pooled`]: `work` may run twice.
    pub async fn evaluate<T: Send + 'static>(
        &self,
        tenant: Uuid,
        heavy: &AtomicBool,
        weight: usize,
        deadline: Option<Deadline>,
        cancel: Option<&CancellationToken>,
        work: impl Fn(Budget) -> (T, Option<Exceeded>) + Send + Sync + 'static,
    ) -> Result<T, crate::cpu::Stopped> {
        let work = Arc::new(work);
        if let Some(value) = self.inline(heavy, weight, deadline, |b| work(b)) {
            return Ok(value);
        }
        self.pooled(tenant, deadline, cancel, move |b| work(b))
            .await
    }
}

fn limit_label(exceeded: &Exceeded) -> &'static str {
    match exceeded {
        Exceeded::Cost { .. } => "cost",
        Exceeded::Bytes { .. } => "bytes",
        Exceeded::Time { .. } => "time",
        Exceeded::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workflow::expr::{self, Scope, Shared};

    fn evaluator() -> Evaluator {
        Evaluator::new(CpuPool::new(2), ExprLimits::default())
    }

    fn scope(n: usize) -> Scope {
        Scope {
            inputs: Shared::new(json!({"l": (0..n).collect::<Vec<_>>()})),
            ..Scope::default()
        }
    }

    fn work(
        source: &str,
        scope: Scope,
    ) -> impl Fn(Budget) -> (Result<serde_json::Value, String>, Option<Exceeded>) + Send + Sync + 'static
    {
        let compiled = Arc::new(expr::compile(source).unwrap());
        move |budget| {
            let ctx = scope.context(compiled.reads());
            let (value, _, exceeded) =
                crate::workflow::budget::metered(budget, || expr::evaluate_in(&compiled, &ctx));
            (value, exceeded)
        }
    }

    #[tokio::test]
    async fn small_evaluations_run_inline_and_large_ones_in_the_pool() {
        let e = evaluator();
        let heavy = AtomicBool::new(false);
        // The small budget has a time limit too: a thread preempted on a loaded machine may
        // overrun it once, so a few tries are allowed.
        let small_work = work("inputs.l.size()", scope(10));
        let small = (0..5)
            .find_map(|_| {
                heavy.store(false, Ordering::Relaxed);
                e.inline(&heavy, 0, None, &small_work)
            })
            .expect("a small evaluation runs inline");
        assert_eq!(small, Ok(json!(10)));
        assert!(!heavy.load(Ordering::Relaxed));

        // 10 000 iterations do not fit the small budget: the pool gives the answer, and the
        // step is heavy from then on.
        let big = work("inputs.l.filter(x, x % 2 == 0).size()", scope(10_000));
        assert!(e.inline(&heavy, 0, None, &big).is_none());
        assert!(heavy.load(Ordering::Relaxed));
        let value = e
            .evaluate(Uuid::nil(), &heavy, 0, None, None, big)
            .await
            .unwrap();
        assert_eq!(value, Ok(json!(5000)));
        // Large variables go to the pool without a try.
        let heavy = AtomicBool::new(false);
        assert!(
            e.inline(&heavy, INLINE_WEIGHT + 1, None, work("1", Scope::default()))
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_full_budget_still_ends_a_hostile_evaluation() {
        let e = evaluator();
        let heavy = AtomicBool::new(false);
        let start = Instant::now();
        let value = e
            .evaluate(
                Uuid::nil(),
                &heavy,
                0,
                None,
                None,
                work("inputs.l.all(x, inputs.l.all(y, x + y >= 0))", scope(5000)),
            )
            .await
            .unwrap();
        let err = value.unwrap_err();
        // Whichever comes first: a debug build may take longer than 1s for 1M operations.
        assert!(
            err.contains("MANTLE_EXPR_MAX_COST") || err.contains("MANTLE_EXPR_TIMEOUT"),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_step_deadline_and_a_cancellation_end_a_pooled_evaluation() {
        let e = Evaluator::new(
            CpuPool::new(2),
            ExprLimits {
                max_cost: u64::MAX,
                timeout: Duration::from_secs(60),
                ..ExprLimits::default()
            },
        );
        let deadline = Deadline {
            at: Instant::now() + Duration::from_millis(100),
            limit: Duration::from_millis(100),
            what: "the step's timeout",
        };
        let hostile = || {
            work(
                "inputs.l.all(x, inputs.l.all(y, x + y >= 0))",
                scope(20_000),
            )
        };
        let start = Instant::now();
        let value = e
            .pooled(Uuid::nil(), Some(deadline), None, hostile())
            .await
            .unwrap();
        let err = value.unwrap_err();
        assert!(
            err.contains("ran longer than 100ms (the step's timeout)"),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));

        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let start = Instant::now();
        let value = e
            .pooled(Uuid::nil(), None, Some(&cancel), hostile())
            .await
            .unwrap();
        assert!(value.unwrap_err().contains("cancelled"));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
