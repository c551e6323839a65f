//! The config's sections other than the cut-over and throttle ones: the
//! connections, the tables, how rows are copied (`[copy]`, `[local]`), the
//! change buffer, checkpoints, the control socket and hooks. Each section is
//! a struct with `deny_unknown_fields` and its defaults beside it; the checks
//! across sections are in [`Config::parse`](super::Config::parse).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::default_true;
use super::{ByteSize, HumanDuration, Secret};

/// The buffer of binlog changes waiting to be applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesConfig {
    /// Memory for buffered changes; beyond it they spill to disk.
    #[serde(default = "default_changes_memory")]
    pub memory_limit: ByteSize,
    /// The directory under which spilled changes go (in
    /// `changes-<schema>-<table>`, see `names::changes_dir`); default `sort_dir`.
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

pub(super) fn default_host() -> String {
    "127.0.0.1".into()
}
pub(super) fn default_port() -> u16 {
    3306
}

/// One table to rebuild.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    /// The table's schema when it is not `[source] database` (a job may
    /// change tables of several schemas of one server together).
    pub schema: Option<String>,
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
    /// Leave secondary indexes out of the shadow table and build them once
    /// after the copy. Unset: deferred unless replicas are watched (see
    /// [`super::Config::defers_secondary_indexes`]).
    #[serde(default)]
    pub defer_secondary_indexes: Option<bool>,
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
impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig {
            backend: default_backend(),
            threads: default_threads(),
            chunk_target: default_chunk_target(),
            initial_chunk_rows: default_initial_chunk_rows(),
            defer_secondary_indexes: None,
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

/// The control socket of a run (see [`crate::control`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the unix socket; default `<sort_dir>/wraith-<schema>-<table>.sock`.
    pub socket: Option<PathBuf>,
    /// Also answer on this TCP port of 127.0.0.1 (`0`: any free port); off by default.
    pub tcp_port: Option<u16>,
}

/// `[registry]`: where `wraith submit`, `wraith migrations` and `wraith
/// serve` keep the requests (see [`crate::registry`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The schema wraith owns on the server, created on first use.
    #[serde(default = "default_registry_schema")]
    pub schema: String,
}

fn default_registry_schema() -> String {
    "_wraith".to_string()
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            schema: default_registry_schema(),
        }
    }
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
            return std::env::var(var)
                .map(|v| Some(Secret::new(v)))
                .map_err(|_| {
                    format!("password_env names the environment variable {var}, which is not set")
                });
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read password_file {}: {e}", file.display()))?;
            let first = text.lines().next().unwrap_or("").to_string();
            return Ok(Some(Secret::new(first)));
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

/// What a run does with the tables whose foreign keys reference a rebuilt
/// table (`[foreign_keys] children`, see [`crate::foreign_keys`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChildrenPolicy {
    /// Preflight refuses the parent, naming each child and what "rebuild" would cost.
    #[default]
    Refuse,
    /// The cut-over re-points each child's constraint at the new table.
    Rebuild,
}

impl fmt::Display for ChildrenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChildrenPolicy::Refuse => "refuse",
            ChildrenPolicy::Rebuild => "rebuild",
        })
    }
}

/// `[foreign_keys]`: how a table that takes part in foreign keys is rebuilt.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignKeysConfig {
    /// Tables whose constraints reference the rebuilt table: `refuse` (default) or `rebuild`.
    #[serde(default)]
    pub children: ChildrenPolicy,
}
