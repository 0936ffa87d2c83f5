//! A fake IMAP4rev1 server for the tests of email triggers: plain TCP on 127.0.0.1, one
//! account, one folder `INBOX` (UIDVALIDITY [`UID_VALIDITY`]), messages in memory.
//!
//! It speaks what a polling client needs: CAPABILITY, NOOP, LOGIN (a wrong password gets
//! NO), SELECT and EXAMINE (of `INBOX` only), `UID SEARCH` (ALL, SEEN, UNSEEN, FLAGGED,
//! UNFLAGGED, RECENT, NEW, OLD, `UID <set>`, a sequence set; all ANDed), `UID FETCH`
//! (UID, FLAGS, RFC822.SIZE, `BODY.PEEK[]`, and `BODY[]`/RFC822, which set `\Seen`),
//! `UID STORE` (`+FLAGS`, `-FLAGS`, `FLAGS`, each `.SILENT` or not) and LOGOUT. Anything
//! else is BAD. Literals from the client are not supported. Sets follow RFC 3501, `*`
//! included: `UID 9:*` matches the highest UID even when it is below 9.
//!
//! `\Recent` is as in RFC 3501: the first session that selects the folder (read-write)
//! after a delivery takes the message's `\Recent`; EXAMINE sees it without taking it.
//!
//! ```no_run
//! # async fn demo() {
//! use mantle_integration::fake_imap::FakeImap;
//!
//! let imap = FakeImap::start("bot@example.com", "secret").await;
//! let uid = imap.deliver("From: a@example.com\nSubject: hi\n\nhello\n");
//! // ... a trigger polls imap.addr() ...
//! assert!(imap.fetches(uid) >= 1);
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The UIDVALIDITY of `INBOX`.
pub const UID_VALIDITY: u32 = 7;

/// The longest command line accepted; a longer one ends the connection.
const MAX_LINE: usize = 64 * 1024;

/// The system flags, as spelled in answers (flags are matched without regard to case).
const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

#[derive(Debug)]
struct Mail {
    uid: u32,
    /// With CRLF line ends.
    raw: Vec<u8>,
    flags: BTreeSet<String>,
    /// No session has taken its `\Recent` yet.
    recent: bool,
}

#[derive(Debug, Default)]
struct State {
    mails: Vec<Mail>,
    /// Answered FETCHes that returned the body, by UID.
    fetches: HashMap<u32, usize>,
    logins: usize,
}

