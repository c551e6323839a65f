//! The exact value model: one [`Value`] per MySQL/MariaDB column value, how it
//! is read from the server and how it is written back.
//!
//! (Over 800 lines with its tests; the code above them is ~720 lines: one
//! value model whose read and write sides must be read together.)
//!
//! **For:** carrying every column value from the source table to the shadow
//! table without loss: signed and unsigned 64-bit integers, DECIMAL as the
//! exact text the server prints, FLOAT/DOUBLE bit-exact, strings as raw bytes
//! in their charset, temporal values with sign and microseconds, YEAR, BIT,
//! ENUM/SET labels and JSON text.
//!
//! **Leaves to others:** which columns are read and how they map from source
//! to target (the engine crate); ordering and key encoding ([`crate::key`]);
//! storage and transport (the backends).
//!
//! **Reading** ([`Value::from_text`]): rows are read with the TEXT protocol on
//! a session with `SET NAMES binary` and `time_zone = '+00:00'`, so strings
//! arrive as their stored bytes and TIMESTAMPs are not shifted. Every value is
//! then parsed from the server's text by the column's [`ColumnKind`]. One
//! server quirk matters: the text protocol prints FLOAT with only 6
//! significant digits, so a reader that wants FLOAT bit-exact selects it as
//! `CAST(col AS DOUBLE)` (the exact widening); `from_text` accepts both forms.
//! BIT arrives as its big-endian bytes.
//!
//! **Writing** ([`Value::write_sql_literal`]): each value becomes a literal
//! that the server turns into exactly this value, and that converts into a
//! changed column type the way the server's own `ALTER TABLE` would:
//! integers and DECIMAL bare (numeric context), FLOAT/DOUBLE in shortest
//! round-trip scientific form (a DOUBLE literal; a FLOAT is written as its
//! exact double widening, so no double rounding), strings as
//! `_charset X'..'` (binary as `_binary X'..'`), temporal values as quoted
//! literals with microseconds, YEAR with four digits (`0000` is not `2000`),
//! BIT as an unsigned integer. Fractional seconds are written with the
//! column's own number of digits (`fsp`), as the server prints them, so a
//! DATETIME(2) written into a VARCHAR reads `…:07.12` as the server's own
//! ALTER gives.
//!
//! The [`ColumnSpec`] given to both describes the values as they are *read*
//! (the source column's kind and charset); the target column may differ and
//! the server converts.
//!
//! **Time zones** ([`ZoneShift`]): every wraith session runs in UTC, so a
//! TIMESTAMP travels as its exact instant. The server's own ALTER converts a
//! TIMESTAMP into any other type (and any DATE/DATETIME into a TIMESTAMP) in
//! the server's time zone instead. A spec whose column is TIMESTAMP on
//! exactly one side carries that zone, and its literal is wrapped in the
//! conversion ([`ZoneShift::wrap`]), which the server evaluates with its own
//! time zone rules (`CONVERT_TZ`, the function its TIMESTAMP columns use).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One column value, exact.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Signed integer types and BOOL.
    Int(i64),
    /// Unsigned integer types.
    UInt(u64),
    /// FLOAT, bit-exact.
    Float(f32),
    /// DOUBLE, bit-exact.
    Double(f64),
    /// DECIMAL as exact text, as the server prints it (e.g. `-12.3400`).
    Decimal(String),
    /// CHAR/VARCHAR/TEXT (raw bytes in the column's charset),
    /// BINARY/VARBINARY/BLOB (trailing zero bytes kept), JSON text, ENUM
    /// label, SET labels (`a,b`).
    Bytes(Vec<u8>),
    /// DATE; `0000-00-00` allowed.
    Date { year: u16, month: u8, day: u8 },
    /// TIME, from `-838:59:59.000000` to `838:59:59.000000`.
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    /// DATETIME and TIMESTAMP (TIMESTAMP read and written in `+00:00`).
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    /// YEAR; `0` is the zero year `0000`.
    Year(u16),
    /// BIT(n), n <= 64.
    Bit(u64),
}

/// One row: values in the order of the column list they are written with.
pub type Row = Vec<Value>;

/// The kind of a column, as far as reading and writing values goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnKind {
    /// TINYINT .. BIGINT, BOOL (signedness in [`ColumnSpec::unsigned`]).
    Int,
    /// FLOAT.
    Float,
    /// DOUBLE / REAL.
    Double,
    /// DECIMAL / NUMERIC.
    Decimal,
    /// CHAR, VARCHAR, TEXT types (and MariaDB's JSON, which is LONGTEXT).
    Text,
    /// BINARY, VARBINARY, BLOB types.
    Binary,
    /// MySQL's native JSON.
    Json,
    /// ENUM (values are labels).
    Enum,
    /// SET (values are comma-separated labels).
    Set,
    /// DATE.
    Date,
    /// TIME.
    Time,
    /// DATETIME.
    DateTime,
    /// TIMESTAMP.
    Timestamp,
    /// YEAR.
    Year,
    /// BIT(n).
    Bit,
    /// GEOMETRY and its subtypes (POINT, LINESTRING, POLYGON, MULTI*,
    /// GEOMETRYCOLLECTION): the server's internal bytes, a 4-byte
    /// little-endian SRID then the WKB, exactly as stored.
    Geometry,
    /// MariaDB's INET4: its 4-byte binary form (network order).
    Inet4,
    /// MariaDB's INET6: its 16-byte binary form (network order).
    Inet6,
    /// MariaDB's UUID: its 16-byte binary form (`CAST(u AS BINARY(16))`).
    Uuid,
}

