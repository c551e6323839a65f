//! Keeping the shadow table in step with the source while the copy runs.
//!
//! Three tasks share one [`OnlineState`]:
//! - the *consumer* reads the [`crate::binlog::ChangeStream`], turns each row
//!   change of the source into shadow operations (a key-changing update is a
//!   delete of the old key plus an upsert of the new one) and buffers them;
//! - the *apply loop* takes what the watermarks allow from the buffer and
//!   applies it ([`crate::applier`]), continuously during the copy;
//! - the copier reports chunks dispatched and durable ([`Watermarks`]).
//!
//! [`OnlineState::drain`] is the synchronisation point used by the checksum
//! and the cut-over: it writes a token row to wraith's changelog table (after
//! the caller has locked the source), waits until the stream has delivered
//! it — so every change committed before it has been read — and applies the
//! whole buffer.
//!
//! A change whose row clashes on a unique index of the new table (see
//! [`crate::applier`]) goes back into the buffer and is retried by every
//! later pass: the clash may be transient. At a drain nothing else can
//! change, so a clash that remains after the buffer is otherwise empty is
//! real, and the drain stops with [`VerifyError::UniqueClash`].
//!
//! After the checksum's consistent point ([`OnlineState::track_changes`]),
//! the key of every row written is recorded, so that the rows changed after
//! the checksum can be verified again ([`crate::verify`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wraith_backend::{Row, Value};

use crate::applier::Applier;
use crate::binlog::{BinlogPosition, ChangeKind, ChangeStream, StreamEvent};
use crate::changes::{encode_row_key, ChangeBuffer, Pending, Watermarks};
use crate::copy::read_conn;
use crate::cutover::DrainError;
use crate::server::{quote_ident, Context, DbError};
use crate::verify::{describe_clash, RowVerifier, VerifyError};

/// Name of wraith's changelog table (tokens and heartbeats), next to the source.
pub const CHANGELOG_TABLE: &str = "_wraith_changelog";

/// Creates the changelog table if needed.
pub async fn ensure_changelog(conn: &mut Conn, schema: &str) -> Result<(), DbError> {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         token VARCHAR(100) NOT NULL, created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) \
         COMMENT 'wraith: tokens and heartbeats of running rebuilds'",
        quote_ident(schema),
        quote_ident(CHANGELOG_TABLE)
    ))
    .await
    .context(|| format!("creating {schema}.{CHANGELOG_TABLE}"))
}

/// How a source row image becomes a shadow row.
#[derive(Debug, Clone)]
pub struct RowMapping {
    /// For each shadow column (in the target's order), its position in the source row image.
    pub source_positions: Vec<usize>,
    /// Positions of the shadow key within a shadow row.
    pub key_positions: Vec<usize>,
}

impl RowMapping {
    fn shadow_row(&self, source: &Row) -> Option<Row> {
        self.source_positions
            .iter()
            .map(|&p| source.get(p).cloned())
            .collect()
    }

    fn key_values(&self, shadow: &Row) -> Vec<Value> {
        self.key_positions
            .iter()
            .filter_map(|&p| shadow.get(p).cloned())
            .collect()
    }
}

/// State shared by the consumer, the apply loop, the copier and the cut-over.
pub struct OnlineState {
    buffer: Mutex<ChangeBuffer>,
    pub marks: Mutex<Watermarks>,
    use_watermarks: bool,
    mapping: RowMapping,
    applier: tokio::sync::Mutex<Applier>,
    position: Mutex<Option<BinlogPosition>>,
    last_token: Mutex<String>,
    token_seen: Notify,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
    /// Set while the cut-over runs: wraith's own RENAME then ends the stream.
    cutting_over: AtomicBool,
    token_seq: AtomicU64,
    /// Changes applied so far, for progress (readable without the applier's lock).
    pub applied_total: AtomicU64,
    /// How far behind the server the stream reads, in ms (server clock).
    pub lag_ms: AtomicU64,
    pool: Pool,
    changelog_schema: String,
    run_id: String,
    /// Row events read from the binlog for the source table.
    pub events: AtomicU64,
    /// The source table's name, for messages.
    table: String,
    /// Keys (shadow key values by encoded key) written since tracking began
    /// at the checksum's consistent point and not verified since.
    touched: Mutex<Option<BTreeMap<Vec<u8>, Vec<Value>>>>,
    /// Rows verified again after the checksum.
    pub reverified: AtomicU64,
}

