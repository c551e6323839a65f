//! The names a swap touches, the marker tables of the two-session swap, and
//! what an interrupted cut-over left.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use super::{CutoverError, SwapTable};
use crate::server::{quote_ident, Context};
use crate::shadow::{old_name, shadow_name};

/// The quoted names of one table in a swap.
pub(super) struct TableNames {
    /// The table's name as given (unquoted).
    pub(super) name: String,
    /// Its schema (unquoted).
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) old: String,
    pub(super) new: String,
    /// The table that becomes the live one (unquoted).
    pub(super) incoming: String,
    /// Exists while wraith holds the table; the RENAME's marker pair
    /// renames `swap` onto it, so the RENAME fails as long as it exists.
    pub(super) sentry: String,
    pub(super) swap: String,
    /// Whether the table's triggers are carried to `incoming`.
    pub(super) carry_triggers: bool,
    /// The table the live one becomes (unquoted).
    pub(super) retired: String,
    /// The implicit values `incoming` holds as DEFAULTs until the locked phase.
    pub(super) implicit_values: Vec<crate::implicit::ImplicitValue>,
}

/// The quoted names a two-session swap touches: every table of the group,
/// each with its own sentry, in the server's lock order.
pub(super) struct SwapNames {
    /// In the order the server takes the RENAME's locks: the RENAME queues
    /// on the first, and is handed the others one after another.
    pub(super) tables: Vec<TableNames>,
    /// Every name of the RENAME (schema, name; unquoted), for the lock order.
    all: Vec<(String, String)>,
    lower_case: bool,
}

impl SwapNames {
    pub(super) fn new(tables: &[SwapTable], lower_case: bool) -> SwapNames {
        let mut sorted: Vec<&SwapTable> = tables.iter().collect();
        sorted.sort_by_key(|t| lock_key(&t.schema, &t.name, lower_case));
        let all = sorted
            .iter()
            .flat_map(|t| {
                [
                    t.name.clone(),
                    t.retired.clone(),
                    t.incoming.clone(),
                    sentry_name(&t.name),
                    swap_name(&t.name),
                ]
                .map(|n| (t.schema.clone(), n))
            })
            .collect();
        SwapNames {
            tables: sorted
                .into_iter()
                .map(|t| {
                    let qs = quote_ident(&t.schema);
                    let q = |name: &str| format!("{qs}.{}", quote_ident(name));
                    TableNames {
                        name: t.name.clone(),
                        schema: t.schema.clone(),
                        table: q(&t.name),
                        old: q(&t.retired),
                        new: q(&t.incoming),
                        incoming: t.incoming.clone(),
                        sentry: q(&sentry_name(&t.name)),
                        swap: q(&swap_name(&t.name)),
                        carry_triggers: t.carry_triggers,
                        retired: t.retired.clone(),
                        implicit_values: t.implicit_values.clone(),
                    }
                })
                .collect(),
            all,
            lower_case,
        }
    }

    /// The one statement that swaps every table.
    pub(super) fn rename(&self) -> String {
        // The marker pairs first: while any sentry exists the statement
        // fails at its pair, before renaming a table.
        let markers = self
            .tables
            .iter()
            .map(|t| format!("{} TO {}", t.swap, t.sentry));
        let pairs = self
            .tables
            .iter()
            .map(|t| format!("{} TO {}, {} TO {}", t.table, t.old, t.new, t.table));
        format!(
            "RENAME TABLE {}",
            markers.chain(pairs).collect::<Vec<_>>().join(", ")
        )
    }

    /// Session A's lock: every table and every sentry, in one statement.
    pub(super) fn lock_all(&self) -> String {
        let names = self
            .tables
            .iter()
            .map(|t| format!("{} WRITE", t.table))
            .chain(self.tables.iter().map(|t| format!("{} WRITE", t.sentry)));
        format!("LOCK TABLES {}", names.collect::<Vec<_>>().join(", "))
    }

    /// Of the RENAME's names, the last that sorts before table `k` in the
    /// server's lock order, quoted: once the RENAME holds it, it waits on
    /// that table.
    pub(super) fn passed_before(&self, k: usize) -> Option<String> {
        let t = self.tables.get(k)?;
        let key = |schema: &str, name: &str| lock_key(schema, name, self.lower_case);
        let target = key(&t.schema, &t.name);
        self.all
            .iter()
            .filter(|(s, n)| key(s, n) < target)
            .max_by_key(|(s, n)| key(s, n))
            .map(|(s, n)| format!("{}.{}", quote_ident(s), quote_ident(n)))
    }
}

/// A name as the server orders metadata locks: by schema, then name
/// (bytes, lowercased under `lower_case_table_names`).
fn lock_key(schema: &str, name: &str, lower_case: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(schema.len() + name.len() + 1);
    for (i, part) in [schema, name].into_iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        if lower_case {
            key.extend(part.to_lowercase().into_bytes());
        } else {
            key.extend(part.as_bytes());
        }
    }
    key
}

pub use crate::names::{sentry_name, swap_name};

