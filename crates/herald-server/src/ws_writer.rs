//! Writing packed frames straight from the queued bytes.
//!
//! Everything queued for a connection goes out as one WebSocket frame whose payload is the
//! queued frames packed together (several replies per frame, as the protocol allows: JSON lines
//! joined by newlines in a text frame, length-prefixed Protobuf replies back to back in a binary
//! frame). Rather
//! than copying them into one string and tungstenite copying that into its write buffer, a frame
//! of large frames is written with vectored writes: the header (encoded by tungstenite), then
//! each shared frame and the newlines between them. A batch of small frames is copied once into
//! a buffer of its own (see [`COPY_BELOW_AVERAGE`]). Nothing stays allocated between writes.

use crate::outbound::QueuedFrame;
use herald_core::wire::WireFormat;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Slices per `writev`: Linux takes up to 1,024 (`IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Batches whose frames average less than this are copied into one buffer and written with
/// plain writes. The kernel copies every slice of a `writev` separately, and for ~200-byte
/// deliveries plus their one-byte newlines that per-slice cost was a fifth of the server's CPU at
/// saturation; one user-space copy into a contiguous buffer is cheaper. Larger frames go out
/// vectored from their shared bytes.
const COPY_BELOW_AVERAGE: usize = 512;

/// An unmasked, final WebSocket frame header for `payload` bytes in `format` (text for JSON,
/// binary for Protobuf), and its length.
pub fn frame_header(format: WireFormat, payload: usize) -> io::Result<([u8; 10], usize)> {
    let mut header = [0u8; 10];
    let mut cursor: &mut [u8] = &mut header;
    let data = if format.is_text() { Data::Text } else { Data::Binary };
    let frame_header = FrameHeader { opcode: OpCode::Data(data), ..FrameHeader::default() };
    frame_header.format(payload as u64, &mut cursor).map_err(io::Error::other)?;
    let len = 10 - cursor.len();
    Ok((header, len))
}

/// The payload length of `frames` packed in `format` (see [`WireFormat::separator`]).
pub fn joined_len<'a>(format: WireFormat, frames: impl Iterator<Item = &'a [u8]>) -> usize {
    let (bytes, count) = frames.fold((0usize, 0usize), |(bytes, count), frame| (bytes + frame.len(), count + 1));
    bytes + count.saturating_sub(1) * format.separator().len()
}

/// `header` and then `frames` packed in `format`, in one buffer of `total` bytes.
pub fn joined<'a>(format: WireFormat, header: &[u8], frames: impl Iterator<Item = &'a [u8]>, total: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(header);
    for (index, frame) in frames.enumerate() {
        if index > 0 {
            bytes.extend_from_slice(format.separator());
        }
        bytes.extend_from_slice(frame);
    }
    bytes
}

/// A server frame (unmasked, final) made of packed frames, part written.
pub struct PackedWrite {
    body: Body,
    /// Bytes of header and payload already written.
    written: usize,
    total: usize,
}

enum Body {
    /// Header, then the shared frames with `format`'s separators between them, written with
    /// `writev`. (The format rather than its separator: a slice would make every connection's
    /// task, which holds this, 16 bytes larger, and tokio lays tasks out in 128-byte steps.)
    Vectored { header: [u8; 10], header_len: usize, format: WireFormat, frames: Vec<QueuedFrame> },
    /// Header and payload copied together: held only while the write is under way.
    Contiguous(Vec<u8>),
}

impl PackedWrite {
    pub fn new(format: WireFormat, frames: Vec<QueuedFrame>) -> io::Result<Self> {
        let payload = joined_len(format, frames.iter().map(QueuedFrame::as_bytes));
        let (header, header_len) = frame_header(format, payload)?;
        let total = header_len + payload;
        let body = if frames.len() > 1 && payload < COPY_BELOW_AVERAGE * frames.len() {
            Body::Contiguous(joined(format, &header[..header_len], frames.iter().map(QueuedFrame::as_bytes), total))
        } else {
            Body::Vectored { header, header_len, format, frames }
        };
        Ok(Self { body, written: 0, total })
    }

    /// Bytes to write as they are: the rest of a frame the fan-out started (see `direct_write`).
    pub fn raw(bytes: Vec<u8>) -> Self {
        let total = bytes.len();
        Self { body: Body::Contiguous(bytes), written: 0, total }
    }

    /// The segments still to write, in order: header, frame, separator, frame, ...
    fn fill<'a>(
        &self,
        header: &'a [u8],
        separator: &'a [u8],
        frames: &'a [QueuedFrame],
        slices: &mut Vec<IoSlice<'a>>,
    ) {
        let mut skip = self.written;
        let mut push = |bytes: &'a [u8], slices: &mut Vec<IoSlice<'a>>| {
            if skip >= bytes.len() {
                skip -= bytes.len();
            } else {
                slices.push(IoSlice::new(&bytes[skip..]));
                skip = 0;
            }
            slices.len() < MAX_SLICES
        };
        if !push(header, slices) {
            return;
        }
        for (index, frame) in frames.iter().enumerate() {
            if index > 0 && !separator.is_empty() && !push(separator, slices) {
                return;
            }
            if !push(frame.as_bytes(), slices) {
                return;
            }
        }
    }

    /// Writes on until the whole frame is out.
    pub fn poll_write<W: AsyncWrite + Unpin>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.total {
            let written = match &self.body {
                Body::Contiguous(bytes) => {
                    std::task::ready!(Pin::new(&mut *io).poll_write(cx, &bytes[self.written..]))?
                }
                Body::Vectored { header, header_len, format, frames } => {
                    let mut slices = Vec::with_capacity((frames.len() * 2 + 1).min(MAX_SLICES));
                    self.fill(&header[..*header_len], format.separator(), frames, &mut slices);
                    std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A writer that takes at most `step` bytes per call and is not ready every other call, so
    /// the frame is resumed mid-header and mid-payload.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    async fn read_back(bytes: Vec<u8>) -> Vec<String> {
        read_messages(bytes)
            .await
            .into_iter()
            .filter_map(|message| match message {
                Message::Text(text) => Some(text.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    async fn read_messages(bytes: Vec<u8>) -> Vec<Message> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&bytes).await.expect("written");
        drop(client);
        let mut reader = WebSocketStream::from_raw_socket(server, Role::Client, None).await;
        let mut messages = Vec::new();
        while let Some(Ok(message)) = reader.next().await {
            messages.push(message);
        }
        messages
    }

    #[tokio::test]
    async fn protobuf_replies_go_out_back_to_back_in_one_binary_frame() {
        for size in [3usize, 200, 70_000] {
            let frames: Vec<QueuedFrame> = (0..3u8).map(|n| QueuedFrame::Reply(Bytes::from(vec![n; size]))).collect();
            let mut write = PackedWrite::new(WireFormat::Protobuf, frames.clone()).expect("header");
            let mut trickle = Trickle { out: Vec::new(), step: 7, calls: 0 };
            std::future::poll_fn(|cx| write.poll_write(&mut trickle, cx)).await.expect("written");
            let expected: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
            let messages = read_messages(trickle.out).await;
            assert!(
                matches!(messages.as_slice(), [Message::Binary(payload)] if payload[..] == expected[..]),
                "one binary frame of the {size}-byte replies with nothing between them"
            );
        }
    }

    #[tokio::test]
    async fn a_frame_written_in_pieces_reads_back_whole() {
        // Payload lengths that take each header size: 7-bit, 16-bit and 64-bit lengths.
        for size in [3usize, 200, 70_000] {
            let frames: Vec<QueuedFrame> =
                (0..3).map(|n| QueuedFrame::Reply(Bytes::from(format!("{n}{}", "x".repeat(size))))).collect();
            let mut write = PackedWrite::new(WireFormat::Json, frames.clone()).expect("header");
            let copied = matches!(write.body, Body::Contiguous(_));
            assert_eq!(copied, size < COPY_BELOW_AVERAGE, "{size}-byte frames copied: {copied}");
            let mut trickle = Trickle { out: Vec::new(), step: 7, calls: 0 };
            std::future::poll_fn(|cx| write.poll_write(&mut trickle, cx)).await.expect("written");
            let expected: Vec<String> =
                frames.iter().map(|f| String::from_utf8_lossy(f.as_bytes()).into_owned()).collect();
            assert_eq!(read_back(trickle.out).await, [expected.join("\n")], "payload of {size}-byte frames");
        }
    }

    #[tokio::test]
    async fn more_frames_than_one_writev_takes() {
        let pad = "p".repeat(COPY_BELOW_AVERAGE);
        let frames: Vec<QueuedFrame> =
            (0..1500).map(|n| QueuedFrame::Reply(Bytes::from(format!("{{\"n\":{n},\"p\":\"{pad}\"}}")))).collect();
        let mut write = PackedWrite::new(WireFormat::Json, frames.clone()).expect("header");
        assert!(matches!(write.body, Body::Vectored { .. }), "large frames go out from their shared bytes");
        let mut out = Vec::new();
        std::future::poll_fn(|cx| write.poll_write(&mut out, cx)).await.expect("written");
        let expected: Vec<String> = frames.iter().map(|f| String::from_utf8_lossy(f.as_bytes()).into_owned()).collect();
        assert_eq!(read_back(out).await, [expected.join("\n")]);
    }
}
