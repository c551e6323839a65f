//! The binlog position: one type, and the one place that reads it.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use super::{Context, DbError, Flavor};

/// A point in the binary log: the next event to read is at `file:pos`. The
/// change stream's positions, the cut-over's drain target and the run's
/// start position are all this type.
///
/// The checkpoint store keeps its own serialized copy
/// (`wraith_checkpoints::BinlogPosition`, the same three fields) so that the
/// checkpoint format does not depend on the engine; the engine converts at
/// that boundary with the `From` impls below.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
    /// The GTID state at this point (MariaDB `gtid_binlog_pos` form, or a
    /// MySQL GTID set); `None` when the server has none, or when it was not
    /// read.
    pub gtid: Option<String>,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

impl From<wraith_checkpoints::BinlogPosition> for BinlogPosition {
    fn from(p: wraith_checkpoints::BinlogPosition) -> BinlogPosition {
        BinlogPosition {
            file: p.file,
            pos: p.pos,
            gtid: p.gtid,
        }
    }
}

impl From<BinlogPosition> for wraith_checkpoints::BinlogPosition {
    fn from(p: BinlogPosition) -> wraith_checkpoints::BinlogPosition {
        wraith_checkpoints::BinlogPosition {
            file: p.file,
            pos: p.pos,
            gtid: p.gtid,
        }
    }
}

/// The statement that shows the server's binlog position: `SHOW BINARY LOG
/// STATUS` on MySQL 8.2+ (8.4 removed the old spelling), `SHOW MASTER
/// STATUS` elsewhere.
fn status_statement(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MySql { .. } if flavor.version() >= (8, 2, 0) => "SHOW BINARY LOG STATUS",
        _ => "SHOW MASTER STATUS",
    }
}

/// The server's current binlog position, from one status statement (see
/// [`status_statement`]); `None` when the binary log is off. On MySQL the
/// GTID state is the `Executed_Gtid_Set` of the same row, so exactly at that
/// file:pos; on MariaDB it is not read here (it takes a second query, see
/// [`mariadb_gtid_at`]), and `gtid` is `None`.
pub async fn binlog_status(
    conn: &mut Conn,
    flavor: Flavor,
) -> Result<Option<BinlogPosition>, DbError> {
    let stmt = status_statement(flavor);
    let row: Option<mysql_async::Row> = conn
        .query_first(stmt)
        .await
        .context(|| format!("reading the binlog position ({stmt})"))?;
    let Some(mut row) = row else {
        return Ok(None);
    };
    let file: Option<String> = row.take(0);
    let pos: Option<u64> = row.take(1);
    let (Some(file), Some(pos)) = (file, pos) else {
        return Ok(None);
    };
    let gtid = if flavor.is_mariadb() {
        None
    } else {
        row.take::<Option<String>, _>(4).flatten()
    };
    Ok(Some(BinlogPosition { file, pos, gtid }))
}

/// MariaDB's GTID state at `file:pos` (`BINLOG_GTID_POS`), as the server
/// gives it; `None` when it has none.
pub async fn mariadb_gtid_at(
    conn: &mut Conn,
    file: &str,
    pos: u64,
) -> Result<Option<String>, DbError> {
    let g: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos))
        .await
        .context(|| format!("reading the GTID position at {file}:{pos}"))?;
    Ok(g.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_statement_by_version() {
        assert_eq!(
            status_statement(Flavor::parse("10.11.6-MariaDB")),
            "SHOW MASTER STATUS"
        );
        assert_eq!(
            status_statement(Flavor::parse("8.0.36")),
            "SHOW MASTER STATUS"
        );
        assert_eq!(
            status_statement(Flavor::parse("8.4.0")),
            "SHOW BINARY LOG STATUS"
        );
    }

    #[test]
    fn converts_to_the_checkpoint_model_and_back() {
        let p = BinlogPosition {
            file: "binlog.000002".into(),
            pos: 385,
            gtid: Some("0-1-57".into()),
        };
        let stored: wraith_checkpoints::BinlogPosition = p.clone().into();
        assert_eq!(BinlogPosition::from(stored), p);
    }
}
