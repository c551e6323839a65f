//! # The run configuration: one TOML file per job
//!
//! Parsing is strict: an unknown key, a wrong type or a missing required key is
//! an error that names the key with its line and column, so a typo never turns
//! into a silently ignored setting. Durations are written like `"500ms"` or
//! `"3s"`, sizes like `"2GiB"`. Passwords are held in [`Secret`], which never
//! prints its value, and error messages about password keys never quote values.
//!
//! Every section and key is documented in `config/README.md`.
//!
//! What it leaves to others: whether the servers and the table allow the job
//! ([`crate::preflight`]), and what the paths name on disk ([`crate::paths`]).
//! Checks here are the ones the file alone can answer (ranges, names, one
//! setting against another), after parsing, in [`Config::parse`].
//!
//! The parts, all re-exported here so `crate::config::X` is the one path:
//! - `values`: the value types of keys ([`Secret`], [`HumanDuration`],
//!   [`ByteSize`], [`PathList`]);
//! - `sections`: the connection, table, copy, local, changes, checkpoint,
//!   control and hooks sections;
//! - `limits`: the cut-over and throttle sections, the bounds a run keeps to
//!   while it holds locks or loads the servers, with their own checks.
//!
//! Errors: [`ConfigError`]: the file cannot be read, is not valid TOML for the
//! job's shape (with line and column), or breaks a rule (with the key and the fix).

mod limits;
mod sections;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use limits::{CutoverConfig, ReplicaConfig, ThrottleConfig, WindowEnd};
pub use sections::{
    BackendKind, ChangesConfig, CheckpointConfig, CheckpointStore, ChildrenPolicy, Compression,
    ConnectionConfig, ControlConfig, CopyConfig, ForeignKeysConfig, HooksConfig, LocalConfig,
    RegistryConfig, TableConfig,
};
pub use values::{ByteSize, HumanDuration, PathList, Secret};

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
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub foreign_keys: ForeignKeysConfig,
}

/// `serde` default of the switches that are on unless turned off.
fn default_true() -> bool {
    true
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
        // A wrong-typed password would be quoted in the message: never show
        // it. The error's place decides, not its words: one that points
        // past the line's `=` is about a value (an unknown key points at
        // the key, and is shown).
        let about_value = line_text
            .find('=')
            .is_some_and(|eq| column > line_text[..eq].chars().count());
        if line_text.contains("password") && about_value {
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

    /// Whether the tables are cut over together (one group, one RENAME).
    pub fn together(&self) -> bool {
        self.cutover.together.unwrap_or(true)
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
            if let Some(schema) = &t.schema {
                check_identifier("[[table]] schema", schema)?;
            }
            if !seen.insert((self.schema_of(t), t.name.as_str())) {
                return Err(format!(
                    "table {}.{} is listed twice in [[table]]; list each table once",
                    self.schema_of(t),
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
        check_identifier("[registry] schema", &self.registry.schema)?;
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

    /// Whether the shadow tables live on the source server (no `[target]`,
    /// or one naming the same server).
    pub fn same_server(&self) -> bool {
        self.target.as_ref().is_none_or(|t| {
            let s = &self.source;
            t.host == s.host && t.port == s.port && t.socket == s.socket
        })
    }

    /// Whether secondary indexes are built after the copy: `[copy]
    /// defer_secondary_indexes`, or when unset, only while no replica is
    /// watched. A deferred build is one statement, and each replica applies
    /// it alone after the source has finished, lagging by its whole length
    /// (hours on a big table): the lag the replica throttle exists to
    /// prevent. Kept in the shadow, the indexes grow with every chunk, and
    /// the replica's lag stays at the pace the throttle holds.
    pub fn defers_secondary_indexes(&self) -> bool {
        self.copy
            .defer_secondary_indexes
            .unwrap_or(self.throttle.replicas.is_empty())
    }

    /// The schema of `table`: its own, else `[source] database`.
    pub fn schema_of<'a>(&'a self, table: &'a TableConfig) -> &'a str {
        table.schema.as_deref().unwrap_or(&self.source.database)
    }

    /// Where `table`'s shadow lives: its own schema when it names one, else
    /// the target's database.
    pub fn target_schema_of<'a>(&'a self, table: &'a TableConfig) -> &'a str {
        table.schema.as_deref().unwrap_or(&self.target().database)
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

    /// Every example in `config/` parses, so the examples stay true.
    #[test]
    fn the_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("[import]") {
                crate::import::config::ImportJobConfig::parse(&text, &path.display().to_string())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else if !text.lines().any(|l| l.trim() == "[[table]]") {
                // `wraith serve`'s server config.
                crate::registry::ServerConfig::parse(&text, &path.display().to_string())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                let c = Config::parse(&text, &path.display().to_string())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if path.ends_with("together.toml") {
                    assert!(c.together() && c.tables.len() == 3);
                }
            }
            seen += 1;
        }
        assert!(seen >= 6, "{seen} examples in {}", dir.display());
    }

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
        // With a replica watched: indexes kept in the shadow, chunks short
        // enough that the work in flight is a quarter of max_lag.
        assert!(!c.defers_secondary_indexes());
        assert!(Config::parse(GOOD, "t").unwrap().defers_secondary_indexes());
        let told = lag.replace(
            "[throttle]",
            "[copy]\ndefer_secondary_indexes = true\n[throttle]",
        );
        assert!(Config::parse(&told, "t")
            .unwrap()
            .defers_secondary_indexes());
        let half = Duration::from_millis(500);
        assert_eq!(c.throttle.chunk_target(half, 4), Duration::from_millis(125));
        assert_eq!(c.throttle.chunk_target(half, 1), half);
        assert_eq!(
            c.throttle.chunk_target(half, 1000),
            Duration::from_millis(20)
        );
        let unwatched = Config::parse(GOOD, "t").unwrap();
        assert_eq!(unwatched.throttle.chunk_target(half, 4), half);
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
        // An unknown key that names a password is about the key: said as is.
        let e = Config::parse(
            &GOOD.replace("user = \"root\"", "user = \"root\"\npassword_fil = \"x\""),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("password_fil"), "{e}");
        assert!(!e.contains("value is not shown"), "{e}");
    }
}
