//! # The test and benchmark kit (feature `testkit`)
//!
//! What it is for: the pieces that let wraith be exercised against a real
//! server without an operator's database: a private throwaway server, generated
//! tables and write loads, and the `wraith bench` harness. The integration
//! tests, `wraith demo` and `wraith bench` use it; a rebuild or an import never
//! does.
//!
//! - [`scratch`]: a private MariaDB (or MySQL) on a free loopback port, in a
//!   temp datadir, stopped when dropped and never left behind by a killed test.
//! - [`workload`]: the sysbench-like `sbtest` table and a mirrored write load
//!   whose result is known, so a test can compare the rebuilt table with it.
//! - [`bench`]: `wraith bench`'s tables, pristine copies, fingerprints, the
//!   open-loop write load with latency histograms, and the harness that runs
//!   each method and gathers what the report shows.
//!
//! What it leaves to others: the rebuild and the import themselves (the rest of
//! this crate, run as a child `wraith` process by the bench so it is measured
//! as an operator would run it), and drawing results on a terminal or in files
//! (the CLI).
//!
//! Why a feature, off by default: the kit pulls in what only measuring needs
//! (`hdrhistogram`, `rand`, `tempfile`) and code that starts server processes.
//! A build of the engine for production (`cargo build -p wraith-engine`) has
//! none of it; the CLI turns it on with its default `demo` feature, the test
//! crates with `features = ["testkit"]`. The kit lives in the engine rather
//! than in a crate of its own because it uses the engine's connection helpers
//! and error types, and a separate crate would have to make those public for
//! nobody else.
//!
//! Errors: each part has its own typed error ([`scratch::ScratchError`],
//! [`bench::BenchError`]); the database ones wrap [`crate::server::DbError`].

pub mod bench;
pub mod scratch;
pub mod workload;