struct Shared {
    user: String,
    password: String,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake IMAP server. Dropping it stops it and closes its connections.
pub struct FakeImap {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl fmt::Debug for FakeImap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeImap")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeImap {
    /// Starts listening on a free port of 127.0.0.1, for the account `user` / `password`.
    pub async fn start(user: &str, password: &str) -> FakeImap {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("binding the fake IMAP server");
        let addr = listener
            .local_addr()
            .expect("the fake IMAP server's address");
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            state: Mutex::new(State::default()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                // Owned by this task: aborting it ends every connection.
                let mut connections = JoinSet::new();
                loop {
                    while connections.try_join_next().is_some() {}
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    connections.spawn(serve(stream, Arc::clone(&shared)));
                }
            })
        };
        FakeImap {
            addr,
            shared,
            acceptor,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Appends a message (raw RFC 5322 text; bare `\n` line ends become `\r\n`) to `INBOX`
    /// and returns its UID (1, 2, …). It has no flags (unseen) and is recent.
    pub fn deliver(&self, raw: &str) -> u32 {
        let mut crlf = Vec::with_capacity(raw.len() + raw.len() / 32);
        let mut previous = 0;
        for &b in raw.as_bytes() {
            if b == b'\n' && previous != b'\r' {
                crlf.push(b'\r');
            }
            crlf.push(b);
            previous = b;
        }
        let mut state = self.shared.state();
        let uid = state.mails.last().map_or(1, |m| m.uid + 1);
        state.mails.push(Mail {
            uid,
            raw: crlf,
            flags: BTreeSet::new(),
            recent: true,
        });
        uid
    }

    /// Whether the message has `\Seen`.
    pub fn seen(&self, uid: u32) -> bool {
        self.has_flag(uid, "\\Seen")
    }

    /// Whether the message has `flag` (`\Flagged`, a keyword, …).
    pub fn has_flag(&self, uid: u32, flag: &str) -> bool {
        let flag = canonical_flag(flag);
        self.shared
            .state()
            .mails
            .iter()
            .any(|m| m.uid == uid && m.flags.contains(&flag))
    }

    /// Sets or clears a flag of the message, as another mail client would.
    pub fn set_flag(&self, uid: u32, flag: &str, on: bool) {
        let flag = canonical_flag(flag);
        let mut state = self.shared.state();
        if let Some(mail) = state.mails.iter_mut().find(|m| m.uid == uid) {
            if on {
                mail.flags.insert(flag);
            } else {
                mail.flags.remove(&flag);
            }
        }
    }

    /// How many FETCH answers carried the message's body (`BODY[]`, `BODY.PEEK[]`, RFC822).
    pub fn fetches(&self, uid: u32) -> usize {
        self.shared.state().fetches.get(&uid).copied().unwrap_or(0)
    }

    /// How many LOGINs succeeded.
    pub fn logins(&self) -> usize {
        self.shared.state().logins
    }
}

impl Drop for FakeImap {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// `\seen` → `\Seen`; keywords as given.
fn canonical_flag(flag: &str) -> String {
    SYSTEM_FLAGS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(flag))
        .map_or_else(|| flag.to_owned(), |f| (*f).to_owned())
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut conn = Conn {
        shared,
        authenticated: false,
        selected: None,
    };
    if write
        .write_all(b"* OK [CAPABILITY IMAP4rev1] fake IMAP server ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_LINE + 2) as u64;
        match (&mut read).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            // Too long, or the client went mid-line.
            let _ = write.write_all(b"* BYE command line too long\r\n").await;
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (reply, close) = conn.handle(text.trim_end_matches(['\r', '\n']));
        if write.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}

/// The tagged status of an answer.
enum Status {
    Ok(String),
    No(String),
    Bad(String),
}

fn bad(text: &str) -> Status {
    Status::Bad(text.to_owned())
}

struct Selected {
    read_only: bool,
    /// The UIDs this session sees as `\Recent`.
    recent: BTreeSet<u32>,
}

/// One connection's state.
struct Conn {
    shared: Arc<Shared>,
    authenticated: bool,
    selected: Option<Selected>,
}

impl Conn {
    /// Answers one command line: the bytes to send and whether to close after them.
    fn handle(&mut self, line: &str) -> (Vec<u8>, bool) {
        let Some(words) = tokenize(line) else {
            let tag = line.split(' ').next().unwrap_or("*");
            return (
                format!("{tag} BAD unbalanced command\r\n").into_bytes(),
                false,
            );
        };
        let (Some(tag), Some(command)) = (words.first(), words.get(1)) else {
            return (b"* BAD no command\r\n".to_vec(), false);
        };
        let command = command.to_ascii_uppercase();
        let args = &words[2..];
        let mut out = Vec::new();
        let mut close = false;
        let status = match command.as_str() {
            "CAPABILITY" => {
                out.extend_from_slice(b"* CAPABILITY IMAP4rev1\r\n");
                Status::Ok("CAPABILITY completed".into())
            }
            "NOOP" => {
                if self.selected.is_some() {
                    let exists = self.shared.state().mails.len();
                    out.extend_from_slice(format!("* {exists} EXISTS\r\n").as_bytes());
                }
                Status::Ok("NOOP completed".into())
            }
            "LOGOUT" => {
                close = true;
                out.extend_from_slice(b"* BYE fake IMAP server logging out\r\n");
                Status::Ok("LOGOUT completed".into())
            }
            "LOGIN" => self.login(args),
            _ if !self.authenticated => bad("log in first"),
            "SELECT" | "EXAMINE" => self.select(args, command == "EXAMINE", &mut out),
            "UID" if self.selected.is_none() => bad("no folder selected"),
            "UID" => {
                let sub = args.first().map(|s| s.to_ascii_uppercase());
                match sub.as_deref() {
                    Some("SEARCH") => self.search(&args[1..], &mut out),
                    Some("FETCH") => self.fetch(&args[1..], &mut out),
                    Some("STORE") => self.store(&args[1..], &mut out),
                    _ => bad("unknown UID command"),
                }
            }
            _ => bad("unknown command"),
        };
        let (word, text) = match status {
            Status::Ok(text) => ("OK", text),
            Status::No(text) => ("NO", text),
            Status::Bad(text) => ("BAD", text),
        };
        out.extend_from_slice(format!("{tag} {word} {text}\r\n").as_bytes());
        (out, close)
    }

