//! The SQL dump reader: the rows of `INSERT INTO … VALUES (…),(…);` as
//! mysqldump, mariadb-dump and mydumper write them.
//!
//! **Reads:** `INSERT` and `REPLACE` (with `IGNORE`, `LOW_PRIORITY`, …, an
//! optional column list, `VALUES` or `VALUE`) one row at a time. Values:
//! `NULL`, `TRUE`/`FALSE`, numbers (sign, decimals, exponents), strings in
//! `'…'` or `"…"` with doubled quotes and the escapes `\0 \' \" \b \n \r \t
//! \Z \\ \% \_` (`\%` and `\_` keep their backslash, as the server does),
//! hex literals `0x…` and `X'…'`, bit literals `b'…'`, and charset
//! introducers (`_binary '…'`, `_utf8mb4 0x…`).
//!
//! **Skips:** comments (`-- `, `#`, `/* */`; executable comments `/*! */`
//! too, after noting a `SET NAMES` in them), and every other statement (SET,
//! LOCK/UNLOCK TABLES, CREATE, DROP, ALTER, USE): `create_tables` handles the
//! schema files. [`SqlParser::names`] reports the last `SET NAMES` seen, which
//! says what charset the strings are in.
//!
//! **Boundaries:** [`SqlParser::skip_statement`] walks a statement with the
//! same lexer (quotes, escapes, comments) that reads rows, so a region cut
//! after a statement's `;` never falls inside a string.

use super::{RawValue, SyntaxError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    InValues,
}

/// Reads rows from `data`.
pub struct SqlParser<'a> {
    data: &'a [u8],
    pos: usize,
    state: State,
    names: Option<String>,
    table: Option<String>,
    columns: Option<Vec<String>>,
    /// Offset of the `(` of the last row read.
    row_at: usize,
}

impl<'a> SqlParser<'a> {
    pub fn new(data: &'a [u8]) -> SqlParser<'a> {
        SqlParser {
            data,
            pos: 0,
            state: State::Between,
            names: None,
            table: None,
            columns: None,
            row_at: 0,
        }
    }

    /// Offset of the `(` that opened the last row read.
    pub fn row_start(&self) -> usize {
        self.row_at
    }

    /// Offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The charset of the last `SET NAMES` seen (lower case).
    pub fn names(&self) -> Option<&str> {
        self.names.as_deref()
    }

    /// The table the current INSERT writes.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// The current INSERT's column list, if it has one.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError::new(at, message))
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.data.get(self.pos + n).copied()
    }

    /// Skips whitespace and comments, noting `SET NAMES` in executable ones.
    fn skip_space(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(b) if b.is_ascii_whitespace() => self.pos += 1,
                Some(b'#') => self.skip_line(),
                Some(b'-')
                    if self.peek_at(1) == Some(b'-')
                        && self.peek_at(2).is_none_or(|c| c.is_ascii_whitespace()) =>
                {
                    self.skip_line()
                }
                Some(b'/') if self.peek_at(1) == Some(b'*') => {
                    let start = self.pos;
                    let body_start = self.pos + 2;
                    let Some(len) = find(&self.data[body_start..], b"*/") else {
                        return self.err(start, "a /* comment is not closed");
                    };
                    let body = &self.data[body_start..body_start + len];
                    if let Some(exec) = body.strip_prefix(b"!") {
                        let exec = trim_ascii(strip_digits(exec));
                        self.note_set_names(exec);
                    }
                    self.pos = body_start + len + 2;
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        match memchr(b'\n', &self.data[self.pos..]) {
            Some(n) => self.pos += n + 1,
            None => self.pos = self.data.len(),
        }
    }

    fn note_set_names(&mut self, stmt: &[u8]) {
        let words: Vec<&[u8]> = stmt
            .split(|b| b.is_ascii_whitespace() || *b == b';')
            .filter(|w| !w.is_empty())
            .take(3)
            .collect();
        if words.len() == 3
            && words[0].eq_ignore_ascii_case(b"SET")
            && words[1].eq_ignore_ascii_case(b"NAMES")
        {
            let cs = String::from_utf8_lossy(words[2])
                .trim_matches(|c| c == '\'' || c == '"' || c == '`')
                .to_ascii_lowercase();
            self.names = Some(cs);
        }
    }

    fn word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        {
            self.pos += 1;
        }
        &self.data[start..self.pos]
    }

    /// Skips one statement from `pos` to just after its `;` (or the end),
    /// honouring quotes and comments. `Ok(None)` when only space is left.
    pub fn skip_statement(&mut self) -> Result<Option<usize>, SyntaxError> {
        self.state = State::Between;
        self.skip_space()?;
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        self.skip_rest_of_statement()?;
        Ok(Some(self.pos))
    }

