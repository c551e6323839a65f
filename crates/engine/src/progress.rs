//! Progress: the state a run is in and how far it got, shared between the
//! workers that advance it and whoever displays it.
//!
//! States follow Spirit's names so that people who know Spirit read wraith's
//! status without a glossary. The shape of [`Progress`] is Spirit's
//! `Progress { current_state, summary, tables }`, so wrappers written for one
//! read the other.
//!
//! **Several tables in one job.** Each table has its own counters
//! ([`ProgressHandle::table`], one entry per name however often a stage asks),
//! its own [`State`] and its own change stream ([`TableHandle::attach_stream`]).
//! The job level sums them: `current_state` is the job's state, `stream` the
//! totals of the tables' streams (received, applied and backlog summed, the
//! largest lag), `eta` is taken over the remaining rows of all tables, and the
//! summary adds one short part per table when there is more than one. A table
//! whose state was never set shows the job's; the only table of a job shows
//! the job's stream when it has none of its own (a one-table run attaches its
//! stream to the job).
//!
//! The handle also carries the caller's event sink ([`crate::events`]): every
//! part of a run holds the handle, so each can tell the operator what happens
//! ([`ProgressHandle::emit`]) without printing.
//!
//! Locks here guard plain values that are replaced whole (a state, a list, a
//! reason): a task that panicked elsewhere cannot leave one half-written, so a
//! poisoned lock's value is used as it is ([`plain`]) rather than dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum State {
    #[default]
    Initial,
    CopyRows,
    ApplyChangeset,
    RestoreSecondaryIndexes,
    AnalyzeTable,
    Checksum,
    PostChecksum,
    WaitingOnSentinelTable,
    CutOver,
    /// After the cut-over, the old table kept in step (`[cutover] revert_window`).
    RevertWindow,
    /// Swapping the old table back (`wraith revert`).
    Revert,
    Close,
    ErrCleanup,
}

impl State {
    /// Whether a table in this state has its copy behind it (the ETA is `due`).
    fn past_copy(self) -> bool {
        matches!(
            self,
            State::RestoreSecondaryIndexes
                | State::AnalyzeTable
                | State::Checksum
                | State::PostChecksum
                | State::WaitingOnSentinelTable
                | State::CutOver
                | State::RevertWindow
                | State::Revert
                | State::Close
        )
    }
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

/// Progress of one table: Spirit's `TableProgress` (the first four fields)
/// plus the table's own state and change figures. The added fields default
/// when absent, so the `status-json` of an older run still reads.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TableProgress {
    pub table_name: String,
    pub rows_copied: u64,
    pub rows_total: u64,
    pub is_complete: bool,
    /// The table's own state (the job's while it has none).
    #[serde(default)]
    pub state: State,
    /// Rows copied of the total, 0 to 100.
    #[serde(default)]
    pub pct: f64,
    /// The table's change stream (0 without one).
    #[serde(default)]
    pub changes_received: u64,
    #[serde(default)]
    pub changes_applied: u64,
    #[serde(default)]
    pub changes_backlog: u64,
    #[serde(default)]
    pub lag_secs: f64,
    /// Time left for this table's copy, by the job's rules (see [`Progress::eta`]).
    #[serde(default)]
    pub eta: Option<String>,
}

/// Rows copied of `total` in percent, 0 to 100; an empty table whose copy is
/// done is 100.
pub(crate) fn percent(copied: u64, total: u64, copy_done: bool) -> f64 {
    if total > 0 {
        (copied as f64 * 100.0 / total as f64).min(100.0)
    } else if copy_done {
        100.0
    } else {
        0.0
    }
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
    /// The job's change figures once a stream runs: the job's own stream, or
    /// the totals of the tables' streams (see the module's page).
    pub stream: Option<StreamProgress>,
    /// Time left for the copy of all tables' remaining rows, from the rate
    /// since the first rows moved, once 1% is copied; `due` when every
    /// table's copy is done; `None` before that.
    pub eta: Option<String>,
    /// Sessions the cut-over is waiting for (see [`crate::blockers`]).
    pub blockers: Vec<Blocker>,
    /// The revert window, while one is open.
    pub revert_window: Option<WindowProgress>,
}

