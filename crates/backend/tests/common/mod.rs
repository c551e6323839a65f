//! Shared harness of the backend tests: one scratch server per test binary,
//! one database per test, and the backends under test.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use wraith_backend::{
    Backend, ColumnKind, ColumnSpec, LocalBackend, LocalBackendConfig, Row, SqlBackend,
    SqlBackendConfig, Value,
};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};

static SERVER: OnceLock<ScratchServer> = OnceLock::new();

pub fn server() -> &'static ScratchServer {
    SERVER.get_or_init(|| ScratchServer::start(ScratchOptions::default()).expect("scratch server"))
}

/// A fresh database named `name` and a pool on it.
pub async fn fresh_db(name: &str) -> Pool {
    let s = server();
    let root = Pool::new(s.opts(None));
    let mut c = root.get_conn().await.unwrap();
    c.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap();
    drop(c);
    root.disconnect().await.unwrap();
    Pool::new(s.opts(Some(name)))
}

/// The backends every conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sql,
    Local,
}

pub const KINDS: [Kind; 2] = [Kind::Sql, Kind::Local];

pub fn make_backend(kind: Kind, pool: &Pool, sort_dir: &Path) -> Arc<dyn Backend> {
    match kind {
        Kind::Sql => Arc::new(SqlBackend::new(
            pool.clone(),
            SqlBackendConfig {
                max_batch_bytes: 64 << 10,
            },
        )),
        Kind::Local => Arc::new(
            LocalBackend::new(
                pool.clone(),
                LocalBackendConfig {
                    sort_dir: sort_dir.to_path_buf(),
                    memory_limit: 256 << 20,
                    compression: true,
                    import_threads: 2,
                    pace: None,
                },
            )
            .unwrap(),
        ),
    }
}

/// Column specs of a table, from information_schema (as the engine's
/// inspector derives them).
pub async fn specs(conn: &mut Conn, db: &str, table: &str) -> Vec<ColumnSpec> {
    type InfoRow = (String, String, String, Option<String>, Option<u32>);
    let rows: Vec<InfoRow> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, \
             DATETIME_PRECISION FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (db, table),
        )
        .await
        .unwrap();
    rows.into_iter()
        .map(|(name, dt, ct, cs, fsp)| ColumnSpec {
            name,
            kind: ColumnKind::from_data_type(&dt).unwrap_or_else(|| panic!("type {dt}")),
            unsigned: ct.contains("unsigned"),
            charset: cs,
            fsp: fsp.unwrap_or(0) as u8,
            zone_shift: None,
        })
        .collect()
}

/// Reads a table the way the engine's readers do: `SET NAMES binary`, text
/// protocol, FLOAT as `CAST(.. AS DOUBLE)`, decoded with `Value::from_text`.
pub async fn read_rows(pool: &Pool, table: &str, specs: &[ColumnSpec], order: &str) -> Vec<Row> {
    let mut conn = pool.get_conn().await.unwrap();
    wraith_backend::sql::prepare_session(&mut conn)
        .await
        .unwrap();
    let cols: Vec<String> = specs
        .iter()
        .map(|s| {
            if s.kind == ColumnKind::Float {
                format!("CAST(`{}` AS DOUBLE)", s.name)
            } else {
                format!("`{}`", s.name)
            }
        })
        .collect();
    let rows: Vec<mysql_async::Row> = conn
        .query(format!(
            "SELECT {} FROM `{table}` ORDER BY {order}",
            cols.join(", ")
        ))
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .zip(specs)
                .map(|(v, s)| Value::from_text(v, s).unwrap())
                .collect()
        })
        .collect()
}

pub async fn count(pool: &Pool, sql: &str) -> u64 {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_first::<u64, _>(sql).await.unwrap().unwrap()
}
