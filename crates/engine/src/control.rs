//! Operating a running rebuild: the control socket and the live settings it changes.
//!
//! **What it is for.** An operator steers a long run without restarting it,
//! as with gh-ost's interactive commands: pause and resume the copy, resize
//! chunks, change the number of copy threads, hold or release the cut-over,
//! or abort. [`Operations`] is the state those commands change; the copier
//! reads it between chunks and the run's state machine reads it at its waits.
//!
//! **The socket.** One unix socket per run (`[control] socket`, default
//! `<sort_dir>/wraith-<schema>-<table>.sock`, or the same name in /tmp when
//! that path is too long for a socket), mode 0600, removed when the run ends.
//! A socket left by a dead run is replaced; one a live run answers on is
//! refused. The protocol is lines: one command per line, one reply per
//! command (`ok: ...`, `error: ...`, or the status text), the connection
//! stays open until the client closes it:
//!
//! ```text
//! echo status | socat - UNIX-CONNECT:/tmp/wraith-app-orders.sock
//! ```
//!
//! Commands: `help`, `status` and `status-json` (the job and each of its
//! tables, from [`crate::progress`]), `chunk-size=N` (fixed rows per
//! chunk; `chunk-size=auto` adapts again), `chunk-target=DURATION` (adaptive
//! sizing aims at this chunk time), `threads=N` (copy workers, 1 up to
//! [`Operations::max_threads`]), `throttle` / `pause`, `no-throttle` /
//! `resume`, `postpone-cutover`, `unpostpone`, `panic` (stop now: the source
//! is untouched, the checkpoint kept, and a rerun resumes).
//!
//! **What it leaves to others.** Throttle reasons are the [`crate::throttle`]
//! module's; chunk sizing stays the chunker's (this module only hands it a
//! fixed size or a target); stopping is the state machine's, which treats an
//! abort like Ctrl-C and reports the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::chunker::Chunker;
use crate::config::Config;
use crate::events::RunEvent;
use crate::hooks::{HookError, HookEvent, Hooks};
use crate::progress::{plain, ProgressHandle, State};
use crate::throttle::Throttler;

/// The most copy workers `threads=N` may ask for, whatever `[copy] threads` is below it.
pub const LIVE_THREADS_CEILING: usize = 16;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another wraith run is listening on it; stop that run or set [control] socket to another path")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {source}; set [control] socket to a writable path")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The live state an operator changes, shared by the socket, the copier, the
/// throttler and the run.
pub struct Operations {
    pub throttler: Throttler,
    hooks: Hooks,
    progress: ProgressHandle,
    database: String,
    table: Mutex<String>,
    migration_id: Mutex<String>,
    /// When the migration first started, UTC `YYYYMMDDhhmmss` (kept across resumes).
    started_at: Mutex<String>,
    socket_path: Mutex<Option<String>>,
    started: Instant,
    /// Fixed rows per chunk; 0 = adaptive.
    chunk_rows: AtomicU64,
    /// Chunk time target in microseconds; 0 = the config's.
    chunk_target_us: AtomicU64,
    threads: AtomicUsize,
    max_threads: usize,
    /// The chunker's current rows per chunk and the last chunk's rows (observed).
    chunk_rows_target: AtomicU64,
    last_chunk_rows: AtomicU64,
    /// Per copy worker: milliseconds since `started` when it last finished a chunk.
    worker_last_chunk: Vec<AtomicU64>,
    postponed: AtomicBool,
    abort: watch::Sender<Option<String>>,
    /// Chunks being copied now, by every table of the job: together they
    /// stay within `threads` (the job's one thread budget).
    copying: AtomicUsize,
    slot_freed: tokio::sync::Notify,
    /// `release-window`: the revert window's run hands the window over (to
    /// `wraith revert` or `wraith finish`) and exits.
    window_released: AtomicBool,
    /// `extend-window=D`: seconds asked for and not yet added to the window.
    window_extension_secs: AtomicU64,
}

