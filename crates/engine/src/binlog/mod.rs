//! # Change stream: the source tables' row changes, from the binary log
//!
//! **For:** following every committed change to the source tables of a job
//! while the copy runs and until cut-over. A stream follows a list of tables
//! ([`ChangeStreamConfig::tables`], one for a single-table run): one binlog
//! connection for all of them, however many tables the job rebuilds.
//! [`current_position`] takes the binlog position (file:pos and the GTID
//! state) before the copy starts; [`ChangeStream::start`] registers as a
//! replica on a dedicated connection, streams from that position, and hands
//! out each committed transaction's row changes to the followed tables in
//! the exact row model the copy uses ([`wraith_backend::Value`]), so the
//! applier can compare and replace rows without conversions. Each
//! [`RowChange`] says which table it belongs to ([`RowChange::table`], the
//! index in the list); the online module feeds each table's changes to that
//! table's state.
//!
//! **Leaves to others:** buffering and deduplicating changes per key, the
//! watermark rule and anything durable belong to the change buffer; writing
//! changes to the shadow table belongs to the applier; checking server
//! settings (`binlog_format = ROW`, `binlog_row_image = FULL`,
//! `binlog_row_metadata = FULL`, no `log_bin_compress`) belongs to preflight.
//! The stream re-checks what it sees and fails clearly rather than guess.
//!
//! ## Algorithm
//!
//! One event at a time from `mysql_async`'s binlog stream:
//! - **Position.** The reader keeps `file:pos` from each event header's
//!   `log_pos` (never backwards: the format description the server repeats at
//!   the start of a dump carries an older one) and from ROTATE events (the
//!   first, synthetic one has the 4 checksum bytes of an event whose format is
//!   not yet known on its file name: they are stripped). The GTID state is
//!   kept from GTID events: MariaDB's (type 162) and GTID_LIST (163) are
//!   decoded by hand; MySQL's through `mysql_common`.
//! - **Transactions.** A GTID event or `BEGIN` opens a transaction; an XID
//!   event or a `COMMIT` query ends it; a `ROLLBACK` query ends it with its
//!   rows discarded (the source table is transactional, so rows logged in a
//!   group that ends in ROLLBACK never happened to it); a statement outside
//!   `BEGIN` (DDL, or after MariaDB's standalone GTID) is its own transaction.
//!   Rows of the followed tables are decoded as their event arrives but held
//!   until the transaction commits, then handed out as one
//!   [`StreamEvent::Rows`] per ROWS event followed by a
//!   [`StreamEvent::Commit`]; every [`RowChange`] carries the position of the
//!   *end* of its transaction. Every transaction, watched or not, ends in a
//!   `Commit`, so a caller waiting for a position sees the stream pass it.
//! - **Tables.** TABLE_MAP events map table ids to names. Each followed table
//!   gets a decoding plan with its index in the list, checked against its
//!   inspected columns (count and kinds: a mismatch means the table changed
//!   behind wraith's back); wraith's changelog table gets a plan from the
//!   table map alone; rows of every other table are skipped without being
//!   decoded. Table names compare exactly, as `information_schema` reports
//!   them; a table listed twice is refused at start.
//! - **Row images** are decoded straight from the event bytes (see
//!   [`decode`](self::decode) for the value mapping); every image must hold
//!   every column (`binlog_row_image = FULL`).
//! - **DDL.** Every QUERY event is parsed (conservatively, see `ddl`): a
//!   statement that alters, drops, renames, truncates or replaces any
//!   followed table stops the stream with [`ChangeStreamError::DdlOnSource`]
//!   (naming the first followed table it touches), after everything committed
//!   before it has been handed out. A statement is parsed once however many
//!   tables are followed. wraith's own cut-over RENAME (one statement naming
//!   every table of the job) is such a statement: the cut-over stops reading
//!   before it.
//!   A table followed [`WatchedTable::from_rename`] (the revert window's
//!   live table) is followed only from the `RENAME TABLE` that renames
//!   another table into its name: before it, rows under the name are
//!   another table's and are skipped undecoded, DDL on it is not the
//!   followed table's, and the RENAME itself is handed out as
//!   [`StreamEvent::Renamed`] with the position after it.
//! - **Heartbeats.** The dump asks for `@master_heartbeat_period`; the server
//!   sends a HEARTBEAT event when it has had nothing to send for that long.
//!   Each becomes a [`StreamEvent::Heartbeat`] and marks the stream as caught
//!   up, so [`ChangeStream::lag`] stays meaningful when idle. Silence for
//!   several heartbeat periods means a dead connection: reconnect.
//! - **Reconnects.** A dropped connection (a KILLed dump thread, a network
//!   error, a server restart, an ended stream) is retried up to
//!   `reconnect_attempts` times with exponential backoff (200 ms doubling to
//!   5 s, the server module's `RetryPolicy`), each time from the last transaction boundary the reader passed. A
//!   transaction cut off mid-way is discarded and re-read whole: nothing it
//!   holds has been handed out, and everything handed out lies before the
//!   boundary, so nothing is lost or delivered twice.
//!
//! Files: `stream` is the connection (start, hand out, reconnect), `events`
//! the reader's state machine event by event, `decode` the row images,
//! `gtid` the GTID state, `ddl` the statements that touch the table.
//!
//! ## Trade-offs
//!
//! - Holding a transaction's rows until its commit is what gives every row an
//!   exact resume position and makes a reconnect trivially exact. The cost is
//!   memory for very large transactions on the followed tables (their decoded
//!   rows, not other tables'): the server writes a transaction to the binlog
//!   as a whole at commit, so this adds no latency. The alternative — handing
//!   rows out as they arrive and skipping the already delivered ones after a
//!   reconnect — cannot give a row the position of its transaction's end.
//! - Decoding is our own rather than `mysql_common`'s `BinlogRow`: it skips a
//!   per-row allocation of column descriptions and fixes YEAR 0000, negative
//!   `TIME(1..2)` and the normalisations the copy's row model needs.
//!
//! ## Flavors
//!
//! MariaDB (what the tests run): `@mariadb_slave_capability = 4` for real GTID
//! events, `@master_binlog_checksum`, `@master_heartbeat_period` in
//! nanoseconds; GTID events open transactions (there is no BEGIN), with
//! `FL_STANDALONE` for DDL. MySQL 8: `@master_heartbeat_period` and
//! `@source_heartbeat_period`; GTID (33, tagged 42) and anonymous GTID (34)
//! events open transactions and are followed by `BEGIN` unless standalone;
//! `TRANSACTION_PAYLOAD` (compressed transactions) is unpacked by
//! `mysql_async`, which yields the inner events after the payload event: the
//! payload's own `log_pos` is the transaction's end, the inner events carry
//! none, and the inner XID then commits at that end. MySQL's binary JSON is
//! printed as MySQL prints it. Not handled on either flavor: XA transactions
//! prepared in one event group and committed in another (`XA PREPARE`), and
//! `ROLLBACK TO SAVEPOINT` inside a transaction that also wrote
//! non-transactional tables (the server then logs the rolled-back rows).
//! MariaDB's compressed events (`log_bin_compress`) stop the stream with an
//! error naming the setting.
//!
//! ## Errors
//!
//! [`ChangeStreamError`]: server errors with what the stream was doing
//! (`Db`); `DdlOnSource` with the table, statement and position; `Decode`
//! naming the table, column, position and the setting to fix; `Config` naming
//! the table (a type wraith does not carry, a table listed twice); `Purged` when the
//! server no longer has the requested binlog; `ReconnectFailed` after the
//! last attempt, with the last error. After `DdlOnSource` every further
//! `next()` returns it again.

