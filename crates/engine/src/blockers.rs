//! Blockers: sessions that would make the cut-over's table lock wait.
//!
//! **What it is for.** A lock request on a table queues behind every session
//! that holds a metadata lock on it (an open transaction that read or wrote
//! the table, a long statement), and the server serves the application's
//! writes to that table only after the queued request: a cut-over that asks
//! for its lock while a report transaction is open stalls the application
//! for as long as it waits. The cut-over ([`crate::cutover`]) therefore looks
//! for blockers first and does not ask while there are any; this module
//! finds them, and kills them when the operator allows it.
//!
//! **How it finds them**, best source first ([`Detection`]):
//! - `metadata_lock_info` (MariaDB, when the plugin of that name is loaded):
//!   the sessions that hold a metadata lock on the table — exact.
//! - `transactions` (otherwise): every open InnoDB transaction
//!   (`information_schema.INNODB_TRX` with its `PROCESSLIST` entry), and every
//!   statement whose text names the table. The server does not say which
//!   tables a transaction has read, so any open transaction counts: waiting
//!   for one that never touched the table only delays the cut-over.
//!
//! Either way a session counts only once it has held the table (or its
//! transaction has been open, or its statement has run) for [`MIN_AGE`]:
//! ordinary short transactions end by themselves within the cut-over's
//! bounded lock attempt. The session asking is never counted, nor are the
//! ones the caller names (the cut-over's own), replication threads and the
//! server's own threads.
//!
//! **Killing** (`[cutover] kill_blockers` with `blocker_grace`, as Spirit's
//! force-kill) happens only with exact detection: without the plugin wraith
//! cannot tell a session that holds the table from one that merely has a
//! transaction open, and does not kill on a guess.
//!
//! **What it leaves to others.** When to look, how long to wait and when to
//! give up are the cut-over's; this module reads the server and kills.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use serde::Serialize;

use crate::server::{server_error_code, Context, DbError, Flavor};

/// A session younger than this is an ordinary short transaction, not a blocker.
pub const MIN_AGE: Duration = Duration::from_millis(500);

/// The longest statement text kept for a report.
const STATEMENT_CHARS: usize = 200;

/// How blockers are found on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    /// MariaDB's `information_schema.METADATA_LOCK_INFO`: exact.
    MetadataLockInfo,
    /// Open InnoDB transactions and statements that name the table.
    Transactions,
}

impl Detection {
    /// Whether the sessions found certainly hold the table.
    pub fn is_exact(self) -> bool {
        self == Detection::MetadataLockInfo
    }
}

/// A session that would block the cut-over's lock.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Blocker {
    /// The connection id (`KILL <id>` ends it).
    pub id: u64,
    pub user: String,
    pub host: String,
    /// `Sleep` (idle inside a transaction), `Query`, ...
    pub command: String,
    /// How long it has held the table (or its transaction been open), at least.
    pub time_secs: f64,
    /// Its current statement, or its transaction's; cut to 200 characters.
    pub statement: Option<String>,
    /// `holds a metadata lock on the table`, `has a transaction open` or
    /// `runs a statement that names the table`.
    pub reason: String,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {} ({}@{}, {}, {:.1}s, {}): {}",
            self.id,
            self.user,
            self.host,
            self.command,
            self.time_secs,
            self.reason,
            self.statement.as_deref().unwrap_or("no statement running")
        )
    }
}

/// Which detection the server behind `conn` allows.
pub async fn detection(conn: &mut Conn, flavor: Flavor) -> Result<Detection, DbError> {
    if !flavor.is_mariadb() {
        return Ok(Detection::Transactions);
    }
    let active: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.PLUGINS \
             WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE'",
        )
        .await
        .context(|| "looking for the metadata_lock_info plugin".into())?;
    Ok(if active.unwrap_or(0) > 0 {
        Detection::MetadataLockInfo
    } else {
        Detection::Transactions
    })
}

