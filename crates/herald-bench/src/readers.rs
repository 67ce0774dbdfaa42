//! Reader threads: once subscribed, a subscriber's socket is handed to one of a few threads that
//! wait on all their sockets with one `epoll` (mio) and read each ready socket into a buffer the
//! thread shares. Per delivery that leaves the read and the parse: no task wake, no waker
//! registration, no allocation. A task per subscriber (tokio and tokio-tungstenite) cost the
//! load generator about as much CPU per delivery as the server spent, on the same two cores.

use crate::fanout::Shared;
use crate::subscribe::{Local, Protocol};
use crate::wire::{self, FrameReader, Message, Read};
use anyhow::{anyhow, Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A subscribed connection, ready to be read.
pub struct Subscribed {
    pub stream: std::net::TcpStream,
    pub frames: FrameReader,
    pub protocol: Protocol,
    pub local: Local,
}

/// The token of each thread's waker; connections are numbered from 0.
const WAKE: Token = Token(usize::MAX);
/// Bytes read from a socket at once.
const READ_BUFFER: usize = 64 * 1024;
/// How long subscribers that stopped reading are read at the end, to learn whether the server
/// closed them meanwhile (a close behind megabytes of buffered data can go unseen).
const SLOW_DRAIN: Duration = Duration::from_secs(3);

struct Thread {
    handoff: mpsc::Sender<Subscribed>,
    waker: Arc<Waker>,
}

pub struct Readers {
    threads: Vec<Thread>,
    /// Taken by [`Readers::finish`].
    joins: Mutex<Vec<JoinHandle<Vec<Local>>>>,
    stop: Arc<AtomicBool>,
}

impl Readers {
    /// Starts `count` reader threads; they read until [`Readers::finish`] or `deadline`.
    pub fn start(count: usize, shared: Arc<Shared>, deadline: Instant) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut threads, mut joins) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for number in 0..count.max(1) {
            let poll = Poll::new().context("creating an epoll instance")?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).context("creating a poll waker")?);
            let (handoff, arrivals) = mpsc::channel();
            let (shared, stop) = (shared.clone(), stop.clone());
            let join = std::thread::Builder::new()
                .name(format!("reader-{number}"))
                .spawn(move || ReaderThread::new(poll, arrivals, shared, stop, deadline).run())
                .context("starting a reader thread")?;
            threads.push(Thread { handoff, waker });
            joins.push(join);
        }
        Ok(Self { threads, joins: Mutex::new(joins), stop })
    }

    /// Gives subscriber `index`'s connection to its reader thread.
    pub fn hand_over(&self, index: usize, subscribed: Subscribed) -> Result<()> {
        let thread = &self.threads[index % self.threads.len()];
        thread.handoff.send(subscribed).map_err(|_| anyhow!("reader thread ended"))?;
        thread.waker.wake().context("waking a reader thread")
    }

    /// Stops reading and returns every handed-over subscriber's counts (blocking: the threads
    /// close their sockets and read the stalled ones for up to 3 s).
    pub fn finish(&self) -> Vec<Local> {
        self.stop.store(true, Ordering::Release);
        for thread in &self.threads {
            let _ = thread.waker.wake();
        }
        let mut locals = Vec::new();
        let joins = std::mem::take(&mut *self.joins.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for join in joins {
            match join.join() {
                Ok(mut more) => locals.append(&mut more),
                Err(_) => eprintln!("herald-bench: a reader thread panicked; its subscribers are not counted"),
            }
        }
        locals
    }
}

struct Reading {
    stream: TcpStream,
    frames: FrameReader,
    protocol: Protocol,
    local: Local,
    /// Read no more: failed, closed, or a subscriber that stopped reading.
    idle: bool,
}

struct ReaderThread {
    poll: Poll,
    arrivals: mpsc::Receiver<Subscribed>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    connections: Vec<Reading>,
    buf: Vec<u8>,
    replies: Vec<Vec<u8>>,
}