mod ddl;
mod decode;
mod events;
mod gtid;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::{BinlogStream, Conn, Opts};
use serde::{Deserialize, Serialize};
use wraith_backend::{ColumnSpec, Row};

use self::events::{DdlSeen, Held, Item, PendingGtid, Target, Txn};
use self::gtid::GtidState;
use crate::server::inspect::TableInfo;
use crate::server::{self, DbError, Flavor, RetryOn, RetryPolicy};

/// The binlog position: the server module's type, the one the cut-over drains to.
pub use crate::server::BinlogPosition;

/// The server's current binlog position ([`server::binlog_status`]) with the
/// GTID state at exactly that file:pos: `BINLOG_GTID_POS()` on MariaDB, the
/// GTID set of the same status row on MySQL.
pub async fn current_position(
    conn: &mut Conn,
    flavor: Flavor,
) -> Result<BinlogPosition, ChangeStreamError> {
    let mut position = server::binlog_status(conn, flavor)
        .await?
        .ok_or(ChangeStreamError::BinlogOff)?;
    if flavor.is_mariadb() {
        position.gtid = server::mariadb_gtid_at(conn, &position.file, position.pos).await?;
    }
    position.gtid = position
        .gtid
        .map(|g| g.split_whitespace().collect::<String>())
        .filter(|g| !g.is_empty());
    Ok(position)
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One changed row of a followed table.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// The changed table: its index in [`ChangeStreamConfig::tables`].
    pub table: usize,
    pub kind: ChangeKind,
    /// The row before (updates and deletes), every column in table order.
    pub before: Option<Row>,
    /// The row after (inserts and updates), every column in table order.
    pub after: Option<Row>,
    /// The end of this change's transaction: resuming from here neither
    /// re-reads nor skips anything.
    pub position: BinlogPosition,
    /// The event's timestamp (seconds since the epoch, server clock).
    pub timestamp: u32,
}

