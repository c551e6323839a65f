//! What a run tells its operator, as values: the library never prints.
//!
//! A run meets moments an operator should hear of as they happen (the control
//! socket it opened, a resumed checkpoint, a postponed cut-over, throttling
//! starting and ending, a hook that failed). Each is a [`RunEvent`]; the caller
//! hands the run a sink ([`EventSink`], ripgrep's `Sink` idea) through the
//! [`crate::progress::ProgressHandle`] every part of the run already holds,
//! and decides how to show it. The `wraith` binary writes one line to stderr
//! per event; a library user can log them, collect them in a test, or drop
//! them (the default sink does).
//!
//! Left to others: the words. The events carry the facts (table, stage,
//! counts, reasons as the run phrased them); rendering is the caller's. Logs
//! for debugging go through `tracing` as before, next to the events.
//!
//! Errors: none. A sink is called on the task that raised the event and must
//! not block for long.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wraith_checkpoints::TableStage;

/// Something the operator should hear of while a run goes on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunEvent {
    /// The control socket is listening.
    ControlSocket { path: PathBuf },
    /// The control port (`[control] tcp_port`) is listening.
    ControlPort { addr: SocketAddr },
    /// A run killed after its cut-over had renamed `table`: nothing was left to do.
    InterruptedRunFinished { table: String },
    /// The run continues an earlier one from its checkpoint.
    Resuming {
        migration_id: String,
        started_at: String,
        /// Where the checkpoint is kept.
        store: String,
        /// The checkpoint's summary of where each table was.
        status: String,
    },
    /// `--fresh` dropped what an earlier run had left for `table`.
    FreshDropped { table: String, shadow: String },
    /// An interrupted cut-over had renamed the tables; the run finishes up.
    InterruptedCutoverDone { table: String },
    /// An interrupted cut-over had renamed nothing; it is done again.
    InterruptedCutoverUndone { table: String },
    /// The table's work resumes at `stage`.
    ResumingAtStage { table: String, stage: TableStage },
    /// Engines the killed run had closed were imported by UUID.
    EnginesImported {
        table: String,
        engines: usize,
        rows: u64,
    },
    /// The copy resumes after its durable prefix; `recopied` rows above it
    /// were deleted and are copied again.
    CopyResumed { table: String, recopied: u64 },
    /// Verified with the cut-over disabled: the shadow is kept in sync until
    /// the run is interrupted.
    KeptInSync { table: String, shadow: String },
    /// The cut-over waits while `why` holds; changes keep being applied.
    CutoverPostponed { table: String, why: String },
    /// A hook failed; the run goes on.
    HookFailed { error: String },
    /// The copy is paused. `label` is the table (empty before one is known).
    Throttled { label: String, reason: String },
    /// The copy goes on again; `was` is the reason it had been paused.
    ThrottleEnded { label: String, was: String },
    /// The revert window is open: the old tables follow the live ones until `ends`.
    RevertWindowOpen {
        tables: String,
        /// When it ends, UTC, readable.
        ends: String,
        /// What its end does (`finish` or `keep`).
        at_end: String,
    },
    /// The window's end was moved (`extend-window`).
    RevertWindowExtended { tables: String, ends: String },
    /// The run handed the window over (`release-window`) and exits.
    RevertWindowReleased { tables: String },
    /// The window reached its end and the config keeps it open.
    RevertWindowExpired { tables: String },
}

/// Where a run sends its events.
pub type EventSink = Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// A sink that drops every event.
pub fn discard() -> EventSink {
    Arc::new(|_| {})
}
