//! The cron scheduler every daemon runs: it arms the active cron triggers (read again
//! when [`CHECK`] finds them changed, and every [`RELOAD`]), sleeps until the earliest due
//! time (not a poll: a due time fires
//! within milliseconds), and fires each due time through [`Triggers::start`], whose fire
//! record makes the time fire once however many daemons fire it.
//!
//! After downtime a trigger catches up by its `catchup`: `latest` (the default) fires the
//! most recent missed time once, `all` every missed time (at most [`Catchup::MAX_ALL`]),
//! `none` nothing. Missed means after the trigger's last fire and after it was last
//! registered, changed or resumed: a paused trigger does not catch up on its pause.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Fired, Triggers, model, schedule, spec, trigger_value};
use crate::workflow::cron::Schedule;
use crate::workflow::spec::{Catchup, TriggerSpec};

/// How often a daemon asks whether the cron triggers changed (an apply, a pause, a
/// resume, a deletion, on any daemon): a count and a maximum, not the triggers.
pub const CHECK: Duration = Duration::from_secs(1);
/// How often the armed triggers are read again whatever the check says (their last
/// fires, noted by other daemons, matter only when they are armed again).
pub const RELOAD: Duration = Duration::from_secs(60);
/// Fires in flight at once on one daemon.
const IN_FLIGHT: usize = 16;

/// The times a trigger fires when armed at `now`, before its next time to come: the
/// missed ones in `(since, now]` that `catchup` keeps, oldest first.
pub fn catchup_times(
    schedule: &Schedule,
    catchup: Catchup,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let max = match catchup {
        Catchup::None => 0,
        Catchup::Latest => 1,
        Catchup::All => Catchup::MAX_ALL,
    };
    schedule.between(since, now, max)
}

/// Since when a trigger's times count as missed: its last fire, or when it was last
/// registered, changed or resumed, whichever is later.
pub fn missed_since(t: &model::Trigger) -> DateTime<Utc> {
    match &t.last_fire {
        Some(f) => f.scheduled_time.max(t.update_time),
        None => t.update_time,
    }
}

/// One armed trigger.
struct Armed {
    trigger: model::Trigger,
    schedule: Schedule,
    /// Times due now or to come, oldest first; never empty once armed.
    due: Vec<DateTime<Utc>>,
}

impl Armed {
    fn arm(t: model::Trigger, now: DateTime<Utc>) -> Option<Armed> {
        let spec = match spec(&t) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(trigger = %t.id, error = %e, "a stored trigger does not parse");
                return None;
            }
        };
        let TriggerSpec::Cron { catchup, .. } = &spec else {
            return None;
        };
        let schedule = match schedule(&spec)? {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(trigger = %t.id, error = %e, "a stored schedule does not parse");
                return None;
            }
        };
        let mut due = catchup_times(
            &schedule,
            catchup.unwrap_or(Catchup::Latest),
            missed_since(&t),
            now,
        );
        due.extend(schedule.next_after(now));
        if due.is_empty() {
            return None;
        }
        Some(Armed {
            trigger: t,
            schedule,
            due,
        })
    }
}

impl Triggers {
    /// Runs the cron scheduler until `cancel`.
    pub fn spawn_scheduler(self, cancel: CancellationToken) {
        tokio::spawn(async move { self.schedule(cancel).await });
    }

