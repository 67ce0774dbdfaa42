//! The Protobuf form of the Centrifugo client protocol, as far as a subscriber needs it: a binary
//! WebSocket frame holds one or more messages, each prefixed by its length as a varint; commands
//! go to the server, replies come back. An empty reply is the server's ping, an empty command the
//! client's pong.
//!
//! Pushes are not decoded: a publication is recognised from a few bytes of its header and its
//! data (the publisher's JSON) is scanned for the sequence number and timestamp as in the JSON
//! protocol, so that a delivery costs the load generator about the same in both encodings. Only
//! the few other replies (connect, subscribe, errors) are decoded with prost.

use anyhow::{bail, ensure, Context, Result};
use herald_core::wire::proto::{Command, ConnectRequest, Reply, SubscribeRequest};
use prost::Message as _;

/// The longest varint (a u64 in 7-bit groups).
const MAX_VARINT: usize = 10;
/// Field 4 (`Reply.push`, `Push.pub`), wire type 2 (length-delimited): `4 << 3 | 2`.
const FIELD_4_DELIMITED: u64 = 0x22;

/// The client's answer to a ping: an empty command, length-delimited (one byte, its length 0).
pub const PONG: [u8; 1] = [0];

/// The varint at the start of `bytes` and how many bytes it took.
pub fn varint(bytes: &[u8]) -> Result<(u64, usize)> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().take(MAX_VARINT).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok((value, index + 1));
        }
    }
    ensure!(bytes.len() < MAX_VARINT, "varint longer than {MAX_VARINT} bytes");
    bail!("truncated varint")
}

/// The length-delimited messages of a binary frame, in order; an error (and then the end) when
/// the frame does not split into whole messages.
pub fn messages(frame: &[u8]) -> Messages<'_> {
    Messages { rest: frame }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match delimited(self.rest) {
            Ok((message, rest)) => {
                self.rest = rest;
                Some(Ok(message))
            }
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

/// The length-delimited field or message at the start of `bytes`, and what follows it.
fn delimited(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let (length, used) = varint(bytes).context("message length")?;
    let rest = &bytes[used..];
    match usize::try_from(length) {
        Ok(length) if length <= rest.len() => Ok(rest.split_at(length)),
        _ => bail!("message of {length} bytes with {} bytes left in the frame", rest.len()),
    }
}

/// What a reply is, as far as the subscriber cares.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// The empty reply: answer with [`PONG`].
    Ping,
    /// A push carrying a publication: its data (the publisher's JSON).
    Publication(&'a [u8]),
    /// Another push (join, leave, ...).
    OtherPush,
    /// A reply to a command.
    Reply(Box<Reply>),
}

/// Classifies one message of a frame; only replies to commands are decoded.
pub fn incoming(message: &[u8]) -> Result<Incoming<'_>> {
    match message.first() {
        None => Ok(Incoming::Ping),
        // A push comes with no id and no error: its field 4 comes first.
        Some(&byte) if u64::from(byte) == FIELD_4_DELIMITED => {
            let (push, _) = delimited(&message[1..]).context("push")?;
            let Some(publication) = field_4(push).context("push")? else { return Ok(Incoming::OtherPush) };
            Ok(Incoming::Publication(field_4(publication).context("publication")?.unwrap_or_default()))
        }
        Some(_) => Ok(Incoming::Reply(Box::new(Reply::decode(message).context("bad Protobuf reply")?))),
    }
}

/// The bytes of a message's length-delimited field 4 (`Push.pub`, then `Publication.data`), if
/// it has one: the fields before it are skipped (the push's channel comes first), none is decoded.
fn field_4(mut message: &[u8]) -> Result<Option<&[u8]>> {
    while !message.is_empty() {
        let (key, used) = varint(message).context("field key")?;
        message = &message[used..];
        if key == FIELD_4_DELIMITED {
            return Ok(Some(delimited(message).context("field 4")?.0));
        }
        let skip = match key & 7 {
            0 => varint(message).context("field")?.1,
            1 => 8,
            2 => message.len() - delimited(message).context("field")?.1.len(),
            5 => 4,
            wire_type => bail!("field with wire type {wire_type}"),
        };
        ensure!(skip <= message.len(), "truncated field");
        message = &message[skip..];
    }
    Ok(None)
}

