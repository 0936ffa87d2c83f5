//! `mantle backup`: a consistent copy of the live database, taken beside a serving daemon.
//!
//! `VACUUM INTO` reads the database in one read transaction: in WAL mode that is a snapshot
//! of the last commit when it began, and it takes no lock a writer waits for (the daemon's
//! writer goes on committing; only the WAL cannot be restarted until the copy ends, so it
//! grows meanwhile). It writes a fresh, compacted database file, which SQLite does not
//! fsync: that is done here, before the copy takes its name.
//!
//! The copy is written to a temporary file beside the destination (created private, 0600,
//! and never over an existing file) and hard-linked to its name once complete and durable,
//! so a copy that did not finish never stands under the name of a backup.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::super::{Error, Result};

/// Where the copy is written and under which name it ends.
pub(super) struct Destination {
    /// The name the finished copy takes (absolute).
    pub(super) path: PathBuf,
    /// The temporary file the copy is written to, beside it.
    pub(super) partial: PathBuf,
}

impl Destination {
    /// Checks `dest` (a file that does not exist yet, in a directory that does) and
    /// creates the private temporary file the copy goes to.
    pub(super) fn prepare(dest: &Path) -> Result<Destination> {
        let bad =
            |what: String| Error::Config(format!("backup destination {}: {what}", dest.display()));
        let name = dest
            .file_name()
            .filter(|_| !dest.as_os_str().to_string_lossy().ends_with('/'))
            .ok_or_else(|| {
                bad(
                    "names a directory; give the file to write, such as DIR/mantle-backup.db"
                        .to_owned(),
                )
            })?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = parent.canonicalize().map_err(|e| {
            bad(format!(
                "the directory {} cannot be used: {e}",
                parent.display()
            ))
        })?;
        if !dir.is_dir() {
            return Err(bad(format!("{} is not a directory", parent.display())));
        }
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(already_exists(dest));
        }
        if path.to_str().is_none() {
            return Err(bad("the path is not valid UTF-8".to_owned()));
        }
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(format!(".{}.partial", std::process::id()));
        let partial = dir.join(partial_name);
        create_private(&partial).map_err(|e| {
            bad(format!(
                "cannot create the temporary file {}: {e}",
                partial.display()
            ))
        })?;
        Ok(Destination { path, partial })
    }

    /// The temporary file's path, as SQLite takes it (checked to be UTF-8 by `prepare`).
    pub(super) fn partial_str(&self) -> &str {
        self.partial.to_str().unwrap_or_default()
    }

    /// Makes the written copy durable, then gives it its name (never over a file created
    /// meanwhile) and makes the name durable; returns its size.
    pub(super) fn finish(&self) -> Result<u64> {
        let io = |what: &str, e: std::io::Error| {
            Error::Internal(format!("backup {}: {what}: {e}", self.path.display()))
        };
        let file = File::open(&self.partial).map_err(|e| io("reopening the copy", e))?;
        file.sync_all().map_err(|e| io("fsync of the copy", e))?;
        let bytes = file
            .metadata()
            .map_err(|e| io("reading the copy's size", e))?
            .len();
        match std::fs::hard_link(&self.partial, &self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(already_exists(&self.path));
            }
            Err(e) => return Err(io("naming the copy", e)),
        }
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync of its directory", e))?;
        }
        Ok(bytes)
    }
}

impl Drop for Destination {
    /// The temporary file goes, whether the copy took its name or failed.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

fn already_exists(dest: &Path) -> Error {
    Error::Config(format!(
        "backup destination {} already exists; a backup never overwrites a file: choose a new \
         name",
        dest.display()
    ))
}

/// Creates an empty file readable by this user only, failing if it exists. `VACUUM INTO`
/// writes into an empty file and keeps its mode.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}
