//! The run configuration: one TOML file per job.
//!
//! Parsing is strict: an unknown key, a wrong type or a missing required key is
//! an error that names the key with its line and column, so a typo never turns
//! into a silently ignored setting. Durations are written like `"500ms"` or
//! `"3s"`, sizes like `"2GiB"`. Passwords are held in [`Secret`], which never
//! prints its value, and error messages about password keys never quote values.
//!
//! Every section and key is documented in `config/README.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A config that could not be loaded: what is wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A password. `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for handing to the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A duration written as text: `"500ms"`, `"3s"`, `"1m 30s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like \"500ms\", \"3s\" or \"2m\""
                ))
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size written as text: `"512MiB"`, `"2GiB"`, `"64KB"`; a bare integer is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size like \"512MiB\" or \"2GiB\""))?
        {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid size {text:?}; write it like \"512MiB\" or \"2GiB\""
                    ))
                }),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// The whole job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: ConnectionConfig,
    /// Where the shadow table lives; absent = the source server.
    pub target: Option<ConnectionConfig>,
    #[serde(rename = "table")]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub copy: CopyConfig,
    #[serde(default)]
    pub local: LocalConfig,
    #[serde(default)]
    pub cutover: CutoverConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub throttle: ThrottleConfig,
    #[serde(default)]
    pub changes: ChangesConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
}

/// The buffer of binlog changes waiting to be applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// Memory for buffered changes; beyond it they spill to disk.
    #[serde(default = "default_changes_memory")]
    pub memory_limit: ByteSize,
    /// Where spilled changes go; default `<sort_dir>/changes-<table>`.
    pub dir: Option<PathBuf>,
}

fn default_changes_memory() -> ByteSize {
    ByteSize(256 << 20)
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig {
            memory_limit: default_changes_memory(),
            dir: None,
        }
    }
}

/// How to reach a server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    pub database: String,
    /// A unix socket; when set, used instead of host and port.
    pub socket: Option<PathBuf>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    3306
}

/// One table to rebuild.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    /// The ALTER TABLE clause without `ALTER TABLE t`; `"FORCE"` for a plain rebuild.
    pub alter: String,
    /// Old column name → new column name, for renames the ALTER does not spell out.
    #[serde(default)]
    pub rename_columns: BTreeMap<String, String>,
    /// Consent to an ALTER that changes values rather than refusing them
    /// (DECIMAL scale rounding, dropped fractional seconds, ...), as the
    /// server's own ALTER would; without it `check` and `run` refuse.
    #[serde(default)]
    pub allow_lossy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pick the fastest correct path for the server and table.
    Auto,
    /// Batched INSERTs straight into the shadow table.
    Sql,
    /// Sort by the new primary key in RocksDB, then import in key order.
    Local,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Sql => "sql",
            BackendKind::Local => "local",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Parallel chunk readers (and writers).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Chunk sizes adapt so one chunk takes about this long.
    #[serde(default = "default_chunk_target")]
    pub chunk_target: HumanDuration,
    /// Rows in the first chunk, before any timing is known.
    #[serde(default = "default_initial_chunk_rows")]
    pub initial_chunk_rows: u64,
    /// Leave secondary indexes out of the shadow table and build them once after the copy.
    #[serde(default = "default_true")]
    pub defer_secondary_indexes: bool,
    /// With the `sql` backend and the shadow on the source server, copy each
    /// chunk with one `INSERT ... SELECT` (no rows travel to wraith).
    #[serde(default = "default_true")]
    pub server_side_copy: bool,
}

fn default_backend() -> BackendKind {
    BackendKind::Auto
}
fn default_threads() -> usize {
    4
}
fn default_chunk_target() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_initial_chunk_rows() -> u64 {
    1000
}
fn default_true() -> bool {
    true
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig {
            backend: default_backend(),
            threads: default_threads(),
            chunk_target: default_chunk_target(),
            initial_chunk_rows: default_initial_chunk_rows(),
            defer_secondary_indexes: true,
            server_side_copy: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where the `local` backend keeps its sorted engines (one RocksDB per engine).
    #[serde(default = "default_sort_dir")]
    pub sort_dir: PathBuf,
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Rows for about this many bytes go into one engine; a full engine is
    /// imported while the copy fills the next.
    #[serde(default = "default_engine_size")]
    pub engine_size: ByteSize,
}

fn default_engine_size() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_sort_dir() -> PathBuf {
    std::env::temp_dir().join("wraith-sort")
}
fn default_memory_limit() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_compression() -> Compression {
    Compression::Zstd
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            sort_dir: default_sort_dir(),
            memory_limit: default_memory_limit(),
            compression: default_compression(),
            engine_size: default_engine_size(),
        }
    }
}

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
        }
    }
}

