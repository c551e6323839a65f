//! Draws a run's progress: an indicatif bar on a terminal, a plain log line
//! every 10 seconds otherwise (CI logs, `nohup`), with the same fields.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wraith_engine::progress::ProgressHandle;

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
        let interval = if tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let p = progress.snapshot();
            let copied: u64 = p.tables.iter().map(|t| t.rows_copied).sum();
            let total: u64 = p.tables.iter().map(|t| t.rows_total).sum();
            match &bar {
                Some(bar) => {
                    bar.set_length(total.max(copied));
                    bar.set_position(copied);
                    bar.set_prefix(p.current_state.to_string());
                    bar.set_message(
                        p.throttled
                            .as_ref()
                            .map(|r| format!("throttled: {r}"))
                            .unwrap_or_default(),
                    );
                }
                None => eprintln!(
                    "state={} copied={copied}/{total} rows_per_sec={:.0} elapsed={:.0}s throttled={}",
                    p.current_state,
                    p.rows_per_sec,
                    p.elapsed_secs,
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
