//! The files and directories a config names, judged before a run creates any.
//!
//! `wraith check` and `wraith run` (before it binds its control socket) look
//! at every path of the config: the checkpoint file, `[local] sort_dir`,
//! `[changes] dir`, the control socket, `[hooks] dir` and every
//! `password_file`. A path that cannot work is a preflight refusal (exit 3)
//! naming the setting and the fix, not a runtime error an hour into a copy.
//! Judging only reads: nothing is created or changed here.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{CheckpointStore, Config};
use crate::preflight::{Check, Status};

/// Every path check of `config`, in the order of the config's sections.
pub fn check(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name: &str, result: Result<String, (String, String)>| {
        out.push(match result {
            Ok(detail) => Check {
                name: name.to_string(),
                status: Status::Ok,
                detail,
                fix: None,
            },
            Err((detail, fix)) => Check {
                name: name.to_string(),
                status: Status::Fail,
                detail,
                fix: Some(fix),
            },
        })
    };
    let connections = [
        ("source", Some(&config.source)),
        ("target", config.target.as_ref()),
    ];
    for (section, c) in connections {
        if let Some(file) = c.and_then(|c| c.password_file.as_ref()) {
            push(
                "password_file",
                readable_file(file, &format!("[{section}] password_file")),
            );
        }
    }
    for (i, r) in config.throttle.replicas.iter().enumerate() {
        if let Some(file) = &r.password_file {
            push(
                "password_file",
                readable_file(
                    file,
                    &format!("[[throttle.replicas]] #{} password_file", i + 1),
                ),
            );
        }
    }
    if config.checkpoint.store == CheckpointStore::File {
        if let Some(path) = &config.checkpoint.path {
            push("checkpoint path", writable_file(path, "[checkpoint] path"));
        }
    }
    push(
        "sort_dir",
        usable_dir(&config.local.sort_dir, "[local] sort_dir"),
    );
    if let Some(dir) = &config.changes.dir {
        push("changes dir", usable_dir(dir, "[changes] dir"));
    }
    let socket = config
        .control
        .socket
        .clone()
        .unwrap_or_else(|| crate::control::default_socket_path(config));
    push(
        "control socket",
        socket_path(&socket, config.control.socket.is_some()),
    );
    if let Some(dir) = &config.hooks.dir {
        push("hooks dir", hooks_dir(dir));
    }
    out
}

fn fix_setting(setting: &str) -> String {
    format!("fix {setting} in the config, or create what it names with the permissions wraith's user needs")
}

/// Whether this process may `mode` (`libc::R_OK`, `W_OK`, `X_OK`) `path`.
fn access(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path and nothing else.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// The directory `path` is or would be created in: itself when it exists,
/// else its nearest existing ancestor (wraith creates the rest).
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    absolute
        .ancestors()
        .find(|a| a.exists())
        .map(Path::to_path_buf)
}

/// A directory wraith writes into, creating it when missing.
fn usable_dir(dir: &Path, setting: &str) -> Result<String, (String, String)> {
    let Some(existing) = nearest_existing(dir) else {
        return Err((
            format!("{setting} {} cannot be resolved", dir.display()),
            fix_setting(setting),
        ));
    };
    if !existing.is_dir() {
        return Err((
            format!(
                "{setting} {}: {} is not a directory",
                dir.display(),
                existing.display()
            ),
            fix_setting(setting),
        ));
    }
    if !access(&existing, libc::W_OK | libc::X_OK) {
        return Err((
            format!(
                "{setting} {}: wraith's user cannot write in {}",
                dir.display(),
                existing.display()
            ),
            fix_setting(setting),
        ));
    }
    Ok(if existing.as_path() == dir || dir.is_dir() {
        format!("{} is a writable directory", dir.display())
    } else {
        format!(
            "{} will be created in {}",
            dir.display(),
            existing.display()
        )
    })
}

/// A file wraith writes (and replaces): a file or nothing yet, in a writable directory.
fn writable_file(file: &Path, setting: &str) -> Result<String, (String, String)> {
    if file.is_dir() {
        return Err((
            format!("{setting} {} is a directory", file.display()),
            format!(
                "{setting} names a file, e.g. {}/wraith.checkpoint",
                file.display()
            ),
        ));
    }
    if file.exists() && !access(file, libc::R_OK | libc::W_OK) {
        return Err((
            format!(
                "{setting} {}: wraith's user cannot read and write it",
                file.display()
            ),
            fix_setting(setting),
        ));
    }
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err((
            format!(
                "{setting} {}: its directory {} does not exist",
                file.display(),
                parent.display()
            ),
            format!("create {} or {}", parent.display(), fix_setting(setting)),
        ));
    }
    if !access(parent, libc::W_OK | libc::X_OK) {
        return Err((
            format!(
                "{setting} {}: wraith's user cannot write in {}",
                file.display(),
                parent.display()
            ),
            fix_setting(setting),
        ));
    }
    Ok(format!("{} is writable", file.display()))
}

