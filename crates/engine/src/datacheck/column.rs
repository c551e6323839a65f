//! The row checks one column's conversion needs, by the family of its new
//! type: integers, DECIMAL, strings, temporal types. Each check is a
//! predicate that finds the rows the conversion refuses or changes.

use wraith_backend::ZoneShift;

use super::{fsp_of, int_range, is_binary, is_exact_int, is_numeric, is_text, type_args, RowCheck};
use crate::server::inspect::ColumnInfo;
use crate::server::quote_ident;

/// The row checks one column needs.
pub(super) fn column_checks(
    oc: &ColumnInfo,
    nc: &ColumnInfo,
    changed: bool,
    shift: Option<&ZoneShift>,
    refusals: &mut Vec<RowCheck>,
    lossy: &mut Vec<RowCheck>,
) {
    let col = quote_ident(&oc.name);
    let name = &nc.name;
    if oc.nullable && !nc.nullable {
        refusals.push(RowCheck {
            subject: format!("column {name}"),
            predicate: format!("{col} IS NULL"),
            detail: format!("{name} is made NOT NULL but holds NULLs"),
            fix: format!(
                "give those rows a value first (UPDATE … SET {col} = … WHERE {col} IS NULL), \
                 or keep {col} NULL in the ALTER"
            ),
        });
    }
    if !changed {
        return;
    }
    // The value as the server converts it on its way (time zone first).
    let value = match shift {
        Some(s) => s.wrap_expr(&col),
        None => col.clone(),
    };
    let conv = Conversion {
        oc,
        nc,
        ot: oc.data_type.as_str(),
        nt: nc.data_type.as_str(),
        args: type_args(&nc.column_type),
        change: format!("{} -> {}", oc.column_type, nc.column_type),
        col,
        value,
        shift,
    };
    int_checks(&conv, refusals, lossy);
    decimal_checks(&conv, refusals, lossy);
    text_checks(&conv, refusals);
    temporal_checks(&conv, refusals, lossy);
}

/// One column's conversion, as the checks of each type family need it.
struct Conversion<'a> {
    oc: &'a ColumnInfo,
    nc: &'a ColumnInfo,
    /// The old and new `DATA_TYPE`.
    ot: &'a str,
    nt: &'a str,
    /// The new type's arguments (length, precision and scale).
    args: Vec<u64>,
    /// `old type -> new type`, for the messages.
    change: String,
    /// The old column, quoted.
    col: String,
    /// The value as the server converts it on its way (time zone first).
    value: String,
    shift: Option<&'a ZoneShift>,
}

/// Into an integer type: the range, and rounding of fractions.
fn int_checks(conv: &Conversion<'_>, refusals: &mut Vec<RowCheck>, lossy: &mut Vec<RowCheck>) {
    let (nc, ot, nt, change, col) = (conv.nc, conv.ot, conv.nt, &conv.change, &conv.col);
    let name = &conv.nc.name;
    if let Some((min, max)) = int_range(nt, nc.is_unsigned()) {
        if is_numeric(ot) {
            let rounded = if is_exact_int(ot) {
                col.clone()
            } else {
                format!("ROUND({col})")
            };
            refusals.push(RowCheck {
                subject: format!("column {name}"),
                predicate: format!("{rounded} < {min} OR {rounded} > {max}"),
                detail: format!("{change}: values outside {min}..{max}"),
                fix: format!("choose a wider type for {col}, or change those values first"),
            });
            if !is_exact_int(ot) {
                lossy.push(RowCheck {
                    subject: format!("column {name}"),
                    predicate: format!("{col} <> TRUNCATE({col}, 0)"),
                    detail: format!("{change}: fractional values are rounded to integers"),
                    fix: format!("set allow_lossy = true for this table to accept the rounding, or keep {col} a fractional type"),
                });
            }
        }
    }
}

/// Into DECIMAL: digits before the point, and rounding to the scale.
fn decimal_checks(conv: &Conversion<'_>, refusals: &mut Vec<RowCheck>, lossy: &mut Vec<RowCheck>) {
    let (oc, ot, nt, args, change, col) = (
        conv.oc,
        conv.ot,
        conv.nt,
        &conv.args,
        &conv.change,
        &conv.col,
    );
    let name = &conv.nc.name;
    if matches!(nt, "decimal" | "numeric") && is_numeric(ot) {
        let precision = args.first().copied().unwrap_or(10);
        let scale = args.get(1).copied().unwrap_or(0);
        let whole = precision.saturating_sub(scale);
        let limit = format!("1{}", "0".repeat(whole as usize));
        refusals.push(RowCheck {
            subject: format!("column {name}"),
            predicate: format!("ABS(ROUND({col}, {scale})) >= {limit}"),
            detail: format!(
                "{change}: values with more than {whole} digit(s) before the decimal point"
            ),
            fix: format!("choose a larger precision for {col}, or change those values first"),
        });
        let old_scale = if matches!(ot, "decimal" | "numeric") {
            type_args(&oc.column_type).get(1).copied().unwrap_or(0)
        } else if is_exact_int(ot) {
            0
        } else {
            u64::MAX
        };
        if old_scale > scale {
            lossy.push(RowCheck {
                subject: format!("column {name}"),
                predicate: format!("{col} <> ROUND({col}, {scale})"),
                detail: format!("{change}: values are rounded to {scale} decimal(s)"),
                fix: format!(
                    "set allow_lossy = true for this table to accept the rounding, or keep the scale of {col}"
                ),
            });
        }
    }
}