impl ColumnKind {
    /// Maps `information_schema.COLUMNS.DATA_TYPE` to a kind; `None` for types
    /// wraith does not carry (MariaDB 11.7's VECTOR, or any type name this
    /// version of wraith does not know): those are refused by `wraith check`.
    ///
    /// MariaDB reports JSON columns as `longtext` (with a `json_valid` CHECK):
    /// they are [`ColumnKind::Text`], which carries them exactly. MariaDB's
    /// `inet4`, `inet6` and `uuid` are carried as their fixed binary form
    /// (what a row event holds), never as text: see [`ColumnKind::read_expr`].
    pub fn from_data_type(data_type: &str) -> Option<ColumnKind> {
        let t = data_type.trim().to_ascii_lowercase();
        Some(match t.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "bool"
            | "boolean" | "serial" => ColumnKind::Int,
            "float" => ColumnKind::Float,
            "double" | "real" | "double precision" => ColumnKind::Double,
            "decimal" | "numeric" | "fixed" | "dec" => ColumnKind::Decimal,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "nchar"
            | "nvarchar" => ColumnKind::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                ColumnKind::Binary
            }
            "json" => ColumnKind::Json,
            "enum" => ColumnKind::Enum,
            "set" => ColumnKind::Set,
            "date" => ColumnKind::Date,
            "time" => ColumnKind::Time,
            "datetime" => ColumnKind::DateTime,
            "timestamp" => ColumnKind::Timestamp,
            "year" => ColumnKind::Year,
            "bit" => ColumnKind::Bit,
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" => ColumnKind::Geometry,
            "inet4" => ColumnKind::Inet4,
            "inet6" => ColumnKind::Inet6,
            "uuid" => ColumnKind::Uuid,
            _ => return None,
        })
    }

    /// The length of the fixed binary form of INET4, INET6 and UUID values.
    pub fn fixed_binary_len(self) -> Option<usize> {
        match self {
            ColumnKind::Inet4 => Some(4),
            ColumnKind::Inet6 | ColumnKind::Uuid => Some(16),
            _ => None,
        }
    }

    /// The SQL type name of INET4, INET6 and UUID (for `CAST(.. AS ..)`).
    pub fn fixed_binary_type(self) -> Option<&'static str> {
        match self {
            ColumnKind::Inet4 => Some("INET4"),
            ColumnKind::Inet6 => Some("INET6"),
            ColumnKind::Uuid => Some("UUID"),
            _ => None,
        }
    }

    /// The expression that reads column `col` (quoted SQL) so that
    /// [`Value::from_text`] gets the value's exact bytes: INET4, INET6 and
    /// UUID as their fixed binary form (the text protocol would print their
    /// text, which a row event does not carry), FLOAT widened to DOUBLE (the
    /// text protocol prints 6 digits), everything else as it is.
    pub fn read_expr(self, col: &str) -> String {
        match self {
            ColumnKind::Float => format!("CAST({col} AS DOUBLE)"),
            k => match k.fixed_binary_len() {
                Some(n) => format!("CAST({col} AS BINARY({n}))"),
                None => col.to_string(),
            },
        }
    }

    /// Whether values of this kind are character strings with a charset.
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            ColumnKind::Text | ColumnKind::Json | ColumnKind::Enum | ColumnKind::Set
        )
    }
}

/// Describes one column: enough to decode, encode and write its values exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name (unquoted).
    pub name: String,
    /// What the values are.
    pub kind: ColumnKind,
    /// For [`ColumnKind::Int`]: UNSIGNED.
    pub unsigned: bool,
    /// For textual kinds: the charset of the bytes (`utf8mb4`, `latin1`, ...).
    pub charset: Option<String>,
    /// Fractional seconds precision of temporal kinds (0..=6).
    pub fsp: u8,
    /// The conversion between UTC and the server's time zone that values of
    /// this column need on their way into the target column (TIMESTAMP on
    /// exactly one side); `None` for every other column.
    #[serde(default)]
    pub zone_shift: Option<ZoneShift>,
}

/// A conversion the server's own ALTER makes in its time zone, done
/// explicitly because wraith's sessions run in UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZoneShift {
    /// A TIMESTAMP (read as its UTC instant) into a column of another type:
    /// the value becomes the server zone's local DATETIME first.
    ToLocal(String),
    /// A DATE or DATETIME (local time of the server's zone) into a TIMESTAMP
    /// column: the value becomes its UTC instant. A local time the zone does
    /// not have (a daylight-saving gap) or outside the TIMESTAMP range is
    /// refused by the server with [`ZoneShift::NOT_IN_ZONE`] as the value.
    ToUtc(String),
}

