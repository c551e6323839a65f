//! The change buffer and the copy's watermarks.
//!
//! Binlog changes to the source are turned into shadow-table operations
//! (upsert a row, delete a key) keyed by the memcomparable encoding of the
//! shadow's key, and deduplicated: the last image of a key wins, a delete is a
//! tombstone. The buffer hands out what may be applied now; applying is the
//! applier's job, reading the binlog the change stream's.
//!
//! **Watermarks.** The copier reports chunks as they are handed out and as
//! they become durable in the shadow table (written for `sql`, imported for
//! `local`). The *low watermark* is the upper bound of the longest prefix of
//! durable chunks: every key at or below it is in the shadow table. A change
//! may be applied only at or below the low watermark; anything above waits
//! until the copy has made its chunk durable, so a copy `INSERT` never meets a
//! row the applier placed, and a delete is never undone by a later copy.
//!
//! Changes above the high watermark (not yet read by the copy) are kept, not
//! dropped, in this version: a binlog event can reach wraith before its
//! transaction is visible to a new snapshot (the binlog is written before the
//! engine commit completes), so dropping it on the assumption that the copy
//! will read the newer row could lose the change. Keeping it costs memory for
//! the keys changed in the part of the table not yet copied; the final
//! checksum would catch a loss, but this keeps one from happening.
//!
//! **When watermarks cannot be used.** Watermark comparisons are byte
//! comparisons of the encoded key, which equal the server's order only for
//! keys compared by value (integers, binary strings, temporal types) and only
//! when the shadow's key is the source's chunk key. Otherwise (a changed
//! primary key, a key with a case-insensitive collation) every change waits
//! until the whole copy is durable, then is applied in one catch-up.

use std::collections::BTreeMap;

use wraith_backend::{encode_key, ColumnKind, ColumnSpec, Row, Value};

/// One pending operation on the shadow table.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// Write this row in place of any row with its key (shadow column order).
    Upsert(Row),
    /// `DELETE` the row with this key (shadow key values).
    Delete(Vec<Value>),
}

impl Pending {
    fn bytes(&self) -> usize {
        let values = match self {
            Pending::Upsert(r) => r.as_slice(),
            Pending::Delete(k) => k.as_slice(),
        };
        values.iter().map(value_bytes).sum::<usize>() + 64
    }
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Bytes(b) => b.len() + 24,
        Value::Decimal(s) => s.len() + 24,
        _ => 16,
    }
}

/// Whether byte order of encoded keys equals the server's order of `key`.
pub fn key_orders_by_bytes(key: &[ColumnSpec], collations: &[Option<String>]) -> bool {
    key.iter()
        .zip(collations)
        .all(|(spec, coll)| match spec.kind {
            ColumnKind::Int
            | ColumnKind::Date
            | ColumnKind::DateTime
            | ColumnKind::Timestamp
            | ColumnKind::Time
            | ColumnKind::Year
            | ColumnKind::Bit
            | ColumnKind::Binary => true,
            ColumnKind::Text => coll.as_deref().is_some_and(|c| c.ends_with("_bin")),
            _ => false,
        })
}

/// Encodes the values of `key_positions` of `row`.
pub fn encode_row_key(row: &[Value], key_positions: &[usize]) -> Vec<u8> {
    let values: Vec<&Value> = key_positions.iter().filter_map(|&i| row.get(i)).collect();
    let mut out = Vec::with_capacity(16);
    encode_key(&values, &mut out);
    out
}

/// Durable progress of the copy, in encoded-key space.
#[derive(Debug, Default)]
pub struct Watermarks {
    /// Upper bounds of chunks handed out, by chunk id; `None` = unbounded.
    dispatched: BTreeMap<u64, Option<Vec<u8>>>,
    /// Chunk ids that are durable but not yet part of the prefix.
    durable: std::collections::BTreeSet<u64>,
    /// Next chunk id the durable prefix waits for.
    next_prefix: u64,
    /// Upper bound of the durable prefix: `Some(None)` = everything.
    low: Option<Option<Vec<u8>>>,
    /// Largest upper bound handed out (`[0xFF]`, above every key, once the
    /// unbounded last chunk was).
    high: Option<Vec<u8>>,
    copy_done: bool,
}

impl Watermarks {
    /// Watermarks of a resumed copy: every key up to `low` is durable already.
    pub fn resumed(low: Option<Vec<u8>>) -> Watermarks {
        Watermarks {
            high: low.clone(),
            low: low.map(Some),
            ..Watermarks::default()
        }
    }