/// Into a string type: the length, and characters the new charset lacks.
fn text_checks(conv: &Conversion<'_>, refusals: &mut Vec<RowCheck>) {
    let (oc, nc, ot, nt, args, change, col, value) = (
        conv.oc,
        conv.nc,
        conv.ot,
        conv.nt,
        &conv.args,
        &conv.change,
        &conv.col,
        &conv.value,
    );
    let name = &conv.nc.name;
    if is_text(nt) || is_binary(nt) {
        let bytes_limit = match nt {
            "tinytext" | "tinyblob" => Some(255u64),
            "text" | "blob" => Some(65_535),
            "mediumtext" | "mediumblob" => Some(16_777_215),
            "longtext" | "longblob" => None,
            _ => None,
        };
        let textual_source = is_text(ot) || matches!(ot, "enum" | "set" | "json");
        let converted = match (&nc.charset, is_text(nt) && textual_source) {
            (Some(cs), true) => format!("CONVERT({value} USING {cs})"),
            _ => value.clone(),
        };
        let predicate = match (bytes_limit, args.first()) {
            (Some(limit), _) => Some((
                format!("LENGTH({converted}) > {limit}"),
                format!("{limit} bytes"),
            )),
            (None, Some(n)) if is_text(nt) => Some((
                format!("CHAR_LENGTH({converted}) > {n}"),
                format!("{n} characters"),
            )),
            (None, Some(n)) => Some((format!("LENGTH({value}) > {n}"), format!("{n} bytes"))),
            (None, None) => None,
        };
        if let Some((predicate, limit)) = predicate {
            refusals.push(RowCheck {
                subject: format!("column {name}"),
                predicate,
                detail: format!("{change}: values longer than {limit}"),
                fix: format!("choose a longer type for {col}, or shorten those values first"),
            });
        }
        if let (Some(new_cs), Some(old_cs)) = (&nc.charset, &oc.charset) {
            if is_text(nt) && textual_source && new_cs != old_cs && old_cs != "binary" {
                refusals.push(RowCheck {
                    subject: format!("column {name}"),
                    predicate: format!(
                        "CAST(CONVERT(CONVERT({col} USING {new_cs}) USING {old_cs}) AS BINARY) <> CAST({col} AS BINARY)"
                    ),
                    detail: format!(
                        "{change}: characters that {new_cs} cannot hold"
                    ),
                    fix: "choose a charset that holds every character (e.g. utf8mb4), or change those values first"
                        .to_string(),
                });
            }
        }
    }
}

/// Into a temporal type: fractional seconds, the time of day, the TIMESTAMP range.
fn temporal_checks(conv: &Conversion<'_>, refusals: &mut Vec<RowCheck>, lossy: &mut Vec<RowCheck>) {
    let (oc, nc, ot, nt, change, col, value, shift) = (
        conv.oc,
        conv.nc,
        conv.ot,
        conv.nt,
        &conv.change,
        &conv.col,
        &conv.value,
        conv.shift,
    );
    let name = &conv.nc.name;
    if matches!(nt, "datetime" | "timestamp" | "time")
        && matches!(ot, "datetime" | "timestamp" | "time")
    {
        let (old_fsp, new_fsp) = (fsp_of(oc), fsp_of(nc));
        if old_fsp > new_fsp {
            let unit = 10u32.pow(6 - new_fsp);
            lossy.push(RowCheck {
                subject: format!("column {name}"),
                predicate: format!("MICROSECOND({col}) % {unit} <> 0"),
                detail: format!(
                    "{change}: fractional seconds beyond {new_fsp} digit(s) are dropped"
                ),
                fix: format!(
                    "set allow_lossy = true for this table to accept it, or keep the precision of {col}"
                ),
            });
        }
    }
    if nt == "date" && matches!(ot, "datetime" | "timestamp") {
        lossy.push(RowCheck {
            subject: format!("column {name}"),
            predicate: format!("TIME({value}) <> '00:00:00'"),
            detail: format!("{change}: the time of day is dropped"),
            fix: format!(
                "set allow_lossy = true for this table to accept it, or keep {col} a DATETIME"
            ),
        });
    }
    if nt == "timestamp" && matches!(ot, "date" | "datetime") {
        refusals.push(RowCheck {
            subject: format!("column {name}"),
            predicate: format!(
                "YEAR({col}) <> 0 AND ({value} < '1970-01-01 00:00:01' OR {value} > '2038-01-19 03:14:07.999999')"
            ),
            detail: format!(
                "{change}: values outside the TIMESTAMP range (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC){}",
                match shift {
                    Some(s) => format!(", or local times that time zone {} skips", s.zone()),
                    None => String::new(),
                }
            ),
            fix: format!("keep {col} a DATETIME, or change those values first"),
        });
    }
}