impl CutoverConfig {
    fn validate(&self) -> Result<(), String> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointStore {
    /// A table in the target schema (`_wraith_checkpoint`).
    Table,
    /// A local file at `path`.
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    #[serde(default = "default_checkpoint_store")]
    pub store: CheckpointStore,
    /// Required with `store = "file"`.
    pub path: Option<PathBuf>,
    #[serde(default = "default_checkpoint_interval")]
    pub interval: HumanDuration,
    /// A checkpoint older than this is refused (`CheckpointTooOld`).
    #[serde(default = "default_checkpoint_max_age")]
    pub max_age: HumanDuration,
}

fn default_checkpoint_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 24 * 3600))
}

fn default_checkpoint_store() -> CheckpointStore {
    CheckpointStore::Table
}
fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: default_checkpoint_store(),
            path: None,
            interval: default_checkpoint_interval(),
            max_age: default_checkpoint_max_age(),
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
}

fn default_throttle_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_critical_load_interval() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}
fn default_heartbeat_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
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
        }
    }
}

impl ThrottleConfig {
    /// `max_load` with `max_threads_running` folded in.
    pub fn load_limits(&self) -> BTreeMap<String, u64> {
        let mut limits = self.max_load.clone();
        if let Some(n) = self.max_threads_running {
            limits.entry("Threads_running".into()).or_insert(n);
        }
        limits
    }

    fn validate(&self) -> Result<(), String> {
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
                "[throttle] heartbeat_interval must be at least 10ms, e.g. \"500ms\"".into(),
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
        Ok(())
    }
}

/// One path or a list of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathList(pub Vec<PathBuf>);

impl<'de> Deserialize<'de> for PathList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a path or a list of paths"))?
        {
            Raw::One(p) => Ok(PathList(vec![p])),
            Raw::Many(v) => Ok(PathList(v)),
        }
    }
}

/// The control socket of a run (see [`crate::control`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the unix socket; default `<sort_dir>/wraith-<schema>-<table>.sock`.
    pub socket: Option<PathBuf>,
    /// Also answer on this TCP port of 127.0.0.1 (`0`: any free port); off by default.
    pub tcp_port: Option<u16>,
}

/// Hook executables run at points of a run (see [`crate::hooks`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// The directory holding `on-startup`, `on-success`, ...; absent = no hooks.
    pub dir: Option<PathBuf>,
    /// A hook still running after this long is killed and counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout: HumanDuration,
    /// How often `on-status` runs.
    #[serde(default = "default_status_interval")]
    pub status_interval: HumanDuration,
}

fn default_hook_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_status_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            dir: None,
            timeout: default_hook_timeout(),
            status_interval: default_status_interval(),
        }
    }
}

impl ConnectionConfig {
    /// Resolves the password from `password`, `password_env` or `password_file`.
    pub fn resolve_password(&self) -> Result<Option<Secret>, String> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map(|v| Some(Secret(v))).map_err(|_| {
                format!("password_env names the environment variable {var}, which is not set")
            });
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
            let first = text.lines().next().unwrap_or("").to_string();
            return Ok(Some(Secret(first)));
        }
        Ok(None)
    }

    /// `user@host:port/database` (or the socket), for messages. Never shows the password.
    pub fn describe(&self) -> String {
        match &self.socket {
            Some(s) => format!("{}@{}/{}", self.user, s.display(), self.database),
            None => format!(
                "{}@{}:{}/{}",
                self.user, self.host, self.port, self.database
            ),
        }
    }
}

