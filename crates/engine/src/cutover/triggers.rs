//! The source table's triggers follow it to the new table.
//!
//! **Why the shadow gets its triggers only inside the cut-over.** While the
//! copy and the change stream write `_t_new`, every row they write is a row
//! the application already wrote to `t`, and `t`'s own triggers already did
//! their work for it (an audit row, a counter). A trigger on `_t_new` would
//! fire again for the copy's INSERTs and the apply's upserts and deletes:
//! doubled audit rows. So `_t_new` has no trigger until the last change is
//! applied: in the locked phase, after the final drain and its
//! verification, while session A holds `t` (no write can reach it), session
//! B creates every trigger of `t` on `_t_new`, and then issues the RENAME.
//! The RENAME moves each table with its triggers, atomically: before it `t`
//! has the original triggers, after it `t` (the former shadow) has the
//! copies. There is no moment where the live table has none, and nothing
//! writes `_t_new` between the creation and the RENAME.
//!
//! **Names.** Trigger names are unique per schema, and the originals still
//! exist on `t` when the copies are made, so a copy is named
//! [`carried_name`]: `<name>_wraith`, or the name without that suffix when an
//! earlier wraith run made it (names alternate and never grow). Keeping the
//! original names would need the originals dropped from `t` first (a moment
//! with none, or A dropping them under its lock and B creating after: the
//! same moment for a write that the RENAME lets through after a failure).
//!
//! **Faithful definitions.** Each trigger is read from
//! `information_schema.TRIGGERS` (timing, event, body, order, definer,
//! sql_mode, character set) and created again in `ACTION_ORDER` per
//! (timing, event), so creating them one after another keeps their order,
//! under the trigger's own `sql_mode` and `collation_connection`, with its
//! definer. The body is the server's own text. The session's settings are
//! put back afterwards.
//!
//! **After the RENAME** `_t_old` holds the original triggers: they are
//! dropped at once (nothing should write the old table, but a trigger that
//! fired there would act twice), and again by the after-cut-over cleanup, so
//! a run killed in between drops them when it resumes.
//!
//! **A failed attempt** drops the triggers it made on `_t_new` before the
//! lock is given back to the change stream, and every attempt (and every
//! resumed run, before it applies a change) first drops any trigger on
//! `_t_new`: the shadow is wraith's table, so every trigger on it is
//! wraith's copy. A trigger is dropped by name only after reading that it is
//! on the table meant, so a copy that a RENAME moved to the live table is
//! never dropped by mistake.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::quote_str;

use super::markers::SwapNames;
use super::{CutoverError, SwapTable};
use crate::server::{quote_ident, Context, DbError};

/// What marks a trigger wraith copied to a new table.
pub const CARRIED_SUFFIX: &str = "_wraith";

/// One trigger as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerDef {
    pub name: String,
    /// `BEFORE` or `AFTER`.
    pub timing: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub event: String,
    /// The body, as the server stores it (`BEGIN … END` or one statement).
    pub body: String,
    pub order: u64,
    /// `user@host`, or a role's name.
    pub definer: String,
    pub sql_mode: String,
    pub character_set_client: String,
    pub collation_connection: String,
}

impl TriggerDef {
    /// `BEFORE INSERT`, for messages.
    pub fn when(&self) -> String {
        format!("{} {}", self.timing, self.event)
    }
}

/// The name of a trigger's copy on the new table: `<name>_wraith`, or the
/// name without the suffix when it has it (an earlier wraith run made it).
pub fn carried_name(name: &str) -> String {
    match name.strip_suffix(CARRIED_SUFFIX) {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => format!("{name}{CARRIED_SUFFIX}"),
    }
}

