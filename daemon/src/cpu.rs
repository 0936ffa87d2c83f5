//! The CPU pool: where tenants' CPU-bound work runs, off the async runtime.
//!
//! Parsing a workflow file and evaluating an expression that outgrew the small budget it may
//! use on the runtime (see `engine::eval`) run here, on a few threads of their own. The async
//! runtime's threads stay free for requests, probes and the engine, whatever tenants submit:
//!
//! - the threads run at a lower priority (nice 10), so the kernel gives the runtime's
//!   threads the CPU whenever they want it;
//! - tenants take turns: each has its own queue, and a free thread takes the next job of the
//!   next tenant in turn, so a tenant with a thousand jobs queued delays another tenant's job
//!   by at most the jobs already running;
//! - with more than one thread, one tenant's jobs run on all threads but one, so another
//!   tenant's job finds a thread at once (a lone tenant too: the pool is for occasional
//!   heavy work, and keeping a thread free is what bounds another tenant's wait);
//! - a job whose submitter went away before it started does not run.
//!
//! Each job bounds itself (expressions by their budget, parsing by the file's limits): the
//! pool only decides where and in which order they run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use uuid::Uuid;

/// The stack of a pool thread: the YAML and CEL parsers recurse per nesting level (both
/// are bounded, see `workflow::load`).
const STACK_BYTES: usize = 64 * 1024 * 1024;

/// The nice value of pool threads.
const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// A pool of threads for tenants' CPU-bound work. Cloning shares it.
#[derive(Clone)]
pub struct CpuPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    threads: usize,
}

#[derive(Default)]
struct State {
    queues: HashMap<Uuid, VecDeque<Job>>,
    /// Tenants with queued jobs, in the order they are served.
    turn: VecDeque<Uuid>,
    running: HashMap<Uuid, usize>,
    queued: usize,
    stopped: bool,
}

impl State {
    /// The next job to run: the first tenant in turn that may have another job running.
    fn next(&mut self, threads: usize) -> Option<(Uuid, Job)> {
        // One thread is kept for whichever other tenant comes next.
        let busy_limit = if threads > 1 { threads - 1 } else { 1 };
        let pick = self
            .turn
            .iter()
            .position(|t| self.running.get(t).copied().unwrap_or(0) < busy_limit)?;
        let tenant = self.turn.remove(pick)?;
        let queue = self.queues.get_mut(&tenant)?;
        let job = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        self.queued -= 1;
        *self.running.entry(tenant).or_default() += 1;
        Some((tenant, job))
    }
}

/// The pool is shutting down: the job was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the daemon is shutting down")]
pub struct Stopped;

impl CpuPool {
    /// Starts `threads` threads (at least one).
    pub fn new(threads: usize) -> CpuPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            threads,
        });
        for n in 0..threads {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mantle-cpu-{n}"))
                .stack_size(STACK_BYTES)
                .spawn(move || worker(&shared));
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a CPU pool thread");
            }
        }
        metrics::gauge!("mantle_cpu_pool_threads").set(threads as f64);
        CpuPool { shared }
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Jobs of `tenant` queued and not started.
    pub fn queued(&self, tenant: Uuid) -> usize {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queues.get(&tenant).map_or(0, VecDeque::len)
    }

    /// Jobs of `tenant` running now.
    pub fn running(&self, tenant: Uuid) -> usize {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.running.get(&tenant).copied().unwrap_or(0)
    }

    /// Runs `job` for `tenant` on a pool thread, in the tenant's turn, and returns its
    /// result. Dropping the future before the job starts withdraws it; once started, a job
    /// runs to its end (jobs bound themselves).
    pub async fn run<T: Send + 'static>(
        &self,
        tenant: Uuid,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(job());
        });
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.stopped {
                return Err(Stopped);
            }
            let queue = state.queues.entry(tenant).or_default();
            queue.push_back(job);
            if queue.len() == 1 {
                state.turn.push_back(tenant);
            }
            state.queued += 1;
            metrics::gauge!("mantle_cpu_pool_queued").set(state.queued as f64);
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| Stopped)
    }

    /// Stops the threads once the jobs running now end; queued jobs are dropped.
    pub fn stop(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stopped = true;
        state.queues.clear();
        state.turn.clear();
        state.queued = 0;
        drop(state);
        self.shared.wake.notify_all();
    }
}

