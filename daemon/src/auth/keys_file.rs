//! Keys file mode: `MANTLE_TENANT_KEYS_PATH` names a JSON file mapping tokens to tenants.
//!
//! ```json
//! {"keys": [
//!   {"token": "…", "tenant": "acme", "scopes": ["*"], "name": "acme-ci"},
//!   {"token": "…", "tenant": "globex", "scopes": ["executions:read"]}
//! ]}
//! ```
//!
//! The whole file is validated before it replaces the keys in use: a file that does not
//! parse, or has one bad entry, keeps the last good set. Only SHA-256 digests of the tokens
//! are kept, and a presented token is compared against every digest in constant time.
//! The file is looked at every [`RELOAD_INTERVAL`]; a change to its contents takes effect
//! then, without a restart. Tokens never appear in logs or error messages.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_util::sync::CancellationToken;

use super::{MIN_STATIC_TOKEN_LEN, Scope, ScopeSet, TokenError, UnknownScope};

/// How often the file is looked at for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The environment variable naming the file.
pub const ENV_VAR: &str = "MANTLE_TENANT_KEYS_PATH";

/// Counter: reloads that failed (unreadable file, bad JSON, invalid entry), once per change.
pub const RELOAD_ERRORS_METRIC: &str = "mantle_tenant_keys_reload_errors_total";
/// Counter: successful loads of the file, the one at startup included.
pub const RELOADS_METRIC: &str = "mantle_tenant_keys_reloads_total";
/// Gauge: keys in the set in use.
pub const KEYS_METRIC: &str = "mantle_tenant_keys";

/// The longest key name.
const MAX_NAME_LEN: usize = 64;

/// The file form. Unknown fields are errors, so a misspelt `scope` or a file in another
/// format is refused rather than half-read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    keys: Vec<EntryForm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryForm {
    token: String,
    tenant: String,
    scopes: Vec<String>,
    #[serde(default)]
    name: Option<String>,
}

/// One key of the file, as kept in memory.
#[derive(Debug, Clone)]
pub struct FileKey {
    /// `file:<name>`, or `file:<index>` for a key without a name.
    pub key_id: String,
    /// The tenant's name; it must exist in the database for the key to authenticate.
    pub tenant: String,
    pub scopes: ScopeSet,
    hash: [u8; 32],
}

/// A validated set of keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<FileKey>,
}

impl KeySet {
    /// Parses and validates the file's text. The error is one line, with `line:column`
    /// for JSON errors and `keys[i]` for invalid entries; it never shows a token.
    pub fn parse(text: &str) -> Result<KeySet, ParseError> {
        let form: FileForm = serde_json::from_str(text).map_err(json_error)?;
        Ok(Self::validate(form)?)
    }

    fn validate(form: FileForm) -> Result<KeySet, InvalidKey> {
        let mut keys = Vec::with_capacity(form.keys.len());
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(form.keys.len());
        let mut names = HashSet::new();
        for (index, entry) in form.keys.into_iter().enumerate() {
            let at = match &entry.name {
                Some(name) => format!("keys[{index}] (name {name:?})"),
                None => format!("keys[{index}]"),
            };
            let key = match validate_entry(index, entry) {
                Ok(key) => key,
                Err(problem) => return Err(InvalidKey::Entry { at, problem }),
            };
            if let Some(first) = hashes.iter().position(|h| *h == key.hash) {
                return Err(InvalidKey::SameToken { at, first });
            }
            if !names.insert(key.key_id.clone()) {
                return Err(InvalidKey::SameName { at });
            }
            hashes.push(key.hash);
            keys.push(key);
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key whose token is `presented`. Every digest is compared, in constant time, and
    /// the scan does not stop at a match.
    pub fn lookup(&self, presented: &str) -> Option<&FileKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = digest.ct_eq(&key.hash);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.keys.get(index as usize)
        } else {
            None
        }
    }
}

