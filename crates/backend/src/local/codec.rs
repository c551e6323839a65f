//! The local engine's stored row format and the `LOAD DATA` field format.
//!
//! A stored value is `[format byte][payload]`: format `0` is the raw row,
//! `1` the row compressed with zstd (level 1, only when it saves bytes). The
//! row is a varint count, then per value a tag byte and its payload (varint
//! lengths, little-endian fixed widths). The format is private to the engine
//! directory, which records its version in its meta file.

use crate::value::Value;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Rows at least this long are tried with zstd.
const COMPRESS_MIN: usize = 64;

const T_NULL: u8 = 0;
const T_INT: u8 = 1;
const T_UINT: u8 = 2;
const T_FLOAT: u8 = 3;
const T_DOUBLE: u8 = 4;
const T_DECIMAL: u8 = 5;
const T_BYTES: u8 = 6;
const T_DATE: u8 = 7;
const T_TIME: u8 = 8;
const T_DATETIME: u8 = 9;
const T_YEAR: u8 = 10;
const T_BIT: u8 = 11;

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn get<const N: usize>(b: &[u8], pos: &mut usize) -> Result<[u8; N], String> {
    let s: [u8; N] = b
        .get(*pos..*pos + N)
        .and_then(|s| s.try_into().ok())
        .ok_or("truncated value")?;
    *pos += N;
    Ok(s)
}

