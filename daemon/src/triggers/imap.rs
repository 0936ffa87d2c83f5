//! A minimal IMAP4rev1 client (RFC 3501) for email triggers, and [`parse`], which takes the
//! fields a trigger gives an execution out of a raw RFC 5322 message.
//!
//! The client speaks over any stream (plain TCP, TLS, an in-memory pipe): LOGIN, SELECT,
//! `UID SEARCH`, `UID FETCH (BODY.PEEK[])`, `UID STORE +FLAGS.SILENT (\Seen)` and LOGOUT, one
//! command at a time with tags `A1`, `A2`, … Everything the server sends is bounded: a
//! response's lines at [`MAX_LINE`] bytes in all, its literals at the caller's limit (a
//! message) or [`MAX_LINE`] (any other command), the UIDs a search returns at
//! [`MAX_UIDS`]. Nothing here times out: the caller wraps each call in
//! `tokio::time::timeout`. A call that fails with [`Error::Io`] or [`Error::Protocol`], or
//! that is cancelled half-way (a timeout), leaves the session unusable: every later call
//! fails with [`Error::Protocol`] and the caller connects again.
//!
//! Names are sent as quoted strings: a folder whose name is not ASCII (modified UTF-7) is not
//! supported.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The most bytes of one response's lines (literals apart), CRLFs excluded.
pub const MAX_LINE: usize = 64 * 1024;
/// The most UIDs a search returns (the lowest ones).
pub const MAX_UIDS: usize = 10_000;
/// The most characters of the server's text kept in an error.
const MAX_TEXT: usize = 500;
/// How deep parenthesized lists of a FETCH response, and MIME multiparts, may nest.
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("IMAP connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered NO or BAD (or BYE in its greeting).
    #[error("the server said: {0}")]
    No(String),
    #[error("IMAP protocol: {0}")]
    Protocol(String),
    /// The message has this many bytes, over the limit given: it was not kept.
    #[error("the message has {0} bytes, over the limit of {1}")]
    TooLarge(u64, usize),
}

/// A selected folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    pub uid_validity: u32,
    /// How many messages it holds.
    pub exists: u32,
    /// The UID the next message will get (`[UIDNEXT n]`), when the server says: every
    /// message there now has a lower UID.
    pub uid_next: Option<u32>,
}

/// A fetched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    /// The message as the server stores it (RFC 5322).
    pub raw: Vec<u8>,
}

/// An IMAP session, authenticated.
pub struct Session<S> {
    stream: BufReader<S>,
    tag: u32,
    /// An error or a cancellation left a response half-read.
    broken: bool,
}