/// What is wrong with one entry of the file, field first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("token: {0}")]
    Token(#[source] TokenError),
    #[error(
        "tenant: {0:?} is not a valid tenant name: use 1 to 63 lowercase letters, digits and \
         '-', starting with a letter and not ending with '-'"
    )]
    Tenant(String),
    #[error("scopes: must name at least one scope; use [\"*\"] for every tenant scope")]
    NoScopes,
    #[error("scopes: {0}")]
    UnknownScope(#[source] UnknownScope),
    #[error("scopes: {:?} is for operator keys only; a keys file key acts only on its tenant", .0.as_str())]
    OperatorScope(Scope),
    #[error(
        "name: {0:?} is not a valid key name: use 1 to {MAX_NAME_LEN} letters, digits, '-', \
         '_' and '.', starting with a letter"
    )]
    Name(String),
}

/// A key of the file that cannot be used; `at` names it (`keys[i]`, and its name if any).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("{at}: {problem}")]
    Entry {
        at: String,
        #[source]
        problem: EntryError,
    },
    #[error("{at}: token: the same token as keys[{first}]; every key needs its own token")]
    SameToken { at: String, first: usize },
    #[error("{at}: name: another key has the same name; names must be unique")]
    SameName { at: String },
}

fn validate_entry(index: usize, entry: EntryForm) -> Result<FileKey, EntryError> {
    let EntryForm {
        token,
        tenant,
        scopes,
        name,
    } = entry;
    TokenError::check(&token).map_err(EntryError::Token)?;
    if !crate::model::tenant::is_valid_name(&tenant) {
        return Err(EntryError::Tenant(tenant));
    }
    if scopes.is_empty() {
        return Err(EntryError::NoScopes);
    }
    let mut parsed = Vec::with_capacity(scopes.len());
    for s in &scopes {
        let scope: Scope = s.parse().map_err(EntryError::UnknownScope)?;
        if !scope.is_tenant_scope() {
            return Err(EntryError::OperatorScope(scope));
        }
        parsed.push(scope);
    }
    let key_id = match name {
        None => format!("file:{index}"),
        Some(name) => {
            let ok = (1..=MAX_NAME_LEN).contains(&name.len())
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(EntryError::Name(name));
            }
            format!("file:{name}")
        }
    };
    Ok(FileKey {
        key_id,
        tenant,
        scopes: ScopeSet::new(parsed),
        hash: Sha256::digest(token.as_bytes()).into(),
    })
}

/// Why a keys file's contents cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON of the file's form. Only serde's message is kept, with long literals
    /// redacted: its error's text could show a token.
    #[error("{}{message}", Position(.position))]
    Json {
        /// `(line, column)`, when known.
        position: Option<(usize, usize)>,
        message: String,
    },
    #[error("not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("{0}")]
    Invalid(#[from] InvalidKey),
}

/// `LINE:COLUMN: `, or nothing.
struct Position<'a>(&'a Option<(usize, usize)>);

impl std::fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self.0 {
            Some((line, column)) => write!(f, "{line}:{column}: "),
            None => Ok(()),
        }
    }
}

impl ParseError {
    /// Whether the message starts with `LINE:COLUMN`.
    fn has_position(&self) -> bool {
        matches!(
            self,
            ParseError::Json {
                position: Some(_),
                ..
            }
        )
    }
}

/// Why the keys file cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is readable by other users (mode {mode:04o}): it holds every tenant's tokens; make \
         it private, e.g. chmod 600 (or 440 with a group), or defaultMode 0440 for a \
         Kubernetes secret",
        .path.display()
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    /// `PATH:LINE:COLUMN: message`, or `PATH: message`.
    #[error("{}{}{source}", .path.display(), if .source.has_position() { ":" } else { ": " })]
    Invalid { path: PathBuf, source: ParseError },
}

