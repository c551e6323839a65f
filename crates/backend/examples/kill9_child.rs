//! The child half of the backend's `flushed_rows_survive_kill_9` test: it
//! writes rows into a local engine, flushes, prints `FLUSHED`, writes more
//! without flushing and waits to be killed with SIGKILL. The test finds this
//! binary beside its own (cargo builds examples for `cargo test`).
//!
//! Environment: `WRAITH_KILL9_DIR` (the sort dir), `WRAITH_KILL9_TARGET`
//! (the target table as JSON).

use std::io::Write as _;
use std::sync::Arc;

use mysql_async::Pool;
use wraith_backend::{
    Backend, EngineConfig, EngineManager, LocalBackend, LocalBackendConfig, LocalEngineConfig,
    LocalWriterConfig, Row, TargetTable, Value,
};

/// The same rows as the test's `rows(n)`.
fn rows(n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let k = (i * 7919) % n;
            vec![
                Value::Int(i),
                Value::Bytes(format!("k{:06}", k).into_bytes()),
                Value::Bytes(vec![b'x'; (i % 50) as usize]),
            ]
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("WRAITH_KILL9_DIR").ok_or("WRAITH_KILL9_DIR is not set")?;
    let target: TargetTable = serde_json::from_str(&std::env::var("WRAITH_KILL9_TARGET")?)?;
    let cfg = EngineConfig {
        target,
        local: LocalEngineConfig::default(),
    };
    // Never connects: the pool is only used by import, which the parent does.
    let pool = Pool::new(mysql_async::OptsBuilder::default().tcp_port(1));
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(
        pool,
        LocalBackendConfig {
            sort_dir: std::path::PathBuf::from(dir),
            memory_limit: 128 << 20,
            compression: true,
            import_threads: 1,
            pace: None,
        },
    )?);
    let mgr = EngineManager::new(backend);
    let opened = mgr.open_engine(&cfg, "kill.t", 1).await?;
    let names = vec!["id".to_string(), "k".into(), "pad".into()];
    let writer_cfg = LocalWriterConfig {
        is_kv_sorted: false,
        table_name: "t".into(),
    };
    let all = rows(4001);
    let mut w = opened.local_writer(&writer_cfg).await?;
    for ch in all[..2000].chunks(100) {
        w.append_rows(&names, ch.to_vec()).await?;
    }
    let status = w.close().await?;
    opened.flush().await?;
    if !status.flushed() {
        return Err("the chunk is not flushed after flush_engine".into());
    }
    println!("FLUSHED");
    std::io::stdout().flush()?;
    let mut w = opened.local_writer(&writer_cfg).await?;
    for ch in all[2000..].chunks(100) {
        w.append_rows(&names, ch.to_vec()).await?;
    }
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    Ok(())
}
