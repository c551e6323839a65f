//! The throttler: decides when the copy pauses, and says why.
//!
//! **What it is for.** A rebuild must never become the reason production is
//! slow. The throttler looks at its sources every `[throttle] interval`
//! (default 1s) and publishes one reason, or none:
//! - `commanded by user`: the control socket's `throttle` / `pause`;
//! - `flag-file`: one of `[throttle] flag_file` exists (gh-ost's
//!   `--throttle-flag-file`);
//! - `Threads_running=57 > 50`: a global status variable of `[throttle]
//!   max_load` is above its threshold (gh-ost's `--max-load`).
//!
//! The first source that holds, in that order, is the reason. `critical_load`
//! is not a throttle: a variable above it stops the run cleanly with a
//! resumable error (the caller's `on_critical`).
//!
//! **What it leaves to others.** The copier waits between chunks while a
//! reason stands ([`Throttler::wait_until_clear`]); a chunk already running
//! finishes. The change applier never waits: the shadow table stays in step
//! while the copy pauses, so a pause never grows the backlog the cut-over must
//! drain. Replica lag is not a source yet (`max_lag` is refused by config).
//!
//! **Visibility.** Every start, change and end of throttling is printed
//! (`throttled: flag-file`, `throttling ended`), logged, and kept in the
//! progress snapshot (status line, `status` on the socket).
//!
//! **Reload.** [`Throttler::reload`] swaps the settings (SIGHUP).
//!
//! **Errors.** A failed status query is logged and the last load verdict kept:
//! the throttler never stops a run because it could not look.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ThrottleConfig;
use crate::progress::ProgressHandle;

/// Shared throttle state; cheap to clone.
#[derive(Clone)]
pub struct Throttler {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Mutex<ThrottleConfig>,
    commanded: AtomicBool,
    /// The verdict of the last status query.
    load_reason: Mutex<Option<String>>,
    reason: watch::Sender<Option<String>>,
    progress: ProgressHandle,
    /// Printed before each message (the table, once known).
    label: Mutex<String>,
}

impl Throttler {
    pub fn new(settings: ThrottleConfig, progress: ProgressHandle) -> Throttler {
        Throttler {
            inner: Arc::new(Inner {
                settings: Mutex::new(settings),
                commanded: AtomicBool::new(false),
                load_reason: Mutex::new(None),
                reason: watch::Sender::new(None),
                progress,
                label: Mutex::new(String::new()),
            }),
        }
    }

    /// Why the copy is paused now, or `None`.
    pub fn reason(&self) -> Option<String> {
        self.inner.reason.borrow().clone()
    }

    /// Prefixes messages with `label: ` (the table being copied).
    pub fn set_label(&self, label: &str) {
        if let Ok(mut l) = self.inner.label.lock() {
            *l = label.to_string();
        }
    }

    /// The operator's `throttle` (`true`) or `no-throttle` (`false`).
    pub fn set_commanded(&self, on: bool) {
        self.inner.commanded.store(on, Ordering::Relaxed);
        self.refresh();
    }

    /// Replaces the settings (SIGHUP); takes effect at once for flag files,
    /// at the next check for load.
    pub fn reload(&self, settings: ThrottleConfig) {
        if settings.load_limits().is_empty() {
            if let Ok(mut l) = self.inner.load_reason.lock() {
                *l = None;
            }
        }
        if let Ok(mut s) = self.inner.settings.lock() {
            *s = settings;
        }
        self.refresh();
    }

