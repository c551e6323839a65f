//! Consistent points (the source locked for a moment, the stream drained,
//! a snapshot on each side), the checksum and re-verification at them, and
//! the waits before the cut-over (catch-up, postponement).

use super::*;

impl TableRun<'_> {
    /// A drain's failure as the run's error.
    pub(super) fn drain_error(&self, e: DrainError) -> RunError {
        match e {
            DrainError::Retry(e) => self.changes_error(e),
            DrainError::Stop(v) => RunError::Verify(v),
        }
    }

    /// Verifies again the rows changed since the last consistent point
    /// (checksum or verification), at a new one.
    pub(super) async fn reverify(
        &self,
        following: &Following,
        verifier: &RowVerifier,
    ) -> Result<(), RunError> {
        if following
            .state
            .changed_since_verified()
            .map_err(|e| self.changes_error(e))?
            == 0
        {
            return Ok(());
        }
        let what = "found while the cut-over waited";
        let point = match consistent_point(&[(self, following)], what)
            .await
            .map(|mut points| points.pop())
        {
            // A session holding the table kept the lock from being granted:
            // the keys stay tracked (nothing was taken) and are verified at
            // the next point, or under the cut-over's lock. Waiting is what
            // a postponed run does anyway; it must not end the run.
            Err(RunError::Cutover(e @ CutoverError::GaveUp { .. })) => {
                tracing::warn!(error = %e, "re-verification postponed: the source could not be locked for a moment");
                return Ok(());
            }
            Ok(Some(point)) => point,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (mut sconn, mut tconn) = (point.source, point.shadow);
        let n = verifier
            .verify(&mut sconn, Some(&mut tconn), &point.changed, what)
            .await
            .map_err(|e| match e {
                VerifyError::Db(e) => RunError::Db(e),
                e => RunError::Verify(Box::new(e)),
            })?;
        let _ = sconn.query_drop("COMMIT").await;
        let _ = tconn.query_drop("COMMIT").await;
        following
            .state
            .reverified
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(rows = n, "rows changed after the checksum verified");
        Ok(())
    }

    pub(super) fn cutover_settings(&self) -> CutoverSettings {
        cutover_settings_of(self.config)
    }

    pub(super) async fn wait_for_catch_up(&self, following: &Following) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let backlog = || following.state.backlog().map_err(|e| self.changes_error(e));
        while backlog()? > 1000 {
            following.check(&self.table.name)?;
            self.interrupted()?;
            if Instant::now() > deadline {
                return Err(self.changes_error(ChangesError::Backlog(backlog()?)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drain for RunDrain<'_, '_> {
    async fn drain_to(
        &mut self,
        target: binlog::BinlogPosition,
        locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        self.online.drain_to(target, locked, deadline).await
    }

    async fn catch_up(&mut self) -> Result<(), DrainError> {
        self.online.catch_up().await
    }

    async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        self.online.verify_locked(session, shadow_locked).await
    }

    fn verification_backlog(&self) -> usize {
        // A poisoned lock is the state's error: the drain fails on it.
        self.following.state.changed_since_verified().unwrap_or(0)
    }

    async fn verify_unlocked(&mut self) -> Result<(), DrainError> {
        match self.run.reverify(self.following, &self.verifier).await {
            Ok(()) => Ok(()),
            Err(RunError::Verify(v)) => Err(DrainError::Stop(v)),
            Err(RunError::Changes { source, .. }) => Err(DrainError::Retry(*source)),
            Err(e) => Err(DrainError::Retry(ChangesError::Verifying(Box::new(e)))),
        }
    }
}

pub(super) async fn wait_for_error(following: &Following) {
    while following.state.check().is_ok() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consistent point of every table of `members` at once: their source
/// tables locked together for a moment (one `LOCK TABLES … READ`), each
/// stream drained into its shadow (a unique clash left then is real:
/// `what` says where it was found), a snapshot opened on each side of each
/// table, the keys written since the last point taken, then unlocked.
pub(super) async fn consistent_point(
    members: &[(&TableRun<'_>, &Following)],
    what: &str,
) -> Result<Vec<ConsistentPoint>, RunError> {
    let Some((first, _)) = members.first() else {
        return Ok(Vec::new());
    };
    // The drain runs under the lock: start it with a small backlog only.
    for (run, following) in members {
        run.wait_for_catch_up(following).await?;
    }
    let mut lock = first
        .source_pool
        .get_conn()
        .await
        .context(|| "connecting to lock for a consistent point".into())?;
    let mut sessions = Vec::with_capacity(members.len());
    for _ in members {
        sessions.push((
            read_conn(first.source_pool).await?,
            read_conn(first.target_pool).await?,
        ));
    }
    let timeout = first.config.cutover.lock_wait_timeout.0.as_secs().max(1);
    server::set_lock_wait_timeout(&mut lock, timeout).await?;
    let tables: Vec<String> = members
        .iter()
        .map(|(run, _)| {
            format!(
                "{}.{} READ",
                quote_ident(run.source_schema()),
                quote_ident(&run.table.name)
            )
        })
        .collect();
    let label: Vec<&str> = members.iter().map(|(r, _)| r.table.name.as_str()).collect();
    // Bounded like the cut-over's lock: a long transaction that wrote a
    // table must not queue the application behind this request.
    let stop = || {
        members
            .iter()
            .try_for_each(|(run, following)| run.must_stop(following))
            .err()
            .map(|e| e.to_string())
    };
    let queued = cutover::lock_bounded(
        first.source_pool,
        first.flavor,
        &mut lock,
        &label.join(", "),
        &format!("LOCK TABLES {}", tables.join(", ")),
        &first.cutover_settings(),
        &stop,
    )
    .await
    .map_err(RunError::Cutover)?;
    let locked = server::TablesLock::granted(lock, queued);
    let result = async {
        let mut changed = Vec::with_capacity(members.len());
        for ((run, following), (sconn, tconn)) in members.iter().zip(sessions.iter_mut()) {
            following
                .state
                .drain(run.config.cutover.lock_wait_timeout.0 * 10, what)
                .await
                .map_err(|e| run.drain_error(e))?;
            sconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the source snapshot".into())?;
            tconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the shadow snapshot".into())?;
            // Rows written from here on are verified at a later point.
            changed.push(
                following
                    .state
                    .track_changes()
                    .map_err(|e| run.changes_error(e))?,
            );
        }
        Ok::<_, RunError>(changed)
    }
    .await;
    // Writes waited while the requests queued and while the lock was held.
    let unlocked = locked.unlock().await;
    let changed = result?;
    unlocked.result?;
    let held = unlocked.blocked;
    Ok(sessions
        .into_iter()
        .zip(changed)
        .map(|((source, shadow), changed)| ConsistentPoint {
            source,
            shadow,
            held,
            changed,
        })
        .collect())
}

/// The cut-over's settings from `[cutover]`.
pub(super) fn cutover_settings_of(config: &Config) -> CutoverSettings {
    let c = &config.cutover;
    CutoverSettings {
        lock_wait_timeout: c.lock_wait_timeout.0,
        lock_attempt_timeout: c.lock_attempt_timeout.0,
        lock_hold_budget: c.lock_hold_budget.0,
        retries: c.retries,
        retry_backoff: c.retry_backoff.0,
        kill_blockers: c.kill_blockers,
        blocker_grace: c.blocker_grace.map(|g| g.0),
    }
}
