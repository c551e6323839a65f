//! The checkpoint model: task → table → engine → chunk, plus the change
//! stream's position and the copy's watermarks.
//!
//! (Over 800 lines with its tests; the model itself is ~670 lines.)
//!
//! Statuses are ordered and only move forward. The status fields are private:
//! the only ways to change them are `advance` (forward, or staying put), and
//! for a table `fail` and `retry`. A resumed run that repeats a step may
//! advance to the status it already has; that is not an error.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::TransitionError;

/// The checkpoint format this crate writes. Loading a checkpoint with a
/// higher number fails with [`crate::CheckpointError::UnsupportedFormat`].
/// Bump it for any change an older wraith would misread (a new field that
/// older versions may ignore does not need a bump).
pub const FORMAT_VERSION: u32 = 1;

/// The oldest format this crate still reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

macro_rules! ordered_status {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every status, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name used in JSON, in the store's `status` column and in messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

ordered_status! {
    /// Where a table's rebuild is, in the order the engine walks through it.
    TableStage {
        /// Nothing done yet.
        Pending => "pending",
        /// The shadow table exists with the new schema.
        ShadowCreated => "shadow_created",
        /// The copy is running; engines and chunks say how far.
        Copying => "copying",
        /// Every row of the source is durable in the shadow table.
        CopyDone => "copy_done",
        /// Deferred secondary indexes are back on the shadow table.
        IndexesRestored => "indexes_restored",
        /// The shadow table matched the source.
        Checksummed => "checksummed",
        /// The cut-over has begun: which tables exist tells how far it got.
        CuttingOver => "cutting_over",
        /// The tables are swapped.
        CutOver => "cut_over",
        /// Cleanup finished; nothing left to do.
        Done => "done",
    }
}

ordered_status! {
    /// An engine's lifecycle (TiDB Lightning's engine checkpoint statuses).
    EngineStatus {
        /// Opened; writers may be appending.
        Open => "open",
        /// Every chunk of the engine is written (and flushed).
        AllWritten => "all_written",
        /// Closed: no more writes; a resumed run reaches it with `unsafe_close_engine`.
        Closed => "closed",
        /// Imported into the shadow table.
        Imported => "imported",
        /// Its local data is removed.
        Cleaned => "cleaned",
    }
}

ordered_status! {
    /// A chunk's progress inside its engine.
    ChunkStatus {
        /// Not read yet, or read but not durably written: redone on resume.
        Pending => "pending",
        /// Its rows were handed to the engine's writer.
        Written => "written",
        /// Its rows are durable in the engine (the engine was flushed after
        /// the write, as Lightning does): a resumed run skips it.
        Flushed => "flushed",
    }
}

/// A table's status: a stage, or a failure that remembers the stage it
/// happened in.
///
/// In JSON a stage is its name (`"copying"`) and a failure is
/// `{"failed": {"stage": "copying", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableStatus {
    /// Stopped by an error while in `stage`; [`TableCheckpoint::retry`]
    /// returns to that stage.
    Failed { stage: TableStage, message: String },
    /// At `stage` (working on what follows it, or done with it).
    #[serde(untagged)]
    At(TableStage),
}

impl TableStatus {
    /// The stage reached, or the one the failure happened in.
    pub fn stage(&self) -> TableStage {
        match self {
            TableStatus::At(s) | TableStatus::Failed { stage: s, .. } => *s,
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, TableStatus::Failed { .. })
    }
}

impl fmt::Display for TableStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableStatus::At(s) => write!(f, "{s}"),
            TableStatus::Failed { stage, message } => {
                write!(f, "failed while {stage}: {message}")
            }
        }
    }
}

