//! The pristine copy of a generated table, its restores, and fingerprints.
//!
//! The table is generated once into the pristine schema and never written
//! again. Before every method it is restored into the benchmark schema:
//!
//! - **tablespace** (the server's datadir is on this machine): the pristine
//!   `.ibd`/`.cfg` are exported once (`FLUSH TABLES … FOR EXPORT`), and each
//!   restore is `CREATE TABLE … LIKE`, `DISCARD TABLESPACE`, a file copy and
//!   `IMPORT TABLESPACE`: a few hundred MB/s, and a byte-exact table, as the
//!   peer scripts do;
//! - **copy** otherwise: `INSERT … SELECT` from the pristine table into an
//!   empty table with `unique_checks=0` (MariaDB's bulk-insert path).
//!
//! Either way the restored table is read once through every index (warm, like
//! a table in use) and its checksum compared with the pristine one. A restore
//! never reaches the binlog (`sql_log_bin = 0`): with `--replica` the same
//! restore is done on the replica (its datadir is on this machine too; the
//! pristine table reached it by replication when it was generated), so both
//! servers start each method from the same table without replicating it.
//!
//! A [`Fingerprint`] is what "the same content" means here: the row count,
//! `CHECKSUM TABLE`, and the definition's lines (in any order, without
//! `AUTO_INCREMENT=`), so a rebuild that reorders indexes still matches but one
//! that loses a row, a value or an index does not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::tables::{self, TableKind};
use super::BenchError;
use crate::server::{quote_ident, Context};

/// What a table holds, for comparing a method's result with what it must be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    pub rows: u64,
    /// `CHECKSUM TABLE` (`None` when the server returned NULL).
    pub checksum: Option<u64>,
    /// `SHOW CREATE TABLE` lines without the name line and `AUTO_INCREMENT=`, sorted.
    #[serde(skip)]
    pub definition: Vec<String>,
}

/// How a [`Fingerprint`] compares with the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Comparison {
    pub rows_match: bool,
    pub checksum_match: bool,
    pub definition_match: bool,
}

impl Comparison {
    pub fn all_match(&self) -> bool {
        self.rows_match && self.checksum_match && self.definition_match
    }
}

impl Fingerprint {
    pub fn compare(&self, expected: &Fingerprint) -> Comparison {
        Comparison {
            rows_match: self.rows == expected.rows,
            checksum_match: self.checksum.is_some() && self.checksum == expected.checksum,
            definition_match: self.definition == expected.definition,
        }
    }
}

/// How restores are done.
#[derive(Debug, Clone)]
enum RestoreMethod {
    /// The restoring server's datadir is asked for at each restore, so the
    /// same files restore on a replica.
    Tablespace {
        /// Where the exported `.ibd` and `.cfg` are kept.
        saved: PathBuf,
    },
    Copy,
}

/// A generated table kept pristine, restorable into other schemas.
#[derive(Debug, Clone)]
pub struct Pristine {
    pub kind: TableKind,
    pub table: String,
    pub pristine_schema: String,
    pub rows: u64,
    /// `DATA_LENGTH + INDEX_LENGTH` of the pristine table.
    pub table_bytes: u64,
    pub fingerprint: Fingerprint,
    method: RestoreMethod,
}

