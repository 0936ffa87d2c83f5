//! The budget of one expression evaluation: its cost (operations and loop iterations), the
//! bytes of values it holds at once, and its time.
//!
//! An expression comes from a tenant, and the interpreter would run it to the end however
//! long that takes: `inputs.l.all(x, inputs.l.all(y, x + y >= 0))` on a 5000-element list is
//! 25 million iterations. So [`super::expr::compile`] rewrites every compiled expression to
//! report to this module as it runs: every call and operator, and every iteration of a loop,
//! goes through the internal function [`METER`], which charges one unit of cost and checks
//! the other limits. The bytes held are counted by the global allocator
//! ([`mantle_meter`]), whichever part of the interpreter allocates them, and functions that
//! could build a large value in one call ([`reserve`]) check its size before they build it.
//!
//! Once a limit is exceeded the evaluation is doomed: every later charge fails at once, so a
//! construct that would swallow an error (`x || true`, `default(x, y)`, `all()`) cannot keep
//! it going, and [`metered`] reports the limit, whatever the expression made of the error.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use cel::ExecutionError;
use tokio_util::sync::CancellationToken;

/// The internal function every metered call goes through. CEL source cannot name it (an
/// identifier cannot start with `@`), so expressions cannot call or shadow it.
pub const METER: &str = "@mantle_meter";

/// The limits an installation sets on every evaluation (`MANTLE_EXPR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExprLimits {
    /// `MANTLE_EXPR_MAX_COST`: operations and loop iterations.
    pub max_cost: u64,
    /// `MANTLE_EXPR_MAX_VALUE_BYTES`: bytes of values held at once.
    pub max_bytes: u64,
    /// `MANTLE_EXPR_TIMEOUT`.
    pub timeout: Duration,
}

impl Default for ExprLimits {
    fn default() -> Self {
        ExprLimits {
            max_cost: 1_000_000,
            max_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_secs(1),
        }
    }
}

/// The limit an evaluation went over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    Cost {
        limit: u64,
    },
    Bytes {
        limit: u64,
    },
    /// `what` names the limit: the setting, or the step's or the execution's timeout.
    Time {
        limit: Duration,
        what: &'static str,
    },
    /// The step or execution was cancelled (or timed out) while it ran.
    Cancelled,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Cost { limit } => write!(
                f,
                "the expression exceeded its cost limit of {limit} operations \
                 (MANTLE_EXPR_MAX_COST)"
            ),
            Exceeded::Bytes { limit } => write!(
                f,
                "the expression built values of more than {limit} bytes \
                 (MANTLE_EXPR_MAX_VALUE_BYTES)"
            ),
            Exceeded::Time { limit, what } => write!(
                f,
                "the expression ran longer than {} ({what})",
                crate::duration::format(*limit)
            ),
            Exceeded::Cancelled => f.write_str("the evaluation was cancelled"),
        }
    }
}

/// What one evaluation may use.
#[derive(Debug, Clone)]
pub struct Budget {
    pub max_cost: u64,
    pub max_bytes: u64,
    pub deadline: Instant,
    /// The limit the deadline stands for, to name it when it passes.
    pub time_limit: Duration,
    pub time_what: &'static str,
    /// Fires when the work the evaluation is for is abandoned.
    pub cancel: Option<CancellationToken>,
}

impl Budget {
    /// The installation's limits, from now.
    pub fn new(limits: &ExprLimits) -> Budget {
        Budget {
            max_cost: limits.max_cost,
            max_bytes: limits.max_bytes,
            deadline: Instant::now() + limits.timeout,
            time_limit: limits.timeout,
            time_what: "MANTLE_EXPR_TIMEOUT",
            cancel: None,
        }
    }

    /// Ends no later than `deadline`, which stands for `limit`, named `what`.
    pub fn until(mut self, deadline: Instant, limit: Duration, what: &'static str) -> Budget {
        if deadline < self.deadline {
            self.deadline = deadline;
            self.time_limit = limit;
            self.time_what = what;
        }
        self
    }

    pub fn cancelled_by(mut self, cancel: CancellationToken) -> Budget {
        self.cancel = Some(cancel);
        self
    }
}

/// How many charges pass between two looks at the clock and the cancellation.
const CLOCK_EVERY: u64 = 32;

struct Run {
    budget: Budget,
    cost: u64,
    exceeded: Option<Exceeded>,
    section: mantle_meter::Section,
}

