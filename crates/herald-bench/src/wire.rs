//! The subscribers' side of WebSocket, kept lean because the load generator shares the
//! machine's two cores with the server it measures: a client handshake and frame reading over a
//! plain socket, with tungstenite's frame header parser and frame writer.
//!
//! Compared with `tokio-tungstenite` per subscriber, nothing is allocated or zero-filled per
//! message: bytes are read into a buffer shared by all the connections of a reader thread, and a
//! connection keeps bytes of its own only while a frame is cut between two reads.

use crate::net::{self, SocketOptions};
use anyhow::{bail, ensure, Context, Result};
use std::io::{Cursor, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Largest message accepted from a server; a larger one ends the connection as broken.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest handshake response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A complete message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The close code (1005 when the frame carried none).
    Close(u16),
}

/// Frames received and not yet complete: what is left of the last read, and the fragments of a
/// message sent in several frames.
#[derive(Default)]
pub struct FrameReader {
    pending: Vec<u8>,
    fragments: Vec<u8>,
    fragmented: Option<Data>,
}

/// One parsed frame's place in the bytes it was parsed from.
struct Parsed {
    header: FrameHeader,
    payload: std::ops::Range<usize>,
}

impl FrameReader {
    /// Bytes the server sent after its handshake response, before any frame was read.
    pub fn with_pending(pending: Vec<u8>) -> Self {
        Self { pending, ..Self::default() }
    }

    /// Calls `on_message` for each complete message in the kept bytes followed by `data`, and
    /// keeps what is left. Stops at (and returns) the first error `on_message` returns.
    pub fn feed(&mut self, data: &[u8], mut on_message: impl FnMut(Message<'_>) -> Result<()>) -> Result<()> {
        if self.pending.is_empty() {
            let used = self.parse_all(data, &mut on_message)?;
            self.pending.extend_from_slice(&data[used..]);
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(data);
        let used = self.parse_all(&bytes, &mut on_message);
        // The kept buffer's allocation is reused for what remains.
        let used = used?;
        bytes.drain(..used);
        self.pending = bytes;
        if self.pending.is_empty() && self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Parses the complete frames at the start of `bytes`; returns how many bytes they took.
    fn parse_all(&mut self, bytes: &[u8], on_message: &mut impl FnMut(Message<'_>) -> Result<()>) -> Result<usize> {
        let mut used = 0;
        while let Some(parsed) = parse_frame(&bytes[used..])? {
            let payload = &bytes[used + parsed.payload.start..used + parsed.payload.end];
            used += parsed.payload.end;
            self.frame(parsed.header, payload, on_message)?;
        }
        ensure!(bytes.len() - used <= MAX_MESSAGE + 14, "frame longer than {MAX_MESSAGE} bytes");
        Ok(used)
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        on_message: &mut impl FnMut(Message<'_>) -> Result<()>,
    ) -> Result<()> {
        match header.opcode {
            OpCode::Control(Control::Ping) => on_message(Message::Ping(payload)),
            OpCode::Control(Control::Pong) => on_message(Message::Pong),
            OpCode::Control(Control::Close) => {
                let code = payload.get(..2).map_or(1005, |code| u16::from_be_bytes([code[0], code[1]]));
                on_message(Message::Close(code))
            }
            OpCode::Control(other) => bail!("unknown control frame {other:?}"),
            OpCode::Data(Data::Continue) => {
                let Some(kind) = self.fragmented else { bail!("continuation frame without a message") };
                ensure!(self.fragments.len() + payload.len() <= MAX_MESSAGE, "message longer than {MAX_MESSAGE} bytes");
                self.fragments.extend_from_slice(payload);
                if header.is_final {
                    self.fragmented = None;
                    let message = std::mem::take(&mut self.fragments);
                    on_message(data_message(kind, &message))?;
                }
                Ok(())
            }
            OpCode::Data(kind) => {
                ensure!(self.fragmented.is_none(), "new message inside a fragmented one");
                if header.is_final {
                    on_message(data_message(kind, payload))
                } else {
                    self.fragmented = Some(kind);
                    self.fragments.extend_from_slice(payload);
                    Ok(())
                }
            }
        }
    }
}

fn data_message(kind: Data, payload: &[u8]) -> Message<'_> {
    match kind {
        Data::Binary => Message::Binary(payload),
        _ => Message::Text(payload),
    }
}

/// The frame at the start of `bytes`, if it is all there.
fn parse_frame(bytes: &[u8]) -> Result<Option<Parsed>> {
    let mut cursor = Cursor::new(bytes);
    let Some((header, length)) = FrameHeader::parse(&mut cursor).context("bad frame header")? else {
        return Ok(None);
    };
    ensure!(header.mask.is_none(), "the server masked a frame");
    ensure!(length <= MAX_MESSAGE as u64, "frame of {length} bytes");
    let start = cursor.position() as usize;
    let end = start + length as usize;
    Ok((end <= bytes.len()).then_some(Parsed { header, payload: start..end }))
}

/// A client frame (masked, as clients must).
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader { opcode, mask: Some(rand::random()), ..FrameHeader::default() };
    let frame = Frame::from_payload(header, payload.to_vec().into());
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

pub fn text_frame(text: &str) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Text), text.as_bytes())
}

pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Binary), payload)
}

pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    client_frame(OpCode::Control(Control::Pong), payload)
}

/// The opcode and unmasked payload of a frame made by [`client_frame`] (tests).
#[cfg(test)]
pub fn parse_client_frame(frame: &[u8]) -> (OpCode, Vec<u8>) {
    let mut cursor = Cursor::new(frame);
    let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
    let mask = header.mask.expect("client frames are masked");
    let payload = &frame[cursor.position() as usize..];
    assert_eq!(payload.len() as u64, length);
    (header.opcode, payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect())
}

/// A normal-closure close frame.
pub fn close_frame() -> Vec<u8> {
    client_frame(OpCode::Control(Control::Close), &1000u16.to_be_bytes())
}

/// A connected WebSocket client during setup (handshake, subscribe, wait for the confirmation),
/// before its socket is handed to a reader thread.
pub struct Connection {
    pub stream: TcpStream,
    pub frames: FrameReader,
}

impl Connection {
    /// Connects to `url` (`ws://host:port/path`) and completes the client handshake.
    pub async fn open(url: &str, options: SocketOptions) -> Result<Self> {
        let rest = url.strip_prefix("ws://").with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let mut stream = net::tcp_connect(authority, options).await?;
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.context("sending the WebSocket handshake")?;
        let mut head = Vec::with_capacity(512);
        let end = loop {
            if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
                break end + 4;
            }
            ensure!(head.len() < MAX_RESPONSE_HEAD, "handshake response longer than {MAX_RESPONSE_HEAD} bytes");
            if stream.read_buf(&mut head).await.context("reading the handshake response")? == 0 {
                bail!("connection closed during the WebSocket handshake");
            }
        };
        check_response(&head[..end], &derive_accept_key(key.as_bytes()))
            .with_context(|| format!("handshake with {url}"))?;
        Ok(Self { stream, frames: FrameReader::with_pending(head[end..].to_vec()) })
    }

    pub async fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.stream.write_all(frame).await.context("sending a frame")
    }

    /// Reads once (waiting for data) and hands every message completed by it to `on_message`.
    /// Errors when the server closed the connection.
    pub async fn read(&mut self, buf: &mut Vec<u8>, on_message: impl FnMut(Message<'_>) -> Result<()>) -> Result<()> {
        buf.clear();
        if self.stream.read_buf(buf).await.context("reading")? == 0 {
            bail!("connection closed by the server");
        }
        self.frames.feed(buf, on_message)
    }
}

/// A `101 Switching Protocols` response with the expected accept key.
fn check_response(head: &[u8], accept: &str) -> Result<()> {
    let text = std::str::from_utf8(head).context("handshake response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    ensure!(status.split(' ').nth(1) == Some("101"), "server answered {status:?}, not 101");
    let accepted = lines
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept);
    ensure!(accepted, "missing or wrong Sec-WebSocket-Accept");
    Ok(())
}