/// One run of one job, over however many resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCheckpoint {
    /// The wraith version that last wrote this checkpoint (informational:
    /// compatibility is decided by `format_version`).
    pub tool_version: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The engine's fingerprint of the settings that shape what is already
    /// written; see [`crate::config_fingerprint`].
    pub config_fingerprint: String,
    /// Identifies the migration across resumes (kept by every resumed run).
    pub migration_id: Uuid,
    /// When the first run started, UTC, `YYYYMMDDhhmmss`.
    pub started_at: String,
    /// When this checkpoint was last written, unix seconds: its age for
    /// [`crate::validate`]. Set with [`TaskCheckpoint::touch`] before saving.
    pub updated_at: u64,
    /// The control socket of the run that last wrote this checkpoint, so
    /// `wraith status` can ask a running process for its live status.
    #[serde(default)]
    pub control_socket: Option<String>,
    pub tables: Vec<TableCheckpoint>,
    /// The revert window of a job run with `[cutover] revert_window`:
    /// recorded before the cut-over, open after it until `wraith revert`
    /// or `wraith finish`.
    #[serde(default)]
    pub revert_window: Option<RevertWindow>,
}

/// Where a revert window stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowStage {
    /// Recorded before the cut-over: the window opens once the tables are swapped.
    Pending,
    /// The old tables follow the live ones.
    Open,
    /// A change could not be applied back: the old tables are not in step,
    /// so no revert is possible (`failed` says why).
    Failed,
}

/// A revert window: the old tables kept in step with the live ones after
/// the cut-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertWindow {
    pub stage: WindowStage,
    /// When the window opened, unix seconds (0 while pending).
    pub opened_at: u64,
    /// When the window ends, unix seconds (0 while pending).
    pub ends_at: u64,
    /// Why the window failed.
    pub failed: Option<String>,
    pub tables: Vec<WindowTable>,
}

/// One table of a revert window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTable {
    pub schema: String,
    pub table: String,
    /// `(old, new)` names of every column the change copied.
    pub columns: Vec<(String, String)>,
    /// Every change of the live table before this position is applied to
    /// the old table or durably in the window's change store.
    pub position: BinlogPosition,
    /// Whether `position` lies after the cut-over's RENAME (before it, the
    /// live table's changes start at that RENAME).
    pub past_rename: bool,
    /// Every change before this position has been applied back and its row
    /// compared, old against live: a resumed window replays from here, so
    /// the rows written since are compared again before a revert.
    #[serde(default)]
    pub verified: Option<BinlogPosition>,
    /// Whether `verified` lies after the cut-over's RENAME.
    #[serde(default)]
    pub verified_past_rename: bool,
}

impl TaskCheckpoint {
    /// A new task with a fresh migration id, started (and updated) `now`.
    pub fn new(
        tool_version: impl Into<String>,
        config_fingerprint: impl Into<String>,
        now: SystemTime,
    ) -> TaskCheckpoint {
        let secs = unix_seconds(now);
        TaskCheckpoint {
            tool_version: tool_version.into(),
            format_version: FORMAT_VERSION,
            config_fingerprint: config_fingerprint.into(),
            migration_id: Uuid::new_v4(),
            started_at: compact_utc(secs),
            updated_at: secs,
            control_socket: None,
            tables: Vec::new(),
            revert_window: None,
        }
    }

    /// Records `now` as the time of the last write (call before each save).
    pub fn touch(&mut self, now: SystemTime) {
        self.updated_at = unix_seconds(now);
    }

    /// The table checkpoint for `schema.table`.
    pub fn table(&self, schema: &str, table: &str) -> Option<&TableCheckpoint> {
        self.tables
            .iter()
            .find(|t| t.source.schema == schema && t.source.table == table)
    }

    /// The table checkpoint for `schema.table`, to update it.
    pub fn table_mut(&mut self, schema: &str, table: &str) -> Option<&mut TableCheckpoint> {
        self.tables
            .iter_mut()
            .find(|t| t.source.schema == schema && t.source.table == table)
    }

    /// One word for the whole task, for the table store's `status` column and
    /// for `wraith status`: the least advanced stage of its tables, or
    /// `failed:<stage>` if a table failed (`pending` for no tables).
    pub fn summary_status(&self) -> String {
        if let Some(failed) = self.tables.iter().find(|t| t.status.is_failed()) {
            return format!("failed:{}", failed.status.stage());
        }
        self.tables
            .iter()
            .map(|t| t.status.stage())
            .min()
            .unwrap_or(TableStage::Pending)
            .to_string()
    }
}

