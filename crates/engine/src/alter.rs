//! The `alter` clause of a `[[table]]`: a value from the config, read as data.
//!
//! wraith sends the clause after `ALTER TABLE <name>` to the server (on a
//! throwaway copy in preflight, then on the shadow table), so before anything
//! is sent it is tokenised with the server's own quoting and comment rules and
//! refused when it is not one alteration of that one table:
//! - a `;` outside quotes and comments (a second statement, or a trailing one);
//! - a table rename (`RENAME [TO|AS] x`; `RENAME COLUMN|INDEX|KEY` are fine);
//! - a specification that touches another table or its files (partition
//!   exchange and conversion, tablespace discard/import) or does not start
//!   an alteration at all (e.g. `DROP TABLE t`, or a whole `ALTER TABLE t …`).
//!
//! Quoting: `'…'`, `"…"` and `` `…` `` with doubled quotes; `\` escapes in
//! strings unless the server runs with `NO_BACKSLASH_ESCAPES`. The clause is
//! tokenised both ways and must pass both, so the session's `sql_mode` cannot
//! make a `;` the tokeniser thought quoted a real one. Comments: `#` and `-- `
//! to the end of the line, `/* … */`; the content of the executable comments
//! `/*! … */` and `/*M! … */` is code to the server, so it is code here too.
//!
//! The same tokens give the plan what it needs: the columns the clause
//! renames, drops and adds (a column dropped and added again is a new column).
//! Every connection wraith opens also has multi-statements off (see
//! [`crate::server::pool`]): this check is the first barrier, not the only one.

use std::collections::{BTreeMap, BTreeSet};

/// A clause that wraith refuses to run, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; {fix}")]
pub struct AlterError {
    pub problem: String,
    pub fix: String,
}

fn refuse(problem: impl Into<String>, fix: impl Into<String>) -> AlterError {
    AlterError {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// What the plan needs from a clause that passed [`parse`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Alter {
    /// `old -> new` column renames (`CHANGE old new`, `RENAME COLUMN old TO new`).
    pub renames: BTreeMap<String, String>,
    /// Columns the clause drops (lower case).
    pub dropped: BTreeSet<String>,
    /// Columns the clause adds (lower case).
    pub added: BTreeSet<String>,
}

/// One token of a clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A bare word: keyword, name or number.
    Word(String),
    /// A `` `quoted` `` identifier.
    Ident(String),
    /// A `'…'` or `"…"` string (or identifier under `ANSI_QUOTES`).
    Str(String),
    Punct(char),
}

impl Token {
    /// The token's text, unquoted.
    pub fn text(&self) -> String {
        match self {
            Token::Word(w) | Token::Ident(w) | Token::Str(w) => w.clone(),
            Token::Punct(c) => c.to_string(),
        }
    }

    /// The upper-cased keyword, for bare words only (a quoted word is a name).
    fn keyword(&self) -> &str {
        match self {
            Token::Word(w) => w.as_str(),
            _ => "",
        }
    }

    fn is_keyword(&self, k: &str) -> bool {
        self.keyword().eq_ignore_ascii_case(k)
    }
}

