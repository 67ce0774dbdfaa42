//! What each `herald` subcommand does.

use crate::{CheckConfigArgs, PublishArgs, ServeArgs, SubscribeArgs, TokenArgs};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use herald_config::{Config, Loaded};
use herald_server::auth::{sign_hs256, unix_now, ConnectClaims, SubscribeClaims};
use herald_server::Node;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

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
    let storage_flags = args.data_dir.is_some() || args.memory;
    if let Some(dir) = args.data_dir {
        config.storage.data_dir = dir;
    }
    if args.memory {
        config.storage.engine = "memory".into();
    }
    init_logging(&config)?;
    if storage_flags && config.engine.kind == "redis" {
        tracing::warn!("--data-dir and --memory are ignored with engine.type = redis: history lives in redis");
    }
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
    let mut registry: Option<std::sync::Arc<herald_redis::RedisRegistry>> = None;
    let node = if config.engine.kind == "redis" {
        let options = herald_redis::RedisOptions::from_config(&config.engine.redis);
        let engine = herald_redis::RedisEngine::start(options.clone()).map_err(|e| anyhow!("redis engine: {e}"))?;
        if !engine.wait_connected(options.connect_timeout.max(Duration::from_secs(2))).await {
            tracing::warn!(address = %options.address, "redis is not reachable yet; publishes fail as unavailable until it is");
        }
        tracing::info!(address = %options.address, prefix = %options.prefix, "redis engine: history, presence and cursors live in redis (storage.* is not used)");
        let shared = std::sync::Arc::new(engine.registry());
        registry = Some(shared.clone());
        let engine = std::sync::Arc::new(engine);
        Node::builder(config)
            .broker(engine.clone())
            .presence(engine)
            .registry(shared)
            .build()
            .map_err(|e| anyhow!("{e}"))?
    } else if config.storage.engine == "redb" {
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
    let node_id = node.id().to_owned();
    herald_server::serve(node, listener, herald_server::shutdown_signal(), timeout).await.context("server")?;
    if let Some(registry) = registry {
        use herald_server::engine::NodeRegistry;
        if let Err(error) = registry.deregister(&node_id).await {
            tracing::warn!(%error, "cannot remove this node from the cluster's list; it drops out after engine.redis.node_ttl");
        }
    }
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
    use herald_client::{Client, ConnectionState, SubscribeOptions, SubscriptionEvent};
    let base = args.url.trim_end_matches('/').replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let url = format!("{base}/connection/websocket");
    let parse = |flag: &str, value: &str| {
        humantime::parse_duration(value).with_context(|| format!("--{flag} {value:?} is not a duration"))
    };
    let (min_delay, max_delay) =
        (parse("reconnect-min", &args.reconnect_min)?, parse("reconnect-max", &args.reconnect_max)?);
    let mut builder = Client::builder(&url).name("herald-cli").reconnect_delay(min_delay, max_delay);
    if let Some(token) = &args.token {
        builder = builder.token(token);
    }
    let client = builder.build();
    let mut state = client.state();
    client.connect();
    let mut options = SubscribeOptions::new();
    if let Some(token) = &args.sub_token {
        options = options.token(token);
    }
    if let (Some(offset), Some(epoch)) = (args.offset, &args.epoch) {
        options = options.since(offset, epoch);
    }
    // Fail fast when the server cannot be reached at all; reconnect once it has been.
    let subscribing = client.subscribe(args.channel.clone(), options);
    tokio::pin!(subscribing);
    let mut subscription = loop {
        tokio::select! {
            subscribed = &mut subscribing => break subscribed.with_context(|| format!("subscribe to {}", args.channel))?,
            changed = state.changed() => {
                changed.context("client stopped")?;
                let current = state.borrow_and_update().clone();
                match current {
                    ConnectionState::Connecting { retry_in: Some(_), last_error: Some(error), .. } => bail!("{error}"),
                    ConnectionState::Disconnected { code, reason } => bail!("{}", stopped(code, &reason)),
                    _ => {}
                }
            }
        }
    };
    let mut seen = 0usize;
    let mut subscribed_before = false;
    let mut stdout = std::io::stdout();
    if args.count == Some(0) {
        return Ok(());
    }
    loop {
        tokio::select! {
            event = subscription.next() => {
                let Some(event) = event else { bail!("subscription to {} ended", args.channel) };
                match event {
                    SubscriptionEvent::Subscribed(info) => {
                        let again = if subscribed_before { " again" } else { "" };
                        subscribed_before = true;
                        let info = serde_json::to_string(&info).unwrap_or_default();
                        eprintln!("herald: subscribed to {}{again} {info}", args.channel);
                    }
                    SubscriptionEvent::RecoveryFailed(info) => {
                        eprintln!(
                            "herald: subscribed to {} but missed publications could not be recovered {}",
                            args.channel,
                            serde_json::to_string(&info).unwrap_or_default()
                        );
                    }
                    SubscriptionEvent::Publication(publication) => {
                        writeln!(stdout, "{}", serde_json::to_string(&publication).context("encode publication")?)?;
                        stdout.flush()?;
                        seen += 1;
                        if args.count.is_some_and(|count| seen >= count) {
                            drop(subscription);
                            client.disconnect();
                            return Ok(());
                        }
                    }
                    SubscriptionEvent::Unsubscribed { code, reason } => bail!("unsubscribed by the server: {code} {reason}"),
                    SubscriptionEvent::Error(error) => eprintln!("herald: resubscribe failed, retrying: {error}"),
                    SubscriptionEvent::Gap { offsets, unnumbered } => eprintln!(
                        "herald: the server skipped publications of {} because this connection fell behind: offsets {offsets:?}{}",
                        args.channel,
                        if unnumbered > 0 { format!(" and {unnumbered} without offset") } else { String::new() }
                    ),
                    SubscriptionEvent::Join(_) | SubscriptionEvent::Leave(_) => {}
                }
            }
            changed = state.changed() => {
                changed.context("client stopped")?;
                let current = state.borrow_and_update().clone();
                match current {
                    ConnectionState::Disconnected { code, reason } => bail!("{}", stopped(code, &reason)),
                    ConnectionState::Connecting { attempt, retry_in: Some(delay), last_error } => {
                        let error = last_error.unwrap_or_default();
                        if args.no_reconnect {
                            bail!("{error}");
                        }
                        eprintln!("herald: {error}; reconnecting in {delay:.1?} (attempt {attempt})");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Why the client stopped: a server close code, or the client's own reason (codes below 3000).
fn stopped(code: u16, reason: &str) -> String {
    if code >= 3000 {
        format!("server closed the connection: {code} {reason}")
    } else {
        reason.to_owned()
    }
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