    /// The low watermark: every key at or below it is durable in the shadow
    /// table (`None`: nothing yet; `Some(None)`: everything).
    pub fn low(&self) -> Option<Option<Vec<u8>>> {
        self.low.clone()
    }

    /// A chunk `(.., upper]` was handed out to a reader.
    pub fn dispatched(&mut self, chunk_id: u64, upper: Option<Vec<u8>>) {
        let bound = upper.clone().unwrap_or_else(|| vec![0xFF]);
        if self.high.as_ref().is_none_or(|h| bound > *h) {
            self.high = Some(bound);
        }
        self.dispatched.insert(chunk_id, upper);
    }

    /// The high watermark: no key above it has been read by the copy.
    pub fn high(&self) -> Option<Vec<u8>> {
        self.high.clone()
    }

    /// A chunk's rows are durable in the shadow table.
    pub fn durable(&mut self, chunk_id: u64) {
        self.durable.insert(chunk_id);
        while self.durable.remove(&self.next_prefix) {
            if let Some(upper) = self.dispatched.remove(&self.next_prefix) {
                self.low = Some(upper);
            }
            self.next_prefix += 1;
        }
    }

    /// Every chunk is durable (and the copy will hand out no more).
    pub fn copy_done(&mut self) {
        self.copy_done = true;
        self.low = Some(None);
    }

    /// Whether a change for `key` may be applied now.
    pub fn applicable(&self, key: &[u8], use_watermarks: bool) -> bool {
        if self.copy_done {
            return true;
        }
        if !use_watermarks {
            return false;
        }
        match &self.low {
            None => false,
            Some(None) => true,
            Some(Some(low)) => key <= low.as_slice(),
        }
    }
}

/// The on-disk part of the change buffer: a RocksDB keyed by the shadow key,
/// written with its WAL, so what is spilled survives a crash (a resumed run
/// reads it back).
struct ChangeStore {
    db: rocksdb::DB,
    dir: std::path::PathBuf,
    keys: usize,
    /// Largest sequence number stored (a reopened store continues above it).
    max_seq: u64,
}

impl std::fmt::Debug for ChangeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChangeStore({}, {} keys)", self.dir.display(), self.keys)
    }
}

/// The change store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("change store {dir}: {message}")]
pub struct ChangeStoreError {
    pub dir: String,
    pub message: String,
}

/// A change with its sequence number (newer is larger).
type Sequenced = (u64, Pending);

/// A stored change: its sequence number (newer is larger), then the change.
fn encode_pending(seq: u64, p: &Pending) -> Vec<u8> {
    let (tag, values) = match p {
        Pending::Upsert(r) => (b'U', r.as_slice()),
        Pending::Delete(k) => (b'D', k.as_slice()),
    };
    let mut out = seq.to_be_bytes().to_vec();
    out.push(tag);
    wraith_backend::encode_row(values.iter(), &mut out);
    out
}

fn decode_seq(b: &[u8]) -> Result<u64, String> {
    let seq: [u8; 8] = b
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or("truncated change record")?;
    Ok(u64::from_be_bytes(seq))
}

fn decode_pending(b: &[u8]) -> Result<(u64, Pending), String> {
    let seq = decode_seq(b)?;
    let (tag, rest) = b[8..].split_first().ok_or("empty change record")?;
    let values = wraith_backend::decode_row(rest)?;
    match tag {
        b'U' => Ok((seq, Pending::Upsert(values))),
        b'D' => Ok((seq, Pending::Delete(values))),
        _ => Err(format!("unknown change record tag {tag}")),
    }
}