impl ZoneShift {
    /// The value the conversion gives for a local time that has no instant:
    /// the server refuses it (strict mode) with this text in its message.
    pub const NOT_IN_ZONE: &'static str = "not a TIMESTAMP in the server time zone";

    /// The server's time zone, e.g. `+05:00`, `SYSTEM`, `Europe/Paris`.
    pub fn zone(&self) -> &str {
        match self {
            ZoneShift::ToLocal(z) | ZoneShift::ToUtc(z) => z,
        }
    }

    /// SQL converting `x` (a DATE/DATETIME/TIMESTAMP-typed expression):
    /// `zero` is a condition true for the zero date (and any year-0 value,
    /// which has no zone), and `zero_value` what such a value becomes (the
    /// server keeps the zero date as it is; `CONVERT_TZ` would warn).
    pub fn wrap(&self, x: &str, zero: &str, zero_value: &str) -> String {
        let z = quote_str(self.zone());
        match self {
            ZoneShift::ToLocal(_) => {
                format!("IF({zero}, {zero_value}, CONVERT_TZ({x}, '+00:00', {z}))")
            }
            // Round trip: a local time in a gap, or outside the TIMESTAMP
            // range (where CONVERT_TZ returns its argument), does not come
            // back to itself.
            ZoneShift::ToUtc(_) => format!(
                "CASE WHEN {zero} THEN {zero_value} \
                 WHEN CONVERT_TZ(CONVERT_TZ({x}, {z}, '+00:00'), '+00:00', {z}) <=> {x} \
                 THEN CONVERT_TZ({x}, {z}, '+00:00') ELSE '{}' END",
                Self::NOT_IN_ZONE
            ),
        }
    }

    /// [`ZoneShift::wrap`] for a column or other expression of a temporal type.
    pub fn wrap_expr(&self, x: &str) -> String {
        self.wrap(x, &format!("YEAR({x}) = 0"), x)
    }
}

/// Quotes a string literal for SQL text (quotes, backslashes and NUL escaped).
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

impl ColumnSpec {
    /// A spec with no charset and no fsp.
    pub fn new(name: impl Into<String>, kind: ColumnKind) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            kind,
            unsigned: false,
            charset: None,
            fsp: 0,
            zone_shift: None,
        }
    }
}

/// A column value the server sent that does not parse as its kind.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}` ({kind:?}): cannot read value {shown}: {reason}")]
pub struct ValueError {
    /// Column name.
    pub column: String,
    /// The kind it was parsed as.
    pub kind: ColumnKind,
    /// The raw value, printable.
    pub shown: String,
    /// What was wrong.
    pub reason: &'static str,
}

fn bad(spec: &ColumnSpec, raw: &[u8], reason: &'static str) -> ValueError {
    let mut shown = String::new();
    if raw.len() <= 64 && raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        shown.push('\'');
        shown.push_str(&String::from_utf8_lossy(raw));
        shown.push('\'');
    } else {
        shown.push_str("0x");
        for b in raw.iter().take(64) {
            let _ = write!(shown, "{b:02X}");
        }
        if raw.len() > 64 {
            shown.push_str("...");
        }
    }
    ValueError {
        column: spec.name.clone(),
        kind: spec.kind,
        shown,
        reason,
    }
}

fn parse_num<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn digits_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0')))
}

/// Parses `.ffffff` (1..=6 digits) into microseconds; empty input is 0.
fn parse_frac(s: &[u8]) -> Option<u32> {
    if s.is_empty() {
        return Some(0);
    }
    let digits = s.strip_prefix(b".")?;
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    let v = digits_u32(digits)?;
    Some(v * 10u32.pow(6 - digits.len() as u32))
}

fn parse_date(s: &[u8]) -> Option<(u16, u8, u8)> {
    if s.len() != 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let y = digits_u32(&s[0..4])?;
    let m = digits_u32(&s[5..7])?;
    let d = digits_u32(&s[8..10])?;
    if m > 12 || d > 31 {
        return None;
    }
    Some((y as u16, m as u8, d as u8))
}

