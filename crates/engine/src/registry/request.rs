//! A request and the job it becomes.
//!
//! `SERVER_CONFIG` is a job config without `[[table]]`: the server, and the
//! settings every request on it shares. A [`Request`] holds what one
//! request adds: its tables with their ALTERs, and its options (backend,
//! postponed completion, revert window, sections of a submitted job). The
//! job a request runs as is the two put together as TOML *values* and parsed
//! by the strict config parser ([`ServerConfig::job`]), so a request is
//! validated exactly like a hand-written job and no text of it is ever
//! pasted into a config or a statement.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{parse_toml, read_config, Config, ConfigError};
use crate::server::quote_ident;

/// Sections a request may set for itself (a submitted job's); the
/// connection, control, checkpoint, hooks and registry stay the server's.
const REQUEST_SECTIONS: [&str; 5] = ["copy", "local", "cutover", "throttle", "changes"];

/// One table of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestTable {
    pub schema: String,
    pub name: String,
    /// The clause after `ALTER TABLE t`.
    pub alter: String,
    #[serde(default)]
    pub rename_columns: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_lossy: bool,
}

/// How a request runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestOptions {
    /// `auto`, `sql` or `local`; the server config's when absent.
    #[serde(default)]
    pub backend: Option<String>,
    /// `[cutover] revert_window`, e.g. `"1h"`.
    #[serde(default)]
    pub revert_window: Option<String>,
    /// Wait at `ready` until `wraith migrations complete`.
    #[serde(default)]
    pub postpone_completion: bool,
    /// Cut over only after every earlier request has ended.
    #[serde(default)]
    pub in_order_completion: bool,
    /// Sections of a submitted job ([`REQUEST_SECTIONS`]), as TOML text.
    #[serde(default)]
    pub sections: String,
}

impl RequestOptions {
    /// In words, for the registry's `options` column.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = &self.backend {
            parts.push(format!("backend={b}"));
        }
        if let Some(w) = &self.revert_window {
            parts.push(format!("revert_window={w}"));
        }
        if self.postpone_completion {
            parts.push("postpone_completion".to_string());
        }
        if self.in_order_completion {
            parts.push("in_order_completion".to_string());
        }
        if !self.sections.trim().is_empty() {
            parts.push(self.sections.trim().replace('\n', " "));
        }
        parts.join(" ")
    }
}

/// A request: what a team asked to change, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub tables: Vec<RequestTable>,
    #[serde(default)]
    pub options: RequestOptions,
}

impl Request {
    pub fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }

    /// `schema.table` of every table, for "never two on the same table".
    pub fn qualified_tables(&self) -> Vec<(String, String)> {
        self.tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect()
    }

    /// Readable statements, one per table.
    pub fn alter_statement(&self) -> String {
        self.tables
            .iter()
            .map(|t| format!("ALTER TABLE {} {}", quote_ident(&t.name), t.alter.trim()))
            .collect::<Vec<_>>()
            .join(";\n")
    }

    /// The tables and sections of a job config (`wraith submit --job`);
    /// its `[source]` must be the server's.
    pub fn from_job(
        server: &ServerConfig,
        job_path: &Path,
        options: RequestOptions,
    ) -> Result<Request, ConfigError> {
        let origin = job_path.display().to_string();
        let text = read_config(job_path)?;
        let job = Config::parse(&text, &origin)?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.clone(),
            message,
        };
        let (a, b) = (&job.source, &server.probe.source);
        if a.host != b.host || a.port != b.port || a.socket != b.socket {
            return Err(invalid(format!(
                "its [source] ({}) is not the server of SERVER_CONFIG ({}); a request runs on \
                 the server it is submitted to",
                a.describe(),
                b.describe()
            )));
        }
        let raw: toml::Table = parse_toml(&text, &origin)?;
        let mut sections = toml::Table::new();
        for (key, value) in raw {
            if REQUEST_SECTIONS.contains(&key.as_str()) {
                sections.insert(key, value);
            }
        }
        let sections = toml::to_string(&sections)
            .map_err(|e| invalid(format!("cannot carry its sections over: {e}")))?;
        Ok(Request {
            tables: job
                .tables
                .iter()
                .map(|t| RequestTable {
                    schema: job.schema_of(t).to_string(),
                    name: t.name.clone(),
                    alter: t.alter.clone(),
                    rename_columns: t.rename_columns.clone(),
                    allow_lossy: t.allow_lossy,
                })
                .collect(),
            options: RequestOptions {
                sections,
                ..options
            },
        })
    }
}

/// `SERVER_CONFIG`: a job config without tables.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file's values.
    base: toml::Table,
    origin: String,
    /// The config validated with a placeholder table: its connection,
    /// registry and shared sections are what every request gets.
    probe: Config,
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(&read_config(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let base: toml::Table = parse_toml(text, origin)?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: origin.to_string(),
            message: message.to_string(),
        };
        if base.contains_key("table") {
            return Err(invalid(
                "a SERVER_CONFIG names no tables: remove its [[table]] sections; a request \
                 names its table with `wraith submit SERVER_CONFIG --table T --alter \"...\"` \
                 (or `--job JOB.toml`)",
            ));
        }
        if base.contains_key("import") {
            return Err(invalid(
                "a SERVER_CONFIG is a rebuild job's config without [[table]]; [import] is \
                 `wraith import`'s",
            ));
        }
        let probe_table = RequestTable {
            schema: String::new(),
            name: "wraith_server_config".to_string(),
            alter: "FORCE".to_string(),
            rename_columns: BTreeMap::new(),
            allow_lossy: false,
        };
        let probe = compose(&base, &[probe_table], &RequestOptions::default(), origin)?;
        Ok(ServerConfig {
            base,
            origin: origin.to_string(),
            probe,
        })
    }

    /// The server's settings (connection, `[registry]`); its one table is a
    /// placeholder, never run.
    pub fn settings(&self) -> &Config {
        &self.probe
    }

    /// The source's default schema.
    pub fn database(&self) -> &str {
        &self.probe.source.database
    }

    /// The job `request` runs as.
    pub fn job(&self, request: &Request) -> Result<Config, ConfigError> {
        compose(&self.base, &request.tables, &request.options, &self.origin)
    }
}

