//! # wraith-engine
//!
//! The part of wraith that decides: it reads the config, checks the servers
//! (preflight), plans how the old table maps onto the new one, and drives the
//! rebuild. The backends (`wraith-backend`) carry rows; the checkpoint stores
//! (`wraith-checkpoints`) keep what a resumed run needs; this crate knows the
//! order of things and the rules that keep data safe (see DESIGN.md).
//!
//! ## The data flow
//!
//! ```text
//! Config ─► preflight() ─► PreflightReport: every check and the plan; nothing is changed
//!        ─► run() / run_with() ─► shadow table, binlog position, change stream
//!             ─► copy (chunker, readers, engines) ─► applier ─► checksum ─► cut-over
//!             ─► Ok(RunReport: a TableReport per table, with its CutoverReport) or RunError
//!           while it runs: Progress (polled through a ProgressHandle), RunEvents (pushed
//!           to an EventSink), steered by Operations (the control socket) and RunControl
//!        ─► status() ─► StatusReport: what a checkpointed run has done, read without running
//! ```
//!
//! ## The front door (public)
//!
//! - [`config`]: the TOML job description, strictly parsed.
//! - [`preflight()`] → [`PreflightReport`]: every check that must pass before
//!   a run, and the plan.
//! - [`run`], [`run_with`] ([`RunOptions`], [`RunControl`], [`Operations`]) →
//!   [`RunReport`] of [`TableReport`]s, each with its [`CutoverReport`], or a
//!   [`RunError`] that says whether a rerun resumes.
//! - [`Progress`] / [`ProgressHandle`]: the counters a display polls;
//!   [`RunEvent`]s to an [`EventSink`]: what a run reports for the caller to
//!   render (the library never prints).
//! - [`status`] → [`StatusReport`] / [`StatusError`]: a run's checkpoint.
//! - [`checksum_table`] / [`ChecksumError`]: source against shadow, chunk by
//!   chunk (the tests' oracle).
//! - [`import`]: `wraith import`: dump files (SQL, CSV, TSV) through the same
//!   engines and checkpoints, with its own config, preflight and run.
//! - [`server`]: connections (multi-statements off), the server
//!   [`server::Flavor`] and the statements spelled by it, quoting, and
//!   [`server::inspect`]: what a table looks like (columns, keys, indexes).
//! - [`registry`]: schema changes as requests (`wraith submit`,
//!   `wraith migrations`), kept in a table on the server, and
//!   [`registry::serve`]: the service that runs them one after another;
//!   [`discard`] drops what a job that never cut over made (a cancel).
//! - [`binlog`]: the change stream: the source table's committed row changes
//!   from the binlog (public for its own tests in `tests/`).
//! - `testkit` (feature `testkit`, off by default): a private MariaDB for
//!   tests, demos and benchmarks, generated tables and write loads, and
//!   `wraith bench`'s harness.
//! - [`mysql_async`]: the driver, re-exported so callers use the same version.
//!
//! ## Inside (crate-private)
//!
//! - `alter`: the `alter` clause read as data: one alteration of one table.
//! - `plan`: column mapping, chunk key, new key, deferred indexes.
//! - `preflight`: the checks behind [`preflight()`]; `paths`: the files and
//!   directories the config names; `datacheck`: bounded checks of the data
//!   against what the new table can hold.
//! - `shadow`: the shadow table, its layout, deferred indexes.
//! - `chunker`, `copy`: key ranges, readers and engine writers.
//! - `changes`: the change buffer and the copy's watermarks; `applier`:
//!   writes them; `online`: the stream, buffer and applier kept running beside
//!   the copy, and the cut-over's view of them.
//! - `checksum`: chunked comparison of source and shadow; `verify`: the rows
//!   changed after it, compared again before the rename.
//! - `cutover`: the atomic swap under bounded lock attempts; `blockers`: the
//!   sessions that would make its lock wait.
//! - `migration`: the run, one function per stage, moved through by one
//!   stage tracker; `progress`: its counters; `events`: what it reports;
//!   `resume`: its checkpoints and resuming from them.
//! - `names`: every object wraith creates, named in one place (listed in
//!   `config/README.md`).
//! - `throttle`: when the copy pauses and why; `control`: the control socket
//!   and the live settings it changes; `hooks`: operator executables run at
//!   points of a run.
//!
//! Errors are typed per module; the CLI maps them to exit codes.

// The front door, in the order of the data flow.
pub mod config;

pub use preflight::{
    run as preflight, run_predicting as preflight_predicting, JobEstimate,
    Report as PreflightReport, TableEstimate,
};

pub use migration::{
    discard, finish, revert, run, run_with, FinishReport, RevertReport, RunControl, RunError,
    RunOptions, RunReport, TableReport, WindowEnding,
};

// What a run reports, and how it is steered while it runs.
pub use crate::{
    control::Operations,
    cutover::CutoverReport,
    events::{EventSink, RunEvent},
    progress::{Progress, ProgressHandle, StageTiming, State, TableProgress},
};

pub use resume::{status, StatusError, StatusReport};

pub use checksum::{checksum_table, ChecksumError};

pub mod import;

pub mod server;

pub mod registry;

pub mod binlog;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use mysql_async;

// Inside: crate-private.
mod alter;
mod applier;
mod blockers;
mod changes;
mod checksum;
mod chunker;
mod control;
mod copy;
mod cutover;
mod datacheck;
mod events;
pub mod foreign_keys;
mod hooks;
mod implicit;
mod migration;
mod names;
mod online;
mod paths;
mod plan;
mod preflight;
mod progress;
mod resume;
mod shadow;
mod throttle;
mod verify;