/// What identifies the source table, so a checkpoint is never applied to
/// another table that happens to have the same name.
///
/// Optional fields are compared only when both sides know them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// `@@server_uuid` (MySQL) or another per-server id; file:pos positions
    /// mean nothing on another server.
    pub server_uuid: Option<String>,
    /// MariaDB GTID domain (`@@gtid_domain_id`) the position belongs to.
    pub gtid_domain: Option<String>,
    pub schema: String,
    pub table: String,
    /// `information_schema.TABLES.CREATE_TIME` as the server prints it.
    pub create_time: Option<String>,
    /// The storage engine's table id (InnoDB's `TABLE_ID`), which changes
    /// when a table is dropped and recreated; not the binlog's table-map id,
    /// which changes on restarts.
    pub table_id: Option<u64>,
}

impl SourceIdentity {
    /// An identity that knows only the name.
    pub fn named(schema: impl Into<String>, table: impl Into<String>) -> SourceIdentity {
        SourceIdentity {
            server_uuid: None,
            gtid_domain: None,
            schema: schema.into(),
            table: table.into(),
            create_time: None,
            table_id: None,
        }
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The fields on which `self` and `other` disagree (an unknown field on
    /// either side is not a disagreement), e.g. `["create_time"]`.
    pub fn differences(&self, other: &SourceIdentity) -> Vec<&'static str> {
        fn known_differ<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            matches!((a, b), (Some(x), Some(y)) if x != y)
        }
        let mut out = Vec::new();
        if self.schema != other.schema {
            out.push("schema");
        }
        if self.table != other.table {
            out.push("table");
        }
        if known_differ(&self.server_uuid, &other.server_uuid) {
            out.push("server_uuid");
        }
        if known_differ(&self.gtid_domain, &other.gtid_domain) {
            out.push("gtid_domain");
        }
        // The table id is never reused, so when both are known it alone
        // decides; CREATE_TIME also moves when the table file is renamed (a
        // RENAME that failed and was undone, as in an aborted cut-over).
        let ids_known = self.table_id.is_some() && other.table_id.is_some();
        if !ids_known && known_differ(&self.create_time, &other.create_time) {
            out.push("create_time");
        }
        if known_differ(&self.table_id, &other.table_id) {
            out.push("table_id");
        }
        out
    }
}

impl fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)?;
        let mut parts = Vec::new();
        if let Some(v) = &self.server_uuid {
            parts.push(format!("server {v}"));
        }
        if let Some(v) = &self.gtid_domain {
            parts.push(format!("gtid domain {v}"));
        }
        if let Some(v) = &self.create_time {
            parts.push(format!("created {v}"));
        }
        if let Some(v) = &self.table_id {
            parts.push(format!("table id {v}"));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// One table's rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCheckpoint {
    pub source: SourceIdentity,
    /// The engine's fingerprint of the shadow table's definition, so a
    /// shadow table changed or dropped behind wraith's back is noticed.
    pub shadow_fingerprint: String,
    /// The ALTER clause, normalized with [`crate::normalize_alter`].
    pub alter: String,
    status: TableStatus,
    pub engines: Vec<EngineCheckpoint>,
    pub change_stream: ChangeStreamCheckpoint,
    pub rows_copied: u64,
    /// The estimate of the source's rows when the copy began (for progress).
    pub rows_total: u64,
    /// Definitions of secondary indexes dropped before the rows were loaded
    /// and added back after (dump imports), e.g. ``KEY `k` (`k`)``: a
    /// resumed run must restore them even though the table no longer has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred_indexes: Vec<String>,
}

impl TableCheckpoint {
    /// A pending table; `alter` is normalized here.
    pub fn new(
        source: SourceIdentity,
        shadow_fingerprint: impl Into<String>,
        alter: &str,
    ) -> TableCheckpoint {
        TableCheckpoint {
            source,
            shadow_fingerprint: shadow_fingerprint.into(),
            alter: crate::normalize_alter(alter),
            status: TableStatus::At(TableStage::Pending),
            engines: Vec::new(),
            change_stream: ChangeStreamCheckpoint::default(),
            rows_copied: 0,
            rows_total: 0,
            deferred_indexes: Vec::new(),
        }
    }