/// An open revert window, for status lines and `status-json`.
#[derive(Debug, Clone, Serialize)]
pub struct WindowProgress {
    /// When the window ends, unix seconds.
    pub ends_at: u64,
    /// Seconds left (0 once past its end when the config keeps it open).
    pub seconds_left: u64,
    /// What the end does: `finish` or `keep`.
    pub at_end: String,
}

#[derive(Debug)]
struct TableCounters {
    name: String,
    rows_total: AtomicU64,
    rows_copied: AtomicU64,
    complete: std::sync::atomic::AtomicBool,
    /// `None`: never set, the job's state stands for it.
    state: Mutex<Option<State>>,
    /// Weak, like the job's stream.
    stream: Mutex<Option<Weak<dyn StreamFigures>>>,
    /// When this table's copy moved its first rows, for the ETA.
    copy_started: OnceLock<Instant>,
}

impl TableCounters {
    fn stream(&self) -> Option<StreamProgress> {
        plain(&self.stream)
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|s| s.figures())
    }
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
    stream: Mutex<Option<Weak<dyn StreamFigures>>>,
    blockers: Mutex<Vec<Blocker>>,
    events: Events,
    /// The revert window's end (unix seconds) and what it does, while open.
    window: Mutex<Option<(u64, String)>>,
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
    /// The job, whose state a table without its own shows.
    job: ProgressHandle,
}

impl TableHandle {
    pub fn add_rows(&self, n: u64) {
        if n > 0 {
            self.counters.copy_started.get_or_init(Instant::now);
        }
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

    /// Sets this table's own state (the job's state is [`ProgressHandle::set_state`]).
    pub fn set_state(&self, state: State) {
        let mut s = plain(&self.counters.state);
        if *s != Some(state) {
            tracing::info!(table = %self.counters.name, to = %state, "table state");
        }
        *s = Some(state);
    }

    /// This table's state: its own once set, else the job's.
    pub fn state(&self) -> State {
        plain(&self.counters.state).unwrap_or_else(|| self.job.state())
    }

    /// Shows the figures of this table's change stream from now on (held
    /// weakly: the progress does not keep the stream's connections open).
    pub fn attach_stream(&self, stream: Arc<dyn StreamFigures>) {
        *plain(&self.counters.stream) = Some(Arc::downgrade(&stream));
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
                blockers: Mutex::new(Vec::new()),
                window: Mutex::new(None),
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

    /// Records the revert window's end (unix seconds) and what it does
    /// (`None`: no window is open).
    pub fn set_window(&self, window: Option<(u64, String)>) {
        *plain(&self.inner.window) = window;
    }

    /// Records the sessions the cut-over waits for (empty: none).
    pub fn set_blockers(&self, blockers: Vec<Blocker>) {
        *plain(&self.inner.blockers) = blockers;
    }

    /// The handle of table `name`: created with `rows_total` on the first
    /// call, the same counters on every later one (a resumed or repeated
    /// stage does not add a second entry, and `rows_total` is then left to
    /// [`TableHandle::set_total`]). Tables are listed in the order of their
    /// first call.
    pub fn table(&self, name: &str, rows_total: u64) -> TableHandle {
        let mut tables = plain(&self.inner.tables);
        let counters = match tables.iter().find(|c| c.name == name) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(TableCounters {
                    name: name.to_string(),
                    rows_total: AtomicU64::new(rows_total),
                    rows_copied: AtomicU64::new(0),
                    complete: std::sync::atomic::AtomicBool::new(false),
                    state: Mutex::new(None),
                    stream: Mutex::new(None),
                    copy_started: OnceLock::new(),
                });
                tables.push(c.clone());
                c
            }
        };
        TableHandle {
            counters,
            job: self.clone(),
        }
    }

    /// The same as [`ProgressHandle::table`].
    pub fn add_table(&self, name: &str, rows_total: u64) -> TableHandle {
        self.table(name, rows_total)
    }