/// `HH:MM:SS[.ffffff]` with HH up to 3 digits.
fn parse_hms(s: &[u8]) -> Option<(u32, u8, u8, u32)> {
    let c1 = s.iter().position(|&b| b == b':')?;
    let h = digits_u32(&s[..c1])?;
    let rest = &s[c1 + 1..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let m = digits_u32(&rest[0..2])?;
    let sec = digits_u32(&rest[3..5])?;
    let micros = parse_frac(&rest[5..])?;
    if m > 59 || sec > 59 {
        return None;
    }
    Some((h, m as u8, sec as u8, micros))
}

fn is_decimal_text(s: &[u8]) -> bool {
    let body = s
        .strip_prefix(b"-")
        .or_else(|| s.strip_prefix(b"+"))
        .unwrap_or(s);
    let mut seen_digit = false;
    let mut seen_dot = false;
    for &b in body {
        match b {
            b'0'..=b'9' => seen_digit = true,
            b'.' if !seen_dot => seen_dot = true,
            _ => return false,
        }
    }
    seen_digit
}

impl Value {
    /// Decodes one column of a row read with the TEXT protocol from a session
    /// with `SET NAMES binary`. `NULL` becomes [`Value::Null`]; bytes are
    /// parsed by `spec.kind`. Values of the binary protocol are accepted too.
    pub fn from_text(raw: mysql_async::Value, spec: &ColumnSpec) -> Result<Value, ValueError> {
        use mysql_async::Value as M;
        let bytes = match raw {
            M::NULL => return Ok(Value::Null),
            M::Bytes(b) => b,
            M::Int(i) => {
                return Ok(match spec.kind {
                    ColumnKind::Year => Value::Year(i as u16),
                    ColumnKind::Bit => Value::Bit(i as u64),
                    _ if spec.unsigned => Value::UInt(i as u64),
                    _ => Value::Int(i),
                })
            }
            M::UInt(u) => {
                return Ok(match spec.kind {
                    ColumnKind::Year => Value::Year(u as u16),
                    ColumnKind::Bit => Value::Bit(u),
                    _ => Value::UInt(u),
                })
            }
            M::Float(f) => return Ok(Value::Float(f)),
            M::Double(d) => {
                return Ok(if spec.kind == ColumnKind::Float {
                    Value::Float(d as f32)
                } else {
                    Value::Double(d)
                })
            }
            M::Date(year, month, day, hour, minute, second, micros) => {
                return Ok(if spec.kind == ColumnKind::Date {
                    Value::Date { year, month, day }
                } else {
                    Value::DateTime {
                        year,
                        month,
                        day,
                        hour,
                        minute,
                        second,
                        micros,
                    }
                })
            }
            M::Time(negative, days, h, minutes, seconds, micros) => {
                return Ok(Value::Time {
                    negative,
                    hours: days * 24 + u32::from(h),
                    minutes,
                    seconds,
                    micros,
                })
            }
        };
        let b = bytes.as_slice();
        let v = match spec.kind {
            ColumnKind::Int => {
                if spec.unsigned || b.first() != Some(&b'-') {
                    match parse_num::<u64>(b) {
                        Some(u) if spec.unsigned => Value::UInt(u),
                        Some(u) => {
                            Value::Int(i64::try_from(u).map_err(|_| bad(spec, b, "out of range"))?)
                        }
                        None => return Err(bad(spec, b, "not an integer")),
                    }
                } else {
                    Value::Int(parse_num(b).ok_or_else(|| bad(spec, b, "not an integer"))?)
                }
            }
            ColumnKind::Float => {
                // Either the 6-digit text protocol form or CAST(col AS DOUBLE):
                // both round to the stored float when narrowed.
                let d: f64 = parse_num(b).ok_or_else(|| bad(spec, b, "not a number"))?;
                Value::Float(d as f32)
            }
            ColumnKind::Double => {
                Value::Double(parse_num(b).ok_or_else(|| bad(spec, b, "not a number"))?)
            }
            ColumnKind::Decimal => {
                if !is_decimal_text(b) {
                    return Err(bad(spec, b, "not a decimal"));
                }
                // Checked ASCII above.
                Value::Decimal(String::from_utf8_lossy(b).into_owned())
            }
            ColumnKind::Text
            | ColumnKind::Binary
            | ColumnKind::Json
            | ColumnKind::Enum
            | ColumnKind::Set => Value::Bytes(bytes),
            // The internal form, SRID included; the server checks it on write.
            ColumnKind::Geometry => {
                if b.len() < 4 {
                    return Err(bad(spec, b, "not a geometry (shorter than its SRID)"));
                }
                Value::Bytes(bytes)
            }
            ColumnKind::Inet4 | ColumnKind::Inet6 | ColumnKind::Uuid => {
                if Some(b.len()) != spec.kind.fixed_binary_len() {
                    return Err(bad(
                        spec,
                        b,
                        "not the fixed binary form (read it with ColumnKind::read_expr)",
                    ));
                }
                Value::Bytes(bytes)
            }
            ColumnKind::Date => {
                let (year, month, day) = parse_date(b).ok_or_else(|| bad(spec, b, "not a date"))?;
                Value::Date { year, month, day }
            }
            ColumnKind::Time => {
                let (negative, body) = match b.strip_prefix(b"-") {
                    Some(rest) => (true, rest),
                    None => (false, b),
                };
                let (hours, minutes, seconds, micros) =
                    parse_hms(body).ok_or_else(|| bad(spec, b, "not a time"))?;
                Value::Time {
                    negative,
                    hours,
                    minutes,
                    seconds,
                    micros,
                }
            }
            ColumnKind::DateTime | ColumnKind::Timestamp => {
                if b.len() < 19 || b[10] != b' ' {
                    return Err(bad(spec, b, "not a datetime"));
                }
                let (year, month, day) =
                    parse_date(&b[..10]).ok_or_else(|| bad(spec, b, "not a datetime"))?;
                let (h, minute, second, micros) =
                    parse_hms(&b[11..]).ok_or_else(|| bad(spec, b, "not a datetime"))?;
                if h > 23 {
                    return Err(bad(spec, b, "hour out of range"));
                }
                Value::DateTime {
                    year,
                    month,
                    day,
                    hour: h as u8,
                    minute,
                    second,
                    micros,
                }
            }
            ColumnKind::Year => {
                Value::Year(parse_num(b).ok_or_else(|| bad(spec, b, "not a year"))?)
            }
            ColumnKind::Bit => {
                if b.len() > 8 {
                    return Err(bad(spec, b, "BIT wider than 64 bits"));
                }
                Value::Bit(b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
            }
        };
        Ok(v)
    }

    /// Appends this value as a SQL literal that, inserted into a column whose
    /// values `spec` describes, stores exactly this value (and converts as the
    /// server's own ALTER would into a changed column type). The connection
    /// must use `SET NAMES binary`.
    pub fn write_sql_literal(&self, spec: &ColumnSpec, out: &mut Vec<u8>) {
        if let Some(shift) = &spec.zone_shift {
            if let Some(typed) = self.typed_temporal_literal(spec.fsp) {
                out.extend_from_slice(shift.wrap_expr(&typed).as_bytes());
                return;
            }
        }
        match self {
            Value::Null => out.extend_from_slice(b"NULL"),
            Value::Int(i) => push_fmt(out, format_args!("{i}")),
            Value::UInt(u) => push_fmt(out, format_args!("{u}")),
            Value::Float(f) => write_double(f64::from(*f), out),
            Value::Double(d) => write_double(*d, out),
            Value::Decimal(s) => {
                if is_decimal_text(s.as_bytes()) {
                    out.extend_from_slice(s.as_bytes());
                } else {
                    // Not a number: let the server refuse it rather than guess.
                    write_hex_string(Some("binary"), s.as_bytes(), out);
                }
            }
            Value::Bytes(b) => {
                if let Some(ty) = spec.kind.fixed_binary_type() {
                    // The binary form becomes the typed value (never text):
                    // the server then converts it into the target column as
                    // its own ALTER would (INET6 into VARCHAR: its text).
                    out.extend_from_slice(b"CAST(");
                    write_hex_string(Some("binary"), b, out);
                    push_fmt(out, format_args!(" AS {ty})"));
                    return;
                }
                let charset = if spec.kind.is_textual() {
                    Some(charset_of(spec))
                } else {
                    Some("binary")
                };
                write_hex_string(charset, b, out);
            }
            Value::Date { .. } | Value::Time { .. } | Value::DateTime { .. } => {
                out.push(b'\'');
                self.write_temporal_text(spec.fsp, out);
                out.push(b'\'');
            }
            Value::Year(y) => push_fmt(out, format_args!("{y:04}")),
            Value::Bit(v) => push_fmt(out, format_args!("{v}")),
        }
    }

    /// `TIMESTAMP'…'` or `DATE'…'` (typed, so the server converts it as a
    /// temporal value, with exactly `fsp` fractional digits); `None` for
    /// other values.
    fn typed_temporal_literal(&self, fsp: u8) -> Option<String> {
        let prefix: &[u8] = match self {
            Value::DateTime { .. } => b"TIMESTAMP'",
            Value::Date { .. } => b"DATE'",
            _ => return None,
        };
        let mut out = prefix.to_vec();
        self.write_temporal_text(fsp, &mut out);
        out.push(b'\'');
        // Digits, dashes, colons, dots and spaces only.
        String::from_utf8(out).ok()
    }

    /// The plain text of a value with `fsp` fractional digits (the column's
    /// precision, as the server prints it), or 6 when the value has more.
    pub fn write_temporal_text(&self, fsp: u8, out: &mut Vec<u8>) {
        let digits = |micros: u32| -> usize {
            let fsp = usize::from(fsp.min(6));
            if micros % 10u32.pow(6 - fsp as u32) == 0 {
                fsp
            } else {
                6
            }
        };
        let frac = |micros: u32, out: &mut Vec<u8>| {
            let n = digits(micros);
            if n > 0 {
                let text = format!("{micros:06}");
                out.push(b'.');
                out.extend_from_slice(&text.as_bytes()[..n]);
            }
        };
        match self {
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => {
                let sign = if *negative { "-" } else { "" };
                push_fmt(
                    out,
                    format_args!("{sign}{hours:02}:{minutes:02}:{seconds:02}"),
                );
                frac(*micros, out);
            }
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => {
                push_fmt(
                    out,
                    format_args!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}"),
                );
                frac(*micros, out);
            }
            other => other.write_plain_text(out),
        }
    }

    /// Appends the value's plain text form (no quotes, no escaping): what
    /// `LOAD DATA` reads into a column, and the body of temporal literals.
    /// Bytes are appended raw; `Null` appends nothing.
    pub fn write_plain_text(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => {}
            Value::Int(i) => push_fmt(out, format_args!("{i}")),
            Value::UInt(u) => push_fmt(out, format_args!("{u}")),
            Value::Float(f) => write_double(f64::from(*f), out),
            Value::Double(d) => write_double(*d, out),
            Value::Decimal(s) => out.extend_from_slice(s.as_bytes()),
            Value::Bytes(b) => out.extend_from_slice(b),
            Value::Date { year, month, day } => {
                push_fmt(out, format_args!("{year:04}-{month:02}-{day:02}"))
            }
            // All six digits of the fraction, whatever the column keeps.
            Value::Time { .. } | Value::DateTime { .. } => self.write_temporal_text(6, out),
            Value::Year(y) => push_fmt(out, format_args!("{y:04}")),
            Value::Bit(v) => push_fmt(out, format_args!("{v}")),
        }
    }
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(args);
}

