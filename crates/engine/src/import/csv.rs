//! The CSV/TSV reader: one row at a time from a byte slice.
//!
//! **Dialect** ([`CsvDialect`]): a separator (any non-empty byte string), an
//! optional quote byte, an optional escape byte, a line terminator (a byte
//! string, or the default: `\n` with an optional `\r` before it), and the
//! unquoted text that means NULL (`\N` by default). This is `LOAD DATA`'s
//! model: `FIELDS TERMINATED BY`, `ENCLOSED BY`, `ESCAPED BY`, `LINES
//! TERMINATED BY`.
//!
//! **Fields:** a field that starts with the quote is quoted: it runs to the
//! next quote that is not doubled (`""` is one `"`) and not escaped, and may
//! hold separators and line terminators; after its closing quote only a
//! separator, a terminator or the end of the data may follow. Any other field
//! runs to the next separator or terminator. In both, the escape byte takes
//! the next byte literally, except the MySQL escapes `\0` (NUL), `\b`, `\n`,
//! `\r`, `\t`, `\Z` (0x1A). An unquoted field whose raw text is the NULL text
//! is NULL; a quoted one never is, so `\N` and `"\N"`/`""` stay apart from
//! each other and from the empty string.
//!
//! **Rows:** a row ends at a terminator outside quotes or at the end of the
//! data, so a missing final newline loses nothing; nothing after the final
//! terminator is no row. The same code reads rows and skips them
//! ([`CsvParser::read_row`] with `None`), so region boundaries found by
//! skipping are exactly where reading puts row ends.

use std::borrow::Cow;

use super::{RawValue, SyntaxError};

/// How a CSV or TSV file is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvDialect {
    pub separator: Vec<u8>,
    pub quote: Option<u8>,
    pub escape: Option<u8>,
    /// `None`: `\n` or `\r\n`.
    pub terminator: Option<Vec<u8>>,
    /// Unquoted raw text that reads as NULL.
    pub null: Vec<u8>,
}

impl CsvDialect {
    /// `,` separated, `"` quoted, `\` escaped, `\N` NULL.
    pub fn csv() -> CsvDialect {
        CsvDialect {
            separator: b",".to_vec(),
            quote: Some(b'"'),
            escape: Some(b'\\'),
            terminator: None,
            null: b"\\N".to_vec(),
        }
    }

    /// MySQL's `SELECT ... INTO OUTFILE` default: tab separated, no quotes.
    pub fn tsv() -> CsvDialect {
        CsvDialect {
            separator: b"\t".to_vec(),
            quote: None,
            escape: Some(b'\\'),
            terminator: None,
            null: b"\\N".to_vec(),
        }
    }
}

/// Reads rows from `data`.
pub struct CsvParser<'a> {
    data: &'a [u8],
    pos: usize,
    dialect: &'a CsvDialect,
    buf: Vec<u8>,
}

enum FieldEnd {
    Separator(usize),
    Terminator(usize),
    End,
}

/// The byte an escape sequence `\b` stands for.
pub(crate) fn unescape(b: u8) -> u8 {
    match b {
        b'0' => 0,
        b'b' => 8,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'Z' => 0x1A,
        other => other,
    }
}

