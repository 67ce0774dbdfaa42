//! Starting the real `herald serve` binary in tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A spawned `herald serve` that has printed its listening line.
pub struct Listening {
    pub child: Child,
    /// The base URL it listens on (`http://127.0.0.1:PORT`).
    pub url: String,
    /// What it printed on stdout before its listening line.
    pub banner: Vec<String>,
    /// Keeps the stdout reader alive so the server never blocks on a full pipe.
    pub lines: mpsc::Receiver<String>,
}

/// Spawns `command` (a `herald serve ...` with its arguments and environment) with stdout piped
/// and waits, at most `wait`, for it to print where it listens; the error says why it did not.
pub fn try_spawn_listening(mut command: Command, wait: Duration) -> Result<Listening, String> {
    let mut child = command.stdout(Stdio::piped()).spawn().map_err(|e| format!("spawn herald serve: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Drains stdout to the end even when nobody reads the lines any more, so the server
        // never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let url = loop {
        let line = lines.recv_timeout(wait).map_err(|_| format!("no listening line within {wait:?}"))?;
        if let Some(rest) = line.strip_prefix("herald: listening on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
        banner.push(line);
    };
    Ok(Listening { child, url, banner, lines })
}

pub fn spawn_listening(command: Command, wait: Duration) -> Listening {
    try_spawn_listening(command, wait).unwrap_or_else(|e| panic!("herald serve: {e}"))
}
