//! Foreign keys of a rebuilt table: as a *child* (its constraints reference
//! a parent) and as a *parent* (other tables' constraints reference it).
//!
//! Facts measured on MariaDB 10.11 that the design rests on:
//! - `CREATE TABLE _t_new LIKE t` copies no foreign key, and constraint
//!   names are unique per schema, so the shadow's constraints need other
//!   names: [`alternate_name`] adds `_wraith`, or takes it off a name that
//!   has it, so names alternate between runs and never grow.
//! - With `foreign_key_checks = 0`, `ADD FOREIGN KEY` is in place and reads
//!   no row (0.1 s on a 500 000-row child, as on an empty one).
//! - InnoDB follows a RENAME: the constraints of `t` move with it to
//!   `_t_old`, the shadow's move with it to `t`; a child's constraint
//!   that references `_t_new` references `t` after the swap.
//! - The changes an `ON DELETE/UPDATE CASCADE` or `SET NULL` makes in a
//!   child are not in the binlog (the parent's row event is; a replica
//!   re-runs the cascade). wraith follows a table through the binlog, so a
//!   child constraint that cascades is refused: its changes would be missed.
//!
//! **A child** ([`add_to_shadow`], [`after_cutover`]): the copy and the
//! apply write the shadow with `foreign_key_checks = 0` (the session setup
//! of every wraith writer, `wraith_backend::write::SESSION_SETUP`): the rows
//! are the source's, which the server checked already, and a check against
//! the parent could refuse a row the copy read before its parent's delete.
//! In the cut-over's locked phase, when the shadow equals the frozen
//! source, the source's constraints are added to it under their alternate
//! names (in place, no scan), so the swap makes them the live table's; not
//! earlier, because a shadow that lags its source would refuse the
//! application's delete of a parent whose last child it just deleted (see
//! [`drop_from_shadow`]). The checksum and the cut-over's
//! verification prove the shadow equals the source, which satisfies them.
//! After the swap the old table's constraints are dropped (they would
//! refuse a parent's delete for rows only the old table has), the live
//! table's and its children's constraints get their own names back
//! ([`restore_names`]: in place, never waiting on a lock; kept marked when
//! the table stays busy), and the live table's constraints are checked:
//! each references its parent, and no row is an orphan (an anti-join per
//! constraint).
//!
//! **A parent**: with `[foreign_keys] children = "refuse"` (the default)
//! preflight names each child and what re-pointing it costs. With
//! `children = "rebuild"` the cut-over's lock takes the children too, and
//! under it each child's constraint is re-pointed at the shadow, in place
//! ([`MovingChildren`]), so the RENAME carries it to the new table; a failed
//! attempt points it back, a killed run's leftovers are repaired first
//! ([`repair_children`]), and sessions holding a child are blockers of the
//! lock as the table's own are.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::Serialize;

use crate::server::{quote_ident, Context, DbError};
use crate::shadow::{old_name, shadow_name};

/// What marks the shadow's constraint names.
const SUFFIX: &str = "_wraith";

/// Longest identifier the server accepts.
const MAX_NAME: usize = 64;

/// One foreign key constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForeignKey {
    pub name: String,
    /// The child's schema and table (the constraint's own).
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub parent_schema: String,
    pub parent: String,
    pub parent_columns: Vec<String>,
    pub on_update: String,
    pub on_delete: String,
}

impl ForeignKey {
    /// Whether the constraint changes child rows itself (CASCADE, SET NULL,
    /// SET DEFAULT): those changes are not in the binlog.
    pub fn changes_children(&self) -> bool {
        !(is_check_only(&self.on_update) && is_check_only(&self.on_delete))
    }