/// Tokenises `s`. `backslash_escapes` is the server's default; `false` is
/// `NO_BACKSLASH_ESCAPES`. Fails on an unterminated quote or comment.
pub fn tokenize(s: &str, backslash_escapes: bool) -> Result<Vec<Token>, AlterError> {
    let chars: Vec<char> = s.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    // Inside `/*! … */` or `/*M! … */`: the next `*/` closes it.
    let mut executable_comment = false;
    while let Some(c) = at(i) {
        if c.is_whitespace() {
            i += 1;
        } else if c == '*' && at(i + 1) == Some('/') && executable_comment {
            executable_comment = false;
            i += 2;
        } else if c == '#'
            || (c == '-'
                && at(i + 1) == Some('-')
                && at(i + 2).is_none_or(|n| n.is_whitespace() || n.is_control()))
        {
            while at(i).is_some_and(|n| n != '\n') {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == Some('*') {
            let executable = at(i + 2) == Some('!')
                || (at(i + 2).is_some_and(|m| m == 'M' || m == 'm') && at(i + 3) == Some('!'));
            if executable {
                if executable_comment {
                    return Err(refuse(
                        "the alter nests one executable comment in another",
                        "write the clause without /*! … */ comments",
                    ));
                }
                executable_comment = true;
                i += if at(i + 2) == Some('!') { 3 } else { 4 };
                // The optional version number the server compares with its own.
                while at(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                continue;
            }
            let start = i;
            i += 2;
            loop {
                match at(i) {
                    None => {
                        return Err(refuse(
                            format!(
                                "the comment opened at character {} of the alter is not closed",
                                start + 1
                            ),
                            "close it with */ or remove it",
                        ))
                    }
                    Some('*') if at(i + 1) == Some('/') => {
                        i += 2;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if c == '`' || c == '\'' || c == '"' {
            let start = i;
            let mut text = String::new();
            i += 1;
            loop {
                match at(i) {
                    None => {
                        return Err(refuse(
                            format!(
                                "the quote {c} opened at character {} of the alter is not closed",
                                start + 1
                            ),
                            format!("close it with {c} (a {c} inside is written twice)"),
                        ))
                    }
                    Some(q) if q == c => {
                        if at(i + 1) == Some(c) {
                            text.push(c);
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    Some('\\') if backslash_escapes && c != '`' => {
                        if let Some(n) = at(i + 1) {
                            text.push(n);
                        }
                        i += 2;
                    }
                    Some(n) => {
                        text.push(n);
                        i += 1;
                    }
                }
            }
            out.push(if c == '`' {
                Token::Ident(text)
            } else {
                Token::Str(text)
            });
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while at(i).is_some_and(|n| n.is_alphanumeric() || n == '_' || n == '$') {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    if executable_comment {
        return Err(refuse(
            "an executable comment /*! of the alter is not closed",
            "close it with */ or remove it",
        ));
    }
    Ok(out)
}

/// Splits tokens at top-level commas into specifications.
fn specifications(tokens: Vec<Token>) -> Vec<Vec<Token>> {
    let mut specs: Vec<Vec<Token>> = vec![Vec::new()];
    let mut depth = 0i32;
    for t in tokens {
        match &t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                specs.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = specs.last_mut() {
            last.push(t);
        }
    }
    specs.retain(|s| !s.is_empty());
    specs
}

/// Words that start a specification of `ALTER TABLE` (MariaDB and MySQL),
/// table options included.
const SPEC_STARTS: &[&str] = &[
    "ADD",
    "ALTER",
    "CHANGE",
    "MODIFY",
    "DROP",
    "RENAME",
    "ORDER",
    "CONVERT",
    "DEFAULT",
    "CHARACTER",
    "CHARSET",
    "COLLATE",
    "ENGINE",
    "TYPE",
    "AUTO_INCREMENT",
    "COMMENT",
    "ROW_FORMAT",
    "KEY_BLOCK_SIZE",
    "FORCE",
    "ALGORITHM",
    "LOCK",
    "ENABLE",
    "DISABLE",
    "AVG_ROW_LENGTH",
    "CHECKSUM",
    "TABLE_CHECKSUM",
    "COMPRESSION",
    "CONNECTION",
    "DATA",
    "INDEX",
    "DELAY_KEY_WRITE",
    "ENCRYPTED",
    "ENCRYPTION",
    "ENCRYPTION_KEY_ID",
    "INSERT_METHOD",
    "MAX_ROWS",
    "MIN_ROWS",
    "PACK_KEYS",
    "PAGE_CHECKSUM",
    "PAGE_COMPRESSED",
    "PAGE_COMPRESSION_LEVEL",
    "PASSWORD",
    "SEQUENCE",
    "STATS_AUTO_RECALC",
    "STATS_PERSISTENT",
    "STATS_SAMPLE_PAGES",
    "TRANSACTIONAL",
    "UNION",
    "WITH",
    "WITHOUT",
    "TABLESPACE",
    "STORAGE",
    "IETF_QUOTES",
    "SECONDARY_ENGINE",
    "AUTOEXTEND_SIZE",
    "ENGINE_ATTRIBUTE",
    "SECONDARY_ENGINE_ATTRIBUTE",
    "START",
    "UPGRADE",
    "VALIDATION",
    "PARTITION",
    "COALESCE",
    "REORGANIZE",
    "REMOVE",
    "ANALYZE",
    "CHECK",
    "OPTIMIZE",
    "REBUILD",
    "REPAIR",
    "TRUNCATE",
    "WAIT",
    "NOWAIT",
];

/// Second words after `DROP` that name something other than a column.
const DROP_NOT_COLUMN: &[&str] = &[
    "INDEX",
    "KEY",
    "PRIMARY",
    "FOREIGN",
    "CONSTRAINT",
    "CHECK",
    "PARTITION",
    "PERIOD",
    "SYSTEM",
    "UNIQUE",
    "FULLTEXT",
    "SPATIAL",
    "DEFAULT",
];

/// Reads and judges the `alter` clause of table `table`.
pub fn parse(alter: &str, table: &str) -> Result<Alter, AlterError> {
    // The clause must hold one statement however the session escapes strings.
    let strict = tokenize(alter, false)?;
    judge(strict, table)?;
    let tokens = tokenize(alter, true)?;
    judge(tokens.clone(), table)?;
    Ok(facts(tokens))
}

fn judge(tokens: Vec<Token>, table: &str) -> Result<(), AlterError> {
    if tokens.contains(&Token::Punct(';')) {
        return Err(refuse(
            format!("the alter for {table} holds a `;`: a second statement (or an empty one) after the alteration"),
            format!(
                "give only the clause after `ALTER TABLE {table}`, without `;` (a `;` inside a quoted string is fine)"
            ),
        ));
    }
    let specs = specifications(tokens);
    if specs.is_empty() {
        return Err(refuse(
            format!("the alter for {table} holds only comments"),
            format!("write the clause after `ALTER TABLE {table}`, e.g. \"ADD COLUMN x INT\" (or \"FORCE\" for a plain rebuild)"),
        ));
    }
    for spec in &specs {
        let kw = |i: usize| {
            spec.get(i)
                .map(Token::keyword)
                .unwrap_or("")
                .to_ascii_uppercase()
        };
        let first = kw(0);
        let shown = spec.first().map(Token::text).unwrap_or_default();
        if first == "ALTER" && kw(1) == "TABLE" || first == "TABLE" {
            return Err(refuse(
                format!("the alter for {table} starts with `{} TABLE`: it is a whole statement, not the clause", shown),
                format!("give only what follows `ALTER TABLE {table}`, e.g. \"ADD COLUMN x INT\""),
            ));
        }
        // Clauses that move data to or from another table or its files.
        let mentions = |k: &str| spec.iter().any(|t| t.is_keyword(k));
        let other_table = (mentions("EXCHANGE") && mentions("PARTITION"))
            || (first == "CONVERT" && (kw(1) == "PARTITION" || kw(1) == "TABLE"))
            || (mentions("TABLESPACE")
                && (first == "DISCARD"
                    || first == "IMPORT"
                    || mentions("DISCARD")
                    || mentions("IMPORT")));
        if other_table {
            return Err(refuse(
                format!("the alter for {table} moves data to or from another table or its files (partition exchange or conversion, tablespace discard or import)"),
                "run that statement yourself; wraith rebuilds the one table into a new one and cannot carry such a change",
            ));
        }
        if !SPEC_STARTS.contains(&first.as_str()) {
            return Err(refuse(
                format!("the alter for {table} has `{shown}` where an alteration of the table should start: wraith runs only alterations of that table"),
                format!("give only the clause after `ALTER TABLE {table}` (ADD, DROP, CHANGE, MODIFY, table options, ...)"),
            ));
        }
        match first.as_str() {
            "RENAME" if !matches!(kw(1).as_str(), "COLUMN" | "INDEX" | "KEY") => {
                return Err(refuse(
                    format!("the alter for {table} renames the table"),
                    "wraith swaps the tables itself at cut-over; remove the RENAME [TO|AS] clause (rename the table after the run)",
                ));
            }
            "DROP"
                if matches!(
                    kw(1).as_str(),
                    "TABLE"
                        | "DATABASE"
                        | "SCHEMA"
                        | "VIEW"
                        | "TRIGGER"
                        | "PROCEDURE"
                        | "FUNCTION"
                        | "EVENT"
                        | "USER"
                ) =>
            {
                return Err(refuse(
                    format!("the alter for {table} has `DROP {}`, which is a statement of its own, not an alteration of {table}", kw(1)),
                    "remove it; wraith runs only the alteration of the configured table",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn facts(tokens: Vec<Token>) -> Alter {
    let mut out = Alter::default();
    for spec in specifications(tokens) {
        let kw = |i: usize| {
            spec.get(i)
                .map(Token::keyword)
                .unwrap_or("")
                .to_ascii_uppercase()
        };
        let name = |i: usize| spec.get(i).map(Token::text);
        // The index of the column name after `word [COLUMN] [IF [NOT] EXISTS]`.
        let skip = |mut i: usize| {
            if kw(i) == "COLUMN" {
                i += 1;
            }
            if kw(i) == "IF" {
                i += if kw(i + 1) == "NOT" { 3 } else { 2 };
            }
            i
        };
        match kw(0).as_str() {
            "CHANGE" => {
                let i = skip(1);
                if let (Some(old), Some(new)) = (name(i), name(i + 1)) {
                    if old != new {
                        out.renames.insert(old, new);
                    }
                }
            }
            "RENAME" if kw(1) == "COLUMN" => {
                let i = skip(1);
                if let (Some(old), Some(new)) = (name(i), name(i + 2)) {
                    out.renames.insert(old, new);
                }
            }
            "DROP" if !DROP_NOT_COLUMN.contains(&kw(1).as_str()) => {
                if let Some(c) = name(skip(1)) {
                    out.dropped.insert(c.to_lowercase());
                }
            }
            "ADD" => {
                let i = skip(1);
                let is_column = kw(1) == "COLUMN"
                    || !matches!(
                        kw(1).as_str(),
                        "INDEX"
                            | "KEY"
                            | "PRIMARY"
                            | "UNIQUE"
                            | "FULLTEXT"
                            | "SPATIAL"
                            | "FOREIGN"
                            | "CONSTRAINT"
                            | "CHECK"
                            | "PARTITION"
                            | "PERIOD"
                            | "SYSTEM"
                            | "VECTOR"
                    );
                if !is_column {
                    continue;
                }
                if spec.get(i) == Some(&Token::Punct('(')) {
                    // `ADD [COLUMN] (a INT, b INT)`: names after `(` and each top-level `,`.
                    let mut depth = 0;
                    let mut expect_name = false;
                    for t in &spec[i..] {
                        match t {
                            Token::Punct('(') => {
                                depth += 1;
                                expect_name = depth == 1;
                                continue;
                            }
                            Token::Punct(')') => depth -= 1,
                            Token::Punct(',') if depth == 1 => {
                                expect_name = true;
                                continue;
                            }
                            _ if expect_name => {
                                out.added.insert(t.text().to_lowercase());
                            }
                            _ => {}
                        }
                        expect_name = false;
                    }
                } else if let Some(c) = name(i) {
                    out.added.insert(c.to_lowercase());
                }
            }
            _ => {}
        }
    }
    out.renames.retain(|old, new| old != new);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(alter: &str) -> bool {
        parse(alter, "t").is_err()
    }

    #[test]
    fn second_statements_are_refused() {
        for a in [
            "ADD COLUMN x INT; DROP TABLE t",
            "ADD COLUMN x INT;DROP TABLE t",
            "ADD COLUMN x INT -- note\n; DROP TABLE t",
            "ADD COLUMN x INT /* c */; DROP TABLE t",
            "ADD COLUMN x INT # c\n;DROP TABLE t",
            "ADD COLUMN x INT DEFAULT 'a;b'; DROP TABLE t",
            "ADD COLUMN x INT /*! ; DROP TABLE t */",
            "ADD COLUMN x INT /*!50000 ; DROP TABLE t */",
            "ADD COLUMN x INT /*M!100100 ; DROP TABLE t */",
            // With NO_BACKSLASH_ESCAPES the string ends at the second quote.
            "ADD COLUMN x VARCHAR(9) DEFAULT 'a\\'; DROP TABLE t; -- '",
            "ADD COLUMN x INT;",
            "ADD COLUMN x INT DEFAULT 'open",
            "ADD COLUMN x INT /* open",
        ] {
            assert!(refused(a), "{a}");
        }
    }

    #[test]
    fn quoted_and_commented_semicolons_are_data() {
        for a in [
            "ADD COLUMN x VARCHAR(9) NOT NULL DEFAULT 'a;b'",
            "ADD COLUMN x VARCHAR(9) DEFAULT \"a;b\"",
            "ADD COLUMN `a;b` INT",
            "ADD COLUMN x INT -- a; b",
            "ADD COLUMN x INT # a; b",
            "ADD COLUMN x INT /* a; b */",
            "ADD COLUMN x VARCHAR(9) DEFAULT 'it''s;'",
            "ADD COLUMN x INT /*!50000 DEFAULT 5 */",
        ] {
            assert!(parse(a, "t").is_ok(), "{a}: {:?}", parse(a, "t"));
        }
    }

    #[test]
    fn renames_and_other_tables_are_refused() {
        for a in [
            "RENAME TO x",
            "RENAME AS x",
            "RENAME x",
            "ADD COLUMN y INT, RENAME TO x",
            "DROP TABLE t",
            "ALTER TABLE t ADD COLUMN x INT",
            "EXCHANGE PARTITION p0 WITH TABLE other",
            "CONVERT PARTITION p0 TO TABLE other",
            "CONVERT TABLE other TO PARTITION p1 VALUES LESS THAN (10)",
            "DISCARD TABLESPACE",
            "SELECT 1",
            "-- only a comment",
        ] {
            assert!(refused(a), "{a}");
        }
        for a in [
            "RENAME COLUMN a TO b",
            "RENAME INDEX a TO b",
            "RENAME KEY a TO b",
            "ENGINE=InnoDB ROW_FORMAT=DYNAMIC",
            "FORCE",
            "CONVERT TO CHARACTER SET utf8mb4",
            "DEFAULT CHARSET = utf8mb4",
            "ADD UNIQUE KEY u (email), ALGORITHM=INPLACE, LOCK=NONE",
            "PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (10), PARTITION p1 VALUES LESS THAN MAXVALUE)",
        ] {
            assert!(parse(a, "t").is_ok(), "{a}: {:?}", parse(a, "t"));
        }
    }

    /// Whether the clause drops `column` and adds a column of that name again
    /// (the facts the plan reads to tell a new column from a renamed one).
    fn readds(f: &Alter, column: &str) -> bool {
        let c = column.to_lowercase();
        f.dropped.contains(&c) && f.added.contains(&c)
    }

    #[test]
    fn facts_for_the_plan() {
        let f = parse(
            "CHANGE COLUMN `a` `b` INT, ADD COLUMN c INT DEFAULT 1, RENAME COLUMN d TO e",
            "t",
        )
        .unwrap();
        assert_eq!(f.renames.get("a").map(String::as_str), Some("b"));
        assert_eq!(f.renames.get("d").map(String::as_str), Some("e"));
        assert!(f.added.contains("c"));
        assert!(parse("CHANGE x x BIGINT", "t").unwrap().renames.is_empty());
        let f = parse("ADD COLUMN z DECIMAL(10,2), CHANGE y w INT", "t").unwrap();
        assert_eq!(f.renames.get("y").map(String::as_str), Some("w"));
        let f = parse(
            "DROP COLUMN c1, ADD COLUMN c1 INT NOT NULL DEFAULT 47 AFTER id",
            "t",
        )
        .unwrap();
        assert!(readds(&f, "C1"));
        let f = parse(
            "DROP `c1`, ADD (c1 BIGINT DEFAULT 3, c2 INT), DROP INDEX k",
            "t",
        )
        .unwrap();
        assert!(readds(&f, "c1"));
        assert!(!readds(&f, "c2"));
        assert!(!f.dropped.contains("index") && !f.dropped.contains("k"));
        let f = parse("DROP IF EXISTS c1, ADD IF NOT EXISTS c1 INT FIRST", "t").unwrap();
        assert!(readds(&f, "c1"));
        let f = parse("DROP PRIMARY KEY, ADD PRIMARY KEY (a)", "t").unwrap();
        assert!(!readds(&f, "primary"));
    }
}
