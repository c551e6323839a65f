//! The cut-over's figures as it goes, and the report they make.

use std::time::{Duration, Instant};

use super::{CutoverReport, LockAttempt};
use crate::blockers::{Blocker, Detection};
use crate::server::BinlogPosition;

/// The figures of a cut-over as it goes.
pub(super) struct Ledger {
    pub(super) detection: Detection,
    pub(super) attempts: Vec<LockAttempt>,
    pub(super) busy_probes: u32,
    pub(super) blocker_wait: Duration,
    pub(super) blockers: std::collections::BTreeMap<u64, Blocker>,
    pub(super) killed: Vec<u64>,
    pub(super) auto_increment: Option<u64>,
    /// When the current attempt let the RENAME through.
    pub(super) let_through: Option<Instant>,
}

impl Ledger {
    pub(super) fn new(detection: Detection) -> Ledger {
        Ledger {
            detection,
            attempts: Vec::new(),
            busy_probes: 0,
            blocker_wait: Duration::ZERO,
            blockers: Default::default(),
            killed: Vec::new(),
            auto_increment: None,
            let_through: None,
        }
    }

    /// A request asked at `asked` ended now (granted when `outcome` is `None`).
    pub(super) fn requested(&mut self, asked: Instant, outcome: Option<String>) {
        self.attempts.push(LockAttempt {
            outcome: outcome.unwrap_or_else(|| "granted".into()),
            queued_ms: ms(asked.elapsed()),
            held_ms: 0.0,
            rename_ms: 0.0,
        });
    }

    /// The lock granted at `granted` is released now.
    pub(super) fn released(&mut self, granted: Instant, outcome: &str) {
        let let_through = self.let_through.take();
        if let Some(a) = self.attempts.last_mut() {
            a.held_ms = ms(granted.elapsed());
            a.rename_ms = let_through.map_or(0.0, |t| ms(t.elapsed()));
            a.outcome = outcome.to_string();
        }
    }

    pub(super) fn report(self, drained_to: Option<BinlogPosition>) -> CutoverReport {
        CutoverReport {
            attempts: self.attempts.len() as u32,
            blocked_ms: self.attempts.iter().map(|a| a.queued_ms + a.held_ms).sum(),
            lock_attempts: self.attempts,
            busy_probes: self.busy_probes,
            blocker_detection: self.detection,
            blocker_wait_ms: ms(self.blocker_wait),
            blockers: self.blockers.into_values().collect(),
            blockers_killed: self.killed,
            auto_increment: self.auto_increment,
            drained_to,
        }
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