/// The sessions that would block a lock on `schema.table`, longest first.
/// `own` are connection ids of the caller's that never count.
pub async fn find(
    conn: &mut Conn,
    flavor: Flavor,
    detection: Detection,
    schema: &str,
    table: &str,
    own: &[u32],
) -> Result<Vec<Blocker>, DbError> {
    // MySQL's PROCESSLIST has no TIME_MS. INNODB_TRX's trx_started is cut to
    // the second, so its age is taken one second short: a lower bound.
    let time_ms = if flavor.is_mariadb() {
        "p.TIME_MS"
    } else {
        "p.TIME * 1000"
    };
    let trx_age = "COALESCE(TIMESTAMPDIFF(MICROSECOND, x.trx_started, NOW(6)) / 1000 - 1000, 0)";
    let columns = format!(
        "p.ID, p.USER, p.HOST, p.COMMAND, GREATEST(COALESCE({time_ms}, 0), {trx_age}) + 0e0, \
         COALESCE(p.INFO, x.trx_query)"
    );
    let rows: Vec<(Row, &str)> = match detection {
        Detection::MetadataLockInfo => tagged(
            conn.exec(
                format!(
                    "SELECT {columns} FROM information_schema.METADATA_LOCK_INFO m \
                     JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID \
                     LEFT JOIN information_schema.INNODB_TRX x ON x.trx_mysql_thread_id = p.ID \
                     WHERE m.TABLE_SCHEMA = ? AND m.TABLE_NAME = ? \
                       AND m.LOCK_TYPE = 'Table metadata lock' \
                       AND m.LOCK_MODE <> 'MDL_SHARED_HIGH_PRIO' AND p.ID <> CONNECTION_ID()"
                ),
                (schema, table),
            )
            .await
            .context(|| format!("reading the metadata locks on {schema}.{table}"))?,
            "holds a metadata lock on the table",
        ),
        Detection::Transactions => {
            let mut rows = tagged(
                conn.query(format!(
                    "SELECT {columns} FROM information_schema.INNODB_TRX x \
                     JOIN information_schema.PROCESSLIST p ON p.ID = x.trx_mysql_thread_id \
                     WHERE p.ID <> CONNECTION_ID()"
                ))
                .await
                .context(|| "reading the open transactions".into())?,
                "has a transaction open",
            );
            rows.extend(tagged(
                conn.exec(
                    format!(
                        "SELECT p.ID, p.USER, p.HOST, p.COMMAND, COALESCE({time_ms}, 0) + 0e0, p.INFO \
                         FROM information_schema.PROCESSLIST p \
                         WHERE p.COMMAND = 'Query' AND p.ID <> CONNECTION_ID() AND INSTR(p.INFO, ?) > 0 \
                           AND (p.DB = ? OR INSTR(p.INFO, ?) > 0)"
                    ),
                    // A table of the same name in another schema is not this one.
                    (table, schema, schema),
                )
                .await
                .context(|| "reading the running statements".into())?,
                "runs a statement that names the table",
            ));
            rows
        }
    };
    let mut found: BTreeMap<u64, Blocker> = BTreeMap::new();
    for (row, reason) in rows {
        let Some(b) = blocker_of(&row, reason) else {
            continue;
        };
        if b.time_secs < MIN_AGE.as_secs_f64()
            || own.iter().any(|&id| u64::from(id) == b.id)
            || is_server_thread(&b)
        {
            continue;
        }
        match found.get(&b.id) {
            Some(seen) if seen.time_secs >= b.time_secs => {}
            _ => {
                found.insert(b.id, b);
            }
        }
    }
    let mut list: Vec<Blocker> = found.into_values().collect();
    list.sort_by(|a, b| b.time_secs.total_cmp(&a.time_secs));
    Ok(list)
}

fn tagged(rows: Vec<Row>, reason: &'static str) -> Vec<(Row, &'static str)> {
    rows.into_iter().map(|r| (r, reason)).collect()
}

