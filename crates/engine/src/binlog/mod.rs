//! # Change stream: the source table's row changes, from the binary log
//!
//! **For:** following every committed change to the source table while the
//! copy runs and until cut-over. [`current_position`] takes the binlog
//! position (file:pos and the GTID state) before the copy starts;
//! [`ChangeStream::start`] registers as a replica on a dedicated connection,
//! streams from that position, and hands out each committed transaction's
//! row changes to the source table in the exact row model the copy uses
//! ([`wraith_backend::Value`]), so the applier can compare and replace rows
//! without conversions.
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
//!   Rows of the watched table are decoded as their event arrives but held
//!   until the transaction commits, then handed out as one
//!   [`StreamEvent::Rows`] per ROWS event followed by a
//!   [`StreamEvent::Commit`]; every [`RowChange`] carries the position of the
//!   *end* of its transaction. Every transaction, watched or not, ends in a
//!   `Commit`, so a caller waiting for a position sees the stream pass it.
//! - **Tables.** TABLE_MAP events map table ids to names. The watched table
//!   gets a decoding plan, checked against the inspected columns (count and
//!   kinds: a mismatch means the table changed behind wraith's back); wraith's
//!   changelog table gets a plan from the table map alone; rows of every other
//!   table are skipped without being decoded. Table names compare exactly, as
//!   `information_schema` reports them.
//! - **Row images** are decoded straight from the event bytes (see
//!   [`decode`](self::decode) for the value mapping); every image must hold
//!   every column (`binlog_row_image = FULL`).
//! - **DDL.** Every QUERY event is parsed (conservatively, see `ddl`): a
//!   statement that alters, drops, renames, truncates or replaces the watched
//!   table stops the stream with [`ChangeStreamError::DdlOnSource`], after
//!   everything committed before it has been handed out. wraith's own
//!   cut-over RENAME is such a statement: the cut-over stops reading before
//!   it.
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
//! ## Trade-offs
//!
//! - Holding a transaction's rows until its commit is what gives every row an
//!   exact resume position and makes a reconnect trivially exact. The cost is
//!   memory for very large transactions on the source table (their decoded
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
//! (`Db`); `DdlOnSource` with the statement and position; `Decode` naming
//! the table, column, position and the setting to fix; `Purged` when the
//! server no longer has the requested binlog; `ReconnectFailed` after the
//! last attempt, with the last error. After `DdlOnSource` every further
//! `next()` returns it again.

mod ddl;
mod decode;
mod gtid;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mysql_async::binlog::events::{
    Event, EventData, GtidEvent, QueryEvent, RowsEventData, TableMapEvent,
};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};
use serde::{Deserialize, Serialize};
use wraith_backend::{ColumnSpec, Row, Value};

use self::decode::TablePlan;
use self::gtid::GtidState;
use crate::server::inspect::TableInfo;
use crate::server::{self, Context, DbError, Flavor, RetryOn, RetryPolicy};

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

/// One changed row of the watched table.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
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
    /// The watched table's rows of one ROWS event of a committed transaction.
    Rows(Vec<RowChange>),
    /// A transaction ended (XID, COMMIT, ROLLBACK, or a standalone statement);
    /// everything before `position` has been handed out.
    Commit { position: BinlogPosition },
    /// The server had nothing to send for a heartbeat period: the stream is
    /// caught up at `position`.
    Heartbeat { position: BinlogPosition },
    /// A committed row of wraith's changelog table: its `token` column.
    Token(String),
}

/// How to follow one table.
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
    pub watched_schema: String,
    pub watched_table: String,
    /// The watched table's columns, all of them, in table order.
    pub columns: Vec<ColumnSpec>,
    /// wraith's changelog table `(schema, table)`: rows written to it are
    /// handed out as [`StreamEvent::Token`] (the value of its `token` column).
    pub token_table: Option<(String, String)>,
}

impl ChangeStreamConfig {
    /// A config with the defaults for `schema.table` with `columns`.
    pub fn new(
        schema: impl Into<String>,
        table: impl Into<String>,
        columns: Vec<ColumnSpec>,
    ) -> ChangeStreamConfig {
        ChangeStreamConfig {
            server_id: random_server_id(),
            heartbeat: Duration::from_secs(1),
            reconnect_attempts: 10,
            watched_schema: schema.into(),
            watched_table: table.into(),
            columns,
            token_table: None,
        }
    }