    fn settings(&self) -> ThrottleConfig {
        self.inner
            .settings
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until no reason stands.
    pub async fn wait_until_clear(&self) {
        let mut rx = self.inner.reason.subscribe();
        let _ = rx.wait_for(|r| r.is_none()).await;
    }

    /// Recomputes the reason from the commanded flag, the flag files and the
    /// last load verdict, and publishes a change.
    fn refresh(&self) {
        let settings = self.settings();
        let reason = if self.inner.commanded.load(Ordering::Relaxed) {
            Some("commanded by user".to_string())
        } else if settings.flag_file.0.iter().any(|f| f.exists()) {
            Some("flag-file".to_string())
        } else {
            self.inner.load_reason.lock().ok().and_then(|l| l.clone())
        };
        let label = self
            .inner
            .label
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let prefix = if label.is_empty() {
            String::new()
        } else {
            format!("{label}: ")
        };
        self.inner.reason.send_if_modified(|current| {
            if *current == reason {
                return false;
            }
            match (&*current, &reason) {
                (_, Some(now)) => {
                    tracing::info!(reason = %now, "throttled");
                    eprintln!("{prefix}throttled: {now}");
                }
                (Some(was), None) => {
                    tracing::info!(was = %was, "throttling ended");
                    eprintln!("{prefix}throttling ended (was: {was})");
                }
                (None, None) => {}
            }
            *current = reason.clone();
            true
        });
        self.inner.progress.set_throttled(reason);
    }

    /// Checks every `[throttle] interval` until the returned task is aborted.
    /// `on_critical` is called once when a `critical_load` threshold is passed.
    pub fn spawn_checker(
        &self,
        pool: Pool,
        on_critical: impl Fn(String) + Send + Sync + 'static,
    ) -> JoinHandle<()> {
        let throttler = self.clone();
        tokio::spawn(async move {
            loop {
                let settings = throttler.settings();
                let limits = settings.load_limits();
                if !limits.is_empty() || !settings.critical_load.is_empty() {
                    match read_status(&pool, &limits, &settings.critical_load).await {
                        Ok(values) => {
                            if let Some(critical) = over(&values, &settings.critical_load) {
                                on_critical(format!("critical load: {critical}"));
                            }
                            let verdict = over(&values, &limits);
                            if let Ok(mut l) = throttler.inner.load_reason.lock() {
                                *l = verdict;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "throttler: cannot read the server's status; keeping the last verdict")
                        }
                    }
                } else if let Ok(mut l) = throttler.inner.load_reason.lock() {
                    *l = None;
                }
                throttler.refresh();
                tokio::time::sleep(settings.interval.0).await;
            }
        })
    }
}

/// The first variable above its limit, as `Name=value > limit`.
fn over(values: &BTreeMap<String, u64>, limits: &BTreeMap<String, u64>) -> Option<String> {
    limits.iter().find_map(|(name, &limit)| {
        let value = values.get(&name.to_ascii_lowercase())?;
        (*value > limit).then(|| format!("{name}={value} > {limit}"))
    })
}

/// The global status values of the named variables, keyed by lowercase name.
async fn read_status(
    pool: &Pool,
    limits: &BTreeMap<String, u64>,
    critical: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, mysql_async::Error> {
    // Names are checked by config (letters, digits, _), so they quote safely.
    let names: Vec<String> = limits
        .keys()
        .chain(critical.keys())
        .map(|n| format!("'{n}'"))
        .collect();
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ({})",
            names.join(", ")
        ))
        .await?;
    let mut values = BTreeMap::new();
    for (name, value) in rows {
        match value.trim().parse::<f64>() {
            Ok(v) => {
                values.insert(name.to_ascii_lowercase(), v.max(0.0) as u64);
            }
            Err(_) => tracing::warn!(variable = %name, value = %value, "throttler: not a number"),
        }
    }
    for name in limits.keys().chain(critical.keys()) {
        if !values.contains_key(&name.to_ascii_lowercase()) {
            tracing::warn!(variable = %name, "throttler: no such global status variable");
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_names_the_first_variable_above_its_limit() {
        let values = BTreeMap::from([
            ("threads_running".to_string(), 57),
            ("threads_connected".to_string(), 3),
        ]);
        let limits = BTreeMap::from([
            ("Threads_connected".to_string(), 10),
            ("Threads_running".to_string(), 50),
        ]);
        assert_eq!(
            over(&values, &limits).as_deref(),
            Some("Threads_running=57 > 50")
        );
        let limits = BTreeMap::from([("Threads_running".to_string(), 57)]);
        assert_eq!(over(&values, &limits), None);
    }

    #[tokio::test]
    async fn commanded_and_flag_file_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let settings = ThrottleConfig {
            flag_file: crate::config::PathList(vec![flag.clone()]),
            ..ThrottleConfig::default()
        };
        let t = Throttler::new(settings, ProgressHandle::new());
        t.refresh();
        assert_eq!(t.reason(), None);
        std::fs::write(&flag, "").unwrap();
        t.refresh();
        assert_eq!(t.reason().as_deref(), Some("flag-file"));
        t.set_commanded(true);
        assert_eq!(t.reason().as_deref(), Some("commanded by user"));
        t.set_commanded(false);
        std::fs::remove_file(&flag).unwrap();
        t.refresh();
        assert_eq!(t.reason(), None);
        t.wait_until_clear().await;
    }
}
