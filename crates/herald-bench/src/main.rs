//! `herald-bench`: fan-out load against Herald (or Centrifugo) and the peers in `shared/peers`
//! (Socket.IO, NATS over WebSocket), with the same scenario and the same client code paths:
//! N subscribers on one channel, one publisher, deliveries per second and publish-to-receive
//! latency from a timestamp in the payload. Every loop is bounded in count and in time.
//!
//! Scenarios: `fanout` (the subcommand may be left out: `herald-bench --target nats ...` is the
//! same), `latency` (fan-out at a moderate rate, read for its percentiles), `idle` (server memory
//! per held connection, connection setup rate), `churn` (connects and disconnects per second),
//! `slow` (subscribers that stop reading, against a baseline run). `compare SCENARIO` runs one of
//! them against Herald and each peer, starting the servers itself, and prints Herald-versus-peer
//! ratios; `table` turns the JSON lines of several `fanout` runs into a markdown table.
//!
//! Against Herald, the subscribers speak the client protocol's JSON form by default, or its
//! Protobuf form with `--encoding protobuf` (`fanout`, `latency`, `slow`, `idle`, `churn`; the
//! publisher stays on JSON); `compare` has a `herald-protobuf` target for it.
//!
//! Connections are spread over local source addresses 127.0.0.2, 127.0.0.3, ... (each has its
//! own ephemeral ports), and the open-file soft limit is raised to the hard limit at start.
//!
//! Exit status: 0 for a clean run, 2 when the report's status is not "ok" (it is still printed),
//! 1 when no report could be made.

mod churn;
mod compare;
mod fanout;
mod idle;
mod nats;
mod net;
mod procfs;
mod protobuf;
mod publish;
mod readers;
mod sdk;
mod servers;
mod slow;
mod subscribe;
mod table;
mod wire;
mod ws_crates;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Fan-out benchmark: one publisher, N WebSocket subscribers on one channel",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand, the options of `fanout`.
    #[command(flatten)]
    fanout: FanoutArgs,
}

// Parsed once at start: the size of the arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// One publisher, N subscribers on one channel: deliveries/s, missing deliveries, latency.
    Fanout(FanoutArgs),
    /// Publish-to-receive latency percentiles: the fan-out scenario at 100 publications/s.
    #[command(mut_arg("rate", |a| a.default_value("100")), mut_arg("messages", |a| a.default_value("1000")))]
    Latency(FanoutArgs),
    /// Hold N idle subscribed connections: server RSS per connection, connection setup rate.
    Idle(idle::IdleArgs),
    /// Connect, handshake and close in a loop: connects and disconnects per second.
    Churn(churn::ChurnArgs),
    /// A share of the subscribers stop reading: the others' p99 against a baseline run, and
    /// server memory.
    Slow(slow::SlowArgs),
    /// Run one scenario against Herald and each peer (starting them on free ports) and print
    /// Herald-versus-peer ratios.
    Compare(Box<compare::CompareArgs>),
    /// Measure WebSocket crates in Herald's server shape: memory per idle connection and
    /// frames/s fanned out (axum/tungstenite, tokio-websockets, fastwebsockets).
    WsCrates(ws_crates::WsCratesArgs),
    /// The server side of `ws-crates` (started by it).
    #[command(hide = true)]
    WsCratesServer(ws_crates::server::ServerArgs),
    /// Subscribers built on the herald-client crate (what an application sees, reconnect and
    /// duplicate dropping included): latency, missing and duplicate deliveries.
    Sdk(sdk::SdkArgs),
    /// Read `fanout --json` lines (stdin) and print a markdown table with ratios against a baseline.
    Table(table::TableArgs),
}

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Server under test.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,
    /// Server address (host:port). Defaults: herald 127.0.0.1:8000, socketio 127.0.0.1:3000,
    /// nats (WebSocket listener) 127.0.0.1:9222.
    #[arg(long)]
    pub addr: Option<String>,
    /// Subscribers connect to these addresses in turn (repeatable), for a cluster of nodes;
    /// publications still go to `--addr`. Default: `--addr`.
    #[arg(long = "subscriber-addr")]
    pub subscriber_addrs: Vec<String>,
    /// NATS plain TCP address, used by `--publish-over tcp` (the default for nats).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats_tcp: String,
    /// How the publisher sends. Defaults: herald http (POST /api/publish), socketio http
    /// (POST /publish), nats tcp (PUB on the TCP port). `ws`: over a client WebSocket connection
    /// (herald `publish` command, NATS PUB over WebSocket, Socket.IO `publish` event).
    #[arg(long, value_enum)]
    pub publish_over: Option<PublishOver>,
    /// Number of subscribers.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Number of publications.
    #[arg(long, short = 'm', default_value_t = 2000)]
    pub messages: u64,
    /// Publications per second; 0 publishes each as soon as the server acknowledged the previous
    /// one (HTTP answer, herald publish reply, NATS PONG; Socket.IO over ws has no acknowledgement).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Payload padding in bytes (besides sequence number and timestamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Channel (herald), room (socketio) or subject (nats).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Herald: server API key, sent as `X-API-Key` (not needed against `herald serve --dev`).
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Herald: connection token (empty: insecure mode / `herald serve --dev`).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Bound for the whole run in seconds (connect, publish, drain); what has not arrived by
    /// then is reported as missing.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Stop waiting for deliveries after publishing when none arrived for this many seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout: u64,
    /// Tokio worker threads of the load generator (the server under test shares the machine).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Subscriber connection attempts in flight at once.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Name of this run in the output (default: the target).
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Herald: spread subscribers over this many distinct filters (tag `group` = g0..gN-1);
    /// publication k carries group g(k mod N), so each reaches subscribers/N subscribers.
    #[arg(long, default_value_t = 0)]
    pub filters: usize,
    /// Herald over http: send publications in `batch` API calls of this many (parallel), as fast
    /// as accepted.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Report the server's CPU time per publication (/proc/PID/stat) and its resident memory
    /// (/proc/PID/status).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Spread the subscribers over this many local source addresses 127.0.0.2, 127.0.0.3, ...
    /// (each has its own ~28,000 ephemeral ports); 0: one per 5,000 subscribers. Loopback only.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: usize,
    /// Herald only: how the subscribers speak the client protocol. `json`: text frames;
    /// `protobuf`: binary frames of length-delimited Protobuf messages (`?format=protobuf`),
    /// publication data still JSON. The publisher speaks JSON either way. In `compare` it applies
    /// to the herald targets (its `herald-protobuf` target always uses protobuf).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: Encoding,
}

