//! Servers under test that `compare` starts itself on free loopback ports: Herald (durable or
//! in-memory engine; `herald-protobuf` is the durable one again, for subscribers speaking
//! Protobuf), Socket.IO (`shared/peers/socketio-server.js`) and NATS with its WebSocket
//! listener. Each is stopped by its own PID (SIGTERM, then SIGKILL) when dropped.

use crate::Target;
use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The targets `compare` knows, for messages.
pub const TARGETS: &str = "herald, herald-memory, herald-protobuf, socketio or nats";

/// Where to find the servers.
#[derive(Clone, Debug)]
pub struct Install {
    pub herald_bin: PathBuf,
    pub peers_dir: PathBuf,
    pub node_modules: PathBuf,
    pub nats_server: String,
    pub work_dir: PathBuf,
}

/// One running server.
pub struct Server {
    pub label: String,
    pub target: Target,
    /// WebSocket host:port (Herald serves HTTP on it too).
    pub addr: String,
    /// NATS plain TCP host:port (publishing).
    pub nats_tcp: Option<String>,
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Server {
    /// A server started elsewhere.
    pub fn external(label: &str, target: Target, addr: String, nats_tcp: Option<String>, pid: Option<u32>) -> Self {
        Self { label: label.to_owned(), target, addr, nats_tcp, pid, child: None }
    }

    /// Starts `label` (herald, herald-memory, herald-protobuf, socketio or nats) on free ports and waits until
    /// it accepts connections.
    pub fn start(label: &str, install: &Install) -> Result<Self> {
        std::fs::create_dir_all(&install.work_dir)
            .with_context(|| format!("creating {}", install.work_dir.display()))?;
        let log_path = install.work_dir.join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        // NATS needs three ports; they are chosen together so that they differ.
        let ports = free_ports(3)?;
        let port = ports[0];
        let addr = format!("127.0.0.1:{port}");
        let (target, mut command, nats_tcp) = match label {
            "herald" | "herald-memory" | "herald-protobuf" => {
                anyhow::ensure!(
                    install.herald_bin.is_file(),
                    "{} does not exist: build it with `cargo build --release -p herald` or pass --herald-bin",
                    install.herald_bin.display()
                );
                let mut command = Command::new(&install.herald_bin);
                command.args(["serve", "--dev", "--port", &port.to_string(), "--log-level", "warn"]);
                if label == "herald-memory" {
                    command.arg("--memory");
                } else {
                    let data = install.work_dir.join("herald-data");
                    let _ = std::fs::remove_dir_all(&data);
                    command.arg("--data-dir").arg(&data);
                }
                (Target::Herald, command, None)
            }
            "socketio" => {
                let script = install.peers_dir.join("socketio-server.js");
                anyhow::ensure!(script.is_file(), "{} does not exist (see --peers-dir)", script.display());
                anyhow::ensure!(
                    install.node_modules.join("socket.io").is_dir(),
                    "socket.io is not installed in {}: mkdir -p /tmp/peers/node && cd /tmp/peers/node && \
                     npm init -y && npm install socket.io socket.io-client (or pass --node-modules)",
                    install.node_modules.display()
                );
                let mut command = Command::new("node");
                command.arg(&script).env("NODE_PATH", &install.node_modules).env("PORT", port.to_string());
                (Target::Socketio, command, None)
            }
            "nats" => {
                let conf = nats_config(install, &ports)?;
                let mut command = Command::new(&install.nats_server);
                command.arg("-c").arg(&conf.path);
                (Target::Nats, command, Some(conf.tcp))
            }
            other => bail!("unknown target {other}: use {TARGETS}"),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {label} ({command:?})"))?;
        let mut server = Self {
            label: label.to_owned(),
            target,
            addr: addr.clone(),
            nats_tcp: nats_tcp.clone(),
            pid: Some(child.id()),
            child: Some(child),
        };
        for wait_for in std::iter::once(&addr).chain(nats_tcp.as_ref()) {
            if let Err(error) = server.wait_accepting(wait_for, Duration::from_secs(20)) {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{label}: {error:#}; its log ({}):\n{}", log_path.display(), tail.join("\n"));
            }
        }
        Ok(server)
    }

    fn wait_accepting(&mut self, addr: &str, bound: Duration) -> Result<()> {
        let until = Instant::now() + bound;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait()? {
                    bail!("exited with {status} before accepting on {addr}");
                }
            }
            if Instant::now() >= until {
                bail!("not accepting connections on {addr} after {bound:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SIGTERM lets Herald drain and the peers exit cleanly; SIGKILL if it takes too long.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the PID of a child this process started and has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

struct NatsConfig {
    path: PathBuf,
    tcp: String,
}

/// A copy of `shared/peers/nats-ws.conf` with free ports (its 4222, 8222 and 9222 replaced).
fn nats_config(install: &Install, ports: &[u16]) -> Result<NatsConfig> {
    let source = install.peers_dir.join("nats-ws.conf");
    let text = std::fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
    let (ws_port, tcp_port, http_port) = (ports[0], ports[1], ports[2]);
    let text = text
        .replace("4222", &tcp_port.to_string())
        .replace("8222", &http_port.to_string())
        .replace("9222", &ws_port.to_string());
    let path = install.work_dir.join("nats-ws.conf");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(NatsConfig { path, tcp: format!("127.0.0.1:{tcp_port}") })
}

/// `count` distinct loopback ports nothing listens on right now.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}

/// `../shared/peers` from the repository root, or from the current directory's parent chain.
pub fn default_peers_dir() -> PathBuf {
    let mut dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    loop {
        let candidate = dir.join("shared").join("peers");
        if candidate.is_dir() {
            return candidate;
        }
        if !dir.pop() {
            return Path::new("../shared/peers").to_path_buf();
        }
    }
}
