//! The connection task: owns the WebSocket, the subscriptions and every timer. The handles
//! ([`crate::Client`], [`crate::Subscription`]) talk to it through a channel, so no lock is held
//! across the network and replies, pushes and timers are handled in one place, in order.

use crate::error::{Error, TokenError};
use crate::options::{ClientConfig, SubscribeOptions};
use crate::subscription::{Counters, Subscribed, SubscriptionEvent};
use crate::{codes, ConnectionState};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use herald_core::incoming::{GapSignal, Push, Reply};
use herald_core::protocol::{
    Command, ConnectRequest, Publication, RawJson, RefreshRequest, RpcRequest, Since, SubRefreshRequest,
    SubscribeRequest, UnsubscribeRequest,
};
use herald_core::Disconnect;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where a call's reply goes.
type ReplyTo = oneshot::Sender<Result<Reply, Error>>;

/// How often to look whether the application drained a subscription's full buffer.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The RPC method of acknowledged delivery.
pub(crate) const ACK_METHOD: &str = "herald.ack";

/// What the handles ask of the connection task.
pub(crate) enum Request {
    /// A command with a reply (publish, history, presence, rpc, ...). Sent once connected.
    Call {
        command: Box<Command>,
        reply: ReplyTo,
    },
    /// A fire-and-forget acknowledgement; kept (cumulatively, per channel) while disconnected.
    AutoAck {
        channel: String,
        offset: u64,
    },
    Subscribe {
        id: u64,
        channel: String,
        options: Box<SubscribeOptions>,
        events: mpsc::Sender<SubscriptionEvent>,
        counters: Arc<Counters>,
        ready: oneshot::Sender<Result<Subscribed, Error>>,
    },
    Unsubscribe {
        id: u64,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
    Connect,
    Disconnect,
}

/// Results of work the task handed to other tasks (token callbacks).
enum Internal {
    ConnectionToken { session: u64, token: Result<String, TokenError> },
    SubscriptionToken { session: u64, channel: String, id: u64, refresh: bool, token: Result<String, TokenError> },
}

/// How a connection attempt or session ended.
#[derive(Debug)]
enum End {
    /// Try again after a backoff delay.
    Retry(String),
    /// Do not reconnect (terminal server code, unauthorized).
    Terminal { code: u16, reason: String },
    /// `disconnect()` was called.
    Stopped,
    /// Every handle is gone.
    Dropped,
}

/// What a reply answers.
enum Pending {
    Connect,
    Call(ReplyTo),
    AutoAck { channel: String, offset: u64 },
    Subscribe { channel: String, id: u64 },
    Unsubscribe(Option<oneshot::Sender<Result<(), Error>>>),
    Refresh,
    SubRefresh { channel: String, id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// To subscribe on the next occasion (connect, retry timer).
    Idle,
    /// Waiting for the subscription token callback.
    Token,
    Subscribing,
    Subscribed,
}

struct Entry {
    id: u64,
    options: SubscribeOptions,
    data: Option<RawJson>,
    events: mpsc::Sender<SubscriptionEvent>,
    counters: Arc<Counters>,
    /// The first subscribe's answer goes here; later ones become events.
    ready: Option<oneshot::Sender<Result<Subscribed, Error>>>,
    /// The last delivered offset in the stream's epoch: where recovery starts, and below which
    /// publications are duplicates.
    position: Since,
    /// The application fell behind and the buffer filled: unsubscribed until it drained, then
    /// subscribed again recovering from `position`.
    overflowed: bool,
    phase: Phase,
    recovering: bool,
    token: Option<String>,
    token_expires: Option<Instant>,
    refresh_at: Option<Instant>,
    retry_at: Option<Instant>,
    retries: u32,
}

/// One WebSocket connection's state.
struct Session {
    number: u64,
    pending: HashMap<u32, Pending>,
    outbox: Vec<String>,
    connected: bool,
    pong: bool,
    ping_interval: Option<Duration>,
    last_frame: Instant,
    handshake_deadline: Instant,
    refresh_at: Option<Instant>,
    refresh_failures: u32,
}

impl Session {
    fn push(&mut self, command: &Command) {
        // Our own request structs always serialize.
        match serde_json::to_string(command) {
            Ok(line) => self.outbox.push(line),
            Err(error) => tracing::error!(%error, "cannot encode a command"),
        }
    }
}

pub(crate) struct Actor {
    config: Arc<ClientConfig>,
    requests: mpsc::UnboundedReceiver<Request>,
    state: Arc<watch::Sender<ConnectionState>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    want_connected: bool,
    token: Option<String>,
    token_expires: Option<Instant>,
    token_stale: bool,
    subs: HashMap<String, Entry>,
    queued: Vec<(Box<Command>, ReplyTo)>,
    acks: HashMap<String, u64>,
    next_id: u32,
    sessions: u64,
    attempt: u32,
    last_error: Option<String>,
}

/// Reconnect delay for attempt `attempt` (0-based): `min + random(0..=min(max, min * 2^attempt))`,
/// capped at `max` ("full jitter" above a floor, as centrifuge-js does), so many clients cut off
/// together do not come back together.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min.checked_mul(1u32 << attempt.min(31)).unwrap_or(max).min(max);
    let jitter = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    (min + Duration::from_millis(jitter)).min(max)
}

/// How long a token the server says lives `ttl` more seconds surely lives: the server counts
/// whole seconds of its clock, so up to one of them may be gone already.
fn token_lifetime(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl)).saturating_sub(Duration::from_secs(1))
}

