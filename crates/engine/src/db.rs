//! Connections and the server flavor.
//!
//! Flavor differences (MariaDB vs MySQL: variable names, binlog metadata,
//! cut-over algorithm, privilege names) are decided here once, from
//! `SELECT VERSION()`, and carried as a [`Flavor`] value; other modules match
//! on it instead of sniffing version strings again.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use serde::Serialize;

use crate::config::ConnectionConfig;

/// A database error with what wraith was doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {error}")]
pub struct DbError {
    pub context: String,
    /// Not a `#[source]`: its text is already in this error's message.
    pub error: mysql_async::Error,
}

/// Adds context to a driver error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DbError>;
}

impl<T> Context<T> for Result<T, mysql_async::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, DbError> {
        self.map_err(|error| DbError {
            context: what(),
            error,
        })
    }
}

/// The server's error code, if `e` is a server error.
pub fn server_error_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Driver options for a configured server. The password is resolved here and
/// goes nowhere else. Multi-statements are off: the server refuses a query
/// text holding a second statement, whatever a config value smuggles in
/// (every pool and connection wraith opens on a configured server is built
/// from these options).
pub fn connection_opts(c: &ConnectionConfig) -> Result<Opts, String> {
    let password = c.resolve_password()?;
    let mut b = OptsBuilder::default()
        .user(Some(c.user.clone()))
        .pass(password.map(|p| p.expose().to_string()))
        .db_name(Some(c.database.clone()))
        .prefer_socket(false)
        .multi_statements(false)
        .stmt_cache_size(64);
    b = match &c.socket {
        Some(s) => b.socket(Some(s.display().to_string())),
        None => b.ip_or_hostname(c.host.clone()).tcp_port(c.port),
    };
    Ok(b.into())
}

/// A pool of at most `max` connections, multi-statements off whatever `opts` say.
pub fn pool(opts: Opts, max: usize) -> Pool {
    let constraints = PoolConstraints::new(1, max.max(1)).unwrap_or_default();
    let opts = OptsBuilder::from_opts(opts)
        .multi_statements(false)
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    Pool::new(opts)
}

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

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal for SQL text: the backend's, one escaping rule for both crates.
pub use wraith_backend::quote_str;

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

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_str("it's\\"), "'it''s\\\\'");
    }
}
