//! Progress: the state a run is in and how far it got, shared between the
//! workers that advance it and whoever displays it.
//!
//! States follow Spirit's names so that people who know Spirit read wraith's
//! status without a glossary. The shape of [`Progress`] is Spirit's
//! `Progress { current_state, summary, tables }`, so wrappers written for one
//! read the other.
//!
//! The handle also carries the caller's event sink ([`crate::events`]): every
//! part of a run holds the handle, so each can tell the operator what happens
//! ([`ProgressHandle::emit`]) without printing.
//!
//! Locks here guard plain values that are replaced whole (a state, a list, a
//! reason): a task that panicked elsewhere cannot leave one half-written, so a
//! poisoned lock's value is used as it is ([`plain`]) rather than dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::blockers::Blocker;
use crate::events::{EventSink, RunEvent};

/// Locks a mutex that guards a plain value replaced whole: a poisoned lock's
/// value is still whole, so it is used (see the module's page).
pub(crate) fn plain<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// How long one stage of a run or an import took, in its report.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: &'static str,
    pub secs: f64,
}

/// Progress of one table.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// The change stream of the table being rebuilt, once it runs.
    pub stream: Option<StreamProgress>,
    /// Time left for the copy, from its rate once 1% is copied; `due` when
    /// the copy is done and the run is past it; `None` before that.
    pub eta: Option<String>,
    /// Sessions the cut-over is waiting for (see [`crate::blockers`]).
    pub blockers: Vec<Blocker>,
}

#[derive(Debug)]
struct TableCounters {
    name: String,
    rows_total: AtomicU64,
    rows_copied: AtomicU64,
    complete: std::sync::atomic::AtomicBool,
}

/// Figures of the change stream, for progress lines and `status-json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamProgress {
    pub changes_received: u64,
    pub changes_applied: u64,
    /// Changes waiting to be applied (after deduplication).
    pub changes_backlog: u64,
    /// The binlog position the stream has read up to.
    pub binlog_position: Option<String>,
    /// How far behind the server the stream reads (seconds, server clock).
    pub lag_secs: f64,
}

/// What can report [`StreamProgress`] (the online state).
pub trait StreamFigures: Send + Sync + std::fmt::Debug {
    fn figures(&self) -> StreamProgress;
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
    /// Weak: the online state owns connections that must close with the run.
    stream: Mutex<Option<std::sync::Weak<dyn StreamFigures>>>,
    /// When the copy moved its first rows, for the ETA.
    copy_started: Mutex<Option<Instant>>,
    blockers: Mutex<Vec<Blocker>>,
    events: Events,
}

