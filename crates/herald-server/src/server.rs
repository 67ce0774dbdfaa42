//! Serving a node on a listener until a shutdown signal, then draining it.

use crate::node::Node;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves the node's routes on `listener` until `signal` resolves; then stops accepting,
/// disconnects clients with 3001, lets in-flight API calls finish, all within `timeout`.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let app = node.router();
    serve_app(node, app, listener, signal, timeout).await
}

/// Like [`serve`], for an application `Router` that has the node's routes merged in: shutdown
/// then also drains the node's connections.
pub async fn serve_app(
    node: Node,
    app: axum::Router,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
    timeout: Duration,
) -> std::io::Result<()> {
    let stop = node.shutdown_token();
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = NoDelayListener(listener);
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<ConnectionSocket>())
        .with_graceful_shutdown({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = signal => {}
                    _ = stop.cancelled() => {}
                }
                let _ = signalled_tx.send(());
            }
        });
    let server = tokio::spawn(async move { server.await });
    // Once the signal came, disconnect the WebSocket clients; the HTTP server meanwhile finishes
    // the API calls it is serving.
    let _ = signalled_rx.await;
    tracing::info!("shutting down: disconnecting clients");
    let deadline = tokio::time::Instant::now() + timeout;
    node.shutdown(timeout).await;
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("shutdown timeout reached with requests still in flight");
            Ok(())
        }
    }
}

/// The accepted connection's socket, which a WebSocket session lends to the fan-out for direct
/// writes (see `direct_write`); the session owns the socket and takes it back before closing it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSocket(pub(crate) std::os::fd::RawFd);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NoDelayListener>> for ConnectionSocket {
    fn connect_info(stream: axum::serve::IncomingStream<'_, NoDelayListener>) -> Self {
        Self(std::os::fd::AsRawFd::as_raw_fd(stream.io()))
    }
}

/// Accepts with TCP_NODELAY set: small frames must leave at once, where Nagle's algorithm and
/// delayed ACKs would hold them for tens of milliseconds.
pub(crate) struct NoDelayListener(TcpListener);

impl axum::serve::Listener for NoDelayListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        (stream, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
