//! Email triggers: every daemon looks at the active email triggers once a second; a
//! trigger whose poll is due is polled by the one daemon that takes it
//! ([`TriggerStore::claim_trigger_poll`](crate::store::TriggerStore::claim_trigger_poll)),
//! which logs in to the mailbox (the `imap` secret), searches the folder for messages
//! matching the filter above the last UID started, and starts one execution per message,
//! oldest first.
//!
//! Once per message: a message's start carries the idempotency key `email:<trigger>:
//! <UIDVALIDITY>:<UID>`, and the trigger's state (`{uid_validity, last_uid}`) advances past
//! it only once it started; a daemon killed between the two starts nothing twice (the key),
//! and after the key expired the state has long moved on. A folder whose UIDVALIDITY
//! changed is read again from its start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use uuid::Uuid;

use super::imap::{self, Session};
use super::{Fired, Triggers, model, spec};
use crate::workflow::spec::{EmailFilter, TriggerSpec};

/// Email polls one daemon runs at once (each holds a message of at most
/// [`MAX_MESSAGE_BYTES`]); the others wait for a slot.
pub const POLLS: usize = 8;
/// How often a daemon looks for email triggers to poll.
const TICK: Duration = Duration::from_secs(1);
/// Messages one poll starts at most; the rest wait for the next poll.
const PER_POLL: usize = 50;
/// The largest message read; a larger one is skipped (noted on the trigger).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The body an execution sees at most.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// One IMAP exchange at most.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a trigger's reading of its folder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub uid_validity: u32,
    pub last_uid: u32,
}

impl Cursor {
    pub fn from_state(state: &Value) -> Option<Cursor> {
        Some(Cursor {
            uid_validity: u32::try_from(state.get("uid_validity")?.as_u64()?).ok()?,
            last_uid: u32::try_from(state.get("last_uid")?.as_u64()?).ok()?,
        })
    }

    pub fn to_state(self) -> Value {
        json!({"uid_validity": self.uid_validity, "last_uid": self.last_uid})
    }
}