impl Pristine {
    /// Generates `kind`'s table with `rows` rows in `pristine_schema` (dropped
    /// and recreated) and prepares restores. `files_dir` holds the exported
    /// tablespace when the datadir is local.
    pub async fn create(
        conn: &mut Conn,
        pristine_schema: &str,
        kind: TableKind,
        rows: u64,
        files_dir: &Path,
    ) -> Result<Pristine, BenchError> {
        let table = kind.table_name().to_string();
        let qs = quote_ident(pristine_schema);
        conn.query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&table)))
            .await
            .ok();
        tables::create_table(conn, pristine_schema, kind, rows).await?;
        let fingerprint = fingerprint(conn, pristine_schema, &table).await?;
        let table_bytes: Option<(u64,)> = conn
            .exec_first(
                "SELECT CAST(DATA_LENGTH + INDEX_LENGTH AS UNSIGNED) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (pristine_schema, &table),
            )
            .await
            .context(|| format!("reading the size of {pristine_schema}.{table}"))?;
        let method = match local_schema_dir(conn, pristine_schema).await {
            Some((datadir, _)) => {
                export_tablespace(conn, pristine_schema, &table, &datadir, files_dir).await?;
                RestoreMethod::Tablespace {
                    saved: files_dir.to_path_buf(),
                }
            }
            None => RestoreMethod::Copy,
        };
        tracing::info!(table, rows, restore = ?method, "pristine table ready");
        Ok(Pristine {
            kind,
            table,
            pristine_schema: pristine_schema.to_string(),
            rows: fingerprint.rows,
            table_bytes: table_bytes.map(|(b,)| b).unwrap_or(0),
            fingerprint,
            method,
        })
    }

    /// `"tablespace"` or `"copy"`.
    pub fn restore_method(&self) -> &'static str {
        match self.method {
            RestoreMethod::Tablespace { .. } => "tablespace",
            RestoreMethod::Copy => "copy",
        }
    }

    /// Replaces every table in `schema` with a restored copy of the pristine
    /// table (same name), warms it and checks it; `conn`'s server may be the
    /// one the table was generated on or its replica.
    pub async fn restore(&self, conn: &mut Conn, schema: &str) -> Result<(), BenchError> {
        let qs = quote_ident(schema);
        let qt = format!("{qs}.{}", quote_ident(&self.table));
        let qp = format!(
            "{}.{}",
            quote_ident(&self.pristine_schema),
            quote_ident(&self.table)
        );
        // The restore is not part of any benchmark and must not reach the binlog
        // (the change streams and a replica would read it); not every user may
        // turn it off. The session's own setting is put back afterwards.
        let log_bin: Option<i64> = conn
            .query_first("SELECT @@session.sql_log_bin")
            .await
            .ok()
            .flatten();
        let _ = conn.query_drop("SET SESSION sql_log_bin = 0").await;
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {qs}"))
            .await
            .context(|| format!("creating database {schema}"))?;
        let leftovers: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                (schema,),
            )
            .await
            .context(|| format!("listing the tables of {schema}"))?;
        for t in leftovers {
            conn.query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&t)))
                .await
                .context(|| format!("dropping {schema}.{t}"))?;
        }
        conn.query_drop(format!("CREATE TABLE {qt} LIKE {qp}"))
            .await
            .context(|| format!("creating {schema}.{}", self.table))?;
        match &self.method {
            RestoreMethod::Tablespace { saved } => {
                let datadir: Option<String> = conn
                    .query_first("SELECT @@datadir")
                    .await
                    .context(|| "SELECT @@datadir".into())?;
                let datadir = PathBuf::from(datadir.unwrap_or_default());
                conn.query_drop(format!("ALTER TABLE {qt} DISCARD TABLESPACE"))
                    .await
                    .context(|| format!("discarding the tablespace of {schema}.{}", self.table))?;
                let dir = datadir.join(schema);
                for ext in ["ibd", "cfg"] {
                    let name = format!("{}.{ext}", self.table);
                    let to = dir.join(&name);
                    std::fs::copy(saved.join(&name), &to).map_err(|e| self.restore_error(&e))?;
                    chown_like(&to, &dir).map_err(|e| self.restore_error(&e))?;
                }
                let imported = conn
                    .query_drop(format!("ALTER TABLE {qt} IMPORT TABLESPACE"))
                    .await
                    .context(|| format!("importing the tablespace of {schema}.{}", self.table));
                let _ = std::fs::remove_file(dir.join(format!("{}.cfg", self.table)));
                imported?;
            }
            RestoreMethod::Copy => {
                conn.query_drop(format!(
                    "SET SESSION unique_checks = 0, SESSION foreign_key_checks = 0; \
                     INSERT INTO {qt} SELECT * FROM {qp}; \
                     SET SESSION unique_checks = 1, SESSION foreign_key_checks = 1"
                ))
                .await
                .context(|| format!("copying the pristine rows into {schema}.{}", self.table))?;
            }
        }
        let _ = conn
            .query_drop(format!(
                "SET SESSION sql_log_bin = {}",
                log_bin.unwrap_or(1)
            ))
            .await;
        self.warm(conn, schema).await?;
        let restored = fingerprint(conn, schema, &self.table).await?;
        if !restored.compare(&self.fingerprint).all_match() {
            return Err(BenchError::Restore {
                table: format!("{schema}.{}", self.table),
                message: format!(
                    "the restored table does not match the pristine one ({} rows, checksum {:?}; pristine {} rows, checksum {:?})",
                    restored.rows, restored.checksum, self.fingerprint.rows, self.fingerprint.checksum
                ),
            });
        }
        Ok(())
    }

    /// Reads every secondary index once (the clustered index was read by the
    /// checksum), so every method starts from a warm table.
    async fn warm(&self, conn: &mut Conn, schema: &str) -> Result<(), BenchError> {
        let indexes: Vec<String> = conn
            .exec(
                "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME <> 'PRIMARY'",
                (schema, &self.table),
            )
            .await
            .context(|| format!("listing the indexes of {schema}.{}", self.table))?;
        for index in indexes {
            conn.query_drop(format!(
                "SELECT COUNT(*) INTO @wraith_bench_warm FROM {}.{} FORCE INDEX ({})",
                quote_ident(schema),
                quote_ident(&self.table),
                quote_ident(&index)
            ))
            .await
            .context(|| format!("reading index {index} of {schema}.{}", self.table))?;
        }
        Ok(())
    }

    fn restore_error(&self, e: &std::io::Error) -> BenchError {
        BenchError::Restore {
            table: self.table.clone(),
            message: e.to_string(),
        }
    }
}

