//! The cut-over and throttle sections: the bounds a run keeps to while it
//! holds locks (`[cutover]`: lock waits, the hold budget, retries) and while
//! it loads the servers (`[throttle]`: flag files, load limits, replica lag).
//! Each has a `validate` for the ranges the file alone can judge (a lock wait
//! above a year, a hold budget longer than the wait), called by
//! [`Config::parse`](super::Config::parse); `[throttle]` is the part a SIGHUP
//! reloads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::default_true;
use super::sections::{default_host, default_port};
use super::{validate_connection, ConnectionConfig, HumanDuration, PathList, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// `false`: stop after the verified copy and leave the shadow table beside the source.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The server's `lock_wait_timeout` for the cut-over's sessions: the
    /// RENAME's wait and other backstops (whole seconds).
    #[serde(default = "default_lock_wait_timeout")]
    pub lock_wait_timeout: HumanDuration,
    /// Longest one lock request may stand queued; the application's writes
    /// to the table queue behind it meanwhile.
    #[serde(default = "default_lock_attempt_timeout")]
    pub lock_attempt_timeout: HumanDuration,
    /// Longest the cut-over may hold the granted lock (drain, verification,
    /// AUTO_INCREMENT) before the RENAME is let through; past it the attempt
    /// lets go and counts as failed. The application's worst wait is about
    /// `lock_attempt_timeout` + this.
    #[serde(default = "default_lock_hold_budget")]
    pub lock_hold_budget: HumanDuration,
    /// Lock attempts that may fail before the run gives up.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Pause after a failed lock attempt; doubles after each, up to 16 times this.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: HumanDuration,
    /// Kill the sessions that block the cut-over after `blocker_grace`.
    #[serde(default)]
    pub kill_blockers: bool,
    /// With `kill_blockers`: how long a blocker may hold the cut-over first.
    pub blocker_grace: Option<HumanDuration>,
    /// While this file exists, keep the shadow table in sync but do not cut over.
    pub postpone_flag_file: Option<PathBuf>,
    #[serde(default)]
    pub drop_old_table: bool,
    /// With cut-over disabled: after verifying, keep applying changes until
    /// interrupted (`true`), or stop at once leaving the verified shadow (`false`).
    #[serde(default = "default_true")]
    pub keep_in_sync: bool,
    /// Several `[[table]]`s: swap them all in one atomic RENAME (`true`, the
    /// default), or each on its own, one after another (`false`, for
    /// unrelated tables).
    pub together: Option<bool>,
    /// After the cut-over, keep `_t_old` in step with the live table for this
    /// long, so that `wraith revert` can swap back (off when absent).
    pub revert_window: Option<HumanDuration>,
    /// What the window's end does: `finish` (drop the old table) or `keep`
    /// (go on following until `wraith finish` or `wraith revert`).
    #[serde(default)]
    pub window_end: WindowEnd,
    /// A revert refuses when the window's stream is further behind than this.
    #[serde(default = "default_revert_max_lag")]
    pub revert_max_lag: HumanDuration,
}

/// What the revert window's end does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowEnd {
    /// Drop the old table, as `wraith finish` does.
    #[default]
    Finish,
    /// Keep following until the operator decides.
    Keep,
}

fn default_revert_max_lag() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_lock_wait_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_lock_attempt_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_lock_hold_budget() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}
fn default_retries() -> u32 {
    10
}
fn default_retry_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            enabled: true,
            lock_wait_timeout: default_lock_wait_timeout(),
            lock_attempt_timeout: default_lock_attempt_timeout(),
            lock_hold_budget: default_lock_hold_budget(),
            retries: default_retries(),
            retry_backoff: default_retry_backoff(),
            kill_blockers: false,
            blocker_grace: None,
            postpone_flag_file: None,
            drop_old_table: false,
            keep_in_sync: true,
            together: None,
            revert_window: None,
            window_end: WindowEnd::Finish,
            revert_max_lag: default_revert_max_lag(),
        }
    }
}

