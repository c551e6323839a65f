//! # The benchmark's pieces (`wraith bench`)
//!
//! What this module is for: everything `wraith bench` needs that talks to the
//! database or the operating system, so the CLI only orders the runs and draws
//! the results.
//!
//! - [`tables`]: the generated tables (`sysbench`, `wide`, `uuid`).
//! - [`pristine`]: one pristine copy per table, restored before every method
//!   (a transportable tablespace when the server's datadir is on this machine,
//!   `INSERT … SELECT` otherwise), and the fingerprint (row count, `CHECKSUM
//!   TABLE`, definition) every result is checked against, so a benchmark never
//!   reports a fast wrong result.
//! - [`load`]: a sysbench `oltp_write_only`-like write load (update an indexed
//!   column, update a plain column, delete and re-insert a row) at a fixed
//!   rate, with latency histograms read in windows (before and during each
//!   method), and a log of its committed transactions that is replayed onto
//!   the pristine copy to know what the table must hold afterwards.
//! - [`process_cpu_secs`]: a process's CPU time (the server's, per method).
//!
//! What it leaves to others: the rebuild itself (`migration`, run by the CLI
//! as a child `wraith run`), the order of the runs, the statistics and the
//! report (the CLI).
//!
//! Fairness rules the pieces keep: every method starts from the same restored,
//! warmed table with no dirty pages in the buffer pool; the load starts fresh
//! for each method and its baseline window is measured right before the method
//! starts; latency is counted from when a transaction was *due* (open loop),
//! so a method that blocks writers shows the full wait, not just the stalled
//! statement (no coordinated omission).

pub mod load;
pub mod pristine;
pub mod tables;

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
