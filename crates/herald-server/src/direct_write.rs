//! Writing publication frames straight to idle connections' sockets from the fan-out.
//!
//! At a steady rate (1,000 subscribers x 100 publications/s) every delivery is its own write, and
//! handing each one to the connection's task (wake it, schedule it, poll it, take its queue, then
//! write) cost about a fifth of the server's CPU besides the write itself. When nothing else is
//! queued for a connection and its task is not writing, the fan-out writes the frame itself with
//! a non-blocking `sendmsg`; only what the socket does not take is left to the task. Both write
//! under the queue's lock, so frames never interleave, and the task takes the socket away under
//! the same lock before it closes it.
//!
//! The writes of one fan-out are shared out in chunks over one task per runtime worker (and the
//! fanning thread itself when it is not a worker, such as the store's writer), so one preempted
//! thread does not hold back the rest of the channel.

use crate::outbound::ClientHandle;
use crate::ws_writer::{frame_header, joined, joined_len};
use herald_core::wire::WireFormat;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections written per turn of a writer.
const CHUNK: usize = 32;

/// How far a direct write got.
pub enum Sent {
    /// The whole frame is in the socket.
    All,
    /// The socket took part of the frame: these bytes remain, for the connection's task.
    Part(Vec<u8>),
    /// The socket took nothing.
    Nothing,
}

/// Connections whose frames a fan-out queued for a direct write.
pub struct Writes {
    clients: Vec<Arc<ClientHandle>>,
    next: AtomicUsize,
}

impl Writes {
    /// Writes to every connection, with help from the runtime's workers when there are many.
    pub fn run(clients: Vec<Arc<ClientHandle>>, runtime: Option<&tokio::runtime::Handle>) {
        if clients.is_empty() {
            return;
        }
        let writes = Arc::new(Writes { clients, next: AtomicUsize::new(0) });
        let current = tokio::runtime::Handle::try_current().ok();
        let Some(runtime) = runtime.or(current.as_ref()) else {
            writes.write_chunks();
            return;
        };
        let chunks = writes.clients.len().div_ceil(CHUNK);
        // A task on a worker (an API call, a session flushing its publishes) hands all of it to
        // one writer per worker and goes on: writing a large channel itself would hold its
        // worker, and what else waits there, for milliseconds. A thread of its own (the store's
        // writer) writes along with them.
        let on_worker = current.is_some();
        let helpers = runtime.metrics().num_workers().min(if on_worker { chunks } else { chunks - 1 });
        for _ in 0..helpers {
            let writes = writes.clone();
            runtime.spawn(async move { writes.write_chunks() });
        }
        if !on_worker || helpers == 0 {
            writes.write_chunks();
        }
    }

    fn write_chunks(&self) {
        loop {
            let start = self.next.fetch_add(CHUNK, Ordering::Relaxed);
            let Some(chunk) = self.clients.get(start..(start + CHUNK).min(self.clients.len())) else { return };
            if chunk.is_empty() {
                return;
            }
            for client in chunk {
                client.write_now();
            }
        }
    }
}

