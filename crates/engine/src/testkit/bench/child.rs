//! The benchmark's child processes: `wraith run`, `wraith import`,
//! pt-online-schema-change, mydumper and myloader, each run to its end with
//! its output in files, its exit status and its peak RSS (from `wait4`).
//!
//! wraith runs as a child (the binary the caller names, normally the running
//! `wraith` itself) rather than in this process so that its time includes
//! preflight and cut-over as an operator sees them, and its memory is its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{BenchError, StepContext};

/// A `wraith run` to start.
pub(super) struct WraithJob {
    pub(super) command: Command,
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) sort_dir: PathBuf,
    pub(super) socket: PathBuf,
}

impl WraithJob {
    /// Runs it to its end; a failed run is an error with its last lines.
    pub(super) async fn run(self) -> Result<ChildRun, BenchError> {
        let child = run_child(self.command, &self.dir, &self.name).await;
        let _ = std::fs::remove_dir_all(&self.sort_dir);
        child?.succeeded("wraith run")
    }
}

/// A figure of the change stream from a running wraith's `status-json`.
pub(super) async fn stream_figure(socket: &Path, field: &str) -> Result<u64, BenchError> {
    let status = crate::control::query_status(socket, Duration::from_secs(2))
        .await
        .ok_or_else(|| {
            BenchError::Failed(format!(
                "wraith's control socket {} did not answer",
                socket.display()
            ))
        })?;
    status["stream"][field]
        .as_u64()
        .ok_or_else(|| BenchError::Failed(format!("status-json has no stream.{field}")))
}

/// A finished child process.
pub(super) struct ChildRun {
    pub(super) success: bool,
    pub(super) status: String,
    pub(super) stdout: String,
    /// The last lines of its stderr (and stdout, for tools that report there).
    pub(super) stderr_tail: String,
    pub(super) peak_rss_mib: Option<f64>,
}

impl ChildRun {
    /// Itself when it exited with 0; otherwise [`BenchError::ChildFailed`].
    pub(super) fn succeeded(self, tool: &str) -> Result<ChildRun, BenchError> {
        if self.success {
            return Ok(self);
        }
        Err(BenchError::ChildFailed {
            tool: tool.to_string(),
            status: self.status,
            tail: self.stderr_tail,
        })
    }

    /// The table's report from `wraith run --json`.
    pub(super) fn report(&self) -> Result<serde_json::Value, BenchError> {
        let report: serde_json::Value =
            serde_json::from_str(&self.stdout).step("reading wraith run's JSON report")?;
        Ok(report["tables"][0].clone())
    }
}

/// Runs `cmd` to its end with output in files under `dir`, and reads its peak
/// RSS from `wait4`.
pub(super) async fn run_child(
    mut cmd: Command,
    dir: &Path,
    name: &str,
) -> Result<ChildRun, BenchError> {
    let out_path = dir.join(format!("{name}.out"));
    let err_path = dir.join(format!("{name}.err"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).step("creating the child's output file")?)
        .stderr(std::fs::File::create(&err_path).step("creating the child's error file")?);
    let child = cmd
        .spawn()
        .with_step(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let (status, usage) = tokio::task::spawn_blocking(move || wait_with_usage(pid))
        .await
        .step("waiting for the child")?
        .step("waiting for the child")?;
    drop(child);
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let status_text = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    };
    Ok(ChildRun {
        success,
        status: status_text,
        stderr_tail: format!("{}\n{}", tail(&stderr), tail(&stdout))
            .trim()
            .to_string(),
        stdout,
        // Linux reports ru_maxrss in KiB.
        peak_rss_mib: (usage.ru_maxrss > 0).then(|| usage.ru_maxrss as f64 / 1024.0),
    })
}

fn wait_with_usage(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage), std::io::Error> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child, with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::new(
                err.kind(),
                format!("wait4 for pid {pid}: {err}"),
            ));
        }
    }
}

/// `program` in `PATH`, `/usr/bin` or `/usr/local/bin`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
