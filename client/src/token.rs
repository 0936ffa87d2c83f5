//! Which bearer token to send.
//!
//! An explicit token wins. Otherwise the client reads the operator token the daemon keeps in
//! `<data dir>/operator-token`, and sends it only to the address that file names.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::{Address, Error};

/// Environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "MANTLE_TOKEN";
/// Environment variable naming the daemon's data directory.
pub const DATA_DIR_ENV: &str = "MANTLE_DATA_DIR";
/// Name of the operator token file inside the data directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";

/// The environment values token resolution depends on. Empty values count as unset.
///
/// Taking them as data (rather than reading the process environment inside the
/// resolver) keeps resolution testable and lets callers override any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenEnv {
    /// `MANTLE_TOKEN`.
    pub token: Option<String>,
    /// `MANTLE_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

impl TokenEnv {
    /// Reads `MANTLE_TOKEN`, `MANTLE_DATA_DIR`, `XDG_DATA_HOME` and `HOME` from the process.
    pub fn from_process() -> TokenEnv {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        TokenEnv {
            token: var(TOKEN_ENV).and_then(|v| v.into_string().ok()),
            data_dir: var(DATA_DIR_ENV).map(PathBuf::from),
            xdg_data_home: var("XDG_DATA_HOME").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
        }
    }
}

/// The daemon's data directory as clients see it: `MANTLE_DATA_DIR`, else
/// `$XDG_DATA_HOME/mantle`, else `$HOME/.local/share/mantle`. A leading `~/` in
/// `MANTLE_DATA_DIR` or `XDG_DATA_HOME` is expanded with `HOME`. `None` when none of
/// them is set.
pub fn data_dir(env: &TokenEnv) -> Option<PathBuf> {
    let non_empty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let home = non_empty(&env.home);
    if let Some(dir) = non_empty(&env.data_dir) {
        return Some(expand_home(dir, home.as_deref()));
    }
    if let Some(xdg) = non_empty(&env.xdg_data_home) {
        return Some(expand_home(xdg, home.as_deref()).join("mantle"));
    }
    home.map(|h| h.join(".local").join("share").join("mantle"))
}

fn expand_home(path: PathBuf, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path,
    }
}

/// The operator token file: the token, and the address of the daemon that wrote it.
///
/// The daemon writes `<data dir>/operator-token` (mode 0600) at every start of the
/// embedded store: the token on the first line, then `address=<ip>:<port>`, where it
/// listens. The token is sent only to that daemon.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    /// Where the file is.
    pub path: PathBuf,
    /// The token.
    pub token: String,
    /// Where the daemon that wrote it listens; `None` in a file written by a daemon older
    /// than this rule (it is rewritten at the daemon's next start).
    pub address: Option<SocketAddr>,
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorToken")
            .field("path", &self.path)
            .field("token", &"<redacted>")
            .field("address", &self.address)
            .finish()
    }
}

impl OperatorToken {
    /// Whether `target` reaches the daemon that wrote the file: the same port, and the
    /// same IP address, or a loopback host (`localhost`, 127.0.0.0/8, `::1`) when the
    /// daemon listens on loopback or on every interface.
    pub fn belongs_to(&self, target: &Address) -> bool {
        let Some(recorded) = self.address else {
            return false;
        };
        if target.port != recorded.port() {
            return false;
        }
        let ip = recorded.ip();
        if let Ok(target_ip) = target.host.parse::<IpAddr>()
            && target_ip == ip
        {
            return true;
        }
        target.is_local() && (ip.is_loopback() || ip.is_unspecified())
    }
}