/// The keys file cannot be used at startup: a configuration error, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{ENV_VAR}: {0}")]
pub struct LoadError(#[from] pub FileError);

/// A JSON error with its position, long quoted literals (which could be a token written
/// in the wrong place) replaced by their length.
fn json_error(err: serde_json::Error) -> ParseError {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    ParseError::Json {
        position: (err.line() > 0).then_some((err.line(), err.column())),
        message: redact_long_literals(message),
    }
}

/// Replaces every `"…"` or `` `…` `` literal of at least [`MIN_STATIC_TOKEN_LEN`]
/// characters with `<N characters>`.
fn redact_long_literals(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let literal = &after[..end];
                if literal.chars().count() >= MIN_STATIC_TOKEN_LEN {
                    out.push_str(&format!("<{} characters>", literal.chars().count()));
                } else {
                    out.push_str(literal);
                }
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// What was seen of the file at the last look, so each change is handled once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Contents([u8; 32]),
    Unreadable(String),
}

/// What a look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was.
    Unchanged,
    /// The file changed and its keys are in use now.
    Loaded { keys: usize },
    /// The file changed but cannot be used; the last good set stays.
    Failed { error: String },
}

/// The keys file: the set in use, and what was last seen of the file.
pub struct KeysFile {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    seen: Mutex<Option<Seen>>,
}

impl std::fmt::Debug for KeysFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysFile")
            .field("path", &self.path)
            .field("keys", &self.keys().len())
            .finish()
    }
}

