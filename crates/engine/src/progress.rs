//! Progress: the state a run is in and how far it got, shared between the
//! workers that advance it and whoever displays it.
//!
//! States follow Spirit's names so that people who know Spirit read wraith's
//! status without a glossary. The shape of [`Progress`] is Spirit's
//! `Progress { current_state, summary, tables }`, so wrappers written for one
//! read the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    Initial,
    CopyRows,
    ApplyChangeset,
    RestoreSecondaryIndexes,
    AnalyzeTable,
    Checksum,
    PostChecksum,
    WaitingOnSentinelTable,
    CutOver,
    Close,
    ErrCleanup,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Progress of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableProgress {
    pub table_name: String,
    pub rows_copied: u64,
    pub rows_total: u64,
    pub is_complete: bool,
}

/// A snapshot for display.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub current_state: State,
    pub summary: String,
    pub tables: Vec<TableProgress>,
    pub elapsed_secs: f64,
    pub rows_per_sec: f64,
    /// Why the copy is paused (see [`crate::throttle`]), or `None`.
    pub throttled: Option<String>,
}

#[derive(Debug)]
struct TableCounters {
    name: String,
    rows_total: AtomicU64,
    rows_copied: AtomicU64,
    complete: std::sync::atomic::AtomicBool,
}

/// The live counters. Cheap to clone; updated by workers with atomics.
#[derive(Debug, Clone)]
pub struct ProgressHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    state: Mutex<State>,
    tables: Mutex<Vec<Arc<TableCounters>>>,
    throttled: Mutex<Option<String>>,
}

/// Counters of one table, handed to its workers.
#[derive(Debug, Clone)]
pub struct TableHandle {
    counters: Arc<TableCounters>,
}

impl TableHandle {
    pub fn add_rows(&self, n: u64) {
        self.counters.rows_copied.fetch_add(n, Ordering::Relaxed);
    }
    pub fn rows_copied(&self) -> u64 {
        self.counters.rows_copied.load(Ordering::Relaxed)
    }
    pub fn set_total(&self, n: u64) {
        self.counters.rows_total.store(n, Ordering::Relaxed);
    }
    pub fn complete(&self) {
        self.counters.complete.store(true, Ordering::Relaxed);
    }
}

impl Default for ProgressHandle {
    fn default() -> Self {
        ProgressHandle::new()
    }
}

impl ProgressHandle {
    pub fn new() -> ProgressHandle {
        ProgressHandle {
            inner: Arc::new(Inner {
                started: Instant::now(),
                state: Mutex::new(State::Initial),
                tables: Mutex::new(Vec::new()),
                throttled: Mutex::new(None),
            }),
        }
    }

    pub fn set_state(&self, state: State) {
        if let Ok(mut s) = self.inner.state.lock() {
            if *s != state {
                tracing::info!(from = %*s, to = %state, "state");
            }
            *s = state;
        }
    }

    pub fn state(&self) -> State {
        self.inner
            .state
            .lock()
            .map(|s| *s)
            .unwrap_or(State::ErrCleanup)
    }

    /// Records why the copy is paused (`None`: it is not).
    pub fn set_throttled(&self, reason: Option<String>) {
        if let Ok(mut t) = self.inner.throttled.lock() {
            *t = reason;
        }
    }

    pub fn add_table(&self, name: &str, rows_total: u64) -> TableHandle {
        let counters = Arc::new(TableCounters {
            name: name.to_string(),
            rows_total: AtomicU64::new(rows_total),
            rows_copied: AtomicU64::new(0),
            complete: std::sync::atomic::AtomicBool::new(false),
        });
        if let Ok(mut t) = self.inner.tables.lock() {
            t.push(counters.clone());
        }
        TableHandle { counters }
    }

    pub fn snapshot(&self) -> Progress {
        let tables: Vec<TableProgress> = self
            .inner
            .tables
            .lock()
            .map(|t| {
                t.iter()
                    .map(|c| TableProgress {
                        table_name: c.name.clone(),
                        rows_copied: c.rows_copied.load(Ordering::Relaxed),
                        rows_total: c.rows_total.load(Ordering::Relaxed),
                        is_complete: c.complete.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let elapsed = self.inner.started.elapsed().as_secs_f64();
        let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = tables.iter().map(|t| t.rows_total).sum();
        let state = self.state();
        let pct = if total > 0 {
            (copied as f64 * 100.0 / total as f64).min(100.0)
        } else {
            0.0
        };
        let throttled = self.inner.throttled.lock().ok().and_then(|t| t.clone());
        let mut summary = format!("{copied}/{total} rows {pct:.1}% {state}");
        if let Some(reason) = &throttled {
            summary.push_str(&format!(" throttled: {reason}"));
        }
        Progress {
            current_state: state,
            summary,
            tables,
            elapsed_secs: elapsed,
            rows_per_sec: if elapsed > 0.0 {
                copied as f64 / elapsed
            } else {
                0.0
            },
            throttled,
        }
    }
}