    /// `CONSTRAINT name FOREIGN KEY (cols) REFERENCES schema.parent (cols) ON …`.
    pub fn definition(&self, name: &str, parent: &str) -> String {
        let cols = |c: &[String]| {
            c.iter()
                .map(|n| quote_ident(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // RESTRICT is the default and is left unsaid: an explicit one comes
        // back as NO ACTION from an in-place ADD on MariaDB 10.11.
        let clause = |what: &str, r: &str| match rule(r) {
            "RESTRICT" => String::new(),
            r => format!(" ON {what} {r}"),
        };
        format!(
            "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}.{} ({}){}{}",
            quote_ident(name),
            cols(&self.columns),
            quote_ident(&self.parent_schema),
            quote_ident(parent),
            cols(&self.parent_columns),
            clause("DELETE", &self.on_delete),
            clause("UPDATE", &self.on_update)
        )
    }

    /// `name: child (cols) -> parent (cols) ON DELETE x ON UPDATE y`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) -> {} ({}) ON DELETE {} ON UPDATE {}",
            self.name,
            self.columns.join(", "),
            self.parent,
            self.parent_columns.join(", "),
            self.on_delete,
            self.on_update
        )
    }
}

fn is_check_only(rule: &str) -> bool {
    matches!(rule.to_ascii_uppercase().as_str(), "RESTRICT" | "NO ACTION")
}

/// A rule as SQL: only the server's own words pass.
fn rule(r: &str) -> &'static str {
    match r.to_ascii_uppercase().as_str() {
        "CASCADE" => "CASCADE",
        "SET NULL" => "SET NULL",
        "SET DEFAULT" => "SET DEFAULT",
        "NO ACTION" => "NO ACTION",
        _ => "RESTRICT",
    }
}

/// The shadow's name for a constraint: `name_wraith`, or `name` without
/// `_wraith` when it has it (names alternate between runs, never grow).
pub fn alternate_name(name: &str) -> Result<String, String> {
    let alt = match name.strip_suffix(SUFFIX) {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => format!("{name}{SUFFIX}"),
    };
    if alt.chars().count() > MAX_NAME {
        return Err(format!(
            "the shadow's name for constraint {name} would be {alt}, longer than {MAX_NAME} characters; \
             rename the constraint to at most {} characters",
            MAX_NAME - SUFFIX.len()
        ));
    }
    Ok(alt)
}

/// Why a step on the constraints failed.
#[derive(Debug, thiserror::Error)]
pub enum ForeignKeyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Invalid(String),
}

