//! The `blocker` condition's session: a transaction that reads the table
//! shortly before a method's final lock and stays open for `--blocker-secs`.
//!
//! Why: long transactions are normal in production. One that has read the
//! table holds a shared metadata lock until it ends, and every method's last
//! step needs an exclusive one: native ALTER waits for it and queues every
//! writer behind its request, pt-osc's RENAME and gh-ost's cut-over stall,
//! and wraith is meant not to queue a lock request while such a session is
//! open. The load's worst write latency shows which.
//!
//! When it opens ([`Trigger`]), "shortly before the final lock" for each
//! method: wraith, when its control socket's state reaches the checksum or
//! later; pt-osc and gh-ost, when their output says the row copy is complete
//! (`Copied rows OK.`, `Row copy complete`); native ALTER, 0.5 s after the
//! statement starts (its final commit needs the exclusive lock); the floor,
//! right before its RENAME. The session connects before the method starts,
//! so connecting costs nothing at that moment. A method that ends before its
//! moment comes leaves the blocker unopened, and the run says so.
//!
//! What it leaves to others: the load and its latency (`load`), the
//! harness's timing of the method.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Row};
use tokio::sync::{watch, Notify};

use super::results::BlockerRun;
use super::BenchError;
use crate::server::Context;

/// How often a trigger looks (socket, output files).
const POLL: Duration = Duration::from_millis(10);

/// The moment the blocker opens.
pub(super) enum Trigger {
    /// This long after the method's start.
    After(Duration),
    /// When the wraith run on this control socket reaches the checksum or a
    /// later state before its cut-over.
    WraithChecksum(PathBuf),
    /// When one of these files (a child's output) holds `needle`.
    Output {
        files: Vec<PathBuf>,
        needle: &'static str,
    },
    /// When the method notifies it.
    Notified(Arc<Notify>),
}

impl Trigger {
    fn describe(&self) -> String {
        match self {
            Trigger::After(d) => format!("{:.1}s after the start", d.as_secs_f64()),
            Trigger::WraithChecksum(_) => "wraith's state reached the checksum".into(),
            Trigger::Output { needle, .. } => format!("output said {needle:?}"),
            Trigger::Notified(_) => "right before the RENAME".into(),
        }
    }

    /// Resolves when the moment has come.
    async fn fired(self, started: Instant) {
        match self {
            Trigger::After(delay) => tokio::time::sleep_until((started + delay).into()).await,
            Trigger::WraithChecksum(socket) => loop {
                let status = crate::control::query_status(&socket, Duration::from_secs(1)).await;
                if status
                    .as_ref()
                    .and_then(|s| s["state"].as_str())
                    .is_some_and(at_or_after_checksum)
                {
                    return;
                }
                tokio::time::sleep(POLL).await;
            },
            Trigger::Output { files, needle } => {
                let mut tails: Vec<OutputTail> = files.into_iter().map(OutputTail::new).collect();
                loop {
                    if tails.iter_mut().any(|t| t.saw(needle)) {
                        return;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            Trigger::Notified(notify) => notify.notified().await,
        }
    }
}

/// Whether wraith's `state` is the checksum or a later state before the
/// swap is done.
fn at_or_after_checksum(state: &str) -> bool {
    matches!(
        state,
        "Checksum" | "PostChecksum" | "WaitingOnSentinelTable" | "CutOver"
    )
}

/// A growing output file, read from where the last look stopped.
struct OutputTail {
    path: PathBuf,
    read: u64,
    /// The end of the text read so far, so a needle split between two reads is found.
    carry: String,
}

impl OutputTail {
    fn new(path: PathBuf) -> OutputTail {
        OutputTail {
            path,
            read: 0,
            carry: String::new(),
        }
    }

    fn saw(&mut self, needle: &str) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return false;
        };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.read)).is_err() || file.read_to_end(&mut new).is_err() {
            return false;
        }
        self.read += new.len() as u64;
        let text = self.carry.clone() + &String::from_utf8_lossy(&new);
        if text.contains(needle) {
            return true;
        }
        let keep = text
            .char_indices()
            .rev()
            .nth(needle.chars().count())
            .map_or(0, |(i, _)| i);
        self.carry = text[keep..].to_string();
        false
    }
}