impl<S> fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("tag", &self.tag)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// One server response: its lines joined (CRLFs removed, `{n}` markers kept) and the
/// literals that followed the markers, in order.
#[derive(Debug, Default)]
struct Response {
    text: Vec<u8>,
    literals: Vec<Vec<u8>>,
    /// A literal over the limit, of this many bytes, was read and thrown away (its place in
    /// `literals` is empty).
    oversize: Option<u64>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }

    fn is_untagged(&self) -> bool {
        self.text.starts_with(b"* ")
    }

    /// The status word of an untagged response (`OK`, `BYE`, …) or its second word.
    fn untagged_word(&self, index: usize, word: &str) -> bool {
        self.text
            .split(|&b| b == b' ')
            .nth(index)
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Reads the greeting, then LOGIN (quoted strings, escaping `"` and `\`). A `PREAUTH`
    /// greeting needs no LOGIN.
    pub async fn login(stream: S, user: &str, password: &str) -> Result<Session<S>, Error> {
        let command = format!("LOGIN {} {}", quote(user)?, quote(password)?);
        let mut session = Session {
            stream: BufReader::new(stream),
            tag: 0,
            broken: false,
        };
        let greeting = session.read_response(MAX_LINE).await?;
        if !greeting.is_untagged() {
            return Err(Error::Protocol(format!(
                "the greeting is not untagged: {}",
                server_text(&greeting.text)
            )));
        }
        if greeting.untagged_word(1, "BYE") {
            return Err(Error::No(server_text(&greeting.text[2..])));
        }
        if greeting.untagged_word(1, "PREAUTH") {
            return Ok(session);
        }
        if !greeting.untagged_word(1, "OK") {
            return Err(Error::Protocol(format!(
                "unexpected greeting: {}",
                server_text(&greeting.text)
            )));
        }
        session.run(&command, MAX_LINE, |_| Ok(())).await?;
        Ok(session)
    }

    /// Selects `folder` (read-write): its UIDVALIDITY and message count.
    pub async fn select(&mut self, folder: &str) -> Result<Mailbox, Error> {
        let command = format!("SELECT {}", quote(folder)?);
        let mut exists = 0;
        let mut uid_validity = None;
        let mut uid_next = None;
        let done = self
            .run(&command, MAX_LINE, |r| {
                let text = r.text();
                let mut words = text.split_ascii_whitespace().skip(1);
                if let (Some(n), Some(w)) = (words.next(), words.next())
                    && w.eq_ignore_ascii_case("EXISTS")
                {
                    exists = n.parse().unwrap_or(0);
                }
                uid_validity = uid_validity.or_else(|| response_code(&text, "UIDVALIDITY"));
                uid_next = uid_next.or_else(|| response_code(&text, "UIDNEXT"));
                Ok(())
            })
            .await?;
        let uid_validity = uid_validity
            .or_else(|| response_code(&done.text(), "UIDVALIDITY"))
            .ok_or_else(|| Error::Protocol("SELECT gave no UIDVALIDITY".into()))?;
        Ok(Mailbox {
            uid_validity,
            exists,
            uid_next,
        })
    }

    /// `UID SEARCH <criterion> UID <from>:*`: the UIDs at or above `from_uid` that match
    /// `criterion` (`UNSEEN`, `ALL`, `FLAGGED`, `RECENT`, … : atoms separated by spaces),
    /// ascending, at most [`MAX_UIDS`] (the lowest).
    pub async fn search_uids(&mut self, criterion: &str, from_uid: u32) -> Result<Vec<u32>, Error> {
        let criterion = criterion.trim();
        if criterion.is_empty()
            || !criterion
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b' ')
        {
            return Err(Error::Protocol(format!(
                "not a search criterion: {criterion:?}"
            )));
        }
        let from = from_uid.max(1);
        let command = format!("UID SEARCH {criterion} UID {from}:*");
        let mut uids = BTreeSet::new();
        self.run(&command, MAX_LINE, |r| {
            if r.untagged_word(1, "SEARCH") {
                // "n:*" matches the highest UID even when it is below n: hence `>= from`.
                let text = r.text();
                for uid in text.split_ascii_whitespace().skip(2) {
                    if let Ok(uid) = uid.parse::<u32>()
                        && uid >= from
                    {
                        uids.insert(uid);
                        if uids.len() > MAX_UIDS {
                            uids.pop_last();
                        }
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(uids.into_iter().collect())
    }

    /// `UID FETCH <uid> (BODY.PEEK[])`: the whole message, without setting `\Seen`. A message
    /// over `max_bytes` is read and thrown away as it comes ([`Error::TooLarge`]; the
    /// session goes on). A UID that names no message is [`Error::No`].
    pub async fn fetch(&mut self, uid: u32, max_bytes: usize) -> Result<Message, Error> {
        let command = format!("UID FETCH {uid} (BODY.PEEK[])");
        let mut raw = None;
        let mut oversize = None;
        self.run(&command, max_bytes, |r| {
            if !r.untagged_word(2, "FETCH") {
                return Ok(());
            }
            if let Some(size) = r.oversize {
                oversize = oversize.or(Some(size));
                return Ok(());
            }
            let (id, body) = fetch_body(r)?;
            if raw.is_none() && id.is_none_or(|id| id == uid) {
                raw = body;
            }
            Ok(())
        })
        .await?;
        if let Some(size) = oversize {
            return Err(Error::TooLarge(size, max_bytes));
        }
        let raw = raw.ok_or_else(|| Error::No(format!("no message has UID {uid}")))?;
        Ok(Message { uid, raw })
    }

    /// `UID STORE <uid> +FLAGS.SILENT (\Seen)`.
    pub async fn mark_seen(&mut self, uid: u32) -> Result<(), Error> {
        let command = format!("UID STORE {uid} +FLAGS.SILENT (\\Seen)");
        self.run(&command, MAX_LINE, |_| Ok(())).await?;
        Ok(())
    }

    /// LOGOUT, then closes the stream.
    pub async fn logout(mut self) -> Result<(), Error> {
        let mut bye = false;
        let result = self
            .run("LOGOUT", MAX_LINE, |r| {
                bye |= r.untagged_word(1, "BYE");
                Ok(())
            })
            .await;
        match result {
            Ok(_) => {}
            // Some servers close the connection after BYE without the tagged OK.
            Err(Error::Io(e)) if bye && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(e),
        }
        let _ = self.stream.get_mut().shutdown().await;
        Ok(())
    }

    /// Sends `command` and reads up to its tagged answer, handing every untagged response
    /// to `untagged`: the tagged OK response, or [`Error::No`] for NO and BAD.
    async fn run(
        &mut self,
        command: &str,
        literal_limit: usize,
        untagged: impl FnMut(Response) -> Result<(), Error>,
    ) -> Result<Response, Error> {
        if self.broken {
            return Err(Error::Protocol(
                "the session is unusable after an earlier error".into(),
            ));
        }
        // Stays set when this call is cancelled half-way.
        self.broken = true;
        let result = self.exchange(command, literal_limit, untagged).await;
        self.broken = matches!(result, Err(Error::Io(_) | Error::Protocol(_)));
        result
    }

    async fn exchange(
        &mut self,
        command: &str,
        literal_limit: usize,
        mut untagged: impl FnMut(Response) -> Result<(), Error>,
    ) -> Result<Response, Error> {
        self.tag = self.tag.wrapping_add(1);
        let tag = format!("A{}", self.tag);
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        stream.flush().await?;
        loop {
            let response = self.read_response(literal_limit).await?;
            if response.is_untagged() {
                if response.untagged_word(1, "BYE") && command != "LOGOUT" {
                    return Err(Error::Protocol(format!(
                        "the server closed the session: {}",
                        server_text(&response.text[2..])
                    )));
                }
                untagged(response)?;
                continue;
            }
            let text = &response.text;
            let rest = text
                .strip_prefix(tag.as_bytes())
                .and_then(|rest| rest.strip_prefix(b" "))
                .ok_or_else(|| {
                    Error::Protocol(format!(
                        "expected the answer to {tag}, got: {}",
                        server_text(text)
                    ))
                })?;
            let (status, said) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            if status.eq_ignore_ascii_case(b"OK") {
                return Ok(response);
            }
            if status.eq_ignore_ascii_case(b"NO") || status.eq_ignore_ascii_case(b"BAD") {
                return Err(Error::No(server_text(said)));
            }
            return Err(Error::Protocol(format!(
                "unexpected status: {}",
                server_text(text)
            )));
        }
    }

    /// Reads one response: a line, and while it ends with a literal `{n}`, the literal and
    /// the line that goes on after it. Literals beyond `literal_limit` bytes in all are read
    /// and thrown away.
    async fn read_response(&mut self, literal_limit: usize) -> Result<Response, Error> {
        let mut response = Response::default();
        let mut literal_bytes = 0u64;
        loop {
            let start = response.text.len();
            self.read_line(&mut response.text).await?;
            let Some(size) = literal_size(&response.text[start..])? else {
                return Ok(response);
            };
            literal_bytes = literal_bytes.saturating_add(size);
            let reader = (&mut self.stream).take(size);
            let got = if literal_bytes <= literal_limit as u64 {
                let mut literal = Vec::with_capacity(size.min(1 << 20) as usize);
                let mut reader = reader;
                let got = reader.read_to_end(&mut literal).await? as u64;
                response.literals.push(literal);
                got
            } else {
                response.oversize = response.oversize.or(Some(size));
                response.literals.push(Vec::new());
                let mut reader = reader;
                tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?
            };
            if got < size {
                return Err(eof());
            }
        }
    }

    /// Appends one line to `out`, without its CRLF, keeping `out` within [`MAX_LINE`].
    async fn read_line(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        loop {
            let available = self.stream.fill_buf().await?;
            if available.is_empty() {
                return Err(eof());
            }
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if out.len() + take > MAX_LINE + 2 {
                return Err(Error::Protocol(format!(
                    "a response is longer than {MAX_LINE} bytes"
                )));
            }
            out.extend_from_slice(&available[..take]);
            self.stream.consume(take);
            if done {
                out.pop();
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(());
            }
        }
    }
}

fn eof() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    ))
}

/// The size of the literal a line announces at its end (`{n}`).
fn literal_size(line: &[u8]) -> Result<Option<u64>, Error> {
    let Some(inner) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = inner.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = &inner[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .map(Some)
        .ok_or_else(|| Error::Protocol("a literal's size is out of range".into()))
}

/// A quoted string, or an error for what cannot be one (line breaks, NUL).
fn quote(s: &str) -> Result<String, Error> {
    if s.contains(['\r', '\n', '\0']) {
        return Err(Error::Protocol(
            "a name or password may not contain line breaks or NUL".into(),
        ));
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(quoted)
}

/// The server's text, for an error: lossy UTF-8, at most [`MAX_TEXT`] characters.
fn server_text(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    match text.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

/// `n` of the response code `[<code> n]` (`UIDVALIDITY`, `UIDNEXT`) in an `OK` response.
fn response_code(text: &str, code: &str) -> Option<u32> {
    let upper = text.to_ascii_uppercase();
    let open = format!("[{code} ");
    let at = upper.find(&open)? + open.len();
    let end = upper[at..].find(']')? + at;
    upper[at..end].trim().parse().ok()
}

/// An item of a FETCH response.
#[derive(Debug)]
enum Item {
    Atom(String),
    /// A quoted string or a literal.
    Bytes(Vec<u8>),
    List(Vec<Item>),
}

struct Items<'a> {
    text: &'a [u8],
    pos: usize,
    literals: std::vec::IntoIter<Vec<u8>>,
}

impl Items<'_> {
    fn bad(&self, what: &str) -> Error {
        Error::Protocol(format!(
            "{what} at byte {} of a FETCH response: {}",
            self.pos,
            server_text(self.text)
        ))
    }

    fn skip_spaces(&mut self) {
        while self.text.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn item(&mut self, depth: usize) -> Result<Item, Error> {
        self.skip_spaces();
        match self.text.get(self.pos) {
            None => Err(self.bad("unexpected end")),
            Some(b'(') => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("lists nested too deep"));
                }
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces();
                    match self.text.get(self.pos) {
                        Some(b')') => {
                            self.pos += 1;
                            return Ok(Item::List(items));
                        }
                        None => return Err(self.bad("unclosed list")),
                        Some(_) => items.push(self.item(depth + 1)?),
                    }
                }
            }
            Some(b'"') => {
                self.pos += 1;
                let mut bytes = Vec::new();
                loop {
                    match self.text.get(self.pos) {
                        None => return Err(self.bad("unclosed quoted string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            self.pos += 1;
                            let Some(&b) = self.text.get(self.pos) else {
                                return Err(self.bad("unclosed quoted string"));
                            };
                            bytes.push(b);
                        }
                        Some(&b) => bytes.push(b),
                    }
                    self.pos += 1;
                }
                self.pos += 1;
                Ok(Item::Bytes(bytes))
            }
            Some(b'{') => {
                let close = self.text[self.pos..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| self.bad("unclosed literal"))?;
                self.pos += close + 1;
                let literal = self.literals.next().ok_or_else(|| self.bad("no literal"))?;
                Ok(Item::Bytes(literal))
            }
            Some(_) => {
                let start = self.pos;
                let mut in_brackets = false;
                while let Some(&b) = self.text.get(self.pos) {
                    match b {
                        b'[' => in_brackets = true,
                        b']' => in_brackets = false,
                        b' ' | b'(' | b')' if !in_brackets => break,
                        _ => {}
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(self.bad("unexpected character"));
                }
                let atom = &self.text[start..self.pos];
                Ok(Item::Atom(String::from_utf8_lossy(atom).into_owned()))
            }
        }
    }
}

/// The UID and `BODY[]` of a `* n FETCH (...)` response.
fn fetch_body(response: Response) -> Result<(Option<u32>, Option<Vec<u8>>), Error> {
    let text = &response.text;
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| Error::Protocol(format!("a FETCH without items: {}", server_text(text))))?;
    let mut items = Items {
        text,
        pos: open,
        literals: response.literals.into_iter(),
    };
    let Item::List(list) = items.item(0)? else {
        return Err(items.bad("no list"));
    };
    let mut uid = None;
    let mut body = None;
    let mut list = list.into_iter();
    while let (Some(key), Some(value)) = (list.next(), list.next()) {
        let Item::Atom(key) = key else {
            return Err(Error::Protocol("a FETCH item has no name".into()));
        };
        let key = key.to_ascii_uppercase();
        if key == "UID" {
            let Item::Atom(n) = value else {
                return Err(Error::Protocol("a FETCH UID is not a number".into()));
            };
            uid = Some(
                n.parse()
                    .map_err(|_| Error::Protocol(format!("a FETCH UID is not a number: {n}")))?,
            );
        } else if key.starts_with("BODY[]") {
            body = Some(match value {
                Item::Bytes(bytes) => bytes,
                // NIL
                _ => Vec::new(),
            });
        }
    }
    Ok((uid, body))
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// The fields a trigger gives an execution, taken from a raw RFC 5322 message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// `From`, encoded words decoded (`André <andre@example.com>`).
    pub from: String,
    /// `To`, encoded words decoded.
    pub to: String,
    /// `Subject`, encoded words decoded.
    pub subject: String,
    /// `Date`, as written.
    pub date: String,
    /// `Message-ID`, as written (with its `<>`).
    pub message_id: String,
    /// The text: the body of a single-part message, or the first `text/plain` part of a
    /// multipart one (else its first part), its transfer encoding and charset decoded, lines
    /// ending with `\n`.
    pub body: String,
}

type Header = (String, Vec<u8>);

/// Parses a raw message; `body` is cut to at most `max_body` bytes (on a character
/// boundary). Never fails: what cannot be read is left empty or as written.
pub fn parse(raw: &[u8], max_body: usize) -> Parsed {
    let (headers, body) = entity(raw);
    let field = |name: &str| header(&headers, name).trim().to_owned();
    let mut text = text_of(&headers, body, 0);
    if text.len() > max_body {
        let cut = text.floor_char_boundary(max_body);
        text.truncate(cut);
    }
    Parsed {
        from: decode_words(&field("from")),
        to: decode_words(&field("to")),
        subject: decode_words(&field("subject")),
        date: field("date"),
        message_id: field("message-id"),
        body: text,
    }
}

/// The lines of `bytes`: (start, end without the line break, start of the next line).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let start = pos;
        let (end, next) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (start + i, start + i + 1),
            None => (bytes.len(), bytes.len()),
        };
        pos = next;
        let end = if end > start && bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        Some((start, end, next))
    })
}

/// The unfolded headers and the body of a message or a MIME part.
fn entity(raw: &[u8]) -> (Vec<Header>, &[u8]) {
    let mut headers: Vec<Header> = Vec::new();
    let mut body = &raw[raw.len()..];
    for (start, end, next) in lines(raw) {
        let line = &raw[start..end];
        if line.is_empty() {
            body = &raw[next..];
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some((_, value)) = headers.last_mut() {
                value.extend_from_slice(line);
            }
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
            headers.push((name, line[colon + 1..].to_vec()));
        }
    }
    (headers, body)
}

/// The first header `name` (lossy UTF-8), or "".
fn header(headers: &[Header], name: &str) -> String {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The MIME type of a `Content-Type` value, lowercase (`text/plain` when absent).
fn mime_type(content_type: &str) -> String {
    let t = content_type.split(';').next().unwrap_or("").trim();
    if t.is_empty() {
        "text/plain".into()
    } else {
        t.to_ascii_lowercase()
    }
}

/// The parameter `name` of a header value such as `text/plain; charset="utf-8"`.
fn param(value: &str, name: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let (key, after) = rest.split_once('=')?;
        let key = key.rsplit(';').next().unwrap_or("").trim();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut val = String::new();
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    val.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = i + 1;
                    break;
                } else {
                    val.push(c);
                }
            }
            (val, &quoted[end..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(val);
        }
        rest = next.split_once(';')?.1;
    }
}

/// The text of an entity: its first `text/plain` part if multipart (else its first part),
/// or its decoded body.
fn text_of(headers: &[Header], body: &[u8], depth: usize) -> String {
    if let Some(parts) = multipart(headers, body, depth) {
        if let Some(text) = first_plain(&parts, depth + 1) {
            return text;
        }
        return parts
            .first()
            .map(|(h, b)| text_of(h, b, depth + 1))
            .unwrap_or_default();
    }
    leaf_text(headers, body)
}

/// The first `text/plain` part that is not an attachment, depth first.
fn first_plain(parts: &[(Vec<Header>, &[u8])], depth: usize) -> Option<String> {
    for (headers, body) in parts {
        if let Some(sub) = multipart(headers, body, depth) {
            if let Some(text) = first_plain(&sub, depth + 1) {
                return Some(text);
            }
            continue;
        }
        let attachment = header(headers, "content-disposition")
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("attachment");
        if mime_type(&header(headers, "content-type")) == "text/plain" && !attachment {
            return Some(leaf_text(headers, body));
        }
    }
    None
}

/// The parts of a multipart entity, or None when it is not one.
fn multipart<'a>(
    headers: &[Header],
    body: &'a [u8],
    depth: usize,
) -> Option<Vec<(Vec<Header>, &'a [u8])>> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let content_type = header(headers, "content-type");
    if !mime_type(&content_type).starts_with("multipart/") {
        return None;
    }
    let boundary = param(&content_type, "boundary").filter(|b| !b.is_empty())?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start = None;
    for (line_start, line_end, next) in lines(body) {
        let Some(tail) = body[line_start..line_end].strip_prefix(delimiter.as_bytes()) else {
            continue;
        };
        let close = tail.starts_with(b"--");
        let tail = if close { &tail[2..] } else { tail };
        if !tail.iter().all(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        if let Some(start) = start {
            // The line break before a delimiter is the delimiter's.
            let mut end = line_start;
            if end > start && body[end - 1] == b'\n' {
                end -= 1;
            }
            if end > start && body[end - 1] == b'\r' {
                end -= 1;
            }
            parts.push(entity(&body[start..end.max(start)]));
        }
        if close {
            return Some(parts);
        }
        start = Some(next);
    }
    if let Some(start) = start {
        parts.push(entity(&body[start..]));
    }
    Some(parts)
}

/// A single part's body: transfer encoding and charset decoded, lines ending with `\n`.
fn leaf_text(headers: &[Header], body: &[u8]) -> String {
    let encoding = header(headers, "content-transfer-encoding")
        .trim()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => base64_lenient(body),
        "quoted-printable" => quoted_printable(body),
        _ => body.to_vec(),
    };
    let charset = param(&header(headers, "content-type"), "charset").unwrap_or_default();
    decode_charset(&charset, &bytes).replace("\r\n", "\n")
}

/// Base64, ignoring line breaks, stray characters and missing padding.
fn base64_lenient(text: &[u8]) -> Vec<u8> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let mut clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    LENIENT.decode(&clean).unwrap_or_default()
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(hi)? * 16 + digit(lo)?) as u8)
}

/// A quoted-printable body: `=XX` escapes and `=` soft line breaks.
fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        if let (Some(&hi), Some(&lo)) = (text.get(i + 1), text.get(i + 2))
            && let Some(byte) = hex_byte(hi, lo)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        // A soft line break: '=', maybe trailing blanks, then the line break (or the end).
        let mut j = i + 1;
        while matches!(text.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        match (text.get(j), text.get(j + 1)) {
            (None, _) => i = j,
            (Some(b'\n'), _) => i = j + 1,
            (Some(b'\r'), Some(b'\n')) => i = j + 2,
            _ => {
                out.push(b'=');
                i += 1;
            }
        }
    }
    out
}

/// Windows-1252's characters for 0x80..=0x9F (where ISO-8859-1 has control characters).
const CP1252: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž', '\u{8F}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}', 'ž', 'Ÿ',
];

/// Text in `charset`: UTF-8 (and ASCII), ISO-8859-1 and Windows-1252; any other is read as
/// UTF-8, invalid bytes replaced.
fn decode_charset(charset: &str, bytes: &[u8]) -> String {
    // RFC 2231 allows a language after '*'.
    let charset = charset
        .split('*')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match charset.as_str() {
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" | "l1" => {
            bytes.iter().map(|&b| b as char).collect()
        }
        "windows-1252" | "cp1252" => bytes
            .iter()
            .map(|&b| match b {
                0x80..=0x9F => CP1252[(b - 0x80) as usize],
                _ => b as char,
            })
            .collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Decodes the RFC 2047 encoded words (`=?charset?B|Q?text?=`) of a header value; blanks
/// between two encoded words go.
fn decode_words(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut after_word = false;
    while let Some(at) = rest.find("=?") {
        let (before, candidate) = rest.split_at(at);
        match encoded_word(candidate) {
            Some((text, used)) => {
                if !(after_word && before.bytes().all(|b| b == b' ' || b == b'\t')) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &candidate[used..];
                after_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of the encoded word `s` starts with, and its length.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let charset_end = inner.find('?')?;
    let charset = &inner[..charset_end];
    let rest = &inner[charset_end + 1..];
    let encoding = *rest.as_bytes().first()?;
    if rest.as_bytes().get(1) != Some(&b'?') {
        return None;
    }
    let text_end = rest[2..].find("?=")?;
    let text = &rest[2..2 + text_end];
    if charset.is_empty()
        || charset.contains(char::is_whitespace)
        || text.contains(char::is_whitespace)
    {
        return None;
    }
    let bytes = match encoding.to_ascii_uppercase() {
        b'B' => base64_lenient(text.as_bytes()),
        b'Q' => {
            let text = text.as_bytes();
            let mut out = Vec::with_capacity(text.len());
            let mut i = 0;
            while i < text.len() {
                let escaped = match text.get(i..i + 3) {
                    Some(&[b'=', hi, lo]) => hex_byte(hi, lo),
                    _ => None,
                };
                match (escaped, text[i]) {
                    (Some(byte), _) => {
                        out.push(byte);
                        i += 2;
                    }
                    (None, b'_') => out.push(b' '),
                    (None, b) => out.push(b),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    let used = 2 + charset_end + 1 + 2 + text_end + 2;
    Some((decode_charset(charset, &bytes), used))
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{DuplexStream, duplex};
    use tokio::task::JoinHandle;

    /// Plays the server: for each step, reads the client's line and checks it is `expect`
    /// (no read when `expect` is empty), then writes `reply`.
    fn server(steps: Vec<(&'static str, Vec<u8>)>) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut server = BufReader::new(server);
            for (expect, reply) in steps {
                if !expect.is_empty() {
                    let mut line = String::new();
                    server.read_line(&mut line).await.expect("reading");
                    assert_eq!(line, format!("{expect}\r\n"));
                }
                // The client may have gone (a refused message): ignore write errors.
                let _ = server.get_mut().write_all(&reply).await;
            }
        });
        (client, task)
    }

    fn r(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn greeting_and_login() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("", r("* OK [CAPABILITY IMAP4rev1] ready\r\n")),
            (
                "A1 LOGIN \"u\" \"p\"",
                r("* CAPABILITY IMAP4rev1\r\nA1 OK logged in\r\n"),
            ),
        ]
    }

    #[tokio::test]
    async fn login_quotes_and_escapes() {
        let (io, task) = server(vec![
            ("", r("* OK ready\r\n")),
            ("A1 LOGIN \"a\\\"b\\\\c\" \"p w\"", r("A1 OK yes\r\n")),
            ("A2 LOGOUT", r("* BYE bye\r\nA2 OK done\r\n")),
        ]);
        let session = Session::login(io, "a\"b\\c", "p w").await.unwrap();
        session.logout().await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn login_refused_is_no_with_the_servers_text() {
        let (io, task) = server(vec![
            ("", r("* OK ready\r\n")),
            (
                "A1 LOGIN \"u\" \"bad\"",
                r("A1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            ),
        ]);
        let err = Session::login(io, "u", "bad").await.unwrap_err();
        assert!(
            matches!(&err, Error::No(text) if text == "[AUTHENTICATIONFAILED] Invalid credentials"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the server said: [AUTHENTICATIONFAILED] Invalid credentials"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn greetings_bye_and_preauth() {
        let (io, task) = server(vec![("", r("* BYE too busy\r\n"))]);
        let err = Session::login(io, "u", "p").await.unwrap_err();
        assert!(
            matches!(&err, Error::No(t) if t == "BYE too busy"),
            "{err:?}"
        );
        task.await.unwrap();

        let (io, task) = server(vec![
            ("", r("* PREAUTH welcome\r\n")),
            ("A1 UID STORE 3 +FLAGS.SILENT (\\Seen)", r("A1 OK\r\n")),
        ]);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        session.mark_seen(3).await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn line_breaks_in_names_are_refused_before_sending() {
        let (io, _task) = server(vec![("", r("* OK ready\r\n"))]);
        let err = Session::login(io, "u\r\nA9 DELETE INBOX", "p")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");

        let mut steps = greeting_and_login();
        steps.push((
            "A2 SELECT \"INBOX\"",
            r("* OK [UIDVALIDITY 1] x\r\nA2 OK\r\n"),
        ));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        assert!(matches!(
            session.select("a\nb").await,
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            session.search_uids("ALL)(", 1).await,
            Err(Error::Protocol(_))
        ));
        // Nothing was sent, and the session goes on.
        session.select("INBOX").await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn select_reads_uidvalidity_and_exists() {
        let mut steps = greeting_and_login();
        steps.push((
            "A2 SELECT \"INBOX\"",
            r(
                "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
               * 172 EXISTS\r\n* 1 RECENT\r\n\
               * OK [UNSEEN 12] Message 12 is first unseen\r\n\
               * OK [UIDVALIDITY 3857529045] UIDs valid\r\n\
               * OK [UIDNEXT 4392] Predicted next UID\r\n\
               A2 OK [READ-WRITE] SELECT completed\r\n",
            ),
        ));
        steps.push((
            "A3 SELECT \"Archive \\\"old\\\"\"",
            r("A3 NO [NONEXISTENT] no such mailbox\r\n"),
        ));
        // UIDVALIDITY in the tagged OK is read too; UIDNEXT is optional.
        steps.push((
            "A4 SELECT \"Other\"",
            r("* 3 EXISTS\r\nA4 OK [UIDVALIDITY 9] done\r\n"),
        ));
        steps.push(("A5 SELECT \"Empty\"", r("* 0 EXISTS\r\nA5 OK done\r\n")));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        assert_eq!(
            session.select("INBOX").await.unwrap(),
            Mailbox {
                uid_validity: 3_857_529_045,
                exists: 172,
                uid_next: Some(4392),
            }
        );
        let err = session.select("Archive \"old\"").await.unwrap_err();
        assert!(
            matches!(&err, Error::No(t) if t.contains("no such mailbox")),
            "{err:?}"
        );
        assert_eq!(
            session.select("Other").await.unwrap(),
            Mailbox {
                uid_validity: 9,
                exists: 3,
                uid_next: None,
            }
        );
        let err = session.select("Empty").await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn search_sorts_and_drops_the_star_quirk() {
        let mut steps = greeting_and_login();
        // "10:*" with 7 the highest UID: the server answers 7.
        steps.push((
            "A2 UID SEARCH UNSEEN UID 10:*",
            r("* SEARCH 7\r\nA2 OK\r\n"),
        ));
        steps.push((
            "A3 UID SEARCH ALL UID 10:*",
            r("* SEARCH 12 10 9\r\n* SEARCH 11 12\r\nA3 OK SEARCH completed\r\n"),
        ));
        steps.push(("A4 UID SEARCH FLAGGED UID 1:*", r("* SEARCH\r\nA4 OK\r\n")));
        steps.push(("A5 UID SEARCH BOGUS UID 1:*", r("A5 BAD unknown key\r\n")));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        assert!(session.search_uids("UNSEEN", 10).await.unwrap().is_empty());
        assert_eq!(
            session.search_uids("ALL", 10).await.unwrap(),
            vec![10, 11, 12]
        );
        // UID 0 does not exist: from 0 is from 1.
        assert!(session.search_uids("FLAGGED", 0).await.unwrap().is_empty());
        assert!(matches!(
            session.search_uids("BOGUS", 1).await,
            Err(Error::No(t)) if t == "unknown key"
        ));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn search_keeps_the_lowest_uids() {
        let mut steps = greeting_and_login();
        let mut reply = String::new();
        // 25 000 UIDs, highest first, over several lines.
        let uids: Vec<u32> = (1..=25_000).rev().collect();
        for chunk in uids.chunks(5_000) {
            reply.push_str("* SEARCH");
            for uid in chunk {
                reply.push_str(&format!(" {uid}"));
            }
            reply.push_str("\r\n");
        }
        reply.push_str("A2 OK\r\n");
        steps.push(("A2 UID SEARCH RECENT UID 1:*", reply.into_bytes()));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let found = session.search_uids("RECENT", 1).await.unwrap();
        assert_eq!(found.len(), MAX_UIDS);
        assert_eq!(found[0], 1);
        assert_eq!(found[MAX_UIDS - 1], MAX_UIDS as u32);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn fetch_reads_the_literal() {
        let message = "From: a@example.com\r\nSubject: hi {3}\r\n\r\nbody )\r\n";
        let mut steps = greeting_and_login();
        steps.push((
            "A2 UID FETCH 5 (BODY.PEEK[])",
            format!(
                "* 2 FETCH (FLAGS (\\Seen))\r\n\
                 * 3 FETCH (UID 5 FLAGS () BODY[] {{{}}}\r\n{message})\r\n\
                 A2 OK FETCH completed\r\n",
                message.len()
            )
            .into_bytes(),
        ));
        // An expunged message: OK and nothing.
        steps.push(("A3 UID FETCH 6 (BODY.PEEK[])", r("A3 OK\r\n")));
        // A quoted body, and the UID after it.
        steps.push((
            "A4 UID FETCH 8 (BODY.PEEK[])",
            r("* 4 FETCH (BODY[] \"Subject: \\\"q\\\"\" UID 8)\r\nA4 OK\r\n"),
        ));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let fetched = session.fetch(5, 1024).await.unwrap();
        assert_eq!(fetched.uid, 5);
        assert_eq!(fetched.raw, message.as_bytes());
        assert!(matches!(session.fetch(6, 1024).await, Err(Error::No(_))));
        assert_eq!(session.fetch(8, 1024).await.unwrap().raw, b"Subject: \"q\"");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn fetch_refuses_a_large_message_and_goes_on() {
        let big = "x".repeat(200_000);
        let mut steps = greeting_and_login();
        steps.push((
            "A2 UID FETCH 9 (BODY.PEEK[])",
            format!(
                "* 1 FETCH (UID 9 BODY[] {{{}}}\r\n{big})\r\nA2 OK\r\n",
                big.len()
            )
            .into_bytes(),
        ));
        steps.push(("A3 UID STORE 9 +FLAGS.SILENT (\\Seen)", r("A3 OK\r\n")));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let err = session.fetch(9, 1000).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge(200_000, 1000)), "{err:?}");
        session.mark_seen(9).await.unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn long_lines_and_eof_break_the_session() {
        let mut steps = greeting_and_login();
        let mut long = b"* OK ".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        long.extend_from_slice(b"\r\nA2 OK\r\n");
        steps.push(("A2 SELECT \"INBOX\"", long));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let err = session.select("INBOX").await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(t) if t.contains("longer")),
            "{err:?}"
        );
        let err = session.mark_seen(1).await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(t) if t.contains("unusable")),
            "{err:?}"
        );
        // The server is still writing the long line: let it fail.
        drop(session);
        task.await.unwrap();

        let mut steps = greeting_and_login();
        steps.push((
            "A2 UID FETCH 1 (BODY.PEEK[])",
            r("* 1 FETCH (UID 1 BODY[] {100}\r\nshort"),
        ));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        // The server's end goes after the partial literal: EOF.
        let err = session.fetch(1, 1000).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_call_breaks_the_session() {
        let mut steps = greeting_and_login();
        steps.push((
            "A2 UID FETCH 1 (BODY.PEEK[])",
            r("* 1 FETCH (UID 1 BODY[] {10}\r\nabc"),
        ));
        // Then the server waits (for a line that never comes), the connection open.
        steps.push(("never", Vec::new()));
        let (io, _task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), session.fetch(1, 100)).await;
        assert!(waited.is_err());
        assert!(matches!(
            session.mark_seen(1).await,
            Err(Error::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn bye_in_the_middle_is_an_error() {
        let mut steps = greeting_and_login();
        steps.push(("A2 UID SEARCH ALL UID 1:*", r("* BYE shutting down\r\n")));
        let (io, task) = server(steps);
        let mut session = Session::login(io, "u", "p").await.unwrap();
        let err = session.search_uids("ALL", 1).await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(t) if t.contains("shutting down")),
            "{err:?}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn logout_accepts_a_close_after_bye() {
        let mut steps = greeting_and_login();
        steps.push(("A2 LOGOUT", r("* BYE bye\r\n")));
        let (io, task) = server(steps);
        let session = Session::login(io, "u", "p").await.unwrap();
        // The server's end goes after BYE.
        let (logout, task) = tokio::join!(session.logout(), task);
        logout.unwrap();
        task.unwrap();
    }

    // --- parse ---

    #[test]
    fn parses_a_plain_message() {
        let raw = b"From: Alice <alice@example.com>\r\n\
            To: bob@example.com\r\n\
            Subject: Hello\r\n\
            Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n\
            Message-ID: <1@example.com>\r\n\
            \r\n\
            Line one\r\nLine two\r\n";
        let parsed = parse(raw, 1000);
        assert_eq!(
            parsed,
            Parsed {
                from: "Alice <alice@example.com>".into(),
                to: "bob@example.com".into(),
                subject: "Hello".into(),
                date: "Mon, 2 Jun 2025 10:00:00 +0000".into(),
                message_id: "<1@example.com>".into(),
                body: "Line one\nLine two\n".into(),
            }
        );
    }

    #[test]
    fn unfolds_headers_and_reads_bare_line_feeds() {
        let raw = b"subject: a long\n subject\n\tline\nTO: x@example.com,\n  y@example.com\nX-Other: 1\n\nbody";
        let parsed = parse(raw, 1000);
        assert_eq!(parsed.subject, "a long subject\tline");
        assert_eq!(parsed.to, "x@example.com,  y@example.com");
        assert_eq!(parsed.body, "body");
        assert_eq!(parsed.from, "");
        // No blank line: headers only.
        assert_eq!(parse(b"Subject: x\r\n", 10).subject, "x");
        assert_eq!(parse(b"Subject: x\r\n", 10).body, "");
        assert_eq!(parse(b"", 10), Parsed::default());
    }

    #[test]
    fn decodes_encoded_words() {
        let raw = "From: =?utf-8?Q?Andr=C3=A9?= <andre@example.com>\r\n\
            To: =?ISO-8859-1?q?J=F6rg_M=FCller?= <j@example.com>, plain <p@example.com>\r\n\
            Subject: =?UTF-8?B?SGVsbG8g?=\r\n =?UTF-8?B?d29ybGQg4pyT?= and =?bogus \r\n\
            \r\n";
        let parsed = parse(raw.as_bytes(), 100);
        assert_eq!(parsed.from, "André <andre@example.com>");
        assert_eq!(
            parsed.to,
            "Jörg Müller <j@example.com>, plain <p@example.com>"
        );
        assert_eq!(parsed.subject, "Hello world ✓ and =?bogus");
        assert_eq!(decode_words("=?windows-1252?Q?it=92s?="), "it’s");
        assert_eq!(decode_words("=?utf-8*en?B?w6k=?= x"), "é x");
        assert_eq!(decode_words("a =?x?Z?y?= b"), "a =?x?Z?y?= b");
    }

    #[test]
    fn decodes_base64_and_quoted_printable_bodies() {
        let raw = "Subject: b\r\n\
            Content-Type: text/plain; charset=\"utf-8\"\r\n\
            Content-Transfer-Encoding: base64\r\n\
            \r\n\
            SGVsbG8s\r\nIHfDtnJsZCEK\r\n";
        assert_eq!(parse(raw.as_bytes(), 100).body, "Hello, wörld!\n");

        let raw = "Content-Type: text/plain; charset=iso-8859-1\r\n\
            Content-Transfer-Encoding: Quoted-Printable\r\n\
            \r\n\
            Gr=FC=DFe, a long line that goes=\r\n on; 1+1=3D2 =\r\nend\r\n";
        assert_eq!(
            parse(raw.as_bytes(), 100).body,
            "Grüße, a long line that goes on; 1+1=2 end\n"
        );
        assert_eq!(quoted_printable(b"a=zz=\nb= \r\nc="), b"a=zzbc");
    }

    #[test]
    fn takes_the_first_plain_part_of_a_multipart() {
        let raw = "From: a@example.com\r\n\
            Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
            \r\n\
            preamble\r\n\
            --b1\r\n\
            Content-Type: text/html; charset=utf-8\r\n\
            \r\n\
            <p>Hi</p>\r\n\
            --b1\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\
            \r\n\
            Hi =E2=9C=93\r\n\
            --b1--\r\n\
            epilogue\r\n";
        assert_eq!(parse(raw.as_bytes(), 100).body, "Hi ✓");

        // Nested in multipart/mixed, after an attachment.
        let raw = "Content-Type: multipart/mixed; boundary=outer\r\n\
            \r\n\
            --outer\r\n\
            Content-Type: text/plain\r\n\
            Content-Disposition: attachment; filename=a.txt\r\n\
            \r\n\
            attached\r\n\
            --outer\r\n\
            Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
            \r\n\
            --inner\r\n\
            Content-Type: text/plain\r\n\
            Content-Transfer-Encoding: base64\r\n\
            \r\n\
            aW5uZXIgdGV4dA==\r\n\
            --inner\r\n\
            Content-Type: text/html\r\n\
            \r\n\
            <b>inner</b>\r\n\
            --inner--\r\n\
            --outer--\r\n";
        assert_eq!(parse(raw.as_bytes(), 100).body, "inner text");

        // No text/plain part: the first part.
        let raw = "Content-Type: multipart/related; boundary=z\r\n\r\n\
            --z\r\nContent-Type: text/html\r\n\r\n<i>x</i>\r\n--z\r\n\
            Content-Type: image/png\r\n\r\nPNG\r\n--z--\r\n";
        assert_eq!(parse(raw.as_bytes(), 100).body, "<i>x</i>");
    }

    #[test]
    fn cuts_the_body_on_a_character_boundary() {
        let raw = "Subject: x\r\n\r\nééé";
        assert_eq!(parse(raw.as_bytes(), 3).body, "é");
        assert_eq!(parse(raw.as_bytes(), 4).body, "éé");
        assert_eq!(parse(raw.as_bytes(), 0).body, "");
    }

    #[test]
    fn reads_parameters() {
        assert_eq!(
            param(
                "multipart/mixed; charset=x; boundary=\"a;b \\\"c\\\"\"",
                "BOUNDARY"
            ),
            Some("a;b \"c\"".into())
        );
        assert_eq!(
            param("text/plain;charset=UTF-8", "charset"),
            Some("UTF-8".into())
        );
        assert_eq!(param("text/plain", "charset"), None);
    }
}