/// Reads `<data_dir>/operator-token`.
///
/// `Ok(None)` when the file (or the directory) does not exist. A file that exists but
/// cannot be read or holds no token is an error, so a misconfiguration is not mistaken
/// for "no token".
pub fn read_operator_token(data_dir: &Path) -> Result<Option<OperatorToken>, Error> {
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    let content = match std::fs::read_to_string(&path) {
        Ok(content) => content,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::TokenFile {
                path,
                reason: e.to_string().to_lowercase(),
            });
        }
    };
    let mut token = None;
    let mut address = None;
    for line in content.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(value) = line.strip_prefix("address=") {
            address = Some(value.parse().map_err(|_| Error::TokenFile {
                path: path.clone(),
                reason: format!("address={value} is not an IP address and port"),
            })?);
        } else if token.is_none() {
            token = Some(line.to_owned());
        }
    }
    match token {
        Some(token) => Ok(Some(OperatorToken {
            path,
            token,
            address,
        })),
        None => Err(Error::TokenFile {
            path,
            reason: "file is empty".to_owned(),
        }),
    }
}

/// Where the token a client sends came from, for error messages. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given explicitly (mantlectl's `--token`).
    Explicit,
    /// `MANTLE_TOKEN`.
    Env,
    /// The operator token file of the daemon at `address`.
    OperatorFile {
        /// The file.
        path: PathBuf,
        /// Where its daemon listens.
        address: SocketAddr,
    },
    /// No token is sent; `why` says why the operator token file was not used, if there is
    /// one.
    None {
        /// Why no token file applies, when that may surprise.
        why: Option<String>,
    },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Explicit => f.write_str("the token given with --token"),
            TokenSource::Env => write!(f, "the token in {TOKEN_ENV}"),
            TokenSource::OperatorFile { path, address } => write!(
                f,
                "the operator token of the daemon at {address}, from {}",
                path.display()
            ),
            TokenSource::None { why: None } => {
                write!(f, "no token (neither --token nor {TOKEN_ENV} is set)")
            }
            TokenSource::None { why: Some(why) } => write!(
                f,
                "no token (neither --token nor {TOKEN_ENV} is set, and {why})"
            ),
        }
    }
}

/// The token to send and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedToken {
    /// The bearer token; `None` sends none.
    pub token: Option<String>,
    /// Where it came from.
    pub source: TokenSource,
}

impl std::fmt::Debug for ResolvedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedToken")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .finish()
    }
}

/// Picks the bearer token to send.
///
/// 1. `explicit` if given (the `--token` flag); an empty or blank string means "send no
///    token" and stops resolution.
/// 2. `env.token` (`MANTLE_TOKEN`) if non-empty.
/// 3. The operator token file in [`data_dir`], only when `address` reaches the daemon
///    that wrote it ([`OperatorToken::belongs_to`]).
///
/// A `None` token means calls other than health checks will be refused with
/// UNAUTHENTICATED; [`ResolvedToken::source`] says why there was none.
pub fn resolve_token(
    explicit: Option<&str>,
    address: &Address,
    env: &TokenEnv,
) -> Result<ResolvedToken, Error> {
    if let Some(token) = explicit {
        let token = token.trim();
        return Ok(if token.is_empty() {
            ResolvedToken {
                token: None,
                source: TokenSource::None {
                    why: Some("--token is empty".to_owned()),
                },
            }
        } else {
            ResolvedToken {
                token: Some(token.to_owned()),
                source: TokenSource::Explicit,
            }
        });
    }
    if let Some(token) = env.token.as_deref().map(str::trim)
        && !token.is_empty()
    {
        return Ok(ResolvedToken {
            token: Some(token.to_owned()),
            source: TokenSource::Env,
        });
    }
    let none = |why: Option<String>| ResolvedToken {
        token: None,
        source: TokenSource::None { why },
    };
    let Some(dir) = data_dir(env) else {
        return Ok(none(None));
    };
    let Some(file) = read_operator_token(&dir)? else {
        return Ok(none(None));
    };
    if file.belongs_to(address) {
        let recorded = file.address.expect("belongs_to needs an address");
        return Ok(ResolvedToken {
            token: Some(file.token),
            source: TokenSource::OperatorFile {
                path: file.path,
                address: recorded,
            },
        });
    }
    let why = match file.address {
        Some(recorded) => format!(
            "{} is the operator token of the daemon at {recorded}, not of {address}",
            file.path.display()
        ),
        None => format!(
            "{} records no daemon address (a daemon start rewrites it)",
            file.path.display()
        ),
    };
    Ok(none(Some(why)))
}

