//! `wraith import CONFIG`: loads dump files; draws progress over bytes and
//! rows (an indicatif bar on a terminal, a log line every 10 s otherwise).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use wraith_engine::import::config::ImportJobConfig;
use wraith_engine::import::preflight::check as check_import;
use wraith_engine::import::{run_import, ImportError, ImportProgress, PROGRESS_INTERVAL};

use crate::{Failure, Outcome};

/// Whether the config file at `path` is an import job's (it has `[import]`);
/// `wraith check` then runs the import preflight.
pub fn is_import_config(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| ImportJobConfig::is_import_text(&text))
}

/// `wraith import --check CONFIG` (and `wraith check` on an import config):
/// the import preflight; loads nothing, changes nothing.
pub async fn check(config_path: &Path, json: bool) -> Result<Outcome, Failure> {
    let config = ImportJobConfig::load(config_path).map_err(|e| Failure::Config(e.to_string()))?;
    let report = check_import(&config).await;
    if json {
        crate::print_json(&report)?;
    } else {
        eprint!("{}", report.render());
    }
    if report.passed() {
        eprintln!("\nimport preflight passed");
        Ok(Outcome::Done)
    } else {
        let n = report.failures().count();
        eprintln!("\nimport preflight refused: {n} check(s) failed; nothing was loaded");
        Ok(Outcome::Refused)
    }
}

pub async fn import(config_path: &Path, json: bool) -> Result<Outcome, Failure> {
    let config = ImportJobConfig::load(config_path).map_err(|e| Failure::Config(e.to_string()))?;
    let progress = Arc::new(ImportProgress::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::wait_for_signal().await;
        eprintln!("\nstopping after the regions in flight (a rerun resumes)...");
        let _ = stop_tx.send(true);
    });
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let shown = progress.clone();
    let display = tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        let interval = if tty {
            Duration::from_millis(200)
        } else {
            PROGRESS_INTERVAL
        };
        loop {
            tokio::select! {
                _ = &mut done_rx => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let total = shown.bytes_total.load(Ordering::Relaxed);
            let done = shown.bytes_done.load(Ordering::Relaxed);
            let rows = shown.rows.load(Ordering::Relaxed);
            match &bar {
                Some(bar) => {
                    bar.set_length(total.max(done));
                    bar.set_position(done);
                    bar.set_prefix(shown.phase_name());
                    bar.set_message(format!("{rows} rows"));
                }
                None => eprintln!(
                    "import: phase={} bytes={done}/{total} rows={rows}",
                    shown.phase_name()
                ),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    let result = run_import(&config, progress, stop_rx).await;
    let _ = done_tx.send(());
    let _ = display.await;
    match result {
        Ok(report) => {
            for t in &report.tables {
                eprintln!(
                    "{}: {} rows parsed from {} file(s) in {} region(s) ({} resumed), {} rows in the table{}{}",
                    t.table,
                    t.rows_parsed,
                    t.files,
                    t.regions,
                    t.regions_resumed,
                    t.rows_in_table,
                    if t.duplicates_resolved > 0 {
                        format!(", {} duplicate(s) resolved by on_duplicate = {}", t.duplicates_resolved, report.on_duplicate)
                    } else {
                        String::new()
                    },
                    if t.created { " (table created from its schema file)" } else { "" }
                );
            }
            eprintln!(
                "imported {} rows ({} bytes, {} files, {} regions, up to {} parsed at once) in {:.2}s ({:.0} rows/s, {} backend, rows sent by {}){}",
                report.rows,
                report.bytes,
                report.files,
                report.regions,
                report.max_concurrent_regions,
                report.elapsed_secs,
                report.rows_per_sec,
                report.backend,
                report.rows_sent_by,
                if report.resumed { "; resumed from a checkpoint" } else { "" }
            );
            if json {
                crate::print_json(&report)?;
            }
            Ok(Outcome::Done)
        }
        Err(e @ ImportError::Refused(_)) => {
            eprintln!("error: refused: {e}");
            Ok(Outcome::Refused)
        }
        Err(e) => Err(Failure::Runtime(anyhow::Error::new(e))),
    }
}
