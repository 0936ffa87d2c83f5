//! The commit pipeline of one execution: the transitions its driver handed to the store and
//! does not know durable yet, oldest first, each queued behind the one before it.
//!
//! The driver [submits](Pipeline::submit) a transition (with the attempts it records as
//! running) and goes on while it commits; it [settles](Pipeline::settle_until) when it must
//! act on what was written: a step with effects starts, or the execution ends, only once
//! everything before it is durable. What became durable says which attempts may now be
//! spawned ([`Pipeline::take_durable`]).
//!
//! It relies on the contract of [`ExecutionStore::queue_transition`]: the first poll of its
//! future queues the transition, in order; the answers come in that order; and a transition
//! that is not written fails every one queued behind it with [`store::Error::BehindAFailure`],
//! unwritten.
//!
//! [`ExecutionStore::queue_transition`]: crate::store::ExecutionStore::queue_transition

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::model::{Lease, Order, Ticket, Transition};
use crate::store::{self, Store};

/// At most this many transitions of one execution are in flight at once; when the window is
/// full, the driver waits until half of them are durable. Waiting for the next one to commit
/// at every step would cost a wake-up per step; the writer commits them one by one anyway.
pub(super) const WINDOW: usize = 16;

/// The store's answer to a queued transition.
type WriteFuture = std::pin::Pin<Box<dyn std::future::Future<Output = store::Result<()>> + Send>>;

/// An attempt a transition records as running: the step's index and the attempt's number.
pub(super) type Start = (usize, i32);

/// A transition handed to the store whose outcome the driver has not taken yet.
struct InFlight {
    t: Arc<Transition>,
    /// Resolved by the store with the outcome, for a transition queued behind this one.
    ticket: Ticket,
    write: WriteFuture,
    /// The answer, once the driver has it (at once, when the store gave it at once).
    early: Option<store::Result<()>>,
    /// Attempts it records as running, to spawn once it is durable.
    started: Vec<Start>,
}

impl InFlight {
    /// Hands `write` to the store: its first poll queues the transition. That poll leaves a
    /// waker that does nothing: with the driver task's own, every commit would wake the
    /// driver (a wake-up from the writer's thread, which costs the writer a system call and
    /// the driver a pass), also while the driver waits for a later one. The driver's waker
    /// goes in only once it waits for this answer ([`InFlight::answered`]).
    fn start(
        t: Arc<Transition>,
        ticket: Ticket,
        mut write: WriteFuture,
        started: Vec<Start>,
    ) -> InFlight {
        let detached = &mut std::task::Context::from_waker(std::task::Waker::noop());
        let early = match write.as_mut().poll(detached) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        };
        InFlight {
            t,
            ticket,
            write,
            early,
            started,
        }
    }

    /// Waits for the store's answer and keeps it.
    async fn answered(&mut self) {
        if self.early.is_none() {
            self.early = Some(self.write.as_mut().await);
        }
    }
}

/// Why a transition in flight will not be durable.
#[derive(Debug)]
pub(super) enum Refused {
    /// Another daemon holds the lease now; nothing more may be written.
    Lost,
    /// Refused by the database for good (not for being away or busy): writing it again
    /// would fail again. `first_seq` is its first event's number, when it has events.
    Unwritable {
        error: String,
        first_seq: Option<i64>,
    },
}

/// The transitions of one execution in flight (see the module's documentation).
pub(super) struct Pipeline {
    store: Arc<dyn Store>,
    lease: Lease,
    /// Fires when the lease is lost: a write waiting to be tried again stops waiting.
    lost: CancellationToken,
    /// Handed to the store and not yet known durable, oldest first, each queued behind the
    /// one before it.
    in_flight: VecDeque<InFlight>,
    /// Attempts of transitions settled durable, not taken yet.
    durable: Vec<Start>,
}

impl Pipeline {
    pub(super) fn new(store: Arc<dyn Store>, lease: Lease, lost: CancellationToken) -> Pipeline {
        Pipeline {
            store,
            lease,
            lost,
            in_flight: VecDeque::new(),
            durable: Vec::new(),
        }
    }

    /// Transitions in flight.
    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the newest transition in flight records attempts as running.
    pub(super) fn newest_starts_attempts(&self) -> bool {
        self.in_flight.back().is_some_and(|w| !w.started.is_empty())
    }

    /// Hands `t` to the store, queued behind the transitions in flight (see [`Order`]): the
    /// store commits it in a later transaction than they are, and only if they are written.
    /// `started` are the attempts it records as running: they are durable, and taken from
    /// [`Pipeline::take_durable`], once it is.
    pub(super) async fn submit(&mut self, t: Transition, started: Vec<Start>) {
        self.hand_over(Arc::new(t), started);
        // Let the writer take it: woken from this thread, a writer task waits in this
        // worker's next-task slot, which no other worker may take, until this task yields.
        tokio::task::yield_now().await;
    }

    /// Queues `t` behind the newest transition in flight and adds it to them.
    fn hand_over(&mut self, t: Arc<Transition>, started: Vec<Start>) {
        let ticket = Ticket::default();
        let order = Order {
            after: self.in_flight.back().map(|w| w.ticket.clone()),
            ticket: Some(ticket.clone()),
        };
        let store = self.store.clone();
        let lease = self.lease;
        let written = t.clone();
        let write: WriteFuture =
            Box::pin(async move { store.queue_transition(lease, written, order).await });
        let w = InFlight::start(t, ticket, write, started);
        self.in_flight.push_back(w);
    }

