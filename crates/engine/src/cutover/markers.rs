//! The names a swap touches, the marker tables of the two-session swap, and
//! what an interrupted cut-over left.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use serde::Serialize;

use super::CutoverError;
use crate::server::{quote_ident, Context};
use crate::shadow::{old_name, shadow_name};

/// The quoted names one two-session swap touches.
pub(super) struct SwapNames {
    pub(super) table: String,
    pub(super) old: String,
    pub(super) new: String,
    /// Exists while A holds the lock; the RENAME's last pair renames `swap`
    /// onto it, so the RENAME fails as long as it exists.
    pub(super) sentry: String,
    pub(super) swap: String,
}

impl SwapNames {
    pub(super) fn new(schema: &str, table: &str) -> SwapNames {
        let qs = quote_ident(schema);
        let q = |name: &str| format!("{qs}.{}", quote_ident(name));
        SwapNames {
            table: q(table),
            old: q(&old_name(table)),
            new: q(&shadow_name(table)),
            sentry: q(&sentry_name(table)),
            swap: q(&swap_name(table)),
        }
    }

    pub(super) fn rename(&self) -> String {
        // The marker pair first: while the sentry exists the statement fails
        // at its first pair, before renaming anything.
        format!(
            "RENAME TABLE {} TO {}, {} TO {}, {} TO {}",
            self.swap, self.sentry, self.table, self.old, self.new, self.table
        )
    }
}

pub use crate::names::{sentry_name, swap_name};

/// Of `_t_new` and `_t_old`, the last that sorts before `t` in the server's
/// lock order, if any: once the RENAME holds it, it is waiting on `t`.
pub(super) fn passed_before_table(table: &str, lower_case: bool) -> Option<String> {
    let key = |n: &str| {
        if lower_case {
            n.to_lowercase()
        } else {
            n.to_string()
        }
    };
    [old_name(table), shadow_name(table)]
        .into_iter()
        .find(|n| key(n).as_bytes() < key(table).as_bytes())
}

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
        // `_sbtest_new` < `_sbtest_old` < `sbtest`: holding `_sbtest_old` means
        // the RENAME queues on `sbtest`.
        assert_eq!(
            passed_before_table("sbtest", false).as_deref(),
            Some("_sbtest_old")
        );
        // `Users` < `_Users_new`: the RENAME queues on `Users` first.
        assert_eq!(passed_before_table("Users", false), None);
        // With lower_case_table_names the server compares `users`.
        assert_eq!(
            passed_before_table("Users", true).as_deref(),
            Some("_Users_old")
        );
    }
}