fn worker(shared: &Shared) {
    // Best effort: where the priority cannot be lowered, the pool still keeps the work off
    // the runtime's threads.
    if let Err(err) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        tracing::debug!(error = %err, "cannot lower the priority of a CPU pool thread");
    }
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if state.stopped {
            return;
        }
        let Some((tenant, job)) = state.next(shared.threads) else {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        metrics::gauge!("mantle_cpu_pool_queued").set(state.queued as f64);
        drop(state);
        // A panicking job (a bug) must not take the thread or the counts with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = state.running.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                state.running.remove(&tenant);
            }
        }
        // A thread that was held back for this tenant may now take its next job.
        shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    fn tenant(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[tokio::test]
    async fn runs_jobs_and_returns_their_results() {
        let pool = CpuPool::new(2);
        let results =
            futures_util::future::join_all((0..10).map(|i| pool.run(tenant(i % 3), move || i * 2)))
                .await;
        let results: Vec<u128> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(results, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        let name = pool.run(tenant(1), || {
            std::thread::current().name().map(str::to_owned)
        });
        assert!(name.await.unwrap().unwrap().starts_with("mantle-cpu-"));
        pool.stop();
        assert_eq!(pool.run(tenant(1), || 1).await, Err(Stopped));
    }

    #[tokio::test]
    async fn another_tenant_is_not_stuck_behind_a_busy_one() {
        let pool = CpuPool::new(2);
        let busy = tenant(1);
        // Tenant 1 queues 20 jobs of 100 ms each: two seconds of work per thread (blocking
        // the pool's own threads, as CPU-bound work does).
        #[allow(clippy::disallowed_methods)]
        let hogs: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(busy, || std::thread::sleep(Duration::from_millis(100)))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.running(busy), 1, "one thread stays free for others");
        let start = Instant::now();
        pool.run(tenant(2), || ()).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(80),
            "waited {:?}",
            start.elapsed()
        );
        for hog in hogs {
            hog.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn tenants_take_turns() {
        let pool = CpuPool::new(1);
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold the only thread while both tenants queue.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = pool.clone();
        let gate = tokio::spawn(async move {
            held.run(tenant(9), move || {
                let _ = release_rx.recv();
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut jobs = Vec::new();
        for (t, n) in [(1, 6), (2, 2)] {
            for i in 0..n {
                let order = order.clone();
                let pool = pool.clone();
                jobs.push(tokio::spawn(async move {
                    pool.run(tenant(t), move || order.lock().unwrap().push((t, i)))
                        .await
                }));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        release_tx.send(()).unwrap();
        gate.await.unwrap().unwrap();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap().clone();
        // Tenant 2's two jobs come within the first four, not after tenant 1's six.
        let second: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| *t == 2)
            .map(|(i, _)| i)
            .collect();
        assert!(second.iter().all(|&i| i < 4), "{order:?}");
    }

    #[tokio::test]
    async fn a_withdrawn_job_does_not_run() {
        let pool = CpuPool::new(1);
        let ran = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = pool.clone();
        let gate = tokio::spawn(async move {
            held.run(tenant(1), move || {
                let _ = release_rx.recv();
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let counted = ran.clone();
        let withdrawn = pool.run(tenant(2), move || counted.fetch_add(1, Ordering::SeqCst));
        // Polled once (queued), then dropped.
        let _ = tokio::time::timeout(Duration::from_millis(10), withdrawn).await;
        release_tx.send(()).unwrap();
        gate.await.unwrap().unwrap();
        pool.run(tenant(2), || ()).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