    /// A config with the defaults for an inspected table.
    pub fn for_table(table: &TableInfo) -> Result<ChangeStreamConfig, ChangeStreamError> {
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
        Ok(ChangeStreamConfig::new(&table.schema, &table.name, columns))
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
    /// The defaults, with no table: set `watched_schema`, `watched_table` and `columns`.
    fn default() -> ChangeStreamConfig {
        ChangeStreamConfig::new(String::new(), String::new(), Vec::new())
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
        "a statement changed the source table while wraith was following it, at {position}: \
         `{statement}`; the rebuild cannot continue (the source table is untouched by wraith); \
         rerun it once schema changes are done"
    )]
    DdlOnSource {
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

/// What a table id of the current table maps stands for.
#[derive(Debug, Clone)]
enum Target {
    Watched(Arc<TablePlan>),
    Token(Arc<TablePlan>, usize),
    Other,
}

/// An open transaction: whether BEGIN was seen (or implied), so that a
/// statement after a bare GTID event is known to be standalone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Txn {
    Idle,
    Open { begun: bool },
}

#[derive(Debug, Clone)]
enum PendingGtid {
    MariaDb { domain: u32, server: u32, seq: u64 },
    MySql { sid: String, gno: u64 },
}

/// A decoded piece of an open transaction, waiting for its commit.
#[derive(Debug)]
enum Held {
    Rows {
        kind: ChangeKind,
        rows: Vec<Images>,
        timestamp: u32,
    },
    Token(String),
}

#[derive(Debug)]
enum Item {
    Out(StreamEvent),
    /// Everything queued before this is handed out: `position()` moves here.
    Advance(BinlogPosition),
    Ddl {
        statement: String,
        position: BinlogPosition,
    },
}

const ROTATE: u8 = 4;
const QUERY: u8 = 2;
const FORMAT_DESCRIPTION: u8 = 15;
const XID: u8 = 16;
const TABLE_MAP: u8 = 19;
const HEARTBEAT: u8 = 27;
const HEARTBEAT_V2: u8 = 41;
const MYSQL_GTID: u8 = 33;
const MYSQL_ANONYMOUS_GTID: u8 = 34;
const PARTIAL_UPDATE_ROWS: u8 = 39;
const TRANSACTION_PAYLOAD: u8 = 40;
const MYSQL_GTID_TAGGED: u8 = 42;
const MARIADB_GTID: u8 = 162;
const MARIADB_GTID_LIST: u8 = 163;
const MARIADB_QUERY_COMPRESSED: u8 = 165;
const LOG_EVENT_ARTIFICIAL_F: u16 = 0x20;

fn rows_kind(ty: u8) -> Option<ChangeKind> {
    match ty {
        23 | 30 | 166 | 169 => Some(ChangeKind::Insert),
        24 | 31 | 167 | 170 => Some(ChangeKind::Update),
        25 | 32 | 168 | 171 => Some(ChangeKind::Delete),
        _ => None,
    }
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
    ddl: Option<(String, BinlogPosition)>,
}

impl ChangeStream {
    /// Connects, registers as replica `cfg.server_id` and starts streaming
    /// from `from` (a position from [`current_position`] or a
    /// [`RowChange::position`] / [`StreamEvent::Commit`] position). Fails if
    /// the position is gone ([`ChangeStreamError::Purged`]).
    pub async fn start(
        opts: Opts,
        flavor: Flavor,
        from: BinlogPosition,
        cfg: ChangeStreamConfig,
    ) -> Result<ChangeStream, ChangeStreamError> {
        if from.file.is_empty() {
            return Err(ChangeStreamError::Config(
                "the start position has no binlog file name".into(),
            ));
        }
        if cfg.columns.is_empty() {
            return Err(ChangeStreamError::Config(format!(
                "no columns given for {}.{}",
                cfg.watched_schema, cfg.watched_table
            )));
        }
        let gtid = GtidState::parse(flavor.is_mariadb(), from.gtid.as_deref().unwrap_or(""));
        let mut s = ChangeStream {
            opts,
            flavor,
            cfg,
            stream: None,
            connection_id: None,
            checksum: false,
            seen_fde: false,
            file: from.file.clone(),
            pos: from.pos,
            gtid,
            boundary: from.clone(),
            handed: from,
            txn: Txn::Idle,
            pending_gtid: None,
            held: Vec::new(),
            tables: HashMap::new(),
            queue: VecDeque::new(),
            last_event: None,
            failures: 0,
            ddl: None,
        };
        // Read the first event (the synthetic ROTATE): a purged position or a
        // refused registration fails here rather than in the first next().
        s.pump().await?;
        Ok(s)
    }