/// The triggers of `schema.table`, in the order they fire per (timing, event).
pub async fn read_triggers(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<TriggerDef>, DbError> {
    type Row = (
        String,
        String,
        String,
        String,
        u64,
        String,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = conn
        .exec(
            "SELECT TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT, \
             ACTION_ORDER, DEFINER, SQL_MODE, CHARACTER_SET_CLIENT, COLLATION_CONNECTION \
             FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ? \
             ORDER BY ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
            (schema, table),
        )
        .await
        .context(|| format!("reading the triggers of {schema}.{table}"))?;
    Ok(rows
        .into_iter()
        .map(
            |(name, timing, event, body, order, definer, sql_mode, cs, coll)| TriggerDef {
                name,
                timing,
                event,
                body,
                order,
                definer,
                sql_mode,
                character_set_client: cs,
                collation_connection: coll,
            },
        )
        .collect())
}

/// `DEFINER=…` of a trigger: `'user'@'host'`, or a role's quoted name.
fn definer_clause(definer: &str) -> String {
    match definer.rsplit_once('@') {
        Some((user, host)) => format!("DEFINER={}@{}", quote_str(user), quote_str(host)),
        None if definer.is_empty() => String::new(),
        None => format!("DEFINER={}", quote_ident(definer)),
    }
}

/// The statement that makes `def`'s copy on `schema.table`.
pub fn create_statement(def: &TriggerDef, schema: &str, table: &str) -> String {
    format!(
        "CREATE {} TRIGGER {}.{} {} {} ON {}.{} FOR EACH ROW {}",
        definer_clause(&def.definer),
        quote_ident(schema),
        quote_ident(&carried_name(&def.name)),
        def.timing,
        def.event,
        quote_ident(schema),
        quote_ident(table),
        def.body
    )
}

/// Creates a copy of every trigger of `defs` on `schema.shadow` (see the
/// module page), on a session holding no lock, without waiting on a
/// metadata lock (`lock_wait_timeout = 0`: the application's writes wait
/// with the caller). The session's settings are put back, also on failure.
/// Returns how many were made.
pub(crate) async fn create_on(
    conn: &mut Conn,
    schema: &str,
    shadow: &str,
    defs: &[TriggerDef],
) -> Result<usize, DbError> {
    if defs.is_empty() {
        return Ok(0);
    }
    let saved: Option<(String, String, String, u64)> = conn
        .query_first(
            "SELECT @@SESSION.sql_mode, @@SESSION.character_set_client, \
             @@SESSION.collation_connection, @@SESSION.lock_wait_timeout",
        )
        .await
        .context(|| "reading the session's settings".into())?;
    let result = async {
        for def in defs {
            // The text is sent as utf8mb4 (how it was read); the trigger's
            // collation_connection gives its literals their original
            // character set and collation. A body in plain ASCII is sent
            // under its own client character set too.
            let client = if def.body.is_ascii() {
                def.character_set_client.as_str()
            } else {
                "utf8mb4"
            };
            conn.query_drop(format!(
                "SET SESSION sql_mode = {}, SESSION character_set_client = {}, \
                 SESSION collation_connection = {}, SESSION lock_wait_timeout = 0",
                quote_str(&def.sql_mode),
                quote_str(client),
                quote_str(&def.collation_connection)
            ))
            .await
            .context(|| format!("taking the settings of trigger {}", def.name))?;
            conn.query_drop(create_statement(def, schema, shadow))
                .await
                .context(|| {
                    format!(
                        "creating trigger {} ({}) on {schema}.{shadow}",
                        carried_name(&def.name),
                        def.when()
                    )
                })?;
        }
        Ok::<_, DbError>(defs.len())
    }
    .await;
    if let Some((mode, cs, coll, wait)) = saved {
        let restored = conn
            .query_drop(format!(
                "SET SESSION sql_mode = {}, SESSION character_set_client = {}, \
                 SESSION collation_connection = {}, SESSION lock_wait_timeout = {wait}",
                quote_str(&mode),
                quote_str(&cs),
                quote_str(&coll)
            ))
            .await
            .context(|| "putting the session's settings back".into());
        if result.is_ok() {
            restored?;
        }
    }
    result
}

/// Drops every trigger on `schema.table` (the shadow before the cut-over,
/// the old table after it: both wraith's), read first so that a trigger of
/// the same name on another table is never touched. Returns the names dropped.
pub(crate) async fn drop_all_on(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, DbError> {
    let names: Vec<String> = conn
        .exec(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?",
            (schema, table),
        )
        .await
        .context(|| format!("reading the triggers of {schema}.{table}"))?;
    for name in &names {
        conn.query_drop(format!(
            "DROP TRIGGER IF EXISTS {}.{}",
            quote_ident(schema),
            quote_ident(name)
        ))
        .await
        .context(|| {
            format!(
                "dropping trigger {name} of {schema}.{table}; run DROP TRIGGER {}.{}",
                quote_ident(schema),
                quote_ident(name)
            )
        })?;
    }
    if !names.is_empty() {
        tracing::info!(table, triggers = %names.join(", "), "dropped the triggers of {schema}.{table}");
    }
    Ok(names)
}

/// Before an attempt: drops every trigger on the incoming tables of a
/// cut-over (what a failed attempt or a killed run left), so that no change
/// applied to them fires one.
pub(super) async fn drop_from_incoming(
    pool: &Pool,
    tables: &[SwapTable],
) -> Result<(), CutoverError> {
    if !tables.iter().any(|t| t.carry_triggers) {
        return Ok(());
    }
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to drop the shadow's triggers".into())?;
    for t in tables.iter().filter(|t| t.carry_triggers) {
        drop_all_on(&mut conn, &t.schema, &t.incoming).await?;
    }
    Ok(())
}

/// In the locked phase, on a session that holds no lock while A holds
/// every table: each table's triggers, read now (none can change while A
/// holds the table), made on its incoming table. Returns how many.
pub(super) async fn carry_all(conn: &mut Conn, names: &SwapNames) -> Result<usize, DbError> {
    let mut made = 0;
    for t in names.tables.iter().filter(|t| t.carry_triggers) {
        let defs = read_triggers(conn, &t.schema, &t.name).await?;
        made += create_on(conn, &t.schema, &t.incoming, &defs).await?;
    }
    Ok(made)
}

/// A failed attempt that made copies: drops them from the incoming tables
/// before the change stream may write there again, waiting at most
/// `wait_secs` for a RENAME being stopped to let go. A failure is logged:
/// the next attempt drops them before it applies anything.
pub(super) async fn undo_carry(conn: &mut Conn, names: &SwapNames, wait_secs: u64) {
    let mut wait: Option<u64> = None;
    if let Ok(w) = conn.query_first("SELECT @@SESSION.lock_wait_timeout").await {
        wait = w;
    }
    let _ = conn
        .query_drop(format!("SET SESSION lock_wait_timeout = {wait_secs}"))
        .await;
    for t in names.tables.iter().filter(|t| t.carry_triggers) {
        if let Err(e) = drop_all_on(conn, &t.schema, &t.incoming).await {
            tracing::warn!(error = %e, table = %t.name, "could not drop the triggers made on the shadow; the next attempt drops them");
        }
    }
    if let Some(w) = wait {
        let _ = conn
            .query_drop(format!("SET SESSION lock_wait_timeout = {w}"))
            .await;
    }
}

/// After the RENAME: drops the original triggers, now on the old tables.
/// A failure is logged: the after-cut-over cleanup drops them again.
pub(super) async fn drop_from_retired(conn: &mut Conn, names: &SwapNames) {
    for t in names.tables.iter().filter(|t| t.carry_triggers) {
        if let Err(e) = drop_all_on(conn, &t.schema, &t.retired).await {
            tracing::warn!(error = %e, table = %t.name, "could not drop the old table's triggers yet; the cleanup drops them");
        }
    }
}

/// The columns of the row (`NEW.x` / `OLD.x`, any case, with or without
/// backquotes) a trigger body names, lower case. Text in string literals
/// and comments is skipped.
pub fn row_columns(body: &str) -> Vec<String> {
    let chars: Vec<char> = body.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // A string literal: to its closing quote (doubled or escaped ones inside).
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\\' {
                        i += 2;
                        continue;
                    }
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            _ => {
                let (word, end) = read_ident(&chars, i, word_char);
                if end == i {
                    i += 1;
                    continue;
                }
                let preceded = i > 0 && (word_char(chars[i - 1]) || chars[i - 1] == '.');
                let lower = word.to_lowercase();
                if !preceded && (lower == "new" || lower == "old") && chars.get(end) == Some(&'.') {
                    let (column, after) = read_ident(&chars, end + 1, word_char);
                    if after > end + 1 {
                        let column = column.to_lowercase();
                        if !found.contains(&column) {
                            found.push(column);
                        }
                        i = after;
                        continue;
                    }
                }
                i = end;
            }
        }
    }
    found
}