/// The blocker's session, connected, before the method starts.
pub(super) struct Blocker {
    conn: Conn,
    qualified_table: String,
    hold: Duration,
}

impl Blocker {
    /// Connects the session that will read `qualified_table` and hold its
    /// transaction for `hold`.
    pub(super) async fn connect(
        pool: &Pool,
        qualified_table: String,
        hold: Duration,
    ) -> Result<Blocker, BenchError> {
        let conn = pool
            .get_conn()
            .await
            .context(|| "connecting the blocker's session".into())?;
        Ok(Blocker {
            conn,
            qualified_table,
            hold,
        })
    }

    /// Waits in the background for `trigger` (counted from `started`, the
    /// method's start); at that moment runs `START TRANSACTION; SELECT *
    /// FROM <table> LIMIT 1`, tells `opened`, holds the transaction, and
    /// commits.
    pub(super) fn arm(
        self,
        trigger: Trigger,
        started: Instant,
        opened: Option<Arc<Notify>>,
    ) -> ArmedBlocker {
        let Blocker {
            mut conn,
            qualified_table,
            hold,
        } = self;
        let (method_ended, mut ended) = watch::channel(false);
        let trigger_text = trigger.describe();
        let task = tokio::spawn(async move {
            let mut run = BlockerRun {
                trigger: trigger_text,
                ..BlockerRun::default()
            };
            tokio::select! {
                _ = trigger.fired(started) => {}
                _ = ended.wait_for(|ended| *ended) => return run,
            }
            run.fired_secs = Some(started.elapsed().as_secs_f64());
            let open = async {
                conn.query_drop("START TRANSACTION").await?;
                conn.query_first::<Row, _>(format!("SELECT * FROM {qualified_table} LIMIT 1"))
                    .await?;
                Ok::<(), mysql_async::Error>(())
            }
            .await;
            if let Err(e) = open {
                run.error = Some(format!("opening the blocker's transaction: {e}"));
                return run;
            }
            let at = Instant::now();
            run.opened_secs = Some(at.duration_since(started).as_secs_f64());
            if let Some(opened) = opened {
                opened.notify_one();
            }
            tokio::time::sleep(hold).await;
            if let Err(e) = conn.query_drop("COMMIT").await {
                run.error = Some(format!("ending the blocker's transaction: {e}"));
            }
            run.held_secs = Some(at.elapsed().as_secs_f64());
            run
        });
        ArmedBlocker { method_ended, task }
    }
}

/// A blocker waiting for its moment, or holding its transaction.
pub(super) struct ArmedBlocker {
    method_ended: watch::Sender<bool>,
    task: tokio::task::JoinHandle<BlockerRun>,
}

impl ArmedBlocker {
    /// The method has ended: a blocker that has not opened yet never will.
    pub(super) fn method_ended(&self) {
        let _ = self.method_ended.send(true);
    }

    /// Waits until the blocker has committed (or given up) and says what it did.
    pub(super) async fn finish(self) -> BlockerRun {
        self.method_ended();
        match self.task.await {
            Ok(run) => run,
            Err(e) => BlockerRun {
                error: Some(format!("the blocker's task failed: {e}")),
                ..BlockerRun::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraith_opens_it_from_the_checksum_until_the_swap() {
        for state in [
            "Checksum",
            "PostChecksum",
            "WaitingOnSentinelTable",
            "CutOver",
        ] {
            assert!(at_or_after_checksum(state), "{state}");
        }
        for state in ["CopyRows", "RestoreSecondaryIndexes", "Close", "Initial"] {
            assert!(!at_or_after_checksum(state), "{state}");
        }
    }

    #[test]
    fn output_tails_find_a_line_written_in_pieces() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tool.out");
        let mut tail = OutputTail::new(path.clone());
        assert!(!tail.saw("Copied rows OK."), "no file yet");
        let mut file = std::fs::File::create(&path).expect("file");
        write!(file, "Copying `db`.`t`...\nCopied ro").expect("write");
        assert!(!tail.saw("Copied rows OK."));
        write!(file, "ws OK.\nSwapping tables...\n").expect("write");
        assert!(tail.saw("Copied rows OK."));
    }

    #[tokio::test]
    async fn a_timed_trigger_fires_after_its_delay() {
        let started = Instant::now();
        Trigger::After(Duration::from_millis(50))
            .fired(started)
            .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
