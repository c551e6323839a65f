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

    /// Locks the source for a moment, drains the stream into the shadow, and
    /// opens a consistent snapshot on each side before unlocking; the
    /// comparison then runs on those snapshots while writes go on.
    pub(super) async fn consistent_checksum(
        &self,
        old: &TableInfo,
        new: &TableInfo,
        following: &Following,
    ) -> Result<(crate::checksum::ChecksumReport, Duration), RunError> {
        let point = self
            .consistent_point(following, "found at the checksum's consistent point")
            .await?;
        let (mut sconn, mut tconn) = (point.source, point.shadow);
        let report = checksum_on(
            &mut sconn,
            &mut tconn,
            old,
            new,
            self.plan,
            Duration::from_millis(500),
        )
        .await?;
        let _ = sconn.query_drop("COMMIT").await;
        let _ = tconn.query_drop("COMMIT").await;
        Ok((report, point.held))
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
        let point = match self.consistent_point(following, what).await {
            // A session holding the table kept the lock from being granted:
            // the keys stay tracked (nothing was taken) and are verified at
            // the next point, or under the cut-over's lock. Waiting is what
            // a postponed run does anyway; it must not end the run.
            Err(RunError::Cutover(e @ CutoverError::GaveUp { .. })) => {
                tracing::warn!(error = %e, "re-verification postponed: the source could not be locked for a moment");
                return Ok(());
            }
            point => point?,
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

    /// A consistent point: the source locked for a moment, the stream
    /// drained into the shadow (a unique clash left then is real: `what`
    /// says where it was found), a snapshot opened on each side, the keys
    /// written since the last consistent point taken, then unlocked.
    pub(super) async fn consistent_point(
        &self,
        following: &Following,
        what: &str,
    ) -> Result<ConsistentPoint, RunError> {
        // The drain runs under the lock: start it with a small backlog only.
        self.wait_for_catch_up(following).await?;
        let mut lock = self
            .source_pool
            .get_conn()
            .await
            .context(|| "connecting to lock for a consistent point".into())?;
        let mut sconn = read_conn(self.source_pool).await?;
        let mut tconn = read_conn(self.target_pool).await?;
        let timeout = self.config.cutover.lock_wait_timeout.0.as_secs().max(1);
        server::set_lock_wait_timeout(&mut lock, timeout).await?;
        let qt = format!(
            "{}.{}",
            quote_ident(self.source_schema()),
            quote_ident(&self.table.name)
        );
        // Bounded like the cut-over's lock: a long transaction that wrote the
        // table must not queue the application behind this request.
        let stop = || {
            self.interrupted()
                .and_then(|()| following.check(&self.table.name))
                .err()
                .map(|e| e.to_string())
        };
        let queued = cutover::lock_bounded(
            self.source_pool,
            self.flavor,
            &mut lock,
            &self.table.name,
            &format!("LOCK TABLES {qt} READ"),
            &self.cutover_settings(),
            &stop,
        )
        .await
        .map_err(RunError::Cutover)?;
        let locked = server::TablesLock::granted(lock, queued);
        let result = async {
            following
                .state
                .drain(self.config.cutover.lock_wait_timeout.0 * 10, what)
                .await
                .map_err(|e| self.drain_error(e))?;
            sconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the source snapshot".into())?;
            tconn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .context(|| "opening the shadow snapshot".into())?;
            // Rows written from here on are verified at a later point.
            following
                .state
                .track_changes()
                .map_err(|e| self.changes_error(e))
        }
        .await;
        // Writes waited while the requests queued and while the lock was held.
        let unlocked = locked.unlock().await;
        let changed = result?;
        unlocked.result?;
        let held = unlocked.blocked;
        Ok(ConsistentPoint {
            source: sconn,
            shadow: tconn,
            held,
            changed,
        })
    }

    pub(super) fn cutover_settings(&self) -> CutoverSettings {
        let c = &self.config.cutover;
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

    pub(super) async fn wait_while_postponed(
        &self,
        following: &Following,
        verifier: &RowVerifier,
    ) -> Result<(), RunError> {
        let mut announced = false;
        let mut verified = Instant::now();
        loop {
            following.check(&self.table.name)?;
            self.interrupted()?;
            if verified.elapsed() >= REVERIFY_INTERVAL {
                self.reverify(following, verifier).await?;
                verified = Instant::now();
            }
            let flag = self
                .config
                .cutover
                .postpone_flag_file
                .as_ref()
                .filter(|f| f.exists());
            let mut conn = self
                .source_pool
                .get_conn()
                .await
                .context(|| "connecting to look for the sentinel table".into())?;
            let sentinel = crate::server::inspect::table_exists(
                &mut conn,
                self.source_schema(),
                SENTINEL_TABLE,
            )
            .await?;
            drop(conn);
            let commanded = self.ops.cutover_postponed();
            if flag.is_none() && !sentinel && !commanded {
                if announced {
                    tracing::info!("cut-over no longer postponed");
                }
                return Ok(());
            }
            if !announced {
                self.progress.set_state(State::WaitingOnSentinelTable);
                let why = match flag {
                    Some(f) => format!("the postpone flag file {} exists", f.display()),
                    None if commanded => {
                        "commanded (`unpostpone` on the control socket releases it)".to_string()
                    }
                    None => format!("the sentinel table {SENTINEL_TABLE} exists"),
                };
                self.progress.emit(RunEvent::CutoverPostponed {
                    table: self.table.name.clone(),
                    why,
                });
                announced = true;
                self.ops
                    .hook_logged(HookEvent::OnBeginPostponed, None)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