impl<'a> CsvParser<'a> {
    pub fn new(data: &'a [u8], dialect: &'a CsvDialect) -> CsvParser<'a> {
        CsvParser {
            data,
            pos: 0,
            dialect,
            buf: Vec::new(),
        }
    }

    /// Offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn field_end_at(&self, pos: usize) -> Option<FieldEnd> {
        let rest = &self.data[pos..];
        if rest.is_empty() {
            return Some(FieldEnd::End);
        }
        if rest.starts_with(&self.dialect.separator) {
            return Some(FieldEnd::Separator(self.dialect.separator.len()));
        }
        match &self.dialect.terminator {
            Some(t) if rest.starts_with(t) => Some(FieldEnd::Terminator(t.len())),
            Some(_) => None,
            None => match rest {
                [b'\n', ..] => Some(FieldEnd::Terminator(1)),
                [b'\r', b'\n', ..] => Some(FieldEnd::Terminator(2)),
                _ => None,
            },
        }
    }

    /// Reads the next row into `out` (cleared first), or skips it when `out`
    /// is `None`. `Ok(false)` when no row is left.
    pub fn read_row(&mut self, mut out: Option<&mut Vec<RawValue>>) -> Result<bool, SyntaxError> {
        if self.pos >= self.data.len() {
            return Ok(false);
        }
        if let Some(o) = out.as_deref_mut() {
            o.clear();
        }
        loop {
            let (value, end) = self.field(out.is_some())?;
            if let (Some(o), Some(v)) = (out.as_deref_mut(), value) {
                o.push(v);
            }
            match end {
                FieldEnd::Separator(n) => {
                    self.pos += n;
                    if self.pos >= self.data.len() {
                        // `a,` at the very end: one more, empty field.
                        if let Some(o) = out.as_deref_mut() {
                            o.push(RawValue::Text(Vec::new()));
                        }
                        return Ok(true);
                    }
                }
                FieldEnd::Terminator(n) => {
                    self.pos += n;
                    return Ok(true);
                }
                FieldEnd::End => return Ok(true),
            }
        }
    }

    /// One field starting at `pos`; leaves `pos` at what ends it.
    fn field(&mut self, keep: bool) -> Result<(Option<RawValue>, FieldEnd), SyntaxError> {
        let start = self.pos;
        let quote = self.dialect.quote;
        let escape = self.dialect.escape;
        if quote.is_some() && self.data.get(self.pos).copied() == quote {
            let q = quote.unwrap_or(b'"');
            self.pos += 1;
            self.buf.clear();
            loop {
                let Some(&b) = self.data.get(self.pos) else {
                    return Err(SyntaxError::new(
                        start,
                        "a quoted field is not closed before the end of the data (bad quote)",
                    ));
                };
                if b == q {
                    if self.data.get(self.pos + 1) == Some(&q) {
                        if keep {
                            self.buf.push(q);
                        }
                        self.pos += 2;
                        continue;
                    }
                    self.pos += 1;
                    break;
                }
                if Some(b) == escape {
                    let Some(&next) = self.data.get(self.pos + 1) else {
                        return Err(SyntaxError::new(
                            self.pos,
                            "an escape character ends the data",
                        ));
                    };
                    if keep {
                        self.buf.push(unescape(next));
                    }
                    self.pos += 2;
                    continue;
                }
                if keep {
                    self.buf.push(b);
                }
                self.pos += 1;
            }
            let end = self.field_end_at(self.pos).ok_or_else(|| {
                SyntaxError::new(
                    self.pos,
                    "unexpected data after a closing quote; a quote inside a quoted field must be doubled or escaped (bad quote)",
                )
            })?;
            let value = keep.then(|| RawValue::Text(std::mem::take(&mut self.buf)));
            return Ok((value, end));
        }
        let mut escaped = false;
        let end = loop {
            if let Some(end) = self.field_end_at(self.pos) {
                break end;
            }
            if Some(self.data[self.pos]) == escape {
                if self.pos + 1 >= self.data.len() {
                    return Err(SyntaxError::new(
                        self.pos,
                        "an escape character ends the data",
                    ));
                }
                escaped = true;
                self.pos += 2;
            } else {
                self.pos += 1;
            }
        };
        if !keep {
            return Ok((None, end));
        }
        let raw = &self.data[start..self.pos];
        if raw == self.dialect.null.as_slice() {
            return Ok((Some(RawValue::Null), end));
        }
        let text: Cow<'_, [u8]> = if escaped {
            let mut v = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                if Some(raw[i]) == escape && i + 1 < raw.len() {
                    v.push(unescape(raw[i + 1]));
                    i += 2;
                } else {
                    v.push(raw[i]);
                    i += 1;
                }
            }
            Cow::Owned(v)
        } else {
            Cow::Borrowed(raw)
        };
        Ok((Some(RawValue::Text(text.into_owned())), end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(data: &str, d: &CsvDialect) -> Result<Vec<Vec<RawValue>>, SyntaxError> {
        let mut p = CsvParser::new(data.as_bytes(), d);
        let mut out = Vec::new();
        let mut row = Vec::new();
        while p.read_row(Some(&mut row))? {
            out.push(row.clone());
        }
        // Skipping finds the same number of rows.
        let mut s = CsvParser::new(data.as_bytes(), d);
        let mut n = 0;
        while s.read_row(None)? {
            n += 1;
        }
        assert_eq!(n, out.len(), "skip and read disagree on {data:?}");
        Ok(out)
    }

    fn t(s: &str) -> RawValue {
        RawValue::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn quotes_separators_and_newlines_inside_fields() {
        let d = CsvDialect::csv();
        let r = rows("1,\"a,b\",\"x\ny\"\n2,\"say \"\"hi\"\"\",\"e\\\"q\"\n", &d).unwrap();
        assert_eq!(
            r,
            vec![
                vec![t("1"), t("a,b"), t("x\ny")],
                vec![t("2"), t("say \"hi\""), t("e\"q")]
            ]
        );
    }

    #[test]
    fn null_versus_empty_and_escapes() {
        let d = CsvDialect::csv();
        let r = rows("\\N,,\"\",\"\\N\",a\\tb,x\\N\n", &d).unwrap();
        assert_eq!(
            r,
            vec![vec![
                RawValue::Null,
                t(""),
                t(""),
                t("N"),
                t("a\tb"),
                t("xN")
            ]]
        );
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let d = CsvDialect::csv();
        let r = rows("1,a\r\n2,\"b\"\r\n3,c", &d).unwrap();
        assert_eq!(
            r,
            vec![
                vec![t("1"), t("a")],
                vec![t("2"), t("b")],
                vec![t("3"), t("c")]
            ]
        );
        assert_eq!(rows("", &d).unwrap().len(), 0);
        assert_eq!(rows("1,\n", &d).unwrap(), vec![vec![t("1"), t("")]]);
        assert_eq!(rows("1,", &d).unwrap(), vec![vec![t("1"), t("")]]);
    }

    #[test]
    fn four_byte_utf8_passes_through() {
        let d = CsvDialect::csv();
        let r = rows("😀,\"ü😀\"\n", &d).unwrap();
        assert_eq!(r, vec![vec![t("😀"), t("ü😀")]]);
    }

    #[test]
    fn bad_quotes_are_errors_with_offsets() {
        let d = CsvDialect::csv();
        let e = rows("1,\"abc\n2,x\n", &d).unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("not closed"), "{e:?}");
        let e = rows("1,\"ab\"c,d\n", &d).unwrap_err();
        assert_eq!(e.offset, 6);
        assert!(e.message.contains("after a closing quote"), "{e:?}");
    }

    #[test]
    fn tsv_and_custom_dialects() {
        let d = CsvDialect::tsv();
        let r = rows("1\ta\\tb\t\\N\n2\t\"q\"\t\n", &d).unwrap();
        assert_eq!(
            r,
            vec![
                vec![t("1"), t("a\tb"), RawValue::Null],
                vec![t("2"), t("\"q\""), t("")]
            ]
        );
        let d = CsvDialect {
            separator: b"||".to_vec(),
            quote: Some(b'\''),
            escape: None,
            terminator: Some(b";;".to_vec()),
            null: b"NULL".to_vec(),
        };
        let r = rows("a||'b||c'||NULL;;x\\y||'it''s';;", &d).unwrap();
        assert_eq!(
            r,
            vec![
                vec![t("a"), t("b||c"), RawValue::Null],
                vec![t("x\\y"), t("it's")]
            ]
        );
    }
}