/// The constraints of `schema.table` (as a child).
pub async fn of_child(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, DbError> {
    read(
        conn,
        "rc.CONSTRAINT_SCHEMA = ? AND rc.TABLE_NAME = ?",
        schema,
        table,
    )
    .await
}

/// The constraints that reference `schema.table` (its children's), from any schema.
pub async fn children_of(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, DbError> {
    read(
        conn,
        "rc.UNIQUE_CONSTRAINT_SCHEMA = ? AND rc.REFERENCED_TABLE_NAME = ?",
        schema,
        table,
    )
    .await
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

async fn read(
    conn: &mut Conn,
    filter: &str,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, DbError> {
    let rows: Vec<Row> = conn
        .exec(
            format!(
                "SELECT rc.CONSTRAINT_NAME, rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, \
                 rc.UNIQUE_CONSTRAINT_SCHEMA, rc.REFERENCED_TABLE_NAME, rc.UPDATE_RULE, rc.DELETE_RULE, \
                 k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS rc \
                 JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA \
                 AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND k.TABLE_NAME = rc.TABLE_NAME \
                 AND k.REFERENCED_TABLE_NAME IS NOT NULL \
                 WHERE {filter} \
                 ORDER BY rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION"
            ),
            (schema, table),
        )
        .await
        .context(|| format!("reading the foreign keys of {table}"))?;
    let mut out: Vec<ForeignKey> = Vec::new();
    for (name, cschema, ctable, pschema, parent, on_update, on_delete, col, pcol) in rows {
        match out.last_mut() {
            Some(fk) if fk.name == name && fk.schema == cschema && fk.table == ctable => {
                fk.columns.push(col);
                fk.parent_columns.push(pcol);
            }
            _ => out.push(ForeignKey {
                name,
                schema: cschema,
                table: ctable,
                columns: vec![col],
                parent_schema: pschema,
                parent,
                parent_columns: vec![pcol],
                on_update,
                on_delete,
            }),
        }
    }
    Ok(out)
}

/// Runs a DDL statement on a constraint with a bounded metadata-lock wait
/// (1 s, as the application's writes to a parent queue behind a waiting
/// request), retried for up to `patience`.
async fn bounded_ddl(conn: &mut Conn, sql: &str, patience: Duration) -> Result<(), DbError> {
    let started = Instant::now();
    loop {
        let r = conn
            .query_drop(format!(
                "SET STATEMENT foreign_key_checks = 0, lock_wait_timeout = 1 FOR {sql}"
            ))
            .await;
        match r {
            Err(mysql_async::Error::Server(e))
                if e.code == 1205 && started.elapsed() < patience =>
            {
                tracing::debug!(%sql, "metadata lock busy; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r.context(|| format!("running {sql}")),
        }
    }
}

/// Runs a DDL statement with `foreign_key_checks = 0`: without waiting
/// for metadata locks (`no_wait`, a session that holds them under `LOCK
/// TABLES`), or with [`bounded_ddl`]'s waits.
async fn run_ddl(conn: &mut Conn, sql: &str, no_wait: bool) -> Result<(), DbError> {
    if no_wait {
        conn.query_drop(format!(
            "SET STATEMENT foreign_key_checks = 0, lock_wait_timeout = 0 FOR {sql}"
        ))
        .await
        .context(|| format!("running {sql}"))
    } else {
        bounded_ddl(conn, sql, Duration::from_secs(60)).await
    }
}

/// The names of a table's indexes.
async fn index_names(conn: &mut Conn, schema: &str, table: &str) -> Result<Vec<String>, DbError> {
    conn.exec(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
        (schema, table),
    )
    .await
    .context(|| format!("reading the indexes of {table}"))
}

/// Gives the shadow of `schema.table` the source's constraints under their
/// alternate names (in place: `foreign_key_checks = 0`, no row read). Runs
/// in the cut-over's locked phase (`no_wait`: never queue on a metadata
/// lock while the application waits); a constraint already there is left. An index the server renamed after the constraint
/// gets its source name back.
pub async fn add_to_shadow(
    conn: &mut Conn,
    schema: &str,
    table: &str,
    no_wait: bool,
) -> Result<Vec<String>, ForeignKeyError> {
    let fks = of_child(conn, schema, table).await?;
    if fks.is_empty() {
        return Ok(Vec::new());
    }
    let shadow = shadow_name(table);
    let present = of_child(conn, schema, &shadow).await?;
    let qshadow = format!("{}.{}", quote_ident(schema), quote_ident(&shadow));
    let mut added = Vec::new();
    for fk in &fks {
        let alt = alternate_name(&fk.name).map_err(ForeignKeyError::Invalid)?;
        if present.iter().any(|p| p.name == alt) {
            continue;
        }
        run_ddl(
            conn,
            &format!(
                "ALTER TABLE {qshadow} ADD {}",
                fk.definition(&alt, &fk.parent)
            ),
            no_wait,
        )
        .await?;
        // An index named after the constraint (the one the server made for
        // it) follows the constraint's name on the server: give it back its own.
        let indexes = index_names(conn, schema, &shadow).await?;
        if indexes.contains(&alt) && !indexes.contains(&fk.name) {
            run_ddl(
                conn,
                &format!(
                    "ALTER TABLE {qshadow} RENAME INDEX {} TO {}",
                    quote_ident(&alt),
                    quote_ident(&fk.name)
                ),
                no_wait,
            )
            .await?;
        }
        tracing::info!(table, constraint = %fk.name, shadow_name = %alt, "foreign key added to the shadow");
        added.push(alt);
    }
    Ok(added)
}

/// Drops every constraint of the shadow of `schema.table` (all are
/// wraith's: the shadow is). A constraint on a shadow that lags its source
/// would refuse the application's delete of a parent row whose last child
/// the application just deleted from the source, so the shadow carries its
/// constraints only from the cut-over's locked phase on: a failed attempt,
/// and a resumed run, take them off again.
pub async fn drop_from_shadow(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<(), ForeignKeyError> {
    let shadow = shadow_name(table);
    let present = of_child(conn, schema, &shadow).await?;
    let dropped = drop_all(conn, schema, &shadow, &present).await?;
    if !dropped.is_empty() {
        tracing::info!(table, constraints = ?dropped, "foreign keys taken off the shadow");
    }
    Ok(())
}

/// Drops `constraints` (read from `schema.table`) in one ALTER, in place,
/// waiting for the metadata lock only as [`bounded_ddl`] does. Returns their names.
async fn drop_all(
    conn: &mut Conn,
    schema: &str,
    table: &str,
    constraints: &[ForeignKey],
) -> Result<Vec<String>, DbError> {
    if constraints.is_empty() {
        return Ok(Vec::new());
    }
    let drops: Vec<String> = constraints
        .iter()
        .map(|fk| format!("DROP FOREIGN KEY {}", quote_ident(&fk.name)))
        .collect();
    bounded_ddl(
        conn,
        &format!(
            "ALTER TABLE {}.{} {}",
            quote_ident(schema),
            quote_ident(table),
            drops.join(", ")
        ),
        Duration::from_secs(60),
    )
    .await?;
    Ok(constraints.iter().map(|fk| fk.name.clone()).collect())
}

/// How long the constraints' names are tried back after the cut-over.
const RESTORE_PATIENCE: Duration = Duration::from_secs(10);

/// Gives every constraint of `schema.table` that carries the shadow's mark
/// (`x_wraith`) its name without it (`x`), when no other constraint has
/// that name: one in-place ALTER (`DROP FOREIGN KEY x_wraith, ADD
/// CONSTRAINT x …`, `foreign_key_checks = 0`: no row is read, the
/// constraint is never missing) that never waits on a metadata lock
/// (`lock_wait_timeout = 0`: the application's writes never queue behind
/// it), tried for [`RESTORE_PATIENCE`]. Returns the names given back and
/// the ones kept (the table stayed busy, or the name is taken).
pub async fn restore_names(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<(Vec<String>, Vec<String>), DbError> {
    let marked: Vec<ForeignKey> = of_child(conn, schema, table)
        .await?
        .into_iter()
        .filter(|fk| fk.name.len() > SUFFIX.len() && fk.name.ends_with(SUFFIX))
        .collect();
    let (mut restored, mut kept) = (Vec::new(), Vec::new());
    let mut clauses = Vec::new();
    for fk in &marked {
        let original = &fk.name[..fk.name.len() - SUFFIX.len()];
        let taken: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND CONSTRAINT_NAME = ?",
                (schema, original),
            )
            .await
            .context(|| format!("looking for constraint {original}"))?;
        if taken.unwrap_or(0) > 0 {
            kept.push(fk.name.clone());
            continue;
        }
        clauses.push(format!("DROP FOREIGN KEY {}", quote_ident(&fk.name)));
        clauses.push(format!("ADD {}", fk.definition(original, &fk.parent)));
        restored.push((fk.name.clone(), original.to_string()));
    }
    if restored.is_empty() {
        return Ok((Vec::new(), kept));
    }
    let sql = format!(
        "SET STATEMENT foreign_key_checks = 0, lock_wait_timeout = 0 FOR \
         ALTER TABLE {}.{} {}, ALGORITHM=INPLACE, LOCK=NONE",
        quote_ident(schema),
        quote_ident(table),
        clauses.join(", ")
    );
    let started = Instant::now();
    loop {
        match conn.query_drop(&sql).await {
            Ok(()) => return Ok((restored.into_iter().map(|(_, to)| to).collect(), kept)),
            Err(mysql_async::Error::Server(e))
                if e.code == 1205 && started.elapsed() < RESTORE_PATIENCE =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::warn!(table, error = %e, "the constraints keep the shadow's names");
                kept.extend(restored.into_iter().map(|(from, _)| from));
                return Ok((Vec::new(), kept));
            }
        }
    }
}

/// What the run found of the constraints after the cut-over.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForeignKeysAfter {
    /// The live table's constraints, as `name (cols) -> parent (cols) …`.
    pub constraints: Vec<String>,
    /// Rows of the live table whose parent row is missing, over every constraint.
    pub orphans: u64,
    /// Constraints dropped from the old table.
    pub dropped_from_old: Vec<String>,
    /// The children's constraints that reference the live table, as
    /// `schema.child: name (cols) -> table (cols) …`.
    pub children: Vec<String>,
    /// Constraints (the table's and its children's) given their names back
    /// after the swap.
    pub names_restored: Vec<String>,
    /// Constraints that keep the shadow's name (`x_wraith`): the table
    /// stayed busy, or the name was taken. The next run gives it back.
    pub names_kept: Vec<String>,
}

/// After the cut-over of a child: drops the old table's constraints, then
/// checks that each constraint the source had is on the live table under
/// its shadow name, references the same parent, and that no row is an orphan.
pub async fn after_cutover(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<ForeignKeysAfter, ForeignKeyError> {
    let mut after = ForeignKeysAfter::default();
    let old = old_name(table);
    // The old table's constraints are the source's.
    let source = of_child(conn, schema, &old).await?;
    after.dropped_from_old = drop_all(conn, schema, &old, &source).await?;
    // The names are free again: the live table's constraints, and its
    // children's (re-pointed under the cut-over's lock), get them back.
    let mut named = vec![(schema.to_string(), table.to_string())];
    for c in children_of(conn, schema, table).await? {
        let t = (c.schema.clone(), c.table.clone());
        if !named.contains(&t) {
            named.push(t);
        }
    }
    for (s, t) in &named {
        let (restored, kept) = restore_names(conn, s, t).await?;
        after.names_restored.extend(restored);
        after.names_kept.extend(kept);
    }
    let live = of_child(conn, schema, table).await?;
    for fk in &source {
        let alt = alternate_name(&fk.name).map_err(ForeignKeyError::Invalid)?;
        let Some(now) = live.iter().find(|l| l.name == alt || l.name == fk.name) else {
            return Err(ForeignKeyError::Invalid(format!(
                "after the cut-over {table} lacks constraint {alt} (the source's {}); add it: ALTER TABLE {} ADD {}",
                fk.name,
                quote_ident(table),
                fk.definition(&fk.name, &fk.parent)
            )));
        };
        if now.parent != fk.parent || now.parent_schema != fk.parent_schema {
            return Err(ForeignKeyError::Invalid(format!(
                "after the cut-over constraint {} of {table} references {}.{}, not {}.{}",
                now.name, now.parent_schema, now.parent, fk.parent_schema, fk.parent
            )));
        }
        after.orphans += orphans(conn, now).await?;
        after.constraints.push(now.describe());
    }
    // Constraints the live table has besides (a resumed run's, whose old
    // table's were dropped already): no orphan either.
    for now in live.iter().filter(|l| {
        !source
            .iter()
            .any(|s| s.name == l.name || alternate_name(&s.name).is_ok_and(|a| a == l.name))
    }) {
        after.orphans += orphans(conn, now).await?;
        after.constraints.push(now.describe());
    }
    let (children, child_orphans) = check_children(conn, schema, table).await?;
    after.children = children;
    after.orphans += child_orphans;
    if after.orphans > 0 {
        return Err(ForeignKeyError::Invalid(format!(
            "after the cut-over {table} or its children have {} rows whose parent row is missing ({})",
            after.orphans,
            after.constraints.iter().chain(&after.children).cloned().collect::<Vec<_>>().join("; ")
        )));
    }
    Ok(after)
}

/// Rows of the constraint's table with every key column set and no parent
/// row (what the server would have refused): an anti-join.
pub async fn orphans(conn: &mut Conn, fk: &ForeignKey) -> Result<u64, DbError> {
    let not_null: Vec<String> = fk
        .columns
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let matches: Vec<String> = fk
        .columns
        .iter()
        .zip(&fk.parent_columns)
        .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
        .collect();
    let n: Option<u64> = conn
        .query_first(format!(
            "SELECT COUNT(*) FROM {}.{} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {}.{} p WHERE {})",
            quote_ident(&fk.schema),
            quote_ident(&fk.table),
            not_null.join(" AND "),
            quote_ident(&fk.parent_schema),
            quote_ident(&fk.parent),
            matches.join(" AND ")
        ))
        .await
        .context(|| format!("counting orphans of {}", fk.name))?;
    Ok(n.unwrap_or(0))
}

/// Size of a table from `information_schema.TABLES`: estimated rows and
/// data+index bytes.
pub async fn table_size(conn: &mut Conn, schema: &str, table: &str) -> Result<(u64, u64), DbError> {
    let row: Option<(Option<u64>, Option<u64>)> = conn
        .exec_first(
            "SELECT TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .context(|| format!("reading the size of {table}"))?;
    let (rows, bytes) = row.unwrap_or_default();
    Ok((rows.unwrap_or(0), bytes.unwrap_or(0)))
}

/// Measures, on this server, how long re-pointing one child constraint in
/// place takes: a throwaway parent and child (`_wraith_fk_probe_p`,
/// `_wraith_fk_probe_c` in `schema`), one `DROP FOREIGN KEY, ADD FOREIGN
/// KEY` with `foreign_key_checks = 0`, then both dropped. The statement
/// reads no row, so the child's size does not change it.
pub async fn measure_repoint(conn: &mut Conn, schema: &str) -> Result<Duration, DbError> {
    let qs = quote_ident(schema);
    let p = format!("{qs}.{}", quote_ident(crate::names::FK_PROBE_PARENT));
    let c = format!("{qs}.{}", quote_ident(crate::names::FK_PROBE_CHILD));
    let drop = format!("DROP TABLE IF EXISTS {c}, {p}");
    conn.query_drop(&drop)
        .await
        .context(|| "dropping the foreign-key probe tables".into())?;
    let result = async {
        conn.query_drop(format!(
            "CREATE TABLE {p} (id INT PRIMARY KEY) COMMENT 'wraith: foreign-key probe, drop it if no wraith runs'"
        ))
        .await?;
        conn.query_drop(format!(
            "CREATE TABLE {c} (id INT PRIMARY KEY, pid INT, KEY (pid), \
             CONSTRAINT `_wraith_fk_probe` FOREIGN KEY (pid) REFERENCES {p} (id)) \
             COMMENT 'wraith: foreign-key probe, drop it if no wraith runs'"
        ))
        .await?;
        let started = Instant::now();
        conn.query_drop(format!(
            "SET STATEMENT foreign_key_checks = 0, lock_wait_timeout = 1 FOR ALTER TABLE {c} \
             DROP FOREIGN KEY `_wraith_fk_probe`, \
             ADD CONSTRAINT `_wraith_fk_probe_wraith` FOREIGN KEY (pid) REFERENCES {p} (id)"
        ))
        .await?;
        Ok(started.elapsed())
    }
    .await;
    let _ = conn.query_drop(&drop).await;
    result.context(|| "measuring a constraint's re-pointing".into())
}

/// The children whose constraints must follow `table` to its shadow at the
/// cut-over: every constraint that references `schema.table`, except the
/// table's own (a self-reference, which preflight refuses).
pub async fn children_to_move(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, DbError> {
    Ok(children_of(conn, schema, table)
        .await?
        .into_iter()
        .filter(|c| !(c.schema == schema && c.table == table))
        .collect())
}

/// `LOCK TABLES` items for the children: each child table once, `WRITE`.
pub fn lock_items(children: &[ForeignKey]) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for c in children {
        let item = format!("{}.{} WRITE", quote_ident(&c.schema), quote_ident(&c.table));
        if !items.contains(&item) {
            items.push(item);
        }
    }
    items
}

/// Re-points each child constraint at `parent_schema.to`, one in-place
/// `ALTER` per child table (`DROP FOREIGN KEY name, ADD CONSTRAINT
/// alternate …`, `foreign_key_checks = 0`: no row is read). `no_wait` asks
/// for metadata locks without waiting (the cut-over's session A, which
/// holds every child and the parent under `LOCK TABLES`); otherwise each
/// request waits at most 1 s and is retried for a minute. Returns the
/// constraints as they are now.
pub async fn repoint(
    conn: &mut Conn,
    children: &[ForeignKey],
    to: &str,
    no_wait: bool,
) -> Result<Vec<ForeignKey>, ForeignKeyError> {
    let mut moved = Vec::with_capacity(children.len());
    let mut tables: Vec<(&str, &str)> = Vec::new();
    for c in children {
        if !tables.contains(&(c.schema.as_str(), c.table.as_str())) {
            tables.push((c.schema.as_str(), c.table.as_str()));
        }
    }
    for (schema, table) in tables {
        let mut clauses = Vec::new();
        for c in children
            .iter()
            .filter(|c| c.schema == schema && c.table == table)
        {
            let alt = alternate_name(&c.name).map_err(ForeignKeyError::Invalid)?;
            clauses.push(format!("DROP FOREIGN KEY {}", quote_ident(&c.name)));
            clauses.push(format!("ADD {}", c.definition(&alt, to)));
            moved.push(ForeignKey {
                name: alt,
                parent: to.to_string(),
                ..c.clone()
            });
        }
        let sql = format!(
            "ALTER TABLE {}.{} {}",
            quote_ident(schema),
            quote_ident(table),
            clauses.join(", ")
        );
        run_ddl(conn, &sql, no_wait).await?;
        // An index named after a constraint (the one the server made for
        // it) took the new constraint's name: it gets its own back.
        let indexes = index_names(conn, schema, table).await?;
        let renames: Vec<String> = children
            .iter()
            .filter(|c| c.schema == schema && c.table == table)
            .filter_map(|c| {
                let alt = alternate_name(&c.name).ok()?;
                (indexes.contains(&alt) && !indexes.contains(&c.name)).then(|| {
                    format!(
                        "RENAME INDEX {} TO {}",
                        quote_ident(&alt),
                        quote_ident(&c.name)
                    )
                })
            })
            .collect();
        if !renames.is_empty() {
            let sql = format!(
                "ALTER TABLE {}.{} {}",
                quote_ident(schema),
                quote_ident(table),
                renames.join(", ")
            );
            run_ddl(conn, &sql, no_wait).await?;
        }
        tracing::info!(child = table, parent = to, "child constraints re-pointed");
    }
    Ok(moved)
}

/// Puts back what an interrupted cut-over of `schema.table` left: child
/// constraints that reference the shadow (`_t_new`, re-pointed under a lock
/// that was then lost) or the old table (`_t_old`) are re-pointed at
/// `table`, the live one. Returns the constraints it moved. Waits for
/// metadata locks at most 1 s per request (retried).
pub async fn repair_children(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, ForeignKeyError> {
    if !crate::server::inspect::table_exists(conn, schema, table).await? {
        return Ok(Vec::new());
    }
    let mut stray = children_of(conn, schema, &shadow_name(table)).await?;
    stray.extend(children_of(conn, schema, &old_name(table)).await?);
    // The shadow's own constraints reference parents, not these names; a
    // table that references its own shadow is not a child to move.
    stray.retain(|c| {
        !(c.schema == schema && (c.table == shadow_name(table) || c.table == old_name(table)))
    });
    if stray.is_empty() {
        return Ok(stray);
    }
    tracing::warn!(
        table,
        constraints = %stray.iter().map(ForeignKey::describe).collect::<Vec<_>>().join("; "),
        "an interrupted cut-over left child constraints on another table than the live one; re-pointing them"
    );
    repoint(conn, &stray, table, false).await
}

/// After the cut-over of a parent: every child constraint references the
/// live table (none the old table or the shadow), and no child row is an
/// orphan. Returns the constraints, described, and the orphans found.
pub async fn check_children(
    conn: &mut Conn,
    schema: &str,
    table: &str,
) -> Result<(Vec<String>, u64), ForeignKeyError> {
    for stale in [old_name(table), shadow_name(table)] {
        let left = children_of(conn, schema, &stale).await?;
        if !left.is_empty() {
            return Err(ForeignKeyError::Invalid(format!(
                "after the cut-over, constraints reference {stale} instead of {table}: {}",
                left.iter()
                    .map(ForeignKey::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    }
    let mut described = Vec::new();
    let mut orphan_rows = 0;
    for c in children_to_move(conn, schema, table).await? {
        orphan_rows += orphans(conn, &c).await?;
        described.push(format!("{}.{}: {}", c.schema, c.table, c.describe()));
    }
    Ok((described, orphan_rows))
}

/// The children a cut-over moves: per swapped table, the constraints that
/// reference it. Only a forward swap (`t` → `_t_old`, `_t_new` → `t`)
/// moves children; what an interrupted cut-over left is put back first
/// ([`repair_children`]).
#[derive(Debug, Default)]
pub struct MovingChildren {
    /// (schema, table, shadow, constraints referencing the table).
    tables: Vec<(String, String, String, Vec<ForeignKey>)>,
}

impl MovingChildren {
    /// Reads them (and repairs first) on a session that holds no lock.
    pub async fn read(
        conn: &mut Conn,
        tables: &[crate::cutover::SwapTable],
    ) -> Result<MovingChildren, ForeignKeyError> {
        let mut out = MovingChildren::default();
        for t in tables {
            if t.incoming != shadow_name(&t.name) {
                continue;
            }
            repair_children(conn, &t.schema, &t.name).await?;
            let children = children_to_move(conn, &t.schema, &t.name).await?;
            if !children.is_empty() {
                out.tables.push((
                    t.schema.clone(),
                    t.name.clone(),
                    t.incoming.clone(),
                    children,
                ));
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// `, child WRITE, …` for session A's `LOCK TABLES` (empty without children).
    /// The child tables A locks with the parents, `(schema, table)`, each
    /// once: a session holding one would stall the lock as the parent's would.
    pub fn locked_tables(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for c in self.tables.iter().flat_map(|(_, _, _, c)| c.iter()) {
            let t = (c.schema.clone(), c.table.clone());
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    pub fn lock_items(&self) -> String {
        let all: Vec<ForeignKey> = self
            .tables
            .iter()
            .flat_map(|(_, _, _, c)| c.iter().cloned())
            .collect();
        lock_items(&all)
            .into_iter()
            .map(|i| format!(", {i}"))
            .collect()
    }

    /// Under session A's lock (every table, every child), after the drain
    /// and the verification: each child constraint now references the
    /// shadow, which the RENAME then makes the table. No wait: A holds
    /// every name the statements need.
    pub async fn to_shadows(&self, a: &mut Conn) -> Result<(), ForeignKeyError> {
        for (_, _, shadow, children) in &self.tables {
            repoint(a, children, shadow, true).await?;
        }
        Ok(())
    }

    /// After a failed attempt: constraints that reference a shadow are
    /// re-pointed at the table again. First on session A while it still
    /// holds the lock (no wait), else, once it let go, with bounded waits.
    pub async fn back(&self, a: &mut Conn, locked: bool) -> Result<(), ForeignKeyError> {
        for (schema, table, shadow, _) in &self.tables {
            let moved: Vec<ForeignKey> = children_of(a, schema, shadow)
                .await?
                .into_iter()
                .filter(|c| !(c.schema == *schema && c.table == *shadow))
                .collect();
            if !moved.is_empty() {
                repoint(a, &moved, table, locked).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_alternate_and_never_grow() {
        assert_eq!(alternate_name("fk_c_p").unwrap(), "fk_c_p_wraith");
        assert_eq!(alternate_name("fk_c_p_wraith").unwrap(), "fk_c_p");
        assert_eq!(alternate_name("_wraith").unwrap(), "_wraith_wraith");
        assert!(alternate_name(&"a".repeat(58)).is_err());
        assert!(alternate_name(&"a".repeat(57)).is_ok());
    }

    #[test]
    fn only_check_only_rules_keep_children_unchanged() {
        let mut fk = ForeignKey {
            name: "f".into(),
            schema: "s".into(),
            table: "c".into(),
            columns: vec!["pid".into()],
            parent_schema: "s".into(),
            parent: "p".into(),
            parent_columns: vec!["id".into()],
            on_update: "NO ACTION".into(),
            on_delete: "RESTRICT".into(),
        };
        assert!(!fk.changes_children());
        fk.on_delete = "CASCADE".into();
        assert!(fk.changes_children());
        fk.on_delete = "SET NULL".into();
        assert!(fk.changes_children());
        assert_eq!(
            fk.definition("g", "p2"),
            "CONSTRAINT `g` FOREIGN KEY (`pid`) REFERENCES `s`.`p2` (`id`) ON DELETE SET NULL ON UPDATE NO ACTION"
        );
        fk.on_delete = "RESTRICT".into();
        fk.on_update = "RESTRICT".into();
        assert_eq!(
            fk.definition("g", "p"),
            "CONSTRAINT `g` FOREIGN KEY (`pid`) REFERENCES `s`.`p` (`id`)"
        );
    }
}
