//! What a run reports, per table and for the job.

use super::*;
use crate::progress::StageTiming;

/// What a run did, per table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub shadow: String,
    /// The name the source table got at the cut-over.
    pub old_table: String,
    pub backend: BackendKind,
    pub rows_copied: u64,
    pub chunks: u64,
    pub engines: u64,
    pub copy_secs: f64,
    pub copy_rows_per_sec: f64,
    pub index_restore_secs: f64,
    pub checksum_rows: u64,
    pub checksum_secs: f64,
    /// Row changes read from the binlog for the table.
    pub changes_received: u64,
    /// Changes applied to the shadow table (after deduplication).
    pub changes_applied: u64,
    pub apply_changes_per_sec: f64,
    /// Times the change buffer went over `[changes] memory_limit` and spilled to disk.
    pub change_buffer_spills: u64,
    /// How long the checksum held the source's lock (drain to a consistent point).
    pub checksum_lock_ms: f64,
    /// Rows changed after the checksum and verified again before the rename.
    pub rows_reverified: u64,
    pub cut_over: bool,
    /// Writes to the table blocked by the cut-over, over all its attempts.
    pub cutover_blocked_ms: Option<f64>,
    /// Lock requests the cut-over made that queued or were granted.
    pub cutover_attempts: Option<u32>,
    /// The cut-over in detail: each lock attempt, the blockers waited for, the AUTO_INCREMENT carried over.
    pub cutover: Option<crate::cutover::CutoverReport>,
    /// The table's foreign keys after the cut-over (when it has any): each
    /// constraint as the live table has it, and the orphans found (none).
    pub foreign_keys: Option<crate::foreign_keys::ForeignKeysAfter>,
    /// What was wrong with them after the cut-over, if anything.
    pub foreign_keys_problem: Option<String>,
    /// Each stage this run went through, in order, with its time.
    pub stages: Vec<StageTiming>,
    pub total_secs: f64,
}

impl TableReport {
    /// A report with nothing done yet; the stages fill it in.
    pub(super) fn new(table: &TableConfig, backend: BackendKind) -> TableReport {
        TableReport {
            table: table.name.clone(),
            shadow: shadow::shadow_name(&table.name),
            old_table: shadow::old_name(&table.name),
            backend,
            rows_copied: 0,
            chunks: 0,
            engines: 0,
            copy_secs: 0.0,
            copy_rows_per_sec: 0.0,
            index_restore_secs: 0.0,
            checksum_rows: 0,
            checksum_secs: 0.0,
            changes_received: 0,
            changes_applied: 0,
            apply_changes_per_sec: 0.0,
            change_buffer_spills: 0,
            checksum_lock_ms: 0.0,
            rows_reverified: 0,
            cut_over: false,
            cutover_blocked_ms: None,
            cutover_attempts: None,
            cutover: None,
            foreign_keys: None,
            foreign_keys_problem: None,
            stages: Vec::new(),
            total_secs: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub tables: Vec<TableReport>,
    /// How the revert window ended, when the job had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<super::WindowEnding>,
}