/// When to renew a token that lives `ttl` seconds: early enough that a slow callback still makes
/// it (a quarter of the lifetime early, at most 30 s), and never in a tight loop.
fn refresh_delay(ttl: u32) -> Duration {
    let lifetime = token_lifetime(ttl);
    (lifetime - (lifetime / 4).min(Duration::from_secs(30))).max(Duration::from_millis(100))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Actor {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        requests: mpsc::UnboundedReceiver<Request>,
        state: Arc<watch::Sender<ConnectionState>>,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Self {
            token: config.token.clone(),
            config,
            requests,
            state,
            internal_tx,
            internal_rx,
            want_connected: false,
            token_expires: None,
            token_stale: false,
            subs: HashMap::new(),
            queued: Vec::new(),
            acks: HashMap::new(),
            next_id: 0,
            sessions: 0,
            attempt: 0,
            last_error: None,
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    pub(crate) async fn run(mut self) {
        loop {
            if !self.want_connected {
                match self.requests.recv().await {
                    Some(request) => self.offline_request(request),
                    None => return,
                }
                continue;
            }
            self.set_state(ConnectionState::Connecting {
                attempt: self.attempt,
                retry_in: None,
                last_error: self.last_error.clone(),
            });
            let (end, was_connected) = self.connect_once().await;
            tracing::debug!(?end, was_connected, "connection ended");
            match end {
                End::Dropped => return,
                End::Stopped => {
                    self.stop(codes::DISCONNECT_CALLED, "disconnect called".into());
                    continue;
                }
                End::Terminal { code, reason } => {
                    self.stop(code, reason);
                    continue;
                }
                End::Retry(error) => {
                    if was_connected {
                        self.attempt = 0;
                    }
                    self.last_error = Some(error);
                }
            }
            let delay = backoff(self.attempt, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
            self.attempt = self.attempt.saturating_add(1);
            self.set_state(ConnectionState::Connecting {
                attempt: self.attempt,
                retry_in: Some(delay),
                last_error: self.last_error.clone(),
            });
            let wake = Instant::now() + delay;
            while self.want_connected {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    request = self.requests.recv() => match request {
                        Some(request) => self.offline_request(request),
                        None => return,
                    },
                }
            }
        }
    }

    /// Gives up connecting: pending work fails, subscriptions wait for the next `connect()`.
    fn stop(&mut self, code: u16, reason: String) {
        self.want_connected = false;
        self.attempt = 0;
        self.last_error = None;
        // Server codes are worth showing; the client's own (below 3000) are in the reason.
        let error = Error::Disconnected(if code >= 3000 { format!("{reason} ({code})") } else { reason.clone() });
        for (_, reply) in self.queued.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        self.subs.retain(|_, entry| match entry.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error.clone()));
                false
            }
            None => true,
        });
        self.set_state(ConnectionState::Disconnected { code, reason });
    }

    /// A request while there is no session.
    fn offline_request(&mut self, request: Request) {
        match request {
            Request::Connect => self.want_connected = true,
            Request::Disconnect => {
                if self.want_connected {
                    self.stop(codes::DISCONNECT_CALLED, "disconnect called".into());
                }
            }
            Request::Call { command, reply } => {
                if self.want_connected {
                    self.queued.push((command, reply));
                } else {
                    let _ = reply.send(Err(Error::Disconnected("not connected: call connect() first".into())));
                }
            }
            Request::AutoAck { channel, offset } => self.keep_ack(channel, offset),
            Request::Subscribe { id, channel, options, events, counters, ready } => {
                if !self.want_connected {
                    let _ = ready.send(Err(Error::Disconnected("not connected: call connect() first".into())));
                    return;
                }
                self.register(id, channel, *options, events, counters, ready);
            }
            Request::Unsubscribe { id, done } => {
                self.subs.retain(|_, entry| entry.id != id);
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
        }
    }

    fn keep_ack(&mut self, channel: String, offset: u64) {
        let kept = self.acks.entry(channel).or_insert(0);
        *kept = (*kept).max(offset);
    }

    /// Adds a subscription; false when refused (the caller has been told).
    fn register(
        &mut self,
        id: u64,
        channel: String,
        options: SubscribeOptions,
        events: mpsc::Sender<SubscriptionEvent>,
        counters: Arc<Counters>,
        ready: oneshot::Sender<Result<Subscribed, Error>>,
    ) -> bool {
        if channel.is_empty() {
            let _ = ready.send(Err(Error::Invalid("empty channel name".into())));
            return false;
        }
        if self.subs.contains_key(&channel) {
            let _ = ready.send(Err(Error::Invalid(format!("already subscribed to {channel:?}"))));
            return false;
        }
        let data = match options.request_data() {
            Ok(data) => data,
            Err(message) => {
                let _ = ready.send(Err(Error::Invalid(message)));
                return false;
            }
        };
        let position = options.since.clone().unwrap_or_default();
        self.subs.insert(
            channel,
            Entry {
                id,
                token: options.token.clone(),
                options,
                data,
                events,
                counters,
                ready: Some(ready),
                position,
                overflowed: false,
                phase: Phase::Idle,
                recovering: false,
                token_expires: None,
                refresh_at: None,
                retry_at: None,
                retries: 0,
            },
        );
        true
    }

    async fn connect_once(&mut self) -> (End, bool) {
        let expired = self.token_expires.is_some_and(|at| at <= Instant::now());
        if let Some(token_fn) = self.config.token_fn.clone() {
            if self.token.is_none() || self.token_stale || expired {
                match tokio::time::timeout(self.config.timeout, token_fn()).await {
                    Ok(Ok(token)) => {
                        self.token = Some(token);
                        self.token_stale = false;
                        self.token_expires = None;
                    }
                    Ok(Err(TokenError::Unauthorized(reason))) => {
                        return (End::Terminal { code: codes::UNAUTHORIZED, reason }, false)
                    }
                    Ok(Err(TokenError::Unavailable(reason))) => {
                        return (End::Retry(format!("connection token unavailable: {reason}")), false)
                    }
                    Err(_) => {
                        return (
                            End::Retry(format!("connection token callback took longer than {:?}", self.config.timeout)),
                            false,
                        )
                    }
                }
            }
        }
        let url = self.config.url.clone();
        let socket = match tokio::time::timeout(
            self.config.timeout,
            tokio_tungstenite::connect_async_with_config(&url, None, true),
        )
        .await
        {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(error)) => return (End::Retry(format!("cannot connect to {url}: {error}")), false),
            Err(_) => {
                return (
                    End::Retry(format!("no WebSocket handshake with {url} within {:?}", self.config.timeout)),
                    false,
                )
            }
        };
        self.session(socket).await
    }

    async fn session(&mut self, socket: Socket) -> (End, bool) {
        self.sessions += 1;
        let now = Instant::now();
        let mut session = Session {
            number: self.sessions,
            pending: HashMap::new(),
            outbox: Vec::new(),
            connected: false,
            pong: false,
            ping_interval: None,
            last_frame: now,
            handshake_deadline: now + self.config.timeout,
            refresh_at: None,
            refresh_failures: 0,
        };
        let (mut sink, mut stream) = socket.split();
        let id = self.next_id();
        session.pending.insert(id, Pending::Connect);
        let connect = ConnectRequest {
            token: self.token.clone().unwrap_or_default(),
            data: self.config.data.clone(),
            name: self.config.name.clone(),
            version: self.config.version.clone(),
            ..Default::default()
        };
        session.push(&Command { id, connect: Some(connect), ..Default::default() });
        let end = loop {
            // A server that stopped reading must not stall the client: the connection is replaced.
            match tokio::time::timeout(self.config.timeout, flush(&mut sink, &mut session.outbox)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => break End::Retry(format!("write: {error}")),
                Err(_) => break End::Retry(format!("a write took longer than {:?}", self.config.timeout)),
            }
            let deadline = self.next_deadline(&session);
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        session.last_frame = Instant::now();
                        if let Some(end) = self.frame(&mut session, text.as_str()) {
                            break end;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        break self.closed_by_server(code, reason);
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break End::Retry("the server sent a binary frame on a JSON connection".into());
                    }
                    Some(Ok(_)) => session.last_frame = Instant::now(),
                    Some(Err(error)) => break End::Retry(format!("read: {error}")),
                    None => break End::Retry("the server closed the connection without a close frame".into()),
                },
                request = self.requests.recv() => match request {
                    Some(request) => if let Some(end) = self.session_request(&mut session, request) {
                        break end;
                    },
                    None => break End::Dropped,
                },
                Some(internal) = self.internal_rx.recv() => {
                    if let Some(end) = self.internal(&mut session, internal) {
                        break end;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(end) = self.timers(&mut session) {
                        break end;
                    }
                }
            }
        };
        if matches!(end, End::Stopped | End::Dropped) {
            // Unsubscribes and acknowledgements queued just before the end still go out.
            let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
            let goodbye = async {
                flush(&mut sink, &mut session.outbox).await?;
                sink.send(Message::Close(Some(close))).await.map_err(|e| e.to_string())
            };
            let _ = tokio::time::timeout(self.config.timeout, goodbye).await;
        }
        let was_connected = session.connected;
        self.after_session(session, &end);
        (end, was_connected)
    }

    fn after_session(&mut self, session: Session, end: &End) {
        let reason = match end {
            End::Retry(error) => error.clone(),
            End::Terminal { code, reason } => format!("{reason} ({code})"),
            End::Stopped => "disconnect called".into(),
            End::Dropped => "client dropped".into(),
        };
        for (_, pending) in session.pending {
            match pending {
                Pending::Call(reply) => {
                    let _ = reply.send(Err(Error::Disconnected(reason.clone())));
                }
                Pending::Unsubscribe(Some(done)) => {
                    // Without a connection there is no subscription left on the server.
                    let _ = done.send(Ok(()));
                }
                Pending::AutoAck { channel, offset } => self.keep_ack(channel, offset),
                _ => {}
            }
        }
        for entry in self.subs.values_mut() {
            entry.phase = Phase::Idle;
            entry.refresh_at = None;
            entry.retry_at = None;
        }
    }

    fn next_deadline(&self, session: &Session) -> Instant {
        let mut next = far_future();
        if !session.connected {
            next = next.min(session.handshake_deadline);
        }
        if let (true, Some(interval)) = (session.connected, session.ping_interval) {
            next = next.min(session.last_frame + interval + self.config.max_server_ping_delay);
        }
        if let Some(at) = session.refresh_at {
            next = next.min(at);
        }
        for entry in self.subs.values() {
            for at in [entry.refresh_at, entry.retry_at].into_iter().flatten() {
                next = next.min(at);
            }
        }
        next
    }

    fn timers(&mut self, session: &mut Session) -> Option<End> {
        let now = Instant::now();
        if !session.connected && now >= session.handshake_deadline {
            return Some(End::Retry(format!("no connect reply within {:?}", self.config.timeout)));
        }
        if let (true, Some(interval)) = (session.connected, session.ping_interval) {
            let limit = interval + self.config.max_server_ping_delay;
            if now >= session.last_frame + limit {
                return Some(End::Retry(format!("nothing from the server for {limit:?}: connection presumed dead")));
            }
        }
        if session.refresh_at.is_some_and(|at| at <= now) {
            session.refresh_at = None;
            self.fetch_connection_token(session);
        }
        let due: Vec<(String, bool)> = self
            .subs
            .iter()
            .filter_map(|(channel, entry)| {
                if entry.refresh_at.is_some_and(|at| at <= now) {
                    Some((channel.clone(), true))
                } else if entry.retry_at.is_some_and(|at| at <= now) {
                    Some((channel.clone(), false))
                } else {
                    None
                }
            })
            .collect();
        for (channel, refresh) in due {
            if refresh {
                if let Some(entry) = self.subs.get_mut(&channel) {
                    entry.refresh_at = None;
                }
                self.fetch_subscription_token(session, &channel, true);
            } else {
                self.start_subscribe(session, &channel);
            }
        }
        None
    }

    fn fetch_connection_token(&self, session: &Session) {
        let Some(token_fn) = self.config.token_fn.clone() else { return };
        let internal = self.internal_tx.clone();
        let number = session.number;
        let limit = self.config.timeout;
        tokio::spawn(async move {
            let token = match tokio::time::timeout(limit, token_fn()).await {
                Ok(token) => token,
                Err(_) => Err(TokenError::Unavailable(format!("token callback took longer than {limit:?}"))),
            };
            let _ = internal.send(Internal::ConnectionToken { session: number, token });
        });
    }

    fn fetch_subscription_token(&mut self, session: &Session, channel: &str, refresh: bool) {
        let Some(entry) = self.subs.get_mut(channel) else { return };
        let Some(token_fn) = entry.options.token_fn.clone() else { return };
        if !refresh {
            entry.phase = Phase::Token;
        }
        let (internal, number, id, limit) = (self.internal_tx.clone(), session.number, entry.id, self.config.timeout);
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let token = match tokio::time::timeout(limit, token_fn(channel.clone())).await {
                Ok(token) => token,
                Err(_) => Err(TokenError::Unavailable(format!("token callback took longer than {limit:?}"))),
            };
            let _ = internal.send(Internal::SubscriptionToken { session: number, channel, id, refresh, token });
        });
    }

    fn internal(&mut self, session: &mut Session, internal: Internal) -> Option<End> {
        match internal {
            Internal::ConnectionToken { session: number, token } => {
                if number != session.number {
                    return None;
                }
                match token {
                    Ok(token) => {
                        self.token = Some(token.clone());
                        let id = self.next_id();
                        session.pending.insert(id, Pending::Refresh);
                        session.push(&Command { id, refresh: Some(RefreshRequest { token }), ..Default::default() });
                    }
                    Err(TokenError::Unauthorized(reason)) => {
                        return Some(End::Terminal { code: codes::UNAUTHORIZED, reason });
                    }
                    Err(TokenError::Unavailable(reason)) => {
                        tracing::warn!(%reason, "connection token refresh failed; retrying");
                        self.retry_refresh(session);
                    }
                }
            }
            Internal::SubscriptionToken { session: number, channel, id, refresh, token } => {
                if number != session.number || self.subs.get(&channel).is_none_or(|e| e.id != id) {
                    return None;
                }
                match token {
                    Ok(token) => {
                        let entry = self.subs.get_mut(&channel)?;
                        entry.token = Some(token.clone());
                        if refresh {
                            let request_id = self.next_id();
                            session.pending.insert(request_id, Pending::SubRefresh { channel: channel.clone(), id });
                            let request = SubRefreshRequest { channel, token };
                            session.push(&Command { id: request_id, sub_refresh: Some(request), ..Default::default() });
                        } else {
                            entry.token_expires = None;
                            self.start_subscribe(session, &channel);
                        }
                    }
                    Err(TokenError::Unauthorized(reason)) => {
                        let error = Error::Token(TokenError::Unauthorized(reason.clone()));
                        self.end_subscription(&channel, codes::UNAUTHORIZED.into(), reason, error);
                    }
                    Err(error) => {
                        let entry = self.subs.get_mut(&channel)?;
                        let error = Error::Token(error);
                        if let Some(ready) = entry.ready.take() {
                            let _ = ready.send(Err(error));
                            self.subs.remove(&channel);
                            return None;
                        }
                        emit(entry, SubscriptionEvent::Error(error));
                        entry.retries += 1;
                        let delay =
                            backoff(entry.retries, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
                        if refresh {
                            entry.refresh_at = Some(Instant::now() + delay);
                        } else {
                            entry.phase = Phase::Idle;
                            entry.retry_at = Some(Instant::now() + delay);
                        }
                    }
                }
            }
        }
        None
    }

    fn retry_refresh(&mut self, session: &mut Session) {
        session.refresh_failures += 1;
        let delay = backoff(session.refresh_failures, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
        session.refresh_at = Some(Instant::now() + delay);
    }

    /// Ends a subscription for good: the first subscribe's caller gets `error`, a running
    /// subscription's stream gets `Unsubscribed` and ends.
    fn end_subscription(&mut self, channel: &str, code: u32, reason: String, error: Error) {
        let Some(mut entry) = self.subs.remove(channel) else { return };
        match entry.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
            }
            None => {
                let event = SubscriptionEvent::Unsubscribed { code, reason };
                if let Err(mpsc::error::TrySendError::Full(event)) = entry.events.try_send(event) {
                    // The last event must not be lost to a full buffer: it goes once there is room.
                    tokio::spawn(async move {
                        let _ = entry.events.send(event).await;
                    });
                }
            }
        }
    }

    fn session_request(&mut self, session: &mut Session, request: Request) -> Option<End> {
        match request {
            Request::Call { command, reply } => {
                if session.connected {
                    self.send_call(session, command, reply);
                } else {
                    self.queued.push((command, reply));
                }
            }
            Request::AutoAck { channel, offset } => {
                if session.connected {
                    self.send_ack(session, channel, offset);
                } else {
                    self.keep_ack(channel, offset);
                }
            }
            Request::Subscribe { id, channel, options, events, counters, ready } => {
                if self.register(id, channel.clone(), *options, events, counters, ready) && session.connected {
                    self.start_subscribe(session, &channel);
                }
            }
            Request::Unsubscribe { id, done } => {
                let Some(channel) = self.subs.iter().find(|(_, e)| e.id == id).map(|(c, _)| c.clone()) else {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                    return None;
                };
                let entry = self.subs.remove(&channel)?;
                if session.connected && matches!(entry.phase, Phase::Subscribing | Phase::Subscribed) {
                    let request_id = self.next_id();
                    session.pending.insert(request_id, Pending::Unsubscribe(done));
                    let request = UnsubscribeRequest { channel };
                    session.push(&Command { id: request_id, unsubscribe: Some(request), ..Default::default() });
                } else if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Request::Connect => {}
            Request::Disconnect => return Some(End::Stopped),
        }
        None
    }

    fn send_call(&mut self, session: &mut Session, mut command: Box<Command>, reply: ReplyTo) {
        if reply.is_closed() {
            // The caller gave up (timeout); a late publish would surprise it.
            return;
        }
        command.id = self.next_id();
        session.pending.insert(command.id, Pending::Call(reply));
        session.push(&command);
    }

    fn send_ack(&mut self, session: &mut Session, channel: String, offset: u64) {
        let data = serde_json::json!({ "channel": channel, "offset": offset });
        let Ok(data) = serde_json::value::to_raw_value(&data) else { return };
        let id = self.next_id();
        session.pending.insert(id, Pending::AutoAck { channel, offset });
        let rpc = RpcRequest { method: ACK_METHOD.into(), data: Some(RawJson::from(data)) };
        session.push(&Command { id, rpc: Some(rpc), ..Default::default() });
    }

    fn start_subscribe(&mut self, session: &mut Session, channel: &str) {
        let now = Instant::now();
        let Some(entry) = self.subs.get_mut(channel) else { return };
        entry.retry_at = None;
        // Subscribe only with room for the reply: its event and a good part of what it recovers.
        if entry.events.capacity() * 2 < entry.events.max_capacity() {
            entry.phase = Phase::Idle;
            entry.retry_at = Some(now + DRAIN_POLL);
            return;
        }
        entry.overflowed = false;
        let token_stale = entry.token.is_none() || entry.token_expires.is_some_and(|at| at <= now);
        if entry.options.token_fn.is_some() && token_stale {
            self.fetch_subscription_token(session, channel, false);
            return;
        }
        let recover = !entry.position.epoch.is_empty();
        let request = SubscribeRequest {
            channel: channel.to_owned(),
            token: entry.token.clone().unwrap_or_default(),
            recover,
            epoch: if recover { entry.position.epoch.clone() } else { String::new() },
            offset: if recover { entry.position.offset } else { 0 },
            data: entry.data.clone(),
            recoverable: entry.options.recoverable,
            join_leave: entry.options.join_leave,
            tf: entry.options.tag_filter.clone(),
            ..Default::default()
        };
        entry.phase = Phase::Subscribing;
        entry.recovering = recover;
        let id = self.next_id();
        session.pending.insert(id, Pending::Subscribe { channel: channel.to_owned(), id: self.subs[channel].id });
        session.push(&Command { id, subscribe: Some(request), ..Default::default() });
    }

    fn closed_by_server(&mut self, code: u16, reason: String) -> End {
        if Disconnect::custom(code, reason.clone()).is_terminal() {
            return End::Terminal { code, reason };
        }
        if code == Disconnect::EXPIRED.code {
            self.token_stale = true;
        }
        End::Retry(format!("the server closed the connection: {code} {reason}"))
    }

    /// One text frame: `\n`-separated replies and pushes.
    fn frame(&mut self, session: &mut Session, text: &str) -> Option<End> {
        for line in text.split('\n').filter(|line| !line.trim().is_empty()) {
            let reply: Reply = match serde_json::from_str(line) {
                Ok(reply) => reply,
                // A line we cannot read may be a publication: reconnect and recover rather than
                // lose it silently.
                Err(error) => return Some(End::Retry(format!("undecodable frame from the server ({error}): {line}"))),
            };
            if reply.is_ping() {
                if session.pong {
                    session.push(&Command::default());
                }
                continue;
            }
            if let Some(push) = reply.push {
                if let Some(end) = self.push(session, push) {
                    return Some(end);
                }
                continue;
            }
            let Some(pending) = session.pending.remove(&reply.id) else {
                tracing::debug!(id = reply.id, "reply to no pending command");
                continue;
            };
            if let Some(end) = self.reply(session, pending, reply) {
                return Some(end);
            }
        }
        None
    }

    fn reply(&mut self, session: &mut Session, pending: Pending, reply: Reply) -> Option<End> {
        match pending {
            Pending::Connect => return self.connected(session, reply),
            Pending::Call(sender) => {
                let _ = sender.send(Ok(reply));
            }
            Pending::AutoAck { channel, offset } => {
                if let Some(error) = reply.error {
                    tracing::warn!(%channel, offset, %error, "automatic acknowledgement refused");
                }
            }
            Pending::Subscribe { channel, id } => self.subscribed(session, &channel, id, reply),
            Pending::Unsubscribe(done) => {
                if let Some(done) = done {
                    let _ = done.send(reply.error.map_or(Ok(()), |e| Err(Error::Server(e))));
                }
            }
            Pending::Refresh => match (reply.error, reply.refresh) {
                (None, Some(result)) => {
                    session.refresh_failures = 0;
                    self.token_expires = result.expires.then(|| Instant::now() + token_lifetime(result.ttl));
                    session.refresh_at = result.expires.then(|| Instant::now() + refresh_delay(result.ttl));
                }
                (Some(error), _) if error.temporary => self.retry_refresh(session),
                (error, _) => {
                    // The server disconnects for a bad token; until then keep the connection.
                    tracing::warn!(?error, "connection token refresh refused");
                }
            },
            Pending::SubRefresh { channel, id } => {
                let entry = self.subs.get_mut(&channel).filter(|e| e.id == id)?;
                match (reply.error, reply.sub_refresh) {
                    (None, Some(result)) => {
                        entry.retries = 0;
                        entry.token_expires = result.expires.then(|| Instant::now() + token_lifetime(result.ttl));
                        entry.refresh_at = result.expires.then(|| Instant::now() + refresh_delay(result.ttl));
                    }
                    (Some(error), _) if error.temporary => {
                        entry.retries += 1;
                        let delay =
                            backoff(entry.retries, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
                        entry.refresh_at = Some(Instant::now() + delay);
                    }
                    (error, _) => tracing::warn!(%channel, ?error, "subscription token refresh refused"),
                }
            }
        }
        None
    }

    fn connected(&mut self, session: &mut Session, reply: Reply) -> Option<End> {
        if let Some(error) = reply.error {
            if error.code == herald_core::ProtocolError::token_expired().code {
                if self.config.token_fn.is_some() {
                    self.token_stale = true;
                    return Some(End::Retry("connection token expired".into()));
                }
                return Some(End::Terminal {
                    code: codes::UNAUTHORIZED,
                    reason: "connection token expired and no token callback to renew it".into(),
                });
            }
            if error.temporary || error.code == herald_core::ProtocolError::internal().code {
                return Some(End::Retry(format!("connect refused: {error}")));
            }
            return Some(End::Terminal { code: codes::CONNECT_REFUSED, reason: format!("connect refused: {error}") });
        }
        let Some(result) = reply.connect else {
            return Some(End::Retry("connect reply without a result".into()));
        };
        let now = Instant::now();
        session.connected = true;
        session.pong = result.pong;
        session.ping_interval = (result.ping > 0).then(|| Duration::from_secs(result.ping.into()));
        self.attempt = 0;
        self.last_error = None;
        self.token_expires = result.expires.then(|| now + token_lifetime(result.ttl));
        if result.expires && self.config.token_fn.is_some() {
            session.refresh_at = Some(now + refresh_delay(result.ttl));
        }
        self.set_state(ConnectionState::Connected { client: result.client.clone() });
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.start_subscribe(session, &channel);
        }
        for (command, reply) in std::mem::take(&mut self.queued) {
            self.send_call(session, command, reply);
        }
        for (channel, offset) in std::mem::take(&mut self.acks) {
            self.send_ack(session, channel, offset);
        }
        None
    }

    fn subscribed(&mut self, session: &mut Session, channel: &str, id: u64, reply: Reply) {
        let Some(entry) = self.subs.get_mut(channel).filter(|e| e.id == id) else { return };
        let result = match (reply.error, reply.subscribe) {
            (None, Some(result)) => result,
            (error, _) => {
                let error = error.unwrap_or_else(|| {
                    herald_core::ProtocolError::internal().with_message("subscribe reply without a result")
                });
                entry.phase = Phase::Idle;
                if error.code == herald_core::ProtocolError::token_expired().code && entry.options.token_fn.is_some() {
                    entry.token = None;
                    entry.retries += 1;
                    if entry.retries == 1 {
                        self.start_subscribe(session, channel);
                    } else {
                        // The callback keeps giving expired tokens: do not spin on it.
                        let delay =
                            backoff(entry.retries, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
                        entry.retry_at = Some(Instant::now() + delay);
                    }
                    return;
                }
                if entry.ready.is_some() || !(error.temporary || error.code == 100) {
                    let (code, reason) = (error.code, error.message.clone());
                    self.end_subscription(channel, code, reason, Error::Server(error));
                    return;
                }
                emit(entry, SubscriptionEvent::Error(Error::Server(error)));
                entry.retries += 1;
                let delay = backoff(entry.retries, self.config.min_reconnect_delay, self.config.max_reconnect_delay);
                entry.retry_at = Some(Instant::now() + delay);
                return;
            }
        };
        entry.phase = Phase::Subscribed;
        entry.retries = 0;
        if result.expires && entry.options.token_fn.is_some() {
            let now = Instant::now();
            entry.token_expires = Some(now + token_lifetime(result.ttl));
            entry.refresh_at = Some(now + refresh_delay(result.ttl));
        }
        let info = Subscribed {
            epoch: result.epoch.clone(),
            offset: result.offset,
            recoverable: result.recoverable,
            was_recovering: entry.recovering || result.was_recovering,
            recovered: result.recovered,
            publications: result.publications.len(),
            expires: result.expires,
            ttl: result.ttl,
        };
        if entry.position.epoch != result.epoch {
            // Another stream: its offsets say nothing about ours.
            entry.position = Since { offset: 0, epoch: result.epoch.clone() };
        }
        if let Some(ready) = entry.ready.take() {
            let _ = ready.send(Ok(info.clone()));
        }
        let event = if info.was_recovering && !info.recovered {
            SubscriptionEvent::RecoveryFailed(info)
        } else {
            SubscriptionEvent::Subscribed(info)
        };
        emit(entry, event);
        for publication in result.publications {
            deliver(entry, Arc::unwrap_or_clone(publication));
        }
        if !entry.overflowed {
            entry.position.offset = entry.position.offset.max(result.offset);
        }
        self.after_delivery(session, channel);
    }

    /// Unsubscribes what nobody reads any more, and pauses what the application cannot keep up
    /// with.
    fn after_delivery(&mut self, session: &mut Session, channel: &str) {
        let Some(entry) = self.subs.get_mut(channel) else { return };
        if entry.events.is_closed() {
            self.drop_abandoned(session, channel);
        } else if entry.overflowed && matches!(entry.phase, Phase::Subscribing | Phase::Subscribed) {
            tracing::warn!(%channel, offset = entry.position.offset, "the application is not reading this subscription; pausing it until it catches up");
            entry.phase = Phase::Idle;
            entry.retry_at = Some(Instant::now() + DRAIN_POLL);
            // Subscribing again fetches a fresh token if needed; nothing to refresh meanwhile.
            entry.refresh_at = None;
            let id = self.next_id();
            session.pending.insert(id, Pending::Unsubscribe(None));
            let request = UnsubscribeRequest { channel: channel.to_owned() };
            session.push(&Command { id, unsubscribe: Some(request), ..Default::default() });
        }
    }

    /// Nobody reads this subscription any more (the handle is gone without unsubscribing, or the
    /// subscribe future was dropped): unsubscribe.
    fn drop_abandoned(&mut self, session: &mut Session, channel: &str) {
        if self.subs.remove(channel).is_some() && session.connected {
            let id = self.next_id();
            session.pending.insert(id, Pending::Unsubscribe(None));
            let request = UnsubscribeRequest { channel: channel.to_owned() };
            session.push(&Command { id, unsubscribe: Some(request), ..Default::default() });
        }
    }

    fn push(&mut self, session: &mut Session, push: Push) -> Option<End> {
        let channel = push.channel;
        if let Some(disconnect) = push.disconnect {
            return Some(self.closed_by_server(disconnect.code, disconnect.reason));
        }
        if let Some(message) = push.message {
            match message.gap() {
                Some(gap) => self.gap(session, gap),
                None => tracing::debug!("message push from the server; not surfaced"),
            }
            return None;
        }
        let Some(entry) = self.subs.get_mut(&channel) else {
            tracing::debug!(%channel, "push for a channel without a client-side subscription");
            return None;
        };
        if let Some(publication) = push.publication {
            if entry.phase == Phase::Subscribed {
                deliver(entry, publication);
                self.after_delivery(session, &channel);
            }
        } else if let Some(join) = push.join {
            if entry.options.join_leave {
                emit(entry, SubscriptionEvent::Join(join.info));
            }
        } else if let Some(leave) = push.leave {
            if entry.options.join_leave {
                emit(entry, SubscriptionEvent::Leave(leave.info));
            }
        } else if let Some(unsubscribe) = push.unsubscribe {
            if unsubscribe.resubscribe() {
                entry.phase = Phase::Idle;
                self.start_subscribe(session, &channel);
            } else {
                let error =
                    Error::Server(herald_core::ProtocolError::new(unsubscribe.code, unsubscribe.reason.clone()));
                self.end_subscription(&channel, unsubscribe.code, unsubscribe.reason, error);
            }
        }
        None
    }
}

impl Actor {
    /// Shed publications: told to the application in order with the publications around them.
    fn gap(&mut self, session: &mut Session, gap: GapSignal) {
        let Some(entry) = self.subs.get_mut(&gap.channel) else { return };
        // A paused subscription recovers from its last delivered offset, which is before the shed
        // ones: history fills the gap by itself.
        if entry.overflowed || entry.phase != Phase::Subscribed {
            return;
        }
        let event = SubscriptionEvent::Gap { offsets: gap.offsets, unnumbered: gap.unnumbered };
        if !emit(entry, event) {
            entry.overflowed = true;
            entry.counters.overflows.fetch_add(1, Ordering::Relaxed);
            self.after_delivery(session, &gap.channel);
        }
    }
}

/// Queues an event for the application; false when its buffer is full. Informational events
/// (join, leave, errors) are dropped then.
fn emit(entry: &Entry, event: SubscriptionEvent) -> bool {
    !matches!(entry.events.try_send(event), Err(mpsc::error::TrySendError::Full(_)))
}

/// Hands a publication to the application unless its offset was delivered already. When the
/// buffer is full the subscription is marked overflowed: the position stays at the last
/// publication delivered, so recovery later picks up exactly there.
fn deliver(entry: &mut Entry, publication: Publication) {
    if entry.overflowed {
        return;
    }
    let offset = publication.offset;
    if offset > 0 && offset <= entry.position.offset {
        entry.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if emit(entry, SubscriptionEvent::Publication(publication)) {
        if offset > 0 {
            entry.position.offset = offset;
        }
    } else {
        entry.overflowed = true;
        entry.counters.overflows.fetch_add(1, Ordering::Relaxed);
    }
}

async fn flush(sink: &mut SplitSink<Socket, Message>, outbox: &mut Vec<String>) -> Result<(), String> {
    if outbox.is_empty() {
        return Ok(());
    }
    let frame = outbox.join("\n");
    outbox.clear();
    sink.send(Message::Text(frame.into())).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_can_expire() {
        assert_eq!(refresh_delay(3600), Duration::from_secs(3599 - 30));
        assert_eq!(refresh_delay(4), Duration::from_millis(2250));
        // A lifetime the rounding may already have taken: soon, but not in a tight loop.
        assert_eq!(refresh_delay(1), Duration::from_millis(100));
        assert_eq!(refresh_delay(0), Duration::from_millis(100));
        for ttl in 2..10_000 {
            assert!(refresh_delay(ttl) < token_lifetime(ttl), "{ttl}");
        }
    }
}