    fn login(&mut self, args: &[String]) -> Status {
        if self.authenticated {
            return bad("already logged in");
        }
        let [user, password] = args else {
            return bad("LOGIN takes a user and a password");
        };
        if *user != self.shared.user || *password != self.shared.password {
            return Status::No("[AUTHENTICATIONFAILED] invalid credentials".into());
        }
        self.authenticated = true;
        self.shared.state().logins += 1;
        Status::Ok("LOGIN completed".into())
    }

    fn select(&mut self, args: &[String], read_only: bool, out: &mut Vec<u8>) -> Status {
        self.selected = None;
        let [folder] = args else {
            return bad("SELECT takes a folder");
        };
        if !folder.eq_ignore_ascii_case("INBOX") {
            return Status::No("[NONEXISTENT] no such folder".into());
        }
        self.selected = Some(Selected {
            read_only,
            recent: BTreeSet::new(),
        });
        let shared = Arc::clone(&self.shared);
        let mut state = shared.state();
        self.take_recent(&mut state);
        let recent = self.selected.as_ref().map_or(0, |s| s.recent.len());
        let next = state.mails.last().map_or(1, |m| m.uid + 1);
        out.extend_from_slice(
            format!(
                "* FLAGS ({})\r\n\
                 * OK [PERMANENTFLAGS ({} \\*)] flags permitted\r\n\
                 * {} EXISTS\r\n\
                 * {recent} RECENT\r\n\
                 * OK [UIDVALIDITY {UID_VALIDITY}] UIDs valid\r\n\
                 * OK [UIDNEXT {next}] predicted next UID\r\n",
                SYSTEM_FLAGS.join(" "),
                SYSTEM_FLAGS.join(" "),
                state.mails.len(),
            )
            .as_bytes(),
        );
        if read_only {
            Status::Ok("[READ-ONLY] EXAMINE completed".into())
        } else {
            Status::Ok("[READ-WRITE] SELECT completed".into())
        }
    }

    /// Gives this session the `\Recent` of the messages no session has seen yet.
    fn take_recent(&mut self, state: &mut State) {
        let Some(selected) = self.selected.as_mut() else {
            return;
        };
        for mail in state.mails.iter_mut().filter(|m| m.recent) {
            selected.recent.insert(mail.uid);
            if !selected.read_only {
                mail.recent = false;
            }
        }
    }

    fn flags_of(&self, mail: &Mail) -> String {
        let mut flags: Vec<&str> = mail.flags.iter().map(String::as_str).collect();
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.recent.contains(&mail.uid))
        {
            flags.push("\\Recent");
        }
        format!("({})", flags.join(" "))
    }