/// The fingerprint of `schema.table`.
pub async fn fingerprint(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Fingerprint, BenchError> {
    let qt = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let rows: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {qt}"))
        .await
        .context(|| format!("counting the rows of {schema}.{table}"))?;
    let checksum: Option<(String, Option<u64>)> = conn
        .query_first(format!("CHECKSUM TABLE {qt} EXTENDED"))
        .await
        .context(|| format!("CHECKSUM TABLE {schema}.{table}"))?;
    let create: Option<(String, String)> = conn
        .query_first(format!("SHOW CREATE TABLE {qt}"))
        .await
        .context(|| format!("SHOW CREATE TABLE {schema}.{table}"))?;
    let definition = create
        .map(|(_, sql)| normalise_definition(&sql))
        .unwrap_or_default();
    Ok(Fingerprint {
        rows: rows.unwrap_or(0),
        checksum: checksum.and_then(|(_, c)| c),
        definition,
    })
}

fn normalise_definition(create: &str) -> Vec<String> {
    let mut lines: Vec<String> = create
        .lines()
        .skip(1)
        .map(|line| {
            let line = line.trim().trim_end_matches(',');
            line.split(' ')
                .filter(|word| !word.starts_with("AUTO_INCREMENT="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// Waits until the buffer pool holds (almost) no dirty pages, so every method
/// starts without a previous one's writes pending. Needs the SUPER privilege
/// (or SYSTEM_VARIABLES_ADMIN); without it, returns `false` at once.
pub async fn flush_dirty_pages(conn: &mut Conn, timeout: Duration) -> bool {
    let saved: Result<Option<(f64, f64)>, _> = conn
        .query_first("SELECT @@innodb_max_dirty_pages_pct, @@innodb_max_dirty_pages_pct_lwm")
        .await;
    let Ok(Some((pct, lwm))) = saved else {
        return false;
    };
    if conn
        .query_drop(
            "SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001, GLOBAL innodb_max_dirty_pages_pct = 0",
        )
        .await
        .is_err()
    {
        return false;
    }
    let started = Instant::now();
    let mut clean = false;
    while started.elapsed() < timeout {
        let dirty: Result<Option<(String, u64)>, _> = conn
            .query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            .await;
        match dirty {
            Ok(Some((_, n))) if n < 50 => {
                clean = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => break,
        }
    }
    let _ = conn
        .query_drop(format!(
            "SET GLOBAL innodb_max_dirty_pages_pct = {pct}, GLOBAL innodb_max_dirty_pages_pct_lwm = {lwm}"
        ))
        .await;
    clean
}

/// The server's datadir and `schema`'s directory in it, when both are on this
/// machine (so tablespaces can be copied); `None` for a remote server.
async fn local_schema_dir(conn: &mut Conn, schema: &str) -> Option<(PathBuf, PathBuf)> {
    let datadir: Option<String> = conn.query_first("SELECT @@datadir").await.ok()?;
    let datadir = PathBuf::from(datadir?);
    let dir = datadir.join(schema);
    let writable = std::fs::metadata(&dir)
        .map(|m| m.is_dir() && !m.permissions().readonly())
        .unwrap_or(false);
    writable.then_some((datadir, dir))
}

async fn export_tablespace(
    conn: &mut Conn,
    schema: &str,
    table: &str,
    datadir: &Path,
    files_dir: &Path,
) -> Result<(), BenchError> {
    std::fs::create_dir_all(files_dir).map_err(|source| BenchError::Io {
        what: format!("creating {}", files_dir.display()),
        source,
    })?;
    conn.query_drop(format!(
        "FLUSH TABLES {}.{} FOR EXPORT",
        quote_ident(schema),
        quote_ident(table)
    ))
    .await
    .context(|| format!("exporting {schema}.{table}"))?;
    let copied: Result<(), std::io::Error> = ["ibd", "cfg"].iter().try_for_each(|ext| {
        let name = format!("{table}.{ext}");
        std::fs::copy(datadir.join(schema).join(&name), files_dir.join(&name)).map(|_| ())
    });
    conn.query_drop("UNLOCK TABLES")
        .await
        .context(|| format!("unlocking {schema}.{table} after the export"))?;
    copied.map_err(|source| BenchError::Io {
        what: format!("copying the exported tablespace of {schema}.{table}"),
        source,
    })
}

/// Gives `path` the owner and group of `like` (a server running as `mysql`
/// must be able to open a file root copied).
fn chown_like(path: &Path, like: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(like)?;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn definitions_ignore_auto_increment_and_index_order() {
        let a = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  KEY `a` (`id`),\n  KEY `b` (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=latin1";
        let b = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  KEY `b` (`id`),\n  KEY `a` (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=9 DEFAULT CHARSET=latin1";
        assert_eq!(
            super::normalise_definition(a),
            super::normalise_definition(b)
        );
    }
}
