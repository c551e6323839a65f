//! The import job's TOML: `[target]`, `[import]` (with `[import.csv]` and
//! `[[import.mapping]]`), and the shared `[local]` and `[checkpoint]`
//! sections. Parsed as strictly as the rebuild's config (`crate::config`):
//! unknown keys, wrong types and bad values are errors naming the key.
//! Documented key by key in `config/README.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{
    check_identifier, parse_toml, read_config, validate_connection, BackendKind, ByteSize,
    CheckpointConfig, CheckpointStore, ConfigError, ConnectionConfig, LocalConfig,
};

use super::csv::CsvDialect;

/// A whole import job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportJobConfig {
    /// The server and database the dump is loaded into.
    pub target: ConnectionConfig,
    pub import: ImportConfig,
    #[serde(default)]
    pub local: LocalConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
}

/// What the files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// From each file's name: `.csv`, `.tsv`/`.txt`, `.sql` (before `.gz`/`.zst`).
    Auto,
    Csv,
    Tsv,
    Sql,
}

impl std::fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImportFormat::Auto => "auto",
            ImportFormat::Csv => "csv",
            ImportFormat::Tsv => "tsv",
            ImportFormat::Sql => "sql",
        })
    }
}

/// What to do with a row whose key is already in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDuplicate {
    /// Stop and name the key and the index.
    Error,
    /// The later row (in file name order, then file order) replaces the earlier one.
    Replace,
    /// The earlier row stays; later ones with the same key are dropped.
    Ignore,
}

impl std::fmt::Display for OnDuplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnDuplicate::Error => "error",
            OnDuplicate::Replace => "replace",
            OnDuplicate::Ignore => "ignore",
        })
    }
}

/// How the loaded tables are checked against the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportVerify {
    /// Rows in each table against rows parsed.
    Count,
    /// Also a checksum of every parsed row against the rows read back.
    Checksum,
}

/// `[import]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// The directory holding the dump files.
    pub dir: PathBuf,
    #[serde(default = "default_format")]
    pub format: ImportFormat,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Regions parsed and written at the same time.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Files are cut into regions of about this many bytes.
    #[serde(default = "default_region_size")]
    pub region_size: ByteSize,
    #[serde(default = "default_on_duplicate")]
    pub on_duplicate: OnDuplicate,
    /// Create missing tables from `*-schema.sql` files in `dir`.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// The sql path sends rows with `LOAD DATA LOCAL` when the server allows
    /// it (and `on_duplicate = "error"`); `false` always sends INSERTs.
    #[serde(default = "default_true")]
    pub load_data: bool,
    /// After the load: `count` (rows in the table against rows parsed) or
    /// `checksum` (also every parsed row against the table, read back).
    #[serde(default = "default_verify")]
    pub verify: ImportVerify,
    /// Charset of the text in files that do not say (`SET NAMES` in SQL
    /// dumps); `binary` means each column's own charset.
    #[serde(default = "default_charset")]
    pub charset: String,
    #[serde(default)]
    pub csv: CsvConfig,
    /// File pattern → table, tried in order before the default naming.
    #[serde(default, rename = "mapping")]
    pub mappings: Vec<MappingConfig>,
}

fn default_format() -> ImportFormat {
    ImportFormat::Auto
}
fn default_backend() -> BackendKind {
    BackendKind::Auto
}
fn default_threads() -> usize {
    4
}
fn default_region_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_verify() -> ImportVerify {
    ImportVerify::Count
}

fn default_on_duplicate() -> OnDuplicate {
    OnDuplicate::Error
}
fn default_true() -> bool {
    true
}
fn default_charset() -> String {
    "utf8mb4".into()
}

/// `[import.csv]`: how CSV and TSV files are written. Unset keys take the
/// format's default (CSV: `,` `"` `\`; TSV: tab, no quote, `\`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// The first line holds column names.
    #[serde(default = "default_true")]
    pub header: bool,
    /// The columns of each line, in order (overrides the header's names).
    pub columns: Option<Vec<String>>,
    pub separator: Option<String>,
    /// One character, or `""` for none.
    pub quote: Option<String>,
    /// One character, or `""` for none.
    pub escape: Option<String>,
    /// `None`: `\n` or `\r\n`.
    pub terminator: Option<String>,
    /// Unquoted text that means NULL.
    #[serde(default = "default_null")]
    pub null: String,
}

fn default_null() -> String {
    "\\N".into()
}

impl Default for CsvConfig {
    fn default() -> Self {
        CsvConfig {
            header: true,
            columns: None,
            separator: None,
            quote: None,
            escape: None,
            terminator: None,
            null: default_null(),
        }
    }
}

impl CsvConfig {
    /// The dialect for `format` (csv or tsv).
    pub fn dialect(&self, format: ImportFormat) -> CsvDialect {
        let mut d = if format == ImportFormat::Tsv {
            CsvDialect::tsv()
        } else {
            CsvDialect::csv()
        };
        if let Some(s) = &self.separator {
            d.separator = s.as_bytes().to_vec();
        }
        if let Some(q) = &self.quote {
            d.quote = q.bytes().next();
        }
        if let Some(e) = &self.escape {
            d.escape = e.bytes().next();
        }
        if let Some(t) = &self.terminator {
            d.terminator = Some(t.as_bytes().to_vec());
        }
        d.null = self.null.as_bytes().to_vec();
        d
    }
}

/// `[[import.mapping]]`: files whose name matches `pattern` go to `table`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// A file name pattern: `*` any run of characters, `?` one character.
    pub pattern: String,
    pub table: String,
    /// The files' format (default: `[import] format`).
    pub format: Option<ImportFormat>,
}