    pub fn snapshot(&self) -> Progress {
        let state = self.state();
        let job_stream = plain(&self.inner.stream)
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|s| s.figures());
        let counters: Vec<Arc<TableCounters>> = plain(&self.inner.tables).clone();
        let own_streams: Vec<Option<StreamProgress>> =
            counters.iter().map(|c| c.stream()).collect();
        let tables: Vec<TableProgress> = counters
            .iter()
            .zip(&own_streams)
            .map(|(c, own)| {
                let rows_copied = c.rows_copied.load(Ordering::Relaxed);
                let rows_total = c.rows_total.load(Ordering::Relaxed);
                let is_complete = c.complete.load(Ordering::Relaxed);
                let table_state = plain(&c.state).unwrap_or(state);
                let copy_done = is_complete || table_state.past_copy();
                // The only table shows the job's stream when it has none.
                let figures = own.clone().or_else(|| match counters.len() {
                    1 => job_stream.clone(),
                    _ => None,
                });
                let figures = figures.unwrap_or_default();
                TableProgress {
                    table_name: c.name.clone(),
                    rows_copied,
                    rows_total,
                    is_complete,
                    state: table_state,
                    pct: percent(rows_copied, rows_total, copy_done),
                    changes_received: figures.changes_received,
                    changes_applied: figures.changes_applied,
                    changes_backlog: figures.changes_backlog,
                    lag_secs: figures.lag_secs,
                    eta: eta(
                        rows_copied,
                        rows_total,
                        c.copy_started.get().copied(),
                        copy_done,
                    ),
                }
            })
            .collect();
        let stream = job_figures(job_stream, &own_streams);
        let elapsed = self.inner.started.elapsed().as_secs_f64();
        let copied: u64 = tables.iter().map(|t| t.rows_copied).sum();
        let total: u64 = tables.iter().map(|t| t.rows_total).sum();
        let pct = if total > 0 {
            (copied as f64 * 100.0 / total as f64).min(100.0)
        } else {
            0.0
        };
        let throttled = plain(&self.inner.throttled).clone();
        // From when the first rows of any table moved.
        let copy_started = counters.iter().filter_map(|c| c.copy_started.get()).min();
        let copy_done = !tables.is_empty()
            && tables.iter().all(|t| t.is_complete || t.state.past_copy())
            || state.past_copy();
        let eta = eta(copied, total, copy_started.copied(), copy_done);
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
        let revert_window = plain(&self.inner.window).clone().map(|(ends_at, at_end)| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            WindowProgress {
                ends_at,
                seconds_left: ends_at.saturating_sub(now),
                at_end,
            }
        });
        if let Some(w) = &revert_window {
            summary.push_str(&format!(
                " revert window {}s left (then {})",
                w.seconds_left, w.at_end
            ));
        }
        if tables.len() > 1 {
            summary.push_str(" | ");
            summary.push_str(&tables_brief(&tables));
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
            revert_window,
        }
    }
}

/// The job's change figures: its own stream's while no table has one;
/// otherwise the tables' streams summed, the largest lag of all, and the
/// position of the job's stream (the one reader) or else of the first table
/// that has one. The job's own counts are not added to the tables': they
/// count the same changes.
fn job_figures(
    job: Option<StreamProgress>,
    tables: &[Option<StreamProgress>],
) -> Option<StreamProgress> {
    if tables.iter().all(Option::is_none) {
        return job;
    }
    let mut sum = StreamProgress::default();
    for t in tables.iter().flatten() {
        sum.changes_received += t.changes_received;
        sum.changes_applied += t.changes_applied;
        sum.changes_backlog += t.changes_backlog;
        sum.lag_secs = sum.lag_secs.max(t.lag_secs);
        if sum.binlog_position.is_none() {
            sum.binlog_position = t.binlog_position.clone();
        }
    }
    if let Some(j) = job {
        sum.lag_secs = sum.lag_secs.max(j.lag_secs);
        if j.binlog_position.is_some() {
            sum.binlog_position = j.binlog_position;
        }
    }
    Some(sum)
}

impl TableProgress {
    /// The table's figures in one line:
    /// `orders CopyRows 5200/10000 52.0% applied 12 backlog 3`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}/{} {:.1}% applied {} backlog {}",
            self.table_name,
            self.state,
            self.rows_copied,
            self.rows_total,
            self.pct,
            self.changes_applied,
            self.changes_backlog
        )
    }
}

impl Progress {
    /// One short part per table for a one-line display (see [`tables_brief`]).
    pub fn tables_brief(&self) -> String {
        tables_brief(&self.tables)
    }
}

