//! The scalar formats inside a row image: packed decimals, temporal
//! values and MySQL's binary JSON, each printed as the server prints it.

use std::fmt::Write as _;

use wraith_backend::Value;

use super::{be, take, DecodeError, Result};

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Reads a binary NEWDECIMAL(precision, scale) and prints it the way the
/// server does: no leading zeros, exactly `scale` fraction digits.
pub(super) fn decimal_text(data: &mut &[u8], precision: usize, scale: usize) -> Result<String> {
    if scale > precision || precision > 65 {
        return Err(DecodeError::new(format!(
            "DECIMAL({precision},{scale}) is out of range"
        )));
    }
    let intg = precision - scale;
    let (intg0, intg0x) = (intg / 9, intg % 9);
    let (frac0, frac0x) = (scale / 9, scale % 9);
    let size = intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x];
    let mut b = take(data, size)?.to_vec();
    if b.is_empty() {
        return Err(DecodeError::new("empty DECIMAL"));
    }
    b[0] ^= 0x80;
    let negative = b[0] & 0x80 != 0;
    if negative {
        for x in &mut b {
            *x = !*x;
        }
    }
    let mut pos = 0usize;
    let mut group = |bytes: usize, digits: usize, out: &mut String| -> Result<()> {
        let v = be(&b[pos..pos + bytes]);
        pos += bytes;
        if v >= 10u64.pow(digits as u32) {
            return Err(DecodeError::new("DECIMAL digit group out of range"));
        }
        let _ = write!(out, "{v:0digits$}");
        Ok(())
    };
    let mut int_digits = String::with_capacity(intg);
    if intg0x > 0 {
        group(DIG2BYTES[intg0x], intg0x, &mut int_digits)?;
    }
    for _ in 0..intg0 {
        group(4, 9, &mut int_digits)?;
    }
    let mut frac_digits = String::with_capacity(scale);
    for _ in 0..frac0 {
        group(4, 9, &mut frac_digits)?;
    }
    if frac0x > 0 {
        group(DIG2BYTES[frac0x], frac0x, &mut frac_digits)?;
    }
    let int_trimmed = int_digits.trim_start_matches('0');
    let mut out = String::with_capacity(precision + 3);
    if negative {
        out.push('-');
    }
    out.push_str(if int_trimmed.is_empty() {
        "0"
    } else {
        int_trimmed
    });
    if scale > 0 {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Ok(out)
}

/// TIME2 as MySQL's packed integer (`hms << 24 | micros`, signed).
pub(super) fn time2_packed(data: &mut &[u8], dec: u8) -> Result<i64> {
    const TIMEF_INT_OFS: i64 = 0x80_0000;
    const TIMEF_OFS: i64 = 0x8000_0000_0000;
    Ok(match dec {
        1 | 2 => {
            let mut int = be(take(data, 3)?) as i64 - TIMEF_INT_OFS;
            let mut frac = be(take(data, 1)?) as i64;
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x100;
            }
            (int << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut int = be(take(data, 3)?) as i64 - TIMEF_INT_OFS;
            let mut frac = be(take(data, 2)?) as i64;
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x10000;
            }
            (int << 24) + frac * 100
        }
        5 | 6 => be(take(data, 6)?) as i64 - TIMEF_OFS,
        _ => (be(take(data, 3)?) as i64 - TIMEF_INT_OFS) << 24,
    })
}

pub(super) fn time_from_packed(packed: i64) -> Value {
    let negative = packed < 0;
    let a = packed.unsigned_abs();
    let hms = a >> 24;
    Value::Time {
        negative,
        hours: ((hms >> 12) % (1 << 10)) as u32,
        minutes: ((hms >> 6) % 64) as u8,
        seconds: (hms % 64) as u8,
        micros: (a % (1 << 24)) as u32,
    }
}

pub(super) fn datetime2(data: &mut &[u8], dec: u8) -> Result<Value> {
    const DATETIMEF_INT_OFS: i64 = 0x80_0000_0000;
    let int = be(take(data, 5)?) as i64 - DATETIMEF_INT_OFS;
    let sext = |v: u64, bits: u32| ((v << (64 - bits)) as i64) >> (64 - bits);
    let frac = match dec {
        1 | 2 => sext(be(take(data, 1)?), 8) * 10_000,
        3 | 4 => sext(be(take(data, 2)?), 16) * 100,
        5 | 6 => sext(be(take(data, 3)?), 24),
        _ => 0,
    };
    let packed = ((int << 24) + frac).unsigned_abs();
    let ymdhms = packed >> 24;
    let ymd = ymdhms >> 17;
    let ym = ymd >> 5;
    let hms = ymdhms % (1 << 17);
    Ok(Value::DateTime {
        year: (ym / 13) as u16,
        month: (ym % 13) as u8,
        day: (ymd % 32) as u8,
        hour: (hms >> 12) as u8,
        minute: ((hms >> 6) % 64) as u8,
        second: (hms % 64) as u8,
        micros: (packed % (1 << 24)) as u32,
    })
}