fn readable_file(file: &Path, setting: &str) -> Result<String, (String, String)> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_file() && access(file, libc::R_OK) => {
            Ok(format!("{} is readable", file.display()))
        }
        Ok(m) if m.is_file() => Err((
            format!("{setting} {}: wraith's user cannot read it", file.display()),
            fix_setting(setting),
        )),
        Ok(_) => Err((
            format!("{setting} {} is not a file", file.display()),
            fix_setting(setting),
        )),
        Err(e) => Err((
            format!("{setting} {}: {e}", file.display()),
            fix_setting(setting),
        )),
    }
}

/// The control socket: a path the kernel accepts (108 bytes), in a directory
/// wraith can create or write, not taken by something that is not a socket.
fn socket_path(path: &Path, configured: bool) -> Result<String, (String, String)> {
    let setting = if configured {
        "[control] socket"
    } else {
        "the default control socket (under [local] sort_dir)"
    };
    if path.as_os_str().len() >= 108 {
        return Err((
            format!(
                "{setting} {} is {} bytes; a unix socket path holds at most 107",
                path.display(),
                path.as_os_str().len()
            ),
            "set [control] socket to a shorter path, e.g. \"/tmp/wraith.sock\"".into(),
        ));
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err((
                format!(
                    "{setting} {} exists and is not a socket; wraith will not replace it",
                    path.display()
                ),
                "set [control] socket to a free path, or move that file away".into(),
            ));
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    usable_dir(parent, setting)
        .map(|_| format!("{} can be bound", path.display()))
        .map_err(|(detail, _)| {
            (
                detail,
                "set [control] socket to a path in a writable directory, e.g. \"/tmp/wraith.sock\""
                    .into(),
            )
        })
}

fn hooks_dir(dir: &Path) -> Result<String, (String, String)> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            let present: Vec<&str> = crate::hooks::HookEvent::ALL
                .iter()
                .map(|e| e.file_name())
                .filter(|n| dir.join(n).is_file())
                .collect();
            let not_executable: Vec<&str> = present
                .iter()
                .copied()
                .filter(|n| !access(&dir.join(n), libc::X_OK))
                .collect();
            if !not_executable.is_empty() {
                return Err((
                    format!(
                        "[hooks] dir {}: {} cannot be executed by wraith's user",
                        dir.display(),
                        not_executable.join(", ")
                    ),
                    format!("chmod +x them (in {})", dir.display()),
                ));
            }
            Ok(if present.is_empty() {
                format!("{} holds no hook", dir.display())
            } else {
                format!("{} holds {}", dir.display(), present.join(", "))
            })
        }
        Ok(_) => Err((
            format!("[hooks] dir {} is not a directory", dir.display()),
            "set [hooks] dir to the directory holding the hook executables, or remove it for no hooks".into(),
        )),
        Err(e) => Err((
            format!(
                "[hooks] dir {}: {e}; the hooks it should hold (the cut-over's included) would never run",
                dir.display()
            ),
            "create the directory with the hook executables, fix the path, or remove [hooks] dir for no hooks".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(usable_dir(&tmp.path().join("a/b"), "s").is_ok());
        assert!(usable_dir(&file.join("sub"), "s").is_err());
        assert!(writable_file(&tmp.path().join("cp"), "s").is_ok());
        assert!(writable_file(tmp.path(), "s").is_err());
        assert!(writable_file(&tmp.path().join("missing/cp"), "s").is_err());
        assert!(readable_file(&file, "s").is_ok());
        assert!(readable_file(&tmp.path().join("nope"), "s").is_err());
        assert!(hooks_dir(&tmp.path().join("nope")).is_err());
        assert!(hooks_dir(&file).is_err());
        assert!(hooks_dir(tmp.path()).is_ok());
        assert!(socket_path(&file, true).is_err());
        assert!(socket_path(&tmp.path().join("s.sock"), true).is_ok());
        assert!(socket_path(&tmp.path().join("x".repeat(120)), true).is_err());
    }
}
