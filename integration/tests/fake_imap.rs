//! The fake IMAP server of the email-trigger tests, checked on its own with raw command
//! lines: LOGIN, SELECT/EXAMINE, UID SEARCH (and the `n:*` quirk), UID FETCH with literals,
//! UID STORE, `\Recent`, errors, LOGOUT, and concurrent connections.

use std::net::SocketAddr;
use std::time::Duration;

use mantle_integration::fake_imap::{FakeImap, UID_VALIDITY};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(10);

/// A raw IMAP connection.
struct Raw {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    tag: u32,
}

impl Raw {
    /// Connects and reads the greeting.
    async fn connect(addr: SocketAddr) -> Raw {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut raw = Raw {
            read: BufReader::new(read),
            write,
            tag: 0,
        };
        let greeting = raw.response().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        raw
    }

    /// One response: a line, and any literal it ends with, followed by the rest.
    async fn response(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.read.read_line(&mut line))
                .await
                .expect("the fake answers")
                .unwrap();
            assert!(n > 0, "the fake closed the connection");
            let line = line.strip_suffix("\r\n").expect("CRLF").to_owned();
            text.push_str(&line);
            let literal = line
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            let Some(size) = literal else {
                return text;
            };
            let mut bytes = vec![0; size];
            self.read.read_exact(&mut bytes).await.unwrap();
            text.push_str("\r\n");
            text.push_str(&String::from_utf8(bytes).unwrap());
        }
    }

    /// Sends `command` with the next tag: the untagged responses and the tagged one.
    async fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        let tag = format!("T{}", self.tag);
        self.write
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await
            .unwrap();
        let mut untagged = Vec::new();
        loop {
            let response = self.response().await;
            if let Some(status) = response.strip_prefix(&format!("{tag} ")) {
                return (untagged, status.to_owned());
            }
            untagged.push(response);
        }
    }

    /// Sends `command`, checks it answered OK: the untagged responses.
    async fn ok(&mut self, command: &str) -> Vec<String> {
        let (untagged, status) = self.cmd(command).await;
        assert!(status.starts_with("OK"), "{command}: {status}");
        untagged
    }

    async fn search(&mut self, criteria: &str) -> String {
        let untagged = self.ok(&format!("UID SEARCH {criteria}")).await;
        assert_eq!(untagged.len(), 1, "{untagged:?}");
        untagged[0].clone()
    }

    async fn login(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.ok("LOGIN bot@example.com \"s3cr\\\"et\"").await;
        raw
    }
}

const FIRST: &str = "From: Alice <alice@example.com>\nSubject: first\n\nhello\n";
const SECOND: &str = "From: bob@example.com\r\nSubject: second\r\n\r\nbye\r\n";

async fn fake() -> FakeImap {
    FakeImap::start("bot@example.com", "s3cr\"et").await
}

#[tokio::test]
async fn login_checks_the_password() {
    let imap = fake().await;
    let mut raw = Raw::connect(imap.addr()).await;
    let untagged = raw.ok("CAPABILITY").await;
    assert!(untagged[0].starts_with("* CAPABILITY IMAP4rev1"));
    // Nothing before LOGIN.
    let (_, status) = raw.cmd("SELECT INBOX").await;
    assert!(status.starts_with("BAD"), "{status}");
    let (_, status) = raw.cmd("LOGIN bot@example.com wrong").await;
    assert!(status.starts_with("NO [AUTHENTICATIONFAILED]"), "{status}");
    assert_eq!(imap.logins(), 0);
    raw.ok("LOGIN \"bot@example.com\" \"s3cr\\\"et\"").await;
    assert_eq!(imap.logins(), 1);
    let (_, status) = raw.cmd("FROBNICATE").await;
    assert!(status.starts_with("BAD"), "{status}");
    let untagged = raw.ok("LOGOUT").await;
    assert!(untagged[0].starts_with("* BYE"));
}