/// The caller's sink (not `Debug` itself).
struct Events(EventSink);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
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
    /// A handle whose events are dropped.
    pub fn new() -> ProgressHandle {
        ProgressHandle::with_events(crate::events::discard())
    }

    /// A handle whose events go to `sink`.
    pub fn with_events(sink: EventSink) -> ProgressHandle {
        ProgressHandle {
            inner: Arc::new(Inner {
                started: Instant::now(),
                state: Mutex::new(State::Initial),
                tables: Mutex::new(Vec::new()),
                throttled: Mutex::new(None),
                stream: Mutex::new(None),
                copy_started: Mutex::new(None),
                blockers: Mutex::new(Vec::new()),
                events: Events(sink),
            }),
        }
    }

    /// Tells the caller's sink.
    pub fn emit(&self, event: RunEvent) {
        (self.inner.events.0)(&event);
    }

    pub fn set_state(&self, state: State) {
        let mut s = plain(&self.inner.state);
        if *s != state {
            tracing::info!(from = %*s, to = %state, "state");
        }
        *s = state;
    }

    pub fn state(&self) -> State {
        *plain(&self.inner.state)
    }

    /// Shows the figures of `stream` from now on.
    pub fn attach_stream(&self, stream: Arc<dyn StreamFigures>) {
        *plain(&self.inner.stream) = Some(Arc::downgrade(&stream));
    }

    /// Records why the copy is paused (`None`: it is not).
    pub fn set_throttled(&self, reason: Option<String>) {
        *plain(&self.inner.throttled) = reason;
    }

    /// Records the sessions the cut-over waits for (empty: none).
    pub fn set_blockers(&self, blockers: Vec<Blocker>) {
        *plain(&self.inner.blockers) = blockers;
    }

    pub fn add_table(&self, name: &str, rows_total: u64) -> TableHandle {
        let counters = Arc::new(TableCounters {
            name: name.to_string(),
            rows_total: AtomicU64::new(rows_total),
            rows_copied: AtomicU64::new(0),
            complete: std::sync::atomic::AtomicBool::new(false),
        });
        plain(&self.inner.tables).push(counters.clone());
        TableHandle { counters }
    }

    pub fn snapshot(&self) -> Progress {
        let tables: Vec<TableProgress> = plain(&self.inner.tables)
            .iter()
            .map(|c| TableProgress {
                table_name: c.name.clone(),
                rows_copied: c.rows_copied.load(Ordering::Relaxed),
                rows_total: c.rows_total.load(Ordering::Relaxed),
                is_complete: c.complete.load(Ordering::Relaxed),
            })
            .collect();
        let elapsed = self.inner.started.elapsed().as_secs_f64();
        let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = tables.iter().map(|t| t.rows_total).sum();
        let state = self.state();
        let pct = if total > 0 {
            (copied as f64 * 100.0 / total as f64).min(100.0)
        } else {
            0.0
        };
        let throttled = plain(&self.inner.throttled).clone();
        let stream = plain(&self.inner.stream)
            .as_ref()
            .and_then(|s| s.upgrade())
            .map(|s| s.figures());
        let copy_started = {
            let mut c = plain(&self.inner.copy_started);
            if c.is_none() && copied > 0 {
                *c = Some(Instant::now());
            }
            *c
        };
        let copy_done = !tables.is_empty() && tables.iter().all(|t| t.is_complete)
            || matches!(
                state,
                State::RestoreSecondaryIndexes
                    | State::AnalyzeTable
                    | State::Checksum
                    | State::PostChecksum
                    | State::WaitingOnSentinelTable
                    | State::CutOver
                    | State::Close
            );
        let eta = eta(copied, total, copy_started, copy_done);
        let mut summary = format!("{copied}/{total} rows {pct:.1}% {state}");
        if let Some(eta) = &eta {
            summary.push_str(&format!(" eta {eta}"));
        }
        if let Some(s) = &stream {
            summary.push_str(&format!(
                " applied {} backlog {} binlog {} lag {:.0}s",
                s.changes_applied,
                s.changes_backlog,
                s.binlog_position.as_deref().unwrap_or("-"),
                s.lag_secs
            ));
        }
        if let Some(reason) = &throttled {
            summary.push_str(&format!(" throttled: {reason}"));
        }
        let blockers = plain(&self.inner.blockers).clone();
        if !blockers.is_empty() {
            let ids: Vec<String> = blockers.iter().map(|b| b.id.to_string()).collect();
            summary.push_str(&format!(" waiting for blockers: {}", ids.join(",")));
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
            stream,
            eta,
            blockers,
        }
    }
}

/// gh-ost's rule: no estimate before 1% is copied, `due` once the copy is done.
fn eta(copied: u64, total: u64, copy_started: Option<Instant>, copy_done: bool) -> Option<String> {
    if copy_done {
        return Some("due".into());
    }
    let started = copy_started?;
    if total == 0 || copied * 100 < total {
        return None;
    }
    let rate = copied as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let left = total.saturating_sub(copied) as f64 / rate.max(1e-9);
    Some(humantime::format_duration(std::time::Duration::from_secs(left.ceil() as u64)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_gh_osts_rules() {
        let started = Instant::now() - std::time::Duration::from_secs(10);
        // Nothing before the copy moved, nor before 1% is copied.
        assert_eq!(eta(0, 1_000, None, false), None);
        assert_eq!(eta(5, 1_000, Some(started), false), None);
        // Half done in 10 s: about 10 s left.
        let left = eta(500, 1_000, Some(started), false).unwrap();
        assert!(left == "10s" || left == "11s", "{left}");
        assert_eq!(
            eta(1_000, 1_000, Some(started), true).as_deref(),
            Some("due")
        );
    }

    #[test]
    fn the_summary_shows_the_stream() {
        #[derive(Debug)]
        struct Fixed;
        impl StreamFigures for Fixed {
            fn figures(&self) -> StreamProgress {
                StreamProgress {
                    changes_received: 9,
                    changes_applied: 7,
                    changes_backlog: 2,
                    binlog_position: Some("binlog.000001:42".into()),
                    lag_secs: 0.0,
                }
            }
        }
        let p = ProgressHandle::new();
        p.add_table("t", 100).add_rows(10);
        let stream: Arc<dyn StreamFigures> = Arc::new(Fixed);
        p.attach_stream(stream.clone());
        let s = p.snapshot();
        assert!(
            s.summary
                .contains("applied 7 backlog 2 binlog binlog.000001:42"),
            "{}",
            s.summary
        );
        assert_eq!(s.stream.map(|f| f.changes_received), Some(9));
        // The progress does not keep the stream (and its connections) alive.
        drop(stream);
        assert!(p.snapshot().stream.is_none());
    }
}