impl KeysFile {
    /// Loads the file at startup. Any problem is a configuration error, naming the
    /// variable and the file.
    pub fn load(path: &Path) -> Result<KeysFile, LoadError> {
        check_private(path)?;
        let bytes = std::fs::read(path).map_err(|source| FileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let set = parse_bytes(&bytes).map_err(|source| FileError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        tracing::info!(path = %path.display(), keys = set.len(), "loaded the tenant keys file");
        Ok(KeysFile {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(set)),
            seen: Mutex::new(Some(Seen::Contents(Sha256::digest(&bytes).into()))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set in use.
    pub fn keys(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Looks at the file once: when its contents changed since the last look, validates
    /// them and swaps them in, or keeps the last good set and reports the error (logged and
    /// counted once per change).
    pub fn check(&self) -> Reload {
        let read = check_private(&self.path)
            .map_err(std::io::Error::other)
            .and_then(|()| std::fs::read(&self.path));
        let seen = match &read {
            Ok(bytes) => Seen::Contents(Sha256::digest(bytes).into()),
            Err(e) => Seen::Unreadable(e.to_string()),
        };
        {
            let mut last = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() == Some(&seen) {
                return Reload::Unchanged;
            }
            *last = Some(seen);
        }
        let path = self.path.clone();
        let parsed = match read {
            Ok(bytes) => parse_bytes(&bytes).map_err(|source| FileError::Invalid { path, source }),
            Err(source) => Err(FileError::Unreadable { path, source }),
        };
        match parsed {
            Ok(set) => {
                let keys = set.len();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                metrics::counter!(RELOADS_METRIC).increment(1);
                metrics::gauge!(KEYS_METRIC).set(keys as f64);
                tracing::info!(path = %self.path.display(), keys, "reloaded the tenant keys file");
                Reload::Loaded { keys }
            }
            Err(error) => {
                metrics::counter!(RELOAD_ERRORS_METRIC).increment(1);
                tracing::error!(
                    path = %self.path.display(),
                    error = %error,
                    keys_in_use = self.keys().len(),
                    "tenant keys file not reloaded; keeping the last good set of keys"
                );
                Reload::Failed {
                    error: error.to_string(),
                }
            }
        }
    }

    /// Looks at the file every [`RELOAD_INTERVAL`] until `cancel`. Registers the metrics
    /// first, so they show (at 0) before anything goes wrong.
    pub fn spawn_watcher(self: &Arc<Self>, cancel: CancellationToken) {
        metrics::counter!(RELOAD_ERRORS_METRIC).increment(0);
        metrics::counter!(RELOADS_METRIC).increment(1);
        metrics::gauge!(KEYS_METRIC).set(self.keys().len() as f64);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RELOAD_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = interval.tick() => {
                        let this = Arc::clone(&this);
                        let _ = tokio::task::spawn_blocking(move || this.check()).await;
                    }
                }
            }
        });
    }
}

/// Refuses a keys file that other users may read (or write): it holds every tenant's
/// tokens. Its owner and group may (a Kubernetes secret mounted with `defaultMode: 0440`).
fn check_private(path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| FileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(FileError::NotPrivate {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn parse_bytes(bytes: &[u8]) -> Result<KeySet, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(ParseError::NotUtf8)?;
    KeySet::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a keys file private to its owner, as the daemon requires.
    fn write(path: &Path, text: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    const A: &str = "aaaaaaaaaaaaaaaa-token-a";
    const B: &str = "bbbbbbbbbbbbbbbb-token-b";

    fn file(entries: &[(&str, &str, &[&str], Option<&str>)]) -> String {
        let keys: Vec<serde_json::Value> = entries
            .iter()
            .map(|(token, tenant, scopes, name)| {
                let mut v = serde_json::json!({"token": token, "tenant": tenant, "scopes": scopes});
                if let Some(name) = name {
                    v["name"] = (*name).into();
                }
                v
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    #[test]
    fn keys_file_parses_the_documented_example() {
        let text = r#"{"keys": [
  {"token": "aaaaaaaaaaaaaaaa-token-a", "tenant": "acme", "scopes": ["*"], "name": "acme-ci"},
  {"token": "bbbbbbbbbbbbbbbb-token-b", "tenant": "globex", "scopes": ["executions:read"]}
]}"#;
        let set = KeySet::parse(text).unwrap();
        assert_eq!(set.len(), 2);
        let a = set.lookup(A).unwrap();
        assert_eq!(a.key_id, "file:acme-ci");
        assert_eq!(a.tenant, "acme");
        assert!(a.scopes.grants(Scope::SecretsWrite));
        assert!(!a.scopes.grants(Scope::TenantsAdmin));
        let b = set.lookup(B).unwrap();
        assert_eq!(b.key_id, "file:1");
        assert_eq!(b.tenant, "globex");
        assert!(b.scopes.grants(Scope::ExecutionsRead));
        assert!(!b.scopes.grants(Scope::ExecutionsWrite));
    }

    #[test]
    fn keys_file_lookup_needs_the_exact_token() {
        let set = KeySet::parse(&file(&[
            (A, "acme", &["*"], None),
            (B, "globex", &["*"], None),
        ]))
        .unwrap();
        assert_eq!(set.lookup(A).unwrap().tenant, "acme");
        assert_eq!(set.lookup(B).unwrap().tenant, "globex");
        for wrong in [
            "",
            "aaaaaaaaaaaaaaaa-token-",
            "aaaaaaaaaaaaaaaa-token-a ",
            "AAAAAAAAAAAAAAAA-token-a",
        ] {
            assert!(set.lookup(wrong).is_none(), "{wrong:?}");
        }
        assert!(KeySet::default().lookup(A).is_none());
    }

    #[test]
    fn keys_file_json_errors_have_line_and_column() {
        let err = KeySet::parse("{\"keys\": [\n  {\"token\": \"x\",\n  }\n]}")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("3:3: "), "{err}");
        let err = KeySet::parse("{\"keys\": [], \"tenant_keys\": {}}")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("1:"), "{err}");
        assert!(err.contains("unknown field `tenant_keys`"), "{err}");
        let err = KeySet::parse(&format!(
            "{{\"keys\": [{{\"token\": \"{A}\", \"tenant\": \"acme\", \"scope\": [\"*\"]}}]}}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `scope`"), "{err}");
        let err = KeySet::parse("").unwrap_err().to_string();
        assert!(err.contains("EOF"), "{err}");
        let err = KeySet::parse("{}").unwrap_err().to_string();
        assert!(err.contains("missing field `keys`"), "{err}");
        assert_eq!(err, err.to_lowercase().replace("eof", "EOF"));
    }

    #[test]
    fn keys_file_errors_never_show_a_token() {
        // A token put where a key name or a list belongs.
        for text in [
            format!("{{\"keys\": [{{\"{A}\": \"acme\"}}]}}"),
            format!("{{\"keys\": \"{A}\"}}"),
            format!(
                "{{\"keys\": [{{\"token\": \"{A}\", \"tenant\": \"acme\", \"scopes\": \"{B}\"}}]}}"
            ),
        ] {
            let err = KeySet::parse(&text).unwrap_err().to_string();
            assert!(!err.contains(A) && !err.contains(B), "{err}");
            assert!(err.contains("characters>"), "{err}");
        }
        let err = KeySet::parse(&file(&[
            (A, "acme", &["*"], None),
            (A, "globex", &["*"], None),
        ]))
        .unwrap_err()
        .to_string();
        assert!(!err.contains(A), "{err}");
    }

    #[test]
    fn keys_file_validation() {
        let cases: &[(String, &str)] = &[
            (
                file(&[("short", "acme", &["*"], None)]),
                "keys[0]: token: must be at least 16",
            ),
            (
                file(&[("has a space in it!!", "acme", &["*"], None)]),
                "keys[0]: token: must be printable",
            ),
            (
                file(&[(A, "Acme", &["*"], None)]),
                "keys[0]: tenant: \"Acme\" is not a valid tenant name",
            ),
            (
                file(&[(A, "", &["*"], None)]),
                "keys[0]: tenant: \"\" is not a valid",
            ),
            (
                file(&[(A, "acme", &[], None)]),
                "keys[0]: scopes: must name at least one scope",
            ),
            (
                file(&[(A, "acme", &["executions:delete"], None)]),
                "keys[0]: scopes: unknown scope \"executions:delete\"",
            ),
            (
                file(&[(A, "acme", &["tenants:admin"], None)]),
                "keys[0]: scopes: \"tenants:admin\" is for operator keys only",
            ),
            (
                file(&[(A, "acme", &["*"], Some("ci"))]).replace("\"ci\"", "\"has space\""),
                "keys[0] (name \"has space\"): name:",
            ),
            (
                file(&[(A, "acme", &["*"], Some("1st"))]),
                "keys[0] (name \"1st\"): name: \"1st\" is not a valid key name",
            ),
            (
                file(&[
                    (A, "acme", &["*"], Some("ci")),
                    (B, "globex", &["*"], Some("ci")),
                ]),
                "keys[1] (name \"ci\"): name: another key has the same name",
            ),
            (
                file(&[
                    (A, "acme", &["*"], None),
                    (B, "acme", &["*"], None),
                    (A, "globex", &["*"], None),
                ]),
                "keys[2]: token: the same token as keys[0]",
            ),
        ];
        for (text, want) in cases {
            let err = KeySet::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "{text}\n  got: {err}\n  want: {want}"
            );
        }
        // An empty set is valid: it refuses every token.
        assert!(KeySet::parse("{\"keys\": []}").unwrap().is_empty());
    }

    /// An invalid entry is an error a caller can match on, whose causes go down to the
    /// token or scope problem.
    #[test]
    fn keys_file_entry_errors_keep_their_cause() {
        let err = KeySet::parse(&file(&[
            (A, "acme", &["*"], None),
            ("short", "acme", &["*"], None),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            ParseError::Invalid(InvalidKey::Entry {
                at: "keys[1]".to_owned(),
                problem: EntryError::Token(TokenError::TooShort),
            })
        );
        let mut causes = Vec::new();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            causes.push(c.to_string());
            cause = c.source();
        }
        assert_eq!(
            causes,
            [
                "keys[1]: token: must be at least 16 characters long",
                "token: must be at least 16 characters long",
                "must be at least 16 characters long",
            ]
        );
        let err = KeySet::parse(&file(&[(A, "acme", &["executions:delete"], None)])).unwrap_err();
        let ParseError::Invalid(InvalidKey::Entry {
            problem: EntryError::UnknownScope(unknown),
            ..
        }) = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(unknown, UnknownScope("executions:delete".to_owned()));
        let err = KeySet::parse(&file(&[(A, "Acme", &["*"], None)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys[0]: tenant: \"Acme\" is not a valid tenant name: use 1 to 63 lowercase \
             letters, digits and '-', starting with a letter and not ending with '-'"
        );
        let err = parse_bytes(b"\xff").unwrap_err();
        assert!(matches!(err, ParseError::NotUtf8(_)), "{err:?}");
        assert!(err.to_string().starts_with("not UTF-8: "), "{err}");
    }

    #[test]
    fn keys_file_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, file(&[(A, "acme", &["*"], Some("a"))]));
        let keys = KeysFile::load(&path).unwrap();
        assert_eq!(keys.check(), Reload::Unchanged);
        assert_eq!(keys.keys().lookup(A).unwrap().key_id, "file:a");

        // A new key is picked up; a removed one goes.
        write(&path, file(&[(B, "globex", &["*"], None)]));
        assert_eq!(keys.check(), Reload::Loaded { keys: 1 });
        assert!(keys.keys().lookup(A).is_none());
        assert_eq!(keys.keys().lookup(B).unwrap().tenant, "globex");

        // Broken JSON: the last good set stays, and the error is reported once.
        write(&path, "{\"keys\": [");
        match keys.check() {
            Reload::Failed { error } => {
                assert!(
                    error.starts_with(&format!("{}:1:", path.display())),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(keys.check(), Reload::Unchanged);
        assert!(keys.keys().lookup(B).is_some());

        // An invalid entry: the same.
        write(&path, file(&[(A, "acme", &["nope"], None)]));
        assert!(matches!(keys.check(), Reload::Failed { .. }));
        assert!(keys.keys().lookup(A).is_none());
        assert!(keys.keys().lookup(B).is_some());

        // A deleted file: the same.
        std::fs::remove_file(&path).unwrap();
        match keys.check() {
            Reload::Failed { error } => assert!(error.starts_with("cannot read "), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(keys.check(), Reload::Unchanged);
        assert!(keys.keys().lookup(B).is_some());

        // Fixed again.
        write(
            &path,
            file(&[(A, "acme", &["*"], None), (B, "globex", &["*"], None)]),
        );
        assert_eq!(keys.check(), Reload::Loaded { keys: 2 });
        assert!(keys.keys().lookup(A).is_some());
    }

    #[test]
    fn keys_file_missing_or_bad_at_startup_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let err = KeysFile::load(&path).unwrap_err();
        let LoadError(FileError::Unreadable { source, .. }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        let err = err.to_string();
        assert!(
            err.starts_with("MANTLE_TENANT_KEYS_PATH: cannot read "),
            "{err}"
        );
        write(&path, "{\"keys\": 1}");
        let err = KeysFile::load(&path).unwrap_err();
        assert!(
            matches!(
                &err.0,
                FileError::Invalid {
                    source: ParseError::Json {
                        position: Some((1, _)),
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("MANTLE_TENANT_KEYS_PATH: {}:1:", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_keys_file_other_users_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, file(&[(A, "acme", &["*"], None)]));
        let keys = KeysFile::load(&path).unwrap();
        // Group-readable is allowed (a secret mounted with a group).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(keys.check(), Reload::Unchanged);
        // Readable by everyone: not reloaded, and refused at start.
        write(&path, file(&[(B, "globex", &["*"], None)]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        match keys.check() {
            Reload::Failed { error } => {
                assert!(
                    error.contains("readable by other users (mode 0644)"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(keys.keys().lookup(A).is_some());
        let err = KeysFile::load(&path).unwrap_err();
        assert!(
            matches!(err.0, FileError::NotPrivate { mode: 0o644, .. }),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(
            err.starts_with("MANTLE_TENANT_KEYS_PATH: ") && err.contains("chmod 600"),
            "{err}"
        );
    }
}
