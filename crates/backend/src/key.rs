//! Memcomparable key encoding (TiDB codec style).
//!
//! **For:** turning a tuple of key [`Value`]s into bytes whose lexicographic
//! (`memcmp`) order is the tuple's order, so the local backend's RocksDB keeps
//! rows sorted by the target's key and finds equal keys as equal bytes.
//!
//! **Leaves to others:** collations. Strings compare by their bytes (binary
//! order); two strings equal under a case-insensitive collation are different
//! keys here, and the server catches them as duplicates at import time.
//!
//! **Format:** each value is a flag byte then a payload; values are
//! concatenated, and every payload is self-delimiting so a tuple never is a
//! prefix of another tuple of the same arity.
//!
//! | flag | value | payload |
//! | --- | --- | --- |
//! | `0x00` | NULL | none (sorts first, as in SQL) |
//! | `0x01` | bytes | groups of 8 bytes, each followed by a marker `0xFF - padding` (TiDB's `EncodeBytes`) |
//! | `0x03` | signed int | 8 bytes big-endian with the sign bit flipped |
//! | `0x04` | unsigned int | 8 bytes big-endian |
//! | `0x05` | float/double | the f64 bits, negated if negative, sign bit set otherwise; `-0.0` is `0.0` |
//! | `0x06` | decimal | class (`0` negative, `1` zero, `2` positive), then for non-zero: exponent (i32, sign flipped) and significant digits ending in `0x00`, all inverted for negatives |
//! | `0x10` | date | year u16, month, day |
//! | `0x11` | time | signed microseconds as a signed int |
//! | `0x12` | datetime | year u16, month, day, hour, minute, second, micros u32 |
//! | `0x13` | year | u16 |
//! | `0x14` | bit | u64 |
//!
//! Decimals compare numerically (`1.5` and `1.50` are the same key), as the
//! server compares them. [`decode_key`] gives back values good enough to print
//! a key in an error: FLOAT comes back as DOUBLE, decimals without trailing
//! fractional zeros.

use crate::value::Value;

const NIL: u8 = 0x00;
const BYTES: u8 = 0x01;
const INT: u8 = 0x03;
const UINT: u8 = 0x04;
const FLOAT: u8 = 0x05;
const DECIMAL: u8 = 0x06;
const DATE: u8 = 0x10;
const TIME: u8 = 0x11;
const DATETIME: u8 = 0x12;
const YEAR: u8 = 0x13;
const BIT: u8 = 0x14;

const GROUP: usize = 8;
const MARKER: u8 = 0xFF;

const SIGN: u64 = 1 << 63;

/// A key that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed key at byte {offset}: {reason}")]
pub struct KeyError {
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// Appends the memcomparable encoding of `values` to `out`.
pub fn encode_key(values: &[&Value], out: &mut Vec<u8>) {
    for v in values {
        encode_one(v, out);
    }
}

fn encode_one(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(NIL),
        Value::Bytes(b) => {
            out.push(BYTES);
            encode_bytes(b, out);
        }
        Value::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&((*i as u64) ^ SIGN).to_be_bytes());
        }
        Value::UInt(u) => {
            out.push(UINT);
            out.extend_from_slice(&u.to_be_bytes());
        }
        Value::Float(f) => encode_float(f64::from(*f), out),
        Value::Double(d) => encode_float(*d, out),
        Value::Decimal(s) => encode_decimal(s, out),
        Value::Date { year, month, day } => {
            out.push(DATE);
            out.extend_from_slice(&year.to_be_bytes());
            out.push(*month);
            out.push(*day);
        }
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => {
            out.push(TIME);
            let total = ((i64::from(*hours) * 60 + i64::from(*minutes)) * 60 + i64::from(*seconds))
                * 1_000_000
                + i64::from(*micros);
            let signed = if *negative { -total } else { total };
            out.extend_from_slice(&((signed as u64) ^ SIGN).to_be_bytes());
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
            out.push(DATETIME);
            out.extend_from_slice(&year.to_be_bytes());
            out.extend_from_slice(&[*month, *day, *hour, *minute, *second]);
            out.extend_from_slice(&micros.to_be_bytes());
        }
        Value::Year(y) => {
            out.push(YEAR);
            out.extend_from_slice(&y.to_be_bytes());
        }
        Value::Bit(b) => {
            out.push(BIT);
            out.extend_from_slice(&b.to_be_bytes());
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.reserve((b.len() / GROUP + 1) * (GROUP + 1));
    let mut chunks = b.chunks_exact(GROUP);
    for c in &mut chunks {
        out.extend_from_slice(c);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0u8, pad));
    out.push(MARKER - pad as u8);
}

