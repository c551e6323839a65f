//! A private, throwaway MariaDB (or MySQL) server.
//!
//! Used by the tests, by `wraith demo` and by `wraith bench`: it starts `mariadbd`
//! with its own datadir in a temp dir, on a free loopback port, with the binlog
//! settings wraith needs (`ROW`, `FULL` image, `FULL` metadata), waits until it
//! answers and stops it when dropped. It installs nothing: `scripts/setup` does.
//!
//! The server process is started from a keeper thread that lives as long as the
//! process, with `PR_SET_PDEATHSIG`, so a test binary that is killed never leaves
//! a server behind (the kernel sends the signal when the spawning *thread* ends,
//! which is why it is not spawned from the caller's thread).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mysql_async::OptsBuilder;

/// What can go wrong starting a scratch server.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("no MariaDB/MySQL server binary found (looked for mariadbd and mysqld in PATH, /usr/sbin, /usr/local/bin); run scripts/setup or `apt-get install mariadb-server`")]
    NoServerBinary,
    #[error("could not create the scratch datadir: {0}")]
    Io(#[from] std::io::Error),
    #[error("initialising the scratch datadir with {tool} failed: {output}")]
    InstallDb { tool: String, output: String },
    #[error(
        "the scratch server did not answer within {seconds}s; its log {log} ends with:\n{tail}"
    )]
    StartTimeout {
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("the scratch server exited while starting; its log {log} ends with:\n{tail}")]
    Exited { log: PathBuf, tail: String },
}

/// How to start a scratch server.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    /// `--innodb-buffer-pool-size`.
    pub buffer_pool: String,
    /// `--binlog-format`; tests of preflight refusals start a server with `STATEMENT`.
    pub binlog_format: String,
    /// `--binlog-row-image`.
    pub binlog_row_image: String,
    /// Further server options, appended last.
    pub extra_args: Vec<String>,
    /// How long to wait for the server to answer.
    pub start_timeout: Duration,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        ScratchOptions {
            buffer_pool: "512M".into(),
            binlog_format: "ROW".into(),
            binlog_row_image: "FULL".into(),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(90),
        }
    }
}

/// A running private server. Dropping it stops the server and deletes its datadir.
pub struct ScratchServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
    flavor_binary: PathBuf,
    opts: ScratchOptions,
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Spawns `cmd` from a thread that never ends, so `PR_SET_PDEATHSIG` fires only
/// when the whole process goes away.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("scratch-server-keeper".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("scratch keeper thread died"))?
}

impl ScratchServer {
    /// Starts a server and waits until it answers. Blocking.
    pub fn start(opts: ScratchOptions) -> Result<ScratchServer, ScratchError> {
        let server = find_binary(&["mariadbd", "mysqld"]).ok_or(ScratchError::NoServerBinary)?;
        remove_stale_datadirs();
        let dir = tempfile::Builder::new()
            .prefix("wraith-scratch-")
            .tempdir()?;
        register_for_exit_cleanup(dir.path());
        // The owner's pid keeps the datadir from looking stale while the
        // server is down for a restart.
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())?;
        let datadir = dir.path().join("data");
        install_datadir(&server, &datadir)?;