    pub fn status(&self) -> &TableStatus {
        &self.status
    }

    /// The stage reached (or failed in).
    pub fn stage(&self) -> TableStage {
        self.status.stage()
    }

    fn what(&self) -> String {
        format!("table {}", self.source.qualified_name())
    }

    /// Moves to `to`, which must not be before the current stage (staying
    /// put is allowed; skipping stages is allowed). A failed table must be
    /// [`retry`](Self::retry)'d first.
    pub fn advance(&mut self, to: TableStage) -> Result<(), TransitionError> {
        match &self.status {
            TableStatus::Failed { stage, message } => Err(TransitionError::Failed {
                what: self.what(),
                stage: stage.to_string(),
                message: message.clone(),
            }),
            TableStatus::At(from) if to < *from => Err(TransitionError::Backward {
                what: self.what(),
                from: from.to_string(),
                to: to.to_string(),
            }),
            TableStatus::At(_) => {
                self.status = TableStatus::At(to);
                Ok(())
            }
        }
    }

    /// Records a failure in the current stage. A table already failed keeps
    /// its stage and takes the new message; a `done` table cannot fail.
    pub fn fail(&mut self, message: impl Into<String>) -> Result<(), TransitionError> {
        let stage = self.status.stage();
        if self.status == TableStatus::At(TableStage::Done) {
            return Err(TransitionError::Finished { what: self.what() });
        }
        self.status = TableStatus::Failed {
            stage,
            message: message.into(),
        };
        Ok(())
    }

    /// Returns a failed table to the stage it failed in, to try it again.
    pub fn retry(&mut self) -> Result<TableStage, TransitionError> {
        match &self.status {
            TableStatus::Failed { stage, .. } => {
                let stage = *stage;
                self.status = TableStatus::At(stage);
                Ok(stage)
            }
            TableStatus::At(s) => Err(TransitionError::NotFailed {
                what: self.what(),
                status: s.to_string(),
            }),
        }
    }

    /// The engine checkpoint with `engine_id`.
    pub fn engine_mut(&mut self, engine_id: i32) -> Option<&mut EngineCheckpoint> {
        self.engines.iter_mut().find(|e| e.engine_id == engine_id)
    }
}

/// An encoded key range. In JSON each bound is hex, `null` when open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRange {
    /// Exclusive lower bound; `None` from the start of the table.
    #[serde(with = "crate::hex::opt")]
    pub lower: Option<Vec<u8>>,
    /// Inclusive upper bound; `None` to the end of the table.
    #[serde(with = "crate::hex::opt")]
    pub upper: Option<Vec<u8>>,
}

/// One engine: a batch of chunks written together through a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCheckpoint {
    /// The backend's engine UUID (v5 of table and engine id), by which a
    /// resumed run reopens it.
    pub uuid: Uuid,
    pub engine_id: i32,
    status: EngineStatus,
    /// The encoded keys (memcomparable) the engine covers.
    pub key_range: KeyRange,
    pub chunks: Vec<ChunkCheckpoint>,
}

impl EngineCheckpoint {
    /// An open engine with no chunks yet.
    pub fn new(uuid: Uuid, engine_id: i32) -> EngineCheckpoint {
        EngineCheckpoint {
            uuid,
            engine_id,
            status: EngineStatus::Open,
            key_range: KeyRange::default(),
            chunks: Vec::new(),
        }
    }

    pub fn status(&self) -> EngineStatus {
        self.status
    }

    /// Moves to `to`, which must not be before the current status.
    pub fn advance(&mut self, to: EngineStatus) -> Result<(), TransitionError> {
        if to < self.status {
            return Err(TransitionError::Backward {
                what: format!("engine {} ({})", self.engine_id, self.uuid),
                from: self.status.to_string(),
                to: to.to_string(),
            });
        }
        self.status = to;
        Ok(())
    }

    /// The chunk checkpoint with `id`.
    pub fn chunk_mut(&mut self, id: u64) -> Option<&mut ChunkCheckpoint> {
        self.chunks.iter_mut().find(|c| c.id == id)
    }

