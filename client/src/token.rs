//! Which bearer token to send.
//!
//! An explicit token wins. Otherwise, for a daemon on this machine, the client reads the
//! operator token the daemon writes on its first start to `<data dir>/operator-token`.

use std::io::ErrorKind;
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

/// Reads `<data_dir>/operator-token`: the first line, trimmed.
///
/// `Ok(None)` when the file (or the directory) does not exist. A file that exists but
/// cannot be read or holds no token is an error, so a misconfiguration is not mistaken
/// for "no token".
pub fn read_operator_token(data_dir: &Path) -> Result<Option<String>, Error> {
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
    match content.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(token) => Ok(Some(token.to_owned())),
        None => Err(Error::TokenFile {
            path,
            reason: "file is empty".to_owned(),
        }),
    }
}

/// Picks the bearer token to send.
///
/// 1. `explicit` if given (the `--token` flag); an empty or blank string means "send no
///    token" and stops resolution.
/// 2. `env.token` (`MANTLE_TOKEN`) if non-empty.
/// 3. Only when `address` is local: the operator token file in [`data_dir`].
///
/// `Ok(None)` means no token: calls other than health checks will be refused with
/// UNAUTHENTICATED.
pub fn resolve_token(
    explicit: Option<&str>,
    address: &Address,
    env: &TokenEnv,
) -> Result<Option<String>, Error> {
    if let Some(token) = explicit {
        let token = token.trim();
        return Ok((!token.is_empty()).then(|| token.to_owned()));
    }
    if let Some(token) = env.token.as_deref().map(str::trim)
        && !token.is_empty()
    {
        return Ok(Some(token.to_owned()));
    }
    if !address.is_local() {
        return Ok(None);
    }
    match data_dir(env) {
        Some(dir) => read_operator_token(&dir),
        None => Ok(None),
    }
}

/// [`resolve_token`] with the process environment.
pub fn resolve_token_from_env(
    explicit: Option<&str>,
    address: &Address,
) -> Result<Option<String>, Error> {
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
        write_token_file(dir.path(), "from-file\n");
        let env = TokenEnv {
            token: Some("from-env".into()),
            ..env_with_data_dir(dir.path())
        };
        assert_eq!(
            resolve_token(Some(" explicit "), &local(), &env).unwrap(),
            Some("explicit".into())
        );
        assert_eq!(
            resolve_token(None, &local(), &env).unwrap(),
            Some("from-env".into())
        );
    }

    #[test]
    fn empty_explicit_token_sends_none() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "from-file\n");
        let env = env_with_data_dir(dir.path());
        assert_eq!(resolve_token(Some(""), &local(), &env).unwrap(), None);
    }

    #[test]
    fn local_address_reads_operator_token_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "  mntl_0123_abcd \n");
        let env = env_with_data_dir(dir.path());
        assert_eq!(
            resolve_token(None, &local(), &env).unwrap(),
            Some("mntl_0123_abcd".into())
        );
        let localhost = Address::parse("http://localhost:1").unwrap();
        assert_eq!(
            resolve_token(None, &localhost, &env).unwrap(),
            Some("mntl_0123_abcd".into())
        );
    }

    #[test]
    fn remote_address_never_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_token_file(dir.path(), "from-file\n");
        let env = env_with_data_dir(dir.path());
        assert_eq!(resolve_token(None, &remote(), &env).unwrap(), None);
    }

    #[test]
    fn missing_file_or_directory_means_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_data_dir(dir.path());
        assert_eq!(resolve_token(None, &local(), &env).unwrap(), None);
        let env = env_with_data_dir(&dir.path().join("absent"));
        assert_eq!(resolve_token(None, &local(), &env).unwrap(), None);
    }

    #[test]
    fn xdg_data_home_locates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mantle")).unwrap();
        write_token_file(&dir.path().join("mantle"), "xdg-token\n");
        let env = TokenEnv {
            xdg_data_home: Some(dir.path().to_path_buf()),
            home: Some("/nonexistent-home".into()),
            ..TokenEnv::default()
        };
        assert_eq!(
            resolve_token(None, &local(), &env).unwrap(),
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
