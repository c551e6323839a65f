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
    /// `REPLACE` this row (shadow column order).
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
    copy_done: bool,
}

impl Watermarks {
    /// A chunk `(.., upper]` was handed out to a reader.
    pub fn dispatched(&mut self, chunk_id: u64, upper: Option<Vec<u8>>) {
        self.dispatched.insert(chunk_id, upper);
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

    pub fn is_copy_done(&self) -> bool {
        self.copy_done
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

/// Changes waiting to be applied, deduplicated per shadow key.
#[derive(Debug, Default)]
pub struct ChangeBuffer {
    entries: BTreeMap<Vec<u8>, Pending>,
    bytes: usize,
    /// Changes received (before deduplication).
    pub received: u64,
}

impl ChangeBuffer {
    pub fn new() -> ChangeBuffer {
        ChangeBuffer::default()
    }

    /// Records a change; the last one for a key wins.
    pub fn push(&mut self, key: Vec<u8>, change: Pending) {
        self.received += 1;
        self.bytes += change.bytes() + key.len();
        if let Some(old) = self.entries.insert(key.clone(), change) {
            self.bytes = self.bytes.saturating_sub(old.bytes() + key.len());
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Approximate memory held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes up to `max` changes that may be applied now, in key order.
    pub fn take_ready(
        &mut self,
        marks: &Watermarks,
        use_watermarks: bool,
        max: usize,
    ) -> Vec<(Vec<u8>, Pending)> {
        let ready: Vec<Vec<u8>> = self
            .entries
            .keys()
            .take_while(|k| marks.applicable(k, use_watermarks))
            .take(max)
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|k| {
                let v = self.entries.remove(&k)?;
                self.bytes = self.bytes.saturating_sub(v.bytes() + k.len());
                Some((k, v))
            })
            .collect()
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
        b.push(k(1), Pending::Upsert(vec![Value::Int(1), Value::Int(10)]));
        b.push(k(1), Pending::Upsert(vec![Value::Int(1), Value::Int(11)]));
        b.push(k(2), Pending::Upsert(vec![Value::Int(2), Value::Int(20)]));
        b.push(k(2), Pending::Delete(vec![Value::Int(2)]));
        assert_eq!(b.received, 4);
        assert_eq!(b.len(), 2);
        let mut m = Watermarks::default();
        m.copy_done();
        let ready = b.take_ready(&m, true, 10);
        assert_eq!(
            ready[0].1,
            Pending::Upsert(vec![Value::Int(1), Value::Int(11)])
        );
        assert_eq!(ready[1].1, Pending::Delete(vec![Value::Int(2)]));
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
            b.push(k(i), Pending::Delete(vec![Value::Int(i)]));
        }
        // Chunk 1 durable first: nothing is a prefix yet.
        m.durable(1);
        assert!(b.take_ready(&m, true, 10).is_empty());
        m.durable(0);
        let ready = b.take_ready(&m, true, 10);
        assert_eq!(
            ready.len(),
            2,
            "keys 50 and 150 are below the low watermark 200"
        );
        // Without watermarks nothing moves until the copy is done.
        assert!(b.take_ready(&m, false, 10).is_empty());
        m.durable(2);
        assert_eq!(b.take_ready(&m, true, 10).len(), 1);
    }
}
