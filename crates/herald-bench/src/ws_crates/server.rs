//! The minimal server shape each WebSocket crate is measured in, one crate per process: an axum
//! router upgrades `GET /ws` (as Herald's does), every connection gets an unbounded queue of
//! pre-encoded text frames and a writer task that packs whatever is queued into one frame
//! (newline-joined, up to 64 KiB, as Herald's writer task did when this was written), and a
//! reader that waits for the close. A plain-text control port takes `count` (connections registered) and
//! `fanout FRAMES BYTES PACK` (queue FRAMES frames of about BYTES bytes on every connection;
//! PACK 1 packs queued frames, 0 writes each as its own message).
//!
//! (a) axum's `WebSocketUpgrade` (tungstenite) with Herald's small buffers (4 KiB read buffer,
//! no write buffer); (b) tokio-websockets and (c) fastwebsockets on the connection hyper hands
//! over after the same axum route answered the upgrade (fastwebsockets' `upgrade` computes the
//! accept header for both), which is how either would sit in Herald.

use anyhow::{Context, Result};
use axum::extract::ws::{Message as AxumMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Frames larger than this are written alone rather than packed with others (Herald's value).
const PACK_LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Crate {
    /// axum 0.8 `WebSocketUpgrade` (tungstenite 0.28), 4 KiB read buffer, no write buffer.
    Axum,
    /// tokio-websockets 0.13 on hyper's upgraded connection.
    TokioWebsockets,
    /// fastwebsockets 0.10 on hyper's upgraded connection (split read and write halves).
    Fastwebsockets,
}

impl Crate {
    pub fn name(self) -> &'static str {
        match self {
            Crate::Axum => "axum/tungstenite",
            Crate::TokioWebsockets => "tokio-websockets",
            Crate::Fastwebsockets => "fastwebsockets",
        }
    }
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[arg(long = "crate", value_enum)]
    pub implementation: Crate,
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub control_port: u16,
    /// Tokio worker threads (Herald uses one per core).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// A frame as the queue carries it: axum takes `Utf8Bytes`, the other two `Bytes`.
trait Item: Clone + Send + 'static {
    fn from_text(text: String) -> Self;
}

impl Item for Utf8Bytes {
    fn from_text(text: String) -> Self {
        Utf8Bytes::from(text)
    }
}

impl Item for Bytes {
    fn from_text(text: String) -> Self {
        Bytes::from(text)
    }
}

struct Hub<T> {
    queues: Mutex<Vec<mpsc::UnboundedSender<T>>>,
    pack: AtomicBool,
}

impl<T: Item> Hub<T> {
    fn new() -> Arc<Self> {
        Arc::new(Self { queues: Mutex::new(Vec::new()), pack: AtomicBool::new(true) })
    }

    fn register(&self) -> mpsc::UnboundedReceiver<T> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
        receiver
    }

    fn count(&self) -> usize {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|queue| !queue.is_closed());
        queues.len()
    }

    fn fanout(&self, frames: u64, bytes: usize, pack: bool) {
        self.pack.store(pack, Ordering::Relaxed);
        let queues: Vec<_> = self.queues.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let padding = "x".repeat(bytes.saturating_sub(20));
        for seq in 1..=frames {
            // Encoded once, shared by every connection (as Herald shares a publication's frame).
            let frame = T::from_text(format!("{{\"seq\":{seq},\"pad\":\"{padding}\"}}"));
            for queue in &queues {
                let _ = queue.send(frame.clone());
            }
        }
    }
}

pub fn serve(args: ServerArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", args.port)).await.context("binding the WebSocket port")?;
        let control = TcpListener::bind(("127.0.0.1", args.control_port)).await.context("binding the control port")?;
        match args.implementation {
            Crate::Axum => {
                let hub = Hub::<Utf8Bytes>::new();
                tokio::spawn(control_loop(control, hub.clone()));
                let app = axum::Router::new().route("/ws", axum::routing::get(axum_upgrade)).with_state(hub);
                axum::serve(listener, app).await?;
            }
            Crate::TokioWebsockets => {
                let hub = Hub::<Bytes>::new();
                tokio::spawn(control_loop(control, hub.clone()));
                let app =
                    axum::Router::new().route("/ws", axum::routing::get(tokio_websockets_upgrade)).with_state(hub);
                axum::serve(listener, app).await?;
            }
            Crate::Fastwebsockets => {
                let hub = Hub::<Bytes>::new();
                tokio::spawn(control_loop(control, hub.clone()));
                let app = axum::Router::new().route("/ws", axum::routing::get(fastwebsockets_upgrade)).with_state(hub);
                axum::serve(listener, app).await?;
            }
        }
        anyhow::Ok(())
    })
}

