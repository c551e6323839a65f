//! The connection: starting, handing out, reconnecting from the last
//! transaction boundary.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts};

use super::events::{Item, Txn};
use super::gtid::GtidState;
use super::{ChangeStream, ChangeStreamConfig, ChangeStreamError, StreamEvent, WatchedTable};
use crate::server::{self, BinlogPosition, Context, DbError, Flavor};

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
        cfg.check()?;
        let gtid = GtidState::parse(flavor.is_mariadb(), from.gtid.as_deref().unwrap_or(""));
        let armed = cfg.tables.iter().map(|t| !t.from_rename).collect();
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
            armed,
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
            if let Some(seen) = &self.ddl {
                if self.queue.is_empty() {
                    return Err(seen.error());
                }
            }
            match self.queue.pop_front() {
                Some(Item::Out(ev)) => {
                    match &ev {
                        StreamEvent::Commit { position } | StreamEvent::Heartbeat { position } => {
                            self.handed = position.clone();
                        }
                        StreamEvent::Rows(_)
                        | StreamEvent::Token(_)
                        | StreamEvent::Renamed { .. } => {}
                    }
                    return Ok(ev);
                }
                Some(Item::Advance(p)) => self.handed = p,
                Some(Item::Ddl(seen)) => {
                    self.handed = seen.position.clone();
                    return Err(seen.error());
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

    /// The followed tables: a [`RowChange::table`] indexes this list.
    pub fn tables(&self) -> &[WatchedTable] {
        &self.cfg.tables
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

    pub(super) fn position_here(&self) -> BinlogPosition {
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

    /// Every followed table, for messages that concern them all.
    pub(super) fn table_label(&self) -> String {
        self.cfg.label()
    }

    /// An event that concerns no table in particular could not be read.
    pub(super) fn decode_error(&self, reason: impl Into<String>) -> ChangeStreamError {
        self.decode_error_on(self.table_label(), reason)
    }

    /// An event of `table` could not be read.
    pub(super) fn decode_error_on(
        &self,
        table: String,
        reason: impl Into<String>,
    ) -> ChangeStreamError {
        ChangeStreamError::Decode {
            table,
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
}

pub(super) fn now_since_epoch() -> Duration {
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
