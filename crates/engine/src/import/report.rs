//! What an import shows while it runs ([`ImportProgress`]) and what it
//! reports when done ([`ImportReport`], one [`TableImportReport`] a table).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::config::ImportJobConfig;
use super::files::DumpListing;
use crate::config::BackendKind;
use crate::progress::StageTiming;

/// Live counters of an import, for progress display.
#[derive(Debug, Default)]
pub struct ImportProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub rows: AtomicU64,
    /// 0 planning, 1 loading, 2 importing engines / restoring indexes, 3 verifying.
    pub phase: AtomicUsize,
}

impl ImportProgress {
    pub fn phase_name(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            0 => "planning",
            1 => "loading",
            2 => "importing",
            _ => "verifying",
        }
    }
}

/// What the import did, per table.
#[derive(Debug, Clone, Serialize)]
pub struct TableImportReport {
    pub table: String,
    pub files: usize,
    pub regions: usize,
    /// Regions already done by an earlier, interrupted run.
    pub regions_resumed: usize,
    pub rows_parsed: u64,
    pub rows_in_table: u64,
    /// `verify = "checksum"`: every parsed row was found in the table.
    pub checksum_verified: bool,
    /// Rows dropped or replaced by `on_duplicate`.
    pub duplicates_resolved: u64,
    pub created: bool,
    pub deferred_indexes: usize,
}

/// What the import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub backend: BackendKind,
    pub on_duplicate: String,
    pub tables: Vec<TableImportReport>,
    pub files: usize,
    pub skipped_files: Vec<String>,
    pub bytes: u64,
    pub regions: usize,
    /// The most regions being parsed at the same moment.
    pub max_concurrent_regions: usize,
    /// How rows reached the server: `local-engine` (sorted, then LOAD DATA
    /// in key order), `load-data` (sql path, LOAD DATA LOCAL per region) or
    /// `insert` (sql path, INSERT statements).
    pub rows_sent_by: &'static str,
    pub rows: u64,
    pub elapsed_secs: f64,
    pub rows_per_sec: f64,
    pub resumed: bool,
    /// Each stage of the job, in order, with its time.
    pub stages: Vec<StageTiming>,
}

impl ImportReport {
    /// The report of a finished job.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: &ImportJobConfig,
        listing: &DumpListing,
        backend: BackendKind,
        tables: Vec<TableImportReport>,
        max_concurrent_regions: usize,
        load_data: bool,
        resumed: bool,
        started: Instant,
    ) -> ImportReport {
        let elapsed = started.elapsed().as_secs_f64();
        let rows: u64 = tables.iter().map(|r| r.rows_parsed).sum();
        ImportReport {
            backend,
            on_duplicate: cfg.import.on_duplicate.to_string(),
            regions: tables.iter().map(|r| r.regions).sum(),
            tables,
            files: listing.data.len(),
            skipped_files: listing.skipped.clone(),
            bytes: listing.data.iter().map(|f| f.size).sum(),
            max_concurrent_regions,
            rows_sent_by: match (backend, load_data) {
                (BackendKind::Local, _) => "local-engine",
                (_, true) => "load-data",
                (_, false) => "insert",
            },
            rows,
            elapsed_secs: elapsed,
            rows_per_sec: if elapsed > 0.0 {
                rows as f64 / elapsed
            } else {
                0.0
            },
            resumed,
            stages: Vec::new(),
        }
    }
}