/// [`resolve_token`] with the process environment.
pub fn resolve_token_from_env(
    explicit: Option<&str>,
    address: &Address,
) -> Result<ResolvedToken, Error> {
    resolve_token(explicit, address, &TokenEnv::from_process())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Address {
        Address::parse("127.0.0.1:8080").unwrap()
    }

    fn remote() -> Address {
        Address::parse("https://mantle.example.com").unwrap()
    }

    fn env_with_data_dir(dir: &Path) -> TokenEnv {
        TokenEnv {
            data_dir: Some(dir.to_path_buf()),
            ..TokenEnv::default()
        }
    }

    fn write_token_file(dir: &Path, content: &str) {
        std::fs::write(dir.join(OPERATOR_TOKEN_FILE), content).unwrap();
    }

    fn token_of(resolved: Result<ResolvedToken, Error>) -> Option<String> {
        resolved.unwrap().token
    }

    #[test]
    fn data_dir_prefers_mantle_data_dir() {
        let env = TokenEnv {
            data_dir: Some("/srv/mantle".into()),
            xdg_data_home: Some("/xdg".into()),
            home: Some("/home/u".into()),
            token: None,
        };
        assert_eq!(data_dir(&env), Some(PathBuf::from("/srv/mantle")));
    }

    #[test]
    fn data_dir_falls_back_to_xdg_then_home() {
        let env = TokenEnv {
            xdg_data_home: Some("/xdg".into()),
            home: Some("/home/u".into()),
            ..TokenEnv::default()
        };
        assert_eq!(data_dir(&env), Some(PathBuf::from("/xdg/mantle")));
        let env = TokenEnv {
            xdg_data_home: Some("".into()),
            home: Some("/home/u".into()),
            ..TokenEnv::default()
        };
        assert_eq!(
            data_dir(&env),
            Some(PathBuf::from("/home/u/.local/share/mantle"))
        );
        assert_eq!(data_dir(&TokenEnv::default()), None);
    }

    #[test]
    fn data_dir_expands_tilde() {
        let env = TokenEnv {
            data_dir: Some("~/mantle-data".into()),
            home: Some("/home/u".into()),
            ..TokenEnv::default()
        };
        assert_eq!(data_dir(&env), Some(PathBuf::from("/home/u/mantle-data")));
    }

    #[test]
    fn explicit_token_wins_over_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "from-file\naddress=127.0.0.1:8080\n");
        let env = TokenEnv {
            token: Some("from-env".into()),
            ..env_with_data_dir(dir.path())
        };
        let explicit = resolve_token(Some(" explicit "), &local(), &env).unwrap();
        assert_eq!(explicit.token, Some("explicit".into()));
        assert_eq!(explicit.source, TokenSource::Explicit);
        let from_env = resolve_token(None, &local(), &env).unwrap();
        assert_eq!(from_env.token, Some("from-env".into()));
        assert_eq!(from_env.source.to_string(), "the token in MANTLE_TOKEN");
    }

    #[test]
    fn empty_explicit_token_sends_none() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "from-file\naddress=127.0.0.1:8080\n");
        let env = env_with_data_dir(dir.path());
        assert_eq!(token_of(resolve_token(Some(""), &local(), &env)), None);
    }

    #[test]
    fn local_address_reads_operator_token_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "  mntl_0123_abcd \naddress=127.0.0.1:8080\n");
        let env = env_with_data_dir(dir.path());
        let resolved = resolve_token(None, &local(), &env).unwrap();
        assert_eq!(resolved.token, Some("mntl_0123_abcd".into()));
        assert_eq!(
            resolved.source.to_string(),
            format!(
                "the operator token of the daemon at 127.0.0.1:8080, from {}",
                dir.path().join(OPERATOR_TOKEN_FILE).display()
            )
        );
        let localhost = Address::parse("http://localhost:8080").unwrap();
        assert_eq!(
            token_of(resolve_token(None, &localhost, &env)),
            Some("mntl_0123_abcd".into())
        );
        assert!(!format!("{resolved:?}").contains("mntl_0123_abcd"));
    }

    #[test]
    fn the_file_is_sent_only_to_the_daemon_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_data_dir(dir.path());
        let resolve = |target: &str| resolve_token(None, &Address::parse(target).unwrap(), &env);

        write_token_file(dir.path(), "tok\naddress=127.0.0.1:8080\n");
        // Another port on this machine is another daemon.
        let other = resolve("127.0.0.1:9090").unwrap();
        assert_eq!(other.token, None);
        let why = other.source.to_string();
        assert!(
            why.contains("is the operator token of the daemon at 127.0.0.1:8080, not of"),
            "{why}"
        );
        assert_eq!(token_of(resolve("[::1]:8080")), Some("tok".into()));
        assert_eq!(token_of(resolve("10.0.0.5:8080")), None);

        // Listening on every interface: loopback and the same address reach it.
        write_token_file(dir.path(), "tok\naddress=0.0.0.0:8080\n");
        assert_eq!(token_of(resolve("localhost:8080")), Some("tok".into()));
        assert_eq!(token_of(resolve("0.0.0.0:8080")), Some("tok".into()));
        assert_eq!(token_of(resolve("mantle.example.com:8080")), None);

        // Listening on one interface: that address only.
        write_token_file(dir.path(), "tok\naddress=192.168.1.5:8080\n");
        assert_eq!(token_of(resolve("192.168.1.5:8080")), Some("tok".into()));
        assert_eq!(token_of(resolve("127.0.0.1:8080")), None);

        // A file without an address (an older daemon's) is not sent anywhere.
        write_token_file(dir.path(), "tok\n");
        let none = resolve("127.0.0.1:8080").unwrap();
        assert_eq!(none.token, None);
        assert!(
            none.source
                .to_string()
                .contains("records no daemon address")
        );

        write_token_file(dir.path(), "tok\naddress=nowhere\n");
        let err = resolve("127.0.0.1:8080").unwrap_err();
        assert!(err.to_string().contains("address=nowhere"), "{err}");
    }

    #[test]
    fn remote_address_never_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "from-file\naddress=127.0.0.1:8080\n");
        let env = env_with_data_dir(dir.path());
        assert_eq!(token_of(resolve_token(None, &remote(), &env)), None);
    }

    #[test]
    fn missing_file_or_directory_means_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_data_dir(dir.path());
        let none = resolve_token(None, &local(), &env).unwrap();
        assert_eq!(none.token, None);
        assert_eq!(
            none.source.to_string(),
            "no token (neither --token nor MANTLE_TOKEN is set)"
        );
        let env = env_with_data_dir(&dir.path().join("absent"));
        assert_eq!(token_of(resolve_token(None, &local(), &env)), None);
    }

    #[test]
    fn xdg_data_home_locates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mantle")).unwrap();
        write_token_file(
            &dir.path().join("mantle"),
            "xdg-token\naddress=[::1]:8080\n",
        );
        let env = TokenEnv {
            xdg_data_home: Some(dir.path().to_path_buf()),
            home: Some("/nonexistent-home".into()),
            ..TokenEnv::default()
        };
        assert_eq!(
            token_of(resolve_token(None, &local(), &env)),
            Some("xdg-token".into())
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), " \n\n");
        let err = resolve_token(None, &local(), &env_with_data_dir(dir.path())).unwrap_err();
        assert!(matches!(err, Error::TokenFile { .. }), "{err:?}");
        assert!(err.to_string().ends_with("file is empty"), "{err}");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as a file.
        std::fs::create_dir(dir.path().join(OPERATOR_TOKEN_FILE)).unwrap();
        let err = read_operator_token(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read operator token file "),
            "{err}"
        );
    }
}