impl ImportJobConfig {
    /// Reads and validates an import config.
    pub fn load(path: &Path) -> Result<ImportJobConfig, ConfigError> {
        ImportJobConfig::parse(&read_config(path)?, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ImportJobConfig, ConfigError> {
        let config: ImportJobConfig = parse_toml(text, origin)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Whether config text is an import job's: it has an `[import]` table.
    pub fn is_import_text(text: &str) -> bool {
        text.parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("import"))
    }

    fn validate(&self) -> Result<(), String> {
        validate_connection("target", &self.target)?;
        let i = &self.import;
        if i.dir.as_os_str().is_empty() {
            return Err("[import] dir is empty; name the directory holding the dump".into());
        }
        if i.threads == 0 || i.threads > 256 {
            return Err(format!(
                "[import] threads = {} is out of range; use 1 to 256",
                i.threads
            ));
        }
        if i.region_size.0 < 4096 {
            return Err(format!(
                "[import] region_size = {} is too small; give at least 4KiB (e.g. \"64MiB\")",
                i.region_size
            ));
        }
        if i.on_duplicate != OnDuplicate::Error && i.backend == BackendKind::Local {
            return Err(format!(
                "[import] on_duplicate = \"{}\" needs the sql backend: the local backend finds \
                 duplicates but cannot tell which row came last; set backend = \"sql\" (or \"auto\")",
                i.on_duplicate
            ));
        }
        if i.verify == ImportVerify::Checksum && i.on_duplicate != OnDuplicate::Error {
            return Err(format!(
                "[import] verify = \"checksum\" compares the table with every parsed row, but \
                 on_duplicate = \"{}\" drops some of them on purpose; use verify = \"count\" \
                 or on_duplicate = \"error\"",
                i.on_duplicate
            ));
        }
        if i.charset.is_empty()
            || !i
                .charset
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "[import] charset = {:?} is not a charset name like \"utf8mb4\" or \"binary\"",
                i.charset
            ));
        }
        let c = &i.csv;
        if c.separator.as_deref() == Some("") {
            return Err("[import.csv] separator is empty".into());
        }
        if c.terminator.as_deref() == Some("") {
            return Err("[import.csv] terminator is empty; leave it out for \\n or \\r\\n".into());
        }
        for (key, v) in [("quote", &c.quote), ("escape", &c.escape)] {
            if v.as_ref().is_some_and(|v| v.len() > 1) {
                return Err(format!(
                    "[import.csv] {key} must be one ASCII character or \"\" for none"
                ));
            }
        }
        if c.quote.is_some() && c.quote == c.escape && c.quote.as_deref() != Some("") {
            return Err("[import.csv] quote and escape are the same character; a doubled quote already escapes a quote, so set escape = \"\"".into());
        }
        if let Some(cols) = &c.columns {
            if cols.is_empty() {
                return Err(
                    "[import.csv] columns is empty; list the columns or leave it out".into(),
                );
            }
            for col in cols {
                check_identifier("[import.csv] columns entry", col)?;
            }
        }
        for m in &i.mappings {
            if m.pattern.is_empty() {
                return Err("[[import.mapping]] pattern is empty".into());
            }
            check_identifier("[[import.mapping]] table", &m.table)?;
        }
        if self.checkpoint.store == CheckpointStore::File && self.checkpoint.path.is_none() {
            return Err(
                "[checkpoint] store = \"file\" needs a path, e.g. path = \"wraith.checkpoint\""
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[target]\nuser = \"root\"\ndatabase = \"app\"\n\n[import]\ndir = \"/tmp/dump\"\n";

    #[test]
    fn defaults_fill_in() {
        let c = ImportJobConfig::parse(GOOD, "i.toml").unwrap();
        assert_eq!(c.import.format, ImportFormat::Auto);
        assert_eq!(c.import.on_duplicate, OnDuplicate::Error);
        assert_eq!(c.import.backend, BackendKind::Auto);
        assert!(c.import.csv.header);
        assert_eq!(c.import.csv.dialect(ImportFormat::Csv), CsvDialect::csv());
        assert_eq!(c.import.csv.dialect(ImportFormat::Tsv), CsvDialect::tsv());
    }

    #[test]
    fn strict_keys_and_values() {
        let e = ImportJobConfig::parse(&format!("{GOOD}fromat = \"csv\"\n"), "i.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("i.toml:7:1:") && e.contains("fromat"), "{e}");
        let e = ImportJobConfig::parse(&format!("{GOOD}on_duplicate = \"merge\"\n"), "i.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("merge"), "{e}");
        let e = ImportJobConfig::parse(
            &format!("{GOOD}on_duplicate = \"replace\"\nbackend = \"local\"\n"),
            "i.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs the sql backend"), "{e}");
        let e = ImportJobConfig::parse(&format!("{GOOD}[import.csv]\nquote = \"ab\"\n"), "i.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("quote must be one"), "{e}");
        let c = ImportJobConfig::parse(
            &format!("{GOOD}[import.csv]\nseparator = \"|\"\nquote = \"\"\nnull = \"NULL\"\n[[import.mapping]]\npattern = \"orders*.csv\"\ntable = \"orders\"\n"),
            "i.toml",
        )
        .unwrap();
        let d = c.import.csv.dialect(ImportFormat::Csv);
        assert_eq!(d.separator, b"|");
        assert_eq!(d.quote, None);
        assert_eq!(d.null, b"NULL");
        assert_eq!(c.import.mappings[0].table, "orders");
    }
}
