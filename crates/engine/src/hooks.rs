//! Hooks: executables the operator puts in `[hooks] dir`, run at points of a run.
//!
//! gh-ost's hooks, with wraith's names and variables. A hook is a file named
//! after its event; a missing file is no hook. It runs with stdin closed, its
//! output logged, and these environment variables:
//!
//! | variable | value |
//! | --- | --- |
//! | `WRAITH_DATABASE` | the source schema |
//! | `WRAITH_TABLE` | the table being rebuilt (the first one before any starts) |
//! | `WRAITH_MIGRATION_UUID` | the run's migration id (the checkpoint's; empty in `on-startup`, which runs before the checkpoint is read) |
//! | `WRAITH_STARTED_AT` | when the migration first started, UTC `YYYYMMDDhhmmss` (kept across resumes; empty in `on-startup`) |
//! | `WRAITH_STATE` | the run's state (`CopyRows`, `PostChecksum`, ...) |
//! | `WRAITH_ROWS_COPIED` | rows copied so far |
//! | `WRAITH_ROWS_TOTAL` | rows estimated (exact once the copy is done) |
//! | `WRAITH_ELAPSED_SECONDS` | seconds since the run started |
//! | `WRAITH_EVENT` | the hook's name |
//! | `WRAITH_ERROR` | `on-failure` only: the error |
//!
//! A hook that exits non-zero or outlives `[hooks] timeout` (default 60s,
//! then killed) has failed. A failed `on-before-cut-over` stops the run before
//! anything is renamed, with a resumable error: the source is untouched and a
//! rerun resumes from the checkpoint and asks the hook again. Every other
//! failure is logged and the run goes on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The points of a run that have a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The variants spell gh-ost's hook names (`on-startup`, ...), which operators know.
#[allow(clippy::enum_variant_names)]
pub enum HookEvent {
    OnStartup,
    OnValidated,
    OnRowcountComplete,
    OnRowCopyComplete,
    OnBeginPostponed,
    OnBeforeCutOver,
    OnSuccess,
    OnFailure,
    OnStatus,
    OnRevertWindowStart,
    OnBeforeRevert,
    OnRevert,
    OnFinish,
}

impl HookEvent {
    /// Every event, in the order of a run.
    pub const ALL: [HookEvent; 13] = [
        HookEvent::OnStartup,
        HookEvent::OnValidated,
        HookEvent::OnRowcountComplete,
        HookEvent::OnRowCopyComplete,
        HookEvent::OnBeginPostponed,
        HookEvent::OnBeforeCutOver,
        HookEvent::OnSuccess,
        HookEvent::OnFailure,
        HookEvent::OnStatus,
        HookEvent::OnRevertWindowStart,
        HookEvent::OnBeforeRevert,
        HookEvent::OnRevert,
        HookEvent::OnFinish,
    ];

    /// The executable's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            HookEvent::OnStartup => "on-startup",
            HookEvent::OnValidated => "on-validated",
            HookEvent::OnRowcountComplete => "on-rowcount-complete",
            HookEvent::OnRowCopyComplete => "on-row-copy-complete",
            HookEvent::OnBeginPostponed => "on-begin-postponed",
            HookEvent::OnBeforeCutOver => "on-before-cut-over",
            HookEvent::OnSuccess => "on-success",
            HookEvent::OnFailure => "on-failure",
            HookEvent::OnStatus => "on-status",
            HookEvent::OnRevertWindowStart => "on-revert-window-start",
            HookEvent::OnBeforeRevert => "on-before-revert",
            HookEvent::OnRevert => "on-revert",
            HookEvent::OnFinish => "on-finish",
        }
    }
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {path} could not be started: {source}")]
    Start {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {path} failed ({status}){}", stderr_tail(.stderr))]
    Failed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("hook {path} did not finish within {timeout:?} and was killed")]
    TimedOut { path: PathBuf, timeout: Duration },
}

fn stderr_tail(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        String::new()
    } else {
        let tail: String = t
            .chars()
            .rev()
            .take(500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(": {tail}")
    }
}

/// The hook directory and its timeout.
#[derive(Debug, Clone)]
pub struct Hooks {
    dir: Option<PathBuf>,
    timeout: Duration,
}

impl Hooks {
    pub fn new(dir: Option<PathBuf>, timeout: Duration) -> Hooks {
        Hooks { dir, timeout }
    }

    /// Runs the hook of `event` with `env`, if there is one.
    pub async fn run(
        &self,
        event: HookEvent,
        env: &BTreeMap<&'static str, String>,
    ) -> Result<(), HookError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join(event.file_name());
        if !path.is_file() {
            return Ok(());
        }
        tracing::info!(hook = %path.display(), "running hook");
        let child = tokio::process::Command::new(&path)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("WRAITH_EVENT", event.file_name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HookError::Start {
                path: path.clone(),
                source,
            })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(HookError::TimedOut {
                    path,
                    timeout: self.timeout,
                })
            }
            Ok(Err(source)) => return Err(HookError::Start { path, source }),
            Ok(Ok(output)) => output,
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !stdout.trim().is_empty() {
            tracing::info!(hook = event.file_name(), output = %stdout.trim(), "hook output");
        }
        if output.status.success() {
            Ok(())
        } else {
            Err(HookError::Failed {
                path,
                status: output.status.to_string(),
                stderr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn runs_with_env_fails_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        script(
            dir.path(),
            "on-success",
            &format!("echo \"$WRAITH_TABLE $WRAITH_EVENT\" > {}", out.display()),
        );
        script(dir.path(), "on-failure", "echo nope >&2; exit 3");
        script(dir.path(), "on-status", "sleep 5");
        let hooks = Hooks::new(Some(dir.path().to_path_buf()), Duration::from_millis(300));
        let env = BTreeMap::from([("WRAITH_TABLE", "t".to_string())]);
        hooks.run(HookEvent::OnSuccess, &env).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "t on-success\n");
        let e = hooks.run(HookEvent::OnFailure, &env).await.unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = hooks.run(HookEvent::OnStatus, &env).await.unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        // No file: no hook.
        hooks.run(HookEvent::OnStartup, &env).await.unwrap();
    }
}