/// The charset introducer for a textual spec: only `[A-Za-z0-9_]` names are
/// used; anything else (or none) falls back to utf8mb4.
pub(crate) fn charset_of(spec: &ColumnSpec) -> &str {
    match spec.charset.as_deref() {
        Some(cs)
            if !cs.is_empty() && cs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            cs
        }
        _ => "utf8mb4",
    }
}

/// Shortest round-trip scientific form: `1.5e0`, `-0e0`, `1.7976931348623157e308`.
/// Non-finite values cannot be stored by MySQL; they are written so that the
/// server refuses them instead of storing something else.
fn write_double(d: f64, out: &mut Vec<u8>) {
    if d.is_finite() {
        push_fmt(out, format_args!("{d:e}"));
    } else {
        out.extend_from_slice(b"'non-finite'");
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `_charset X'..'`; the empty string is `_charset ''` (X'' is not valid
/// everywhere).
fn write_hex_string(charset: Option<&str>, bytes: &[u8], out: &mut Vec<u8>) {
    if let Some(cs) = charset {
        out.push(b'_');
        out.extend_from_slice(cs.as_bytes());
        out.push(b' ');
    }
    if bytes.is_empty() {
        out.extend_from_slice(b"''");
        return;
    }
    out.reserve(bytes.len() * 2 + 3);
    out.extend_from_slice(b"X'");
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::Value as M;

    fn spec(kind: ColumnKind) -> ColumnSpec {
        ColumnSpec::new("c", kind)
    }

    fn lit(v: &Value, s: &ColumnSpec) -> String {
        let mut out = Vec::new();
        v.write_sql_literal(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn text(s: &str, sp: &ColumnSpec) -> Value {
        Value::from_text(M::Bytes(s.as_bytes().to_vec()), sp).unwrap()
    }

    #[test]
    fn decodes_integers() {
        let mut u = spec(ColumnKind::Int);
        assert_eq!(text("-9223372036854775808", &u), Value::Int(i64::MIN));
        assert_eq!(text("9223372036854775807", &u), Value::Int(i64::MAX));
        assert!(Value::from_text(M::Bytes(b"9223372036854775808".to_vec()), &u).is_err());
        assert!(Value::from_text(M::Bytes(b"12a".to_vec()), &u).is_err());
        u.unsigned = true;
        assert_eq!(text("18446744073709551615", &u), Value::UInt(u64::MAX));
        assert_eq!(text("0", &u), Value::UInt(0));
        assert_eq!(Value::from_text(M::NULL, &u).unwrap(), Value::Null);
    }

    #[test]
    fn decodes_floats_bit_exact() {
        let f = spec(ColumnKind::Float);
        assert_eq!(text("0.10000000149011612", &f), Value::Float(0.1));
        assert_eq!(text("0.1", &f), Value::Float(0.1));
        assert_eq!(text("3.4028234663852886e38", &f), Value::Float(f32::MAX));
        let d = spec(ColumnKind::Double);
        assert_eq!(text("-1.7976931348623157e308", &d), Value::Double(f64::MIN));
        assert_eq!(text("5e-324", &d), Value::Double(5e-324));
        match text("-0", &d) {
            Value::Double(x) => assert!(x == 0.0 && x.is_sign_negative()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_decimal_and_strings() {
        let d = spec(ColumnKind::Decimal);
        assert_eq!(text("-12.3400", &d), Value::Decimal("-12.3400".into()));
        assert!(Value::from_text(M::Bytes(b"1e5".to_vec()), &d).is_err());
        assert!(Value::from_text(M::Bytes(b"".to_vec()), &d).is_err());
        let t = spec(ColumnKind::Text);
        assert_eq!(text("", &t), Value::Bytes(vec![]));
        let b = spec(ColumnKind::Binary);
        assert_eq!(
            Value::from_text(M::Bytes(vec![1, 0, 0]), &b).unwrap(),
            Value::Bytes(vec![1, 0, 0])
        );
    }

    #[test]
    fn decodes_temporal() {
        assert_eq!(
            text("0000-00-00", &spec(ColumnKind::Date)),
            Value::Date {
                year: 0,
                month: 0,
                day: 0
            }
        );
        assert_eq!(
            text("-838:59:59.000000", &spec(ColumnKind::Time)),
            Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 0
            }
        );
        assert_eq!(
            text("01:02:03.5", &spec(ColumnKind::Time)),
            Value::Time {
                negative: false,
                hours: 1,
                minutes: 2,
                seconds: 3,
                micros: 500_000
            }
        );
        assert_eq!(
            text("2038-01-19 03:14:07.999999", &spec(ColumnKind::Timestamp)),
            Value::DateTime {
                year: 2038,
                month: 1,
                day: 19,
                hour: 3,
                minute: 14,
                second: 7,
                micros: 999_999
            }
        );
        assert_eq!(
            text("1000-01-01 00:00:00", &spec(ColumnKind::DateTime)),
            Value::DateTime {
                year: 1000,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                micros: 0
            }
        );
        assert!(
            Value::from_text(M::Bytes(b"2020-13-01".to_vec()), &spec(ColumnKind::Date)).is_err()
        );
        assert!(Value::from_text(M::Bytes(b"12:3:4".to_vec()), &spec(ColumnKind::Time)).is_err());
        assert_eq!(text("0000", &spec(ColumnKind::Year)), Value::Year(0));
        assert_eq!(text("2155", &spec(ColumnKind::Year)), Value::Year(2155));
    }

    #[test]
    fn decodes_bit_bytes() {
        let b = spec(ColumnKind::Bit);
        assert_eq!(
            Value::from_text(M::Bytes(vec![0xFF; 8]), &b).unwrap(),
            Value::Bit(u64::MAX)
        );
        assert_eq!(
            Value::from_text(M::Bytes(vec![1, 2]), &b).unwrap(),
            Value::Bit(0x102)
        );
        assert!(Value::from_text(M::Bytes(vec![0; 9]), &b).is_err());
    }

    #[test]
    fn formats_literals() {
        let i = spec(ColumnKind::Int);
        assert_eq!(lit(&Value::Int(i64::MIN), &i), "-9223372036854775808");
        assert_eq!(lit(&Value::UInt(u64::MAX), &i), "18446744073709551615");
        assert_eq!(lit(&Value::Null, &i), "NULL");
        let d = spec(ColumnKind::Double);
        assert_eq!(lit(&Value::Double(f64::MAX), &d), "1.7976931348623157e308");
        assert_eq!(lit(&Value::Double(-0.0), &d), "-0e0");
        assert_eq!(lit(&Value::Double(0.1), &d), "1e-1");
        assert_eq!(lit(&Value::Double(f64::NAN), &d), "'non-finite'");
        let f = spec(ColumnKind::Float);
        assert_eq!(lit(&Value::Float(f32::MAX), &f), "3.4028234663852886e38");
        assert_eq!(lit(&Value::Float(0.1), &f), "1.0000000149011612e-1");
        let dec = spec(ColumnKind::Decimal);
        assert_eq!(
            lit(&Value::Decimal("-0012.3400".into()), &dec),
            "-0012.3400"
        );
        assert_eq!(
            lit(&Value::Decimal("1;drop".into()), &dec),
            "_binary X'313B64726F70'"
        );
        let mut t = spec(ColumnKind::Text);
        t.charset = Some("latin1".into());
        assert_eq!(lit(&Value::Bytes(vec![0xE9, 0x20]), &t), "_latin1 X'E920'");
        assert_eq!(lit(&Value::Bytes(vec![]), &t), "_latin1 ''");
        t.charset = Some("x' or 1".into());
        assert_eq!(lit(&Value::Bytes(b"a".to_vec()), &t), "_utf8mb4 X'61'");
        let b = spec(ColumnKind::Binary);
        assert_eq!(lit(&Value::Bytes(vec![1, 0]), &b), "_binary X'0100'");
        assert_eq!(
            lit(
                &Value::Date {
                    year: 0,
                    month: 0,
                    day: 0
                },
                &spec(ColumnKind::Date)
            ),
            "'0000-00-00'"
        );
        assert_eq!(
            lit(
                &Value::Time {
                    negative: true,
                    hours: 838,
                    minutes: 59,
                    seconds: 59,
                    micros: 0
                },
                &spec(ColumnKind::Time)
            ),
            "'-838:59:59'"
        );
        assert_eq!(
            lit(
                &Value::DateTime {
                    year: 2038,
                    month: 1,
                    day: 19,
                    hour: 3,
                    minute: 14,
                    second: 7,
                    micros: 1
                },
                &spec(ColumnKind::Timestamp)
            ),
            "'2038-01-19 03:14:07.000001'"
        );
        assert_eq!(lit(&Value::Year(0), &spec(ColumnKind::Year)), "0000");
        assert_eq!(
            lit(&Value::Bit(u64::MAX), &spec(ColumnKind::Bit)),
            "18446744073709551615"
        );
    }

    #[test]
    fn temporal_literals_carry_the_column_precision() {
        let mut dt = spec(ColumnKind::DateTime);
        let v = Value::DateTime {
            year: 2020,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            micros: 120_000,
        };
        dt.fsp = 2;
        assert_eq!(lit(&v, &dt), "'2020-01-02 03:04:05.12'");
        dt.fsp = 6;
        assert_eq!(lit(&v, &dt), "'2020-01-02 03:04:05.120000'");
        // More digits than the precision says: all of them, never fewer.
        dt.fsp = 1;
        assert_eq!(lit(&v, &dt), "'2020-01-02 03:04:05.120000'");
    }

    #[test]
    fn zone_shifted_literals_are_converted_by_the_server() {
        let mut ts = spec(ColumnKind::Timestamp);
        ts.fsp = 3;
        ts.zone_shift = Some(ZoneShift::ToLocal("+05:00".into()));
        let v = Value::DateTime {
            year: 2020,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            micros: 123_000,
        };
        assert_eq!(
            lit(&v, &ts),
            "IF(YEAR(TIMESTAMP'2020-01-02 03:04:05.123') = 0, TIMESTAMP'2020-01-02 03:04:05.123', \
             CONVERT_TZ(TIMESTAMP'2020-01-02 03:04:05.123', '+00:00', '+05:00'))"
        );
        assert_eq!(lit(&Value::Null, &ts), "NULL");
        let mut d = spec(ColumnKind::Date);
        d.zone_shift = Some(ZoneShift::ToUtc("Europe/x'y".into()));
        let out = lit(
            &Value::Date {
                year: 2020,
                month: 1,
                day: 2,
            },
            &d,
        );
        assert!(
            out.starts_with("CASE WHEN YEAR(DATE'2020-01-02') = 0"),
            "{out}"
        );
        assert!(out.contains("'Europe/x''y'"), "{out}");
        assert!(
            out.ends_with(&format!("ELSE '{}' END", ZoneShift::NOT_IN_ZONE)),
            "{out}"
        );
    }

    #[test]
    fn float_literals_round_trip() {
        for x in [
            0.0f64,
            -0.0,
            1.0,
            0.1,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -123456.789e-200,
        ] {
            let mut out = Vec::new();
            write_double(x, &mut out);
            let back: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }

    #[test]
    fn maps_data_types() {
        assert_eq!(ColumnKind::from_data_type("BIGINT"), Some(ColumnKind::Int));
        assert_eq!(
            ColumnKind::from_data_type("longtext"),
            Some(ColumnKind::Text)
        );
        assert_eq!(
            ColumnKind::from_data_type("longblob"),
            Some(ColumnKind::Binary)
        );
        assert_eq!(ColumnKind::from_data_type("json"), Some(ColumnKind::Json));
        assert_eq!(
            ColumnKind::from_data_type("timestamp"),
            Some(ColumnKind::Timestamp)
        );
        for spatial in [
            "geometry",
            "POINT",
            "polygon",
            "geometrycollection",
            "multilinestring",
        ] {
            assert_eq!(
                ColumnKind::from_data_type(spatial),
                Some(ColumnKind::Geometry),
                "{spatial}"
            );
        }
        assert_eq!(ColumnKind::from_data_type("inet6"), Some(ColumnKind::Inet6));
        assert_eq!(ColumnKind::from_data_type("uuid"), Some(ColumnKind::Uuid));
        // Types wraith has no exact path for: `check` refuses them.
        assert_eq!(ColumnKind::from_data_type("vector"), None);
        assert_eq!(ColumnKind::from_data_type("my_type"), None);
    }

    #[test]
    fn fixed_binary_kinds_travel_as_their_binary_form() {
        let i4 = spec(ColumnKind::Inet4);
        assert_eq!(i4.kind.read_expr("`a`"), "CAST(`a` AS BINARY(4))");
        assert_eq!(
            Value::from_text(M::Bytes(vec![10, 0, 0, 0]), &i4).unwrap(),
            Value::Bytes(vec![10, 0, 0, 0])
        );
        // Text (the plain column read) is refused, never taken as bytes.
        assert!(Value::from_text(M::Bytes(b"10.0.0.0".to_vec()), &i4).is_err());
        assert_eq!(
            lit(&Value::Bytes(vec![10, 0, 0, 32]), &i4),
            "CAST(_binary X'0A000020' AS INET4)"
        );
        let u = spec(ColumnKind::Uuid);
        assert_eq!(u.kind.read_expr("`u`"), "CAST(`u` AS BINARY(16))");
        assert_eq!(
            lit(&Value::Bytes(vec![0; 16]), &u),
            "CAST(_binary X'00000000000000000000000000000000' AS UUID)"
        );
        let g = spec(ColumnKind::Geometry);
        assert_eq!(g.kind.read_expr("`g`"), "`g`");
        assert!(Value::from_text(M::Bytes(vec![0, 0]), &g).is_err());
        assert_eq!(
            lit(&Value::Bytes(vec![0xE6, 0x10, 0, 0, 1]), &g),
            "_binary X'E610000001'"
        );
        assert_eq!(
            spec(ColumnKind::Float).kind.read_expr("`f`"),
            "CAST(`f` AS DOUBLE)"
        );
    }
}