/// `base` with `tables` and `options`, parsed as a job.
fn compose(
    base: &toml::Table,
    tables: &[RequestTable],
    options: &RequestOptions,
    origin: &str,
) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: origin.to_string(),
        message,
    };
    let mut job = base.clone();
    if !options.sections.trim().is_empty() {
        let sections: toml::Table = parse_toml(&options.sections, origin)?;
        for (section, value) in sections {
            if !REQUEST_SECTIONS.contains(&section.as_str()) {
                return Err(invalid(format!(
                    "a request may not set [{section}]; it is the server's"
                )));
            }
            merge_section(&mut job, &section, value);
        }
    }
    if let Some(backend) = &options.backend {
        set(
            &mut job,
            "copy",
            "backend",
            toml::Value::String(backend.clone()),
        );
    }
    if let Some(window) = &options.revert_window {
        set(
            &mut job,
            "cutover",
            "revert_window",
            toml::Value::String(window.clone()),
        );
    }
    let mut list = Vec::new();
    for t in tables {
        let mut entry = toml::Table::new();
        entry.insert("name".into(), toml::Value::String(t.name.clone()));
        if !t.schema.is_empty() {
            entry.insert("schema".into(), toml::Value::String(t.schema.clone()));
        }
        entry.insert("alter".into(), toml::Value::String(t.alter.clone()));
        if !t.rename_columns.is_empty() {
            let renames: toml::Table = t
                .rename_columns
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect();
            entry.insert("rename_columns".into(), toml::Value::Table(renames));
        }
        if t.allow_lossy {
            entry.insert("allow_lossy".into(), toml::Value::Boolean(true));
        }
        list.push(toml::Value::Table(entry));
    }
    job.insert("table".into(), toml::Value::Array(list));
    let text = toml::to_string(&job)
        .map_err(|e| invalid(format!("cannot put the request's job together: {e}")))?;
    Config::parse(&text, origin)
}

/// Sets `key` of `[section]`, making the section when it is absent.
fn set(job: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let mut one = toml::Table::new();
    one.insert(key.to_string(), value);
    merge_section(job, section, toml::Value::Table(one));
}

/// Puts the keys of `value` into `[section]` (the request's win).
fn merge_section(job: &mut toml::Table, section: &str, value: toml::Value) {
    match (job.get_mut(section), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(keys)) => {
            for (k, v) in keys {
                existing.insert(k, v);
            }
        }
        (_, value) => {
            job.insert(section.to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "[source]\nhost = \"127.0.0.1\"\nport = 3306\nuser = \"u\"\ndatabase = \"app\"\n[copy]\nthreads = 3\n";

    fn table(name: &str, alter: &str) -> RequestTable {
        RequestTable {
            schema: "app".into(),
            name: name.into(),
            alter: alter.into(),
            rename_columns: BTreeMap::new(),
            allow_lossy: false,
        }
    }

    #[test]
    fn a_request_becomes_a_job_of_the_server() {
        let server = ServerConfig::parse(SERVER, "server.toml").unwrap();
        let request = Request {
            tables: vec![table("orders", "ADD COLUMN note TEXT")],
            options: RequestOptions {
                backend: Some("sql".into()),
                sections: "[copy]\nchunk_target = \"250ms\"\n".into(),
                ..Default::default()
            },
        };
        let job = server.job(&request).unwrap();
        assert_eq!(job.tables.len(), 1);
        assert_eq!(job.tables[0].alter, "ADD COLUMN note TEXT");
        assert_eq!(job.copy.threads, 3, "the server's setting stays");
        assert_eq!(job.copy.backend.to_string(), "sql");
        assert_eq!(job.copy.chunk_target.0.as_millis(), 250);
        assert_eq!(
            request.alter_statement(),
            "ALTER TABLE `orders` ADD COLUMN note TEXT"
        );
    }

    #[test]
    fn hostile_values_stay_data_or_are_refused() {
        let server = ServerConfig::parse(SERVER, "server.toml").unwrap();
        // A name with a backtick is refused by the config's own rules.
        let bad = Request {
            tables: vec![table("t`; DROP TABLE x; --", "FORCE")],
            options: RequestOptions::default(),
        };
        assert!(server.job(&bad).is_err());
        // TOML syntax in a value is a string, not a new key.
        let quoted = Request {
            tables: vec![table("t", "COMMENT '\"\n[source]\nhost = \"evil\"'")],
            options: RequestOptions::default(),
        };
        let job = server.job(&quoted).unwrap();
        assert_eq!(job.source.host, "127.0.0.1");
        assert!(job.tables[0].alter.contains("evil"));
        // A request cannot move the job to another server.
        let moved = Request {
            tables: vec![table("t", "FORCE")],
            options: RequestOptions {
                sections: "[source]\nhost = \"evil\"\n".into(),
                ..Default::default()
            },
        };
        assert!(server.job(&moved).is_err());
    }

    #[test]
    fn a_server_config_has_no_tables() {
        let with_table = format!("{SERVER}[[table]]\nname = \"t\"\nalter = \"FORCE\"\n");
        let e = ServerConfig::parse(&with_table, "server.toml").unwrap_err();
        assert!(e.to_string().contains("names no tables"), "{e}");
    }
}