    /// Waits for the next event of interest.
    ///
    /// Cancel-safe: dropping the future (a `select!` or `timeout`) loses
    /// nothing. A partly read event stays buffered in the connection, a
    /// half-made reconnect is redone on the next call, and events are only
    /// removed from the internal queue when they are returned.
    pub async fn next(&mut self) -> Result<StreamEvent, ChangeStreamError> {
        loop {
            if let Some((statement, position)) = &self.ddl {
                if self.queue.is_empty() {
                    return Err(ChangeStreamError::DdlOnSource {
                        statement: statement.clone(),
                        position: position.clone(),
                    });
                }
            }
            match self.queue.pop_front() {
                Some(Item::Out(ev)) => {
                    match &ev {
                        StreamEvent::Commit { position } | StreamEvent::Heartbeat { position } => {
                            self.handed = position.clone();
                        }
                        StreamEvent::Rows(_) | StreamEvent::Token(_) => {}
                    }
                    return Ok(ev);
                }
                Some(Item::Advance(p)) => self.handed = p,
                Some(Item::Ddl {
                    statement,
                    position,
                }) => {
                    self.handed = position.clone();
                    return Err(ChangeStreamError::DdlOnSource {
                        statement,
                        position,
                    });
                }
                None => self.pump().await?,
            }
        }
    }

    /// The last fully processed position: everything before it has been
    /// handed out (or was of no interest).
    pub fn position(&self) -> &BinlogPosition {
        &self.handed
    }

    /// How far behind the server the stream is: now minus the timestamp of
    /// the last event read (heartbeats count as "now", so an idle, caught-up
    /// stream has a lag near zero). Second resolution, server clock.
    pub fn lag(&self) -> Duration {
        match self.last_event {
            Some(t) => now_since_epoch().saturating_sub(t),
            None => Duration::ZERO,
        }
    }

    /// The server thread id of the current binlog connection.
    pub fn connection_id(&self) -> Option<u32> {
        self.connection_id
    }

    /// Closes the binlog connection.
    pub async fn close(mut self) {
        if let Some(s) = self.stream.take() {
            if let Err(e) = s.close().await {
                tracing::debug!("closing the binlog connection: {e}");
            }
        }
    }

    fn position_here(&self) -> BinlogPosition {
        BinlogPosition {
            file: self.file.clone(),
            pos: self.pos,
            gtid: if self.gtid.is_empty() {
                None
            } else {
                Some(self.gtid.render())
            },
        }
    }

    fn table_label(&self) -> String {
        format!("{}.{}", self.cfg.watched_schema, self.cfg.watched_table)
    }

    fn decode_error(&self, reason: impl Into<String>) -> ChangeStreamError {
        ChangeStreamError::Decode {
            table: self.table_label(),
            position: self.boundary.clone(),
            reason: reason.into(),
        }
    }

    /// How long silence may last before the connection counts as dead.
    fn idle_timeout(&self) -> Option<Duration> {
        if self.cfg.heartbeat.is_zero() {
            None
        } else {
            Some(self.cfg.heartbeat * 4 + Duration::from_secs(5))
        }
    }

    /// Reads and processes one binlog event, reconnecting as needed.
    async fn pump(&mut self) -> Result<(), ChangeStreamError> {
        loop {
            let idle_timeout = self.idle_timeout();
            let Some(stream) = self.stream.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let got = match idle_timeout {
                Some(t) => match tokio::time::timeout(t, stream.next()).await {
                    Ok(got) => got,
                    Err(_) => {
                        tracing::warn!(
                            "binlog connection silent for {}: reconnecting",
                            humantime::format_duration(t)
                        );
                        self.drop_stream();
                        continue;
                    }
                },
                None => stream.next().await,
            };
            match got {
                Some(Ok(event)) => {
                    self.failures = 0;
                    return self.handle(event);
                }
                Some(Err(e)) => {
                    if let Some(message) = purged(&e) {
                        return Err(ChangeStreamError::Purged {
                            position: self.boundary.clone(),
                            message,
                        });
                    }
                    if matches!(&e, mysql_async::Error::Server(s) if s.code == 4052) {
                        return Err(ChangeStreamError::ServerIdInUse {
                            server_id: self.cfg.server_id,
                        });
                    }
                    if !self.cfg.reconnect_policy().is_transient(&e) {
                        return Err(ChangeStreamError::Db(DbError {
                            context: format!("reading the binlog at {}", self.boundary),
                            error: e,
                        }));
                    }
                    tracing::warn!(
                        "binlog connection lost ({e}); resuming from {}",
                        self.boundary
                    );
                    self.drop_stream();
                }
                None => {
                    tracing::warn!(
                        "the server ended the binlog stream; resuming from {}",
                        self.boundary
                    );
                    self.drop_stream();
                }
            }
        }
    }

