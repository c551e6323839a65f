//! Event by event: the reader's cursor, transactions, table maps, row
//! images and DDL (the algorithm of the module page).

use std::sync::Arc;
use std::time::Duration;

use mysql_async::binlog::events::{
    Event, EventData, GtidEvent, QueryEvent, RowsEventData, TableMapEvent,
};
use wraith_backend::{Row, Value};

use super::decode::{self, TablePlan};
use super::stream::now_since_epoch;
use super::{ddl, gtid, ChangeKind, ChangeStream, ChangeStreamError, RowChange, StreamEvent};
use crate::server::BinlogPosition;

/// What a table id of the current table maps stands for.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// A followed table: its index in the config's list.
    Watched(usize, Arc<TablePlan>),
    Token(Arc<TablePlan>, usize),
    Other,
}

/// An open transaction: whether BEGIN was seen (or implied), so that a
/// statement after a bare GTID event is known to be standalone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Txn {
    Idle,
    Open { begun: bool },
}

#[derive(Debug, Clone)]
pub(super) enum PendingGtid {
    MariaDb { domain: u32, server: u32, seq: u64 },
    MySql { sid: String, gno: u64 },
}

/// A decoded piece of an open transaction, waiting for its commit.
#[derive(Debug)]
pub(super) enum Held {
    Rows {
        table: usize,
        kind: ChangeKind,
        rows: Vec<Images>,
        timestamp: u32,
    },
    Token(String),
}

#[derive(Debug)]
pub(super) enum Item {
    Out(StreamEvent),
    /// Everything queued before this is handed out: `position()` moves here.
    Advance(BinlogPosition),
    Ddl(DdlSeen),
}

/// A statement that changed a followed table: the stream stops there.
#[derive(Debug, Clone)]
pub(super) struct DdlSeen {
    /// `schema.table` of the first followed table it touches.
    pub table: String,
    pub statement: String,
    pub position: BinlogPosition,
}

impl DdlSeen {
    pub(super) fn error(&self) -> ChangeStreamError {
        ChangeStreamError::DdlOnSource {
            table: self.table.clone(),
            statement: self.statement.clone(),
            position: self.position.clone(),
        }
    }
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

/// A row's `(before, after)` images.
pub(super) type Images = (Option<Row>, Option<Row>);

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

impl ChangeStream {
    /// Processes one event: cursor, transaction state, rows, DDL.
    pub(super) fn handle(&mut self, event: Event) -> Result<(), ChangeStreamError> {
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
                return Err(self.decode_error_on(
                    self.event_table(&event),
                    "partial JSON updates in the binlog (binlog_row_value_options = \
                     PARTIAL_JSON); set binlog_row_value_options = ''",
                ));
            }
            t if rows_kind(t).is_some() => {
                if t >= 166 {
                    if self.is_interesting(&event) {
                        return Err(self.decode_error_on(
                            self.event_table(&event),
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

    /// Whether a rows event (read by its table id only) is for a followed or the token table.
    fn is_interesting(&self, event: &Event) -> bool {
        !matches!(self.rows_target(event), Some(Target::Other))
    }

    /// The target of a rows event, by its table id alone.
    fn rows_target(&self, event: &Event) -> Option<&Target> {
        let id = event
            .data()
            .get(0..6)
            .map(|b| b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)));
        id.and_then(|id| self.tables.get(&id))
    }

    /// The table a rows event is for, for messages.
    fn event_table(&self, event: &Event) -> String {
        match self.rows_target(event) {
            Some(t) => self.target_label(t),
            None => self.table_label(),
        }
    }

    fn target_label(&self, target: &Target) -> String {
        match target {
            Target::Watched(i, _) => self.cfg.tables[*i].label(),
            Target::Token(..) => match &self.cfg.token_table {
                Some((s, t)) => format!("{s}.{t}"),
                None => self.table_label(),
            },
            Target::Other => self.table_label(),
        }
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
        let names = || {
            self.cfg
                .tables
                .iter()
                .map(|t| (t.schema.as_str(), t.table.as_str()))
        };
        let touched = ddl::all_touched(&sql, &schema, names());
        let waiting = |i: &usize| !self.armed.get(*i).copied().unwrap_or(true);
        let arming: Vec<usize> = ddl::renamed_into(&sql, &schema, names())
            .into_iter()
            .filter(waiting)
            .collect();
        if !arming.is_empty() {
            // The statement that renames the tables into place: follow them from here.
            for &i in &arming {
                if let Some(a) = self.armed.get_mut(i) {
                    *a = true;
                }
            }
            tracing::info!("following {} from {}", sql, self.position_here());
            self.commit();
            let commit = self.queue.pop_back();
            if let Some(Item::Out(StreamEvent::Commit { position })) = &commit {
                self.queue.push_back(Item::Out(StreamEvent::Renamed {
                    tables: arming,
                    position: position.clone(),
                }));
            }
            self.queue.extend(commit);
            return Ok(());
        }
        if let Some(&i) = touched.iter().find(|i| !waiting(i)) {
            let seen = DdlSeen {
                table: self.cfg.tables[i].label(),
                statement: sql.into_owned(),
                position: self.boundary.clone(),
            };
            // The caller decides what this means (the cut-over's own RENAME is expected).
            tracing::info!(
                "DDL on {} at {}: {}",
                seen.table,
                seen.position,
                seen.statement
            );
            self.queue.push_back(Item::Ddl(seen.clone()));
            self.ddl = Some(seen);
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
                    table,
                    kind,
                    rows,
                    timestamp,
                } => StreamEvent::Rows(
                    rows.into_iter()
                        .map(|(before, after)| RowChange {
                            table,
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
        let watched = self
            .cfg
            .tables
            .iter()
            .position(|t| db == t.schema.as_bytes() && table == t.table.as_bytes());
        let target =
            if let Some(i) = watched.filter(|&i| self.armed.get(i).copied().unwrap_or(true)) {
                let followed = &self.cfg.tables[i];
                let plan = TablePlan::new(&tme, &followed.columns)
                    .map_err(|e| self.decode_error_on(followed.label(), e.0))?;
                Target::Watched(i, Arc::new(plan))
            } else if let Some((ts, tt)) = &self.cfg.token_table {
                if db == ts.as_bytes() && table == tt.as_bytes() {
                    let label = format!("{ts}.{tt}");
                    let plan = TablePlan::generic(&tme)
                        .map_err(|e| self.decode_error_on(label.clone(), e.0))?;
                    let idx = plan.column_index("token").ok_or_else(|| {
                        self.decode_error_on(
                            label.clone(),
                            format!(
                                "the changelog table {ts}.{tt} has no column named `token` in the \
                         binlog (binlog_row_metadata = FULL is needed)"
                            ),
                        )
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
        let (plan, table, token_idx) = match &target {
            Target::Watched(t, p) => (p.clone(), *t, None),
            Target::Token(p, i) => (p.clone(), 0, Some(*i)),
            Target::Other => return Ok(()),
        };
        let rows = decode_rows(&plan, &re)
            .map_err(|e| self.decode_error_on(self.target_label(&target), e.0))?;
        match token_idx {
            None => self.held.push(Held::Rows {
                table,
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
}