/// A TIMESTAMP (seconds since the epoch) as a UTC `DateTime`; `0` is the
/// zero timestamp `0000-00-00 00:00:00`.
pub(super) fn timestamp_value(secs: u64, micros: u32) -> Value {
    if secs == 0 && micros == 0 {
        return Value::DateTime {
            year: 0,
            month: 0,
            day: 0,
            hour: 0,
            minute: 0,
            second: 0,
            micros: 0,
        };
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    Value::DateTime {
        year: year as u16,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: ((rem / 60) % 60) as u8,
        second: (rem % 60) as u8,
        micros,
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant).
pub(super) fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// MySQL's binary JSON as the text MySQL prints for it (`{"k": 1, "a": [1, 2]}`:
/// `", "` and `": "` separators, keys in stored order).
///
/// Only MySQL writes binary JSON (MariaDB's JSON is text), so this path is
/// not exercised by the tests here. Numbers print through `serde_json`, whose
/// shortest round-trip form can differ from MySQL's for some doubles (for
/// example `1e300` versus `1e+300`): a changed column then differs in text
/// only, and compares equal as JSON.
pub(crate) fn json_text(bytes: &[u8]) -> Result<String> {
    let mut buf = mysql_common::io::ParseBuf(bytes);
    let v: mysql_common::binlog::jsonb::Value<'_> = buf
        .parse(())
        .map_err(|e| DecodeError::new(format!("bad binary JSON: {e}")))?;
    let mut out = String::new();
    write_jsonb(v, &mut out).map_err(|e| DecodeError::new(format!("bad binary JSON: {e}")))?;
    Ok(out)
}

/// Writes a binary JSON value in MySQL's text form, keys in stored order.
pub(super) fn write_jsonb(
    v: mysql_common::binlog::jsonb::Value<'_>,
    out: &mut String,
) -> std::io::Result<()> {
    use mysql_common::binlog::jsonb::Value as B;
    use serde_json::Value as J;
    fn key(k: &[u8], out: &mut String) {
        out.push_str(&J::String(String::from_utf8_lossy(k).into_owned()).to_string());
        out.push_str(": ");
    }
    macro_rules! seq {
        ($iter:expr, $open:literal, $close:literal, $item:ident => $body:block) => {{
            out.push($open);
            for (i, $item) in $iter.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                $body
            }
            out.push($close);
        }};
    }
    match v {
        B::SmallArray(a) => seq!(a.iter(), '[', ']', x => { write_jsonb(x?, out)?; }),
        B::LargeArray(a) => seq!(a.iter(), '[', ']', x => { write_jsonb(x?, out)?; }),
        B::SmallObject(o) => seq!(o.iter(), '{', '}', e => {
            let (k, x) = e?;
            key(k.value_raw(), out);
            write_jsonb(x, out)?;
        }),
        B::LargeObject(o) => seq!(o.iter(), '{', '}', e => {
            let (k, x) = e?;
            key(k.value_raw(), out);
            write_jsonb(x, out)?;
        }),
        B::String(s) => {
            out.push_str(&J::String(String::from_utf8_lossy(s.str_raw()).into_owned()).to_string())
        }
        scalar => {
            let j = J::try_from(scalar).map_err(std::io::Error::other)?;
            out.push_str(&j.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], p: usize, s: usize) -> String {
        let mut d = bytes;
        let out = decimal_text(&mut d, p, s).unwrap();
        assert!(d.is_empty());
        out
    }

    #[test]
    fn decimals_print_like_the_server() {
        // DECIMAL(10,2): 4 int bytes? intg 8 -> 4 bytes, frac 2 -> 1 byte.
        // 1234.56 : int part 00001234 -> 0x000004D2 with sign bit, frac 56.
        assert_eq!(dec(&[0x80, 0x00, 0x04, 0xD2, 0x38], 10, 2), "1234.56");
        // -1234.56: every byte inverted.
        assert_eq!(dec(&[!0x80, !0x00, !0x04, !0xD2, !0x38], 10, 2), "-1234.56");
        // -0.50
        assert_eq!(dec(&[!0x80, 0xFF, 0xFF, 0xFF, !50], 10, 2), "-0.50");
        // 0 with DECIMAL(10,0)
        assert_eq!(dec(&[0x80, 0, 0, 0, 0], 10, 0), "0");
        // DECIMAL(5,5): 0.00001
        assert_eq!(dec(&[0x80, 0x00, 0x01], 5, 5), "0.00001");
    }

    #[test]
    fn temporal_packing() {
        // TIME(2) -00:00:00.01: int part -1 +1 = 0, frac 0x100 - 1.
        let mut d: &[u8] = &[0x7F, 0xFF, 0xFF, 0xFF];
        let v = time_from_packed(time2_packed(&mut d, 2).unwrap());
        assert_eq!(
            v,
            Value::Time {
                negative: true,
                hours: 0,
                minutes: 0,
                seconds: 0,
                micros: 10_000
            }
        );
        assert_eq!(
            timestamp_value(2_147_483_647, 999_999),
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
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
