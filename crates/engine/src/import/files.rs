//! Finding the dump's files and the table each one feeds.
//!
//! Files are taken from `[import] dir` (not recursively), in name order.
//! `.gz` and `.zst` suffixes mark compressed files. A file goes to a table
//! by the first `[[import.mapping]]` pattern its name matches, else by
//! mydumper's naming: `db.table.sql`, `db.table.00001.sql`, `table.csv`,
//! `db.table.csv.zst` (a trailing all-digit part is a chunk number). Schema
//! files `db.table-schema.sql` (mydumper) feed `create_tables`; mydumper's
//! `metadata`, `*-schema-create.sql` and views/triggers are not data. Other
//! files are listed as skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::config::{ImportConfig, ImportFormat};
use super::ImportError;

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCompression {
    None,
    Gzip,
    Zstd,
}

/// One data file.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// The name inside the dump directory.
    pub name: String,
    pub path: PathBuf,
    pub table: String,
    /// Csv, Tsv or Sql (never Auto).
    pub format: ImportFormat,
    pub compression: FileCompression,
    /// Bytes on disk.
    pub size: u64,
}

/// What the dump directory holds.
#[derive(Debug, Default)]
pub struct DumpListing {
    pub data: Vec<DataFile>,
    /// Table → its `*-schema.sql` file.
    pub schemas: BTreeMap<String, PathBuf>,
    /// Files that are neither data nor schema.
    pub skipped: Vec<String>,
}

/// Matches `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// How a file is compressed, from its name.
pub fn compression_of(name: &str) -> FileCompression {
    split_compression(name).1
}

fn split_compression(name: &str) -> (&str, FileCompression) {
    if let Some(b) = name.strip_suffix(".gz") {
        (b, FileCompression::Gzip)
    } else if let Some(b) = name.strip_suffix(".zst") {
        (b, FileCompression::Zstd)
    } else {
        (name, FileCompression::None)
    }
}

fn format_of_extension(base: &str) -> Option<(ImportFormat, &str)> {
    for (ext, f) in [
        (".sql", ImportFormat::Sql),
        (".csv", ImportFormat::Csv),
        (".tsv", ImportFormat::Tsv),
        (".txt", ImportFormat::Tsv),
    ] {
        if let Some(stem) = base.strip_suffix(ext) {
            return Some((f, stem));
        }
    }
    None
}

/// The table of a file named the mydumper way, from its stem (no extension).
fn table_of_stem(stem: &str) -> Option<String> {
    let mut parts: Vec<&str> = stem.split('.').collect();
    if parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
    {
        parts.pop();
    }
    let table = match parts.len() {
        0 => return None,
        1 => parts[0].to_string(),
        _ => parts[1..].join("."),
    };
    (!table.is_empty()).then_some(table)
}

/// Lists and classifies the files of `[import] dir`.
pub fn discover(cfg: &ImportConfig) -> Result<DumpListing, ImportError> {
    let io = |e: std::io::Error| ImportError::Io {
        context: "listing the dump directory".into(),
        path: cfg.dir.clone(),
        source: e,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&cfg.dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let meta = entry.metadata().map_err(io)?;
        if !meta.is_file() {
            continue;
        }
        names.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
    }
    names.sort();
    let mut listing = DumpListing::default();
    for (name, size) in names {
        let path = cfg.dir.join(&name);
        let (base, compression) = split_compression(&name);
        if let Some(stem) = base.strip_suffix("-schema.sql") {
            if let Some(table) = table_of_stem(stem) {
                listing.schemas.insert(table, path);
                continue;
            }
        }
        let mapped = cfg.mappings.iter().find(|m| glob_match(&m.pattern, &name));
        let by_ext = format_of_extension(base);
        let (table, format) = match (mapped, by_ext) {
            (Some(m), ext) => {
                let f = m
                    .format
                    .filter(|f| *f != ImportFormat::Auto)
                    .or((cfg.format != ImportFormat::Auto).then_some(cfg.format))
                    .or(ext.map(|(f, _)| f));
                match f {
                    Some(f) => (m.table.clone(), f),
                    None => {
                        return Err(ImportError::Plan(format!(
                            "{name} matches the mapping pattern {:?} but its format is unknown; \
                             set format in that [[import.mapping]] or in [import]",
                            m.pattern
                        )))
                    }
                }
            }
            (None, Some((f, stem))) => {
                let is_other_schema = stem.ends_with("-schema-create")
                    || stem.contains("-schema-")
                    || stem.ends_with("-schema");
                match table_of_stem(stem) {
                    Some(t) if !is_other_schema => {
                        let f = if cfg.format != ImportFormat::Auto {
                            cfg.format
                        } else {
                            f
                        };
                        (t, f)
                    }
                    _ => {
                        listing.skipped.push(name);
                        continue;
                    }
                }
            }
            (None, None) => {
                listing.skipped.push(name);
                continue;
            }
        };
        listing.data.push(DataFile {
            name,
            path,
            table,
            format,
            compression,
            size,
        });
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.csv", "a.csv"));
        assert!(glob_match("orders.*.csv", "orders.001.csv"));
        assert!(!glob_match("orders.*.csv", "orders.csv"));
        assert!(glob_match("t?.sql", "t1.sql"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "ac"));
    }

    #[test]
    fn mydumper_names() {
        assert_eq!(table_of_stem("db.t"), Some("t".into()));
        assert_eq!(table_of_stem("db.t.00001"), Some("t".into()));
        assert_eq!(table_of_stem("t"), Some("t".into()));
        assert_eq!(table_of_stem("00001"), Some("00001".into()));
    }

    #[test]
    fn classifies_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "metadata",
            "db-schema-create.sql",
            "db.t-schema.sql",
            "db.t.00000.sql",
            "db.t.00001.sql.zst",
            "u.csv",
            "v.tsv.gz",
            "README",
            "x.dat",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let mut cfg = super::super::config::ImportJobConfig::parse(
            &format!(
                "[target]\nuser = \"r\"\ndatabase = \"d\"\n[import]\ndir = {:?}\n[[import.mapping]]\npattern = \"*.dat\"\ntable = \"w\"\nformat = \"csv\"\n",
                dir.path().display().to_string()
            ),
            "t",
        )
        .unwrap()
        .import;
        let l = discover(&cfg).unwrap();
        let got: Vec<(&str, &str, ImportFormat)> = l
            .data
            .iter()
            .map(|d| (d.name.as_str(), d.table.as_str(), d.format))
            .collect();
        assert_eq!(
            got,
            vec![
                ("db.t.00000.sql", "t", ImportFormat::Sql),
                ("db.t.00001.sql.zst", "t", ImportFormat::Sql),
                ("u.csv", "u", ImportFormat::Csv),
                ("v.tsv.gz", "v", ImportFormat::Tsv),
                ("x.dat", "w", ImportFormat::Csv),
            ]
        );
        assert_eq!(l.data[1].compression, FileCompression::Zstd);
        assert!(l.schemas.contains_key("t"));
        assert_eq!(
            l.skipped,
            vec!["README", "db-schema-create.sql", "metadata"]
        );
        cfg.mappings.clear();
        assert_eq!(discover(&cfg).unwrap().skipped.len(), 4);
    }
}