    fn skip_rest_of_statement(&mut self) -> Result<(), SyntaxError> {
        loop {
            self.skip_space()?;
            let Some(b) = self.peek() else {
                return Ok(());
            };
            match b {
                b';' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\'' | b'"' => {
                    self.string(false)?;
                }
                b'`' => {
                    self.quoted_ident()?;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Reads the next row into `out` (cleared first). `Ok(false)` at the end.
    pub fn read_row(&mut self, out: &mut Vec<RawValue>) -> Result<bool, SyntaxError> {
        loop {
            match self.state {
                State::InValues => {
                    self.skip_space()?;
                    if self.peek() != Some(b'(') {
                        return self.err(self.pos, "expected `(` to start a row of VALUES");
                    }
                    self.row_at = self.pos;
                    self.pos += 1;
                    out.clear();
                    self.tuple(out)?;
                    self.skip_space()?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b';') => {
                            self.pos += 1;
                            self.state = State::Between;
                        }
                        None => self.state = State::Between,
                        Some(_) => {
                            return self.err(self.pos, "expected `,` or `;` after a row of VALUES")
                        }
                    }
                    return Ok(true);
                }
                State::Between => {
                    self.skip_space()?;
                    let Some(b) = self.peek() else {
                        return Ok(false);
                    };
                    if b == b';' {
                        self.pos += 1;
                        continue;
                    }
                    let start = self.pos;
                    let w = self.word();
                    if w.eq_ignore_ascii_case(b"INSERT") || w.eq_ignore_ascii_case(b"REPLACE") {
                        self.insert_head()?;
                        self.state = State::InValues;
                    } else if w.eq_ignore_ascii_case(b"SET") {
                        self.pos = start;
                        self.skip_rest_of_statement()?;
                        let stmt = trim_ascii(&self.data[start..self.pos]);
                        self.note_set_names(stmt);
                    } else if w.is_empty() {
                        return self.err(start, "expected a statement");
                    } else {
                        self.skip_rest_of_statement()?;
                    }
                }
            }
        }
    }

    fn insert_head(&mut self) -> Result<(), SyntaxError> {
        self.columns = None;
        loop {
            self.skip_space()?;
            let at = self.pos;
            if self.peek() == Some(b'`') {
                break;
            }
            let w = self.word();
            if w.is_empty() {
                return self.err(at, "expected the table name of an INSERT");
            }
            let upper = w.to_ascii_uppercase();
            match upper.as_slice() {
                b"IGNORE" | b"LOW_PRIORITY" | b"DELAYED" | b"HIGH_PRIORITY" | b"INTO" => continue,
                _ => {
                    self.pos = at;
                    break;
                }
            }
        }
        // [db.]table
        let mut name = self.ident()?;
        self.skip_space()?;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.skip_space()?;
            name = self.ident()?;
        }
        self.table = Some(name);
        self.skip_space()?;
        if self.peek() == Some(b'(') {
            self.pos += 1;
            let mut cols = Vec::new();
            loop {
                self.skip_space()?;
                cols.push(self.ident()?);
                self.skip_space()?;
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b')') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return self.err(self.pos, "expected `,` or `)` in the column list"),
                }
            }
            self.columns = Some(cols);
        }
        self.skip_space()?;
        let at = self.pos;
        let w = self.word();
        if !(w.eq_ignore_ascii_case(b"VALUES") || w.eq_ignore_ascii_case(b"VALUE")) {
            return self.err(
                at,
                "expected VALUES: only INSERT ... VALUES statements are read from dumps",
            );
        }
        Ok(())
    }

    fn ident(&mut self) -> Result<String, SyntaxError> {
        if self.peek() == Some(b'`') {
            return self.quoted_ident();
        }
        let at = self.pos;
        let w = self.word();
        if w.is_empty() {
            return self.err(at, "expected a name");
        }
        Ok(String::from_utf8_lossy(w).into_owned())
    }

    fn quoted_ident(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err(start, "a `quoted` name is not closed"),
                Some(b'`') if self.peek_at(1) == Some(b'`') => {
                    out.push(b'`');
                    self.pos += 2;
                }
                Some(b'`') => {
                    self.pos += 1;
                    break;
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The values of one row, after its `(`, through its `)`.
    fn tuple(&mut self, out: &mut Vec<RawValue>) -> Result<(), SyntaxError> {
        loop {
            self.skip_space()?;
            if out.is_empty() && self.peek() == Some(b')') {
                self.pos += 1;
                return Ok(());
            }
            out.push(self.value()?);
            self.skip_space()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b')') => {
                    self.pos += 1;
                    return Ok(());
                }
                None => return self.err(self.pos, "a row of VALUES is not closed"),
                Some(_) => return self.err(self.pos, "expected `,` or `)` after a value"),
            }
        }
    }

    fn value(&mut self) -> Result<RawValue, SyntaxError> {
        let at = self.pos;
        let Some(b) = self.peek() else {
            return self.err(at, "a row of VALUES is not closed");
        };
        match b {
            b'\'' | b'"' => Ok(RawValue::Text(self.string(true)?)),
            b'0' if matches!(self.peek_at(1), Some(b'x' | b'X')) => {
                self.pos += 2;
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    self.pos += 1;
                }
                decode_hex(&self.data[start..self.pos])
                    .map(RawValue::Hex)
                    .ok_or_else(|| SyntaxError::new(at, "bad hex literal"))
            }
            b'x' | b'X' if self.peek_at(1) == Some(b'\'') => {
                self.pos += 1;
                let body = self.string(true)?;
                decode_hex(&body)
                    .map(RawValue::Hex)
                    .ok_or_else(|| SyntaxError::new(at, "bad hex literal"))
            }
            b'b' | b'B' if self.peek_at(1) == Some(b'\'') => {
                self.pos += 1;
                let body = self.string(true)?;
                if body.is_empty()
                    || body.len() > 64
                    || !body.iter().all(|c| *c == b'0' || *c == b'1')
                {
                    return self.err(at, "bad bit literal");
                }
                Ok(RawValue::Bits(
                    body.iter()
                        .fold(0u64, |a, c| (a << 1) | u64::from(c - b'0')),
                ))
            }
            b'N' | b'n' if self.peek_at(1) == Some(b'\'') => {
                self.pos += 1;
                Ok(RawValue::Text(self.string(true)?))
            }
            b'_' => {
                // A charset introducer: `_binary '...'`, `_utf8mb4 0x...`.
                self.word();
                self.skip_space()?;
                match self.value()? {
                    v @ (RawValue::Text(_) | RawValue::Hex(_)) => Ok(v),
                    _ => self.err(at, "a charset introducer must be followed by a string"),
                }
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ if b.is_ascii_alphabetic() => {
                let w = self.word();
                if w.eq_ignore_ascii_case(b"NULL") {
                    Ok(RawValue::Null)
                } else if w.eq_ignore_ascii_case(b"TRUE") {
                    Ok(RawValue::Number(b"1".to_vec()))
                } else if w.eq_ignore_ascii_case(b"FALSE") {
                    Ok(RawValue::Number(b"0".to_vec()))
                } else {
                    self.err(
                        at,
                        format!(
                            "unexpected word `{}` where a value should be",
                            String::from_utf8_lossy(w)
                        ),
                    )
                }
            }
            _ => self.err(at, "unexpected character where a value should be"),
        }
    }

    fn number(&mut self) -> Result<RawValue, SyntaxError> {
        let start = self.pos;
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        let mut digits = 0;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            digits += 1;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
                digits += 1;
            }
        }
        if digits == 0 {
            return self.err(start, "bad number");
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'-' | b'+')) {
                self.pos += 1;
            }
            let exp_start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.pos == exp_start {
                return self.err(start, "bad number: exponent without digits");
            }
        }
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return self.err(start, "bad number");
        }
        Ok(RawValue::Number(self.data[start..self.pos].to_vec()))
    }

    /// A `'…'` or `"…"` string at `pos`; returns its bytes (when `keep`).
    fn string(&mut self, keep: bool) -> Result<Vec<u8>, SyntaxError> {
        let start = self.pos;
        let q = self.data[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return self.err(start, "a quoted string is not closed (bad quote)");
            };
            if b == q {
                if self.peek_at(1) == Some(q) {
                    if keep {
                        out.push(q);
                    }
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return Ok(out);
            }
            if b == b'\\' {
                let Some(e) = self.peek_at(1) else {
                    return self.err(start, "a quoted string is not closed (bad quote)");
                };
                if keep {
                    match e {
                        b'%' | b'_' => out.extend_from_slice(&[b'\\', e]),
                        other => out.push(super::csv::unescape(other)),
                    }
                }
                self.pos += 2;
                continue;
            }
            if keep {
                // Copy the run up to the next quote or backslash at once.
                let rest = &self.data[self.pos..];
                let n = rest
                    .iter()
                    .position(|&c| c == q || c == b'\\')
                    .unwrap_or(rest.len());
                out.extend_from_slice(&rest[..n]);
                self.pos += n;
            } else {
                self.pos += 1;
            }
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn strip_digits(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    &b[n..]
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn decode_hex(h: &[u8]) -> Option<Vec<u8>> {
    fn nib(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    // An odd number of digits has an implied leading zero (0xABC = 0x0ABC).
    let mut out = Vec::with_capacity(h.len().div_ceil(2));
    let mut i = 0;
    if h.len() % 2 == 1 {
        out.push(nib(h[0])?);
        i = 1;
    }
    while i < h.len() {
        out.push(nib(h[i])? << 4 | nib(h[i + 1])?);
        i += 2;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> Result<Vec<Vec<RawValue>>, SyntaxError> {
        let mut p = SqlParser::new(sql.as_bytes());
        let mut rows = Vec::new();
        let mut row = Vec::new();
        while p.read_row(&mut row)? {
            rows.push(row.clone());
        }
        Ok(rows)
    }

    fn t(s: &[u8]) -> RawValue {
        RawValue::Text(s.to_vec())
    }
    fn n(s: &str) -> RawValue {
        RawValue::Number(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_mydumper_and_mariadb_dump_statements() {
        let dump = "/*!40101 SET NAMES binary*/;\n/*!40014 SET FOREIGN_KEY_CHECKS=0*/;\n\
            -- a comment; with a semicolon\n# another\nLOCK TABLES `t` WRITE;\n\
            /*!40000 ALTER TABLE `t` DISABLE KEYS */;\n\
            CREATE TABLE `x` (a int, b varchar(3) DEFAULT ';');\n\
            INSERT INTO `t` VALUES\n(1,-5,\"q\\'u\\\"o\",'it''s',NULL),\n(2,1.5e-10,'a\\nb\\0\\Z\\%\\_',0x00FF,X'0a');\n\
            UNLOCK TABLES;\nINSERT IGNORE INTO db.`t` (`a`,b) VALUES (3,_binary 'x\\\\y'),(4,b'101');";
        let mut p = SqlParser::new(dump.as_bytes());
        let mut row = Vec::new();
        assert!(p.read_row(&mut row).unwrap());
        assert_eq!(p.names(), Some("binary"));
        assert_eq!(p.table(), Some("t"));
        assert_eq!(
            row,
            vec![n("1"), n("-5"), t(b"q'u\"o"), t(b"it's"), RawValue::Null]
        );
        assert!(p.read_row(&mut row).unwrap());
        assert_eq!(
            row,
            vec![
                n("2"),
                n("1.5e-10"),
                t(b"a\nb\0\x1a\\%\\_"),
                RawValue::Hex(vec![0, 255]),
                RawValue::Hex(vec![10])
            ]
        );
        assert!(p.read_row(&mut row).unwrap());
        assert_eq!(p.columns(), Some(&["a".to_string(), "b".to_string()][..]));
        assert_eq!(row, vec![n("3"), t(b"x\\y")]);
        assert!(p.read_row(&mut row).unwrap());
        assert_eq!(row, vec![n("4"), RawValue::Bits(5)]);
        assert!(!p.read_row(&mut row).unwrap());
    }

    #[test]
    fn statements_end_where_rows_end() {
        let dump = "SET NAMES utf8mb4;\nINSERT INTO t VALUES ('a;b'),(\"c\\\";\");\nINSERT INTO t VALUES ('-- x'),('/* y */');\n";
        let mut p = SqlParser::new(dump.as_bytes());
        let mut ends = Vec::new();
        while let Some(e) = p.skip_statement().unwrap() {
            ends.push(e);
        }
        assert_eq!(ends.len(), 3);
        assert_eq!(&dump[ends[0] - 1..ends[0]], ";");
        assert_eq!(&dump[ends[1]..ends[1] + 1], "\n");
        let rows = read(&dump[ends[0]..ends[1]]).unwrap();
        assert_eq!(rows, vec![vec![t(b"a;b")], vec![t(b"c\";")]]);
        let rows = read(&dump[ends[1]..]).unwrap();
        assert_eq!(rows, vec![vec![t(b"-- x")], vec![t(b"/* y */")]]);
    }

    #[test]
    fn malformed_rows_name_their_offset() {
        let e = read("INSERT INTO t VALUES (1,'abc),(2,'x');").unwrap_err();
        assert_eq!(e.offset, 34);
        let e = read("INSERT INTO t VALUES (1,2)(3,4);").unwrap_err();
        assert_eq!(e.offset, 26);
        let e = read("INSERT INTO t VALUES (1,12abc);").unwrap_err();
        assert_eq!(e.offset, 24);
        assert!(e.message.contains("bad number"), "{e:?}");
        let e = read("INSERT INTO t VALUES (1,'x\n").unwrap_err();
        assert!(e.message.contains("bad quote"), "{e:?}");
        assert!(read("INSERT INTO t SELECT 1;").is_err());
    }

    #[test]
    fn numbers_and_hex() {
        let rows = read("INSERT INTO t VALUES (-0.5,+3,.25,1E5,0xABC,TRUE);").unwrap();
        assert_eq!(
            rows[0],
            vec![
                n("-0.5"),
                n("+3"),
                n(".25"),
                n("1E5"),
                RawValue::Hex(vec![0x0A, 0xBC]),
                n("1")
            ]
        );
    }
}
