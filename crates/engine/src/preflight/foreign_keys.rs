//! The foreign keys a rebuilt table takes part in, as child or parent:
//! listed with what the run does to each, or refused with the reason (see
//! [`crate::foreign_keys`] for the design).

use mysql_async::Conn;

use super::Report;
use crate::config::{ChildrenPolicy, Config, TableConfig};
use crate::foreign_keys::{alternate_name, children_of, measure_repoint, of_child, table_size};
use crate::server::inspect::TableInfo;
use crate::server::DbError;

pub(super) async fn check_foreign_keys(
    conn: &mut Conn,
    config: &Config,
    table: &TableConfig,
    t: &TableInfo,
    report: &mut Report,
) -> Result<(), DbError> {
    let name = format!("foreign keys {}", t.name);
    let parents = of_child(conn, &t.schema, &t.name).await?;
    let children = children_of(conn, &t.schema, &t.name).await?;
    let mut refused = false;
    let mut fail = |report: &mut Report, problem: String, fix: String| {
        refused = true;
        report.fail(&name, problem, fix);
    };
    if mentions_foreign_keys(&table.alter) {
        fail(
            report,
            format!("the ALTER of {} adds or drops a foreign key; wraith writes the shadow without foreign-key checks, so a new constraint would not be validated", t.name),
            format!("leave the foreign keys out of the ALTER and change them with the server's own ALTER TABLE {} before or after the rebuild", t.name),
        );
    }
    if parents.is_empty() && children.is_empty() {
        if !mentions_foreign_keys(&table.alter) {
            report.ok(&name, "none");
        }
        return Ok(());
    }
    if config.target.is_some() {
        fail(
            report,
            format!("{} takes part in foreign keys, and its shadow is on another server ([target]), where its constraints cannot reference their tables", t.name),
            "rebuild it on the source server (remove [target])".into(),
        );
    }
    if config.cutover.revert_window.is_some() {
        fail(
            report,
            format!("{} takes part in foreign keys; the revert window keeps the old table in step after the cut-over, and its constraints would have to move back and forth with it, which wraith does not do", t.name),
            "remove [cutover] revert_window for this table".into(),
        );
    }
    for fk in &parents {
        if fk.parent == t.name && fk.parent_schema == t.schema {
            fail(
                report,
                format!("{} references itself ({}); its shadow's constraint would have to reference the shadow during the copy and the table after the swap", t.name, fk.describe()),
                format!("drop the constraint for the rebuild (ALTER TABLE {} DROP FOREIGN KEY {}) and add it back after", t.name, fk.name),
            );
            continue;
        }
        if fk.changes_children() {
            fail(
                report,
                format!(
                    "constraint {} changes rows of {} by itself (ON DELETE {} ON UPDATE {}); the server does not write \
                     those changes to the binlog, so wraith's change stream would miss them and the new table would keep rows the old one lost",
                    fk.describe(), t.name, fk.on_delete, fk.on_update
                ),
                format!(
                    "change the constraint to ON DELETE RESTRICT ON UPDATE RESTRICT for the rebuild (and back after), \
                     or use the server's own ALTER TABLE {}", t.name
                ),
            );
            continue;
        }
        match alternate_name(&fk.name) {
            Ok(alt) => report.ok(
                &name,
                format!(
                    "child: {} is added to the shadow as {alt} once the copy is done (in place, no scan); \
                     after the cut-over the table keeps it as {alt}, the old table's is dropped, and no row may be an orphan",
                    fk.describe()
                ),
            ),
            Err(why) => fail(report, why, "rename the constraint, then run again".into()),
        }
    }
    let others: Vec<_> = children
        .iter()
        .filter(|c| !(c.table == t.name && c.schema == t.schema))
        .collect();
    if !others.is_empty() {
        let per_child = measure_repoint(conn, &t.schema).await?;
        let mut costs = Vec::new();
        for c in &others {
            let (rows, bytes) = table_size(conn, &c.schema, &c.table).await?;
            costs.push(format!(
                "{}.{} (constraint {}, ~{rows} rows, {:.1} MiB)",
                c.schema,
                c.table,
                c.describe(),
                bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        let held_ms = per_child.as_secs_f64() * 1000.0 * others.len() as f64;
        let cost = format!(
            "re-pointing each child's constraint is an in-place change that reads no row, measured on this server at {:.0} ms \
             per child whatever its size: ~{held_ms:.0} ms more under the cut-over's lock for {} children",
            per_child.as_secs_f64() * 1000.0,
            others.len()
        );
        match config.foreign_keys.children {
            ChildrenPolicy::Refuse => fail(
                report,
                format!(
                    "{} is referenced by other tables' foreign keys: {}; after the swap their constraints would reference the old table. {cost}",
                    t.name,
                    costs.join("; ")
                ),
                "set [foreign_keys] children = \"rebuild\" to re-point the children at the new table during the cut-over, \
                 or drop their constraints for the rebuild"
                    .into(),
            ),
            ChildrenPolicy::Rebuild if config.tables.len() > 1 => fail(
                report,
                format!(
                    "{} is referenced by {}, and is rebuilt in a group of {} tables; wraith re-points children only in a one-table cut-over",
                    t.name,
                    costs.join("; "),
                    config.tables.len()
                ),
                "rebuild the parent in a job of its own".into(),
            ),
            ChildrenPolicy::Rebuild if !report.flavor.is_some_and(|f| f.is_mariadb()) => fail(
                report,
                format!(
                    "{} is referenced by {}; re-pointing children during the cut-over is measured and supported on MariaDB only",
                    t.name,
                    costs.join("; ")
                ),
                "drop the children's constraints for the rebuild and add them back after".into(),
            ),
            ChildrenPolicy::Rebuild => report.ok(
                &name,
                format!(
                    "parent: children {}; under the cut-over's lock (which then also holds each child) every child's \
                     constraint is re-pointed at the shadow, which the RENAME makes {}; the constraints get their \
                     names back after the swap. {cost}",
                    costs.join("; "),
                    t.name
                ),
            ),
        }
    }
    if !refused && !parents.is_empty() {
        report.ok(
            &name,
            "the copy and the apply write the shadow with foreign_key_checks = 0 (the rows are the source's, already checked); \
             the checksum proves the shadow equals the source",
        );
    }
    Ok(())
}

/// Whether an ALTER's text names a foreign key (`FOREIGN KEY`, `REFERENCES`):
/// checked as words, outside quotes.
fn mentions_foreign_keys(alter: &str) -> bool {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for ch in alter.chars() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if matches!(ch, '\'' | '"' | '`') => {
                quote = Some(ch);
                words.push(std::mem::take(&mut word));
            }
            None if ch.is_ascii_alphanumeric() || ch == '_' => word.push(ch.to_ascii_uppercase()),
            None => words.push(std::mem::take(&mut word)),
        }
    }
    words.push(word);
    words.iter().any(|w| w == "FOREIGN" || w == "REFERENCES")
}

#[cfg(test)]
mod tests {
    use super::mentions_foreign_keys;

    #[test]
    fn foreign_key_clauses_are_found_outside_quotes() {
        assert!(mentions_foreign_keys(
            "ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES p(id)"
        ));
        assert!(mentions_foreign_keys("drop foreign key f"));
        assert!(!mentions_foreign_keys("ADD COLUMN foreign_id INT"));
        assert!(!mentions_foreign_keys(
            "ADD COLUMN x INT COMMENT 'REFERENCES p'"
        ));
        assert!(!mentions_foreign_keys("ADD COLUMN `references` INT"));
    }
}