impl ChangeStore {
    fn open(dir: &std::path::Path) -> Result<ChangeStore, ChangeStoreError> {
        let err = |message: String| ChangeStoreError {
            dir: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_write_buffer_size(16 << 20);
        let db = rocksdb::DB::open(&opts, dir).map_err(|e| err(e.to_string()))?;
        let mut keys = 0;
        let mut max_seq = 0;
        for item in db.iterator(rocksdb::IteratorMode::Start) {
            let (_, v) = item.map_err(|e| err(e.to_string()))?;
            keys += 1;
            max_seq = max_seq.max(decode_seq(&v).map_err(err)?);
        }
        Ok(ChangeStore {
            db,
            dir: dir.to_path_buf(),
            keys,
            max_seq,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ChangeStoreError {
        ChangeStoreError {
            dir: self.dir.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Writes `entries` (newer than anything stored for their keys); with
    /// `sync`, the write-ahead log is on disk when this returns.
    fn spill(
        &mut self,
        entries: &BTreeMap<Vec<u8>, (u64, Pending)>,
        sync: bool,
    ) -> Result<(), ChangeStoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        for (k, (seq, v)) in entries {
            if self.db.get_pinned(k).map_err(|e| self.err(e))?.is_none() {
                self.keys += 1;
            }
            self.max_seq = self.max_seq.max(*seq);
            batch.put(k, encode_pending(*seq, v));
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(|e| self.err(e))
    }

    /// Up to `max` stored keys that may be applied, in key order.
    fn ready(
        &self,
        marks: &Watermarks,
        use_watermarks: bool,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Sequenced)>, ChangeStoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if out.len() >= max || !marks.applicable(&k, use_watermarks) {
                break;
            }
            out.push((k.to_vec(), decode_pending(&v).map_err(|e| self.err(e))?));
        }
        Ok(out)
    }

    /// The sequence number of the change stored for `key`.
    fn seq_of(&self, key: &[u8]) -> Result<Option<u64>, ChangeStoreError> {
        match self.db.get_pinned(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_seq(&v).map_err(|e| self.err(e))?)),
            None => Ok(None),
        }
    }

    /// Deletes each key whose stored change is not newer than `seq`.
    fn remove_applied(&mut self, applied: &[(Vec<u8>, u64)]) -> Result<(), ChangeStoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        let mut removed = 0;
        for (k, seq) in applied {
            if let Some(v) = self.db.get_pinned(k).map_err(|e| self.err(e))? {
                if decode_seq(&v).map_err(|e| self.err(e))? <= *seq {
                    batch.delete(k);
                    removed += 1;
                }
            }
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        self.keys = self.keys.saturating_sub(removed);
        Ok(())
    }
}

/// Changes waiting to be applied, deduplicated per shadow key. Held in
/// memory up to a budget; beyond it the whole in-memory part is spilled to an
/// on-disk [`ChangeStore`] (memory entries always override stored ones).
#[derive(Debug, Default)]
pub struct ChangeBuffer {
    entries: BTreeMap<Vec<u8>, (u64, Pending)>,
    next_seq: u64,
    bytes: usize,
    budget: usize,
    spill_dir: Option<std::path::PathBuf>,
    store: Option<ChangeStore>,
    /// Changes received (before deduplication).
    pub received: u64,
    /// Times the memory part was spilled to disk.
    pub spills: u64,
}

impl ChangeBuffer {
    /// A buffer held in memory only (the run always gives it a spill directory).
    #[cfg(test)]
    pub fn new() -> ChangeBuffer {
        ChangeBuffer::default()
    }

    /// A buffer that spills to `dir` beyond `budget` bytes of memory. A store
    /// left in `dir` by an earlier run is reopened (its changes are pending).
    pub fn with_spill(
        budget: usize,
        dir: std::path::PathBuf,
    ) -> Result<ChangeBuffer, ChangeStoreError> {
        let mut buffer = ChangeBuffer {
            budget,
            ..ChangeBuffer::default()
        };
        if dir.exists() {
            let store = ChangeStore::open(&dir)?;
            buffer.next_seq = store.max_seq + 1;
            buffer.store = Some(store);
        }
        buffer.spill_dir = Some(dir);
        Ok(buffer)
    }

    /// Records a change; the last one for a key wins.
    pub fn push(&mut self, key: Vec<u8>, change: Pending) -> Result<(), ChangeStoreError> {
        self.received += 1;
        self.next_seq += 1;
        self.bytes += change.bytes() + key.len();
        if let Some((_, old)) = self.entries.insert(key.clone(), (self.next_seq, change)) {
            self.bytes = self.bytes.saturating_sub(old.bytes() + key.len());
        }
        if self.budget > 0 && self.bytes > self.budget {
            self.spill(false)?;
        }
        Ok(())
    }

    /// Makes every buffered change durable on disk (for a checkpoint).
    pub fn persist(&mut self) -> Result<(), ChangeStoreError> {
        self.spill(true)
    }

    fn spill(&mut self, sync: bool) -> Result<(), ChangeStoreError> {
        let Some(dir) = &self.spill_dir else {
            return Ok(());
        };
        if self.store.is_none() {
            self.store = Some(ChangeStore::open(dir)?);
        }
        if let Some(store) = &mut self.store {
            store.spill(&self.entries, sync)?;
            tracing::debug!(
                entries = self.entries.len(),
                bytes = self.bytes,
                "change buffer spilled to disk"
            );
            self.entries.clear();
            self.bytes = 0;
            self.spills += 1;
        }
        Ok(())
    }

    /// Keys waiting (memory and disk; a key in both counts twice until applied).
    pub fn len(&self) -> usize {
        self.entries.len() + self.store.as_ref().map(|s| s.keys).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate memory held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes up to `max` changes that may be applied now, in key order, with
    /// their sequence numbers. Stored changes stay on disk until
    /// [`ChangeBuffer::applied`] says they are in the shadow table, so a crash
    /// between taking and applying loses nothing.
    pub fn take_ready(
        &mut self,
        marks: &Watermarks,
        use_watermarks: bool,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, u64, Pending)>, ChangeStoreError> {
        let mut merged: BTreeMap<Vec<u8>, (u64, Pending)> = match &self.store {
            Some(store) if store.keys > 0 => store
                .ready(marks, use_watermarks, max)?
                .into_iter()
                .collect(),
            _ => BTreeMap::new(),
        };
        for (k, v) in self
            .entries
            .iter()
            .take_while(|(k, _)| marks.applicable(k, use_watermarks))
            .take(max)
        {
            merged.insert(k.clone(), v.clone());
        }
        let taken: Vec<(Vec<u8>, u64, Pending)> = merged
            .into_iter()
            .take(max)
            .map(|(k, (seq, v))| (k, seq, v))
            .collect();
        for (k, _, _) in &taken {
            if let Some((_, v)) = self.entries.remove(k) {
                self.bytes = self.bytes.saturating_sub(v.bytes() + k.len());
            }
        }
        Ok(taken)
    }

    /// Puts back a change that was taken but could not be applied (its row
    /// clashes on a unique index), unless a newer change of the key came in
    /// meanwhile (in memory or on disk). A stored copy stays on disk, as
    /// [`ChangeBuffer::applied`] was not called for it; a copy in memory is
    /// made durable by the next [`ChangeBuffer::persist`], like any change.
    pub fn requeue(
        &mut self,
        key: Vec<u8>,
        seq: u64,
        change: Pending,
    ) -> Result<(), ChangeStoreError> {
        if self.entries.contains_key(&key) {
            return Ok(());
        }
        if let Some(store) = &self.store {
            if store.seq_of(&key)?.is_some_and(|stored| stored > seq) {
                return Ok(());
            }
        }
        self.bytes += change.bytes() + key.len();
        self.entries.insert(key, (seq, change));
        Ok(())
    }

    /// The changes `(key, seq)` are in the shadow table: drop their stored
    /// copies (unless a newer change of the key was stored meanwhile).
    pub fn applied(&mut self, applied: &[(Vec<u8>, u64)]) -> Result<(), ChangeStoreError> {
        match &mut self.store {
            Some(store) if store.keys > 0 => store.remove_applied(applied),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: i64) -> Vec<u8> {
        let v = Value::Int(i);
        let mut out = Vec::new();
        encode_key(&[&v], &mut out);
        out
    }

    #[test]
    fn last_image_wins_and_tombstones_replace_rows() {
        let mut b = ChangeBuffer::new();
        b.push(k(1), Pending::Upsert(vec![Value::Int(1), Value::Int(10)]))
            .unwrap();
        b.push(k(1), Pending::Upsert(vec![Value::Int(1), Value::Int(11)]))
            .unwrap();
        b.push(k(2), Pending::Upsert(vec![Value::Int(2), Value::Int(20)]))
            .unwrap();
        b.push(k(2), Pending::Delete(vec![Value::Int(2)])).unwrap();
        assert_eq!(b.received, 4);
        assert_eq!(b.len(), 2);
        let mut m = Watermarks::default();
        m.copy_done();
        let ready = b.take_ready(&m, true, 10).unwrap();
        assert_eq!(
            ready[0].2,
            Pending::Upsert(vec![Value::Int(1), Value::Int(11)])
        );
        assert_eq!(ready[1].2, Pending::Delete(vec![Value::Int(2)]));
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn only_keys_below_the_durable_prefix_are_ready() {
        let mut m = Watermarks::default();
        m.dispatched(0, Some(k(100)));
        m.dispatched(1, Some(k(200)));
        m.dispatched(2, None);
        let mut b = ChangeBuffer::new();
        for i in [50, 150, 250] {
            b.push(k(i), Pending::Delete(vec![Value::Int(i)])).unwrap();
        }
        // Chunk 1 durable first: nothing is a prefix yet.
        m.durable(1);
        assert!(b.take_ready(&m, true, 10).unwrap().is_empty());
        m.durable(0);
        let ready = b.take_ready(&m, true, 10).unwrap();
        assert_eq!(
            ready.len(),
            2,
            "keys 50 and 150 are below the low watermark 200"
        );
        // Without watermarks nothing moves until the copy is done.
        assert!(b.take_ready(&m, false, 10).unwrap().is_empty());
        m.durable(2);
        assert_eq!(b.take_ready(&m, true, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_requeued_change_never_overrides_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = ChangeBuffer::with_spill(1 << 20, dir.path().join("changes")).unwrap();
        let row = |i: i64, v: i64| Pending::Upsert(vec![Value::Int(i), Value::Int(v)]);
        b.push(k(1), row(1, 10)).unwrap();
        b.push(k(2), row(2, 20)).unwrap();
        let mut m = Watermarks::default();
        m.copy_done();
        let taken = b.take_ready(&m, true, 10).unwrap();
        assert!(b.is_empty());
        // Key 1 clashed and goes back; key 2 clashed but changed meanwhile,
        // and the newer change was spilled to disk.
        b.push(k(2), row(2, 21)).unwrap();
        b.persist().unwrap();
        for (key, seq, change) in taken {
            b.requeue(key, seq, change).unwrap();
        }
        let again = b.take_ready(&m, true, 10).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again[0].2, row(1, 10));
        assert_eq!(again[1].2, row(2, 21), "the newer change wins");
        // Requeued and persisted: a reopened store still has it (kill -9).
        b.requeue(again[0].0.clone(), again[0].1, again[0].2.clone())
            .unwrap();
        b.persist().unwrap();
        drop(b);
        let mut reopened = ChangeBuffer::with_spill(1 << 20, dir.path().join("changes")).unwrap();
        let back = reopened.take_ready(&m, true, 10).unwrap();
        assert!(back.iter().any(|(_, _, c)| *c == row(1, 10)));
    }

    #[test]
    fn spills_beyond_the_budget_and_memory_overrides_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = ChangeBuffer::with_spill(2_000, dir.path().join("changes")).unwrap();
        let row = |i: i64, v: &str| {
            Pending::Upsert(vec![Value::Int(i), Value::Bytes(v.as_bytes().to_vec())])
        };
        for i in 0..200 {
            b.push(k(i), row(i, "first")).unwrap();
        }
        assert!(b.spills > 0, "2 kB of budget must spill 200 rows");
        assert!(b.bytes() <= 2_000);
        // Newer images in memory win over the spilled ones; a delete too.
        b.push(k(5), row(5, "second")).unwrap();
        b.push(k(7), Pending::Delete(vec![Value::Int(7)])).unwrap();
        let mut m = Watermarks::default();
        m.dispatched(0, Some(k(99)));
        m.durable(0);
        let mut taken = Vec::new();
        loop {
            let batch = b.take_ready(&m, true, 30).unwrap();
            if batch.is_empty() {
                break;
            }
            let done: Vec<(Vec<u8>, u64)> = batch.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
            b.applied(&done).unwrap();
            taken.extend(batch);
        }
        assert_eq!(taken.len(), 100, "keys 0..=99 are below the watermark");
        assert_eq!(taken[5].2, row(5, "second"));
        assert_eq!(taken[7].2, Pending::Delete(vec![Value::Int(7)]));
        assert_eq!(taken[6].2, row(6, "first"));
        let keys: Vec<&Vec<u8>> = taken.iter().map(|(k, _, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "handed out in key order");
        m.copy_done();
        let rest = b.take_ready(&m, true, 1000).unwrap();
        assert_eq!(rest.len(), 100);
        // Taken but not applied when the process dies: the stored ones are
        // still there when the store is reopened (the ones only in memory
        // came after the last persist, and the binlog replays them).
        drop(b);
        let mut again = ChangeBuffer::with_spill(2_000, dir.path().join("changes")).unwrap();
        let reopened = again.take_ready(&m, true, 1000).unwrap();
        assert!(!reopened.is_empty());
        assert!(reopened.iter().all(|(k, s, c)| rest
            .iter()
            .any(|(k2, s2, c2)| k == k2 && s == s2 && c == c2)));
        let done: Vec<(Vec<u8>, u64)> = rest.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
        again.applied(&done).unwrap();
        assert!(again.take_ready(&m, true, 1000).unwrap().is_empty());
        assert!(again.is_empty());
    }
}