fn encode_float(d: f64, out: &mut Vec<u8>) {
    out.push(FLOAT);
    let d = if d == 0.0 { 0.0 } else { d };
    let bits = d.to_bits();
    let enc = if bits & SIGN != 0 { !bits } else { bits | SIGN };
    out.extend_from_slice(&enc.to_be_bytes());
}

/// Splits decimal text into (negative, significant digits, exponent) with
/// value = 0.d1d2.. * 10^exp and d1 != 0; `None` digits means zero.
fn decimal_parts(s: &str) -> (bool, Vec<u8>, i32) {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    let int_digits = int_part.trim_start_matches('0');
    let mut digits: Vec<u8> = int_digits
        .bytes()
        .chain(frac_part.bytes())
        .filter(u8::is_ascii_digit)
        .collect();
    let mut exp = int_digits.len() as i32;
    if int_digits.is_empty() {
        let lead = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..lead);
        exp = -(lead as i32);
    }
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    (neg, digits, exp)
}

fn encode_decimal(s: &str, out: &mut Vec<u8>) {
    out.push(DECIMAL);
    let (neg, digits, exp) = decimal_parts(s);
    if digits.is_empty() {
        out.push(1);
        return;
    }
    out.push(if neg { 0 } else { 2 });
    let start = out.len();
    out.extend_from_slice(&((exp as u32) ^ 0x8000_0000).to_be_bytes());
    out.extend_from_slice(&digits);
    out.push(0);
    if neg {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
}

/// Decodes a key made by [`encode_key`].
pub fn decode_key(bytes: &[u8]) -> Result<Vec<Value>, KeyError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (v, used) = decode_one(&bytes[pos..]).map_err(|reason| KeyError {
            offset: pos,
            reason,
        })?;
        out.push(v);
        pos += used;
    }
    Ok(out)
}

fn take<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], &'static str> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or("truncated value")
}

fn decode_one(b: &[u8]) -> Result<(Value, usize), &'static str> {
    let flag = *b.first().ok_or("empty")?;
    Ok(match flag {
        NIL => (Value::Null, 1),
        BYTES => {
            let mut data = Vec::new();
            let mut pos = 1;
            loop {
                let group: [u8; GROUP] = take(b, pos)?;
                let marker = *b.get(pos + GROUP).ok_or("truncated bytes")?;
                pos += GROUP + 1;
                let pad = usize::from(MARKER - marker);
                if pad > GROUP {
                    return Err("bad bytes marker");
                }
                data.extend_from_slice(&group[..GROUP - pad]);
                if pad > 0 {
                    break;
                }
            }
            (Value::Bytes(data), pos)
        }
        INT => (
            Value::Int((u64::from_be_bytes(take(b, 1)?) ^ SIGN) as i64),
            9,
        ),
        UINT => (Value::UInt(u64::from_be_bytes(take(b, 1)?)), 9),
        FLOAT => {
            let enc = u64::from_be_bytes(take(b, 1)?);
            let bits = if enc & SIGN != 0 { enc & !SIGN } else { !enc };
            (Value::Double(f64::from_bits(bits)), 9)
        }
        DECIMAL => {
            let class = *b.get(1).ok_or("truncated decimal")?;
            if class == 1 {
                return Ok((Value::Decimal("0".into()), 2));
            }
            let neg = class == 0;
            let inv = |x: u8| if neg { !x } else { x };
            let e: [u8; 4] = take(b, 2)?;
            let exp = (u32::from_be_bytes(e.map(inv)) ^ 0x8000_0000) as i32;
            let mut digits = Vec::new();
            let mut pos = 6;
            loop {
                let d = inv(*b.get(pos).ok_or("truncated decimal")?);
                pos += 1;
                if d == 0 {
                    break;
                }
                if !d.is_ascii_digit() {
                    return Err("bad decimal digit");
                }
                digits.push(d);
            }
            (Value::Decimal(decimal_text(neg, &digits, exp)), pos)
        }
        DATE => {
            let [y0, y1, month, day] = take::<4>(b, 1)?;
            (
                Value::Date {
                    year: u16::from_be_bytes([y0, y1]),
                    month,
                    day,
                },
                5,
            )
        }
        TIME => {
            let signed = (u64::from_be_bytes(take(b, 1)?) ^ SIGN) as i64;
            let total = signed.unsigned_abs();
            let micros = (total % 1_000_000) as u32;
            let secs = total / 1_000_000;
            (
                Value::Time {
                    negative: signed < 0,
                    hours: (secs / 3600) as u32,
                    minutes: (secs / 60 % 60) as u8,
                    seconds: (secs % 60) as u8,
                    micros,
                },
                9,
            )
        }
        DATETIME => {
            let [y0, y1, month, day, hour, minute, second] = take::<7>(b, 1)?;
            let micros = u32::from_be_bytes(take(b, 8)?);
            (
                Value::DateTime {
                    year: u16::from_be_bytes([y0, y1]),
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    micros,
                },
                12,
            )
        }
        YEAR => (Value::Year(u16::from_be_bytes(take(b, 1)?)), 3),
        BIT => (Value::Bit(u64::from_be_bytes(take(b, 1)?)), 9),
        _ => return Err("unknown flag"),
    })
}