/// An identifier at `i` (plain or backquoted) and the index after it.
fn read_ident(chars: &[char], i: usize, word_char: impl Fn(char) -> bool) -> (String, usize) {
    if chars.get(i) == Some(&'`') {
        let mut s = String::new();
        let mut j = i + 1;
        while j < chars.len() {
            if chars[j] == '`' {
                if chars.get(j + 1) == Some(&'`') {
                    s.push('`');
                    j += 2;
                    continue;
                }
                return (s, j + 1);
            }
            s.push(chars[j]);
            j += 1;
        }
        return (String::new(), i);
    }
    let mut j = i;
    while j < chars.len() && word_char(chars[j]) {
        j += 1;
    }
    (chars[i..j].iter().collect(), j)
}

/// Whether a body names `table` itself (as a word, any case, or
/// backquoted): after the cut-over such a name resolves to the live table,
/// which is what it meant.
pub fn names_table(body: &str, table: &str) -> bool {
    let lower = body.to_lowercase();
    let t = table.to_lowercase();
    if lower.contains(&format!("`{t}`")) {
        return true;
    }
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let bytes: Vec<char> = lower.chars().collect();
    let needle: Vec<char> = t.chars().collect();
    if needle.is_empty() {
        return false;
    }
    (0..bytes.len()).any(|i| {
        bytes[i..].starts_with(&needle)
            && (i == 0 || !word_char(bytes[i - 1]))
            && bytes.get(i + needle.len()).is_none_or(|c| !word_char(*c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_alternate_and_never_grow() {
        assert_eq!(carried_name("audit_ins"), "audit_ins_wraith");
        assert_eq!(carried_name("audit_ins_wraith"), "audit_ins");
        assert_eq!(carried_name(&carried_name("x")), "x");
        assert_eq!(carried_name("_wraith"), "_wraith_wraith");
    }

    #[test]
    fn row_columns_are_found_in_any_spelling() {
        let body = "BEGIN INSERT INTO audit VALUES ('NEW.fake', NEW.a, old.`B c`, `NEW`.d); \
                    -- OLD.comment\n SET @x = New.A + t.new.e; /* OLD.z */ END";
        assert_eq!(row_columns(body), vec!["a", "b c", "d"]);
    }

    #[test]
    fn the_table_is_found_by_name() {
        assert!(names_table(
            "UPDATE counters SET n = (SELECT COUNT(*) FROM T)",
            "t"
        ));
        assert!(names_table("INSERT INTO `t` VALUES (1)", "t"));
        assert!(!names_table("INSERT INTO audit VALUES (NEW.t2)", "t"));
    }

    #[test]
    fn the_definer_is_quoted() {
        assert_eq!(
            definer_clause("root@localhost"),
            "DEFINER='root'@'localhost'"
        );
        assert_eq!(definer_clause("a@b@%"), "DEFINER='a@b'@'%'");
        assert_eq!(definer_clause("app_role"), "DEFINER=`app_role`");
    }
}
