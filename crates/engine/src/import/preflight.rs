//! Import preflight: everything about an import job that can be judged
//! before a row is loaded, judged before a row is loaded.
//!
//! `wraith import --check` (and `wraith check` on an import config) prints
//! this report and changes nothing; `wraith import` runs it first and
//! refuses (exit 3) on any failure, so a wrong path, database or charset is
//! never found half-way through a load. Checked: the dump directory (there,
//! a readable directory, holding data files, each readable), the
//! checkpoint file's directory and `[local] sort_dir`, the server, the
//! target database (there, or creatable because `create_tables` has a
//! schema file for every table), every table the files feed, and every
//! charset (`[import] charset` and the SQL dumps' `SET NAMES`) against the
//! server's own list. Every failure says what was seen and the fix.

use std::collections::BTreeSet;
use std::path::Path;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde::Serialize;

use super::config::{ImportFormat, ImportJobConfig};
use super::files::{self, DumpListing};
use super::region;
use crate::config::{BackendKind, CheckpointStore};
use crate::preflight::{Check, Status};
use crate::server::connection_opts;

/// What the import preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct ImportCheckReport {
    /// `user@host:port/database`.
    pub target: String,
    pub checks: Vec<Check>,
    /// The target database is missing and the import will create it.
    pub creates_database: bool,
    /// The tables the files feed.
    pub tables: Vec<String>,
}

impl ImportCheckReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    fn push(&mut self, name: &str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            status,
            detail,
            fix,
        });
    }

    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail.into(), None);
    }

    fn fail(&mut self, name: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(name, Status::Fail, detail.into(), Some(fix.into()));
    }

    /// One line per check, as `wraith check` prints the rebuild's.
    pub fn render(&self) -> String {
        let mut out = format!("target: {}\n", self.target);
        crate::preflight::render_checks(&self.checks, &mut out);
        out
    }

    /// The failures in one message (for the refusal of `wraith import`).
    pub fn failure_message(&self) -> String {
        let parts: Vec<String> = self
            .failures()
            .map(|c| match &c.fix {
                Some(fix) => format!("{}: {}; fix: {fix}", c.name, c.detail),
                None => format!("{}: {}", c.name, c.detail),
            })
            .collect();
        format!(
            "import preflight failed, nothing was loaded:\n  {}",
            parts.join("\n  ")
        )
    }
}

/// Runs every check; never fails itself (a failure is a failed check).
pub async fn check(cfg: &ImportJobConfig) -> ImportCheckReport {
    let mut report = ImportCheckReport {
        target: cfg.target.describe(),
        checks: Vec::new(),
        creates_database: false,
        tables: Vec::new(),
    };
    let listing = check_dir(cfg, &mut report);
    check_local_paths(cfg, &mut report);
    let mut conn = match connect(cfg).await {
        Ok(c) => {
            report.ok("server", "connected");
            c
        }
        Err(e) => {
            report.fail(
                "server",
                format!("cannot connect to {}: {e}", cfg.target.describe()),
                "check [target] host, port (or socket), user and password",
            );
            return report;
        }
    };
    if let Err(e) = check_server(cfg, listing.as_ref(), &mut conn, &mut report).await {
        report.fail(
            "server",
            format!("a preflight query failed: {e}"),
            "check that [target] user may read information_schema",
        );
    }
    let _ = conn.disconnect().await;
    report
}

/// A connection to the target server without selecting the database (it
/// may be missing).
pub(super) async fn connect(cfg: &ImportJobConfig) -> Result<Conn, String> {
    let opts = connection_opts(&cfg.target)?;
    let opts = OptsBuilder::from_opts(opts).db_name(None::<String>);
    Conn::new(opts).await.map_err(|e| e.to_string())
}

fn check_dir(cfg: &ImportJobConfig, report: &mut ImportCheckReport) -> Option<DumpListing> {
    let dir = &cfg.import.dir;
    let name = "dump dir";
    let fix_dir = "set [import] dir to the directory holding the dump files";
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.fail(name, format!("{} does not exist", dir.display()), fix_dir);
            return None;
        }
        Err(e) => {
            report.fail(
                name,
                format!("{} cannot be read: {e}", dir.display()),
                "give the user running wraith read and execute permission on it",
            );
            return None;
        }
        Ok(m) if !m.is_dir() => {
            report.fail(
                name,
                format!("{} is not a directory", dir.display()),
                fix_dir,
            );
            return None;
        }
        Ok(_) => {}
    }
    let listing = match files::discover(&cfg.import) {
        Ok(l) => l,
        Err(e) => {
            report.fail(
                name,
                e.to_string(),
                "give the user running wraith read permission on the directory and its files, or fix the [[import.mapping]] named",
            );
            return None;
        }
    };
    if listing.data.is_empty() {
        report.fail(
            name,
            format!(
                "no data files in {} (skipped: {})",
                dir.display(),
                if listing.skipped.is_empty() {
                    "none".to_string()
                } else {
                    listing.skipped.join(", ")
                }
            ),
            "put the dump there (*.sql, *.csv, *.tsv, *.txt, optionally .gz/.zst, named db.table[.N].ext or table.ext), or map other names with [[import.mapping]]",
        );
        return None;
    }
    let mut unreadable = Vec::new();
    let paths = listing
        .data
        .iter()
        .map(|f| f.path.as_path())
        .chain(listing.schemas.values().map(|p| p.as_path()));
    for p in paths {
        if let Err(e) = std::fs::File::open(p) {
            unreadable.push(format!("{} ({e})", p.display()));
        }
    }
    if !unreadable.is_empty() {
        report.fail(
            name,
            format!("cannot open {}", unreadable.join(", ")),
            "give the user running wraith read permission on these files",
        );
        return None;
    }
    let bytes: u64 = listing.data.iter().map(|f| f.size).sum();
    report.ok(
        name,
        format!(
            "{}: {} data file(s), {bytes} bytes, {} schema file(s)",
            dir.display(),
            listing.data.len(),
            listing.schemas.len()
        ),
    );
    Some(listing)
}