async fn control_loop<T: Item>(listener: TcpListener, hub: Arc<Hub<T>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let words: Vec<&str> = line.split_whitespace().collect();
                let answer = match words.as_slice() {
                    ["count"] => hub.count().to_string(),
                    ["fanout", frames, bytes, pack] => match (frames.parse(), bytes.parse()) {
                        (Ok(frames), Ok(bytes)) => {
                            hub.fanout(frames, bytes, *pack == "1");
                            "queued".to_owned()
                        }
                        _ => "error: fanout FRAMES BYTES PACK".to_owned(),
                    },
                    _ => format!("error: unknown command {line:?}"),
                };
                if write.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Joins what else is queued to `first` (newline-separated), up to `PACK_LIMIT`.
fn pack_bytes(first: Bytes, queue: &mut mpsc::UnboundedReceiver<Bytes>, pack: bool) -> Bytes {
    if !pack {
        return first;
    }
    let mut packed: Option<BytesMut> = None;
    while first.len() + packed.as_ref().map_or(0, BytesMut::len) < PACK_LIMIT {
        let Ok(next) = queue.try_recv() else { break };
        let buffer = packed.get_or_insert_with(|| {
            let mut buffer = BytesMut::with_capacity(first.len() * 2 + next.len());
            buffer.extend_from_slice(&first);
            buffer
        });
        buffer.extend_from_slice(b"\n");
        buffer.extend_from_slice(&next);
    }
    packed.map_or(first, BytesMut::freeze)
}

// (a) axum / tungstenite.

async fn axum_upgrade(State(hub): State<Arc<Hub<Utf8Bytes>>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.read_buffer_size(4 * 1024).write_buffer_size(0).on_upgrade(move |socket| axum_connection(hub, socket))
}

async fn axum_connection(hub: Arc<Hub<Utf8Bytes>>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut queue = hub.register();
    let writer = tokio::spawn(async move {
        while let Some(first) = queue.recv().await {
            let text = if hub.pack.load(Ordering::Relaxed) {
                // Herald's packing: valid UTF-8 joined with newlines stays valid, no re-check.
                let mut packed: Option<String> = None;
                while first.len() + packed.as_ref().map_or(0, String::len) < PACK_LIMIT {
                    let Ok(next) = queue.try_recv() else { break };
                    let buffer = packed.get_or_insert_with(|| {
                        let mut buffer = String::with_capacity(first.len() * 2 + next.len());
                        buffer.push_str(first.as_str());
                        buffer
                    });
                    buffer.push('\n');
                    buffer.push_str(next.as_str());
                }
                packed.map_or(first, Utf8Bytes::from)
            } else {
                first
            };
            if sink.send(AxumMessage::Text(text)).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, AxumMessage::Close(_)) {
            break;
        }
    }
    writer.abort();
}

// (b) tokio-websockets.

async fn tokio_websockets_upgrade(State(hub): State<Arc<Hub<Bytes>>>, mut request: Request) -> Response {
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(error) => return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    tokio::spawn(async move {
        // Only the upgraded connection is taken: tokio-websockets does the framing.
        let Ok(socket) = upgraded.await else { return };
        let io: TokioIo<hyper::upgrade::Upgraded> = socket.into_inner();
        let socket = tokio_websockets::ServerBuilder::new().serve(io);
        let (mut sink, mut stream) = socket.split();
        let mut queue = hub.register();
        let writer = tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let frame = pack_bytes(first, &mut queue, hub.pack.load(Ordering::Relaxed));
                if sink.send(tokio_websockets::Message::text(frame)).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
        writer.abort();
    });
    response.map(axum::body::Body::new)
}

// (c) fastwebsockets.

async fn fastwebsockets_upgrade(State(hub): State<Arc<Hub<Bytes>>>, mut request: Request) -> Response {
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(error) => return (axum::http::StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    tokio::spawn(async move {
        let Ok(socket) = upgraded.await else { return };
        let (mut read, mut write) = socket.split(tokio::io::split);
        let mut queue = hub.register();
        let writer = tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let frame = pack_bytes(first, &mut queue, hub.pack.load(Ordering::Relaxed));
                let frame = fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(&frame));
                if write.write_frame(frame).await.is_err() {
                    return;
                }
            }
        });
        // The clients here never ping, so the frames the read half is obliged to answer (pong,
        // close) are not forwarded to the writer: the connection ends at the close anyway.
        let mut obligated = |_frame: fastwebsockets::Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        while let Ok(frame) = read.read_frame(&mut obligated).await {
            if frame.opcode == fastwebsockets::OpCode::Close {
                break;
            }
        }
        writer.abort();
    });
    response.map(axum::body::Body::new)
}
