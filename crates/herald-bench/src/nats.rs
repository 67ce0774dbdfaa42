//! The part of the NATS client protocol the benchmark reads: a byte stream (over WebSocket the
//! server may cut it anywhere between frames) of `MSG`, `PING`, `PONG`, `-ERR`, `+OK` and `INFO`.

pub enum Event<'a> {
    /// A `MSG` payload.
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(&'a str),
}

/// Bytes received and not yet parsed.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

/// Longest control line accepted before the stream is considered broken.
const MAX_LINE: usize = 64 * 1024;

impl Reader {
    /// Appends `data` and calls `on_event` for every complete protocol message.
    pub fn feed(&mut self, data: &[u8], mut on_event: impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        while let Some(eol) = find_crlf(&self.buf[pos..]) {
            let line = &self.buf[pos..pos + eol];
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let size: usize = std::str::from_utf8(rest)?
                    .split_ascii_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("bad MSG line"))?;
                let start = pos + eol + 2;
                if self.buf.len() < start + size + 2 {
                    break;
                }
                on_event(Event::Msg(&self.buf[start..start + size]));
                pos = start + size + 2;
                continue;
            }
            if line.eq_ignore_ascii_case(b"PING") {
                on_event(Event::Ping);
            } else if line.eq_ignore_ascii_case(b"PONG") {
                on_event(Event::Pong);
            } else if let Some(message) = line.strip_prefix(b"-ERR") {
                on_event(Event::Err(std::str::from_utf8(message).unwrap_or("?").trim()));
            }
            pos += eol + 2;
        }
        self.buf.drain(..pos);
        anyhow::ensure!(self.buf.len() <= MAX_LINE + 1024 * 1024, "NATS stream: unparsable data");
        Ok(())
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::{Event, Reader};

    #[test]
    fn parses_messages_cut_anywhere() {
        let stream = b"INFO {\"a\":1}\r\nMSG bench 1 11\r\n{\"seq\":1}\r\n\r\nPING\r\nMSG bench 1 r 3\r\nabc\r\nPONG\r\n-ERR 'x'\r\n";
        for cut in 0..stream.len() {
            let mut reader = Reader::default();
            let mut seen = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                reader
                    .feed(part, |event| {
                        seen.push(match event {
                            Event::Msg(payload) => String::from_utf8_lossy(payload).into_owned(),
                            Event::Ping => "PING".into(),
                            Event::Pong => "PONG".into(),
                            Event::Err(message) => format!("ERR {message}"),
                        })
                    })
                    .unwrap();
            }
            assert_eq!(seen, ["{\"seq\":1}\r\n", "PING", "abc", "PONG", "ERR 'x'"], "cut at {cut}");
        }
    }
}
