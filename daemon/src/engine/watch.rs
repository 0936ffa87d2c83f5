//! Who watches which execution. A `WatchExecution` stream waits here for a notice that its
//! execution's event log grew, instead of polling the database: the engine pushes the
//! notice when it commits an execution's events on this daemon, and for executions driven
//! by another replica one poll per daemon, for all of them at once, notices their growth.
//! So an open stream costs the database nothing while its execution is idle.
//!
//! Each tenant may hold at most a set number of streams at once
//! (`MANTLE_MAX_WATCH_STREAMS`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uuid::Uuid;

struct Entry {
    notices: watch::Sender<u64>,
    subscribers: usize,
    /// The last event number the poll saw.
    last_seq: i64,
}

#[derive(Default)]
struct State {
    executions: HashMap<Uuid, Entry>,
    per_tenant: HashMap<Uuid, usize>,
}

/// The registry of watched executions.
pub struct Watchers {
    state: Mutex<State>,
    /// Streams one tenant may hold at once.
    per_tenant_cap: usize,
}

/// The tenant holds as many streams as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyStreams {
    pub cap: usize,
}

impl Watchers {
    pub fn new(per_tenant_cap: usize) -> Arc<Watchers> {
        Arc::new(Watchers {
            state: Mutex::new(State::default()),
            per_tenant_cap,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream of `tenant` watching `execution`; it is counted until dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        tenant: Uuid,
        execution: Uuid,
    ) -> Result<Watch, TooManyStreams> {
        let mut state = self.lock();
        let held = state.per_tenant.entry(tenant).or_default();
        if *held >= self.per_tenant_cap {
            return Err(TooManyStreams {
                cap: self.per_tenant_cap,
            });
        }
        *held += 1;
        let entry = state.executions.entry(execution).or_insert_with(|| Entry {
            notices: watch::channel(0).0,
            subscribers: 0,
            last_seq: 0,
        });
        entry.subscribers += 1;
        let notices = entry.notices.subscribe();
        metrics::gauge!("mantle_watch_streams", "tenant_id" => tenant.to_string()).increment(1.0);
        Ok(Watch {
            watchers: self.clone(),
            tenant,
            execution,
            notices,
        })
    }

    /// The event log of `execution` grew: its streams read on.
    pub fn notify(&self, execution: Uuid) {
        if let Some(entry) = self.lock().executions.get(&execution) {
            entry.notices.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The watched executions and the last event number the poll saw of each.
    pub fn watched(&self) -> Vec<(Uuid, i64)> {
        self.lock()
            .executions
            .iter()
            .map(|(id, e)| (*id, e.last_seq))
            .collect()
    }

    /// The poll saw `execution`'s log reach `seq`: its streams read on if that is news.
    pub fn reached(&self, execution: Uuid, seq: i64) {
        if let Some(entry) = self.lock().executions.get_mut(&execution)
            && seq > entry.last_seq
        {
            entry.last_seq = seq;
            entry.notices.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn leave(&self, tenant: Uuid, execution: Uuid) {
        let mut state = self.lock();
        if let Some(n) = state.per_tenant.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                state.per_tenant.remove(&tenant);
            }
        }
        if let Some(entry) = state.executions.get_mut(&execution) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                state.executions.remove(&execution);
            }
        }
        metrics::gauge!("mantle_watch_streams", "tenant_id" => tenant.to_string()).decrement(1.0);
    }
}

/// One stream's registration.
pub struct Watch {
    watchers: Arc<Watchers>,
    tenant: Uuid,
    execution: Uuid,
    notices: watch::Receiver<u64>,
}

impl Watch {
    /// Marks every notice so far as seen: call it before reading the log, so that a notice
    /// sent while reading wakes [`Watch::changed`].
    pub fn mark_seen(&mut self) {
        self.notices.borrow_and_update();
    }

    /// Waits for a notice not seen yet.
    pub async fn changed(&mut self) {
        if self.notices.changed().await.is_err() {
            // The registry is gone (the daemon stops): nothing more will come.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.leave(self.tenant, self.execution);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn notices_reach_only_the_streams_of_their_execution() {
        let watchers = Watchers::new(10);
        let (t, a, b) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut on_a = watchers.subscribe(t, a).unwrap();
        let mut on_b = watchers.subscribe(t, b).unwrap();
        on_a.mark_seen();
        on_b.mark_seen();
        watchers.notify(a);
        tokio::time::timeout(Duration::from_secs(1), on_a.changed())
            .await
            .expect("a was notified");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), on_b.changed())
                .await
                .is_err()
        );
        // The poll notifies once per new event number.
        on_b.mark_seen();
        watchers.reached(b, 5);
        tokio::time::timeout(Duration::from_secs(1), on_b.changed())
            .await
            .expect("b was notified");
        on_b.mark_seen();
        watchers.reached(b, 5);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), on_b.changed())
                .await
                .is_err()
        );
        assert_eq!(watchers.watched().len(), 2);
        drop(on_a);
        assert_eq!(watchers.watched(), vec![(b, 5)]);
    }

    #[test]
    fn a_tenant_holds_at_most_its_cap() {
        let watchers = Watchers::new(2);
        let (t, other, e) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let first = watchers.subscribe(t, e).unwrap();
        let _second = watchers.subscribe(t, e).unwrap();
        assert_eq!(
            watchers.subscribe(t, e).err(),
            Some(TooManyStreams { cap: 2 })
        );
        // Another tenant is not affected; a closed stream frees its place.
        let _theirs = watchers.subscribe(other, e).unwrap();
        drop(first);
        assert!(watchers.subscribe(t, e).is_ok());
    }
}