/// One short part per table for a one-line display:
/// `orders 52.1% CopyRows backlog 3; order_items 100.0% Checksum`
/// (the backlog only while there is one).
fn tables_brief(tables: &[TableProgress]) -> String {
    tables
        .iter()
        .map(|t| {
            let mut part = format!("{} {:.1}% {}", t.table_name, t.pct, t.state);
            if t.changes_backlog > 0 {
                part.push_str(&format!(" backlog {}", t.changes_backlog));
            }
            part
        })
        .collect::<Vec<_>>()
        .join("; ")
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

    /// Fixed figures of a change stream.
    #[derive(Debug)]
    struct Figures(StreamProgress);
    impl StreamFigures for Figures {
        fn figures(&self) -> StreamProgress {
            self.0.clone()
        }
    }

    fn stream(received: u64, applied: u64, backlog: u64, lag: f64) -> Arc<dyn StreamFigures> {
        Arc::new(Figures(StreamProgress {
            changes_received: received,
            changes_applied: applied,
            changes_backlog: backlog,
            binlog_position: Some("binlog.000003:77".into()),
            lag_secs: lag,
        }))
    }

    #[test]
    fn a_table_is_listed_once_however_often_a_stage_asks() {
        let p = ProgressHandle::new();
        p.table("orders", 100).add_rows(10);
        // A resumed stage asks again: the same counters, not a second entry.
        let again = p.add_table("orders", 999);
        again.add_rows(5);
        assert_eq!(again.rows_copied(), 15);
        let s = p.snapshot();
        assert_eq!(s.tables.len(), 1);
        assert_eq!(s.tables[0].rows_total, 100);
        assert_eq!(s.tables[0].rows_copied, 15);
        // Never set, the table's state is the job's.
        p.set_state(State::CopyRows);
        assert_eq!(again.state(), State::CopyRows);
        assert_eq!(p.snapshot().tables[0].state, State::CopyRows);
        again.set_state(State::Checksum);
        assert_eq!(p.table("orders", 0).state(), State::Checksum);
        assert_eq!(p.state(), State::CopyRows);
    }

    #[test]
    fn three_tables_show_their_own_progress_and_the_job_sums_them() {
        let p = ProgressHandle::new();
        p.set_state(State::CopyRows);
        let orders = p.table("orders", 1_000);
        let items = p.table("order_items", 3_000);
        let tenants = p.table("tenants", 0);
        orders.set_state(State::CopyRows);
        items.set_state(State::Checksum);
        tenants.set_state(State::CopyRows);
        let s_orders = stream(10, 7, 3, 2.0);
        let s_items = stream(20, 20, 0, 5.0);
        orders.attach_stream(s_orders.clone());
        items.attach_stream(s_items.clone());
        // The first rows moved 10 s ago; 1000 of 4000 rows are copied now.
        let ten_s_ago = Instant::now() - std::time::Duration::from_secs(10);
        orders.counters.copy_started.set(ten_s_ago).unwrap();
        orders.add_rows(521);
        items.add_rows(479);
        items.set_total(479);
        let s = p.snapshot();

        let names: Vec<&str> = s.tables.iter().map(|t| t.table_name.as_str()).collect();
        assert_eq!(names, ["orders", "order_items", "tenants"]);
        let (o, i, t) = (&s.tables[0], &s.tables[1], &s.tables[2]);
        assert_eq!(
            (o.state, i.state, t.state),
            (State::CopyRows, State::Checksum, State::CopyRows)
        );
        assert_eq!((o.rows_copied, o.rows_total), (521, 1_000));
        assert!((o.pct - 52.1).abs() < 1e-9, "{}", o.pct);
        assert_eq!(i.pct, 100.0);
        // An empty table still copying is at 0%, not 100%.
        assert_eq!(t.pct, 0.0);
        assert_eq!(
            (o.changes_received, o.changes_applied, o.changes_backlog),
            (10, 7, 3)
        );
        assert_eq!(o.lag_secs, 2.0);
        assert_eq!((i.changes_applied, i.changes_backlog), (20, 0));
        // Without a stream of its own, a table of several shows none.
        assert_eq!(
            (t.changes_received, t.changes_applied, t.changes_backlog),
            (0, 0, 0)
        );
        assert_eq!(i.eta.as_deref(), Some("due"));
        // orders: 521 rows in 10 s, 479 left: about 9 s.
        let left = o.eta.as_deref().unwrap();
        assert!(left == "10s" || left == "11s", "{left}");

        // The job: the tables' streams summed, the largest lag.
        let job = s.stream.as_ref().unwrap();
        assert_eq!(
            (
                job.changes_received,
                job.changes_applied,
                job.changes_backlog
            ),
            (30, 27, 3)
        );
        assert_eq!(job.lag_secs, 5.0);
        assert_eq!(job.binlog_position.as_deref(), Some("binlog.000003:77"));
        // ETA over all remaining rows: 1000 of 1479 in 10 s, 479 left: about 5 s.
        let left = s.eta.as_deref().unwrap();
        assert!(left == "4s" || left == "5s", "{left}");
        assert_eq!(s.current_state, State::CopyRows);
        assert!(
            s.summary.starts_with("1000/1479 rows 67.6% CopyRows eta "),
            "{}",
            s.summary
        );
        assert!(
            s.summary.ends_with(
                " | orders 52.1% CopyRows backlog 3; order_items 100.0% Checksum; tenants 0.0% CopyRows"
            ),
            "{}",
            s.summary
        );
        assert!(
            s.summary
                .contains("applied 27 backlog 3 binlog binlog.000003:77 lag 5s"),
            "{}",
            s.summary
        );

        // `due` once every table's copy is done, not before.
        orders.set_state(State::PostChecksum);
        assert_ne!(p.snapshot().eta.as_deref(), Some("due"));
        tenants.complete();
        let s = p.snapshot();
        assert_eq!(s.eta.as_deref(), Some("due"));
        assert_eq!(s.tables[2].pct, 100.0);

        // A job-level stream too: its position and lag, not its counts again.
        let reader: Arc<dyn StreamFigures> = Arc::new(Figures(StreamProgress {
            changes_received: 1_000,
            binlog_position: Some("binlog.000004:9".into()),
            lag_secs: 8.0,
            ..StreamProgress::default()
        }));
        p.attach_stream(reader.clone());
        let job = p.snapshot().stream.unwrap();
        assert_eq!((job.changes_received, job.lag_secs), (30, 8.0));
        assert_eq!(job.binlog_position.as_deref(), Some("binlog.000004:9"));
        // Streams gone: the tables show zeros, the job the reader alone.
        drop((s_orders, s_items));
        let s = p.snapshot();
        assert_eq!(s.tables[0].changes_applied, 0);
        assert_eq!(s.stream.map(|f| f.changes_received), Some(1_000));
    }

    #[test]
    fn one_table_keeps_todays_summary_and_shows_the_jobs_stream() {
        let p = ProgressHandle::new();
        p.set_state(State::CopyRows);
        p.table("t", 100).add_rows(10);
        let s_job = stream(9, 7, 2, 0.0);
        p.attach_stream(s_job.clone());
        let s = p.snapshot();
        // Today's line: no part per table.
        assert!(
            s.summary.starts_with("10/100 rows 10.0% CopyRows eta ")
                && s.summary
                    .ends_with(" applied 7 backlog 2 binlog binlog.000003:77 lag 0s"),
            "{}",
            s.summary
        );
        assert!(!s.summary.contains(" | "), "{}", s.summary);
        assert_eq!(s.tables[0].state, State::CopyRows);
        assert_eq!(s.tables[0].changes_applied, 7);
        assert_eq!(s.tables[0].changes_backlog, 2);
        assert_eq!(s.stream.map(|f| f.changes_received), Some(9));
    }

    #[test]
    fn table_progress_of_an_older_run_still_reads() {
        let old = r#"{"table_name":"t","rows_copied":5,"rows_total":10,"is_complete":false}"#;
        let t: TableProgress = serde_json::from_str(old).unwrap();
        assert_eq!(
            (t.state, t.pct, t.eta.as_deref()),
            (State::Initial, 0.0, None)
        );
        let json = serde_json::to_value(&t).unwrap();
        for field in [
            "state",
            "pct",
            "changes_applied",
            "changes_backlog",
            "changes_received",
            "lag_secs",
            "eta",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
    }
}
