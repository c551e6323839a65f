//! `wraith revert CONFIG` and `wraith finish CONFIG`: the two ends of a
//! revert window (`[cutover] revert_window`, see the engine's
//! `migration/window.rs`). Either works whether the run holding the window
//! is alive (it hands the window over and exits), was killed, or was never
//! restarted: both resume the window from its checkpoint.

use std::path::PathBuf;

use clap::Args;
use wraith_engine::config::Config;
use wraith_engine::{FinishReport, ProgressHandle, RunControl, RunError};

use crate::{print_json, progress_display, wait_for_signal, Failure, Outcome};

#[derive(Args)]
pub struct RevertArgs {
    /// The job's TOML config (the one its `wraith run` used).
    pub config: PathBuf,
    /// Drop the new-schema table instead of keeping it as `_t_new`.
    #[arg(long)]
    pub drop_new: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FinishArgs {
    /// The job's TOML config (the one its `wraith run` used).
    pub config: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A control that stops on Ctrl-C or SIGTERM.
fn interruptible() -> RunControl {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("\nstopping at the next safe point...");
        let _ = stop_tx.send(true);
    });
    RunControl { shutdown: stop_rx }
}

fn failed(e: RunError) -> Failure {
    eprintln!("error: {e}");
    Failure::Reported
}

pub async fn revert(config: &Config, args: &RevertArgs) -> Result<Outcome, Failure> {
    let progress = ProgressHandle::with_events(progress_display::stderr_events());
    let control = interruptible();
    let report = wraith_engine::revert(config, &progress, &control, args.drop_new)
        .await
        .map_err(failed)?;
    let tables = report.tables.join(", ");
    match &report.cutover {
        Some(c) => {
            eprintln!(
                "{tables}: reverted in {} attempt(s); writes were blocked for {:.1} ms in all \
                 ({:.1} ms by the swap, {:.1} ms by the comparison's consistent point); {} rows \
                 written during the window compared equal first",
                c.attempts,
                report.blocked_ms,
                c.blocked_ms,
                report.point_lock_ms,
                report.rows_verified
            );
            crate::print_cutover_details(&tables, c);
        }
        None => eprintln!("{tables}: reverted (an earlier revert had swapped the tables)"),
    }
    if report.kept.is_empty() {
        eprintln!("{tables}: the new-schema table was dropped");
    } else {
        eprintln!(
            "{tables}: the new-schema table is kept as {}",
            report.kept.join(", ")
        );
    }
    if args.json {
        print_json(&report)?;
    }
    Ok(Outcome::Done)
}

pub async fn finish(config: &Config, args: &FinishArgs) -> Result<Outcome, Failure> {
    let progress = ProgressHandle::with_events(progress_display::stderr_events());
    let control = interruptible();
    let report = wraith_engine::finish(config, &progress, &control)
        .await
        .map_err(failed)?;
    print_finished(&report);
    if args.json {
        print_json(&report)?;
    }
    Ok(Outcome::Done)
}

/// The end of a window, as the operator reads it.
pub fn print_finished(report: &FinishReport) {
    eprintln!(
        "revert window finished: dropped {} in {:.1} ms",
        report.dropped.join(", "),
        report.drop_ms
    );
}