    /// Rows in the engine's flushed chunks.
    pub fn flushed_rows(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| c.status == ChunkStatus::Flushed)
            .map(|c| c.rows)
            .sum()
    }
}

/// A chunk: a key range of the source (or, for dump imports, a piece of a
/// file), read as one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCheckpoint {
    pub id: u64,
    /// Exclusive lower bound, encoded key, hex in JSON; `None` from the start.
    #[serde(with = "crate::hex::opt")]
    pub lower: Option<Vec<u8>>,
    /// Inclusive upper bound, encoded key, hex in JSON; `None` to the end.
    #[serde(with = "crate::hex::opt")]
    pub upper: Option<Vec<u8>>,
    status: ChunkStatus,
    /// Rows the chunk held when written.
    pub rows: u64,
    /// For dump imports: the file the chunk reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// For dump imports: the byte range `[start, end)` of `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_range: Option<(u64, u64)>,
    /// For dump imports with `verify = "checksum"`: the rows parsed from the
    /// range, summed up, so a resumed run can verify without parsing it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<RowsChecksum>,
}

/// An order-independent checksum of some rows: the count, and the XOR and
/// the wrapping sum of a 64-bit hash per row (a row counted twice cancels in
/// the XOR, not in the sum). `columns` names what each row hash covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsChecksum {
    pub rows: u64,
    pub xor: u64,
    pub sum: u64,
    pub columns: Vec<String>,
}

impl RowsChecksum {
    pub fn new(columns: Vec<String>) -> RowsChecksum {
        RowsChecksum {
            columns,
            ..RowsChecksum::default()
        }
    }

