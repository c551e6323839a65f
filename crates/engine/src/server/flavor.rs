//! The server's family and version, read once and carried as a value.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;

use super::{Context, DbError};

/// Server family and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Flavor {
    MariaDb { major: u32, minor: u32, patch: u32 },
    MySql { major: u32, minor: u32, patch: u32 },
}

impl Flavor {
    /// Parses `SELECT VERSION()` output, e.g. `10.11.6-MariaDB-0+deb12u1-log` or `8.0.36`.
    pub fn parse(version: &str) -> Flavor {
        let nums: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .take(3)
            .map(|s| s.parse().unwrap_or(0))
            .collect();
        let (major, minor, patch) = (
            nums.first().copied().unwrap_or(0),
            nums.get(1).copied().unwrap_or(0),
            nums.get(2).copied().unwrap_or(0),
        );
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb {
                major,
                minor,
                patch,
            }
        } else {
            Flavor::MySql {
                major,
                minor,
                patch,
            }
        }
    }

    pub fn is_mariadb(&self) -> bool {
        matches!(self, Flavor::MariaDb { .. })
    }

    /// `(major, minor, patch)`.
    pub fn version(&self) -> (u32, u32, u32) {
        match *self {
            Flavor::MariaDb {
                major,
                minor,
                patch,
            }
            | Flavor::MySql {
                major,
                minor,
                patch,
            } => (major, minor, patch),
        }
    }

    /// Whether the server has `binlog_row_metadata` (MariaDB 10.5+, MySQL 8.0.1+).
    pub fn has_binlog_row_metadata(&self) -> bool {
        match self {
            Flavor::MariaDb { .. } => self.version() >= (10, 5, 0),
            Flavor::MySql { .. } => self.version() >= (8, 0, 1),
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.version();
        match self {
            Flavor::MariaDb { .. } => write!(f, "MariaDB {a}.{b}.{c}"),
            Flavor::MySql { .. } => write!(f, "MySQL {a}.{b}.{c}"),
        }
    }
}

/// Reads the flavor of the server behind `conn`.
pub async fn flavor(conn: &mut Conn) -> Result<Flavor, DbError> {
    let v: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .context(|| "reading the server version".into())?;
    Ok(Flavor::parse(&v.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_parses() {
        assert_eq!(
            Flavor::parse("10.11.6-MariaDB-0+deb12u1-log"),
            Flavor::MariaDb {
                major: 10,
                minor: 11,
                patch: 6
            }
        );
        assert_eq!(
            Flavor::parse("8.0.36"),
            Flavor::MySql {
                major: 8,
                minor: 0,
                patch: 36
            }
        );
        assert!(Flavor::parse("10.4.1-MariaDB").version() < (10, 5, 0));
    }
}