impl CutoverConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        let attempt = self.lock_attempt_timeout.0;
        if attempt < Duration::from_millis(10) || attempt > self.lock_wait_timeout.0 {
            return Err(format!(
                "[cutover] lock_attempt_timeout = \"{}\" is out of range; give 10ms up to \
                 lock_wait_timeout ({}), e.g. \"100ms\": the application's writes queue behind \
                 each attempt for that long",
                self.lock_attempt_timeout, self.lock_wait_timeout
            ));
        }
        let hold = self.lock_hold_budget.0;
        if hold < Duration::from_millis(10) || hold > self.lock_wait_timeout.0 {
            return Err(format!(
                "[cutover] lock_hold_budget = \"{}\" is out of range; give 10ms up to \
                 lock_wait_timeout ({}), e.g. \"250ms\": the application's writes wait on the \
                 granted lock for up to that long",
                self.lock_hold_budget, self.lock_wait_timeout
            ));
        }
        // The server's own maximum; larger values would also overflow the
        // deadlines wraith derives from it.
        if self.lock_wait_timeout.0 > Duration::from_secs(31_536_000) {
            return Err(format!(
                "[cutover] lock_wait_timeout = \"{}\" is above the server's maximum of one year; \
                 give a few seconds, e.g. \"3s\"",
                self.lock_wait_timeout
            ));
        }
        if let Some(window) = &self.revert_window {
            if !self.enabled {
                return Err(
                    "[cutover] revert_window needs the cut-over: it keeps the old table in step \
                     after it; remove revert_window or set enabled = true"
                        .into(),
                );
            }
            if window.0 < Duration::from_secs(1) || window.0 > Duration::from_secs(31 * 86_400) {
                return Err(format!(
                    "[cutover] revert_window = \"{window}\" is out of range; give 1s up to 31 days, \
                     e.g. \"24h\""
                ));
            }
            if self.drop_old_table {
                return Err(
                    "[cutover] drop_old_table = true drops the old table the revert window keeps \
                     in step; remove one of them (`wraith finish` drops the old table at the \
                     window's end)"
                        .into(),
                );
            }
        }
        if self.retry_backoff.0.is_zero() || self.retry_backoff.0 > Duration::from_secs(3600) {
            return Err(format!(
                "[cutover] retry_backoff = \"{}\" is out of range; give more than zero and at most \
                 an hour, e.g. \"500ms\"",
                self.retry_backoff
            ));
        }
        match (self.kill_blockers, &self.blocker_grace) {
            (true, None) => Err(
                "[cutover] kill_blockers = true needs blocker_grace, how long a blocking session \
                 may hold the cut-over before it is killed, e.g. blocker_grace = \"30s\""
                    .into(),
            ),
            (false, Some(_)) => Err(
                "[cutover] blocker_grace is set but kill_blockers is not; add kill_blockers = true \
                 to kill blocking sessions after the grace, or remove blocker_grace to wait for them"
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}

/// When the copy pauses (see [`crate::throttle`]). Reloaded on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Pause the copy while any of these files exists (one path or a list).
    #[serde(default)]
    pub flag_file: PathList,
    /// Pause the copy while a global status variable is above its threshold,
    /// e.g. `{ Threads_running = 50 }`.
    #[serde(default)]
    pub max_load: BTreeMap<String, u64>,
    /// Stop the run (resumable) when a global status variable is above its threshold.
    #[serde(default)]
    pub critical_load: BTreeMap<String, u64>,
    /// When `critical_load` is passed, look again after this long and stop
    /// only if it still is (gh-ost's `--critical-load-interval-millis`); `0s`
    /// stops at the first reading.
    #[serde(default = "default_critical_load_interval")]
    pub critical_load_interval: HumanDuration,
    /// Shorthand for `max_load = { Threads_running = N }`.
    pub max_threads_running: Option<u64>,
    /// Pause the copy while a replica lags more than this (needs `[[throttle.replica]]`).
    pub max_lag: Option<HumanDuration>,
    /// The replicas whose lag is measured, through a heartbeat table.
    #[serde(default, rename = "replica")]
    pub replicas: Vec<ReplicaConfig>,
    /// How often the heartbeat is written on the source (with replicas).
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// How often the throttler looks at its sources.
    #[serde(default = "default_throttle_interval")]
    pub interval: HumanDuration,
    /// The server's write debt (see [`crate::throttle`]): pause the copy
    /// while the redo not yet checkpointed is above this share (%) of what
    /// the redo log can hold (`Innodb_checkpoint_age` of
    /// `Innodb_checkpoint_max_age`). Near its end InnoDB flushes in a hurry
    /// and every writer waits; 0 (the default) turns it off.
    #[serde(default = "default_max_checkpoint_age_pct")]
    pub max_checkpoint_age_pct: u64,
    /// Pause the copy while more than this share (%) of the buffer pool's
    /// pages is dirty (`Innodb_buffer_pool_pages_dirty` of `_total`); 0 (the
    /// default) turns it off. Set it only above the server's
    /// `innodb_max_dirty_pages_pct_lwm` (when that is not 0): below the
    /// point where InnoDB starts flushing by itself the pages may never
    /// drop, and the copy would wait for ever.
    #[serde(default = "default_max_dirty_pages_pct")]
    pub max_dirty_pages_pct: u64,
    /// Pause the copy while the purge backlog (`Innodb_history_list_length`)
    /// is above this; 0 (the default) turns it off.
    #[serde(default = "default_max_purge_backlog")]
    pub max_purge_backlog: u64,
}