#[tokio::test]
async fn select_search_fetch_store() {
    let imap = fake().await;
    assert_eq!(imap.deliver(FIRST), 1);
    assert_eq!(imap.deliver(SECOND), 2);
    let mut raw = Raw::login(imap.addr()).await;

    let (_, status) = raw.cmd("SELECT Archive").await;
    assert!(status.starts_with("NO"), "{status}");
    let (_, status) = raw.cmd("UID SEARCH ALL").await;
    assert!(status.starts_with("BAD"), "no folder selected: {status}");
    let untagged = raw.ok("SELECT \"inbox\"").await;
    assert!(untagged.contains(&"* 2 EXISTS".to_owned()), "{untagged:?}");
    assert!(untagged.contains(&"* 2 RECENT".to_owned()), "{untagged:?}");
    assert!(
        untagged.contains(&format!("* OK [UIDVALIDITY {UID_VALIDITY}] UIDs valid")),
        "{untagged:?}"
    );

    assert_eq!(raw.search("UNSEEN UID 1:*").await, "* SEARCH 1 2");
    assert_eq!(raw.search("ALL UID 2:*").await, "* SEARCH 2");
    // The highest UID matches "n:*" even above it.
    assert_eq!(raw.search("UID 5:*").await, "* SEARCH 2");
    assert_eq!(raw.search("RECENT").await, "* SEARCH 1 2");
    assert_eq!(raw.search("FLAGGED").await, "* SEARCH");

    // BODY.PEEK[]: the body as delivered (with CRLF), not \Seen.
    let untagged = raw.ok("UID FETCH 1 (BODY.PEEK[])").await;
    let first = FIRST.replace('\n', "\r\n");
    assert_eq!(
        untagged,
        vec![format!(
            "* 1 FETCH (UID 1 BODY[] {{{}}}\r\n{first})",
            first.len()
        )]
    );
    assert!(!imap.seen(1));
    assert_eq!(imap.fetches(1), 1);

    // BODY[]: \Seen, and the new flags in the answer.
    let untagged = raw.ok("UID FETCH 2 BODY[]").await;
    assert_eq!(
        untagged,
        vec![format!(
            "* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) BODY[] {{{}}}\r\n{SECOND})",
            SECOND.len()
        )]
    );
    assert!(imap.seen(2));
    assert_eq!(raw.search("UNSEEN UID 1:*").await, "* SEARCH 1");

    // Flags only; no body: not counted.
    let untagged = raw.ok("UID FETCH 1:* (UID FLAGS RFC822.SIZE)").await;
    assert_eq!(untagged.len(), 2, "{untagged:?}");
    assert_eq!(
        untagged[0],
        format!(
            "* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE {})",
            first.len()
        )
    );
    assert_eq!(imap.fetches(1), 1);
    assert_eq!(imap.fetches(2), 1);
    // A UID that names nothing: OK and no answer.
    assert!(raw.ok("UID FETCH 9 (BODY.PEEK[])").await.is_empty());

    // STORE: silent, and not.
    assert!(
        raw.ok("UID STORE 1 +FLAGS.SILENT (\\Seen)")
            .await
            .is_empty()
    );
    assert!(imap.seen(1));
    assert_eq!(raw.search("UNSEEN").await, "* SEARCH");
    let untagged = raw.ok("UID STORE 2 +FLAGS (\\Flagged)").await;
    assert_eq!(
        untagged,
        vec!["* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen \\Recent))"]
    );
    assert_eq!(raw.search("FLAGGED UID 1:*").await, "* SEARCH 2");
    raw.ok("UID STORE 1:2 -FLAGS.SILENT (\\Seen)").await;
    assert!(!imap.seen(1) && !imap.seen(2));
    imap.set_flag(1, "\\flagged", true);
    assert!(imap.has_flag(1, "\\Flagged"));
    assert_eq!(raw.search("FLAGGED").await, "* SEARCH 1 2");

    let (_, status) = raw.cmd("UID FETCH 1 (BODY[HEADER])").await;
    assert!(status.starts_with("BAD"), "{status}");
    let (_, status) = raw.cmd("UID SEARCH FROM alice").await;
    assert!(status.starts_with("BAD"), "{status}");
    raw.ok("NOOP").await;
    let untagged = raw.ok("LOGOUT").await;
    assert!(untagged[0].starts_with("* BYE"));
}

#[tokio::test]
async fn recent_goes_to_the_first_session_that_selects() {
    let imap = fake().await;
    imap.deliver(FIRST);
    let mut first = Raw::login(imap.addr()).await;
    let mut second = Raw::login(imap.addr()).await;
    assert_eq!(imap.logins(), 2);

    // EXAMINE sees \Recent without taking it, and cannot STORE.
    let untagged = second.ok("EXAMINE INBOX").await;
    assert!(untagged.contains(&"* 1 RECENT".to_owned()), "{untagged:?}");
    let (_, status) = second.cmd("UID STORE 1 +FLAGS (\\Seen)").await;
    assert!(status.starts_with("NO"), "{status}");
    // Nor set \Seen by fetching.
    second.ok("UID FETCH 1 BODY[]").await;
    assert!(!imap.seen(1));

    first.ok("SELECT INBOX").await;
    assert_eq!(first.search("RECENT").await, "* SEARCH 1");
    let untagged = second.ok("SELECT INBOX").await;
    assert!(untagged.contains(&"* 0 RECENT".to_owned()), "{untagged:?}");

    // A delivery while selected: NOOP tells, and the next command takes its \Recent.
    imap.deliver(SECOND);
    let untagged = first.ok("NOOP").await;
    assert_eq!(untagged, vec!["* 2 EXISTS"]);
    assert_eq!(first.search("RECENT").await, "* SEARCH 1 2");
    assert_eq!(second.search("RECENT").await, "* SEARCH");
}

#[tokio::test]
async fn serves_connections_concurrently() {
    let imap = fake().await;
    for i in 0..5 {
        imap.deliver(&format!("Subject: {i}\n\nbody {i}\n"));
    }
    let addr = imap.addr();
    // All connected before any command: one waiting connection blocks none.
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(Raw::login(addr).await);
    }
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                raw.ok("SELECT INBOX").await;
                assert_eq!(raw.search("ALL UID 1:*").await, "* SEARCH 1 2 3 4 5");
                raw.ok("UID FETCH 3 (BODY.PEEK[])").await;
                raw.ok("LOGOUT").await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(imap.logins(), 8);
    assert_eq!(imap.fetches(3), 8);
    assert!(!imap.seen(3));
}

#[tokio::test]
async fn dropping_the_fake_closes_its_connections() {
    let imap = fake().await;
    let mut raw = Raw::login(imap.addr()).await;
    drop(imap);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, raw.read.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
