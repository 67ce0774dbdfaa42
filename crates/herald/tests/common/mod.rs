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
/// and waits, at most `wait`, for it to print where it listens.
pub fn spawn_listening(mut command: Command, wait: Duration) -> Listening {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn herald serve");
    let stdout = child.stdout.take().expect("stdout");
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
        let line = lines.recv_timeout(wait).expect("herald serve prints its address");
        if let Some(rest) = line.strip_prefix("herald: listening on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
        banner.push(line);
    };
    Listening { child, url, banner, lines }
}