/// The form of the Centrifugo client protocol a Herald subscriber speaks.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug, Default)]
pub enum Encoding {
    /// JSON text frames, newline-separated.
    #[default]
    Json,
    /// Protobuf binary frames, each message prefixed by its length as a varint.
    Protobuf,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }

    /// Refuses an encoding the target does not speak (only Herald has a Protobuf form).
    pub fn check(self, target: Target) -> anyhow::Result<()> {
        anyhow::ensure!(
            self == Encoding::Json || target == Target::Herald,
            "--encoding {} is for the herald target only ({} has no such client protocol)",
            self.name(),
            target.name()
        );
        Ok(())
    }
}

/// The name of a run in the output when `--label` is not given: the target, and the encoding
/// when it is not the default.
pub fn default_label(target: Target, encoding: Encoding) -> String {
    match encoding {
        Encoding::Json => target.name().to_owned(),
        Encoding::Protobuf => format!("{}-{}", target.name(), encoding.name()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Target {
    /// Herald or Centrifugo: client protocol v2 (JSON, or Protobuf with `--encoding protobuf`),
    /// server HTTP API.
    Herald,
    /// Socket.IO v4 (engine.io frames over WebSocket), `shared/peers/socketio-server.js`.
    Socketio,
    /// NATS with its WebSocket listener.
    Nats,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum PublishOver {
    Http,
    Ws,
    Tcp,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::Socketio => "socketio",
            Target::Nats => "nats",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Table(args)) => table::run(&args).map(|()| true),
        Some(Command::Fanout(args) | Command::Latency(args)) => fanout::run(args),
        Some(Command::Idle(args)) => idle::run(args),
        Some(Command::Churn(args)) => churn::run(args),
        Some(Command::Slow(args)) => slow::run(args),
        Some(Command::Sdk(args)) => sdk::run(args),
        Some(Command::Compare(args)) => compare::run(*args),
        Some(Command::WsCrates(args)) => ws_crates::run(args),
        Some(Command::WsCratesServer(args)) => ws_crates::server::serve(args).map(|()| true),
        None => fanout::run(cli.fanout),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // The report was printed; its status says what went wrong.
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("herald-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
