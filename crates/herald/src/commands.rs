//! What each `herald` subcommand does.

use crate::{CheckConfigArgs, PublishArgs, ServeArgs, SubscribeArgs, TokenArgs};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use herald_config::{Config, Loaded};
use herald_server::auth::{sign_hs256, unix_now, ConnectClaims, SubscribeClaims};
use herald_server::Node;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn load_config(file: Option<&std::path::Path>) -> Result<Loaded> {
    let env = std::env::vars();
    let loaded = match file {
        Some(path) => herald_config::load(Some(path), env),
        None => herald_config::load_embedded(env),
    };
    loaded.map_err(|e| anyhow!("configuration: {e}"))
}

fn init_logging(config: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if config.log.format == "json" { builder.json().try_init() } else { builder.try_init() };
    result.map_err(|e| anyhow!("logging: {e}"))
}

fn generated_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let Loaded { mut config, warnings } = load_config(args.config.as_deref())?;
    if let Some(address) = args.address {
        config.http_server.address = address;
    }
    if let Some(port) = args.port {
        config.http_server.port = port;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if args.dev {
        config.client.insecure = true;
        config.http_api.insecure = true;
    }
    if let Some(dir) = args.data_dir {
        config.storage.data_dir = dir;
    }
    if args.memory {
        config.storage.engine = "memory".into();
    }
    init_logging(&config)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if config.client.insecure {
        tracing::warn!("!!! INSECURE MODE: any client may connect, subscribe, publish and read history and presence without a token. Use only for development. !!!");
    }
    if config.http_api.insecure {
        tracing::warn!("!!! the server HTTP API accepts calls without an API key. Use only for development. !!!");
    }
    let token = &config.client.token;
    let has_key =
        !(token.hmac_secret_key.is_empty() && token.rsa_public_key.is_empty() && token.ecdsa_public_key.is_empty());
    if !config.client.insecure && !has_key {
        config.client.token.hmac_secret_key = generated_secret();
        println!(
            "herald: generated client.token.hmac_secret_key for this run: {}\n        (set HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY or a config file to keep it across restarts)",
            config.client.token.hmac_secret_key
        );
    }
    if !config.http_api.insecure && config.http_api.key.is_empty() {
        config.http_api.key = generated_secret();
        println!(
            "herald: generated http_api.key for this run: {}\n        (set HERALD_HTTP_API_KEY or a config file to keep it across restarts)",
            config.http_api.key
        );
    }
    let bind = format!("{}:{}", config.http_server.address, config.http_server.port);
    let listener = tokio::net::TcpListener::bind(&bind).await.with_context(|| format!("cannot listen on {bind}"))?;
    let local = listener.local_addr().context("listener address")?;
    let timeout = config.shutdown.timeout;
    let node = if config.storage.engine == "redb" {
        let store = herald_store::DurableBroker::open(herald_store::StoreOptions::from_config(&config))
            .map_err(|e| anyhow!("storage: {e}"))?;
        let recovered = store.recovered().clone();
        tracing::info!(
            data_dir = %config.storage.data_dir,
            fsync = %config.storage.fsync,
            streams = recovered.streams,
            publications = recovered.publications,
            "durable store opened"
        );
        if let Some(aside) = &recovered.moved_aside {
            tracing::error!(moved_to = %aside.display(), "the store file was unreadable and was moved aside; streams start new epochs");
        }
        Node::builder(config).broker(std::sync::Arc::new(store)).build().map_err(|e| anyhow!("{e}"))?
    } else {
        tracing::warn!("storage.engine = memory: history and stream positions do not survive a restart");
        Node::new(config).map_err(|e| anyhow!("{e}"))?
    };
    tracing::info!(address = %local, node = node.id(), "herald listening");
    println!(
        "herald: listening on http://{local} (WebSocket ws://{local}/connection/websocket, API http://{local}/api)"
    );
    let _ = std::io::stdout().flush();
    herald_server::serve(node, listener, herald_server::shutdown_signal(), timeout).await.context("server")?;
    tracing::info!("stopped");
    Ok(())
}

