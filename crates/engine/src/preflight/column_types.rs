//! Column types wraith can carry exactly, judged before anything is created.
//!
//! Every copied value travels as a `wraith_backend::Value` of its column's
//! `ColumnKind` (read from the source, decoded from a row event, kept in the
//! local store, written as a literal or a `LOAD DATA` field). A type with no
//! kind (MariaDB 11.7's VECTOR, a type name a newer server adds) has no exact
//! path, so `wraith check` refuses it here, naming the column and its type,
//! instead of `run` failing when it plans the copy (the old behaviour for
//! GEOMETRY).
//!
//! Some kinds carry their values exactly but not every *change* of them:
//!
//! - spatial columns (the internal form: SRID then WKB) change only into
//!   another spatial type; the server itself checks that each value fits the
//!   new subtype (GEOMETRY into POINT), so a row that does not fit is counted
//!   here and refused, as the native ALTER would refuse it;
//! - INET4, INET6 and UUID travel as their binary form, cast to their type
//!   on write (`CAST(x'..' AS INET6)`), so a change into a text column gives
//!   the server's own text, and text into them is parsed by the server;
//!   other changes (into BINARY(16), between INET4 and INET6) are refused:
//!   what the server's own ALTER gives there is not what a typed value gives;
//! - a spatial column in the chunk key or the new key is refused: keys are
//!   compared, encoded and printed as scalars.
//!
//! What it leaves to others: the data check of ordinary type changes
//! ([`crate::datacheck`]), the plan ([`crate::plan`]).

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use wraith_backend::ColumnKind;

use crate::plan::TablePlan;
use crate::server::inspect::{ColumnInfo, TableInfo};
use crate::server::{quote_ident, Context, DbError};

/// One refusal: what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeRefusal {
    pub problem: String,
    pub fix: String,
}

fn kind_of(col: &ColumnInfo) -> Option<ColumnKind> {
    col.spec(&col.name).map(|s| s.kind)
}

fn is_textual_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
    )
}

/// The GEOMETRY subtype name `ST_GeometryType` gives for values of a
/// column of `data_type`; `None` for GEOMETRY (any value fits).
fn spatial_subtype(data_type: &str) -> Option<&'static str> {
    Some(match data_type {
        "point" => "POINT",
        "linestring" => "LINESTRING",
        "polygon" => "POLYGON",
        "multipoint" => "MULTIPOINT",
        "multilinestring" => "MULTILINESTRING",
        "multipolygon" => "MULTIPOLYGON",
        "geometrycollection" => "GEOMETRYCOLLECTION",
        _ => return None,
    })
}

/// The refusals that need no data: types without a kind, type changes
/// wraith does not carry, spatial key columns.
pub(crate) fn type_refusals(
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
) -> Vec<TypeRefusal> {
    let mut out = Vec::new();
    let drop_it = |from: &str| {
        format!(
            "wraith cannot carry this type; take `{from}` out of the copy (DROP COLUMN in the ALTER) \
             or run this ALTER natively (ALTER TABLE … ALGORITHM=INPLACE/COPY)"
        )
    };
    for (from, to) in plan.copied_columns() {
        let (Some(oc), Some(nc)) = (old.column(from), new.column(to)) else {
            continue;
        };
        let (ok, nk) = (kind_of(oc), kind_of(nc));
        let Some(ok) = ok else {
            out.push(TypeRefusal {
                problem: format!(
                    "column `{from}` of {} has type {}, which wraith cannot copy exactly",
                    old.name, oc.column_type
                ),
                fix: drop_it(from),
            });
            continue;
        };
        let Some(nk) = nk else {
            out.push(TypeRefusal {
                problem: format!(
                    "the ALTER makes column `{to}` of {} a {}, which wraith cannot write exactly",
                    old.name, nc.column_type
                ),
                fix: drop_it(from),
            });
            continue;
        };
        if oc.data_type == nc.data_type {
            continue;
        }
        let special = |k: ColumnKind| k == ColumnKind::Geometry || k.fixed_binary_len().is_some();
        if !special(ok) && !special(nk) {
            continue;
        }
        let carried = match (ok, nk) {
            (ColumnKind::Geometry, ColumnKind::Geometry) => true,
            (k, _) if k.fixed_binary_len().is_some() => is_textual_type(&nc.data_type),
            (_, k) if k.fixed_binary_len().is_some() => is_textual_type(&oc.data_type),
            _ => false,
        };
        if !carried {
            out.push(TypeRefusal {
                problem: format!(
                    "the ALTER changes column `{from}` of {} from {} to {}: wraith carries a \
                     spatial column only into another spatial type, and INET4/INET6/UUID only \
                     into or from a text column (what the server's own ALTER does otherwise is \
                     not what wraith would write)",
                    old.name, oc.column_type, nc.column_type
                ),
                fix: format!(
                    "change `{from}` in a native ALTER, or go through a text column in two runs"
                ),
            });
        }
    }
    for (which, key, table) in [
        ("copy (chunk) key", &plan.chunk_key, old),
        ("new key", &plan.new_key, new),
    ] {
        for k in key {
            if let Some(c) = table.column(k) {
                if kind_of(c) == Some(ColumnKind::Geometry) {
                    out.push(TypeRefusal {
                        problem: format!(
                            "the {which} of {} holds the spatial column `{k}`: wraith keys rows \
                             by scalar values only",
                            old.name
                        ),
                        fix: "give the table a primary key (or unique NOT NULL key) without \
                              spatial columns"
                            .to_string(),
                    });
                }
            }
        }
    }
    out
}