/// A config file's text.
pub(crate) fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Config text as `T`; a TOML error names the line and column in `origin`.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        let mut message = e.message().trim().to_string();
        let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
        // A wrong-typed password would be quoted in the message: never show it.
        if line_text.contains("password") && !message.starts_with("unknown field") {
            message = "invalid value for a password key (the value is not shown); \
                       a password must be a string"
                .into();
        }
        ConfigError::Parse {
            path: origin.to_string(),
            line,
            column,
            message,
        }
    })
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read_config(path)?, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, origin)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        validate_connection("source", &self.source)?;
        if let Some(t) = &self.target {
            validate_connection("target", t)?;
        }
        if self.tables.is_empty() {
            return Err("no [[table]] given; add one with `name` and `alter`".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tables {
            check_identifier("[[table]] name", &t.name)?;
            if !seen.insert(t.name.as_str()) {
                return Err(format!(
                    "table {:?} is listed twice in [[table]]; list each table once",
                    t.name
                ));
            }
            if t.alter.trim().is_empty() {
                return Err(format!(
                    "[[table]] {:?} has an empty alter; write the clause after `ALTER TABLE {}`, \
                     e.g. \"ADD COLUMN x INT\" (or \"FORCE\" for a plain rebuild)",
                    t.name, t.name
                ));
            }
            // The shadow table name adds 5 characters (`_` + `_new`); the
            // server counts characters, not bytes.
            if t.name.chars().count() > 59 {
                return Err(format!(
                    "table name {:?} is {} characters; wraith needs at most 59 so that `_{}_new` fits MySQL's 64",
                    t.name,
                    t.name.chars().count(),
                    t.name
                ));
            }
            for (old, new) in &t.rename_columns {
                check_identifier("rename_columns key", old)?;
                check_identifier("rename_columns value", new)?;
            }
        }
        if self.copy.threads == 0 || self.copy.threads > 256 {
            return Err(format!(
                "[copy] threads = {} is out of range; use 1 to 256",
                self.copy.threads
            ));
        }
        if self.copy.chunk_target.0.is_zero() {
            return Err("[copy] chunk_target must be above zero, e.g. \"500ms\"".into());
        }
        if self.copy.initial_chunk_rows == 0 {
            return Err("[copy] initial_chunk_rows must be at least 1".into());
        }
        if self.local.memory_limit.0 < (16 << 20) {
            return Err(format!(
                "[local] memory_limit = {} is too small; give at least 16MiB",
                self.local.memory_limit
            ));
        }
        if self.cutover.lock_wait_timeout.0 < Duration::from_secs(1) {
            return Err(
                "[cutover] lock_wait_timeout must be at least 1s (MySQL counts it in whole seconds)"
                    .into(),
            );
        }
        self.cutover.validate()?;
        if self.checkpoint.store == CheckpointStore::File && self.checkpoint.path.is_none() {
            return Err(
                "[checkpoint] store = \"file\" needs a path, e.g. path = \"wraith.checkpoint\""
                    .into(),
            );
        }
        if self.checkpoint.interval.0.is_zero() {
            return Err("[checkpoint] interval must be above zero, e.g. \"10s\"".into());
        }
        self.throttle.validate()?;
        if self.hooks.timeout.0.is_zero() || self.hooks.status_interval.0.is_zero() {
            return Err(
                "[hooks] timeout and status_interval must be above zero, e.g. \"60s\"".into(),
            );
        }
        Ok(())
    }

    /// The server the shadow table is written to.
    pub fn target(&self) -> &ConnectionConfig {
        self.target.as_ref().unwrap_or(&self.source)
    }
}

pub(crate) fn validate_connection(section: &str, c: &ConnectionConfig) -> Result<(), String> {
    let given = [
        c.password.is_some().then_some("password"),
        c.password_env.is_some().then_some("password_env"),
        c.password_file.is_some().then_some("password_file"),
    ];
    let given: Vec<&str> = given.into_iter().flatten().collect();
    if given.len() > 1 {
        return Err(format!(
            "[{section}] sets {}; keep only one way to give the password",
            given.join(" and ")
        ));
    }
    if c.user.is_empty() {
        return Err(format!("[{section}] user is empty"));
    }
    check_identifier(&format!("[{section}] database"), &c.database)?;
    if c.port == 0 {
        return Err(format!("[{section}] port must be between 1 and 65535"));
    }
    Ok(())
}