impl Run {
    fn check(&mut self, units: u64) -> Option<&Exceeded> {
        if self.exceeded.is_none() {
            let before = self.cost;
            self.cost = self.cost.saturating_add(units);
            self.exceeded = if self.cost > self.budget.max_cost {
                Some(Exceeded::Cost {
                    limit: self.budget.max_cost,
                })
            } else if self.section.live() > self.budget.max_bytes {
                Some(Exceeded::Bytes {
                    limit: self.budget.max_bytes,
                })
            } else if before / CLOCK_EVERY != self.cost / CLOCK_EVERY {
                self.clock()
            } else {
                None
            };
        }
        self.exceeded.as_ref()
    }

    fn clock(&self) -> Option<Exceeded> {
        if self
            .budget
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            Some(Exceeded::Cancelled)
        } else if Instant::now() >= self.budget.deadline {
            Some(Exceeded::Time {
                limit: self.budget.time_limit,
                what: self.budget.time_what,
            })
        } else {
            None
        }
    }
}

thread_local! {
    static RUN: RefCell<Option<Run>> = const { RefCell::new(None) };
}

/// What a metered evaluation used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Used {
    pub cost: u64,
    /// The most bytes it held at once, as last seen at a charge.
    pub bytes: u64,
}

/// Runs `f` (an evaluation) on this thread under `budget`. Returns what `f` returned, what
/// it used, and the limit it went over, if any: then its result is void.
///
/// # Panics
///
/// When called while an evaluation is metered on this thread already.
pub fn metered<T>(budget: Budget, f: impl FnOnce() -> T) -> (T, Used, Option<Exceeded>) {
    let run = Run {
        budget,
        cost: 0,
        exceeded: None,
        section: mantle_meter::Section::begin(),
    };
    // A budget already spent fails before anything runs.
    let early = run.clock();
    RUN.with(|r| {
        let mut slot = r.borrow_mut();
        assert!(slot.is_none(), "metered evaluations do not nest");
        *slot = Some(Run {
            exceeded: early,
            ..run
        });
    });
    // Taken back out even when `f` panics, so the thread can meter again.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = RUN.try_with(|r| r.borrow_mut().take());
        }
    }
    let reset = Reset;
    let value = f();
    let run = RUN
        .with(|r| r.borrow_mut().take())
        .expect("the metered run is in place");
    drop(reset);
    // The result may be bigger than anything seen at a charge.
    let bytes = run.section.live();
    let exceeded = run.exceeded.or_else(|| {
        (bytes > run.budget.max_bytes).then_some(Exceeded::Bytes {
            limit: run.budget.max_bytes,
        })
    });
    (
        value,
        Used {
            cost: run.cost,
            bytes,
        },
        exceeded,
    )
}

/// Charges `units` of cost to the evaluation running on this thread; fails once any limit
/// is exceeded. Outside a metered evaluation (tests, constant checks) it does nothing.
pub fn charge(units: u64) -> Result<(), ExecutionError> {
    RUN.with(|r| match r.borrow_mut().as_mut() {
        None => Ok(()),
        Some(run) => match run.check(units) {
            None => Ok(()),
            Some(exceeded) => Err(ExecutionError::function_error(
                "limit",
                exceeded.to_string(),
            )),
        },
    })
}

/// Fails when building a value of `bytes` more would put the evaluation over its bytes
/// limit: for functions whose result can be far larger than their arguments (`replace`,
/// `join`, `lists.range`, ...), checked before they build it.
pub fn reserve(bytes: u64) -> Result<(), ExecutionError> {
    RUN.with(|r| match r.borrow_mut().as_mut() {
        None => Ok(()),
        Some(run) => {
            if run.exceeded.is_none()
                && run.section.live().saturating_add(bytes) > run.budget.max_bytes
            {
                run.exceeded = Some(Exceeded::Bytes {
                    limit: run.budget.max_bytes,
                });
            }
            match run.check(1) {
                None => Ok(()),
                Some(exceeded) => Err(ExecutionError::function_error(
                    "limit",
                    exceeded.to_string(),
                )),
            }
        }
    })
}

/// The limit the evaluation running on this thread went over, if any.
pub fn exceeded() -> Option<Exceeded> {
    RUN.with(|r| r.borrow().as_ref().and_then(|run| run.exceeded.clone()))
}