/// Where a poll starts reading: after the stored cursor when the folder is the same; from
/// the start of the folder otherwise, except for `all` on a first poll, which starts after
/// the messages already there (a trigger of every message does not replay a mailbox's
/// history).
pub fn start_after(
    stored: Option<Cursor>,
    uid_validity: u32,
    filter: EmailFilter,
    newest: u32,
) -> u32 {
    match stored {
        Some(c) if c.uid_validity == uid_validity => c.last_uid,
        None if filter == EmailFilter::All => newest,
        _ => 0,
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{0}")]
    Setup(String),
    #[error("IMAP: {0}")]
    Imap(#[from] imap::Error),
    #[error("the mailbox did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the database: {0}")]
    Store(#[from] crate::store::Error),
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, imap::Error>>,
) -> Result<T, PollError> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(PollError::Timeout(IO_TIMEOUT)),
    }
}

impl Triggers {
    /// Runs the email poller until `cancel`.
    pub fn spawn_email_poller(self, cancel: tokio_util::sync::CancellationToken) {
        tokio::spawn(async move {
            let mut due: HashMap<Uuid, tokio::time::Instant> = HashMap::new();
            let mut polling: HashMap<Uuid, tokio::task::JoinHandle<()>> = HashMap::new();
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(TICK) => {}
                }
                polling.retain(|_, h| !h.is_finished());
                let active = match self.store.active_triggers("email").await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the email triggers");
                        continue;
                    }
                };
                let now = tokio::time::Instant::now();
                due.retain(|id, _| active.iter().any(|t| t.id == *id));
                for t in active {
                    if polling.contains_key(&t.id) || due.get(&t.id).is_some_and(|at| *at > now) {
                        continue;
                    }
                    let Ok(TriggerSpec::Email {
                        poll_interval_ms, ..
                    }) = spec(&t)
                    else {
                        continue;
                    };
                    let interval = Duration::from_millis(poll_interval_ms);
                    due.insert(t.id, now + interval);
                    let this = self.clone();
                    let id = t.id;
                    polling.insert(
                        id,
                        tokio::spawn(async move { this.poll_if_mine(t, interval).await }),
                    );
                }
            }
        });
    }

    async fn poll_if_mine(&self, t: model::Trigger, interval: Duration) {
        let Ok(_slot) = self.polls.clone().acquire_owned().await else {
            return;
        };
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(interval).unwrap_or_default();
        match self.store.claim_trigger_poll(t.id, now, until).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(trigger = %t.id, error = %e, "could not claim an email trigger's poll");
                return;
            }
        }
        if let Err(e) = self.poll(&t).await {
            tracing::warn!(trigger = %t.id, workflow = %t.workflow, error = %e, "email trigger poll failed");
            let note = model::LastFire {
                scheduled_time: Utc::now(),
                fire_time: Utc::now(),
                execution_id: None,
                result: format!("poll failed: {e}"),
            };
            let _ = self.store.note_fire(t.id, &note).await;
        }
    }

    async fn poll(&self, t: &model::Trigger) -> Result<(), PollError> {
        let TriggerSpec::Email {
            mailbox,
            folder,
            filter,
            ..
        } = spec(t).map_err(|e| PollError::Setup(e.to_string()))?
        else {
            return Ok(());
        };
        let credential = self
            .secrets
            .credential(t.tenant_id, &mailbox)
            .await
            .map_err(|e| PollError::Setup(e.to_string()))?;
        if credential.kind != "imap" {
            return Err(PollError::Setup(format!(
                "secret {mailbox:?} is of type {}, not imap",
                credential.kind
            )));
        }
        let field = |name: &str| credential.fields.get(name).cloned().unwrap_or_default();
        let tls = field("tls") != "false";
        let host = field("host");
        let port: u16 = match credential.fields.get("port") {
            Some(p) => p.parse().map_err(|_| {
                PollError::Setup(format!("secret {mailbox:?}: port {p:?} is not a port"))
            })?,
            None if tls => 993,
            None => 143,
        };
        let addr = self.mailbox_address(t.tenant_id, &host, port).await?;
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PollError::Timeout(IO_TIMEOUT))?
            .map_err(|e| PollError::Setup(format!("mailbox {host}:{port}: {e}")))?;
        if tls {
            let stream = tokio::time::timeout(IO_TIMEOUT, tls_connect(&host, tcp))
                .await
                .map_err(|_| PollError::Timeout(IO_TIMEOUT))?
                .map_err(PollError::Setup)?;
            self.read_folder(
                t,
                stream,
                &field("username"),
                &field("password"),
                &folder,
                filter,
            )
            .await
        } else {
            self.read_folder(
                t,
                tcp,
                &field("username"),
                &field("password"),
                &folder,
                filter,
            )
            .await
        }
    }

    /// The mailbox's address, under the same rules as `http/request`: the tenant's
    /// allowed domains, and global unicast addresses only (checked after DNS).
    async fn mailbox_address(
        &self,
        tenant_id: Uuid,
        host: &str,
        port: u16,
    ) -> Result<std::net::SocketAddr, PollError> {
        let tenant = self.store.get_tenant_by_id(tenant_id).await?;
        if let Some(allowed) = &tenant.settings.allowed_domains
            && !crate::connectors::net::domain_allowed(host, allowed)
        {
            return Err(PollError::Setup(format!(
                "mailbox host {host:?} is not in the tenant's allowed domains"
            )));
        }
        let addrs: Vec<std::net::SocketAddr> =
            tokio::time::timeout(IO_TIMEOUT, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| PollError::Timeout(IO_TIMEOUT))?
                .map_err(|e| PollError::Setup(format!("mailbox host {host:?}: {e}")))?
                .collect();
        let mut refusal = format!("mailbox host {host:?} has no address");
        for addr in addrs {
            match self.network.check(addr.ip()) {
                Ok(()) => return Ok(addr),
                Err(e) => refusal = format!("mailbox host {host:?}: {e}"),
            }
        }
        Err(PollError::Setup(refusal))
    }

    async fn read_folder<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        t: &model::Trigger,
        stream: S,
        user: &str,
        password: &str,
        folder: &str,
        filter: EmailFilter,
    ) -> Result<(), PollError> {
        let mut session = timed(Session::login(stream, user, password)).await?;
        let selected = timed(session.select(folder)).await?;
        // The trigger as stored now: another daemon may have moved its cursor.
        let current = self.store.get_trigger(t.tenant_id, t.id).await?;
        let stored = Cursor::from_state(&current.state);
        // The newest message: UIDNEXT - 1 (SEARCH answers are capped at the lowest UIDs).
        let newest = match (stored, filter, selected.uid_next) {
            (None, EmailFilter::All, Some(next)) => next.saturating_sub(1),
            (None, EmailFilter::All, None) => timed(session.search_uids("ALL", 1))
                .await?
                .last()
                .copied()
                .unwrap_or(0),
            _ => 0,
        };
        let after = start_after(stored, selected.uid_validity, filter, newest);
        let mut cursor = Cursor {
            uid_validity: selected.uid_validity,
            last_uid: after,
        };
        if stored != Some(cursor) {
            self.store
                .set_trigger_state(t.id, &cursor.to_state())
                .await?;
        }
        let uids = timed(session.search_uids(filter.criterion(), after.saturating_add(1))).await?;
        for uid in uids.into_iter().filter(|u| *u > after).take(PER_POLL) {
            match timed(session.fetch(uid, MAX_MESSAGE_BYTES)).await {
                Ok(message) => {
                    // Decoding a message of up to 4 MiB is CPU work: off the async runtime.
                    let parsed = tokio::task::spawn_blocking(move || {
                        imap::parse(&message.raw, MAX_BODY_BYTES)
                    })
                    .await
                    .map_err(|e| PollError::Setup(format!("parsing message {uid}: {e}")))?;
                    let trigger = json!({
                        "type": "email",
                        "trigger_id": t.id.to_string(),
                        "folder": folder,
                        "uid": uid,
                        "from": parsed.from,
                        "to": parsed.to,
                        "subject": parsed.subject,
                        "body": parsed.body,
                        "date": parsed.date,
                        "message_id": parsed.message_id,
                    });
                    let key = format!("email:{}:{}:{uid}", t.id, selected.uid_validity);
                    let fingerprint = json!({"uid_validity": selected.uid_validity, "uid": uid});
                    match self
                        .start(
                            t,
                            None,
                            Some((key, fingerprint)),
                            trigger,
                            Default::default(),
                        )
                        .await
                    {
                        Ok(Fired::Started(_) | Fired::Before(_)) => {}
                        // Refused (the tenant's caps): this message waits for the next poll.
                        Err(e) => {
                            tracing::info!(trigger = %t.id, uid, error = %e, "email trigger start refused; retried at the next poll");
                            break;
                        }
                    }
                    if filter == EmailFilter::Unseen {
                        timed(session.mark_seen(uid)).await?;
                    }
                }
                Err(PollError::Imap(imap::Error::TooLarge(..))) => {
                    tracing::warn!(trigger = %t.id, uid, "an email over 4 MiB was skipped");
                    let note = model::LastFire {
                        scheduled_time: Utc::now(),
                        fire_time: Utc::now(),
                        execution_id: None,
                        result: format!("message {uid} skipped: over {MAX_MESSAGE_BYTES} bytes"),
                    };
                    let _ = self.store.note_fire(t.id, &note).await;
                    cursor.last_uid = uid;
                    self.store
                        .set_trigger_state(t.id, &cursor.to_state())
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            cursor.last_uid = uid;
            self.store
                .set_trigger_state(t.id, &cursor.to_state())
                .await?;
        }
        let _ = timed(session.logout()).await;
        Ok(())
    }
}

async fn tls_connect(
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("mailbox host {host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_starts_after_the_cursor_of_the_same_folder() {
        let cursor = Cursor {
            uid_validity: 7,
            last_uid: 12,
        };
        let c = Some(cursor);
        assert_eq!(start_after(c, 7, EmailFilter::Unseen, 40), 12);
        // Another UIDVALIDITY: the folder was rebuilt, read it again.
        assert_eq!(start_after(c, 8, EmailFilter::Unseen, 40), 0);
        // First poll: unseen messages from the start; `all` only what comes next.
        assert_eq!(start_after(None, 7, EmailFilter::Unseen, 40), 0);
        assert_eq!(start_after(None, 7, EmailFilter::All, 40), 40);
        assert_eq!(
            Cursor::from_state(&cursor.to_state()),
            c,
            "the state round-trips"
        );
        assert_eq!(Cursor::from_state(&Value::Null), None);
    }
}