impl ReaderThread {
    fn new(
        poll: Poll,
        arrivals: mpsc::Receiver<Subscribed>,
        shared: Arc<Shared>,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    ) -> Self {
        Self {
            poll,
            arrivals,
            shared,
            stop,
            deadline,
            connections: Vec::new(),
            buf: vec![0; READ_BUFFER],
            replies: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Local> {
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            if let Err(error) = self.poll.poll(&mut events, Some((self.deadline - now).min(Duration::from_millis(200))))
            {
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("herald-bench: reader poll failed: {error}");
                break;
            }
            for event in &events {
                match event.token() {
                    WAKE => self.accept_arrivals(),
                    Token(index) => self.read(index),
                }
            }
        }
        self.accept_arrivals();
        self.drain_stalled();
        for connection in &mut self.connections {
            // Best effort: the process is about to drop the socket anyway.
            let _ = connection.stream.write(&wire::close_frame());
        }
        self.connections.into_iter().map(|c| c.local).collect()
    }

    fn accept_arrivals(&mut self) {
        while let Ok(subscribed) = self.arrivals.try_recv() {
            let index = self.connections.len();
            let idle = subscribed.local.slow;
            let mut reading = Reading {
                stream: TcpStream::from_std(subscribed.stream),
                frames: subscribed.frames,
                protocol: subscribed.protocol,
                local: subscribed.local,
                idle,
            };
            if !reading.idle {
                // Registering an already readable socket reports it at once.
                if let Err(error) = self.poll.registry().register(&mut reading.stream, Token(index), Interest::READABLE)
                {
                    reading.local.error = Some(format!("registering with the reader: {error}"));
                    reading.idle = true;
                }
            }
            self.connections.push(reading);
        }
    }

    /// Reads connection `index` until its socket is drained (epoll is edge-triggered).
    fn read(&mut self, index: usize) {
        let Some(connection) = self.connections.get_mut(index) else { return };
        if connection.idle {
            return;
        }
        let outcome = read_available(connection, &mut self.buf, &mut self.replies);
        connection.local.report_progress(&self.shared);
        if let Err(error) = outcome {
            connection.local.error = Some(format!("{error:#}"));
            connection.idle = true;
            let _ = self.poll.registry().deregister(&mut connection.stream);
        }
    }

    /// Reads the subscribers that stopped reading once the run is over, for at most 3 s, to see
    /// whether the server closed them.
    fn drain_stalled(&mut self) {
        let mut waiting = 0;
        for (index, connection) in self.connections.iter_mut().enumerate() {
            if connection.local.slow {
                let token = Token(index);
                if self.poll.registry().register(&mut connection.stream, token, Interest::READABLE).is_ok() {
                    waiting += 1;
                }
            }
        }
        let until = Instant::now() + SLOW_DRAIN;
        let mut events = Events::with_capacity(1024);
        while waiting > 0 {
            let now = Instant::now();
            if now >= until || self.poll.poll(&mut events, Some(until - now)).is_err() {
                break;
            }
            for event in &events {
                let Some(connection) = self.connections.get_mut(event.token().0) else { continue };
                if !connection.local.slow || connection.local.slow_disconnected {
                    continue;
                }
                if drain_closed(connection, &mut self.buf) {
                    connection.local.slow_disconnected = true;
                    waiting -= 1;
                }
            }
        }
    }
}

/// A read shorter than the buffer took everything the socket held, and data arriving later
/// raises a new edge, so reading stops there: one more read per wake only to hear "would
/// block" was a system call per delivery at 100 publications/s.
fn read_available(connection: &mut Reading, buf: &mut [u8], replies: &mut Vec<Vec<u8>>) -> Result<()> {
    loop {
        match wire::read_some(&mut connection.stream, buf).context("reading")? {
            Read::WouldBlock => break,
            Read::Closed => anyhow::bail!("connection closed by the server"),
            Read::Data(n) => {
                let Reading { frames, protocol, local, .. } = connection;
                local.arrived();
                frames.feed(&buf[..n], |message| protocol.on_message(message, local, replies))?;
                for reply in replies.drain(..) {
                    send_blocking(&mut connection.stream, &reply)?;
                }
                if n < buf.len() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Writes a small reply (a pong) on the non-blocking socket, waiting for room if it must.
fn send_blocking(stream: &mut TcpStream, mut frame: &[u8]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(1);
    while !frame.is_empty() {
        match stream.write(frame) {
            Ok(n) => frame = &frame[n..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::yield_now();
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error).context("sending a reply"),
        }
    }
    Ok(())
}

/// Reads a stalled subscriber's socket as far as it goes now; true when the server closed it
/// (close frame, end of stream or error).
fn drain_closed(connection: &mut Reading, buf: &mut [u8]) -> bool {
    loop {
        match wire::read_some(&mut connection.stream, buf) {
            Ok(Read::WouldBlock) => return false,
            Ok(Read::Closed) | Err(_) => return true,
            Ok(Read::Data(n)) => {
                let mut closed = false;
                let parsed = connection.frames.feed(&buf[..n], |message| {
                    closed |= matches!(message, Message::Close(_));
                    Ok(())
                });
                if closed || parsed.is_err() {
                    return true;
                }
            }
        }
    }
}
