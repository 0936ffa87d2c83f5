//! Readiness: whether the database answers. One monitor task pings the store and publishes
//! the result; gRPC health and `/readyz` both read it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the database is pinged, and how long one ping may take.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest readiness, shared by the probes.
#[derive(Clone)]
pub struct Readiness {
    rx: watch::Receiver<bool>,
}

impl Readiness {
    /// Whether the database answered the latest ping.
    pub fn is_ready(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

/// Starts the monitor; it stops, reporting not ready, when `cancel` fires.
pub fn spawn_monitor(store: Arc<dyn Store>, cancel: CancellationToken) -> Readiness {
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {}
            }
            let ready = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => true,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "database ping failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = PING_TIMEOUT.as_millis() as u64,
                        "database ping timed out"
                    );
                    false
                }
            };
            tx.send_if_modified(|current| {
                let changed = *current != ready;
                if changed {
                    if ready {
                        tracing::info!("database reachable again; serving");
                    } else {
                        tracing::error!("database unreachable; reporting not serving");
                    }
                }
                *current = ready;
                changed
            });
        }
        tx.send_replace(false);
    });
    Readiness { rx }
}
