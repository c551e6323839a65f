//! Does a QUERY event's statement change a followed table?
//!
//! A small tokenizer (identifiers with backticks, strings, comments, MySQL's
//! executable comments `/*! ... */` and MariaDB's `/*M! ... */`, whose
//! contents count as code) and a parser for the statements that change or
//! remove a table: `ALTER TABLE`, `DROP TABLE`, `RENAME TABLE`, `TRUNCATE`,
//! `CREATE OR REPLACE TABLE`, `CREATE ... INDEX ... ON`, `DROP INDEX ... ON`
//! and `DROP DATABASE` of a followed table's schema. Unqualified names take the
//! event's default schema. Names compare ASCII case-insensitively, which can
//! only stop a run that could have gone on, never miss a change.
//! `CREATE TABLE ... LIKE t`, `DROP TEMPORARY TABLE`, DML and everything else
//! pass. A statement is parsed once, whatever the number of followed tables.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word or a quoted identifier; `quoted` identifiers are never keywords.
    Ident {
        text: String,
        quoted: bool,
    },
    Sym(char),
    /// A string literal or number: only its position matters.
    Other,
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
            {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Executable comments: skip the marker and version, keep the body.
                let mut j = i + 2;
                if b.get(j) == Some(&b'M') && b.get(j + 1) == Some(&b'!') {
                    j += 2;
                } else if b.get(j) == Some(&b'!') {
                    j += 1;
                } else {
                    match sql[j..].find("*/") {
                        Some(end) => i = j + end + 2,
                        None => i = b.len(),
                    }
                    continue;
                }
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                i = j;
            }
            b'*' if b.get(i + 1) == Some(&b'/') => i += 2,
            b'`' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match sql[j..].find('`') {
                        Some(k) => {
                            text.push_str(&sql[j..j + k]);
                            j += k + 1;
                            if b.get(j) == Some(&b'`') {
                                text.push('`');
                                j += 1;
                            } else {
                                break;
                            }
                        }
                        None => {
                            text.push_str(&sql[j..]);
                            j = b.len();
                            break;
                        }
                    }
                }
                out.push(Tok::Ident { text, quoted: true });
                i = j;
            }
            b'\'' | b'"' => {
                let q = c;
                let mut j = i + 1;
                while j < b.len() {
                    if b[j] == b'\\' {
                        j += 2;
                    } else if b[j] == q {
                        if b.get(j + 1) == Some(&q) {
                            j += 2;
                        } else {
                            j += 1;
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                out.push(Tok::Other);
                i = j.min(b.len());
            }
            _ if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Tok::Ident {
                    text: sql[start..i].to_string(),
                    quoted: false,
                });
            }
            _ => {
                out.push(Tok::Sym(c as char));
                i += 1;
            }
        }
    }
    out
}

struct Parser<'a> {
    toks: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.i), Some(Tok::Ident { text, quoted: false }) if text.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.peek_kw(kw);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn eat_kws(&mut self, kws: &[&str]) -> bool {
        let save = self.i;
        for k in kws {
            if !self.eat_kw(k) {
                self.i = save;
                return false;
            }
        }
        true
    }

    fn eat_sym(&mut self, c: char) -> bool {
        let hit = self.toks.get(self.i) == Some(&Tok::Sym(c));
        if hit {
            self.i += 1;
        }
        hit
    }

    fn ident(&mut self) -> Option<String> {
        match self.toks.get(self.i) {
            Some(Tok::Ident { text, .. }) => {
                self.i += 1;
                Some(text.clone())
            }
            _ => None,
        }
    }

    /// `name` or `schema.name`.
    fn table_name(&mut self, default_schema: &str) -> Option<(String, String)> {
        let first = self.ident()?;
        if self.eat_sym('.') {
            let second = self.ident()?;
            Some((first, second))
        } else {
            Some((default_schema.to_string(), first))
        }
    }

    /// A literal (a number, as in `WAIT 5`).
    fn other(&mut self) -> bool {
        let hit = self.toks.get(self.i) == Some(&Tok::Other);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn skip_until_kw(&mut self, kw: &str) -> bool {
        while self.i < self.toks.len() {
            if self.eat_kw(kw) {
                return true;
            }
            self.i += 1;
        }
        false
    }
}

/// What a statement changes: tables by `(schema, name)`, or a whole schema.
#[derive(Debug, Default, PartialEq, Eq)]
struct Touched {
    names: Vec<(String, String)>,
    schema: Option<String>,
    /// The names a RENAME gives (its `TO` sides).
    renamed_to: Vec<(String, String)>,
}

impl Touched {
    fn hits(&self, schema: &str, table: &str) -> bool {
        self.schema
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(schema))
            || self
                .names
                .iter()
                .any(|n| n.0.eq_ignore_ascii_case(schema) && n.1.eq_ignore_ascii_case(table))
    }
}

/// Of `tables` (`(schema, table)`), the index of the first one that `sql`,
/// run with default schema `default_schema`, alters, drops, renames,
/// truncates or replaces.
#[cfg(test)]
pub(crate) fn first_touched<'a>(
    sql: &str,
    default_schema: &str,
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<usize> {
    all_touched(sql, default_schema, tables).first().copied()
}