/// What one read of a non-blocking socket gave.
pub enum Read {
    Data(usize),
    WouldBlock,
    Closed,
}

/// One read of a non-blocking socket into `buf` (a buffer zero-filled once and reused, never
/// per read).
pub fn read_some(socket: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<Read> {
    loop {
        return match socket.read(buf) {
            Ok(0) => Ok(Read::Closed),
            Ok(n) => Ok(Read::Data(n)),
            Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(Read::WouldBlock),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => Err(error),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: OpCode, payload: &[u8], is_final: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let header = FrameHeader { opcode, is_final, ..FrameHeader::default() };
        Frame::from_payload(header, payload.to_vec().into()).format(&mut out).unwrap();
        out
    }

    fn collect(reader: &mut FrameReader, data: &[u8], seen: &mut Vec<String>) {
        reader
            .feed(data, |message| {
                seen.push(match message {
                    Message::Text(text) => format!("text {}", String::from_utf8_lossy(text)),
                    Message::Binary(bytes) => format!("binary {}", bytes.len()),
                    Message::Ping(payload) => format!("ping {}", payload.len()),
                    Message::Pong => "pong".into(),
                    Message::Close(code) => format!("close {code}"),
                });
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn reads_messages_cut_anywhere() {
        let text = OpCode::Data(Data::Text);
        let mut stream = server_frame(text, b"hello", true);
        stream.extend(server_frame(text, &vec![b'x'; 300], true)); // 16-bit length
        stream.extend(server_frame(OpCode::Control(Control::Ping), b"p", true));
        stream.extend(server_frame(text, b"frag", false));
        stream.extend(server_frame(OpCode::Data(Data::Continue), b"ment", true));
        stream.extend(server_frame(OpCode::Data(Data::Binary), &vec![0; 70_000], true)); // 64-bit length
        stream.extend(server_frame(OpCode::Control(Control::Close), &4000u16.to_be_bytes(), true));
        let expected = [
            "text hello",
            &format!("text {}", "x".repeat(300)),
            "ping 1",
            "text fragment",
            "binary 70000",
            "close 4000",
        ];
        for cut in (0..stream.len()).step_by(7).chain([1, 2, 3, 4, 10, stream.len() - 1]) {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            collect(&mut reader, &stream[..cut], &mut seen);
            collect(&mut reader, &stream[cut..], &mut seen);
            assert_eq!(seen, expected, "cut at {cut}");
            assert!(reader.pending.is_empty());
        }
    }

    #[test]
    fn refuses_masked_server_frames_and_bad_continuations() {
        let mut reader = FrameReader::default();
        assert!(reader.feed(&text_frame("masked"), |_| Ok(())).is_err());
        let mut reader = FrameReader::default();
        let stray = server_frame(OpCode::Data(Data::Continue), b"x", true);
        assert!(reader.feed(&stray, |_| Ok(())).is_err());
    }

    #[test]
    fn client_frames_are_masked_and_parse_back() {
        let frame = text_frame("{\"id\":1}");
        let mut cursor = Cursor::new(&frame);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(header.mask.is_some());
        assert_eq!(length, 8);
        let mask = header.mask.unwrap();
        let payload: Vec<u8> =
            frame[cursor.position() as usize..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(payload, b"{\"id\":1}");
        let (opcode, payload) = parse_client_frame(&binary_frame(&[0, 1, 0x80]));
        assert_eq!(opcode, OpCode::Data(Data::Binary));
        assert_eq!(payload, [0, 1, 0x80]);
    }

    #[test]
    fn checks_the_handshake_response() {
        let accept = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let ok =
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n");
        assert!(check_response(ok.as_bytes(), &accept).is_ok());
        assert!(check_response(b"HTTP/1.1 400 Bad Request\r\n\r\n", &accept).is_err());
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), &accept).is_err());
    }
}