fn default_max_checkpoint_age_pct() -> u64 {
    0
}
fn default_max_dirty_pages_pct() -> u64 {
    0
}
fn default_max_purge_backlog() -> u64 {
    0
}

fn default_throttle_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_critical_load_interval() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_heartbeat_interval() -> HumanDuration {
    // gh-ost's default: the lag is read at every beat, so this is how late
    // the lag throttle can trip.
    HumanDuration(Duration::from_millis(100))
}

/// A replica of the source; its lag throttles the copy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub socket: Option<PathBuf>,
    pub user: String,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl ReplicaConfig {
    /// How to reach the replica's copy of `database`.
    pub fn connection(&self, database: &str) -> ConnectionConfig {
        ConnectionConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            database: database.to_string(),
            socket: self.socket.clone(),
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            flag_file: PathList::default(),
            max_load: BTreeMap::new(),
            critical_load: BTreeMap::new(),
            critical_load_interval: default_critical_load_interval(),
            max_threads_running: None,
            max_lag: None,
            replicas: Vec::new(),
            heartbeat_interval: default_heartbeat_interval(),
            interval: default_throttle_interval(),
            max_checkpoint_age_pct: default_max_checkpoint_age_pct(),
            max_dirty_pages_pct: default_max_dirty_pages_pct(),
            max_purge_backlog: default_max_purge_backlog(),
        }
    }
}

/// The shortest chunk the replica cap gives: below it a chunk's own
/// round trips cost more than the lag they save.
const MIN_REPLICA_CHUNK_TARGET: Duration = Duration::from_millis(20);

impl ThrottleConfig {
    /// `max_load` with `max_threads_running` folded in.
    pub fn load_limits(&self) -> BTreeMap<String, u64> {
        let mut limits = self.max_load.clone();
        if let Some(n) = self.max_threads_running {
            limits.entry("Threads_running".into()).or_insert(n);
        }
        limits
    }

    /// The longest a copy chunk may take with `threads` copying: the
    /// configured `chunk_target`, or with replicas watched at most a quarter
    /// of `max_lag` shared by the threads. A replica applies the copy's
    /// chunks one after another, so the work in flight when the lag
    /// throttle trips (one chunk per thread) is lag still to come; kept to
    /// a quarter of `max_lag`, the lag stays under 1.5 × `max_lag` even
    /// with the check's own delay.
    pub fn chunk_target(&self, chunk_target: Duration, threads: usize) -> Duration {
        match (self.max_lag, self.replicas.is_empty()) {
            (Some(max_lag), false) => {
                let share = max_lag.0 / (4 * threads.max(1) as u32);
                chunk_target.min(share.max(MIN_REPLICA_CHUNK_TARGET))
            }
            _ => chunk_target,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        match (&self.max_lag, self.replicas.is_empty()) {
            (Some(_), true) => {
                return Err("[throttle] max_lag needs the replicas to watch: add a \
                            [[throttle.replica]] with host, port and user for each"
                    .into())
            }
            (None, false) => {
                return Err("[[throttle.replica]] is given without [throttle] max_lag; \
                            add max_lag = \"2s\" (or remove the replicas)"
                    .into())
            }
            (Some(lag), false) if lag.0.is_zero() => {
                return Err("[throttle] max_lag must be above zero, e.g. \"2s\"".into())
            }
            _ => {}
        }
        for replica in &self.replicas {
            validate_connection("[throttle.replica]", &replica.connection("replica"))?;
        }
        if self.heartbeat_interval.0 < Duration::from_millis(10) {
            return Err(
                "[throttle] heartbeat_interval must be at least 10ms, e.g. \"100ms\"".into(),
            );
        }
        for (section, limits) in [
            ("max_load", &self.max_load),
            ("critical_load", &self.critical_load),
        ] {
            for name in limits.keys() {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "[throttle] {section}: {name:?} is not a global status variable name \
                         (letters, digits and _ only), e.g. Threads_running"
                    ));
                }
            }
        }
        if self.interval.0 < Duration::from_millis(100) {
            return Err("[throttle] interval must be at least 100ms, e.g. \"1s\"".into());
        }
        for (name, pct) in [
            ("max_checkpoint_age_pct", self.max_checkpoint_age_pct),
            ("max_dirty_pages_pct", self.max_dirty_pages_pct),
        ] {
            if pct > 100 {
                return Err(format!(
                    "[throttle] {name} = {pct} is a share of 100: give 1 to 100, or 0 to turn it off"
                ));
            }
        }
        Ok(())
    }
}