/// Of `tables` (`(schema, table)`), the indexes of every one that `sql`,
/// run with default schema `default_schema`, alters, drops, renames,
/// truncates or replaces, in their order.
pub(crate) fn all_touched<'a>(
    sql: &str,
    default_schema: &str,
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<usize> {
    let touched = touched(sql, default_schema);
    if touched == Touched::default() {
        return Vec::new();
    }
    tables
        .into_iter()
        .enumerate()
        .filter(|(_, (schema, table))| touched.hits(schema, table))
        .map(|(i, _)| i)
        .collect()
}

/// Of `tables`, the indexes of every one that `sql` (a `RENAME TABLE`)
/// renames another table to, in their order.
pub(crate) fn renamed_into<'a>(
    sql: &str,
    default_schema: &str,
    tables: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<usize> {
    let touched = touched(sql, default_schema);
    tables
        .into_iter()
        .enumerate()
        .filter(|(_, (schema, table))| {
            touched
                .renamed_to
                .iter()
                .any(|n| n.0.eq_ignore_ascii_case(schema) && n.1.eq_ignore_ascii_case(table))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether `sql`, run with default schema `default_schema`, alters, drops,
/// renames, truncates or replaces `schema.table`.
#[cfg(test)]
fn touches_table(sql: &str, default_schema: &str, schema: &str, table: &str) -> bool {
    first_touched(sql, default_schema, [(schema, table)]).is_some()
}

fn touched(sql: &str, default_schema: &str) -> Touched {
    let toks = tokenize(sql);
    let mut p = Parser { toks: &toks, i: 0 };
    let mut names: Vec<(String, String)> = Vec::new();
    let mut renamed_to: Vec<(String, String)> = Vec::new();
    if p.eat_kw("ALTER") {
        p.eat_kw("ONLINE");
        p.eat_kw("IGNORE");
        if !p.eat_kw("TABLE") {
            return Touched::default();
        }
        p.eat_kws(&["IF", "EXISTS"]);
        names.extend(p.table_name(default_schema));
    } else if p.eat_kw("DROP") {
        if p.eat_kw("DATABASE") || p.eat_kw("SCHEMA") {
            p.eat_kws(&["IF", "EXISTS"]);
            return Touched {
                names,
                schema: p.ident(),
                renamed_to,
            };
        }
        if p.eat_kw("TEMPORARY") {
            return Touched::default();
        }
        if p.eat_kw("TABLE") || p.eat_kw("TABLES") {
            p.eat_kws(&["IF", "EXISTS"]);
            loop {
                p.eat_kw("WAIT");
                match p.table_name(default_schema) {
                    Some(n) => names.push(n),
                    None => break,
                }
                if !p.eat_sym(',') {
                    break;
                }
            }
        } else {
            p.eat_kw("ONLINE");
            p.eat_kw("OFFLINE");
            if p.eat_kw("INDEX") && p.skip_until_kw("ON") {
                names.extend(p.table_name(default_schema));
            }
        }
    } else if p.eat_kw("RENAME") {
        if !(p.eat_kw("TABLE") || p.eat_kw("TABLES")) {
            return Touched::default();
        }
        p.eat_kws(&["IF", "EXISTS"]);
        while let Some(n) = p.table_name(default_schema) {
            names.push(n);
            if p.eat_kw("WAIT") {
                p.other();
            }
            p.eat_kw("NOWAIT");
            if !p.eat_kw("TO") {
                break;
            }
            let to = p.table_name(default_schema);
            renamed_to.extend(to.clone());
            names.extend(to);
            if !p.eat_sym(',') {
                break;
            }
        }
    } else if p.eat_kw("TRUNCATE") {
        p.eat_kw("TABLE");
        names.extend(p.table_name(default_schema));
    } else if p.eat_kw("CREATE") {
        let replace = p.eat_kws(&["OR", "REPLACE"]);
        p.eat_kw("ONLINE");
        p.eat_kw("OFFLINE");
        if p.eat_kw("TEMPORARY") {
            return Touched::default();
        }
        if p.eat_kw("TABLE") {
            if replace {
                names.extend(p.table_name(default_schema));
            }
        } else {
            // CREATE [UNIQUE|FULLTEXT|SPATIAL] INDEX name ... ON t
            p.eat_kw("UNIQUE");
            p.eat_kw("FULLTEXT");
            p.eat_kw("SPATIAL");
            if p.eat_kw("INDEX") && p.skip_until_kw("ON") {
                names.extend(p.table_name(default_schema));
            }
        }
    }
    Touched {
        names,
        schema: None,
        renamed_to,
    }
}

#[cfg(test)]
mod tests {
    use super::{first_touched, renamed_into, touches_table};

    #[test]
    fn a_rename_names_the_tables_it_renames_into() {
        let tables = [("app", "t"), ("app", "u")];
        let into = |sql: &str| renamed_into(sql, "app", tables);
        assert_eq!(into("RENAME TABLE t TO _t_old, _t_new TO t"), vec![0]);
        assert_eq!(
            into("RENAME TABLE `app`.`x` TO app.u, y TO `T`"),
            vec![0, 1]
        );
        assert!(into("RENAME TABLE t TO _t_new, _t_old TO t_other").is_empty());
        assert!(into("ALTER TABLE t RENAME TO u").is_empty());
        assert!(into("RENAME TABLE t TO other.t").is_empty());
    }

    fn hit(sql: &str) -> bool {
        touches_table(sql, "app", "app", "t")
    }

    #[test]
    fn finds_ddl_on_the_table() {
        assert!(hit("ALTER TABLE t ADD COLUMN x INT"));
        assert!(hit("alter online table `app`.`t` force"));
        assert!(hit("ALTER TABLE IF EXISTS `T` ENGINE=InnoDB"));
        assert!(hit("/* hi */ ALTER TABLE app . t DROP x"));
        assert!(hit("DROP TABLE `x`, `t` /* generated by server */"));
        assert!(hit("DROP TABLE IF EXISTS other.x, app.t"));
        assert!(hit("RENAME TABLE t TO t_old, t_new TO t"));
        assert!(hit("RENAME TABLE a TO b, `app`.`t` TO c"));
        assert!(hit("TRUNCATE t"));
        assert!(hit("truncate table `app`.`t`"));
        assert!(hit("CREATE OR REPLACE TABLE t (id int)"));
        assert!(hit("CREATE UNIQUE INDEX k ON t (a)"));
        assert!(hit("DROP INDEX k ON app.t"));
        assert!(hit("DROP DATABASE app"));
        assert!(hit("/*!40000 ALTER TABLE `t` DISABLE KEYS */"));
        assert!(touches_table(
            "ALTER TABLE app.t FORCE",
            "other",
            "app",
            "t"
        ));
        assert!(touches_table(
            "ALTER TABLE `we``ird` FORCE",
            "app",
            "app",
            "we`ird"
        ));
    }

    #[test]
    fn passes_everything_else() {
        assert!(!hit("ALTER TABLE t2 ADD COLUMN x INT"));
        assert!(!hit("ALTER TABLE other.t FORCE"));
        assert!(!touches_table("ALTER TABLE t FORCE", "other", "app", "t"));
        assert!(!hit("CREATE TABLE t2 LIKE t"));
        assert!(!hit("CREATE TABLE IF NOT EXISTS `_t_new` LIKE `t`"));
        assert!(!hit("DROP TEMPORARY TABLE IF EXISTS t"));
        assert!(!hit("INSERT INTO t VALUES (1)"));
        assert!(!hit("UPDATE t SET a = 'ALTER TABLE t'"));
        assert!(!hit("BEGIN"));
        assert!(!hit("COMMIT"));
        assert!(!hit("-- ALTER TABLE t\nSELECT 1"));
        assert!(!hit("# ALTER TABLE t\nSELECT 1"));
        assert!(!hit("/* ALTER TABLE t */ SELECT 1"));
        assert!(!hit("DROP DATABASE other"));
        assert!(!hit("RENAME TABLE a TO b"));
        assert!(!hit("CREATE INDEX k ON t2 (a)"));
        assert!(!hit("DROP TABLE `t2`"));
        assert!(!hit("ANALYZE TABLE t"));
    }

    #[test]
    fn one_statement_names_several_followed_tables() {
        let tables = [("app", "orders"), ("app", "items"), ("shop", "stock")];
        let first = |sql: &str| first_touched(sql, "app", tables);
        // The multi-table cut-over: every table and its shadow in one RENAME.
        let rename = "RENAME TABLE `app`.`orders_wraith_swap` TO `app`.`orders_wraith_sentry`, \
                      `app`.`orders` TO `app`.`_orders_old`, `app`.`_orders_new` TO `app`.`orders`, \
                      `app`.`items` TO `app`.`_items_old`, `app`.`_items_new` TO `app`.`items`, \
                      `shop`.`stock` TO `shop`.`_stock_old`, `shop`.`_stock_new` TO `shop`.`stock`";
        assert_eq!(first(rename), Some(0));
        assert_eq!(
            first_touched(rename, "x", [("shop", "stock"), ("app", "items")]),
            Some(0)
        );
        assert_eq!(first_touched(rename, "x", [("app", "items")]), Some(0));
        assert_eq!(
            first("RENAME TABLE a TO b, items WAIT 5 TO _items_old, shop.stock NOWAIT TO s2"),
            Some(1)
        );
        assert_eq!(first("ALTER TABLE shop.`stock` FORCE"), Some(2));
        assert_eq!(first("DROP TABLE x, `ITEMS`"), Some(1));
        assert_eq!(first("DROP DATABASE shop"), Some(2));
        assert_eq!(first("ALTER TABLE stock FORCE"), None);
        assert_eq!(first("RENAME TABLE `_items_new` TO `_items_x`"), None);
        assert_eq!(first("CREATE TABLE `_items_new` LIKE `items`"), None);
        assert_eq!(first("INSERT INTO items VALUES (1)"), None);
    }
}