    fn drop_stream(&mut self) {
        self.stream = None;
        self.connection_id = None;
    }

    async fn reconnect(&mut self) -> Result<(), ChangeStreamError> {
        let mut last_error = String::new();
        loop {
            let policy = self.cfg.reconnect_policy();
            if !policy.allows(self.failures) {
                return Err(ChangeStreamError::ReconnectFailed {
                    attempts: self.cfg.reconnect_attempts,
                    position: self.boundary.clone(),
                    last_error,
                });
            }
            policy.pause(self.failures).await;
            self.failures += 1;
            match self.connect().await {
                Ok(()) => return Ok(()),
                Err(ChangeStreamError::Db(e)) if policy.is_transient(&e.error) => {
                    tracing::warn!(
                        "binlog reconnect attempt {} of {} failed: {e}",
                        self.failures,
                        self.cfg.reconnect_attempts
                    );
                    last_error = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a new binlog connection at the last boundary.
    async fn connect(&mut self) -> Result<(), ChangeStreamError> {
        let from = self.boundary.clone();
        let mut conn = Conn::new(self.opts.clone())
            .await
            .context(|| "opening the binlog connection".to_string())?;
        let id = conn.id();
        let period_ns = self.cfg.heartbeat.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut setup = vec![format!("SET @master_heartbeat_period = {period_ns}")];
        if self.flavor.is_mariadb() {
            setup.push("SET @mariadb_slave_capability = 4".into());
            setup.push("SET @master_binlog_checksum = @@global.binlog_checksum".into());
        } else {
            setup.push(format!("SET @source_heartbeat_period = {period_ns}"));
            setup.push("SET @source_binlog_checksum = @@global.binlog_checksum".into());
        }
        for q in &setup {
            conn.query_drop(q)
                .await
                .context(|| format!("preparing the binlog connection: {q}"))?;
        }
        let checksum: Option<String> = conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .context(|| "reading binlog_checksum".to_string())?;
        self.checksum = checksum.is_some_and(|c| c.eq_ignore_ascii_case("CRC32"));
        if self.flavor.is_mariadb() && from.gtid.is_none() {
            if let Some(g) = server::mariadb_gtid_at(&mut conn, &from.file, from.pos).await? {
                self.boundary.gtid = Some(g.clone()).filter(|g| !g.is_empty());
                if self.handed.file == from.file && self.handed.pos == from.pos {
                    self.handed.gtid = self.boundary.gtid.clone();
                }
            }
        }
        let request = BinlogStreamRequest::new(self.cfg.server_id)
            .with_filename(from.file.as_bytes())
            .with_pos(from.pos);
        let stream = conn
            .get_binlog_stream(request)
            .await
            .context(|| format!("requesting the binlog from {from}"))?;
        tracing::info!(
            server_id = self.cfg.server_id,
            connection_id = id,
            "binlog stream for {} from {from}",
            self.table_label()
        );
        // Back to the boundary: a transaction cut off mid-way is read again whole.
        self.file = self.boundary.file.clone();
        self.pos = self.boundary.pos;
        self.gtid = GtidState::parse(
            self.flavor.is_mariadb(),
            self.boundary.gtid.as_deref().unwrap_or(""),
        );
        self.txn = Txn::Idle;
        self.pending_gtid = None;
        self.held.clear();
        self.tables.clear();
        self.seen_fde = false;
        self.stream = Some(stream);
        self.connection_id = Some(id);
        Ok(())
    }

    /// Processes one event: cursor, transaction state, rows, DDL.
    fn handle(&mut self, event: Event) -> Result<(), ChangeStreamError> {
        let h = event.header();
        let ty = h.event_type_raw();
        let log_pos = u64::from(h.log_pos());
        let artificial = h.flags_raw() & LOG_EVENT_ARTIFICIAL_F != 0;
        let heartbeat = ty == HEARTBEAT || ty == HEARTBEAT_V2;
        if heartbeat {
            self.last_event = Some(now_since_epoch());
        } else if h.timestamp() > 0 && log_pos != 0 && !artificial {
            self.last_event = Some(Duration::from_secs(u64::from(h.timestamp())));
        }
        if ty != ROTATE && !heartbeat && !artificial && log_pos > self.pos {
            self.pos = log_pos;
        }
        match ty {
            ROTATE => self.on_rotate(&event, artificial)?,
            FORMAT_DESCRIPTION => self.seen_fde = true,
            HEARTBEAT | HEARTBEAT_V2 => {
                self.queue.push_back(Item::Out(StreamEvent::Heartbeat {
                    position: self.boundary.clone(),
                }));
            }
            QUERY => self.on_query(&event)?,
            XID => self.commit(),
            TABLE_MAP => self.on_table_map(&event)?,
            MARIADB_GTID => {
                let (seq, domain, flags) = gtid::parse_mariadb_gtid(event.data())
                    .ok_or_else(|| self.decode_error("short MariaDB GTID event"))?;
                self.pending_gtid = Some(PendingGtid::MariaDb {
                    domain,
                    server: h.server_id(),
                    seq,
                });
                self.txn = Txn::Open {
                    begun: flags & gtid::MARIADB_FL_STANDALONE == 0,
                };
            }
            MARIADB_GTID_LIST => {
                if let Some(list) = gtid::parse_mariadb_gtid_list(event.data()) {
                    self.gtid.merge_mariadb_list(&list);
                }
            }
            MYSQL_GTID | MYSQL_GTID_TAGGED => {
                let g: GtidEvent = event
                    .read_event()
                    .map_err(|e| self.decode_error(format!("bad GTID event: {e}")))?;
                let mut sid = gtid::uuid_text(&g.sid());
                if let Some(tag) = g.tag() {
                    sid = format!("{sid}:{tag}");
                }
                self.pending_gtid = Some(PendingGtid::MySql { sid, gno: g.gno() });
                self.txn = Txn::Open { begun: false };
            }
            MYSQL_ANONYMOUS_GTID => self.txn = Txn::Open { begun: false },
            TRANSACTION_PAYLOAD if self.txn == Txn::Idle => {
                self.txn = Txn::Open { begun: false };
            }
            MARIADB_QUERY_COMPRESSED => {
                return Err(self.decode_error(
                    "the server writes compressed events (log_bin_compress = ON), which wraith \
                     cannot read; set log_bin_compress = OFF",
                ))
            }
            PARTIAL_UPDATE_ROWS if self.is_interesting(&event) => {
                return Err(self.decode_error(
                    "partial JSON updates in the binlog (binlog_row_value_options = \
                     PARTIAL_JSON); set binlog_row_value_options = ''",
                ));
            }
            t if rows_kind(t).is_some() => {
                if t >= 166 {
                    if self.is_interesting(&event) {
                        return Err(self.decode_error(
                            "compressed row events (log_bin_compress = ON); set \
                             log_bin_compress = OFF",
                        ));
                    }
                } else {
                    self.on_rows(&event, t)?;
                }
            }
            _ => {}
        }
        if self.txn == Txn::Idle && self.ddl.is_none() {
            self.boundary = self.position_here();
            if self.queue.is_empty() {
                self.handed = self.boundary.clone();
            } else if let Some(Item::Advance(p)) = self.queue.back_mut() {
                *p = self.boundary.clone();
            } else {
                self.queue.push_back(Item::Advance(self.boundary.clone()));
            }
        }
        Ok(())
    }

    /// Whether a rows event (read by its table id only) is for the watched or token table.
    fn is_interesting(&self, event: &Event) -> bool {
        let id = event
            .data()
            .get(0..6)
            .map(|b| b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)));
        !matches!(id.and_then(|id| self.tables.get(&id)), Some(Target::Other))
    }

    fn on_rotate(&mut self, event: &Event, artificial: bool) -> Result<(), ChangeStreamError> {
        let data = event.data();
        if data.len() < 8 {
            return Err(self.decode_error("short ROTATE event"));
        }
        let pos = u64::from_le_bytes([
            data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7],
        ]);
        let mut name = &data[8..];
        // Before any format description the reader cannot know the event has
        // a checksum: it is still on the name.
        if !self.seen_fde && self.checksum && name.len() > 4 {
            name = &name[..name.len() - 4];
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if !artificial {
            self.tables.clear();
        }
        tracing::debug!("binlog rotate to {name}:{pos}");
        self.file = name;
        self.pos = pos;
        Ok(())
    }

    fn on_query(&mut self, event: &Event) -> Result<(), ChangeStreamError> {
        let q: QueryEvent<'_> = event
            .read_event()
            .map_err(|e| self.decode_error(format!("bad QUERY event: {e}")))?;
        let sql = q.query();
        let head = first_words(&sql);
        match head.as_str() {
            "BEGIN" | "XA START" | "XA BEGIN" => {
                self.txn = Txn::Open { begun: true };
                return Ok(());
            }
            "COMMIT" | "XA COMMIT" => {
                self.commit();
                return Ok(());
            }
            "ROLLBACK" | "XA ROLLBACK" => {
                self.held.clear();
                self.commit();
                return Ok(());
            }
            "ROLLBACK TO" | "SAVEPOINT" | "XA END" | "XA PREPARE" => return Ok(()),
            _ => {}
        }
        let schema = q.schema();
        if ddl::touches_table(
            &sql,
            &schema,
            &self.cfg.watched_schema,
            &self.cfg.watched_table,
        ) {
            let position = self.boundary.clone();
            // The caller decides what this means (the cut-over's own RENAME is expected).
            tracing::info!("DDL on {} at {position}: {sql}", self.table_label());
            let statement = sql.into_owned();
            self.queue.push_back(Item::Ddl {
                statement: statement.clone(),
                position: position.clone(),
            });
            self.ddl = Some((statement, position));
            return Ok(());
        }
        match self.txn {
            // A statement of its own (DDL, or DML logged as a statement).
            Txn::Idle | Txn::Open { begun: false } => self.commit(),
            Txn::Open { begun: true } => {}
        }
        Ok(())
    }

    /// Ends the open transaction: its held rows are handed out with its end position.
    fn commit(&mut self) {
        match self.pending_gtid.take() {
            Some(PendingGtid::MariaDb {
                domain,
                server,
                seq,
            }) => self.gtid.apply_mariadb(domain, server, seq),
            Some(PendingGtid::MySql { sid, gno }) => self.gtid.apply_mysql(&sid, gno),
            None => {}
        }
        self.txn = Txn::Idle;
        let position = self.position_here();
        for held in self.held.drain(..) {
            let ev = match held {
                Held::Rows {
                    kind,
                    rows,
                    timestamp,
                } => StreamEvent::Rows(
                    rows.into_iter()
                        .map(|(before, after)| RowChange {
                            kind,
                            before,
                            after,
                            position: position.clone(),
                            timestamp,
                        })
                        .collect(),
                ),
                Held::Token(t) => StreamEvent::Token(t),
            };
            self.queue.push_back(Item::Out(ev));
        }
        self.queue
            .push_back(Item::Out(StreamEvent::Commit { position }));
    }

    fn on_table_map(&mut self, event: &Event) -> Result<(), ChangeStreamError> {
        let tme: TableMapEvent<'_> = event
            .read_event()
            .map_err(|e| self.decode_error(format!("bad TABLE_MAP event: {e}")))?;
        let (db, table) = (tme.database_name_raw(), tme.table_name_raw());
        let target = if db == self.cfg.watched_schema.as_bytes()
            && table == self.cfg.watched_table.as_bytes()
        {
            let plan =
                TablePlan::new(&tme, &self.cfg.columns).map_err(|e| self.decode_error(e.0))?;
            Target::Watched(Arc::new(plan))
        } else if let Some((ts, tt)) = &self.cfg.token_table {
            if db == ts.as_bytes() && table == tt.as_bytes() {
                let plan = TablePlan::generic(&tme).map_err(|e| self.decode_error(e.0))?;
                let idx = plan.column_index("token").ok_or_else(|| {
                    self.decode_error(format!(
                        "the changelog table {ts}.{tt} has no column named `token` in the \
                         binlog (binlog_row_metadata = FULL is needed)"
                    ))
                })?;
                Target::Token(Arc::new(plan), idx)
            } else {
                Target::Other
            }
        } else {
            Target::Other
        };
        self.tables.insert(tme.table_id(), target);
        Ok(())
    }

    fn on_rows(&mut self, event: &Event, ty: u8) -> Result<(), ChangeStreamError> {
        let Some(kind) = rows_kind(ty) else {
            return Ok(());
        };
        let data = event
            .read_data()
            .map_err(|e| self.decode_error(format!("bad ROWS event: {e}")))?;
        let Some(EventData::RowsEvent(re)) = data else {
            return Ok(());
        };
        let target = match self.tables.get(&re.table_id()) {
            Some(Target::Other) => return Ok(()),
            Some(t) => t.clone(),
            None => {
                return Err(self.decode_error(format!(
                    "a ROWS event for table id {} without its TABLE_MAP",
                    re.table_id()
                )))
            }
        };
        if self.txn == Txn::Idle {
            self.txn = Txn::Open { begun: true };
        }
        let (plan, token_idx) = match &target {
            Target::Watched(p) => (p.clone(), None),
            Target::Token(p, i) => (p.clone(), Some(*i)),
            Target::Other => return Ok(()),
        };
        let rows = decode_rows(&plan, &re).map_err(|e| self.decode_error(e.0))?;
        match token_idx {
            None => self.held.push(Held::Rows {
                kind,
                rows,
                timestamp: event.header().timestamp(),
            }),
            Some(i) => {
                for (_, after) in rows {
                    if let Some(v) = after.as_ref().and_then(|r| r.get(i)) {
                        self.held.push(Held::Token(token_text(v)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A row's `(before, after)` images.
type Images = (Option<Row>, Option<Row>);

/// Every row of a ROWS event.
fn decode_rows(
    plan: &TablePlan,
    re: &RowsEventData<'_>,
) -> Result<Vec<Images>, decode::DecodeError> {
    let n = re.num_columns() as usize;
    let before_bits: Option<Vec<bool>> = re
        .columns_before_image()
        .map(|b| b.iter().take(n).map(|x| *x).collect());
    let after_bits: Option<Vec<bool>> = re
        .columns_after_image()
        .map(|b| b.iter().take(n).map(|x| *x).collect());
    let mut data = re.rows_data();
    let mut rows = Vec::new();
    while !data.is_empty() {
        let before = match &before_bits {
            Some(p) => Some(plan.decode_image(p, &mut data)?),
            None => None,
        };
        let after = match &after_bits {
            Some(p) => Some(plan.decode_image(p, &mut data)?),
            None => None,
        };
        rows.push((before, after));
    }
    Ok(rows)
}

fn token_text(v: &Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Decimal(d) => d.clone(),
        other => format!("{other:?}"),
    }
}

/// The leading keywords of a statement, upper-cased: `BEGIN`, `XA START`,
/// `ROLLBACK TO`, ... (only what transaction control needs).
fn first_words(sql: &str) -> String {
    let mut words = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "XA" => format!("XA {}", words.next().unwrap_or("").to_ascii_uppercase()),
        "ROLLBACK" => match words.next().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("TO") => "ROLLBACK TO".into(),
            Some("WORK") | None => "ROLLBACK".into(),
            Some(_) => "ROLLBACK".into(),
        },
        "COMMIT" => "COMMIT".into(),
        _ => first,
    }
}

fn now_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The server's message if `e` says the requested binlog is gone. The text
/// only picks the message: every 1236 ends the stream either way.
fn purged(e: &mysql_async::Error) -> Option<String> {
    match e {
        mysql_async::Error::Server(s) if s.code == 1236 => {
            let m = s.message.to_ascii_lowercase();
            (m.contains("purged")
                || m.contains("could not find first log file")
                || m.contains("could not find")
                || m.contains("not found"))
            .then(|| s.message.clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_words() {
        assert_eq!(first_words("BEGIN"), "BEGIN");
        assert_eq!(first_words("  commit ;"), "COMMIT");
        assert_eq!(first_words("ROLLBACK"), "ROLLBACK");
        assert_eq!(first_words("ROLLBACK TO SAVEPOINT a"), "ROLLBACK TO");
        assert_eq!(first_words("XA START 'x'"), "XA START");
        assert_eq!(first_words("ALTER TABLE t"), "ALTER");
    }

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