/// One chunk's share of the job's thread budget; given back on drop.
pub struct CopySlot<'a> {
    ops: &'a Operations,
}

impl Drop for CopySlot<'_> {
    fn drop(&mut self) {
        self.ops.copying.fetch_sub(1, Ordering::AcqRel);
        self.ops.slot_freed.notify_waiters();
    }
}

impl Operations {
    pub fn new(config: &Config, progress: ProgressHandle) -> Arc<Operations> {
        let max_threads = config.copy.threads.max(LIVE_THREADS_CEILING);
        let throttler = Throttler::new(config.throttle.clone(), progress.clone());
        if let Some(t) = config.tables.first() {
            throttler.set_label(&t.name);
        }
        Arc::new(Operations {
            throttler,
            hooks: Hooks::new(config.hooks.dir.clone(), config.hooks.timeout.0),
            progress,
            database: config.source.database.clone(),
            table: Mutex::new(
                config
                    .tables
                    .first()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
            ),
            migration_id: Mutex::new(String::new()),
            started_at: Mutex::new(String::new()),
            socket_path: Mutex::new(None),
            started: Instant::now(),
            chunk_rows: AtomicU64::new(0),
            chunk_target_us: AtomicU64::new(0),
            threads: AtomicUsize::new(config.copy.threads.max(1)),
            max_threads,
            chunk_rows_target: AtomicU64::new(0),
            last_chunk_rows: AtomicU64::new(0),
            worker_last_chunk: (0..max_threads).map(|_| AtomicU64::new(0)).collect(),
            postponed: AtomicBool::new(false),
            window_released: AtomicBool::new(false),
            window_extension_secs: AtomicU64::new(0),
            abort: watch::Sender::new(None),
            copying: AtomicUsize::new(0),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    /// Copy workers the copier starts (the idle ones wait for `threads=N`).
    pub fn max_threads(&self) -> usize {
        self.max_threads
    }

    pub fn set_table(&self, table: &str) {
        *plain(&self.table) = table.to_string();
        self.throttler.set_label(table);
    }

    pub fn set_migration_id(&self, id: &str) {
        *plain(&self.migration_id) = id.to_string();
    }

    /// Where this run's control socket listens (recorded in the checkpoint).
    /// The run identity (empty until the run has set it).
    pub fn migration_id(&self) -> String {
        plain(&self.migration_id).clone()
    }

    pub fn set_socket_path(&self, path: &Path) {
        *plain(&self.socket_path) = Some(path.display().to_string());
    }

    pub fn socket_path(&self) -> Option<String> {
        plain(&self.socket_path).clone()
    }

    /// The run identity's timestamp (the checkpoint's `started_at`).
    pub fn set_started_at(&self, started_at: &str) {
        *plain(&self.started_at) = started_at.to_string();
    }

    fn started_at(&self) -> String {
        plain(&self.started_at).clone()
    }

    fn table(&self) -> String {
        plain(&self.table).clone()
    }

    /// Whether the operator holds the cut-over (`postpone-cutover`).
    pub fn cutover_postponed(&self) -> bool {
        self.postponed.load(Ordering::Relaxed)
    }

    /// Stops the run at its next safe point with `reason` (the first reason wins).
    pub fn abort(&self, reason: String) {
        self.abort.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            tracing::warn!(%reason, "aborting the run");
            *current = Some(reason);
            true
        });
    }

    pub fn abort_reason(&self) -> Option<String> {
        self.abort.borrow().clone()
    }

    pub fn subscribe_abort(&self) -> watch::Receiver<Option<String>> {
        self.abort.subscribe()
    }

    // ----- the copier's side -----

    /// Waits until copy worker `worker` may take a chunk: not throttled and
    /// within `threads`. Returns at once when `finished` is set.
    pub async fn wait_turn(&self, worker: usize, finished: &AtomicBool) {
        loop {
            if finished.load(Ordering::Relaxed)
                || (worker < self.threads.load(Ordering::Relaxed)
                    && self.throttler.reason().is_none())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits while the copy is throttled; returns at once when the run is
    /// being stopped. The local backend's import asks it between ranges.
    pub async fn wait_unthrottled(&self) {
        while self.throttler.reason().is_some() && self.abort.borrow().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a share of the job's thread budget for one chunk: at most
    /// `threads` chunks are copied at once over all tables of the job, so
    /// tables copied together share it and a table done early hands its
    /// share to the others.
    pub async fn copy_slot(&self) -> CopySlot<'_> {
        loop {
            let freed = self.slot_freed.notified();
            let now = self.copying.load(Ordering::Acquire);
            if now < self.threads.load(Ordering::Relaxed).max(1)
                && self
                    .copying
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return CopySlot { ops: self };
            }
            // A live `threads=N` raises the budget without freeing a slot.
            let _ = tokio::time::timeout(Duration::from_millis(50), freed).await;
        }
    }

    /// Hands the chunker the operator's chunk size or target, if any.
    pub fn tune(&self, chunker: &mut Chunker) {
        match self.chunk_rows.load(Ordering::Relaxed) {
            0 => chunker.set_fixed_rows(None),
            n => chunker.set_fixed_rows(Some(n)),
        }
        match self.chunk_target_us.load(Ordering::Relaxed) {
            0 => {}
            us => chunker.set_target(Duration::from_micros(us)),
        }
        self.chunk_rows_target
            .store(chunker.target_rows(), Ordering::Relaxed);
    }

    /// Records that `worker` finished a chunk of `rows` rows.
    pub fn chunk_done(&self, worker: usize, rows: u64) {
        self.last_chunk_rows.store(rows, Ordering::Relaxed);
        if let Some(slot) = self.worker_last_chunk.get(worker) {
            slot.store(self.elapsed_ms().max(1), Ordering::Relaxed);
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Workers that finished a chunk within the last second.
    fn active_workers(&self) -> usize {
        let now = self.elapsed_ms();
        self.worker_last_chunk
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&t| t > 0 && now.saturating_sub(t) <= 1000)
            .count()
    }

    // ----- hooks -----

    /// The environment of a hook.
    fn hook_env(&self, error: Option<&str>) -> BTreeMap<&'static str, String> {
        let p = self.progress.snapshot();
        let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
        let mut env = BTreeMap::from([
            ("WRAITH_DATABASE", self.database.clone()),
            ("WRAITH_TABLE", self.table()),
            ("WRAITH_MIGRATION_UUID", plain(&self.migration_id).clone()),
            ("WRAITH_STARTED_AT", self.started_at()),
            ("WRAITH_STATE", p.current_state.to_string()),
            ("WRAITH_ROWS_COPIED", copied.to_string()),
            ("WRAITH_ROWS_TOTAL", total.to_string()),
            (
                "WRAITH_ELAPSED_SECONDS",
                self.started.elapsed().as_secs().to_string(),
            ),
        ]);
        if let Some(e) = error {
            env.insert("WRAITH_ERROR", e.to_string());
        }
        env
    }

    /// Runs the hook of `event`; the caller decides what a failure means.
    pub async fn hook(&self, event: HookEvent) -> Result<(), HookError> {
        self.hooks.run(event, &self.hook_env(None)).await
    }

    /// Runs the hook of `event`, logging a failure.
    pub async fn hook_logged(&self, event: HookEvent, error: Option<&str>) {
        if let Err(e) = self.hooks.run(event, &self.hook_env(error)).await {
            tracing::warn!(error = %e, "hook failed; the run goes on");
            self.progress.emit(RunEvent::HookFailed {
                error: e.to_string(),
            });
        }
    }

    /// Whether `release-window` was asked for.
    pub fn window_released(&self) -> bool {
        self.window_released.load(Ordering::SeqCst)
    }

    /// The window extensions asked for since the last call (taken).
    pub fn take_window_extension(&self) -> Duration {
        Duration::from_secs(self.window_extension_secs.swap(0, Ordering::SeqCst))
    }

    // ----- commands -----

    /// The status as JSON (`status-json`).
    pub fn status_json(&self) -> serde_json::Value {
        let p = self.progress.snapshot();
        let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
        let chunk_size = match self.chunk_rows.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        };
        serde_json::json!({
            "database": self.database,
            "table": self.table(),
            "migration_uuid": plain(&self.migration_id).clone(),
            "started_at": self.started_at(),
            "state": p.current_state,
            // Spirit's `Progress` shape: current_state, summary, tables.
            "current_state": p.current_state,
            "summary": p.summary,
            "tables": p.tables,
            "eta": p.eta,
            "stream": p.stream,
            "rows_copied": copied,
            "rows_total": total,
            "rows_per_sec": p.rows_per_sec,
            "elapsed_secs": p.elapsed_secs,
            "throttled": p.throttled,
            "chunk_size": chunk_size,
            "chunk_rows": self.chunk_rows_target.load(Ordering::Relaxed),
            "last_chunk_rows": self.last_chunk_rows.load(Ordering::Relaxed),
            "threads": self.threads.load(Ordering::Relaxed),
            "active_workers": self.active_workers(),
            "cutover_postponed": self.cutover_postponed(),
            // Sessions the cut-over waits for: id, user, host, command, time_secs, statement, reason.
            "blockers": p.blockers,
            "aborting": self.abort_reason(),
            // While a revert window is open: ends_at, seconds_left, at_end.
            "revert_window": p.revert_window,
        })
    }

    /// The status as one line of `key=value` fields in a fixed order
    /// (`status`). The job's figures come first; `tables=[...]` lists each
    /// table (`name State copied/total pct% applied N backlog N`, `; `
    /// between tables); `blockers=` comes last: its value is free text.
    pub fn status_line(&self) -> String {
        let p = self.progress.snapshot();
        let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
        let chunk = match self.chunk_rows.load(Ordering::Relaxed) {
            0 => format!("auto({})", self.chunk_rows_target.load(Ordering::Relaxed)),
            n => n.to_string(),
        };
        format!(
            "table={}.{} state={} copied={copied}/{total} rows_per_sec={:.0} eta={} \
             applied={} backlog={} binlog={} lag={:.0}s elapsed={:.0}s \
             throttled={} chunk_size={chunk} threads={} active_workers={} cutover_postponed={} \
             tables=[{}] blockers={}",
            self.database,
            self.table(),
            p.current_state,
            p.rows_per_sec,
            p.eta.as_deref().unwrap_or("-"),
            p.stream.as_ref().map_or(0, |s| s.changes_applied),
            p.stream.as_ref().map_or(0, |s| s.changes_backlog),
            p.stream
                .as_ref()
                .and_then(|s| s.binlog_position.as_deref())
                .unwrap_or("-"),
            p.stream.as_ref().map_or(0.0, |s| s.lag_secs),
            p.elapsed_secs,
            p.throttled.as_deref().unwrap_or("no"),
            self.threads.load(Ordering::Relaxed),
            self.active_workers(),
            if self.cutover_postponed() {
                "yes"
            } else {
                "no"
            },
            p.tables
                .iter()
                .map(|t| t.line())
                .collect::<Vec<_>>()
                .join("; "),
            if p.blockers.is_empty() {
                "-".to_string()
            } else {
                p.blockers
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        )
    }

    /// Carries out one command line; the reply, without its final newline.
    pub fn command(&self, line: &str) -> String {
        let line = line.trim();
        let (name, arg) = match line.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (line, None),
        };
        let reply = match (name, arg) {
            ("help", None) => Ok(HELP.trim_end().to_string()),
            ("status", None) => Ok(self.status_line()),
            ("status-json", None) => Ok(self.status_json().to_string()),
            ("chunk-size", Some("auto")) => {
                self.chunk_rows.store(0, Ordering::Relaxed);
                Ok("ok: chunk sizes adapt to the chunk target again".into())
            }
            ("chunk-size", Some(n)) => match n.parse::<u64>() {
                Ok(n) if (1..=1_000_000).contains(&n) => {
                    self.chunk_rows.store(n, Ordering::Relaxed);
                    Ok(format!("ok: chunk-size={n}"))
                }
                _ => Err(format!(
                    "chunk-size wants a number of rows from 1 to 1000000 or `auto`, not {n:?}"
                )),
            },
            ("chunk-target", Some(d)) => match humantime::parse_duration(d) {
                Ok(d) if !d.is_zero() => {
                    self.chunk_target_us
                        .store(d.as_micros().max(1) as u64, Ordering::Relaxed);
                    self.chunk_rows.store(0, Ordering::Relaxed);
                    Ok(format!(
                        "ok: chunk-target={}; chunk sizes adapt",
                        humantime::format_duration(d)
                    ))
                }
                _ => Err(format!(
                    "chunk-target wants a duration above zero like 500ms, not {d:?}"
                )),
            },
            ("threads", Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=self.max_threads).contains(&n) => {
                    self.threads.store(n, Ordering::Relaxed);
                    tracing::info!(threads = n, "copy threads changed");
                    Ok(format!("ok: threads={n}"))
                }
                _ => Err(format!(
                    "threads wants a number from 1 to {}, not {n:?}",
                    self.max_threads
                )),
            },
            ("throttle" | "pause", None) => {
                self.throttler.set_commanded(true);
                Ok("ok: throttled: commanded by user".into())
            }
            ("no-throttle" | "resume", None) => {
                self.throttler.set_commanded(false);
                Ok(match self.throttler.reason() {
                    Some(r) => format!("ok: no longer commanded; still throttled: {r}"),
                    None => "ok: not throttled".into(),
                })
            }
            ("postpone-cutover", None) => {
                self.postponed.store(true, Ordering::Relaxed);
                Ok("ok: the cut-over is postponed until `unpostpone`".into())
            }
            ("unpostpone", None) => {
                self.postponed.store(false, Ordering::Relaxed);
                Ok("ok: the cut-over may go ahead".into())
            }
            ("release-window", None) if self.progress.state() == State::RevertWindow => {
                self.window_released.store(true, Ordering::SeqCst);
                Ok("ok: handing the revert window over; this run exits".into())
            }
            ("release-window", None) => Err(format!(
                "there is no revert window to hand over (the run is in {})",
                self.progress.state()
            )),
            ("extend-window", Some(d)) => match humantime::parse_duration(d) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(31 * 86_400) => {
                    self.window_extension_secs
                        .fetch_add(d.as_secs().max(1), Ordering::SeqCst);
                    Ok(format!(
                        "ok: the revert window is extended by {}",
                        humantime::format_duration(d)
                    ))
                }
                _ => Err(format!(
                    "extend-window wants a duration above zero and up to 31 days like 2h, not {d:?}"
                )),
            },
            ("panic", None) => {
                self.abort("`panic` on the control socket".into());
                Ok("ok: aborting; the source is untouched and a rerun resumes".into())
            }
            (
                "help" | "status" | "status-json" | "throttle" | "pause" | "no-throttle" | "resume"
                | "postpone-cutover" | "unpostpone" | "panic" | "release-window",
                Some(_),
            ) => Err(format!("{name} takes no value")),
            ("chunk-size" | "chunk-target" | "threads" | "extend-window", None) => {
                Err(format!("{name} needs a value: {name}=..."))
            }
            _ => Err(format!(
                "unknown command {line:?}; `help` lists the commands"
            )),
        };
        match reply {
            Ok(r) => r,
            Err(e) => format!("error: {e}"),
        }
    }
}