/// What one pass of the applier did.
struct Pass {
    applied: usize,
    /// Rows not written because they clash on a unique index, with the index.
    clashes: Vec<(Row, String)>,
}

impl std::fmt::Debug for OnlineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineState")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl crate::progress::StreamFigures for OnlineState {
    fn figures(&self) -> crate::progress::StreamProgress {
        crate::progress::StreamProgress {
            changes_received: self.received(),
            changes_applied: self.applied_total.load(Ordering::Relaxed),
            changes_backlog: self.backlog() as u64,
            binlog_position: self.position().map(|p| p.to_string()),
            lag_secs: self.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// Tells this run's tokens from another's in the changelog table. Tokens go
/// through the changelog table (the schema's default charset) and come back
/// from the binlog as bytes: keep them short ASCII, so a table named in other
/// letters still gets its token back (it did not).
fn run_id(table: &str) -> String {
    let name = if table.is_ascii() {
        table.to_string()
    } else {
        format!("t{:016x}", xxhash_rust::xxh3::xxh3_64(table.as_bytes()))
    };
    format!("{name}-{}", std::process::id())
}

impl OnlineState {
    pub fn new(
        buffer: ChangeBuffer,
        mapping: RowMapping,
        applier: Applier,
        use_watermarks: bool,
        pool: Pool,
        changelog_schema: &str,
        table: &str,
    ) -> Arc<OnlineState> {
        Arc::new(OnlineState {
            buffer: Mutex::new(buffer),
            marks: Mutex::new(Watermarks::default()),
            use_watermarks,
            mapping,
            applier: tokio::sync::Mutex::new(applier),
            position: Mutex::new(None),
            last_token: Mutex::new(String::new()),
            token_seen: Notify::new(),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
            cutting_over: AtomicBool::new(false),
            token_seq: AtomicU64::new(0),
            applied_total: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            pool,
            changelog_schema: changelog_schema.to_string(),
            // Tells this run's tokens from another's in the changelog table.
            run_id: run_id(table),
            events: AtomicU64::new(0),
            table: table.to_string(),
            touched: Mutex::new(None),
            reverified: AtomicU64::new(0),
        })
    }

    /// From now on, records the key of every row written; returns the keys
    /// recorded since the last call (none on the first). Called with the
    /// source locked and the stream drained: a consistent point.
    pub fn track_changes(&self) -> Vec<Vec<Value>> {
        match self.touched.lock() {
            Ok(mut t) => t
                .replace(BTreeMap::new())
                .map(|m| m.into_values().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Keys written since the last [`OnlineState::track_changes`].
    pub fn changed_since_verified(&self) -> usize {
        self.touched
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(BTreeMap::len))
            .unwrap_or(0)
    }

    pub(crate) fn fail(&self, e: String) {
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                tracing::error!(error = %e, "change stream or applier failed");
                *slot = Some(e);
            }
        }
        self.token_seen.notify_waiters();
    }

    /// The first error of the consumer or the apply loop.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Changes waiting, after deduplication.
    pub fn backlog(&self) -> usize {
        self.buffer.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Changes received from the stream (before deduplication).
    pub fn received(&self) -> u64 {
        self.buffer.lock().map(|b| b.received).unwrap_or(0)
    }

    /// Times the change buffer spilled to disk.
    pub fn spills(&self) -> u64 {
        self.buffer.lock().map(|b| b.spills).unwrap_or(0)
    }

    /// Where the stream starts (before any commit was seen).
    pub fn set_position(&self, position: BinlogPosition) {
        if let Ok(mut p) = self.position.lock() {
            *p = Some(position);
        }
    }

    pub fn position(&self) -> Option<BinlogPosition> {
        self.position.lock().ok().and_then(|p| p.clone())
    }

    /// `(applied changes, changes per second of applying)`.
    pub async fn applied(&self) -> (u64, f64) {
        let a = self.applier.lock().await;
        (a.applied, a.rate())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.token_seen.notify_waiters();
    }

    fn buffer_change(
        &self,
        kind: ChangeKind,
        before: Option<Row>,
        after: Option<Row>,
    ) -> Result<(), String> {
        let map = |r: Option<Row>| -> Result<Option<Row>, String> {
            match r {
                None => Ok(None),
                Some(r) => self
                    .mapping
                    .shadow_row(&r)
                    .map(Some)
                    .ok_or_else(|| "a row image has fewer columns than the table".to_string()),
            }
        };
        let before = map(before)?;
        let after = map(after)?;
        let mut buffer = self
            .buffer
            .lock()
            .map_err(|_| "change buffer poisoned".to_string())?;
        let kp = &self.mapping.key_positions;
        match (kind, before, after) {
            (ChangeKind::Insert, _, Some(row)) => {
                buffer.push(encode_row_key(&row, kp), Pending::Upsert(row))?;
            }
            (ChangeKind::Delete, Some(row), _) => {
                let key = self.mapping.key_values(&row);
                buffer.push(encode_row_key(&row, kp), Pending::Delete(key))?;
            }
            (ChangeKind::Update, Some(old), Some(new)) => {
                let old_key = encode_row_key(&old, kp);
                let new_key = encode_row_key(&new, kp);
                if old_key != new_key {
                    buffer.push(old_key, Pending::Delete(self.mapping.key_values(&old)))?;
                }
                buffer.push(new_key, Pending::Upsert(new))?;
            }
            (kind, _, _) => return Err(format!("a {kind:?} event without the row image it needs")),
        }
        Ok(())
    }

    /// Applies what may be applied now. With `on`, on that session only.
    /// Rows that clash on a unique index go back into the buffer.
    async fn apply_ready_on(&self, max: usize, on: Option<&mut Conn>) -> Result<Pass, String> {
        let mut applier = self.applier.lock().await;
        let batch = {
            let marks = self
                .marks
                .lock()
                .map_err(|_| "watermarks poisoned".to_string())?;
            let mut buffer = self
                .buffer
                .lock()
                .map_err(|_| "change buffer poisoned".to_string())?;
            buffer
                .take_ready(&marks, self.use_watermarks, max)
                .map_err(|e| e.to_string())?
        };
        let changes: Vec<(Vec<u8>, Pending)> = batch
            .iter()
            .map(|(k, _, c)| (k.clone(), c.clone()))
            .collect();
        let applied = match on {
            Some(conn) => applier.apply_on(conn, &changes).await,
            None => applier.apply(&changes).await,
        };
        drop(changes);
        let clashes = match applied {
            Ok(clashes) => clashes,
            Err(e) => {
                // The batch left the buffer and its deletes may be committed:
                // put it back, so that a retried drain (the cut-over's next
                // attempt) applies it again instead of finding nothing to do.
                // Delete-then-insert by key is safe to repeat.
                let mut buffer = self
                    .buffer
                    .lock()
                    .map_err(|_| "change buffer poisoned".to_string())?;
                for (key, seq, change) in batch {
                    buffer
                        .requeue(key, seq, change)
                        .map_err(|e| e.to_string())?;
                }
                return Err(e.to_string());
            }
        };
        let mut clashed = vec![None; batch.len()];
        for c in clashes {
            if let Some(slot) = clashed.get_mut(c.pos) {
                *slot = Some(c.index);
            }
        }
        let mut pass = Pass {
            applied: 0,
            clashes: Vec::new(),
        };
        let mut done = Vec::with_capacity(batch.len());
        let mut buffer = self
            .buffer
            .lock()
            .map_err(|_| "change buffer poisoned".to_string())?;
        let mut touched = self
            .touched
            .lock()
            .map_err(|_| "verification keys poisoned".to_string())?;
        for ((key, seq, change), clash) in batch.into_iter().zip(clashed) {
            match clash {
                Some(index) => {
                    if let Pending::Upsert(row) = &change {
                        pass.clashes.push((row.clone(), index));
                    }
                    buffer.requeue(key, seq, change)?;
                }
                None => {
                    if let Some(t) = touched.as_mut() {
                        let values = match &change {
                            Pending::Upsert(row) => self.mapping.key_values(row),
                            Pending::Delete(k) => k.clone(),
                        };
                        t.insert(key.clone(), values);
                    }
                    done.push((key, seq));
                }
            }
        }
        drop(touched);
        pass.applied = done.len();
        self.applied_total
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        buffer.applied(&done)?;
        Ok(pass)
    }

    /// Makes the buffer durable and returns the stream position it covers:
    /// every change before it is applied or stored on disk. For checkpoints.
    pub async fn persist(&self) -> Result<Option<BinlogPosition>, String> {
        // No batch may be in flight: its changes have left memory but are not
        // yet in the shadow table.
        let _applying = self.applier.lock().await;
        let mut buffer = self
            .buffer
            .lock()
            .map_err(|_| "change buffer poisoned".to_string())?;
        // Read under the buffer lock: the consumer moves the position only
        // after the transaction's rows are in the buffer.
        let position = self.position();
        buffer.persist()?;
        Ok(position)
    }

    async fn apply_ready(&self, max: usize) -> Result<usize, String> {
        Ok(self.apply_ready_on(max, None).await?.applied)
    }

    /// Writes a token to the changelog table, waits until the stream delivers
    /// it, then applies everything buffered. The copy must be done, and the
    /// source locked: a row that still clashes on a unique index then is a
    /// real duplicate (`point` says where, for the message).
    pub async fn drain(&self, timeout: Duration, point: &str) -> Result<(), DrainError> {
        self.drain_on(timeout, None, point, None).await
    }

    /// [`OnlineState::drain`], applying on `locked` when given. With a
    /// `deadline` (the cut-over's hold budget) the drain gives up between
    /// batches once it is past: what was applied stays applied, the rest
    /// stays buffered, and the caller lets go of its lock.
    pub async fn drain_on(
        &self,
        timeout: Duration,
        mut locked: Option<&mut Conn>,
        point: &str,
        deadline: Option<Instant>,
    ) -> Result<(), DrainError> {
        let wait = match deadline {
            Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
            None => timeout,
        };
        self.read_to_token(wait).await.map_err(DrainError::Retry)?;
        let mut max = 20_000;
        loop {
            if let Some(d) = deadline {
                if Instant::now() > d {
                    return Err(DrainError::Retry(format!(
                        "{} changes were still to apply when the hold budget ran out",
                        self.backlog()
                    )));
                }
            }
            let pass = self
                .apply_ready_on(max, locked.as_deref_mut())
                .await
                .map_err(DrainError::Retry)?;
            if pass.applied > 0 {
                max = 20_000;
                continue;
            }
            let Some((row, index)) = pass.clashes.into_iter().next() else {
                return Ok(());
            };
            if max != usize::MAX {
                // Retry every pending row at once before judging.
                max = usize::MAX;
                continue;
            }
            // Nothing else can change: the clash is real.
            let (target, pool) = {
                let applier = self.applier.lock().await;
                (applier.target().clone(), applier.pool().clone())
            };
            let error = match locked.as_deref_mut() {
                Some(conn) => describe_clash(conn, &target, &self.table, &row, &index, point).await,
                None => {
                    let mut conn = read_conn(&pool)
                        .await
                        .map_err(|e| DrainError::Retry(e.to_string()))?;
                    describe_clash(&mut conn, &target, &self.table, &row, &index, point).await
                }
            };
            return Err(DrainError::Stop(Box::new(error)));
        }
    }

    /// Writes a token and waits until the stream has delivered it.
    async fn read_to_token(&self, timeout: Duration) -> Result<(), String> {
        let token = format!(
            "{}:{}",
            self.run_id,
            self.token_seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| format!("connecting to write a token: {e}"))?;
        conn.exec_drop(
            format!(
                "INSERT INTO {}.{} (token) VALUES (?)",
                quote_ident(&self.changelog_schema),
                quote_ident(CHANGELOG_TABLE)
            ),
            (token.as_str(),),
        )
        .await
        .map_err(|e| format!("writing the drain token: {e}"))?;
        drop(conn);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.token_seen.notified();
            if let Some(e) = self.error() {
                return Err(e);
            }
            if self.last_token.lock().map(|t| *t == token).unwrap_or(false) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the change stream did not deliver the token within {timeout:?}"
                ));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
        Ok(())
    }
}

/// Starts the consumer and the apply loop.
pub fn spawn(
    state: Arc<OnlineState>,
    mut stream: ChangeStream,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let consumer_state = state.clone();
    let consumer = tokio::spawn(async move {
        let state = consumer_state;
        // `next()` is not cancelled mid-event (the stream keeps partial state):
        // heartbeats make it return regularly, and `stop` aborts the task.
        while !state.stop.load(Ordering::Relaxed) {
            match stream.next().await {
                Ok(StreamEvent::Rows(changes)) => {
                    for c in changes {
                        state.events.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = state.buffer_change(c.kind, c.before, c.after) {
                            state.fail(e);
                            return;
                        }
                    }
                }
                Ok(StreamEvent::Commit { position }) | Ok(StreamEvent::Heartbeat { position }) => {
                    if let Ok(mut p) = state.position.lock() {
                        *p = Some(position);
                    }
                    state
                        .lag_ms
                        .store(stream.lag().as_millis() as u64, Ordering::Relaxed);
                }
                Ok(StreamEvent::Token(token)) => {
                    if let Ok(mut t) = state.last_token.lock() {
                        *t = token;
                    }
                    state.token_seen.notify_waiters();
                }
                Err(crate::binlog::ChangeStreamError::DdlOnSource { .. })
                    if state.cutting_over.load(Ordering::Relaxed) =>
                {
                    // Our own RENAME: everything before it was drained already.
                    tracing::debug!("the change stream reached the cut-over's RENAME");
                    return;
                }
                Err(e) => {
                    state.fail(format!("change stream: {e}"));
                    return;
                }
            }
        }
    });
    let loop_state = state;
    let apply_loop = tokio::spawn(async move {
        let state = loop_state;
        while !state.stop.load(Ordering::Relaxed) {
            match state.apply_ready(5_000).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(_) => {}
                Err(e) => {
                    state.fail(format!("applying changes: {e}"));
                    return;
                }
            }
        }
    });
    (consumer, apply_loop)
}

