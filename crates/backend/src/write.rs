//! Writing SQL into the shadow table: the one session setup, statement
//! builder and duplicate handling that every write path shares.
//!
//! **For:** the sql backend's writers, the copier's server-side
//! `INSERT … SELECT`, the import's transactional region writer and the
//! change applier. Each used to set up its session, cap its statements,
//! parse duplicate errors and retry lock conflicts on its own; they now do
//! it here, so a fix to one is a fix to all.
//!
//! **Leaves to others:** what to write, in which transaction, and what a
//! clash means to the caller (the applier keeps clashing rows pending, the
//! import names the file, the copy skips rows that moved).
//!
//! **Session** ([`prepare_session`], [`SessionOptions`]): `SET NAMES
//! binary` (strings travel as `_charset X'..'` literals), `time_zone =
//! '+00:00'` (TIMESTAMPs are not shifted), a strict `sql_mode` without
//! `NO_ZERO_DATE`/`NO_ZERO_IN_DATE` (`0000-00-00` is stored as is) and with
//! `NO_AUTO_VALUE_ON_ZERO` (an id 0 stays 0). Readers whose values are
//! written back use the same session, so every value travels as the exact
//! bytes the server stored.
//!
//! **Statements** ([`BatchStatement`]): a head, items joined by a separator
//! (`,` for the tuples of a multi-row `INSERT`, ` OR ` for the keys of a
//! `DELETE`), and a tail, kept under a byte cap: an item that would cross
//! the cap starts a new statement (a single item larger than the cap is
//! sent alone). Values are exact literals ([`write_tuple`]).
//!
//! **Duplicates and conflicts** ([`duplicate_of`], [`insert_error`],
//! [`send_insert`]): a duplicate is known by its code (1062); the key and
//! the index are read from the server's text only because the server names
//! them nowhere else. A deadlock or lock wait timeout (1213, 1205) rolls an
//! autocommit statement back, and it is sent again
//! ([`crate::query_retrying_lock_conflicts`]).

use std::borrow::Cow;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::engine::{quote_ident, TargetTable};
use crate::error::{parse_duplicate_message, BackendError};
use crate::retry::query_retrying_lock_conflicts;
use crate::value::{ColumnSpec, Value};

/// The session settings every wraith writer (and reader) uses, as one
/// statement: binary strings, UTC, strict mode that allows zero dates.
///
/// `foreign_key_checks = 0`: the sessions write only wraith's own tables
/// (the shadow, an import's target) with rows the source server checked
/// already; a check against a parent could refuse a row the copy read
/// before its parent's delete (the checksum proves the shadow equals the
/// source, and the cut-over checks the constraints afterwards).
pub const SESSION_SETUP: &str = "SET NAMES binary, time_zone = '+00:00', \
     sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO', \
     foreign_key_checks = 0";

/// Largest statement the engine crate's writers send (the sql backend caps
/// its own by `max_batch_bytes` and the server's `max_allowed_packet`).
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// How a session differs from the plain exact-value one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// `READ COMMITTED`: the `SELECT` half of an `INSERT … SELECT` is then
    /// a consistent read that takes no locks on the source (with ROW
    /// binlogging).
    pub read_committed: bool,
    /// `autocommit = 0`: the caller commits. A statement that a killed
    /// wraith left in flight then rolls back with its connection instead of
    /// landing after a resumed run has moved on.
    pub manual_commit: bool,
}

/// Applies [`SESSION_SETUP`] to a connection.
pub async fn prepare_session(conn: &mut Conn) -> Result<(), mysql_async::Error> {
    prepare_session_with(conn, SessionOptions::default()).await
}

/// Applies [`SESSION_SETUP`] and `options` to a connection.
pub async fn prepare_session_with(
    conn: &mut Conn,
    options: SessionOptions,
) -> Result<(), mysql_async::Error> {
    conn.query_drop(SESSION_SETUP).await?;
    if options.read_committed {
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
    }
    if options.manual_commit {
        conn.query_drop("SET autocommit = 0").await?;
    }
    Ok(())
}

/// `VERB INTO table (c1,c2) VALUES ` for a multi-row statement.
pub fn insert_head<'a>(
    verb: &str,
    table: &TargetTable,
    columns: impl IntoIterator<Item = &'a str>,
) -> String {
    let cols: Vec<String> = columns.into_iter().map(quote_ident).collect();
    format!(
        "{verb} INTO {} ({}) VALUES ",
        table.quoted_name(),
        cols.join(",")
    )
}

/// Appends `(v1,v2,..)`: each value as the exact literal of its spec.
pub fn write_tuple<'a>(
    values: impl IntoIterator<Item = (&'a Value, &'a ColumnSpec)>,
    out: &mut Vec<u8>,
) {
    out.push(b'(');
    for (i, (v, spec)) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        v.write_sql_literal(spec, out);
    }
    out.push(b')');
}

/// A statement of items under a byte cap (see the module page).
#[derive(Debug, Clone)]
pub struct BatchStatement {
    stmt: Vec<u8>,
    head_len: usize,
    separator: &'static [u8],
    tail: String,
    items: usize,
    limit: usize,
}

