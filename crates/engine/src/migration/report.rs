//! What a run reports, per table and for the job.
//!
//! Each stage keeps its own time (`stages`), also where stages ran at once
//! (the index build beside the checksum); `phases` says where the table's
//! wall time went and how much the overlap saved.

use super::stage::StageLog;
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
    /// Where the wall time went, stages that ran at once side by side
    /// (none for a table an earlier run swapped).
    pub phases: Option<Phases>,
    pub total_secs: f64,
}

/// A table's wall time in phases, each from when it began to when it
/// ended, in seconds from the table's start. The index build and the
/// checksum run at once: `overlap_saved_secs` is how long both ran, what
/// running them one after the other would have added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// The shadow made, the change stream started, the rows copied.
    pub copy: Option<PhaseSpan>,
    /// The secondary indexes built and the shadow analyzed.
    pub index_build: Option<PhaseSpan>,
    /// The consistent point and the comparison.
    pub checksum: Option<PhaseSpan>,
    pub overlap_saved_secs: f64,
    /// Catch-up, postponement, the last verification and the swap (or the
    /// shadow kept in sync).
    pub cut_over: Option<PhaseSpan>,
    /// What wraith made, dropped after the swap.
    pub cleanup: Option<PhaseSpan>,
}

/// When a phase began and ended, from the table's start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PhaseSpan {
    pub start_secs: f64,
    pub end_secs: f64,
    pub secs: f64,
}

impl Phases {
    /// The phases of the stages `log` recorded, for a table started at `started`.
    pub(super) async fn of(log: &StageLog, started: Instant) -> Phases {
        let span = |stages: &'static [Stage]| async move {
            log.span(stages).await.map(|(from, to)| PhaseSpan {
                start_secs: from.saturating_duration_since(started).as_secs_f64(),
                end_secs: to.saturating_duration_since(started).as_secs_f64(),
                secs: to.saturating_duration_since(from).as_secs_f64(),
            })
        };
        let index_build = span(&[Stage::RestoreIndexes, Stage::Analyze]).await;
        let checksum = span(&[Stage::Checksum]).await;
        let overlap_saved_secs = match (index_build, checksum) {
            (Some(a), Some(b)) => {
                (a.end_secs.min(b.end_secs) - a.start_secs.max(b.start_secs)).max(0.0)
            }
            _ => 0.0,
        };
        Phases {
            copy: span(&[Stage::CreateShadow, Stage::PrepareCopy, Stage::Copy]).await,
            index_build,
            checksum,
            overlap_saved_secs,
            cut_over: span(&[Stage::KeepInSync, Stage::AwaitCutover, Stage::CutOver]).await,
            cleanup: span(&[Stage::Cleanup]).await,
        }
    }
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
            phases: None,
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
