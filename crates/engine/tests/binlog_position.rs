//! Positions, on a server of its own so nothing else writes: after draining,
//! the stream's position is the server's (file, pos and GTID), across binlog
//! rotations; resuming from a handed-out position neither re-reads nor skips;
//! an idle stream gets heartbeats and reports a small lag.

mod binlog_common;

use std::time::{Duration, Instant};

use binlog_common::*;
use mysql_async::prelude::Queryable;
use wraith_engine::binlog::StreamEvent;

#[tokio::test]
async fn positions_follow_the_server_and_idle_streams_get_heartbeats() {
    let mut c = schema("bl_pos").await;
    c.query_drop("CREATE TABLE w (id INT PRIMARY KEY, v INT)")
        .await
        .expect("create");
    let from = position().await;
    assert!(from.gtid.is_some(), "MariaDB always has a GTID position");
    let mut cfg = config("bl_pos", "w").await;
    cfg.heartbeat = Duration::from_millis(200);
    let mut stream = start(from.clone(), cfg.clone()).await;
    assert_eq!(stream.position(), &from);

    // Writes, a rotation in the middle, more writes.
    c.query_drop(
        "INSERT INTO w VALUES (1, 1), (2, 2); FLUSH BINARY LOGS; \
         BEGIN; UPDATE w SET v = 3 WHERE id = 1; INSERT INTO w VALUES (3, 3); COMMIT; \
         DELETE FROM w WHERE id = 2",
    )
    .await
    .expect("writes");
    let end = position().await;
    assert_ne!(end.file, from.file, "FLUSH BINARY LOGS rotated");
    let events = collect_until(&mut stream, &end).await;
    assert_eq!(stream.position(), &end, "drained: same file, pos and GTID");
    let all = changes(&events);
    assert_eq!(all.len(), 5);

    // Resuming from any handed-out change's position gives exactly what followed it.
    let cut = &all[2];
    // Another replica id: a second registration with the same id displaces the first.
    let mut other = cfg.clone();
    other.server_id = cfg.server_id + 1;
    let mut resumed = start(cut.position.clone(), other).await;
    let rest = changes(&collect_until(&mut resumed, &end).await);
    let after_cut: Vec<_> = all
        .iter()
        .filter(|c| {
            (c.position.file.as_str(), c.position.pos)
                > (cut.position.file.as_str(), cut.position.pos)
        })
        .cloned()
        .collect();
    assert_eq!(rest, after_cut);
    assert_eq!(resumed.position(), &end);
    resumed.close().await;

    // Idle: heartbeats at the drained position, lag near zero.
    let t = Instant::now();
    let mut heartbeats = 0;
    while heartbeats < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("no heartbeat")
            .expect("next");
        match ev {
            StreamEvent::Heartbeat { position } => {
                assert_eq!(position, end);
                heartbeats += 1;
            }
            other => panic!("idle stream handed out {other:?}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "heartbeats every 200ms"
    );
    assert!(
        stream.lag() <= Duration::from_secs(1),
        "lag {:?}",
        stream.lag()
    );
    assert_eq!(stream.position(), &end);

    // A write after the idle time arrives, and the position follows again.
    c.query_drop("INSERT INTO w VALUES (9, 9)")
        .await
        .expect("write");
    let end2 = position().await;
    let more = changes(&collect_until(&mut stream, &end2).await);
    assert_eq!(more.len(), 1);
    assert_eq!(stream.position(), &end2);
    assert_eq!(more[0].position, end2);
    stream.close().await;
}