    async fn schedule(self, cancel: CancellationToken) {
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut armed: HashMap<Uuid, Armed> = HashMap::new();
        let mut next_reload = tokio::time::Instant::now();
        let mut next_check = next_reload;
        let mut seen_changes = None;
        loop {
            let instant = tokio::time::Instant::now();
            if instant >= next_check {
                next_check = instant + CHECK;
                match self.store.trigger_changes("cron").await {
                    Ok(changes) if Some(changes) != seen_changes => {
                        seen_changes = Some(changes);
                        next_reload = instant;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "could not check the cron triggers"),
                }
            }
            if instant >= next_reload {
                self.reload(&mut armed, Utc::now()).await;
                next_reload = tokio::time::Instant::now() + RELOAD;
            }
            let now = Utc::now();
            for a in armed.values_mut() {
                let ready = a.due.iter().take_while(|t| **t <= now).count();
                for at in a.due.drain(..ready).collect::<Vec<_>>() {
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let this = self.clone();
                    let t = a.trigger.clone();
                    tokio::spawn(async move {
                        this.fire_scheduled(&t, at).await;
                        drop(permit);
                    });
                }
                if a.due.is_empty() {
                    // The next time to come; a daemon that stalled past several skips
                    // them (they fired elsewhere, or catch up when armed again).
                    a.due.extend(a.schedule.next_after(now));
                }
            }
            armed.retain(|_, a| !a.due.is_empty());
            let earliest = armed.values().filter_map(|a| a.due.first()).min().copied();
            let mut wake = next_reload.min(next_check);
            if let Some(at) = earliest {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                wake = wake.min(tokio::time::Instant::now() + wait);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Reads the active cron triggers: arms new and changed ones, drops the others.
    async fn reload(&self, armed: &mut HashMap<Uuid, Armed>, now: DateTime<Utc>) {
        let active = match self.store.active_triggers("cron").await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the cron triggers; keeping those armed");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for t in active {
            seen.insert(t.id);
            let same = armed.get(&t.id).is_some_and(|a| {
                a.trigger.update_time == t.update_time && a.trigger.spec == t.spec
            });
            if same {
                continue;
            }
            match Armed::arm(t.clone(), now) {
                Some(a) => {
                    armed.insert(t.id, a);
                }
                None => {
                    armed.remove(&t.id);
                }
            }
        }
        armed.retain(|id, _| seen.contains(id));
    }

    /// Fires `t` for its time `at`, unless it was paused, changed or removed meanwhile.
    async fn fire_scheduled(&self, t: &model::Trigger, at: DateTime<Utc>) {
        let current = match self.store.get_trigger(t.tenant_id, t.id).await {
            Ok(c) => c,
            Err(crate::store::Error::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(trigger = %t.id, error = %e, "could not read a trigger before firing it");
                return;
            }
        };
        if current.paused || current.spec != t.spec {
            return;
        }
        let Ok(spec) = spec(&current) else {
            return;
        };
        let lateness = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
        match self
            .start(
                &current,
                Some(at),
                None,
                trigger_value(&current, &spec, at),
                Default::default(),
            )
            .await
        {
            Ok(Fired::Started(e)) => {
                metrics::histogram!("mantle_trigger_fire_lateness_seconds", "kind" => "cron")
                    .record(lateness);
                tracing::info!(trigger = %t.id, workflow = %t.workflow, scheduled = %at, execution = %e.id, "cron trigger fired");
            }
            Ok(Fired::Before(_)) => {}
            Err(e) => {
                tracing::warn!(trigger = %t.id, workflow = %t.workflow, scheduled = %at, error = %e, "cron trigger did not start an execution");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn trigger(schedule: &str, catchup: Option<&str>, updated: &str) -> model::Trigger {
        let mut spec = serde_json::json!({"type": "cron", "schedule": schedule});
        if let Some(c) = catchup {
            spec["catchup"] = c.into();
        }
        model::Trigger {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            workflow: "wf".to_owned(),
            key: format!("cron {schedule}"),
            kind: "cron".to_owned(),
            spec,
            version: 1,
            paused: false,
            last_fire: None,
            state: serde_json::Value::Null,
            create_time: utc(updated),
            update_time: utc(updated),
        }
    }

    #[test]
    fn armed_after_downtime_catches_up_as_asked() {
        let now = utc("2027-01-01T05:30:00Z");
        let mut t = trigger("0 * * * *", None, "2027-01-01T00:00:00Z");
        t.last_fire = Some(model::LastFire {
            scheduled_time: utc("2027-01-01T02:00:00Z"),
            fire_time: utc("2027-01-01T02:00:00Z"),
            execution_id: None,
            result: "started".to_owned(),
        });
        // latest (the default): 05:00 once, then 06:00.
        let a = Armed::arm(t.clone(), now).unwrap();
        assert_eq!(
            a.due,
            [utc("2027-01-01T05:00:00Z"), utc("2027-01-01T06:00:00Z")]
        );
        // all: 03:00, 04:00, 05:00, then 06:00.
        t.spec["catchup"] = "all".into();
        assert_eq!(Armed::arm(t.clone(), now).unwrap().due.len(), 4);
        // none: only 06:00.
        t.spec["catchup"] = "none".into();
        assert_eq!(
            Armed::arm(t.clone(), now).unwrap().due,
            [utc("2027-01-01T06:00:00Z")]
        );
    }

    #[test]
    fn catching_up_is_bounded_and_skips_a_pause() {
        let now = utc("2027-01-10T00:00:30Z");
        // Registered 10 days ago, never fired, every minute: all keeps the latest 100.
        let t = trigger("* * * * *", Some("all"), "2027-01-01T00:00:00Z");
        let a = Armed::arm(t, now).unwrap();
        assert_eq!(a.due.len(), Catchup::MAX_ALL + 1);
        assert_eq!(a.due[Catchup::MAX_ALL - 1], utc("2027-01-10T00:00:00Z"));
        // Resumed at 00:00:10 (its update time): the minutes of the pause are not missed.
        let t = trigger("* * * * *", Some("all"), "2027-01-10T00:00:10Z");
        assert_eq!(
            Armed::arm(t, now).unwrap().due,
            [utc("2027-01-10T00:01:00Z")]
        );
    }

    #[test]
    fn a_time_on_the_dot_is_due_not_missed() {
        // Armed exactly at a scheduled time that was fired: nothing to catch up.
        let now = utc("2027-01-01T05:00:00Z");
        let mut t = trigger("0 * * * *", None, "2027-01-01T00:00:00Z");
        t.last_fire = Some(model::LastFire {
            scheduled_time: now,
            fire_time: now,
            execution_id: None,
            result: "started".to_owned(),
        });
        assert_eq!(
            Armed::arm(t, now).unwrap().due,
            [utc("2027-01-01T06:00:00Z")]
        );
    }
}