    fn search(&mut self, keys: &[String], out: &mut Vec<u8>) -> Status {
        let shared = Arc::clone(&self.shared);
        let mut state = shared.state();
        self.take_recent(&mut state);
        let max_uid = state.mails.last().map_or(0, |m| m.uid);
        let count = state.mails.len() as u32;
        let recent = self
            .selected
            .as_ref()
            .map(|s| s.recent.clone())
            .unwrap_or_default();
        // Each key: which (sequence number, message) it matches.
        type Key = Box<dyn Fn(u32, &Mail) -> bool>;
        let mut tests: Vec<Key> = Vec::new();
        let mut keys = keys.iter();
        while let Some(key) = keys.next() {
            let flag = |name: &'static str, on: bool| -> Key {
                Box::new(move |_, m: &Mail| m.flags.contains(name) == on)
            };
            let recent = recent.clone();
            let test: Key = match key.to_ascii_uppercase().as_str() {
                "ALL" => Box::new(|_, _| true),
                "SEEN" => flag("\\Seen", true),
                "UNSEEN" => flag("\\Seen", false),
                "FLAGGED" => flag("\\Flagged", true),
                "UNFLAGGED" => flag("\\Flagged", false),
                "RECENT" => Box::new(move |_, m| recent.contains(&m.uid)),
                "NEW" => {
                    Box::new(move |_, m| recent.contains(&m.uid) && !m.flags.contains("\\Seen"))
                }
                "OLD" => Box::new(move |_, m| !recent.contains(&m.uid)),
                "UID" => {
                    let Some(set) = keys.next().and_then(|s| parse_set(s, max_uid)) else {
                        return bad("UID takes a set of UIDs");
                    };
                    Box::new(move |_, m| in_set(&set, m.uid))
                }
                other => {
                    let Some(set) = parse_set(other, count) else {
                        return bad(&format!("unsupported search key {key}"));
                    };
                    Box::new(move |seq, _| in_set(&set, seq))
                }
            };
            tests.push(test);
        }
        let uids: Vec<String> = state
            .mails
            .iter()
            .zip(1..)
            .filter(|(m, seq)| tests.iter().all(|t| t(*seq, m)))
            .map(|(m, _)| m.uid.to_string())
            .collect();
        out.extend_from_slice(b"* SEARCH");
        for uid in uids {
            out.push(b' ');
            out.extend_from_slice(uid.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        Status::Ok("SEARCH completed".into())
    }

    fn fetch(&mut self, args: &[String], out: &mut Vec<u8>) -> Status {
        let [set, items] = args else {
            return bad("UID FETCH takes a set and items");
        };
        let items: Vec<String> = items
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split_ascii_whitespace()
            .map(|s| s.to_ascii_uppercase())
            .collect();
        let mut flags = false;
        let mut size = false;
        let mut body: Option<(&str, bool)> = None; // (name in the answer, sets \Seen)
        for item in &items {
            match item.as_str() {
                "UID" => {}
                "FLAGS" => flags = true,
                "RFC822.SIZE" => size = true,
                "BODY.PEEK[]" => body = Some(("BODY[]", false)),
                "BODY[]" => body = Some(("BODY[]", true)),
                "RFC822" => body = Some(("RFC822", true)),
                _ => return bad(&format!("unsupported FETCH item {item}")),
            }
        }
        let read_only = self.selected.as_ref().is_none_or(|s| s.read_only);
        let shared = Arc::clone(&self.shared);
        let mut state = shared.state();
        self.take_recent(&mut state);
        let max_uid = state.mails.last().map_or(0, |m| m.uid);
        let Some(set) = parse_set(set, max_uid) else {
            return bad("not a set of UIDs");
        };
        let State { mails, fetches, .. } = &mut *state;
        for (mail, seq) in mails.iter_mut().zip(1..) {
            if !in_set(&set, mail.uid) {
                continue;
            }
            let mut changed = false;
            if let Some((_, true)) = body
                && !read_only
            {
                changed = mail.flags.insert("\\Seen".into());
            }
            let mut answer = format!("* {seq} FETCH (UID {}", mail.uid);
            if flags || changed {
                answer.push_str(&format!(" FLAGS {}", self.flags_of(mail)));
            }
            if size {
                answer.push_str(&format!(" RFC822.SIZE {}", mail.raw.len()));
            }
            out.extend_from_slice(answer.as_bytes());
            if let Some((name, _)) = body {
                out.extend_from_slice(format!(" {name} {{{}}}\r\n", mail.raw.len()).as_bytes());
                out.extend_from_slice(&mail.raw);
                *fetches.entry(mail.uid).or_default() += 1;
            }
            out.extend_from_slice(b")\r\n");
        }
        Status::Ok("FETCH completed".into())
    }

    fn store(&mut self, args: &[String], out: &mut Vec<u8>) -> Status {
        let [set, operation, flags @ ..] = args else {
            return bad("UID STORE takes a set, an operation and flags");
        };
        let operation = operation.to_ascii_uppercase();
        let (operation, silent) = match operation.strip_suffix(".SILENT") {
            Some(operation) => (operation, true),
            None => (operation.as_str(), false),
        };
        if !matches!(operation, "+FLAGS" | "-FLAGS" | "FLAGS") || flags.is_empty() {
            return bad("unsupported STORE");
        }
        let flags: BTreeSet<String> = flags
            .join(" ")
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split_ascii_whitespace()
            .map(canonical_flag)
            .filter(|f| f != "\\Recent")
            .collect();
        if self.selected.as_ref().is_none_or(|s| s.read_only) {
            return Status::No("[READ-ONLY] the folder is read-only".into());
        }
        let mut state = self.shared.state();
        let max_uid = state.mails.last().map_or(0, |m| m.uid);
        let Some(set) = parse_set(set, max_uid) else {
            return bad("not a set of UIDs");
        };
        for (mail, seq) in state.mails.iter_mut().zip(1..) {
            if !in_set(&set, mail.uid) {
                continue;
            }
            match operation {
                "+FLAGS" => mail.flags.extend(flags.iter().cloned()),
                "-FLAGS" => mail.flags.retain(|f| !flags.contains(f)),
                _ => mail.flags.clone_from(&flags),
            }
            if !silent {
                let answer = format!(
                    "* {seq} FETCH (UID {} FLAGS {})\r\n",
                    mail.uid,
                    self.flags_of(mail)
                );
                out.extend_from_slice(answer.as_bytes());
            }
        }
        Status::Ok("STORE completed".into())
    }
}

/// A set such as `1,4:6,9:*`: its ranges, `*` being `max`. None when it is not a set.
fn parse_set(set: &str, max: u32) -> Option<Vec<(u32, u32)>> {
    let number = |s: &str| -> Option<u32> {
        if s == "*" {
            Some(max)
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    set.split(',')
        .map(|range| match range.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                Some((a.min(b), a.max(b)))
            }
            None => number(range).map(|n| (n, n)),
        })
        .collect()
}

fn in_set(set: &[(u32, u32)], n: u32) -> bool {
    set.iter().any(|&(low, high)| (low..=high).contains(&n))
}

/// The words of a command line: atoms, quoted strings (unquoted), and parenthesized groups
/// kept whole (`(BODY.PEEK[])`). Brackets group too (`BODY[HEADER.FIELDS (FROM)]`). None
/// when a quote or a group is not closed.
fn tokenize(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        let Some(&first) = chars.peek() else {
            return Some(words);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => word.push(chars.next()?),
                    c => word.push(c),
                }
            }
        } else {
            let mut depth = 0usize;
            while let Some(&c) = chars.peek() {
                if c == ' ' && depth == 0 {
                    break;
                }
                match c {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth = depth.checked_sub(1)?,
                    _ => {}
                }
                word.push(c);
                chars.next();
            }
            if depth != 0 {
                return None;
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets() {
        assert_eq!(
            parse_set("1,4:6,9:*", 12),
            Some(vec![(1, 1), (4, 6), (9, 12)])
        );
        // "n:*" with * below n: the range is reversed, not empty.
        assert_eq!(parse_set("9:*", 3), Some(vec![(3, 9)]));
        assert_eq!(parse_set("a", 3), None);
        assert_eq!(parse_set("", 3), None);
    }

    #[test]
    fn words() {
        assert_eq!(
            tokenize(r#"A1 LOGIN "a\"b\\c" pw"#),
            Some(vec![
                "A1".into(),
                "LOGIN".into(),
                "a\"b\\c".into(),
                "pw".into()
            ])
        );
        assert_eq!(
            tokenize("A2 UID FETCH 1:* (UID BODY[HEADER.FIELDS (FROM)])"),
            Some(vec![
                "A2".into(),
                "UID".into(),
                "FETCH".into(),
                "1:*".into(),
                "(UID BODY[HEADER.FIELDS (FROM)])".into()
            ])
        );
        assert_eq!(tokenize("A3 X (a"), None);
        assert_eq!(tokenize("A3 X \"a"), None);
    }
}