pub async fn publish(args: PublishArgs) -> Result<()> {
    let data: Value = serde_json::from_str(&args.data).with_context(|| format!("data is not JSON: {}", args.data))?;
    let mut body = json!({ "channel": args.channel, "data": data });
    if !args.tags.is_empty() {
        body["tags"] = json!(args.tags.into_iter().collect::<std::collections::BTreeMap<_, _>>());
    }
    if let Some(key) = args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    if let Some(priority) = args.priority {
        body["priority"] = json!(priority);
    }
    let url = format!("{}/api/publish", args.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().post(&url).json(&body);
    if let Some(key) = &args.api_key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.with_context(|| format!("answer of {url} (HTTP {status})"))?;
    if let Some(error) = answer.get("error") {
        bail!("server refused the publish (HTTP {status}): {error}");
    }
    println!("{}", answer.get("result").unwrap_or(&Value::Null));
    Ok(())
}

pub async fn subscribe(args: SubscribeArgs) -> Result<()> {
    let base = args.url.trim_end_matches('/').replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let url = format!("{base}/connection/websocket");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.with_context(|| format!("connect to {url}"))?;
    let mut subscribe = json!({ "channel": args.channel });
    if let Some(token) = &args.sub_token {
        subscribe["token"] = json!(token);
    }
    if let (Some(offset), Some(epoch)) = (args.offset, &args.epoch) {
        subscribe["recover"] = json!(true);
        subscribe["offset"] = json!(offset);
        subscribe["epoch"] = json!(epoch);
    }
    let connect = json!({ "id": 1, "connect": { "token": args.token.unwrap_or_default(), "name": "herald-cli" } });
    let frame = format!("{connect}\n{}", json!({ "id": 2, "subscribe": subscribe }));
    socket.send(Message::Text(frame.into())).await.context("send connect")?;
    let mut seen = 0usize;
    let mut stdout = std::io::stdout();
    while let Some(message) = socket.next().await {
        let message = message.context("read")?;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((0, String::new()));
                bail!("server closed the connection: {code} {reason}");
            }
            _ => continue,
        };
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line).with_context(|| format!("server sent non-JSON: {line}"))?;
            if value.as_object().is_some_and(|o| o.is_empty()) {
                socket.send(Message::Text("{}".into())).await.context("pong")?;
                continue;
            }
            if let Some(error) = value.get("error") {
                bail!("server error: {error}");
            }
            if let Some(result) = value.get("subscribe") {
                for publication in result.get("publications").and_then(Value::as_array).into_iter().flatten() {
                    writeln!(stdout, "{publication}")?;
                    seen += 1;
                }
                eprintln!("herald: subscribed to {} {}", args.channel, result);
            }
            if let Some(publication) = value.pointer("/push/pub") {
                writeln!(stdout, "{publication}")?;
                stdout.flush()?;
                seen += 1;
            }
            if args.count.is_some_and(|count| seen >= count) {
                let _ = socket.close(None).await;
                return Ok(());
            }
        }
    }
    Ok(())
}

pub fn token(args: TokenArgs) -> Result<()> {
    let secret = match (args.secret, &args.config) {
        (Some(secret), _) => secret,
        (None, Some(path)) => load_config(Some(path))?.config.client.token.hmac_secret_key,
        (None, None) => String::new(),
    };
    if secret.is_empty() {
        bail!("no HMAC secret: pass --secret, set HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY, or --config with client.token.hmac_secret_key");
    }
    let ttl = if args.ttl == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(&args.ttl).with_context(|| format!("--ttl {:?}", args.ttl))?
    };
    let exp = (!ttl.is_zero()).then(|| unix_now() + ttl.as_secs());
    let token = match args.channel {
        Some(channel) => sign_hs256(&SubscribeClaims { sub: args.user, channel, exp, ..Default::default() }, &secret),
        None => sign_hs256(
            &ConnectClaims {
                sub: args.user,
                exp,
                iat: Some(unix_now()),
                channels: args.channels,
                ..Default::default()
            },
            &secret,
        ),
    }
    .context("signing")?;
    println!("{token}");
    Ok(())
}

pub fn check_config(args: CheckConfigArgs) -> Result<()> {
    let loaded = load_config(Some(&args.file))?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    println!("{}: ok", args.file.display());
    Ok(())
}
