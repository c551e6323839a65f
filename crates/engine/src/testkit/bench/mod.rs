//! # The benchmark (`wraith bench`)
//!
//! What this module is for: everything `wraith bench` does short of drawing
//! it: the generated tables, the pristine copies, the write load, the
//! replica, the blocker, running each method and checking its result, and
//! the results the report is drawn from. The CLI parses the arguments into
//! [`BenchSettings`], calls [`harness::run`], prints the [`BenchEvent`]s as
//! they come and renders the [`BenchResults`] (markdown, JSON, SVG).
//!
//! The comparison it makes is the one users make when they choose a tool:
//! wraith's backends against native `ALTER TABLE` (INPLACE, COPY), the
//! server's own floor for the same work, pt-online-schema-change and gh-ost
//! (each per chunk size), under three conditions (idle; a write load; the
//! load and a long transaction at the final lock), and with `--replica` on
//! a real replica (its lag, and when the change is complete there), with the
//! writers' latency before, during and after each method and the write debt
//! it left on the server.
//!
//! - [`tables`]: the generated tables (`sysbench`, `wide`, `uuid`).
//! - [`pristine`]: one pristine copy per table, restored before every method
//!   (a transportable tablespace when the server's datadir is on this machine,
//!   `INSERT … SELECT` otherwise; on the replica too, binlog off), and the
//!   fingerprint (row count, `CHECKSUM TABLE`, definition) every result is
//!   checked against, so a benchmark never reports a fast wrong result.
//! - [`load`]: a sysbench `oltp_write_only`-like write load (update an indexed
//!   column, update a plain column, delete and re-insert a row) at a fixed
//!   rate, with latency histograms read in windows (before, during and after
//!   each method, with a p95 per second), and a log of its committed
//!   transactions that is replayed onto the pristine copy to know what the
//!   table must hold afterwards.
//! - [`harness`]: the order of the runs (per table, round, condition and
//!   method: A B C A B C …) and one measured run, step by step (its page);
//!   `methods` (private): each method's rebuild and the tools' command
//!   lines; `apply` (private): the change-apply measurement; `import`
//!   (private): `--import`'s dump and loads.
//! - `replica` (private): the second scratch server, replication by GTID,
//!   catching up, and the heartbeat and lag sampling while a method runs.
//! - `blocker` (private): the session that opens a transaction reading the
//!   table shortly before a method's final lock, and when that moment is.
//! - `debt` (private): InnoDB's dirty pages, checkpoint age and purge backlog
//!   before and after a method, and how long the dirty pages take to return.
//! - [`results`]: what was measured, and the summary per method.
//! - `server` and `child` (private): where the benchmark runs and how the
//!   child tools (`wraith run`, pt-online-schema-change, gh-ost, mydumper,
//!   myloader) are started and measured (`wait4` for their peak RSS).
//! - [`process_cpu_secs`]: a process's CPU time (the server's, per method).
//!
//! What it leaves to others: the rebuild and the import themselves (a child
//! `wraith run` / `wraith import` of the binary named in the settings, so
//! each is timed as an operator runs it), the terminal and the files (the CLI).
//!
//! Fairness rules the pieces keep: every method starts from the same restored,
//! warmed table with no dirty pages in the buffer pool and, with a replica,
//! a replica that has caught up and holds the same table; the load starts
//! fresh for each method and its baseline window is measured right before the
//! method starts; latency is counted from when a transaction was *due* (open
//! loop), so a method that blocks writers shows the full wait, not just the
//! stalled statement (no coordinated omission); ratios compare runs of the
//! same round and condition.
//!
//! Errors: [`BenchError`]. A failed or wrong *run* is not an error: it is a
//! result marked incorrect, with its error chain as text, and the benchmark
//! goes on; only what stops the whole benchmark (no server, unusable
//! settings, a table that cannot be generated, a replica that does not
//! start) is returned as an error.

mod apply;
mod blocker;
mod child;
mod debt;
pub mod harness;
mod import;
pub mod load;
mod methods;
pub mod pristine;
mod replica;
pub mod results;
mod server;
pub mod tables;

pub use harness::{run, BenchEvent, BenchSettings, ServerChoice};
pub use results::{BenchResults, Condition, Method};

use crate::server::DbError;

/// What can go wrong preparing or checking a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("restoring {table} from its pristine copy: {message}")]
    Restore { table: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown table kind {0:?}; use sysbench, wide or uuid")]
    UnknownTableKind(String),
    /// The settings or the config cannot be used as given (the CLI's exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("starting the scratch server")]
    Scratch(#[source] crate::testkit::scratch::ScratchError),
    /// A step that failed; its cause is the source (see [`error_chain`]).
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{tool} failed ({status}): {tail}")]
    ChildFailed {
        tool: String,
        status: String,
        /// The last lines of its output.
        tail: String,
    },
    #[error("{0}")]
    Failed(String),
}

/// `error` and its sources, joined by `": "`, as a run's error text.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text += ": ";
        text += &e.to_string();
        source = e.source();
    }
    text
}

/// Names the step a fallible call belongs to, as [`BenchError::Step`].
pub(crate) trait StepContext<T> {
    fn step(self, what: &str) -> Result<T, BenchError>;
    fn with_step(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> StepContext<T> for Result<T, E> {
    fn step(self, what: &str) -> Result<T, BenchError> {
        self.with_step(|| what.to_string())
    }

    fn with_step(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::Step {
            what: what(),
            source: Box::new(e),
        })
    }
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; `None` when it cannot be read (another host, gone).
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) / ticks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_cpu_time_is_readable() {
        let cpu = super::process_cpu_secs(std::process::id());
        assert!(cpu.is_some_and(|s| s >= 0.0));
    }
}
