//! Privileges: `SHOW GRANTS` read line by line into [`Grant`]s (global,
//! database and table scope, with `LIKE` patterns in database names), and the
//! check that the job's user holds the table privileges a run needs on its
//! schema and the replication ones globally. A missing privilege fails the
//! check with the `GRANT` that fixes it. A `GRANT role TO` line grants no
//! privilege itself and is skipped: privileges held only through a role are
//! not seen.

use std::collections::BTreeSet;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::Report;
use crate::server::{quote_ident, Context, DbError, Flavor};

/// One `GRANT` line of `SHOW GRANTS`.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub privileges: BTreeSet<String>,
    /// `None` for `*.*`, else the database pattern.
    pub database: Option<String>,
    /// `Some` for table-level grants.
    pub table: Option<String>,
}

/// Parses one line of `SHOW GRANTS`; role grants and proxies give `None`.
pub fn parse_grant(line: &str) -> Option<Grant> {
    let rest = line.strip_prefix("GRANT ")?;
    let on = rest.find(" ON ")?;
    let privs = &rest[..on];
    let after = &rest[on + 4..];
    let scope = after.split(" TO ").next()?.trim();
    let scope = scope.strip_prefix("TABLE ").unwrap_or(scope);
    let mut privileges = BTreeSet::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in privs.chars() {
        match c {
            '(' => {
                depth += 1;
                // Column-level privileges do not cover the table.
                current.push_str("(COLUMNS");
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                privileges.insert(current.trim().to_ascii_uppercase());
                current.clear();
            }
            c if depth == 0 => current.push(c),
            _ => {}
        }
    }
    if !current.trim().is_empty() {
        privileges.insert(current.trim().to_ascii_uppercase());
    }
    let (db_part, table_part) = split_scope(scope)?;
    Some(Grant {
        privileges,
        database: (db_part != "*").then_some(db_part),
        table: (table_part != "*").then_some(table_part),
    })
}

fn split_scope(scope: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = scope.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                cur.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    match parts.as_slice() {
        [d, t] => Some((d.clone(), t.clone())),
        _ => None,
    }
}

/// SQL `LIKE` match as used by database names in grants (`\_` escapes).
fn like_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

pub(super) async fn check_privileges(
    conn: &mut Conn,
    flavor: Flavor,
    user: &str,
    database: &str,
    report: &mut Report,
) -> Result<(), DbError> {
    let lines: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .context(|| "reading the grants of the current user".into())?;
    let grants: Vec<Grant> = lines.iter().filter_map(|l| parse_grant(l)).collect();
    let global: BTreeSet<&str> = grants
        .iter()
        .filter(|g| g.database.is_none())
        .flat_map(|g| g.privileges.iter().map(String::as_str))
        .collect();
    let on_db: BTreeSet<&str> = grants
        .iter()
        .filter(|g| {
            g.table.is_none()
                && g.database
                    .as_deref()
                    .is_none_or(|d| like_match(d, database))
        })
        .flat_map(|g| g.privileges.iter().map(String::as_str))
        .collect();
    let all_global = global.contains("ALL PRIVILEGES") || global.contains("ALL");
    let all_db = all_global || on_db.contains("ALL PRIVILEGES") || on_db.contains("ALL");

    let table_privs = [
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "DROP",
        "ALTER",
        "LOCK TABLES",
    ];
    let missing_db: Vec<&str> = table_privs
        .iter()
        .copied()
        .filter(|p| !all_db && !on_db.contains(p))
        .collect();
    let client_priv = if flavor.is_mariadb() && flavor.version() >= (10, 5, 2) {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };
    let mut missing_global: Vec<&str> = Vec::new();
    if !all_global && !global.contains("REPLICATION SLAVE") {
        missing_global.push("REPLICATION SLAVE");
    }
    if !all_global && !global.contains("REPLICATION CLIENT") && !global.contains("BINLOG MONITOR") {
        missing_global.push(client_priv);
    }
    if missing_db.is_empty() && missing_global.is_empty() {
        report.ok(
            "privileges",
            format!("{user} has what wraith needs on {database}"),
        );
        return Ok(());
    }
    let mut fixes = Vec::new();
    if !missing_db.is_empty() {
        fixes.push(format!(
            "GRANT {} ON {}.* TO '{user}'@'<host>';",
            missing_db.join(", "),
            quote_ident(database)
        ));
    }
    if !missing_global.is_empty() {
        fixes.push(format!(
            "GRANT {} ON *.* TO '{user}'@'<host>';",
            missing_global.join(", ")
        ));
    }
    let missing: Vec<&str> = missing_db
        .iter()
        .chain(missing_global.iter())
        .copied()
        .collect();
    report.fail(
        "privileges",
        format!(
            "{user} lacks {} (needed to copy, to stream the binlog and to swap tables)",
            missing.join(", ")
        ),
        fixes.join(" "),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grants() {
        let g =
            parse_grant("GRANT SELECT, INSERT, UPDATE (a, b), LOCK TABLES ON `app`.* TO `u`@`%`")
                .unwrap();
        assert!(g.privileges.contains("SELECT"));
        assert!(g.privileges.contains("LOCK TABLES"));
        assert!(!g.privileges.contains("UPDATE"));
        assert_eq!(g.database.as_deref(), Some("app"));
        assert_eq!(g.table, None);
        let g = parse_grant(
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*x'",
        )
        .unwrap();
        assert!(g.privileges.contains("BINLOG MONITOR"));
        assert_eq!(g.database, None);
        let g = parse_grant("GRANT ALL PRIVILEGES ON `a.b`.`t` TO `u`@`h`").unwrap();
        assert_eq!(g.database.as_deref(), Some("a.b"));
        assert_eq!(g.table.as_deref(), Some("t"));
        assert!(parse_grant("GRANT `role` TO `u`@`%`").is_none());
    }

    #[test]
    fn like_patterns() {
        assert!(like_match("app\\_%", "app_1"));
        assert!(!like_match("app\\_%", "appx1"));
        assert!(like_match("a_c", "abc"));
    }
}
