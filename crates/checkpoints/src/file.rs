//! [`FileStore`]: checkpoints in one local JSON file.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::error::{CheckpointError, StoreFailure};
use crate::model::TaskCheckpoint;
use crate::store::{self, check_key, CheckpointStore};

/// Checkpoints in a local file, for a run whose target is read-only to
/// wraith, and for tests.
///
/// **Layout.** One file holds every key: a JSON object mapping each key to
/// its checkpoint, pretty-printed so an operator can read it. Beside it live
/// `.NAME.lock` (an empty file, never removed, that writers `flock`) and,
/// only while a write is in flight, `.NAME.tmp-PID-N`.
///
/// **Atomicity.** A save takes the lock, reads the file, replaces its key,
/// writes the whole map to a temp file in the same directory, fsyncs it,
/// renames it over the file and fsyncs the directory. A crash at any instant
/// leaves either the old file or the new one; a temp file left by a crash is
/// ignored by loads and removed by the next save (under the lock no other
/// writer can own one). Saves of different keys, from tasks or processes,
/// serialize on the lock and never lose each other's keys. Loads take no
/// lock: a rename is atomic.
///
/// A file that is not valid JSON is never overwritten: saves fail with
/// [`CheckpointError::CouldNotWriteCheckpoint`] and loads with
/// [`CheckpointError::Corrupt`]. Removing the last key removes the file.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, StoreFailure> + Send + 'static,
    ) -> Result<T, StoreFailure> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&path))
            .await
            .map_err(|e| StoreFailure::Task(e.to_string()))?
    }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, key: &str) -> Result<Option<TaskCheckpoint>, CheckpointError> {
        check_key(self, key)?;
        let map = match self.blocking(read_map).await {
            Ok(map) => map,
            Err(StoreFailure::Corrupt { source, .. }) => {
                return Err(CheckpointError::Corrupt {
                    store: self.describe(),
                    key: key.to_string(),
                    source,
                })
            }
            Err(source) => {
                return Err(CheckpointError::CouldNotReadCheckpoint {
                    store: self.describe(),
                    source,
                })
            }
        };
        let Some(value) = map.and_then(|mut m| m.remove(key)) else {
            tracing::debug!(store = %self.describe(), key, "no checkpoint");
            return Ok(None);
        };
        let cp = store::decode(&self.describe(), key, value)?;
        tracing::debug!(store = %self.describe(), key, updated_at = cp.updated_at, "checkpoint loaded");
        Ok(Some(cp))
    }

    async fn save(&self, key: &str, cp: &TaskCheckpoint) -> Result<(), CheckpointError> {
        check_key(self, key)?;
        let write = |source| CheckpointError::CouldNotWriteCheckpoint {
            store: self.describe(),
            source,
        };
        let value = store::encode(cp).map_err(write)?;
        let key_owned = key.to_string();
        self.blocking(move |path| update(path, &key_owned, Some(value)))
            .await
            .map_err(|source| {
                tracing::warn!(store = %self.describe(), key, error = %source, "checkpoint not written");
                write(source)
            })?;
        tracing::debug!(store = %self.describe(), key, status = %cp.summary_status(), "checkpoint saved");
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), CheckpointError> {
        check_key(self, key)?;
        let key_owned = key.to_string();
        self.blocking(move |path| update(path, &key_owned, None))
            .await
            .map_err(|source| CheckpointError::CouldNotRemoveCheckpoint {
                store: self.describe(),
                key: key.to_string(),
                source,
            })?;
        tracing::debug!(store = %self.describe(), key, "checkpoint removed");
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

type Map = serde_json::Map<String, serde_json::Value>;

/// The directory of `path` ("." for a bare file name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, String), StoreFailure> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            StoreFailure::io(
                format!("{} names no file", path.display()),
                ErrorKind::InvalidInput.into(),
            )
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// The map in the file; `None` when there is no file.
fn read_map(path: &Path) -> Result<Option<Map>, StoreFailure> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreFailure::io(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice::<Map>(&text)
        .map(Some)
        .map_err(|source| StoreFailure::Corrupt {
            context: format!("{} is not a JSON object of checkpoints", path.display()),
            source,
        })
}

/// An exclusive `flock` on `.NAME.lock`, released when dropped (closed).
struct Lock {
    _file: File,
}

fn lock(dir: &Path, name: &str) -> Result<Lock, StoreFailure> {
    let lock_path = dir.join(format!(".{name}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreFailure::io(format!("opening {}", lock_path.display()), e))?;
    loop {
        // SAFETY: flock on a file descriptor we own, open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(Lock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(StoreFailure::io(
                format!("locking {}", lock_path.display()),
                err,
            ));
        }
    }
}

fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Sets (`Some`) or removes (`None`) `key`, atomically, under the lock.
fn update(path: &Path, key: &str, value: Option<serde_json::Value>) -> Result<(), StoreFailure> {
    let (dir, name) = split(path)?;
    let _lock = lock(&dir, &name)?;
    remove_stray_temps(&dir, &name);
    let existing = read_map(path)?;
    let had_file = existing.is_some();
    let mut map = existing.unwrap_or_default();
    match value {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            if map.remove(key).is_none() {
                return Ok(());
            }
        }
    }
    if map.is_empty() {
        if had_file {
            fs::remove_file(path)
                .map_err(|e| StoreFailure::io(format!("removing {}", path.display()), e))?;
            sync_dir(&dir)?;
        }
        return Ok(());
    }
    let mut body = serde_json::to_vec_pretty(&map).map_err(StoreFailure::Encode)?;
    body.push(b'\n');
    replace(&dir, &name, path, &body)
}

/// Write-to-temp, fsync, rename over `path`, fsync the directory.
fn replace(dir: &Path, name: &str, path: &Path, body: &[u8]) -> Result<(), StoreFailure> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{}{}-{}",
        temp_prefix(name),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreFailure::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(body)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreFailure::io(format!("writing {}", tmp.display()), e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| {
            StoreFailure::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreFailure> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreFailure::io(format!("syncing directory {}", dir.display()), e))
}

/// Temp files of a crashed writer (the caller holds the lock, so no live
/// writer owns one). Best effort: a leftover is harmless.
fn remove_stray_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stray = entry.path();
            tracing::warn!(file = %stray.display(), "removing a checkpoint temp file left by an interrupted write");
            let _ = fs::remove_file(&stray);
        }
    }
}
