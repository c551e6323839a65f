//! # wraith-engine
//!
//! The part of wraith that decides: it reads the config, checks the servers
//! (preflight), plans how the old table maps onto the new one, and drives the
//! rebuild. The backends (`wraith-backend`) carry rows; the checkpoint stores
//! (`wraith-checkpoints`) keep what a resumed run needs; this crate knows the
//! order of things and the rules that keep data safe (see DESIGN.md).
//!
//! Modules:
//! - [`config`]: the TOML job description, strictly parsed.
//! - [`server`]: connections, the server [`server::Flavor`] and the
//!   statements spelled by it, quoting, and [`server::inspect`]: what a table
//!   looks like (columns, keys, indexes).
//! - [`alter`]: the `alter` clause read as data: one alteration of one table.
//! - [`plan`]: column mapping, chunk key, new key, deferred indexes.
//! - [`preflight`]: every check that must pass before a run, and the plan;
//!   [`paths`]: the files and directories the config names.
//! - [`shadow`]: the shadow table, its layout, deferred indexes.
//! - [`chunker`], [`copy`]: key ranges, readers and engine writers.
//! - [`checksum`]: chunked comparison of source and shadow; [`verify`]: the
//!   rows changed after it, compared again before the rename.
//! - [`cutover`]: the atomic swap under bounded lock attempts; [`blockers`]:
//!   the sessions that would make its lock wait.
//! - [`binlog`]: the change stream: the source table's committed row changes from the binlog.
//! - [`changes`]: the change buffer and the copy's watermarks; [`applier`]: writes them;
//!   [`online`]: the stream, buffer and applier kept running beside the copy,
//!   and the cut-over's view of them.
//! - [`datacheck`]: bounded checks of the data against what the new table can hold.
//! - [`migration`]: the run, one function per stage; [`progress`]: its counters;
//!   [`events`]: what it reports for the caller to render (the library never
//!   prints); [`resume`]: its checkpoints and resuming from them.
//! - [`throttle`]: when the copy pauses and why; [`control`]: the control
//!   socket and the live settings it changes; [`hooks`]: operator executables
//!   run at points of a run.
//! - [`import`]: `wraith import`: dump files (SQL, CSV, TSV) through the same engines and checkpoints.
//! - `testkit` (feature `testkit`, off by default): a private MariaDB for
//!   tests, demos and benchmarks, generated tables and write loads, and
//!   `wraith bench`'s harness.
//!
//! Errors are typed per module; the CLI maps them to exit codes.

mod alter;
mod applier;
pub mod binlog;
mod blockers;
mod changes;
mod checksum;
mod chunker;
pub mod config;
mod control;
mod copy;
mod cutover;
mod datacheck;
mod events;
mod hooks;
pub mod import;
mod migration;
mod online;
mod paths;
mod plan;
mod preflight;
mod progress;
mod resume;
pub mod server;
mod shadow;
#[cfg(feature = "testkit")]
pub mod testkit;
mod throttle;
mod verify;

pub use crate::{
    control::Operations,
    cutover::CutoverReport,
    events::{EventSink, RunEvent},
    progress::{Progress, ProgressHandle},
};
pub use checksum::{checksum_table, ChecksumError};
pub use migration::{run, run_with, RunControl, RunError, RunOptions, RunReport, TableReport};
pub use preflight::{run as preflight, Report as PreflightReport};
pub use resume::{status, StatusError, StatusReport};

/// The driver, re-exported so callers use the same version.
pub use mysql_async;