/// The cut-over's view of the online state.
pub struct OnlineDrain {
    pub state: Arc<OnlineState>,
    pub timeout: Duration,
    /// Verifies the rows changed since the last verification; `None` when
    /// there is nothing to verify against (no checksum ran).
    pub verifier: Option<Arc<RowVerifier>>,
    /// Where the shadow table is read when the locking session cannot.
    pub target_pool: Pool,
}

const UNDER_THE_LOCK: &str = "found under the cut-over's lock, after the final catch-up";

/// The cut-over's steps on the online state; the run wraps them in a
/// [`Drain`] that can also verify outside the lock (it owns the consistent
/// points).
impl OnlineDrain {
    pub async fn drain_to(
        &mut self,
        target: BinlogPosition,
        locked: Option<&mut Conn>,
        deadline: Instant,
    ) -> Result<(), DrainError> {
        tracing::debug!(file = %target.file, pos = target.pos, "draining under the lock");
        self.state.cutting_over.store(true, Ordering::Relaxed);
        self.state
            .drain_on(self.timeout, locked, UNDER_THE_LOCK, Some(deadline))
            .await
    }

    /// Reads the stream up to the server's present and applies what is
    /// ready, without any lock: what is left for the lock is then only what
    /// the application writes in the next instants. A clash here is not
    /// judged (nothing is consistent yet); the drain under the lock does.
    pub async fn catch_up(&mut self) -> Result<(), DrainError> {
        self.state
            .read_to_token(self.timeout)
            .await
            .map_err(DrainError::Retry)?;
        while self
            .state
            .apply_ready_on(20_000, None)
            .await
            .map_err(DrainError::Retry)?
            .applied
            > 0
        {}
        Ok(())
    }

