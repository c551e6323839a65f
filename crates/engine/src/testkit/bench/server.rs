//! The server a benchmark runs on: a scratch server of its own, or the
//! `[source]` of an operator's job config; and how each child tool connects
//! to it (a job config section, mydumper/myloader options, a pt-osc DSN,
//! gh-ost's host and port).

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use super::harness::BENCH_SCHEMA;
use super::BenchError;
use crate::config::ConnectionConfig;
use crate::testkit::scratch::{ScratchError, ScratchOptions, ScratchServer};

/// Where a tool that takes host, port, user and password connects (gh-ost,
/// which has no socket option: a server reached by socket is asked on its
/// host and port).
#[derive(Debug, Clone)]
pub(super) struct ToolConnection {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: Option<String>,
}

/// Where the benchmark runs.
pub(super) enum BenchServer {
    Scratch(ScratchServer),
    External(Box<ConnectionConfig>),
}

impl BenchServer {
    pub(super) fn opts(&self) -> Result<Opts, BenchError> {
        match self {
            BenchServer::Scratch(s) => Ok(s.opts(None).into()),
            BenchServer::External(c) => {
                let opts = crate::server::connection_opts(c).map_err(BenchError::Usage)?;
                Ok(OptsBuilder::from_opts(opts).db_name(None::<String>).into())
            }
        }
    }

    pub(super) fn owned(&self) -> bool {
        matches!(self, BenchServer::Scratch(_))
    }

    fn password(c: &ConnectionConfig) -> Result<Option<String>, BenchError> {
        let password = c.resolve_password().map_err(BenchError::Usage)?;
        Ok(password.map(|p| p.expose().to_string()))
    }

    /// The `[source]` section of a job config for this server.
    pub(super) fn source_toml(&self) -> Result<String, BenchError> {
        self.connection_toml("source", BENCH_SCHEMA)
    }

    /// mydumper's and myloader's connection options for this server.
    pub(super) fn dump_tool_args(&self) -> Result<Vec<String>, BenchError> {
        let mut args = Vec::new();
        match self {
            BenchServer::Scratch(s) => {
                args.extend([
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-P".into(),
                    s.port().to_string(),
                ]);
                args.extend(["-u".into(), "root".into()]);
            }
            BenchServer::External(c) => {
                match &c.socket {
                    Some(socket) => args.extend(["-S".into(), socket.display().to_string()]),
                    None => {
                        args.extend(["-h".into(), c.host.clone(), "-P".into(), c.port.to_string()])
                    }
                }
                args.extend(["-u".into(), c.user.clone()]);
                if let Some(password) = Self::password(c)? {
                    args.extend(["-p".into(), password]);
                }
            }
        }
        Ok(args)
    }

    /// A `[section]` of a job config that connects to this server's `database`.
    pub(super) fn connection_toml(
        &self,
        section: &str,
        database: &str,
    ) -> Result<String, BenchError> {
        let mut toml = format!("[{section}]\n");
        match self {
            BenchServer::Scratch(s) => {
                toml += &format!(
                    "host = \"127.0.0.1\"\nport = {}\nuser = \"root\"\n",
                    s.port()
                );
            }
            BenchServer::External(c) => {
                toml += &format!(
                    "host = {:?}\nport = {}\nuser = {:?}\n",
                    c.host, c.port, c.user
                );
                if let Some(socket) = &c.socket {
                    toml += &format!("socket = {:?}\n", socket.display().to_string());
                }
                if let Some(password) = Self::password(c)? {
                    toml += &format!("password = {password:?}\n");
                }
            }
        }
        toml += &format!("database = {database:?}\n");
        Ok(toml)
    }

    /// How gh-ost connects.
    pub(super) fn tool_connection(&self) -> Result<ToolConnection, BenchError> {
        Ok(match self {
            BenchServer::Scratch(s) => ToolConnection {
                host: "127.0.0.1".into(),
                port: s.port(),
                user: "root".into(),
                password: None,
            },
            BenchServer::External(c) => ToolConnection {
                host: c.host.clone(),
                port: c.port,
                user: c.user.clone(),
                password: Self::password(c)?,
            },
        })
    }

    /// The scratch server's port (`None` on an operator's server).
    pub(super) fn scratch_port(&self) -> Option<u16> {
        match self {
            BenchServer::Scratch(s) => Some(s.port()),
            BenchServer::External(_) => None,
        }
    }

    /// The DSN pt-online-schema-change connects with.
    pub(super) fn ptosc_dsn(&self, table: &str) -> Result<String, BenchError> {
        let mut dsn = format!("D={BENCH_SCHEMA},t={table}");
        match self {
            BenchServer::Scratch(s) => dsn += &format!(",h=127.0.0.1,P={},u=root", s.port()),
            BenchServer::External(c) => {
                match &c.socket {
                    Some(socket) => dsn += &format!(",S={}", socket.display()),
                    None => dsn += &format!(",h={},P={}", c.host, c.port),
                }
                dsn += &format!(",u={}", c.user);
                if let Some(password) = Self::password(c)? {
                    dsn += &format!(",p={password}");
                }
            }
        }
        Ok(dsn)
    }
}

/// Starts a scratch server, retrying a failed datadir installation: it
/// sometimes fails when other scratch servers are being installed at the same
/// moment (a shared machine, tests running beside the benchmark).
pub(super) fn start_scratch(options: ScratchOptions) -> Result<ScratchServer, ScratchError> {
    let mut attempt = 1;
    loop {
        match ScratchServer::start(options.clone()) {
            Err(ScratchError::InstallDb { tool, output }) if attempt < 3 => {
                tracing::warn!(%tool, attempt, output = %output.lines().last().unwrap_or(""), "installing the scratch datadir failed; retrying");
                std::thread::sleep(Duration::from_millis(500 * attempt));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The server's pid, when it runs on this machine (from `@@pid_file`).
pub(super) async fn server_pid(conn: &mut Conn) -> Option<u32> {
    let (pid_file, datadir): (String, String) = conn
        .query_first("SELECT @@pid_file, @@datadir")
        .await
        .ok()
        .flatten()?;
    let path = Path::new(&datadir).join(pid_file);
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.contains("mariadbd") || comm.contains("mysqld")).then_some(pid)
}