fn decimal_text(neg: bool, digits: &[u8], exp: i32) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    let digits = std::str::from_utf8(digits).unwrap_or("");
    if exp <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', exp.unsigned_abs() as usize));
        s.push_str(digits);
    } else {
        let e = exp as usize;
        if digits.len() <= e {
            s.push_str(digits);
            s.extend(std::iter::repeat_n('0', e - digits.len()));
        } else {
            s.push_str(&digits[..e]);
            s.push('.');
            s.push_str(&digits[e..]);
        }
    }
    s
}

/// Formats a key tuple for people: `(5, 'abc')`, binary as `0x..`.
pub fn format_key(values: &[Value]) -> String {
    let mut s = String::from("(");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        format_value(v, &mut s);
    }
    s.push(')');
    s
}

fn format_value(v: &Value, s: &mut String) {
    use std::fmt::Write as _;
    match v {
        Value::Null => s.push_str("NULL"),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(t) if !t.chars().any(char::is_control) => {
                s.push('\'');
                s.push_str(&t.replace('\'', "''"));
                s.push('\'');
            }
            _ => {
                s.push_str("0x");
                for x in b {
                    let _ = write!(s, "{x:02X}");
                }
            }
        },
        Value::Int(i) => {
            let _ = write!(s, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(s, "{u}");
        }
        Value::Float(f) => {
            let _ = write!(s, "{f}");
        }
        Value::Double(d) => {
            let _ = write!(s, "{d}");
        }
        Value::Decimal(d) => s.push_str(d),
        Value::Year(y) => {
            let _ = write!(s, "{y:04}");
        }
        Value::Bit(b) => {
            let _ = write!(s, "b'{b:b}'");
        }
        other => {
            let mut out = Vec::new();
            other.write_plain_text(&mut out);
            s.push('\'');
            s.push_str(&String::from_utf8_lossy(&out));
            s.push('\'');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    /// A tiny deterministic generator (xorshift), so the property tests need
    /// no extra crate and fail reproducibly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn enc(vs: &[Value]) -> Vec<u8> {
        let refs: Vec<&Value> = vs.iter().collect();
        let mut out = Vec::new();
        encode_key(&refs, &mut out);
        out
    }

    fn check_order<T: Clone + std::fmt::Debug>(
        items: &[T],
        to_value: impl Fn(&T) -> Value,
        cmp: impl Fn(&T, &T) -> Ordering,
    ) {
        for a in items {
            for b in items {
                let (ea, eb) = (enc(&[to_value(a)]), enc(&[to_value(b)]));
                assert_eq!(ea.cmp(&eb), cmp(a, b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn signed_ints_order() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        let mut xs = vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            i64::MAX - 1,
            i64::MAX,
            -256,
            255,
        ];
        xs.extend((0..60).map(|_| rng.next() as i64));
        xs.extend((0..20).map(|_| (rng.below(2000) as i64) - 1000));
        check_order(&xs, |&x| Value::Int(x), |a, b| a.cmp(b));
    }

    #[test]
    fn unsigned_ints_order() {
        let mut rng = Rng(7);
        let mut xs = vec![0u64, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1];
        xs.extend((0..60).map(|_| rng.next()));
        check_order(&xs, |&x| Value::UInt(x), |a, b| a.cmp(b));
    }

    #[test]
    fn floats_order() {
        let mut rng = Rng(11);
        let mut xs = vec![
            f64::MIN,
            -1.0,
            -f64::MIN_POSITIVE,
            -5e-324,
            0.0,
            5e-324,
            f64::MIN_POSITIVE,
            0.1,
            1.0,
            f64::MAX,
        ];
        xs.extend(
            (0..40)
                .map(|_| f64::from_bits(rng.next()))
                .filter(|x| x.is_finite()),
        );
        check_order(&xs, |&x| Value::Double(x), |a, b| a.partial_cmp(b).unwrap());
        assert_eq!(enc(&[Value::Double(-0.0)]), enc(&[Value::Double(0.0)]));
        assert_eq!(enc(&[Value::Float(0.5)]), enc(&[Value::Double(0.5)]));
    }

    fn dec_cmp(a: &str, b: &str) -> Ordering {
        // Reference: compare as exact rationals via scaled big digits strings.
        fn norm(s: &str) -> (bool, String, String) {
            let neg = s.starts_with('-');
            let body = s.trim_start_matches(['-', '+']);
            let (i, f) = body.split_once('.').unwrap_or((body, ""));
            let i = i.trim_start_matches('0').to_string();
            let f = f.trim_end_matches('0').to_string();
            let zero = i.is_empty() && f.is_empty();
            (neg && !zero, i, f)
        }
        let (na, ia, fa) = norm(a);
        let (nb, ib, fb) = norm(b);
        let mag = |i1: &String, f1: &String, i2: &String, f2: &String| {
            i1.len()
                .cmp(&i2.len())
                .then_with(|| i1.cmp(i2))
                .then_with(|| f1.cmp(f2))
        };
        match (na, nb) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => mag(&ia, &fa, &ib, &fb),
            (true, true) => mag(&ib, &fb, &ia, &fa),
        }
    }

    #[test]
    fn decimals_order() {
        let mut rng = Rng(13);
        let mut xs: Vec<String> = [
            "0",
            "-0",
            "0.000",
            "1",
            "1.0",
            "1.5",
            "1.50",
            "-1.5",
            "10",
            "9.99",
            "0.001",
            "0.01",
            "-0.001",
            "-0.01",
            "123456789012345678901234567890.123456789012345678901234567890",
            "-99999999999999999999999999999999999.999999999999999999999999999999",
            "-0012.3400",
            "12.34",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..80 {
            let int_len = rng.below(6) as usize;
            let frac_len = rng.below(6) as usize;
            let mut s = String::new();
            if rng.below(2) == 0 {
                s.push('-');
            }
            for _ in 0..int_len.max(1) {
                s.push((b'0' + rng.below(10) as u8) as char);
            }
            if frac_len > 0 {
                s.push('.');
                for _ in 0..frac_len {
                    s.push((b'0' + rng.below(10) as u8) as char);
                }
            }
            xs.push(s);
        }
        check_order(&xs, |x| Value::Decimal(x.clone()), |a, b| dec_cmp(a, b));
        for x in &xs {
            let back = decode_key(&enc(&[Value::Decimal(x.clone())])).unwrap();
            let Value::Decimal(b) = &back[0] else {
                panic!()
            };
            assert_eq!(dec_cmp(x, b), Ordering::Equal, "{x} -> {b}");
        }
    }

    #[test]
    fn bytes_order_and_prefixes() {
        let mut rng = Rng(17);
        let mut xs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0; 8],
            vec![0; 9],
            vec![0xFF],
            vec![0xFF; 8],
            vec![0xFF; 9],
            b"a".to_vec(),
            b"ab".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefghi".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abc\xff".to_vec(),
        ];
        for _ in 0..80 {
            let len = rng.below(20) as usize;
            xs.push(
                (0..len)
                    .map(|_| [0u8, 1, 0xFE, 0xFF, b'a'][rng.below(5) as usize])
                    .collect(),
            );
        }
        check_order(&xs, |x| Value::Bytes(x.clone()), |a, b| a.cmp(b));
        for x in &xs {
            assert_eq!(
                decode_key(&enc(&[Value::Bytes(x.clone())])).unwrap(),
                vec![Value::Bytes(x.clone())]
            );
        }
    }

    #[test]
    fn tuples_order() {
        let mut rng = Rng(19);
        let mut xs: Vec<(i64, Vec<u8>, u64)> = Vec::new();
        for _ in 0..120 {
            let len = rng.below(10) as usize;
            xs.push((
                rng.below(5) as i64 - 2,
                (0..len)
                    .map(|_| [0u8, 0xFF, b'x'][rng.below(3) as usize])
                    .collect(),
                rng.below(3),
            ));
        }
        for a in &xs {
            for b in &xs {
                let ea = enc(&[Value::Int(a.0), Value::Bytes(a.1.clone()), Value::UInt(a.2)]);
                let eb = enc(&[Value::Int(b.0), Value::Bytes(b.1.clone()), Value::UInt(b.2)]);
                assert_eq!(ea.cmp(&eb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn temporal_and_misc_order() {
        let times = [
            (true, 838u32, 59u8, 59u8, 0u32),
            (true, 0, 0, 0, 1),
            (false, 0, 0, 0, 0),
            (false, 0, 0, 0, 1),
            (false, 1, 0, 0, 0),
            (false, 838, 59, 59, 0),
        ];
        let enc_t: Vec<Vec<u8>> = times
            .iter()
            .map(|&(negative, hours, minutes, seconds, micros)| {
                enc(&[Value::Time {
                    negative,
                    hours,
                    minutes,
                    seconds,
                    micros,
                }])
            })
            .collect();
        assert!(enc_t.windows(2).all(|w| w[0] < w[1]));
        let dts = [
            (0u16, 0u8, 0u8, 0u8, 0u8, 0u8, 0u32),
            (1000, 1, 1, 0, 0, 0, 0),
            (2024, 2, 29, 23, 59, 59, 999_999),
            (2024, 3, 1, 0, 0, 0, 0),
            (9999, 12, 31, 23, 59, 59, 999_999),
        ];
        let enc_dt: Vec<Vec<u8>> = dts
            .iter()
            .map(|&(year, month, day, hour, minute, second, micros)| {
                enc(&[Value::DateTime {
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    micros,
                }])
            })
            .collect();
        assert!(enc_dt.windows(2).all(|w| w[0] < w[1]));
        check_order(
            &[0u16, 1901, 2000, 2155],
            |&y| Value::Year(y),
            |a, b| a.cmp(b),
        );
        check_order(
            &[0u64, 1, 255, u64::MAX],
            |&b| Value::Bit(b),
            |a, b| a.cmp(b),
        );
        check_order(
            &[(0u16, 0u8, 0u8), (0, 1, 1), (2000, 1, 1), (2000, 12, 31)],
            |&(year, month, day)| Value::Date { year, month, day },
            |a, b| a.cmp(b),
        );
        // NULL sorts first.
        assert!(enc(&[Value::Null]) < enc(&[Value::Int(i64::MIN)]));
    }

    #[test]
    fn round_trips_and_formats() {
        let vals = vec![
            Value::Int(-5),
            Value::Bytes(b"it's".to_vec()),
            Value::Bytes(vec![0, 0xFF]),
            Value::UInt(u64::MAX),
            Value::Null,
            Value::Date {
                year: 0,
                month: 0,
                day: 0,
            },
            Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 0,
            },
            Value::DateTime {
                year: 2020,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
                micros: 6,
            },
            Value::Year(0),
            Value::Bit(5),
            Value::Double(-1.5),
            Value::Decimal("-12.34".into()),
        ];
        let back = decode_key(&enc(&vals)).unwrap();
        assert_eq!(back, vals);
        assert_eq!(
            format_key(&back),
            "(-5, 'it''s', 0x00FF, 18446744073709551615, NULL, '0000-00-00', '-838:59:59.000000', \
             '2020-01-02 03:04:05.000006', 0000, b'101', -1.5, -12.34)"
        );
        assert!(decode_key(&[0x03, 1, 2]).is_err());
        assert!(decode_key(&[0x99]).is_err());
    }
}
