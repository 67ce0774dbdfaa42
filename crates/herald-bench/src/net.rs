//! Client sockets for many connections from one process: the open-file limit, local source
//! addresses spread over 127/8 (each source address has its own ~28,000 ephemeral ports), and
//! WebSocket handshakes over a socket bound to one of them.

use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Connections one source address is given at most when the count is chosen automatically.
/// Well below the ~28,000 ephemeral ports (`ip_local_port_range` 32768-60999): as the range
/// fills, the kernel's port search in `connect` (`__inet_hash_connect`) probes more and more
/// taken ports; with 19,000 connections from one address it took 78% of the load generator's
/// CPU (perf), so they are spread before that.
const CONNECTIONS_PER_SOURCE: usize = 5_000;

/// Descriptors the process needs besides its connections (runtime, stdio, HTTP clients, /proc).
pub const SPARE_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_open_file_limit() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit (RLIMIT_NOFILE)")
}

/// Fails with a clear message when `connections` sockets (plus spare descriptors) do not fit
/// under the open-file limit.
pub fn ensure_open_files(connections: usize) -> Result<()> {
    let limit = raise_open_file_limit()?;
    let needed = connections as u64 + SPARE_FDS;
    if needed > limit {
        let (_, hard) = rlimit::Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
        bail!(
            "{connections} connections need about {needed} open files, but this process may open only {limit} \
             (hard limit {hard}); use at most {} connections or raise the hard limit (ulimit -Hn)",
            limit.saturating_sub(SPARE_FDS)
        );
    }
    Ok(())
}

/// Local addresses client sockets bind to, in turn.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    addrs: Vec<IpAddr>,
}

impl Sources {
    /// `count` addresses 127.0.0.2, 127.0.0.3, ... when the server is on loopback (`count` 0:
    /// one per 5,000 connections); none (the kernel picks) for a server elsewhere.
    pub fn for_server(server_host: &str, count: usize, connections: usize) -> Result<Self> {
        let loopback = server_host == "localhost"
            || server_host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() && ip.is_ipv4());
        if !loopback {
            anyhow::ensure!(count == 0, "--source-addrs needs a server on 127.0.0.0/8 (got {server_host})");
            return Ok(Self::default());
        }
        let count = if count == 0 { connections.div_ceil(CONNECTIONS_PER_SOURCE).max(1) } else { count };
        anyhow::ensure!(count <= 250, "--source-addrs {count}: at most 250 (127.0.0.2 to 127.0.0.251)");
        let addrs = (0..count).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))).collect();
        Ok(Self { addrs })
    }

    /// The source address of connection `index` (round robin), if any.
    pub fn pick(&self, index: usize) -> Option<IpAddr> {
        (!self.addrs.is_empty()).then(|| self.addrs[index % self.addrs.len()])
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }
}

/// The host of a `host:port` address.
pub fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']')
}

/// TCP options of one client socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketOptions {
    pub source: Option<IpAddr>,
    /// SO_RCVBUF: a small receive buffer makes a subscriber that stops reading push back on the
    /// server after a few KiB instead of the megabytes loopback autotuning allows.
    pub recv_buffer: Option<u32>,
}

/// Connects to `addr` (host:port) from `options.source` with TCP_NODELAY.
pub async fn tcp_connect(addr: &str, options: SocketOptions) -> Result<TcpStream> {
    let remote: SocketAddr = match addr.parse() {
        Ok(remote) => remote,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("resolving {addr}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{addr} has no IPv4 address"))?,
    };
    let socket = if remote.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = options.source {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding to {source}"))?;
    }
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size).context("setting SO_RCVBUF")?;
    }
    let stream = socket.connect(remote).await.with_context(|| {
        let from = options.source.map(|s| format!(" from {s}")).unwrap_or_default();
        format!("TCP connect to {remote}{from}")
    })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT: `bind` fixes only the source address and `connect` picks the port
/// for the whole 4-tuple, so a port is reused towards other servers and sockets in TIME_WAIT
/// from earlier runs do not exhaust the ~28,000 ports of a source address.
fn bind_address_no_port(socket: &TcpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket this function borrows, with a pointer to a live c_int
    // and its exact size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(enable).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("setting IP_BIND_ADDRESS_NO_PORT");
    }
    Ok(())
}

/// A WebSocket client handshake on a socket made by [`tcp_connect`]; `url` is `ws://host:port/...`.
pub async fn ws_connect(
    url: &str,
    options: SocketOptions,
    config: WebSocketConfig,
) -> Result<WebSocketStream<TcpStream>> {
    let authority = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs are supported"))?
        .split('/')
        .next()
        .unwrap_or_default();
    let stream = tcp_connect(authority, options).await?;
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::{host_of, Sources};

    #[test]
    fn spreads_loopback_clients_over_source_addresses() {
        let auto = Sources::for_server("127.0.0.1", 0, 12_000).unwrap();
        assert_eq!(auto.len(), 3);
        assert_eq!(auto.pick(0).unwrap().to_string(), "127.0.0.2");
        assert_eq!(auto.pick(4).unwrap().to_string(), "127.0.0.3");
        assert_eq!(Sources::for_server("localhost", 0, 10).unwrap().len(), 1);
        assert!(Sources::for_server("10.0.0.5", 0, 10).unwrap().pick(0).is_none());
        assert!(Sources::for_server("10.0.0.5", 2, 10).is_err());
        assert!(Sources::for_server("127.0.0.1", 251, 10).is_err());
        assert_eq!(host_of("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8000"), "::1");
    }
}