/// Spatial columns changed into a narrower subtype: counts the rows whose
/// value the new subtype cannot hold (the native ALTER refuses those too).
pub(crate) async fn spatial_misfits(
    conn: &mut Conn,
    old: &TableInfo,
    new: &TableInfo,
    plan: &TablePlan,
) -> Result<Vec<TypeRefusal>, DbError> {
    let mut out = Vec::new();
    for (from, to) in plan.copied_columns() {
        let (Some(oc), Some(nc)) = (old.column(from), new.column(to)) else {
            continue;
        };
        if oc.data_type == nc.data_type
            || kind_of(oc) != Some(ColumnKind::Geometry)
            || kind_of(nc) != Some(ColumnKind::Geometry)
        {
            continue;
        }
        let Some(subtype) = spatial_subtype(&nc.data_type) else {
            continue;
        };
        let col = quote_ident(&oc.name);
        let n: Option<u64> = conn
            .exec_first(
                format!(
                    "SELECT COUNT(*) FROM {}.{} WHERE {col} IS NOT NULL \
                     AND ST_GeometryType({col}) <> ?",
                    quote_ident(&old.schema),
                    quote_ident(&old.name)
                ),
                (subtype,),
            )
            .await
            .context(|| format!("counting the values of {from} that are not a {subtype}"))?;
        if let Some(n) = n.filter(|n| *n > 0) {
            out.push(TypeRefusal {
                problem: format!(
                    "column `{from}` of {} becomes {} but {n} rows hold another geometry type: \
                     the ALTER cannot hold them",
                    old.name, nc.column_type
                ),
                fix: format!(
                    "convert or delete those rows first (SELECT … WHERE ST_GeometryType({col}) \
                     <> '{subtype}'), or keep the column GEOMETRY"
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::BackendKind;
    use crate::server::inspect::IndexInfo;

    fn column(name: &str, data_type: &str, nullable: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            data_type: data_type.into(),
            column_type: data_type.into(),
            nullable,
            default: None,
            charset: None,
            collation: None,
            extra: String::new(),
        }
    }

    fn table(columns: Vec<ColumnInfo>) -> TableInfo {
        TableInfo {
            schema: "s".into(),
            name: "t".into(),
            engine: "InnoDB".into(),
            columns,
            indexes: vec![IndexInfo {
                name: "PRIMARY".into(),
                unique: true,
                primary: true,
                columns: vec!["id".into()],
                kind: "BTREE".into(),
                has_prefix: false,
                definition: "PRIMARY KEY (`id`)".into(),
            }],
            estimated_rows: 0,
            estimated_bytes: 0,
            create_time: None,
            create_statement: String::new(),
        }
    }

    fn refusals(old: &TableInfo, new: &TableInfo, alter: &str) -> Vec<TypeRefusal> {
        let plan = crate::plan::plan_table(
            old,
            new,
            alter,
            &Default::default(),
            BackendKind::Sql,
            false,
        )
        .unwrap();
        type_refusals(old, new, &plan)
    }

    #[test]
    fn a_type_without_a_kind_is_refused_with_its_name() {
        // MariaDB 11.7's VECTOR: the test server (10.11) has none, so the
        // refusal is proven here.
        let old = table(vec![
            column("id", "int", false),
            column("v", "vector", true),
        ]);
        let r = refusals(&old, &old.clone(), "ADD INDEX k (id)");
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].problem.contains("column `v` of t has type vector"),
            "{r:?}"
        );
        assert!(r[0].fix.contains("DROP COLUMN"), "{r:?}");
        // Dropping it is the way out.
        let new = table(vec![column("id", "int", false)]);
        assert!(refusals(&old, &new, "DROP COLUMN v").is_empty());
        // Spatial, INET and UUID columns are carried.
        let carried = table(vec![
            column("id", "int", false),
            column("g", "polygon", true),
            column("i", "inet6", true),
            column("u", "uuid", true),
        ]);
        assert!(refusals(&carried, &carried.clone(), "ADD INDEX k (id)").is_empty());
    }

    #[test]
    fn spatial_subtypes() {
        assert_eq!(spatial_subtype("point"), Some("POINT"));
        assert_eq!(spatial_subtype("geometry"), None);
        assert!(is_textual_type("varchar"));
        assert!(!is_textual_type("varbinary"));
    }
}
