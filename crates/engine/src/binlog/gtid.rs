//! GTID state, kept current as the stream reads transactions.
//!
//! - MariaDB: a position per replication domain, `domain-server-seq` joined
//!   by `,` in domain order (what `@@gtid_binlog_pos` and
//!   `BINLOG_GTID_POS()` print). GTID events (type 162) and GTID_LIST
//!   events (163) are decoded by hand: `mysql_common` passes them through.
//! - MySQL: a GTID set, `uuid:1-5:7,uuid2:1-3` in uuid order (what
//!   `@@gtid_executed` prints, without its newlines).

use std::collections::BTreeMap;

/// The GTID state of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GtidState {
    /// MariaDB: domain id → (server id, sequence number).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: source uuid (with `:tag` for tagged GTIDs) → sorted, disjoint intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

impl GtidState {
    /// Parses a state as the server prints it. Unparsable parts are dropped
    /// (the state is informational; file:pos is what a stream resumes from).
    pub fn parse(mariadb: bool, s: &str) -> GtidState {
        if mariadb {
            let mut m = BTreeMap::new();
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let f: Vec<&str> = part.split('-').collect();
                if let [d, srv, seq] = f[..] {
                    if let (Ok(d), Ok(srv), Ok(seq)) = (d.parse(), srv.parse(), seq.parse()) {
                        m.insert(d, (srv, seq));
                    }
                }
            }
            GtidState::MariaDb(m)
        } else {
            let mut m: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let mut fields = part.split(':');
                let Some(uuid) = fields.next() else { continue };
                let mut sid = uuid.to_ascii_lowercase();
                for f in fields {
                    let (a, b) = f.split_once('-').unwrap_or((f, f));
                    match (a.parse::<u64>(), b.parse::<u64>()) {
                        (Ok(a), Ok(b)) => m.entry(sid.clone()).or_default().push((a, b)),
                        // A tag (MySQL 8.4): the intervals after it belong to uuid:tag.
                        _ => sid = format!("{}:{}", uuid.to_ascii_lowercase(), f),
                    }
                }
            }
            for iv in m.values_mut() {
                normalize(iv);
            }
            GtidState::MySql(m)
        }
    }

    /// Records MariaDB GTID `domain-server-seq` as the latest of its domain.
    pub fn apply_mariadb(&mut self, domain: u32, server: u32, seq: u64) {
        if let GtidState::MariaDb(m) = self {
            m.insert(domain, (server, seq));
        }
    }

    /// Fills in domains this state does not know yet (from a GTID_LIST event).
    pub fn merge_mariadb_list(&mut self, list: &[(u32, u32, u64)]) {
        if let GtidState::MariaDb(m) = self {
            for &(d, s, q) in list {
                m.entry(d).or_insert((s, q));
            }
        }
    }

    /// Adds MySQL GTID `sid:gno`.
    pub fn apply_mysql(&mut self, sid: &str, gno: u64) {
        if let GtidState::MySql(m) = self {
            let iv = m.entry(sid.to_ascii_lowercase()).or_default();
            iv.push((gno, gno));
            normalize(iv);
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            GtidState::MariaDb(m) => m.is_empty(),
            GtidState::MySql(m) => m.is_empty(),
        }
    }

    pub fn render(&self) -> String {
        match self {
            GtidState::MariaDb(m) => m
                .iter()
                .map(|(d, (s, q))| format!("{d}-{s}-{q}"))
                .collect::<Vec<_>>()
                .join(","),
            GtidState::MySql(m) => m
                .iter()
                .map(|(sid, iv)| {
                    let mut s = sid.clone();
                    for (a, b) in iv {
                        if a == b {
                            s.push_str(&format!(":{a}"));
                        } else {
                            s.push_str(&format!(":{a}-{b}"));
                        }
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

fn normalize(iv: &mut Vec<(u64, u64)>) {
    iv.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
    for &(a, b) in iv.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *iv = out;
}

/// A MariaDB GTID event's body: `(sequence number, domain id, flags)`.
/// The server id is the event header's.
pub(crate) fn parse_mariadb_gtid(data: &[u8]) -> Option<(u64, u32, u8)> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some((seq, domain, flags))
}

/// MariaDB's GTID flag: the event group is one statement without BEGIN/COMMIT (DDL).
pub(crate) const MARIADB_FL_STANDALONE: u8 = 1;

/// A MariaDB GTID_LIST event's body: `(domain, server, seq)` entries.
pub(crate) fn parse_mariadb_gtid_list(data: &[u8]) -> Option<Vec<(u32, u32, u64)>> {
    let count = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0fff_ffff;
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let e = data.get(4 + i * 16..4 + (i + 1) * 16)?;
        out.push((
            u32::from_le_bytes(e[0..4].try_into().ok()?),
            u32::from_le_bytes(e[4..8].try_into().ok()?),
            u64::from_le_bytes(e[8..16].try_into().ok()?),
        ));
    }
    Some(out)
}

/// A 16-byte MySQL source id as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub(crate) fn uuid_text(sid: &[u8; 16]) -> String {
    let h: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_state() {
        let mut g = GtidState::parse(true, "1-2-3,0-1-57");
        assert_eq!(g.render(), "0-1-57,1-2-3");
        g.apply_mariadb(0, 1, 58);
        g.merge_mariadb_list(&[(0, 1, 1), (5, 1, 9)]);
        assert_eq!(g.render(), "0-1-58,1-2-3,5-1-9");
        assert!(GtidState::parse(true, "").is_empty());
    }

    #[test]
    fn mysql_set() {
        let u = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let mut g = GtidState::parse(false, &format!("{u}:1-5:7,\n{u}:9"));
        assert_eq!(g.render(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7:9");
        g.apply_mysql(u, 6);
        g.apply_mysql(u, 8);
        assert_eq!(g.render(), "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9");
        assert_eq!(
            uuid_text(&[0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
    }

    #[test]
    fn mariadb_events() {
        let mut d = Vec::new();
        d.extend_from_slice(&57u64.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.push(MARIADB_FL_STANDALONE);
        assert_eq!(parse_mariadb_gtid(&d), Some((57, 0, 1)));
        let mut l = Vec::new();
        l.extend_from_slice(&1u32.to_le_bytes());
        l.extend_from_slice(&0u32.to_le_bytes());
        l.extend_from_slice(&1u32.to_le_bytes());
        l.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(parse_mariadb_gtid_list(&l), Some(vec![(0, 1, 9)]));
    }
}