    /// Queues every transition in flight again, in order. After one of them was not written
    /// (and written again on its own), each queued behind it is refused unwritten, and a new
    /// one queued behind those would be too: they go again behind live tickets instead.
    fn requeue_in_flight(&mut self) {
        for w in std::mem::take(&mut self.in_flight) {
            // Its first hand-over is answered unwritten, whenever it is: drop it.
            self.hand_over(w.t, w.started);
        }
    }

    /// Waits until at most `left` transitions are in flight (none: everything handed over is
    /// durable), writing again those that were not written while the database is away;
    /// returns whether there was anything to wait for. The
    /// attempts the settled transitions started go to [`Pipeline::take_durable`], also
    /// those of transitions settled before one was refused.
    pub(super) async fn settle_until(&mut self, left: usize) -> Result<bool, Refused> {
        if self.in_flight.len() <= left {
            return Ok(false);
        }
        // The newest of them first: the store answers an execution's transitions in order,
        // so the driver wakes once for all of them, not at each one's commit.
        let newest = self.in_flight.len() - left - 1;
        self.in_flight[newest].answered().await;
        while self.in_flight.len() > left {
            self.settle_oldest().await?;
        }
        Ok(true)
    }

    /// The attempts recorded as running by transitions that became durable since the last
    /// call, in the order they were submitted: they may be spawned now.
    pub(super) fn take_durable(&mut self) -> Vec<Start> {
        std::mem::take(&mut self.durable)
    }

    /// Forgets every transition in flight (after one was refused for good, the store
    /// refuses those behind it unwritten); returns the smallest number of their events.
    pub(super) fn abandon(&mut self) -> Option<i64> {
        std::mem::take(&mut self.in_flight)
            .iter()
            .flat_map(|w| w.t.events.first())
            .map(|e| e.seq)
            .min()
    }

    /// Waits for the oldest transition in flight to be durable, writing it again while the
    /// database is unreachable (or the one it followed was not written); the attempts it
    /// started go to `durable`.
    async fn settle_oldest(&mut self) -> Result<(), Refused> {
        let Some(InFlight {
            t,
            write,
            early,
            started,
            ..
        }) = self.in_flight.pop_front()
        else {
            return Ok(());
        };
        let mut result = match early {
            Some(result) => result,
            None => write.await,
        };
        let mut backoff = Duration::from_millis(100);
        let mut retried = false;
        let mut again = false;
        loop {
            match result {
                Ok(()) => break,
                Err(store::Error::Fenced(_)) => return Err(Refused::Lost),
                // A retried write whose first try committed after all.
                Err(store::Error::AlreadyExists(_)) if retried => break,
                // Refused for good: trying again would loop.
                Err(err) if !err.is_transient() => {
                    return Err(Refused::Unwritable {
                        error: err.to_string(),
                        first_seq: t.events.first().map(|e| e.seq),
                    });
                }
                // Not tried: the one before it was not written. Those behind a failure are
                // queued again once it is durable (below), so this should not happen; if it
                // does, everything before it is durable (they settle in order): at once.
                Err(err) if err.is_behind_a_failure() => {
                    tracing::warn!(execution = %self.lease.execution_id, "checkpoint was queued behind one that was not written; writing it again");
                    again = true;
                    result = self.write_again(&t).await;
                }
                Err(err) => {
                    tracing::warn!(execution = %self.lease.execution_id, error = %err, "checkpoint write failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.lost.cancelled() => return Err(Refused::Lost),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    retried = true;
                    again = true;
                    result = self.write_again(&t).await;
                }
            }
        }
        if again {
            self.requeue_in_flight();
        }
        self.durable.extend(started);
        Ok(())
    }

    /// Writes the oldest transition in flight again, on its own: everything before it is
    /// durable, so it follows nothing.
    /// (The future holds no borrow of the pipeline, which is not `Sync`.)
    fn write_again(
        &self,
        t: &Arc<Transition>,
    ) -> impl std::future::Future<Output = store::Result<()>> + Send + 'static {
        let (store, lease, t) = (self.store.clone(), self.lease, t.clone());
        async move { store.queue_transition(lease, t, Order::default()).await }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A waker that counts how often its task was woken.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn settling_transitions_in_flight_wakes_the_driver_once() {
        // Eight transitions handed over, each answered through a channel, as the store does.
        let mut answers = Vec::new();
        let mut in_flight: Vec<InFlight> = (0..8)
            .map(|_| {
                let (tx, rx) = tokio::sync::oneshot::channel::<store::Result<()>>();
                answers.push(tx);
                let write: WriteFuture = Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| Err(store::Error::Unavailable("gone".to_owned())))
                });
                InFlight::start(
                    Arc::new(Transition::default()),
                    Ticket::default(),
                    write,
                    Vec::new(),
                )
            })
            .collect();
        assert!(in_flight.iter().all(|w| w.early.is_none()));
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let cx = &mut std::task::Context::from_waker(&waker);
        {
            // The driver waits for the newest of them.
            let newest = in_flight.last_mut().expect("eight");
            let mut wait = std::pin::pin!(newest.answered());
            assert!(wait.as_mut().poll(cx).is_pending());
            // The store answers them in order: the first seven wake nobody.
            for tx in answers.drain(..7) {
                tx.send(Ok(())).expect("answer");
            }
            assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
            answers
                .pop()
                .expect("the eighth")
                .send(Ok(()))
                .expect("answer");
            assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
            assert!(wait.as_mut().poll(cx).is_ready());
        }
        // The older ones are answered already: taking their answers waits for nothing.
        for w in &mut in_flight {
            assert!(std::pin::pin!(w.answered()).poll(cx).is_ready());
            assert!(matches!(w.early, Some(Ok(()))));
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