    pub async fn verify_locked(
        &mut self,
        session: &mut Conn,
        shadow_locked: bool,
    ) -> Result<(), DrainError> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        // A failed attempt keeps its keys: they are verified by the next one.
        let keys: Vec<Vec<Value>> = match self.state.touched.lock() {
            Ok(t) => t
                .as_ref()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Err(_) => return Err(DrainError::Retry("verification keys poisoned".into())),
        };
        if keys.is_empty() {
            return Ok(());
        }
        let retry = |e: DbError| DrainError::Retry(e.to_string());
        let stop = |e: VerifyError| match e {
            VerifyError::Db(e) => DrainError::Retry(e.to_string()),
            e => DrainError::Stop(Box::new(e)),
        };
        // Both sides read in one time zone, the one the shadow's readers use.
        let mut tconn = read_conn(&self.target_pool).await.map_err(retry)?;
        let tz: Option<String> = tconn
            .query_first("SELECT @@session.time_zone")
            .await
            .context(|| "reading the session time zone".into())
            .map_err(retry)?;
        if let Some(tz) = tz {
            session
                .exec_drop("SET time_zone = ?", (tz,))
                .await
                .context(|| "setting the locked session's time zone".into())
                .map_err(retry)?;
        }
        // MySQL's one session holds both tables: only it may read them.
        let shadow_side = if shadow_locked {
            None
        } else {
            Some(&mut tconn)
        };
        let n = verifier
            .verify(session, shadow_side, &keys, UNDER_THE_LOCK)
            .await
            .map_err(stop)?;
        self.state.track_changes();
        self.state.reverified.fetch_add(n, Ordering::Relaxed);
        tracing::info!(
            rows = n,
            "rows changed since the last verification verified under the lock"
        );
        Ok(())
    }
}