/// The checkpoint file's directory and the sort directory: the nearest
/// existing ancestor must be a directory (they are created below it).
fn check_local_paths(cfg: &ImportJobConfig, report: &mut ImportCheckReport) {
    if let (CheckpointStore::File, Some(path)) = (cfg.checkpoint.store, &cfg.checkpoint.path) {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => report.ok("checkpoint path", path.display().to_string()),
            _ => report.fail(
                "checkpoint path",
                format!(
                    "the directory of [checkpoint] path ({}) is not a directory",
                    parent.display()
                ),
                "create that directory, or set [checkpoint] path to a file in an existing one",
            ),
        }
    }
    if cfg.import.backend != BackendKind::Sql {
        let dir = &cfg.local.sort_dir;
        let mut at = Some(dir.as_path());
        while let Some(p) = at {
            if let Ok(m) = std::fs::metadata(p) {
                if m.is_dir() {
                    report.ok("sort_dir", dir.display().to_string());
                } else {
                    report.fail(
                        "sort_dir",
                        format!(
                            "[local] sort_dir {} cannot be created: {} is not a directory",
                            dir.display(),
                            p.display()
                        ),
                        "set [local] sort_dir to a directory on a disk with room for the dump",
                    );
                }
                return;
            }
            at = p.parent().filter(|p| !p.as_os_str().is_empty());
        }
        report.ok("sort_dir", format!("{} (created at start)", dir.display()));
    }
}

async fn check_server(
    cfg: &ImportJobConfig,
    listing: Option<&DumpListing>,
    c: &mut Conn,
    report: &mut ImportCheckReport,
) -> Result<(), mysql_async::Error> {
    let db = &cfg.target.database;
    let exists: Option<u8> = c
        .exec_first(
            "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (db,),
        )
        .await?;
    let tables: BTreeSet<String> = listing
        .map(|l| l.data.iter().map(|f| f.table.clone()).collect())
        .unwrap_or_default();
    report.tables = tables.iter().cloned().collect();
    let has_schema = |t: &str| listing.is_some_and(|l| l.schemas.contains_key(t));
    if exists.is_some() {
        report.ok("database", format!("{db} exists"));
    } else if cfg.import.create_tables && !tables.is_empty() && tables.iter().all(|t| has_schema(t))
    {
        report.creates_database = true;
        report.ok(
            "database",
            format!("{db} does not exist; it will be created (create_tables = true and every table has its schema file)"),
        );
    } else {
        report.fail(
            "database",
            format!("database {db} does not exist"),
            format!(
                "create it (CREATE DATABASE `{}`), correct [target] database, or put every table's db.table-schema.sql in the dump with create_tables = true",
                db.replace('`', "``")
            ),
        );
    }
    if listing.is_some() {
        let mut missing = Vec::new();
        for t in &tables {
            let there: Option<u8> = if exists.is_some() {
                c.exec_first(
                    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (db, t),
                )
                .await?
            } else {
                None
            };
            if there.is_none() && !(cfg.import.create_tables && has_schema(t)) {
                missing.push(t.clone());
            }
        }
        if missing.is_empty() {
            report.ok(
                "tables",
                tables.iter().cloned().collect::<Vec<_>>().join(", "),
            );
        } else {
            report.fail(
                "tables",
                format!(
                    "table(s) {} of {db} do not exist and the dump has no schema file for them{}",
                    missing.join(", "),
                    if cfg.import.create_tables { "" } else { " (create_tables = false)" }
                ),
                "create them, put their db.table-schema.sql beside the data with create_tables = true, or map the files to existing tables with [[import.mapping]]",
            );
        }
    }
    // Every charset the files' text may be in.
    let mut charsets: Vec<(String, String)> =
        vec![(cfg.import.charset.clone(), "[import] charset".into())];
    for f in listing.map(|l| l.data.as_slice()).unwrap_or(&[]) {
        if f.format != ImportFormat::Sql {
            continue;
        }
        if let Ok(Some(cs)) = region::sql_names(f) {
            if !charsets.iter().any(|(c, _)| c == &cs) {
                charsets.push((cs, format!("SET NAMES in {}", f.name)));
            }
        }
    }
    let mut unknown = Vec::new();
    for (cs, from) in &charsets {
        if !known_charset(c, cs).await? {
            unknown.push(format!("{cs:?} ({from})"));
        }
    }
    let names: Vec<&str> = charsets.iter().map(|(c, _)| c.as_str()).collect();
    if unknown.is_empty() {
        report.ok("charset", names.join(", "));
    } else {
        report.fail(
            "charset",
            format!("the server knows no charset {}", unknown.join(", ")),
            "set [import] charset to a name SHOW CHARACTER SET lists (e.g. utf8mb4, latin1, or binary for bytes in each column's own charset)",
        );
    }
    Ok(())
}

/// Whether the server takes `cs` as a charset name (aliases such as `utf8`
/// included).
async fn known_charset(c: &mut Conn, cs: &str) -> Result<bool, mysql_async::Error> {
    if cs.is_empty() || !cs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Ok(false);
    }
    match c.query_drop(format!("SELECT CONVERT('' USING {cs})")).await {
        Ok(()) => Ok(true),
        // Unknown character set.
        Err(mysql_async::Error::Server(e)) if e.code == 1115 => Ok(false),
        Err(e) => Err(e),
    }
}