const HELP: &str = "\
commands (one per line):
  help                    this list
  status                  one line: state, rows, throttle, chunks, threads, tables
  status-json             the same as JSON
  chunk-size=N            copy N rows per chunk (chunk-size=auto: adapt again)
  chunk-target=DURATION   adapt chunk sizes to take about DURATION (e.g. 500ms)
  threads=N               copy with N workers
  throttle | pause        pause the copy (changes keep being applied)
  no-throttle | resume    end a commanded pause
  postpone-cutover        hold the cut-over (the shadow stays in sync)
  unpostpone              let the cut-over go ahead
  panic                   stop now; the source is untouched and a rerun resumes
  extend-window=DURATION  keep the revert window open DURATION longer
  release-window          end this run, leaving the revert window to `wraith revert`/`finish`
";

pub use crate::names::default_socket_path;

/// A listening control socket; removed on drop.
pub struct ControlSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlSocket {
    /// Binds `path` (mode 0600) and serves `ops` on it.
    pub fn bind(path: &Path, ops: Arc<Operations>) -> Result<ControlSocket, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        // Created 0600 from the start (no moment in which others may connect);
        // the run has started nothing else yet that creates files.
        // SAFETY: umask(2) only swaps the process's file mode mask.
        let old_mask = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, ops.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(ControlSocket {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The optional TCP twin of the socket (`[control] tcp_port`), bound to
/// 127.0.0.1 only: the same commands, for tools that cannot open a unix
/// socket. Anyone on the host may connect; leave it off where that matters.
pub struct ControlPort {
    addr: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl ControlPort {
    pub async fn bind(port: u16, ops: Arc<Operations>) -> Result<ControlPort, ControlError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| ControlError::Io {
                path: PathBuf::from(format!("127.0.0.1:{port}")),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ControlError::Io {
            path: PathBuf::from(format!("127.0.0.1:{port}")),
            source,
        })?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, write) = stream.into_split();
                tokio::spawn(serve_lines(read, write, ops.clone()));
            }
        });
        Ok(ControlPort { addr, task })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for ControlPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks the run listening on `path` for `status-json`; `None` when nothing
/// answers within `timeout` (no run, or a stale socket).
pub async fn query_status(path: &Path, timeout: Duration) -> Option<serde_json::Value> {
    let ask = async {
        let stream = UnixStream::connect(path).await.ok()?;
        let (read, mut write) = stream.into_split();
        write.write_all(b"status-json\n").await.ok()?;
        let line = BufReader::new(read).lines().next_line().await.ok()??;
        serde_json::from_str(&line).ok()
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// Sends one command to the run listening on `path`; its reply, or `None`
/// when nothing answers within `timeout`.
pub async fn send_command(path: &Path, command: &str, timeout: Duration) -> Option<String> {
    let ask = async {
        let stream = UnixStream::connect(path).await.ok()?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .ok()?;
        BufReader::new(read).lines().next_line().await.ok()?
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

async fn serve(stream: UnixStream, ops: Arc<Operations>) {
    let (read, write) = stream.into_split();
    serve_lines(read, write, ops).await
}

/// Answers one command per line until the client goes away.
async fn serve_lines(
    read: impl tokio::io::AsyncRead + Unpin,
    mut write: impl tokio::io::AsyncWrite + Unpin,
    ops: Arc<Operations>,
) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let mut reply = ops.command(&line);
        tracing::info!(command = %line.trim(), reply = %reply.lines().next().unwrap_or(""), "control command");
        reply.push('\n');
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The local backend's import is held by the throttle as the copy is.
#[wraith_backend::async_trait]
impl wraith_backend::Pace for Operations {
    async fn ready(&self) {
        self.wait_unthrottled().await;
    }
}