/// What [`ChangeStream::next`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// One followed table's rows of one ROWS event of a committed transaction.
    Rows(Vec<RowChange>),
    /// A transaction ended (XID, COMMIT, ROLLBACK, or a standalone statement);
    /// everything before `position` has been handed out.
    Commit { position: BinlogPosition },
    /// The server had nothing to send for a heartbeat period: the stream is
    /// caught up at `position`.
    Heartbeat { position: BinlogPosition },
    /// A committed row of wraith's changelog table: its `token` column.
    Token(String),
    /// The statement that renamed these tables (indexes into
    /// [`ChangeStreamConfig::tables`]) into place, for tables followed
    /// [`WatchedTable::from_rename`]: their changes follow from `position` on.
    /// Comes before that statement's `Commit`.
    Renamed {
        tables: Vec<usize>,
        position: BinlogPosition,
    },
}

/// One table a stream follows.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedTable {
    pub schema: String,
    pub table: String,
    /// The table's columns, all of them, in table order.
    pub columns: Vec<ColumnSpec>,
    /// Follow the table only from the first statement that renames (or
    /// otherwise changes) it: before it, the name is another table (the one
    /// a cut-over renamed away), whose rows are skipped undecoded. The
    /// revert window follows the live table from the cut-over's RENAME.
    pub from_rename: bool,
}

