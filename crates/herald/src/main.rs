//! `herald`: run the server, and small tools to publish, subscribe and mint tokens.

mod commands;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "herald", version, about = "Real-time event broadcasting server, Centrifugo-compatible", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults when no --config is given).
    Serve(ServeArgs),
    /// Publish JSON to a channel through the server HTTP API.
    Publish(PublishArgs),
    /// Subscribe to a channel over WebSocket and print each publication as one JSON line;
    /// reconnects and recovers missed publications when the connection drops.
    Subscribe(SubscribeArgs),
    /// Mint a connection token, or a subscription token with --channel (HS256, for development).
    Token(TokenArgs),
    /// Validate a configuration file and print its warnings.
    CheckConfig(CheckConfigArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML, YAML or JSON, by extension).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to bind (overrides http_server.address).
    #[arg(long)]
    pub address: Option<String>,
    /// Port to bind (overrides http_server.port; 0 picks a free port).
    #[arg(long, short)]
    pub port: Option<u16>,
    /// Development mode: anyone may connect, subscribe and publish, and the API needs no key.
    #[arg(long)]
    pub dev: bool,
    /// Log level: trace, debug, info, warn, error (overrides log.level).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log format: text or json (overrides log.format).
    #[arg(long)]
    pub log_format: Option<String>,
    /// Directory of the embedded durable store (overrides storage.data_dir).
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Keep history in memory only: nothing survives a restart (storage.engine = "memory").
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    /// Channel to publish into.
    pub channel: String,
    /// The publication's data, as JSON.
    pub data: String,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Server API key (http_api.key).
    #[arg(long, env = "HERALD_HTTP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tags as key=value, repeatable.
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Deduplicates repeated publishes with the same key for 5 minutes.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// What a subscriber that falls behind still gets: critical and high are never shed, low is
    /// shed first (default: the namespace's default_priority).
    #[arg(long, value_parser = ["critical", "high", "normal", "low"])]
    pub priority: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("tag {s:?} is not key=value"))
}

#[derive(clap::Args)]
pub struct SubscribeArgs {
    /// Channel to subscribe to.
    pub channel: String,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Connection token (not needed against a --dev server).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Subscription token, for private ($) channels.
    #[arg(long)]
    pub sub_token: Option<String>,
    /// Exit after this many publications.
    #[arg(long)]
    pub count: Option<usize>,
    /// Recover publications after this offset (needs --epoch).
    #[arg(long, requires = "epoch")]
    pub offset: Option<u64>,
    /// Stream epoch for --offset.
    #[arg(long)]
    pub epoch: Option<String>,
    /// Exit when the connection drops instead of reconnecting (and recovering what was missed).
    #[arg(long)]
    pub no_reconnect: bool,
    /// Shortest delay before reconnecting; it doubles, with jitter, up to --reconnect-max.
    #[arg(long, default_value = "500ms")]
    pub reconnect_min: String,
    /// Longest delay before reconnecting.
    #[arg(long, default_value = "20s")]
    pub reconnect_max: String,
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// User id (the `sub` claim); empty for an anonymous token.
    #[arg(long, default_value = "")]
    pub user: String,
    /// Lifetime, like "1h" or "90s"; "0" for no expiry.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Mint a subscription token for this channel instead of a connection token.
    #[arg(long)]
    pub channel: Option<String>,
    /// Server-side subscriptions to put in a connection token, repeatable.
    #[arg(long = "subscribe")]
    pub channels: Vec<String>,
    /// HMAC secret (client.token.hmac_secret_key); read from --config when absent.
    #[arg(long, env = "HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", hide_env_values = true)]
    pub secret: Option<String>,
    /// Take the secret from this configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration file to check.
    pub file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve(args).await,
            Command::Publish(args) => commands::publish(args).await,
            Command::Subscribe(args) => commands::subscribe(args).await,
            Command::Token(args) => commands::token(args),
            Command::CheckConfig(args) => commands::check_config(args),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald: {error:#}");
            ExitCode::FAILURE
        }
    }
}