/// One row of the queries above; `None` when the server sent something odd.
fn blocker_of(row: &Row, reason: &str) -> Option<Blocker> {
    let text = |i: usize| -> Option<String> {
        row.get_opt::<Option<Vec<u8>>, _>(i)
            .and_then(Result::ok)
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let id = row.get_opt::<u64, _>(0).and_then(Result::ok)?;
    let age_ms = row
        .get_opt::<Option<f64>, _>(4)
        .and_then(Result::ok)
        .flatten()
        .unwrap_or(0.0);
    let statement = text(5).map(|s| {
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        match s.char_indices().nth(STATEMENT_CHARS) {
            Some((cut, _)) => format!("{}…", &s[..cut]),
            None => s,
        }
    });
    Some(Blocker {
        id,
        user: text(1).unwrap_or_default(),
        host: text(2).unwrap_or_default(),
        command: text(3).unwrap_or_default(),
        time_secs: (age_ms / 1000.0).max(0.0),
        statement,
        reason: reason.to_string(),
    })
}

/// Replication and the server's own threads hold no table a cut-over needs.
fn is_server_thread(b: &Blocker) -> bool {
    matches!(
        b.command.as_str(),
        "Binlog Dump" | "Binlog Dump GTID" | "Daemon" | "Slave_IO" | "Slave_SQL" | "Slave_worker"
    ) || b.user == "system user"
        || b.user == "event_scheduler"
}

/// What came of a `KILL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    Yes,
    /// It had ended already.
    Gone,
    /// The server refused (another user's session without the privilege).
    Refused(String),
}

/// Ends session `id` (its transaction rolls back and its locks go).
pub async fn kill(conn: &mut Conn, id: u64) -> Result<Killed, DbError> {
    match conn.query_drop(format!("KILL CONNECTION {id}")).await {
        Ok(()) => Ok(Killed::Yes),
        Err(e) if server_error_code(&e) == Some(1094) => Ok(Killed::Gone),
        Err(e) if server_error_code(&e) == Some(1095) => Ok(Killed::Refused(e.to_string())),
        Err(e) => Err(DbError {
            context: format!("killing blocker session {id}"),
            error: e,
        }),
    }
}

/// Since when each blocker has been seen blocking, for the grace period.
#[derive(Debug, Default)]
pub struct Watchlist {
    first_seen: BTreeMap<u64, Instant>,
}

impl Watchlist {
    /// Records the blockers seen now; those no longer seen are forgotten
    /// (a session that comes back starts its grace period over).
    pub fn update(&mut self, now: &[Blocker]) {
        let at = Instant::now();
        self.first_seen
            .retain(|id, _| now.iter().any(|b| b.id == *id));
        for b in now {
            self.first_seen.entry(b.id).or_insert(at);
        }
    }

    /// Blockers seen for at least `grace`.
    pub fn overdue<'a>(&self, now: &'a [Blocker], grace: Duration) -> Vec<&'a Blocker> {
        now.iter()
            .filter(|b| {
                self.first_seen
                    .get(&b.id)
                    .is_some_and(|t| t.elapsed() >= grace)
            })
            .collect()
    }

    /// The ids being watched.
    pub fn ids(&self) -> Vec<u64> {
        self.first_seen.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(id: u64) -> Blocker {
        Blocker {
            id,
            user: "app".into(),
            host: "10.0.0.1:5000".into(),
            command: "Sleep".into(),
            time_secs: 3.0,
            statement: None,
            reason: "has a transaction open".into(),
        }
    }

    #[test]
    fn grace_counts_from_the_first_sighting_and_restarts_after_a_gap() {
        let mut w = Watchlist::default();
        let (a, b) = (blocker(1), blocker(2));
        w.update(std::slice::from_ref(&a));
        std::thread::sleep(Duration::from_millis(30));
        w.update(&[a.clone(), b.clone()]);
        let now = [a.clone(), b.clone()];
        let overdue: Vec<u64> = w
            .overdue(&now, Duration::from_millis(20))
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(overdue, vec![1]);
        // Session 1 went away and came back: its grace starts over.
        w.update(std::slice::from_ref(&b));
        w.update(&[a.clone(), b.clone()]);
        assert_eq!(w.ids(), vec![1, 2]);
        assert!(w.overdue(&now, Duration::from_millis(20)).is_empty());
    }

    #[test]
    fn replication_threads_are_not_blockers() {
        let mut b = blocker(3);
        assert!(!is_server_thread(&b));
        b.command = "Binlog Dump GTID".into();
        assert!(is_server_thread(&b));
    }
}
