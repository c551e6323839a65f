//! # The server: connections, flavor, spellings, inspection
//!
//! **For:** everything wraith needs to know about the MySQL or MariaDB server
//! it talks to, said once: how to connect (driver options, pools, errors with
//! context), which server it is ([`Flavor`], read from `SELECT VERSION()`
//! once per run and carried as a value), the statements whose spelling
//! differs by flavor and version ([`binlog_status`]), quoting
//! ([`quote_ident`], [`quote_str`]: the backend's, one escaping rule for both
//! crates), one retry policy ([`RetryPolicy`]: attempts, a pause doubling
//! to a cap, and which failures are transient), the session's
//! `lock_wait_timeout` ([`set_lock_wait_timeout`]), a `LOCK TABLES` held
//! on one session and released on every path ([`TablesLock`]), and what a
//! table looks like ([`inspect`]). The checksum, the
//! cut-over, the copy, the applier, the change stream and the import use it
//! instead of sniffing version strings or spelling statements themselves.
//!
//! **Leaves to others:** what a check means for a run (preflight), when to
//! lock and for how long (the cut-over), the binlog protocol and its events
//! (the change stream), and the session setup for exact values
//! (`wraith_backend::sql::SESSION_SETUP`, shared with the backends).
//!
//! ## Flavors and versions
//!
//! A [`Flavor`] is MariaDB or MySQL with `(major, minor, patch)`. Where a
//! spelling differs, the module that needs it matches on the flavor; the
//! table below lists every such place:
//!
//! | What | MariaDB | MySQL | Where |
//! |---|---|---|---|
//! | the binlog position | `SHOW MASTER STATUS` | `SHOW MASTER STATUS` before 8.2, `SHOW BINARY LOG STATUS` from 8.2 (8.4 dropped the old one) | [`binlog_status`] |
//! | the GTID state at a position | `BINLOG_GTID_POS(file, pos)` | `Executed_Gtid_Set` of the same status row | [`binlog_status`], [`mariadb_gtid_at`] |
//! | `binlog_row_metadata` | from 10.5.0, must be `FULL` | from 8.0.1, `MINIMAL` or `FULL` | [`Flavor::has_binlog_row_metadata`], preflight |
//! | compressed binlog events | `log_bin_compress` must be off | (none) | preflight, change stream |
//! | the privilege to read binlog status | `BINLOG MONITOR` from 10.5.2 | `REPLICATION CLIENT` | preflight |
//! | binlog dump session variables | `@mariadb_slave_capability`, `@master_binlog_checksum` | `@source_heartbeat_period`, `@source_binlog_checksum` | change stream |
//! | a lock request that may not wait | `SET STATEMENT lock_wait_timeout = 0 FOR` | (none: a bounded request) | cut-over |
//! | a statement time bound | `SET STATEMENT max_statement_time = s FOR` | `/*+ MAX_EXECUTION_TIME(ms) */`, or `KILL QUERY` from a second session for `LOCK TABLES` | cut-over, data check |
//! | RENAME under `LOCK TABLES` | refused (1192): two sessions | allowed from 8.0.13: one session | cut-over |
//! | fresh `information_schema.TABLES` figures | always | `information_schema_stats_expiry = 0` | cut-over |
//! | a session's age in ms | `PROCESSLIST.TIME_MS` | `TIME * 1000` | blockers |
//! | an ALTER a parallel replica starts with the source | `binlog_alter_two_phase` from 10.8 | (none: replicas apply it after) | [`log_alter_in_two_phases`], preflight |
//! | who holds a metadata lock | the `metadata_lock_info` plugin, when loaded | (guessed from transactions) | blockers |
//!
//! ## Errors
//!
//! [`DbError`]: a driver error with what wraith was doing ([`Context`] adds
//! it). Decisions on an error are made on its server code
//! ([`server_error_code`]) or its kind, never on its text: a retry loop asks
//! its [`RetryPolicy`] whether a failure is transient ([`RetryOn`]: a lost
//! connection, a lock conflict, or the loop's own outcome).

mod conn;
mod flavor;
pub mod inspect;
mod lock;
mod position;
mod retry;

pub use self::conn::{
    connection_opts, has_two_phase_alter, log_alter_in_two_phases, pool, server_error_code,
    set_lock_wait_timeout, Context, DbError,
};
pub use self::flavor::{flavor, Flavor};
pub use self::lock::{TablesLock, Unlocked};
pub use self::position::{binlog_status, mariadb_gtid_at, BinlogPosition};
pub use self::retry::{is_lock_conflict, reconnect_may_help, RetryOn, RetryPolicy};

/// Quotes an identifier with backticks: the backend's, one rule for both crates.
pub use wraith_backend::quote_ident;
/// Quotes a string literal for SQL text: the backend's, one escaping rule for both crates.
pub use wraith_backend::quote_str;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_str("it's\\"), "'it''s\\\\'");
    }
}