    /// Adds one row's hash.
    pub fn add(&mut self, hash: u64) {
        self.rows += 1;
        self.xor ^= hash;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// Adds another checksum over the same columns.
    pub fn merge(&mut self, other: &RowsChecksum) {
        self.rows += other.rows;
        self.xor ^= other.xor;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

impl ChunkCheckpoint {
    /// A pending chunk over the key range `(lower, upper]`.
    pub fn new(id: u64, lower: Option<Vec<u8>>, upper: Option<Vec<u8>>) -> ChunkCheckpoint {
        ChunkCheckpoint {
            id,
            lower,
            upper,
            status: ChunkStatus::Pending,
            rows: 0,
            file: None,
            offset_range: None,
            checksum: None,
        }
    }

    pub fn status(&self) -> ChunkStatus {
        self.status
    }

    /// Moves to `to`, which must not be before the current status.
    pub fn advance(&mut self, to: ChunkStatus) -> Result<(), TransitionError> {
        if to < self.status {
            return Err(TransitionError::Backward {
                what: format!("chunk {}", self.id),
                from: self.status.to_string(),
                to: to.to_string(),
            });
        }
        self.status = to;
        Ok(())
    }
}

/// A binlog position with the GTID state at it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    /// MariaDB `gtid_binlog_pos` form or a MySQL GTID set; `None` without GTIDs.
    pub gtid: Option<String>,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if let Some(g) = &self.gtid {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

/// How far the change stream is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeStreamCheckpoint {
    /// Every change before this position is durably applied to the shadow
    /// table or durably buffered in the local change store; a resumed run
    /// streams from here and replays idempotently.
    pub position: Option<BinlogPosition>,
    /// Every key at or below it is durably in the shadow table; `None` when
    /// no key is yet (after `copy_done` the stage says everything is).
    #[serde(with = "crate::hex::opt")]
    pub low_watermark: Option<Vec<u8>>,
    /// No key above it has been read by the copy yet; `None` when nothing
    /// has been read.
    #[serde(with = "crate::hex::opt")]
    pub high_watermark: Option<Vec<u8>>,
}

/// Seconds since the epoch (0 for a clock before it).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDDhhmmss` of unix seconds, UTC.
pub(crate) fn compact_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn table() -> TableCheckpoint {
        TableCheckpoint::new(
            SourceIdentity::named("db", "t"),
            "shadow-v1",
            "add column c int",
        )
    }

    #[test]
    fn table_stages_only_move_forward() {
        let mut t = table();
        assert_eq!(t.stage(), TableStage::Pending);
        t.advance(TableStage::ShadowCreated).unwrap();
        t.advance(TableStage::Copying).unwrap();
        // Staying put is fine (a resumed run repeats the step).
        t.advance(TableStage::Copying).unwrap();
        let err = t.advance(TableStage::ShadowCreated).unwrap_err();
        assert!(matches!(err, TransitionError::Backward { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "table db.t cannot move back from copying to shadow_created: statuses only move forward"
        );
        assert_eq!(t.stage(), TableStage::Copying);
        // Skipping forward is allowed.
        t.advance(TableStage::Checksummed).unwrap();
        t.advance(TableStage::Done).unwrap();
        assert!(t.advance(TableStage::Pending).is_err());
        // The order is the documented one.
        let all = TableStage::ALL;
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(all.first(), Some(&TableStage::Pending));
        assert_eq!(all.last(), Some(&TableStage::Done));
    }

    #[test]
    fn failure_remembers_its_stage_and_retry_returns_to_it() {
        let mut t = table();
        t.advance(TableStage::Copying).unwrap();
        t.fail("lost connection").unwrap();
        assert_eq!(
            t.status(),
            &TableStatus::Failed {
                stage: TableStage::Copying,
                message: "lost connection".into()
            }
        );
        assert_eq!(t.stage(), TableStage::Copying);
        // A failed table cannot advance, not even forward.
        let err = t.advance(TableStage::CopyDone).unwrap_err();
        assert!(matches!(err, TransitionError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("lost connection"), "{err}");
        // A second failure keeps the stage.
        t.fail("again").unwrap();
        assert_eq!(t.stage(), TableStage::Copying);
        assert_eq!(t.retry().unwrap(), TableStage::Copying);
        assert_eq!(t.status(), &TableStatus::At(TableStage::Copying));
        assert!(matches!(
            t.retry().unwrap_err(),
            TransitionError::NotFailed { .. }
        ));
        t.advance(TableStage::Done).unwrap();
        assert!(matches!(
            t.fail("late").unwrap_err(),
            TransitionError::Finished { .. }
        ));
    }

    #[test]
    fn engines_and_chunks_only_move_forward() {
        let mut e = EngineCheckpoint::new(Uuid::nil(), 3);
        assert_eq!(e.status(), EngineStatus::Open);
        e.advance(EngineStatus::Closed).unwrap();
        let err = e.advance(EngineStatus::AllWritten).unwrap_err();
        assert!(err.to_string().starts_with("engine 3 "), "{err}");
        e.advance(EngineStatus::Imported).unwrap();
        e.advance(EngineStatus::Cleaned).unwrap();
        assert!(EngineStatus::ALL.windows(2).all(|w| w[0] < w[1]));

        let mut c = ChunkCheckpoint::new(7, None, Some(vec![1, 2]));
        c.advance(ChunkStatus::Written).unwrap();
        c.advance(ChunkStatus::Written).unwrap();
        c.advance(ChunkStatus::Flushed).unwrap();
        let err = c.advance(ChunkStatus::Pending).unwrap_err();
        assert_eq!(
            err.to_string(),
            "chunk 7 cannot move back from flushed to pending: statuses only move forward"
        );
        assert_eq!(c.status(), ChunkStatus::Flushed);
    }

    fn full_task() -> TaskCheckpoint {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut task = TaskCheckpoint::new("0.1.0", "backend=local", now);
        let mut t = table();
        t.source.server_uuid = Some("3e11fa47-71ca-11e1-9e33-c80aa9429562".into());
        t.source.create_time = Some("2024-01-02 03:04:05".into());
        t.source.table_id = Some(42);
        t.advance(TableStage::Copying).unwrap();
        let mut e = EngineCheckpoint::new(Uuid::new_v4(), 0);
        e.key_range = KeyRange {
            lower: None,
            upper: Some(vec![0x80, 0, 0, 0, 0, 0, 0, 0x10]),
        };
        let mut c = ChunkCheckpoint::new(0, None, Some(vec![0x80, 0xff]));
        c.advance(ChunkStatus::Flushed).unwrap();
        c.rows = 1000;
        let mut dump = ChunkCheckpoint::new(1, Some(vec![0x80, 0xff]), None);
        dump.file = Some("t.000.csv".into());
        dump.offset_range = Some((0, 4096));
        e.chunks = vec![c, dump];
        t.engines.push(e);
        t.change_stream = ChangeStreamCheckpoint {
            position: Some(BinlogPosition {
                file: "binlog.000003".into(),
                pos: 1234,
                gtid: Some("0-1-99".into()),
            }),
            low_watermark: Some(vec![0x80, 0xff]),
            high_watermark: Some(vec![0x81]),
        };
        t.rows_copied = 1000;
        t.rows_total = 5000;
        task.tables.push(t);
        task
    }

    #[test]
    fn serde_round_trip_with_hex_keys() {
        let task = full_task();
        let json = serde_json::to_string_pretty(&task).unwrap();
        let back: TaskCheckpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, task);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let t = &v["tables"][0];
        assert_eq!(t["status"], "copying");
        assert_eq!(t["alter"], "ADD COLUMN C INT");
        assert_eq!(t["change_stream"]["low_watermark"], "80ff");
        assert_eq!(t["engines"][0]["key_range"]["upper"], "8000000000000010");
        assert_eq!(
            t["engines"][0]["key_range"]["lower"],
            serde_json::Value::Null
        );
        assert_eq!(t["engines"][0]["chunks"][0]["status"], "flushed");
        assert!(t["engines"][0]["chunks"][0].get("file").is_none());
        assert_eq!(t["engines"][0]["chunks"][1]["offset_range"][1], 4096);
        assert_eq!(v["format_version"], FORMAT_VERSION);
        assert_eq!(v["started_at"], "20231114221320");

        // A failed status round-trips with its stage.
        let mut failed = task.clone();
        failed.tables[0].fail("boom").unwrap();
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(
            json["tables"][0]["status"],
            serde_json::json!({"failed": {"stage": "copying", "message": "boom"}})
        );
        let back: TaskCheckpoint = serde_json::from_value(json).unwrap();
        assert_eq!(back, failed);
        assert_eq!(back.summary_status(), "failed:copying");
    }

    #[test]
    fn bad_hex_is_a_decode_error() {
        let mut v = serde_json::to_value(full_task()).unwrap();
        v["tables"][0]["change_stream"]["low_watermark"] = "xyz".into();
        let err = serde_json::from_value::<TaskCheckpoint>(v).unwrap_err();
        assert!(err.to_string().contains("not a hex-encoded key"), "{err}");
    }

    #[test]
    fn summary_is_the_least_advanced_table() {
        let mut task = full_task();
        assert_eq!(task.summary_status(), "copying");
        let mut other = table();
        other.source.table = "u".into();
        task.tables.push(other);
        assert_eq!(task.summary_status(), "pending");
        task.tables.clear();
        assert_eq!(task.summary_status(), "pending");
    }

    #[test]
    fn compact_utc_dates() {
        assert_eq!(compact_utc(0), "19700101000000");
        assert_eq!(compact_utc(951_782_400), "20000229000000");
        assert_eq!(compact_utc(1_709_251_199), "20240229235959");
        assert_eq!(compact_utc(4_102_444_800), "21000101000000");
    }

    #[test]
    fn identity_differences_ignore_unknowns() {
        let a = full_task().tables[0].source.clone();
        let mut b = SourceIdentity::named("db", "t");
        assert!(a.differences(&b).is_empty());
        b.create_time = Some("2025-01-01 00:00:00".into());
        assert_eq!(a.differences(&b), vec!["create_time"]);
        b.table_id = Some(43);
        assert_eq!(a.differences(&b), vec!["table_id"]);
        // Same table id: a moved CREATE_TIME is the same table.
        b.table_id = Some(42);
        assert!(a.differences(&b).is_empty());
        assert_eq!(
            a.to_string(),
            "db.t (server 3e11fa47-71ca-11e1-9e33-c80aa9429562, created 2024-01-02 03:04:05, table id 42)"
        );
    }
}
