//! Draws a run's progress: an indicatif bar on a terminal, a plain log line
//! every 10 seconds otherwise (CI logs, `nohup`), with the same fields (the
//! job's totals, then, with several tables, a short part per table); and
//! the run's events ([`RunEvent`]), one line each on stderr.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wraith_engine::{EventSink, ProgressHandle, RunEvent};

/// The sink that writes each event as one line on stderr.
pub fn stderr_events() -> EventSink {
    std::sync::Arc::new(|event: &RunEvent| eprintln!("{}", render(event)))
}

/// An event's line (scripts and tests read these words: keep them).
pub fn render(event: &RunEvent) -> String {
    match event {
        RunEvent::ControlSocket { path } => format!(
            "control socket: {} (`help` lists the commands)",
            path.display()
        ),
        RunEvent::ControlPort { addr } => format!("control port: {addr}"),
        RunEvent::InterruptedRunFinished { table } => {
            format!("{table}: the interrupted run had cut over already; finished")
        }
        RunEvent::Resuming {
            migration_id,
            started_at,
            store,
            status,
        } => format!(
            "resuming migration {migration_id} (started {started_at}) from its checkpoint in {store}: {status}"
        ),
        RunEvent::FreshDropped { table, shadow } => {
            format!("--fresh: dropped {shadow} and the local state of {table}")
        }
        RunEvent::InterruptedCutoverDone { table } => {
            format!("{table}: the interrupted cut-over had completed; finishing up")
        }
        RunEvent::InterruptedCutoverUndone { table } => {
            format!("{table}: the interrupted cut-over renamed nothing; it is done again")
        }
        RunEvent::ResumingAtStage { table, stage } => {
            format!("{table}: resuming at stage {stage}")
        }
        RunEvent::EnginesImported {
            table,
            engines,
            rows,
        } => format!(
            "{table}: imported {engines} engine(s) ({rows} rows) the killed run had closed, by UUID"
        ),
        RunEvent::CopyResumed { table, recopied } => format!(
            "{table}: resuming the copy after its durable prefix; {recopied} rows above it are copied again"
        ),
        RunEvent::KeptInSync { table, shadow } => format!(
            "{table}: verified; cut-over is disabled, so {shadow} is kept in sync with {table} until interrupted (Ctrl-C)"
        ),
        RunEvent::CutoverPostponed { table, why } => {
            format!("{table}: cut-over postponed while {why}; changes keep being applied")
        }
        RunEvent::HookFailed { error } => format!("warning: {error}"),
        RunEvent::Throttled { label, reason } => format!("{}throttled: {reason}", prefix(label)),
        RunEvent::ThrottleEnded { label, was } => {
            format!("{}throttling ended (was: {was})", prefix(label))
        }
        RunEvent::RevertWindowOpen { tables, ends, at_end } => format!(
            "{tables}: revert window open until {ends} (then {at_end}): the old table follows \
             every change; `wraith revert CONFIG` swaps it back, `wraith finish CONFIG` ends the window"
        ),
        RunEvent::RevertWindowExtended { tables, ends } => {
            format!("{tables}: the revert window now ends {ends}")
        }
        RunEvent::RevertWindowReleased { tables } => format!(
            "{tables}: handed the revert window over; its checkpoint is kept for `wraith revert` or `wraith finish`"
        ),
        RunEvent::RevertWindowExpired { tables } => format!(
            "{tables}: the revert window reached its end; window_end = \"keep\" keeps the old table in \
             step until `wraith finish` or `wraith revert`"
        ),
        // Events added to the library later still reach the operator.
        other => format!("{other:?}"),
    }
}

/// `label: `, or nothing before a table is known.
fn prefix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    }
}

pub struct Display {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Display {
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub fn spawn(progress: ProgressHandle) -> Display {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        let started = std::time::Instant::now();
        let mut last_line: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let p = progress.snapshot();
            if !tty {
                // gh-ost's cadence for logs: every second for the first
                // minute, every 5 s to the third, then every 30 s; every 5 s
                // again once the copy is nearly done.
                let elapsed = started.elapsed().as_secs();
                let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
                let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
                let near_end = total > 0 && copied * 100 >= total * 95;
                let every = match elapsed {
                    0..=60 => 1,
                    _ if near_end => 5,
                    61..=180 => 5,
                    _ => 30,
                };
                if last_line.is_some_and(|t| t.elapsed() < Duration::from_secs(every)) {
                    continue;
                }
                last_line = Some(std::time::Instant::now());
            }
            let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
            let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
            match &bar {
                Some(bar) => {
                    bar.set_length(total.max(copied));
                    bar.set_position(copied);
                    bar.set_prefix(p.current_state.to_string());
                    let mut msg = p
                        .stream
                        .as_ref()
                        .map(|s| format!("applied {} backlog {}", s.changes_applied, s.changes_backlog))
                        .unwrap_or_default();
                    if let Some(r) = &p.throttled {
                        msg.push_str(&format!(" throttled: {r}"));
                    }
                    if p.tables.len() > 1 {
                        msg.push_str(&format!(" | {}", p.tables_brief()));
                    }
                    bar.set_message(msg);
                }
                None => eprintln!(
                    "state={} copied={copied}/{total} rows_per_sec={:.0} eta={} applied={} backlog={} binlog={} lag={:.0}s elapsed={:.0}s {}throttled={}",
                    p.current_state,
                    p.rows_per_sec,
                    p.eta.as_deref().unwrap_or("-"),
                    p.stream.as_ref().map_or(0, |s| s.changes_applied),
                    p.stream.as_ref().map_or(0, |s| s.changes_backlog),
                    p.stream.as_ref().and_then(|s| s.binlog_position.as_deref()).unwrap_or("-"),
                    p.stream.as_ref().map_or(0.0, |s| s.lag_secs),
                    p.elapsed_secs,
                    // Several tables: each one's part, before the free-text `throttled=`.
                    if p.tables.len() > 1 {
                        format!("tables=[{}] ", p.tables_brief())
                    } else {
                        String::new()
                    },
                    p.throttled.as_deref().unwrap_or("no")
                ),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    Display { stop, task }
}