pub(crate) fn check_identifier(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.chars().count() > 64 {
        return Err(format!("{what} {name:?} is longer than 64 characters"));
    }
    if name.contains('`') || name.contains('\0') || name.ends_with(' ') {
        return Err(format!(
            "{what} {name:?} contains a backtick, a NUL or a trailing space, which wraith does not accept in names"
        ));
    }
    Ok(())
}

pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
user = "root"
database = "app"

[[table]]
name = "orders"
alter = "ADD COLUMN note TEXT"
"#;

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.source.port, 3306);
        assert_eq!(c.copy.backend, BackendKind::Auto);
        assert_eq!(c.cutover.lock_wait_timeout.0, Duration::from_secs(3));
        assert_eq!(c.cutover.lock_attempt_timeout.0, Duration::from_millis(100));
        assert!(!c.cutover.kill_blockers && c.cutover.blocker_grace.is_none());
        assert_eq!(c.local.memory_limit.0, 512 << 20);
        assert_eq!(c.target().database, "app");
    }

    #[test]
    fn sizes_and_durations_parse() {
        let text =
            format!("{GOOD}\n[local]\nmemory_limit = \"2GiB\"\n[copy]\nchunk_target = \"250ms\"\n");
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.local.memory_limit.0, 2 << 30);
        assert_eq!(c.copy.chunk_target.0, Duration::from_millis(250));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = GOOD.replace("user = \"root\"", "user = \"root\"\nhots = \"x\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:4:1:"), "{e}");
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn throttle_sources_parse_and_are_checked() {
        let text = format!(
            "{GOOD}\n[throttle]\nflag_file = \"/tmp/a\"\nmax_load = {{ Threads_running = 50 }}\n\
             max_threads_running = 9\ncritical_load = {{ Threads_connected = 400 }}\n\
             critical_load_interval = \"2s\"\n"
        );
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.throttle.critical_load_interval.0, Duration::from_secs(2));
        assert_eq!(
            Config::parse(GOOD, "t.toml")
                .unwrap()
                .throttle
                .critical_load_interval
                .0,
            Duration::ZERO
        );
        assert_eq!(c.throttle.flag_file.0, vec![PathBuf::from("/tmp/a")]);
        assert_eq!(c.throttle.load_limits()["Threads_running"], 50);
        assert_eq!(c.throttle.critical_load["Threads_connected"], 400);
        let list = format!("{GOOD}\n[throttle]\nflag_file = [\"/a\", \"/b\"]\n");
        assert_eq!(
            Config::parse(&list, "t")
                .unwrap()
                .throttle
                .flag_file
                .0
                .len(),
            2
        );
        let lag = format!(
            "{GOOD}\n[throttle]\nmax_lag = \"2s\"\n[[throttle.replica]]\nport = 3307\nuser = \"r\"\n"
        );
        let c = Config::parse(&lag, "t").unwrap();
        assert_eq!(c.throttle.replicas[0].connection("app").port, 3307);
        for (bad, says) in [
            ("[throttle]\nmax_lag = \"2s\"\n", "needs the replicas"),
            (
                "[throttle]\nmax_load = { \"Threads running\" = 1 }\n",
                "not a global status",
            ),
            ("[throttle]\ninterval = \"1ms\"\n", "at least 100ms"),
            ("[throttle]\nflag_file = 3\n", "a path or a list"),
            ("[control]\nsockett = \"/x\"\n", "sockett"),
            ("[hooks]\ntimeout = \"0s\"\n", "above zero"),
            ("[cutover]\nkill_blockers = true\n", "needs blocker_grace"),
            (
                "[cutover]\nblocker_grace = \"5s\"\n",
                "add kill_blockers = true",
            ),
            (
                "[cutover]\nlock_attempt_timeout = \"5s\"\n",
                "lock_attempt_timeout",
            ),
            (
                "[cutover]\nlock_attempt_timeout = \"1ms\"\n",
                "out of range",
            ),
        ] {
            let e = Config::parse(&format!("{GOOD}\n{bad}"), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn password_value_never_in_error() {
        let text = GOOD.replace("user = \"root\"", "user = \"root\"\npassword = 987654321");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(!e.contains("987654321"), "{e}");
        let c = Config::parse(
            &GOOD.replace("user = \"root\"", "user = \"root\"\npassword = \"hunter2\""),
            "t",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