impl WatchedTable {
    /// The table as an inspected one; fails on a column type wraith cannot
    /// carry, naming the table and the column.
    pub fn inspected(table: &TableInfo) -> Result<WatchedTable, ChangeStreamError> {
        let columns = table
            .columns
            .iter()
            .map(|c| {
                c.spec(&c.name).ok_or_else(|| {
                    ChangeStreamError::Config(format!(
                        "column `{}` of {}.{} has type {}, which wraith does not carry",
                        c.name, table.schema, table.name, c.column_type
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WatchedTable {
            schema: table.schema.clone(),
            table: table.name.clone(),
            columns,
            from_rename: false,
        })
    }

    fn label(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// How to follow a list of tables.
#[derive(Debug, Clone)]
pub struct ChangeStreamConfig {
    /// The replica server id to register as; must be unique among the
    /// server's replicas. Default: random in `1_000_000..2_000_000`.
    pub server_id: u32,
    /// Heartbeat period asked of the server (default 1 s); zero asks for none
    /// (and disables the dead-connection timeout).
    pub heartbeat: Duration,
    /// Reconnect attempts after a dropped connection before giving up (default 10).
    pub reconnect_attempts: u32,
    /// The tables followed; a [`RowChange::table`] is an index into this list.
    pub tables: Vec<WatchedTable>,
    /// wraith's changelog table `(schema, table)`: rows written to it are
    /// handed out as [`StreamEvent::Token`] (the value of its `token` column).
    pub token_table: Option<(String, String)>,
}

impl ChangeStreamConfig {
    /// A config with the defaults for `tables`.
    pub fn new(tables: Vec<WatchedTable>) -> ChangeStreamConfig {
        ChangeStreamConfig {
            server_id: random_server_id(),
            heartbeat: Duration::from_secs(1),
            reconnect_attempts: 10,
            tables,
            token_table: None,
        }
    }

    /// A config with the defaults for an inspected table.
    pub fn for_table(table: &TableInfo) -> Result<ChangeStreamConfig, ChangeStreamError> {
        ChangeStreamConfig::for_tables(&[table])
    }

    /// A config with the defaults for inspected tables, in this order.
    pub fn for_tables(tables: &[&TableInfo]) -> Result<ChangeStreamConfig, ChangeStreamError> {
        let tables = tables
            .iter()
            .map(|t| WatchedTable::inspected(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChangeStreamConfig::new(tables))
    }

    /// What [`ChangeStream::start`] refuses: no table, a table without
    /// columns, a table listed twice.
    fn check(&self) -> Result<(), ChangeStreamError> {
        if self.tables.is_empty() {
            return Err(ChangeStreamError::Config("no table to follow".into()));
        }
        for (i, t) in self.tables.iter().enumerate() {
            if t.columns.is_empty() {
                return Err(ChangeStreamError::Config(format!(
                    "no columns given for {}",
                    t.label()
                )));
            }
            if self.tables[..i]
                .iter()
                .any(|o| o.schema == t.schema && o.table == t.table)
            {
                return Err(ChangeStreamError::Config(format!(
                    "{} is listed twice; list each table once",
                    t.label()
                )));
            }
        }
        Ok(())
    }

    /// The followed tables, for messages: `s.a, s.b`.
    fn label(&self) -> String {
        self.tables
            .iter()
            .map(WatchedTable::label)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ChangeStreamConfig {
    /// Reconnects: `reconnect_attempts` after the first, 200 ms doubling to 5 s
    /// between them, after a lost connection only.
    fn reconnect_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.reconnect_attempts.saturating_add(1),
            initial: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            retry_on: RetryOn::LostConnection,
        }
    }
}

impl Default for ChangeStreamConfig {
    /// The defaults, with no table: set `tables`.
    fn default() -> ChangeStreamConfig {
        ChangeStreamConfig::new(Vec::new())
    }
}

fn random_server_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(7))
        .unwrap_or(0);
    let mixed = nanos.wrapping_mul(2_654_435_761) ^ std::process::id().wrapping_mul(40_503);
    1_000_000 + mixed % 1_000_000
}

/// Everything that stops a change stream.
#[derive(Debug, thiserror::Error)]
pub enum ChangeStreamError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "the server's binary log is off (it reports no binlog position): wraith follows changes \
         through it; start the server with log_bin"
    )]
    BinlogOff,
    #[error("invalid change stream settings: {0}")]
    Config(String),
    #[error(
        "a statement changed the source table {table} while wraith was following it, at \
         {position}: `{statement}`; the rebuild cannot continue (the source table is untouched \
         by wraith); rerun it once schema changes are done"
    )]
    DdlOnSource {
        /// The first followed table the statement touches, `schema.table`.
        table: String,
        statement: String,
        position: BinlogPosition,
    },
    #[error("cannot decode the binlog event for {table} at {position}: {reason}")]
    Decode {
        table: String,
        position: BinlogPosition,
        reason: String,
    },
    #[error(
        "the server no longer has binlog position {position} ({message}); it was purged \
         (binlog_expire_logs_seconds / expire_logs_days, or PURGE BINARY LOGS); start over"
    )]
    Purged {
        position: BinlogPosition,
        message: String,
    },
    #[error(
        "another replica registered with server id {server_id} and displaced wraith's binlog \
         connection; give each running wraith (and replica) its own server id"
    )]
    ServerIdInUse { server_id: u32 },
    #[error(
        "lost the binlog connection and could not resume from {position} after {attempts} \
         attempts; last error: {last_error}"
    )]
    ReconnectFailed {
        attempts: u32,
        position: BinlogPosition,
        last_error: String,
    },
}

/// A live change stream. See the module documentation.
pub struct ChangeStream {
    opts: Opts,
    flavor: Flavor,
    cfg: ChangeStreamConfig,
    stream: Option<BinlogStream>,
    connection_id: Option<u32>,
    /// The server writes CRC32 checksums (the synthetic ROTATE carries one).
    checksum: bool,
    /// A FORMAT_DESCRIPTION event was read on this connection.
    seen_fde: bool,
    /// Reader cursor: the next event to read.
    file: String,
    pos: u64,
    gtid: GtidState,
    /// The last transaction boundary the reader passed: where a reconnect resumes.
    boundary: BinlogPosition,
    /// Everything before this has been handed out.
    handed: BinlogPosition,
    txn: Txn,
    pending_gtid: Option<PendingGtid>,
    held: Vec<Held>,
    tables: HashMap<u64, Target>,
    queue: VecDeque<Item>,
    /// Server time of the last event (or of the last heartbeat, when caught up).
    last_event: Option<Duration>,
    failures: u32,
    ddl: Option<DdlSeen>,
    /// Per followed table: whether its changes are followed yet (see
    /// [`WatchedTable::from_rename`]).
    armed: Vec<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_display_and_serialize() {
        let p = BinlogPosition {
            file: "binlog.000002".into(),
            pos: 385,
            gtid: Some("0-1-57".into()),
        };
        assert_eq!(p.to_string(), "binlog.000002:385");
        let back: BinlogPosition =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn server_ids_in_range() {
        for _ in 0..100 {
            let id = random_server_id();
            assert!((1_000_000..2_000_000).contains(&id));
        }
    }
}
