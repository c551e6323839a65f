//! Helpers shared by the change stream tests: one scratch server per test
//! binary, a schema per test, snapshots in the copy's row model.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use wraith_backend::{ColumnKind, ColumnSpec, Row, Value};
use wraith_engine::binlog::{
    current_position, BinlogPosition, ChangeStream, ChangeStreamConfig, RowChange, StreamEvent,
};
use wraith_engine::server::inspect::{inspect_table, TableInfo};
use wraith_engine::server::{self, Flavor};
use wraith_engine::testkit::scratch::{ScratchOptions, ScratchServer};

static SERVER: OnceLock<ScratchServer> = OnceLock::new();

pub fn server() -> &'static ScratchServer {
    SERVER.get_or_init(|| ScratchServer::start(ScratchOptions::default()).expect("scratch server"))
}

pub fn opts(db: Option<&str>) -> Opts {
    server().opts(db).into()
}

pub async fn conn(db: Option<&str>) -> Conn {
    Conn::new(opts(db)).await.expect("connect")
}

/// A fresh schema `name` and a connection in it.
pub async fn schema(name: &str) -> Conn {
    let mut c = conn(None).await;
    c.query_drop(format!(
        "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
    ))
    .await
    .expect("create schema");
    conn(Some(name)).await
}

pub async fn flavor() -> Flavor {
    server::flavor(&mut conn(None).await).await.expect("flavor")
}

pub async fn position() -> BinlogPosition {
    let f = flavor().await;
    current_position(&mut conn(None).await, f)
        .await
        .expect("position")
}

pub async fn specs(schema: &str, table: &str) -> Vec<ColumnSpec> {
    let info = inspect_table(&mut conn(None).await, schema, table)
        .await
        .expect("inspect");
    info.columns
        .iter()
        .map(|c| c.spec(&c.name).expect("carried type"))
        .collect()
}

pub async fn info(schema: &str, table: &str) -> TableInfo {
    inspect_table(&mut conn(None).await, schema, table)
        .await
        .expect("inspect")
}

pub async fn config(schema: &str, table: &str) -> ChangeStreamConfig {
    let info = inspect_table(&mut conn(None).await, schema, table)
        .await
        .expect("inspect");
    ChangeStreamConfig::for_table(&info).expect("config")
}

pub async fn start(from: BinlogPosition, cfg: ChangeStreamConfig) -> ChangeStream {
    ChangeStream::start(opts(None), flavor().await, from, cfg)
        .await
        .expect("start stream")
}

/// Every row of `schema.table` by `id`, read the way the copy reads them.
pub async fn snapshot(schema: &str, table: &str) -> Vec<Row> {
    let specs = specs(schema, table).await;
    let mut c = conn(Some(schema)).await;
    c.query_drop("SET NAMES binary, time_zone = '+00:00'")
        .await
        .expect("session");
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
    let rows: Vec<mysql_async::Row> = c
        .query(format!(
            "SELECT {} FROM `{table}` ORDER BY id",
            cols.join(", ")
        ))
        .await
        .expect("select");
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .zip(&specs)
                .map(|(v, s)| Value::from_text(v, s).expect("from_text"))
                .collect()
        })
        .collect()
}

/// Whether the stream has passed `target`.
pub fn reached(p: &BinlogPosition, target: &BinlogPosition) -> bool {
    (p.file.as_str(), p.pos) >= (target.file.as_str(), target.pos)
}

/// Reads events until the stream's position reaches `target`.
pub async fn collect_until(stream: &mut ChangeStream, target: &BinlogPosition) -> Vec<StreamEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while !reached(stream.position(), target) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("stream did not reach {target}; at {}", stream.position()))
            .expect("next");
        out.push(ev);
    }
    out
}

/// The row changes among `events`, in order.
pub fn changes(events: &[StreamEvent]) -> Vec<RowChange> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Rows(r) => Some(r.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// `id` of a row (first column, an INT).
pub fn id_of(row: &Row) -> i64 {
    match row[0] {
        Value::Int(i) => i,
        Value::UInt(u) => u as i64,
        ref other => panic!("id {other:?}"),
    }
}