        let mut last_err = None;
        // A free port can be taken between our probe and the server's bind: retry.
        for _ in 0..3 {
            let port = free_port()?;
            let log = dir.path().join("server.err");
            let _ = std::fs::remove_file(&log);
            let cmd = server_command(&server, dir.path(), port, &opts);
            let mut child = spawn_tied_to_process(cmd)?;
            let socket = dir.path().join("mysql.sock");
            match wait_ready(&mut child, port, &socket, opts.start_timeout, &log) {
                Ok(()) => {
                    let scratch = ScratchServer {
                        port,
                        dir,
                        child,
                        flavor_binary: server.clone(),
                        opts,
                    };
                    scratch.bootstrap_users()?;
                    tracing::info!(port, datadir = %datadir.display(), "scratch server started");
                    return Ok(scratch);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let port_taken =
                        matches!(&e, ScratchError::Exited { tail, .. } if tail.contains("in use"));
                    if !port_taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(ScratchError::NoServerBinary))
    }

    /// With `--skip-name-resolve`, TCP clients are `root@127.0.0.1`, which the
    /// installer does not create; add it (over the socket) so TCP works too.
    fn bootstrap_users(&self) -> Result<(), ScratchError> {
        let client = find_binary(&["mariadb", "mysql"]).ok_or(ScratchError::NoServerBinary)?;
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("-e")
            .arg(
                "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; \
                 GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;",
            )
            .output()?;
        if !out.status.success() {
            return Err(ScratchError::InstallDb {
                tool: "mariadb client (bootstrap users)".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Stops the server cleanly (SIGTERM, as a service manager would), keeps
    /// it down for `down`, then starts it again on the same datadir and port.
    /// Blocking. For tests of what clients do when their server goes away.
    pub fn restart(&mut self, down: Duration) -> Result<(), ScratchError> {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait()?;
        std::thread::sleep(down);
        let log = self.dir.path().join("server.err");
        let cmd = server_command(&self.flavor_binary, self.dir.path(), self.port, &self.opts);
        self.child = spawn_tied_to_process(cmd)?;
        let socket = self.socket();
        wait_ready(
            &mut self.child,
            self.port,
            &socket,
            self.opts.start_timeout,
            &log,
        )?;
        tracing::info!(port = self.port, "scratch server restarted");
        Ok(())
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Unix socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysql.sock")
    }

    /// Datadir of the server (for tests that restart it).
    pub fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server binary in use (`mariadbd` or `mysqld`).
    pub fn binary(&self) -> &Path {
        &self.flavor_binary
    }

    /// Connection options for root over TCP, with LOAD DATA LOCAL allowed.
    pub fn opts(&self, database: Option<&str>) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .db_name(database)
            .prefer_socket(false)
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        // SIGTERM for a clean shutdown; the datadir is deleted anyway, so do not wait long.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's command line: its own datadir, socket, pid file and port.
fn server_command(server: &Path, dir: &Path, port: u16, opts: &ScratchOptions) -> Command {
    let datadir = dir.join("data");
    let log = dir.join("server.err");
    // A tmpdir of its own: a server starting removes `#sql*` files in its
    // tmpdir, which would pull internal temp tables from under other
    // scratch servers sharing /tmp.
    let tmpdir = dir.join("tmp");
    let _ = std::fs::create_dir_all(&tmpdir);
    let mut cmd = Command::new(server);
    cmd.arg("--no-defaults")
        .arg(format!("--tmpdir={}", tmpdir.display()))
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", dir.join("mysql.sock").display()))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--pid-file={}", dir.join("server.pid").display()))
        .arg(format!("--log-error={}", log.display()))
        .arg("--log-bin=binlog")
        .arg(format!("--binlog-format={}", opts.binlog_format))
        .arg(format!("--binlog-row-image={}", opts.binlog_row_image))
        .arg("--server-id=1")
        .arg("--local-infile=1")
        .arg("--secure-file-priv=")
        .arg(format!("--innodb-buffer-pool-size={}", opts.buffer_pool))
        .arg("--innodb-log-file-size=64M")
        .arg("--innodb-flush-log-at-trx-commit=2")
        .arg("--max-connections=500")
        .arg("--skip-name-resolve");
    if is_mariadb(server) {
        cmd.arg("--binlog-row-metadata=FULL");
    }
    if running_as_root() {
        cmd.arg("--user=root");
    }
    cmd.args(&opts.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn wait_ready(
    child: &mut Child,
    port: u16,
    socket: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<(), ScratchError> {
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(ScratchError::Exited {
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(ScratchError::StartTimeout {
                seconds: timeout.as_secs(),
                log: log.to_path_buf(),
                tail: log_tail(log),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Datadirs of scratch servers whose process is gone (a test binary keeps its
/// server in a static, which is never dropped; a killed process drops
/// nothing). Removed before a new server starts, so they never pile up.
fn remove_stale_datadirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_scratch = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("wraith-scratch-"));
        if !is_scratch {
            continue;
        }
        let process_alive = |file: &str| {
            std::fs::read_to_string(path.join(file))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                // SAFETY: kill with signal 0 only checks that the process exists.
                .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
        };
        let alive = process_alive("server.pid") || process_alive("owner.pid");
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(120));
        // A dir without a pid file may be a server still starting: leave young ones.
        if !alive && !young {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Datadirs to delete when the process exits normally.
static EXIT_CLEANUP: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    if let Ok(dirs) = EXIT_CLEANUP.lock() {
        for dir in dirs.iter() {
            if let Ok(pid) = std::fs::read_to_string(dir.join("server.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: signalling the scratch server this process started.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn register_for_exit_cleanup(dir: &Path) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
    if let Ok(mut dirs) = EXIT_CLEANUP.lock() {
        dirs.push(dir.to_path_buf());
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn is_mariadb(server: &Path) -> bool {
    server
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("mariadb"))
        || Command::new(server)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("MariaDB"))
            .unwrap_or(false)
}

fn install_datadir(server: &Path, datadir: &Path) -> Result<(), ScratchError> {
    if is_mariadb(server) {
        let tool = find_binary(&["mariadb-install-db", "mysql_install_db"])
            .ok_or(ScratchError::NoServerBinary)?;
        let mut cmd = Command::new(&tool);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(ScratchError::InstallDb {
                tool: tool.display().to_string(),
                output: String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            });
        }
    } else {
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg("--initialize-insecure")
            .arg(format!("--datadir={}", datadir.display()));
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(ScratchError::InstallDb {
                tool: server.display().to_string(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}