/// The first frame's payload: connect (id 1, with the token) and subscribe (id 2, with the
/// channel and, for filters, the same JSON `data` as the JSON protocol's subscribe) as two
/// length-delimited commands.
pub fn handshake(token: &str, channel: &str, subscribe_data: Option<Vec<u8>>) -> Vec<u8> {
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest { token: token.to_owned(), ..Default::default() }),
        ..Default::default()
    };
    let subscribe = Command {
        id: 2,
        subscribe: Some(SubscribeRequest {
            channel: channel.to_owned(),
            data: subscribe_data.unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut payload = connect.encode_length_delimited_to_vec();
    payload.extend(subscribe.encode_length_delimited_to_vec());
    payload
}

/// A reply's error as text, if it has one.
pub fn refusal(reply: &Reply) -> Option<String> {
    reply.error.as_ref().map(|error| format!("command {} refused: {} {}", reply.id, error.code, error.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::wire::proto::{self, Push};

    fn delimited_bytes(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(message.len() as u64, &mut out);
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn reads_varints() {
        assert_eq!(varint(&[0]).unwrap(), (0, 1));
        assert_eq!(varint(&[0x7f, 0xff]).unwrap(), (127, 1));
        assert_eq!(varint(&[0xac, 0x02]).unwrap(), (300, 2));
        assert_eq!(varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap(), (u64::MAX, 10));
        assert!(varint(&[]).is_err());
        assert!(varint(&[0x80, 0x80]).is_err(), "truncated");
        assert!(varint(&[0x80; 11]).is_err(), "too long");
    }

    #[test]
    fn splits_a_frame_into_length_delimited_messages() {
        let long = vec![b'x'; 300]; // its length takes two varint bytes
        let mut frame = delimited_bytes(b"first");
        frame.extend(delimited_bytes(b"")); // a ping among them
        frame.extend(delimited_bytes(&long));
        frame.extend(delimited_bytes(b"last"));
        assert_eq!(frame[7..9], [0xac, 0x02]);
        let split: Vec<&[u8]> = messages(&frame).collect::<Result<_>>().unwrap();
        assert_eq!(split, [&b"first"[..], b"", &long, b"last"]);
        assert_eq!(messages(&[]).count(), 0);
        assert_eq!(messages(&[0]).collect::<Result<Vec<_>>>().unwrap(), [&b""[..]]);
    }

    #[test]
    fn refuses_truncated_frames() {
        let mut frame = delimited_bytes(b"whole");
        frame.extend(delimited_bytes(&[b'y'; 300]));
        // Cut inside the second message, then inside its two-byte length.
        for cut in [frame.len() - 1, 7] {
            let split: Vec<Result<&[u8]>> = messages(&frame[..cut]).collect();
            assert_eq!(split.len(), 2, "cut at {cut}");
            assert_eq!(split[0].as_ref().unwrap(), b"whole");
            assert!(split[1].is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn classifies_replies_without_decoding_publications() {
        let publication = proto::Reply {
            push: Some(Push {
                channel: "bench".into(),
                publication: Some(proto::Publication {
                    info: Some(proto::ClientInfo { user: "u".into(), ..Default::default() }),
                    data: br#"{"seq":1}"#.to_vec(),
                    offset: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(incoming(&publication).unwrap(), Incoming::Publication(data) if data == br#"{"seq":1}"#));
        // A push with an id and a long channel before its publication.
        let numbered = proto::Reply {
            push: Some(Push {
                id: 5,
                channel: "c".repeat(200),
                publication: Some(proto::Publication { data: b"{}".to_vec(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(incoming(&numbered).unwrap(), Incoming::Publication(b"{}")));
        let join = proto::Reply {
            push: Some(Push {
                channel: "bench".into(),
                join: Some(proto::Join { info: Some(proto::ClientInfo::default()) }),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(incoming(&join).unwrap(), Incoming::OtherPush));
        assert!(matches!(incoming(&[]).unwrap(), Incoming::Ping));
        let refused = proto::Reply {
            id: 2,
            error: Some(proto::Error { code: 103, message: "permission denied".into(), ..Default::default() }),
            ..Default::default()
        }
        .encode_to_vec();
        let Incoming::Reply(reply) = incoming(&refused).unwrap() else { panic!("not a reply") };
        assert_eq!(refusal(&reply).unwrap(), "command 2 refused: 103 permission denied");
        assert!(incoming(&[0x22, 0x05, 0x12]).is_err(), "truncated push");
    }

    #[test]
    fn the_handshake_is_connect_then_subscribe() {
        let payload = handshake("tok", "bench", Some(br#"{"herald":{}}"#.to_vec()));
        let commands: Vec<Command> =
            messages(&payload).map(|message| Command::decode(message.unwrap()).unwrap()).collect();
        assert_eq!(commands.len(), 2);
        assert_eq!((commands[0].id, commands[0].connect.as_ref().unwrap().token.as_str()), (1, "tok"));
        let subscribe = commands[1].subscribe.as_ref().unwrap();
        assert_eq!((commands[1].id, subscribe.channel.as_str()), (2, "bench"));
        assert_eq!(subscribe.data, br#"{"herald":{}}"#);
        let plain = handshake("", "bench", None);
        let subscribe = Command::decode(messages(&plain).nth(1).unwrap().unwrap()).unwrap().subscribe.unwrap();
        assert!(subscribe.data.is_empty());
    }
}