/// Appends the raw (uncompressed) encoding of `values` to `out`.
pub fn encode_row<'a>(values: impl ExactSizeIterator<Item = &'a Value>, out: &mut Vec<u8>) {
    put_varint(values.len() as u64, out);
    for v in values {
        match v {
            Value::Null => out.push(T_NULL),
            Value::Int(i) => {
                out.push(T_INT);
                // zigzag
                put_varint(((i << 1) ^ (i >> 63)) as u64, out);
            }
            Value::UInt(u) => {
                out.push(T_UINT);
                put_varint(*u, out);
            }
            Value::Float(f) => {
                out.push(T_FLOAT);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Double(d) => {
                out.push(T_DOUBLE);
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            Value::Decimal(s) => {
                out.push(T_DECIMAL);
                put_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(T_BYTES);
                put_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::Date { year, month, day } => {
                out.push(T_DATE);
                out.extend_from_slice(&year.to_le_bytes());
                out.extend_from_slice(&[*month, *day]);
            }
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => {
                out.push(T_TIME);
                out.push(u8::from(*negative));
                out.extend_from_slice(&hours.to_le_bytes());
                out.extend_from_slice(&[*minutes, *seconds]);
                out.extend_from_slice(&micros.to_le_bytes());
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
                out.push(T_DATETIME);
                out.extend_from_slice(&year.to_le_bytes());
                out.extend_from_slice(&[*month, *day, *hour, *minute, *second]);
                out.extend_from_slice(&micros.to_le_bytes());
            }
            Value::Year(y) => {
                out.push(T_YEAR);
                out.extend_from_slice(&y.to_le_bytes());
            }
            Value::Bit(b) => {
                out.push(T_BIT);
                put_varint(*b, out);
            }
        }
    }
}

/// Decodes a raw row.
pub fn decode_row(b: &[u8]) -> Result<Vec<Value>, String> {
    let mut pos = 0;
    let n = get_varint(b, &mut pos)? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let tag = *b.get(pos).ok_or("truncated row")?;
        pos += 1;
        let v = match tag {
            T_NULL => Value::Null,
            T_INT => {
                let z = get_varint(b, &mut pos)?;
                Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            T_UINT => Value::UInt(get_varint(b, &mut pos)?),
            T_FLOAT => Value::Float(f32::from_bits(u32::from_le_bytes(get(b, &mut pos)?))),
            T_DOUBLE => Value::Double(f64::from_bits(u64::from_le_bytes(get(b, &mut pos)?))),
            T_DECIMAL | T_BYTES => {
                let len = get_varint(b, &mut pos)? as usize;
                let end = pos.checked_add(len).ok_or("bad length")?;
                let data = b.get(pos..end).ok_or("truncated bytes")?.to_vec();
                pos = end;
                if tag == T_DECIMAL {
                    Value::Decimal(String::from_utf8(data).map_err(|_| "decimal not UTF-8")?)
                } else {
                    Value::Bytes(data)
                }
            }
            T_DATE => {
                let [y0, y1, month, day] = get::<4>(b, &mut pos)?;
                Value::Date {
                    year: u16::from_le_bytes([y0, y1]),
                    month,
                    day,
                }
            }
            T_TIME => {
                let [neg] = get::<1>(b, &mut pos)?;
                let hours = u32::from_le_bytes(get(b, &mut pos)?);
                let [minutes, seconds] = get::<2>(b, &mut pos)?;
                let micros = u32::from_le_bytes(get(b, &mut pos)?);
                Value::Time {
                    negative: neg != 0,
                    hours,
                    minutes,
                    seconds,
                    micros,
                }
            }
            T_DATETIME => {
                let [y0, y1, month, day, hour, minute, second] = get::<7>(b, &mut pos)?;
                let micros = u32::from_le_bytes(get(b, &mut pos)?);
                Value::DateTime {
                    year: u16::from_le_bytes([y0, y1]),
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    micros,
                }
            }
            T_YEAR => Value::Year(u16::from_le_bytes(get(b, &mut pos)?)),
            T_BIT => Value::Bit(get_varint(b, &mut pos)?),
            other => return Err(format!("unknown value tag {other}")),
        };
        out.push(v);
    }
    if pos != b.len() {
        return Err("trailing bytes after row".into());
    }
    Ok(out)
}

/// Wraps a raw row as a stored value, compressing it when that pays.
pub(crate) fn seal(
    raw: &[u8],
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    out: &mut Vec<u8>,
) -> Result<(), std::io::Error> {
    if let Some(c) = compressor {
        if raw.len() >= COMPRESS_MIN {
            let packed = c.compress(raw)?;
            if packed.len() + 4 < raw.len() {
                out.push(ZSTD);
                out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
                return Ok(());
            }
        }
    }
    out.push(RAW);
    out.extend_from_slice(raw);
    Ok(())
}

/// Unwraps a stored value into its raw row.
pub(crate) fn open_sealed<'a>(
    stored: &'a [u8],
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], String> {
    match stored.split_first() {
        Some((&RAW, rest)) => Ok(rest),
        Some((&ZSTD, rest)) => {
            let len_bytes: [u8; 4] = rest
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or("truncated compressed value")?;
            let len = u32::from_le_bytes(len_bytes) as usize;
            scratch.clear();
            scratch.reserve(len);
            decompressor
                .decompress_to_buffer(&rest[4..], scratch)
                .map_err(|e| format!("zstd: {e}"))?;
            if scratch.len() != len {
                return Err("decompressed length differs".into());
            }
            Ok(scratch.as_slice())
        }
        _ => Err("unknown value format".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_data::write_load_field;

    fn sample() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Int(i64::MIN),
            Value::Int(-1),
            Value::Int(i64::MAX),
            Value::UInt(u64::MAX),
            Value::Float(-0.0),
            Value::Double(f64::MIN_POSITIVE),
            Value::Decimal("-0012.3400".into()),
            Value::Bytes(vec![]),
            Value::Bytes(vec![0, 0xFF, b'\t', b'\\']),
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
                micros: 999_999,
            },
            Value::DateTime {
                year: 9999,
                month: 12,
                day: 31,
                hour: 23,
                minute: 59,
                second: 59,
                micros: 1,
            },
            Value::Year(2155),
            Value::Bit(u64::MAX),
        ]
    }

    #[test]
    fn rows_round_trip() {
        let row = sample();
        let mut raw = Vec::new();
        encode_row(row.iter(), &mut raw);
        let back = decode_row(&raw).unwrap();
        assert_eq!(format!("{back:?}"), format!("{row:?}"));
        match back[5] {
            Value::Float(f) => assert!(f.is_sign_negative()),
            _ => panic!(),
        }
        assert!(decode_row(&raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn sealed_values_round_trip() {
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let long = vec![Value::Bytes(vec![b'x'; 1000]), Value::Int(5)];
        for row in [sample(), long] {
            let mut raw = Vec::new();
            encode_row(row.iter(), &mut raw);
            for comp in [true, false] {
                let mut stored = Vec::new();
                seal(&raw, if comp { Some(&mut c) } else { None }, &mut stored).unwrap();
                let mut scratch = Vec::new();
                let opened = open_sealed(&stored, &mut d, &mut scratch).unwrap();
                assert_eq!(opened, raw.as_slice());
            }
        }
    }

    #[test]
    fn load_fields_escape() {
        let mut out = Vec::new();
        write_load_field(&Value::Bytes(b"a\tb\nc\\d\0\\N".to_vec()), &mut out);
        assert_eq!(out, b"a\\tb\\nc\\\\d\\0\\\\N");
        out.clear();
        write_load_field(&Value::Null, &mut out);
        assert_eq!(out, b"\\N");
        out.clear();
        write_load_field(&Value::Year(0), &mut out);
        assert_eq!(out, b"0000");
    }
}