/// Drops the sentry and swap marker an earlier attempt or run left; a table
/// of that name without wraith's comment is someone else's and stops the
/// cut-over.
pub async fn drop_markers(conn: &mut Conn, schema: &str, table: &str) -> Result<(), CutoverError> {
    let qs = quote_ident(schema);
    for name in [sentry_name(table), swap_name(table)] {
        let comment: Option<String> = conn
            .exec_first(
                "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (schema, &name),
            )
            .await
            .context(|| format!("looking for {name}"))?;
        match comment {
            None => {}
            Some(c) if c.starts_with(MARKER_COMMENT) => {
                conn.query_drop(format!("DROP TABLE IF EXISTS {qs}.{}", quote_ident(&name)))
                    .await
                    .context(|| format!("dropping the cut-over marker {name}"))?;
            }
            Some(_) => {
                return Err(CutoverError::NameTaken {
                    schema: schema.to_string(),
                    name,
                })
            }
        }
    }
    Ok(())
}

/// Where a cut-over that was interrupted (kill -9 of wraith) left the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CutoverState {
    /// Nothing was renamed: `t` is the original, `_t_new` the shadow.
    NotDone,
    /// The RENAME ran: `t` is the rebuilt table and `_t_old` the original.
    Done,
}

/// Every cut-over marker table's comment starts with this.
pub(super) const MARKER_COMMENT: &str = "wraith cut-over";
/// The comment of the sentry table.
pub(super) const SENTRY_COMMENT: &str = "wraith cut-over sentry";
/// The comment of the table the RENAME moves onto the sentry's name.
pub(super) const SWAP_COMMENT: &str = "wraith cut-over swap marker";

/// Looks at which tables exist after an interrupted cut-over, drops leftover
/// markers, and says whether the swap happened. The swap is one RENAME
/// statement, so it either happened or not: `t` is never missing.
pub async fn resolve_interrupted(
    pool: &Pool,
    schema: &str,
    table: &str,
) -> Result<CutoverState, CutoverError> {
    let mut conn = pool
        .get_conn()
        .await
        .context(|| "connecting to look at the tables".into())?;
    let old = old_name(table);
    let new = shadow_name(table);
    let comment: Option<String> = conn
        .exec_first(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, &old),
        )
        .await
        .context(|| format!("looking for {old}"))?;
    let shadow_exists = crate::server::inspect::table_exists(&mut conn, schema, &new).await?;
    drop_markers(&mut conn, schema, table).await?;
    let state = match comment {
        // A sentry under `_t_old`, as earlier versions of wraith made it.
        Some(c) if c.starts_with(SENTRY_COMMENT) => {
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS {}.{}",
                quote_ident(schema),
                quote_ident(&old)
            ))
            .await
            .context(|| "dropping a leftover cut-over sentry".into())?;
            CutoverState::NotDone
        }
        Some(_) if !shadow_exists => CutoverState::Done,
        _ => CutoverState::NotDone,
    };
    if state == CutoverState::NotDone {
        tracing::info!(table, "an interrupted cut-over renamed nothing");
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_names_sort_after_the_table() {
        for t in ["sbtest", "Users", "t", "_x", "Ä"] {
            assert!(sentry_name(t).as_bytes() > t.as_bytes());
            assert!(swap_name(t).as_bytes() > t.as_bytes());
        }
    }

    #[test]
    fn the_last_name_before_the_table_is_probed() {
        let probe = |tables: &[&str], lower: bool, k: usize| {
            SwapNames::new(&swap("db", tables), lower).passed_before(k)
        };
        // `_sbtest_new` < `_sbtest_old` < `sbtest`: holding `_sbtest_old` means
        // the RENAME queues on `sbtest`.
        assert_eq!(
            probe(&["sbtest"], false, 0).as_deref(),
            Some("`db`.`_sbtest_old`")
        );
        // `Users` < `_Users_new`: the RENAME queues on `Users` first.
        assert_eq!(probe(&["Users"], false, 0), None);
        // With lower_case_table_names the server compares `users`.
        assert_eq!(
            probe(&["Users"], true, 0).as_deref(),
            Some("`db`.`_Users_old`")
        );
        // Several tables: `order` first, then `order_items`, reached after
        // `order` (whose sentry sorts after `order_items`).
        let names = SwapNames::new(&swap("db", &["order_items", "order"]), false);
        assert_eq!(names.tables[0].name, "order");
        assert_eq!(names.passed_before(1).as_deref(), Some("`db`.`order`"));
    }

    fn swap(schema: &str, tables: &[&str]) -> Vec<SwapTable> {
        tables
            .iter()
            .map(|t| SwapTable::forward(schema, t))
            .collect()
    }

    #[test]
    fn tables_of_several_schemas_are_ordered_by_schema_first() {
        let mut tables = swap("b_app", &["a"]);
        tables.extend(swap("a_app", &["z"]));
        let names = SwapNames::new(&tables, false);
        assert_eq!(names.tables[0].table, "`a_app`.`z`");
        assert_eq!(names.passed_before(1).as_deref(), Some("`b_app`.`_a_old`"));
    }

    #[test]
    fn one_rename_swaps_every_table_after_the_markers() {
        let names = SwapNames::new(&swap("s", &["b", "a"]), false);
        assert_eq!(
            names.rename(),
            "RENAME TABLE `s`.`a_wraith_swap` TO `s`.`a_wraith_sentry`, `s`.`b_wraith_swap` TO \
             `s`.`b_wraith_sentry`, `s`.`a` TO `s`.`_a_old`, `s`.`_a_new` TO `s`.`a`, `s`.`b` TO \
             `s`.`_b_old`, `s`.`_b_new` TO `s`.`b`"
        );
        assert_eq!(
            names.lock_all(),
            "LOCK TABLES `s`.`a` WRITE, `s`.`b` WRITE, `s`.`a_wraith_sentry` WRITE, `s`.`b_wraith_sentry` WRITE"
        );
    }
}