/// The metering function itself: charges one unit and passes its argument through.
pub(super) fn meter<'b, 'v>(
    mut args: Vec<cel::common::value::CowVal<'b, 'v>>,
) -> Result<cel::common::value::CowVal<'b, 'v>, ExecutionError> {
    charge(1)?;
    args.pop()
        .ok_or_else(|| ExecutionError::invalid_argument_count(1, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(cost: u64, bytes: u64, time: Duration) -> Budget {
        Budget::new(&ExprLimits {
            max_cost: cost,
            max_bytes: bytes,
            timeout: time,
        })
    }

    #[test]
    fn cost_is_counted_and_stops_at_the_limit() {
        let (charged, used, exceeded) =
            metered(budget(10, 1 << 30, Duration::from_secs(5)), || {
                (0..20).take_while(|_| charge(1).is_ok()).count()
            });
        assert_eq!(charged, 10);
        assert_eq!(exceeded, Some(Exceeded::Cost { limit: 10 }));
        assert!(used.cost > 10);
        // Once exceeded, every charge fails.
        let ((), _, exceeded) = metered(budget(1, 1 << 30, Duration::from_secs(5)), || {
            assert!(charge(5).is_err());
            assert!(charge(0).is_err());
        });
        assert!(exceeded.is_some());
    }

    #[test]
    fn bytes_held_are_counted_by_the_allocator() {
        let (_, used, exceeded) = metered(budget(1000, 1 << 20, Duration::from_secs(5)), || {
            let big = std::hint::black_box(vec![0u8; 4 << 20]);
            let err = charge(1).unwrap_err();
            assert!(
                err.to_string().contains("MANTLE_EXPR_MAX_VALUE_BYTES"),
                "{err}"
            );
            big.len()
        });
        assert_eq!(exceeded, Some(Exceeded::Bytes { limit: 1 << 20 }));
        assert!(used.bytes < 1 << 20, "freed before the end: {used:?}");
        // Held at the end counts too, even without a charge after it.
        let (big, _, exceeded) = metered(budget(1000, 1 << 20, Duration::from_secs(5)), || {
            std::hint::black_box(vec![0u8; 4 << 20])
        });
        assert_eq!(big.len(), 4 << 20);
        assert_eq!(exceeded, Some(Exceeded::Bytes { limit: 1 << 20 }));
        // A reservation fails before anything is built.
        let (ok, _, exceeded) = metered(budget(1000, 1 << 20, Duration::from_secs(5)), || {
            reserve(2 << 20).is_ok()
        });
        assert!(!ok);
        assert!(exceeded.is_some());
    }

    #[test]
    fn time_and_cancellation_stop_an_evaluation() {
        let ((), _, exceeded) =
            metered(budget(u64::MAX, 1 << 30, Duration::from_millis(20)), || {
                let start = Instant::now();
                while charge(1).is_ok() {
                    assert!(start.elapsed() < Duration::from_secs(5), "never stopped");
                }
            });
        let Some(Exceeded::Time { limit, what }) = exceeded else {
            panic!("{exceeded:?}");
        };
        assert_eq!(limit, Duration::from_millis(20));
        assert_eq!(what, "MANTLE_EXPR_TIMEOUT");

        let cancel = CancellationToken::new();
        let b = budget(u64::MAX, 1 << 30, Duration::from_secs(60)).cancelled_by(cancel.clone());
        let ((), _, exceeded) = metered(b, || {
            for i in 0..10_000 {
                if i == 100 {
                    cancel.cancel();
                }
                if charge(1).is_err() {
                    return;
                }
            }
            panic!("not cancelled");
        });
        assert_eq!(exceeded, Some(Exceeded::Cancelled));
    }

    #[test]
    fn a_nearer_deadline_names_itself() {
        let b = budget(10, 10, Duration::from_secs(60)).until(
            Instant::now(),
            Duration::from_secs(2),
            "the step's timeout",
        );
        let ((), _, exceeded) = metered(b, || {});
        assert_eq!(
            exceeded.map(|e| e.to_string()).as_deref(),
            Some("the expression ran longer than 2s (the step's timeout)")
        );
    }

    #[test]
    fn outside_an_evaluation_nothing_is_charged() {
        assert!(charge(u64::MAX).is_ok());
        assert!(reserve(u64::MAX).is_ok());
    }
}
