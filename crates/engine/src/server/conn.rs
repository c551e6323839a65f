//! Connections: driver options, pools, and database errors with context.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

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

/// Sets the session's `lock_wait_timeout` (whole seconds; `0`: a metadata
/// lock that is not free at once fails with error 1205 instead of waiting).
pub async fn set_lock_wait_timeout(conn: &mut Conn, secs: u64) -> Result<(), DbError> {
    conn.query_drop(format!("SET SESSION lock_wait_timeout = {secs}"))
        .await
        .context(|| format!("setting lock_wait_timeout = {secs}"))
}

/// Whether the server can log an ALTER in two phases
/// (`binlog_alter_two_phase`, MariaDB 10.8+): a replica running parallel
/// replication then starts the statement when the source does, instead of
/// after the source has finished it.
pub async fn has_two_phase_alter(conn: &mut Conn) -> Result<bool, DbError> {
    let row: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL VARIABLES LIKE 'binlog_alter_two_phase'")
        .await
        .context(|| "reading binlog_alter_two_phase".into())?;
    Ok(row.is_some())
}

/// Logs the session's next ALTERs in two phases where the server can (see
/// [`has_two_phase_alter`]); elsewhere the session is left as it was. It
/// changes only how the ALTER is written to the binlog, and needs no
/// privilege.
pub async fn log_alter_in_two_phases(conn: &mut Conn) -> Result<(), DbError> {
    if !has_two_phase_alter(conn).await? {
        return Ok(());
    }
    conn.query_drop("SET SESSION binlog_alter_two_phase = ON")
        .await
        .context(|| "SET SESSION binlog_alter_two_phase = ON".into())
}