/// Sends `frames`, packed in `format`, as one WebSocket frame on `fd` without blocking.
pub fn send<'a>(fd: RawFd, format: WireFormat, frames: impl Iterator<Item = &'a [u8]> + Clone) -> io::Result<Sent> {
    let payload_len = joined_len(format, frames.clone());
    let (header, header_len) = frame_header(format, payload_len)?;
    let total = header_len + payload_len;
    // One frame goes out from its shared bytes; several are copied together (see `ws_writer`).
    let mut several = frames.clone();
    let joined_frames;
    let (first, second): (&[u8], &[u8]) = match (several.next(), several.next()) {
        (Some(frame), None) => (&header[..header_len], frame),
        _ => {
            joined_frames = joined(format, &header[..header_len], frames, total);
            (&joined_frames, &[])
        }
    };
    let mut slices = [
        libc::iovec { iov_base: first.as_ptr() as *mut libc::c_void, iov_len: first.len() },
        libc::iovec { iov_base: second.as_ptr() as *mut libc::c_void, iov_len: second.len() },
    ];
    // SAFETY: msghdr is plain data; the zeroed fields are "no address, no control data".
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = slices.as_mut_ptr();
    message.msg_iovlen = if second.is_empty() { 1 } else { 2 };
    let sent = loop {
        // SAFETY: the iovecs point into `first` and `second`, which outlive the call; the caller
        // holds the connection's queue lock, under which its task keeps `fd` open.
        let sent = unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            break sent as usize;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(Sent::Nothing),
            _ => return Err(error),
        }
    };
    if sent >= total {
        return Ok(Sent::All);
    }
    if sent == 0 {
        return Ok(Sent::Nothing);
    }
    let mut rest = Vec::with_capacity(total - sent);
    let mut skip = sent;
    for part in [first, second] {
        if skip >= part.len() {
            skip -= part.len();
        } else {
            rest.extend_from_slice(&part[skip..]);
            skip = 0;
        }
    }
    Ok(Sent::Part(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{PublicationFrame, Queued, PACK_LIMIT};
    use bytes::Bytes;
    use herald_core::protocol::Priority;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Reads one unmasked server text frame (7-bit, 16-bit or 64-bit length) from `bytes`.
    fn text_payload(bytes: &[u8]) -> &[u8] {
        assert_eq!(bytes[0], 0x81, "a final text frame");
        let (len, start) = match bytes[1] {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            len => (len as usize, 2),
        };
        assert_eq!(bytes.len(), start + len, "exactly one frame");
        &bytes[start..]
    }

    fn read_available(stream: &mut UnixStream) -> Vec<u8> {
        stream.set_nonblocking(true).unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("read: {error}"),
            }
        }
        bytes
    }

    #[test]
    fn frames_go_out_as_one_text_frame_joined_by_newlines() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        assert!(matches!(
            send(ours.as_raw_fd(), WireFormat::Json, [&b"{\"a\":1}"[..]].into_iter()).unwrap(),
            Sent::All
        ));
        assert_eq!(text_payload(&read_available(&mut peer)), b"{\"a\":1}");
        let long = vec![b'x'; 300];
        assert!(matches!(
            send(ours.as_raw_fd(), WireFormat::Json, [&b"{}"[..], &long].into_iter()).unwrap(),
            Sent::All
        ));
        let received = read_available(&mut peer);
        let payload = text_payload(&received);
        assert_eq!(&payload[..3], b"{}\n");
        assert_eq!(&payload[3..], &long[..]);
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_handed_back_in_order() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let payload: Vec<u8> = (0..4_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let Sent::Part(rest) = send(ours.as_raw_fd(), WireFormat::Json, [&payload[..]].into_iter()).unwrap() else {
            panic!("4 MB fit in a socket buffer: the test needs a larger frame");
        };
        // Full now: nothing more goes in.
        assert!(matches!(send(ours.as_raw_fd(), WireFormat::Json, [&b"{}"[..]].into_iter()).unwrap(), Sent::Nothing));
        let mut received = read_available(&mut peer);
        received.extend_from_slice(&rest);
        assert_eq!(text_payload(&received), &payload[..]);
    }

    fn frame(offset: u64) -> Arc<PublicationFrame> {
        Arc::new(PublicationFrame {
            bytes: Bytes::from(format!("{{\"offset\":{offset}}}")),
            channel: Arc::from("ch"),
            offsets: vec![offset],
            priority: Priority::Normal,
            conflate: None,
        })
    }

    /// Counts its wakes: stands in for the connection's task.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn what_one_direct_write_cannot_take_is_left_to_the_woken_task() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let client = Arc::new(ClientHandle::new("c1", 1 << 20));
        let task = Arc::new(CountingWaker::default());
        client.register_task(&std::task::Waker::from(task.clone()));
        client.attach_socket(ours.as_raw_fd());
        // A fan-out of one large commit: three times what one write takes, for an idle connection.
        let frame_of = |offset: u64| {
            let mut bytes = format!("{{\"offset\":{offset},\"pad\":\"").into_bytes();
            bytes.resize(1000, b'x');
            bytes.extend_from_slice(b"\"}");
            Arc::new(PublicationFrame {
                bytes: Bytes::from(bytes),
                channel: Arc::from("ch"),
                offsets: vec![offset],
                priority: Priority::Normal,
                conflate: None,
            })
        };
        let count = (3 * PACK_LIMIT / 1000) as u64;
        assert_eq!(client.offer_publication(frame_of(1)), Queued::ToWrite);
        for offset in 2..=count {
            assert_eq!(client.offer_publication(frame_of(offset)), Queued::Yes);
        }
        assert_eq!(task.0.load(Ordering::Relaxed), 0, "the fan-out writes; the task is not woken yet");
        Writes::run(vec![client.clone()], None);
        let written = read_available(&mut peer).len();
        assert!(written > 0 && written <= PACK_LIMIT + 10, "one write of at most PACK_LIMIT: {written}");
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken for the rest");
        let mut rest = 0;
        while let Some(batch) = client.try_batch() {
            rest += batch.frames.len();
        }
        let first_write = count as usize - rest;
        assert!(first_write > 0 && rest > 0, "{first_write} written directly, {rest} left");
    }

    #[test]
    fn an_idle_connection_is_written_by_the_fan_out_and_a_busy_one_by_its_task() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let client = Arc::new(ClientHandle::new("c1", 1 << 20));
        // Without the socket lent, a publication waits for the task.
        assert_eq!(client.offer_publication(frame(1)), Queued::Yes);
        let batch = client.try_batch().expect("queued for the task");
        assert_eq!(batch.frames.len(), 1);
        assert!(client.try_batch().is_none(), "the task found the queue empty and stopped writing");

        client.attach_socket(ours.as_raw_fd());
        assert_eq!(client.offer_publication(frame(2)), Queued::ToWrite);
        Writes::run(vec![client.clone()], None);
        assert_eq!(text_payload(&read_available(&mut peer)), b"{\"offset\":2}");
        assert!(client.try_batch().is_none(), "nothing left for the task");

        // While the task writes, frames queue behind what it took, whatever the fan-out does.
        assert_eq!(client.offer_publication(frame(3)), Queued::ToWrite);
        let taken = client.try_batch().expect("the task took offset 3");
        assert_eq!(taken.frames[0].as_bytes(), b"{\"offset\":3}");
        assert_eq!(client.offer_publication(frame(4)), Queued::Yes, "the task is writing: queued for it");
        client.write_now();
        assert!(read_available(&mut peer).is_empty(), "nothing written past the task's frame");
        let next = client.try_batch().expect("offset 4 waits for the task");
        assert_eq!(next.frames[0].as_bytes(), b"{\"offset\":4}");

        // Once the socket is taken back, nothing more is written to it.
        assert!(client.try_batch().is_none());
        client.detach_socket();
        assert_eq!(client.offer_publication(frame(5)), Queued::Yes);
        client.write_now();
        assert!(read_available(&mut peer).is_empty());
    }
}