impl BatchStatement {
    /// A multi-row `INSERT`-like statement: tuples joined by `,`.
    pub fn values(head: &str, tail: &str, limit: usize) -> BatchStatement {
        BatchStatement::new(head, b",", tail, limit)
    }

    /// Items after `head` joined by `separator`, then `tail`, in at most
    /// `limit` bytes.
    pub fn new(head: &str, separator: &'static [u8], tail: &str, limit: usize) -> BatchStatement {
        let mut stmt = Vec::with_capacity(limit.min(1 << 20) + 1024);
        stmt.extend_from_slice(head.as_bytes());
        BatchStatement {
            head_len: stmt.len(),
            stmt,
            separator,
            tail: tail.to_string(),
            items: 0,
            limit,
        }
    }

    /// Whether an item of `len` bytes fits after the items already in (an
    /// empty statement takes any item).
    pub fn fits(&self, len: usize) -> bool {
        self.items == 0
            || self.stmt.len() + self.separator.len() + len + self.tail.len() <= self.limit
    }

    /// Adds an item; check [`fits`](Self::fits) first.
    pub fn push(&mut self, item: &[u8]) {
        if self.items > 0 {
            self.stmt.extend_from_slice(self.separator);
        }
        self.stmt.extend_from_slice(item);
        self.items += 1;
    }

    /// Items in the statement.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether no item is in.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The statement with its tail. Literals are ASCII or hex, so the text
    /// is valid UTF-8 by construction.
    pub fn sql(&self) -> Cow<'_, str> {
        if self.tail.is_empty() {
            String::from_utf8_lossy(&self.stmt)
        } else {
            let mut s = String::from_utf8_lossy(&self.stmt).into_owned();
            s.push_str(&self.tail);
            Cow::Owned(s)
        }
    }

    /// Empties the statement down to its head.
    pub fn clear(&mut self) {
        self.stmt.truncate(self.head_len);
        self.items = 0;
    }
}

/// `(key, index)` of a duplicate-key error (1062): known by its code; the
/// key and the index come from the server's text (`('<text>', "")` when it
/// cannot be read).
pub fn duplicate_of(e: &mysql_async::Error) -> Option<(String, String)> {
    match e {
        mysql_async::Error::Server(s) if s.code == 1062 => Some(
            parse_duplicate_message(&s.message)
                .unwrap_or_else(|| (s.message.clone(), String::new())),
        ),
        _ => None,
    }
}

/// A failed write on `table`: a duplicate becomes
/// [`BackendError::DuplicateDetected`], anything else
/// [`BackendError::Sql`] with `context`.
pub fn insert_error(err: mysql_async::Error, context: &str, table: &TargetTable) -> BackendError {
    match duplicate_of(&err) {
        Some((key, index)) => BackendError::DuplicateDetected {
            table: table.display_name(),
            key,
            index,
        },
        None => BackendError::sql(context, &table.display_name(), err),
    }
}

/// Sends one autocommit `INSERT` into `table` (again after a lock
/// conflict). A duplicate on one of the table's transient unique indexes
/// ([`TargetTable::is_transient_duplicate`]: a row that moved while the
/// copy read it) rolled the statement back: it is sent again skipping such
/// clashes. Any other duplicate is [`BackendError::DuplicateDetected`].
pub async fn send_insert(
    conn: &mut Conn,
    sql: &str,
    table: &TargetTable,
    context: &str,
) -> Result<(), BackendError> {
    let first = query_retrying_lock_conflicts(conn, sql).await;
    match first.map_err(|e| insert_error(e, context, table)) {
        Err(BackendError::DuplicateDetected { index, .. })
            if table.is_transient_duplicate(&index) =>
        {
            tracing::debug!(table = %table.display_name(), %index, "a statement met a moved row; sent again skipping the clash");
            let again = format!("{sql}{}", table.skip_duplicates_clause());
            query_retrying_lock_conflicts(conn, &again)
                .await
                .map_err(|e| insert_error(e, context, table))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_stay_under_the_cap() {
        let mut b = BatchStatement::values("INSERT INTO t (a) VALUES ", "", 32);
        assert!(b.fits(100), "an empty statement takes any row");
        b.push(b"(1)");
        assert!(b.fits(3));
        b.push(b"(2)");
        // 25 head + 3 + 1 + 3 = 32: one more does not fit.
        assert!(!b.fits(3));
        assert_eq!(b.sql(), "INSERT INTO t (a) VALUES (1),(2)");
        b.clear();
        assert!(b.is_empty());
        let mut d = BatchStatement::new("DELETE FROM t WHERE ", b" OR ", " -- x", 64);
        d.push(b"(a = 1)");
        d.push(b"(a = 2)");
        assert_eq!(d.len(), 2);
        assert_eq!(d.sql(), "DELETE FROM t WHERE (a = 1) OR (a = 2) -- x");
    }

    #[test]
    fn duplicates_are_known_by_code() {
        let dup = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1062,
            message: "Duplicate entry '5' for key 'uk'".into(),
            state: "23000".into(),
        });
        assert_eq!(duplicate_of(&dup), Some(("'5'".into(), "uk".into())));
        let other = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1406,
            message: "Duplicate entry '5' for key 'uk'".into(),
            state: "22001".into(),
        });
        assert_eq!(duplicate_of(&other), None);
    }
}
