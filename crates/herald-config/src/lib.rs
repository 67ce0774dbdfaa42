//! Herald's configuration: Centrifugo v6 key names, read from a TOML, YAML or JSON file, then
//! `HERALD_*` environment variables, then command-line flags (applied by the binary).
//!
//! Keys nobody knows (typos) and bad values are rejected with the key's full path and the reason;
//! Centrifugo keys Herald does not support yet are removed with a warning naming them, so a
//! Centrifugo user's configuration loads as is.

mod duration;
mod keys;

pub use keys::{all_keys, KeyDoc};

use figment::providers::{Format as _, Json, Toml, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_server: HttpServer,
    pub client: Client,
    pub channel: Channel,
    pub http_api: HttpApi,
    pub log: Log,
    pub shutdown: Shutdown,
    pub websocket: WebSocket,
    pub prometheus: Prometheus,
    pub health: Health,
    pub storage: Storage,
    pub delivery: Delivery,
    pub engine: Engine,
}

/// Where streams, history, presence and node information live when several nodes share them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Engine {
    /// `memory`: this node alone (history kept by `storage.engine`); `redis`: a cluster of nodes
    /// sharing one Redis (or Valkey) server, which then keeps history instead of `storage`.
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisEngine,
}

impl Default for Engine {
    fn default() -> Self {
        Self { kind: "memory".into(), redis: RedisEngine::default() }
    }
}

/// Centrifugo v6's `engine.redis`, plus Herald's own keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisEngine {
    /// `redis://host:port` (or `host:port`, `rediss://`, `unix://`); one server for now. A
    /// single string is accepted too, as in Centrifugo.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// Every key and Pub/Sub channel starts with this, so unrelated clusters share a server.
    pub prefix: String,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub io_timeout: Duration,
    pub db: u16,
    pub user: String,
    pub password: String,
    /// Redis Cluster seed addresses (not supported yet: loading fails when set).
    #[serde(deserialize_with = "one_or_many")]
    pub cluster_address: Vec<String>,
    /// Sentinel addresses (not supported yet: loading fails when set).
    #[serde(deserialize_with = "one_or_many")]
    pub sentinel_address: Vec<String>,
    pub sentinel_user: String,
    pub sentinel_password: String,
    pub sentinel_master_name: String,
    pub sentinel_client_name: String,
    /// How long a presence entry outlives the last refresh by its node (refreshed every third of it).
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
    /// Herald: Pub/Sub connections per node; each channel is hashed to one of them.
    pub pubsub_shards: usize,
    /// Herald: how long a node stays listed in `info` after its last heartbeat (sent every third of it).
    #[serde(with = "duration")]
    pub node_ttl: Duration,
}

impl Default for RedisEngine {
    fn default() -> Self {
        Self {
            address: vec!["redis://127.0.0.1:6379".into()],
            prefix: "herald".into(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(4),
            db: 0,
            user: String::new(),
            password: String::new(),
            cluster_address: Vec::new(),
            sentinel_address: Vec::new(),
            sentinel_user: String::new(),
            sentinel_password: String::new(),
            sentinel_master_name: String::new(),
            sentinel_client_name: String::new(),
            presence_ttl: Duration::from_secs(60),
            pubsub_shards: 4,
            node_ttl: Duration::from_secs(15),
        }
    }
}

/// A list, or one string standing for a list of one (Centrifugo accepts both for addresses).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) if one.is_empty() => Vec::new(),
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// Acknowledged delivery (Herald's own section).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Delivery {
    /// Every expired acknowledged delivery is published here (`{channel, offset, user, client,
    /// state, retries}`) for operators to subscribe to; empty: not published.
    pub expired_channel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServer {
    pub address: String,
    pub port: u16,
}

impl Default for HttpServer {
    fn default() -> Self {
        Self { address: "127.0.0.1".into(), port: 8000 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Token {
    pub hmac_secret_key: String,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub audience: String,
    pub issuer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Client {
    pub insecure: bool,
    pub token: Token,
    pub allowed_origins: Vec<String>,
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    pub channel_limit: usize,
    pub queue_max_size: usize,
    /// The longest a publish waits while a quarter of the connections' queues are backed up
    /// (publish backpressure); zero turns the wait off.
    #[serde(with = "duration")]
    pub publish_backpressure_wait: Duration,
    pub connection_limit: usize,
    pub user_connection_limit: usize,
    #[serde(with = "duration")]
    pub expired_close_delay: Duration,
    #[serde(with = "duration")]
    pub expired_sub_close_delay: Duration,
    pub history_max_publication_limit: usize,
    pub recovery_max_publication_limit: usize,
    pub allow_anonymous_connect_without_token: bool,
    pub disallow_anonymous_connection_tokens: bool,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            insecure: false,
            token: Token::default(),
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            channel_limit: 128,
            queue_max_size: 1 << 20,
            publish_backpressure_wait: Duration::from_millis(100),
            connection_limit: 0,
            user_connection_limit: 0,
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Channel {
    pub max_length: usize,
    pub without_namespace: NamespaceOptions,
    pub namespaces: Vec<Namespace>,
}

impl Default for Channel {
    fn default() -> Self {
        Self { max_length: 255, without_namespace: NamespaceOptions::default(), namespaces: Vec::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: NamespaceOptions,
}

/// Per-namespace channel options; all off by default, as in Centrifugo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: usize,
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    #[serde(with = "duration")]
    pub history_meta_ttl: Duration,
    pub force_recovery: bool,
    pub allow_recovery: bool,
    pub force_positioning: bool,
    pub allow_positioning: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_anonymous: bool,
    pub allow_user_limited_channels: bool,
    pub channel_regex: String,
    pub allow_tags_filter: bool,
    pub allowed_delta_types: Vec<String>,
    /// Herald: every publication requires acknowledgement by its live recipients.
    pub require_ack: bool,
    /// Herald: time before the first redelivery of an unacknowledged publication (doubles each retry).
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// Herald: redeliveries before the delivery is recorded as expired.
    pub ack_max_retries: u32,
    /// Herald: priority of publications that name none: critical, high, normal or low.
    pub default_priority: String,
    /// Publications of a channel held until this many are waiting (0: no batching)...
    pub batch_max_size: usize,
    /// ...or until the first of them waited this long; then they go out in one frame.
    #[serde(with = "duration")]
    pub batch_max_delay: Duration,
    /// Herald: the tag whose value names what a publication updates (a position, a setting);
    /// within `conflate_window` a subscriber gets only the latest publication per value.
    pub conflate_key: String,
    #[serde(with = "duration")]
    pub conflate_window: Duration,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::ZERO,
            force_recovery: false,
            allow_recovery: false,
            force_positioning: false,
            allow_positioning: false,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_client: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_anonymous: false,
            allow_presence_for_client: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_anonymous: false,
            allow_history_for_client: false,
            allow_history_for_subscriber: false,
            allow_history_for_anonymous: false,
            allow_user_limited_channels: false,
            channel_regex: String::new(),
            allow_tags_filter: false,
            allowed_delta_types: Vec::new(),
            require_ack: false,
            ack_timeout: Duration::from_secs(5),
            ack_max_retries: 5,
            default_priority: "normal".into(),
            batch_max_size: 0,
            batch_max_delay: Duration::ZERO,
            conflate_key: String::new(),
            conflate_window: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApi {
    pub key: String,
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocket {
    pub message_size_limit: usize,
    #[serde(with = "duration")]
    pub write_timeout: Duration,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self { message_size_limit: 65536, write_timeout: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prometheus {
    pub enabled: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Where history, stream positions and idempotency keys live (Herald's own section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `redb`: an embedded durable store under `data_dir` (the default); `memory`: nothing
    /// survives a restart.
    pub engine: String,
    pub data_dir: String,
    /// `always`: a publish is answered after its commit reached the disk; `interval`: commits
    /// reach the disk every `fsync_interval`, which bounds what a crash may lose.
    pub fsync: String,
    #[serde(with = "duration")]
    pub fsync_interval: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            engine: "redb".into(),
            data_dir: "herald-data".into(),
            fsync: "always".into(),
            fsync_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    pub enabled: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Config {
    /// Checks the rules a loaded configuration must follow (the same checks `load` runs); for
    /// callers that change a configuration after loading it, such as command-line flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(self)
    }

    /// Options of a namespace: `""` is the top level (`channel.without_namespace`); `None` for a
    /// namespace that is not configured.
    pub fn namespace_options(&self, namespace: &str) -> Option<&NamespaceOptions> {
        if namespace.is_empty() {
            Some(&self.channel.without_namespace)
        } else {
            self.channel.namespaces.iter().find(|n| n.name == namespace).map(|n| &n.options)
        }
    }
}

/// What `herald serve` uses without a config file: Centrifugo's defaults, plus a top level that
/// lets authenticated clients subscribe, read history and presence, get join/leave pushes when
/// they ask, and recover (or be positioned) within the last 100 publications of 5 minutes when
/// they ask for it (`allow_recovery`, not `force_recovery`).
pub fn embedded_defaults() -> Config {
    let mut config = Config::default();
    config.channel.without_namespace = NamespaceOptions {
        presence: true,
        join_leave: true,
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        force_recovery: false,
        allow_recovery: true,
        allow_positioning: true,
        allow_subscribe_for_client: true,
        allow_history_for_subscriber: true,
        allow_presence_for_subscriber: true,
        ..Default::default()
    };
    config
}

/// A loaded configuration and the warnings to print at start.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: unsupported file extension (use .toml, .yaml, .yml or .json)")]
    Extension { path: String },
    #[error("cannot parse the configuration: {0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Loads a file (format by extension) with `HERALD_*` overrides from `env`.
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
    let Some(path) = file else {
        return layer(Value::Object(Map::new()), Config::default(), env);
    };
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(ConfigError::Read { path: shown, reason: "no such file".into() });
    }
    let format = Format::from_path(path).ok_or(ConfigError::Extension { path: shown.clone() })?;
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: shown, reason: e.to_string() })?;
    load_str(&text, format, env)
}

/// Loads configuration text of a known format with `HERALD_*` overrides.
pub fn load_str(
    text: &str,
    format: Format,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    layer(parse(text, format)?, Config::default(), env)
}

/// The embedded defaults with `HERALD_*` overrides: `herald serve` without `--config`.
pub fn load_embedded(env: impl IntoIterator<Item = (String, String)>) -> Result<Loaded, ConfigError> {
    layer(Value::Object(Map::new()), embedded_defaults(), env)
}

fn parse(text: &str, format: Format) -> Result<Value, ConfigError> {
    let figment = match format {
        Format::Toml => Figment::from(Toml::string(text)),
        Format::Yaml => Figment::from(Yaml::string(text)),
        Format::Json => Figment::from(Json::string(text)),
    };
    let value: Value = figment.extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(ConfigError::Parse("the top level must be a table/object of keys".into())),
    }
}

/// Merges `overlay` onto `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn layer(
    file: Value,
    defaults: Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let mut file = file;
    keys::strip_unsupported(&mut file, "", &mut warnings);
    let mut tree = serde_json::to_value(&defaults).map_err(|e| ConfigError::Parse(e.to_string()))?;
    merge(&mut tree, file);
    keys::apply_env(&mut tree, env, &mut warnings)?;
    check_namespaces(&tree)?;
    let config: Config = serde_path_to_error::deserialize(&tree).map_err(|error| serde_error("", error))?;
    validate(&config)?;
    Ok(Loaded { config, warnings })
}

fn serde_error(prefix: &str, error: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let inner = error.path().to_string();
    let path = match (prefix.is_empty(), inner == ".") {
        (true, true) => String::new(),
        (true, false) => inner,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{inner}"),
    };
    let (key, reason) = keys::explain(&path, &error.inner().to_string());
    invalid(if key.is_empty() { String::from("(top level)") } else { key }, reason)
}

/// Namespace entries are checked one by one before the whole tree: with the flattened options,
/// serde would otherwise name only `channel.namespaces[i]` and not the key inside it.
fn check_namespaces(tree: &Value) -> Result<(), ConfigError> {
    let Some(Value::Array(namespaces)) = tree.get("channel").and_then(|c| c.get("namespaces")) else {
        return Ok(());
    };
    for (i, entry) in namespaces.iter().enumerate() {
        let path = format!("channel.namespaces[{i}]");
        let Value::Object(map) = entry else {
            return Err(invalid(path, format!("must be a table/object with a `name`, not {entry}")));
        };
        match map.get("name") {
            None => return Err(invalid(format!("{path}.name"), "missing; every namespace needs a name")),
            Some(Value::String(_)) => {}
            Some(other) => return Err(invalid(format!("{path}.name"), format!("must be a string, not {other}"))),
        }
        let mut options = map.clone();
        options.remove("name");
        serde_path_to_error::deserialize::<_, NamespaceOptions>(Value::Object(options))
            .map_err(|error| serde_error(&path, error))?;
    }
    Ok(())
}

const PRIORITIES: &[&str] = &["critical", "high", "normal", "low"];

const DELTA_TYPES: &[&str] = &["fossil", "json-patch"];

fn validate_namespace(path: &str, options: &NamespaceOptions) -> Result<(), ConfigError> {
    let history = options.history_size > 0 || !options.history_ttl.is_zero();
    if options.history_size > 0 && options.history_ttl.is_zero() {
        return Err(invalid(format!("{path}.history_ttl"), "must be set when history_size is set"));
    }
    if !options.history_ttl.is_zero() && options.history_size == 0 {
        return Err(invalid(format!("{path}.history_size"), "must be set when history_ttl is set"));
    }
    if !options.history_meta_ttl.is_zero() && options.history_meta_ttl < options.history_ttl {
        return Err(invalid(
            format!("{path}.history_meta_ttl"),
            "must not be shorter than history_ttl (or 0 to keep stream positions)",
        ));
    }
    for (flag, on) in [
        ("force_recovery", options.force_recovery),
        ("allow_recovery", options.allow_recovery),
        ("force_positioning", options.force_positioning),
        ("allow_positioning", options.allow_positioning),
    ] {
        if on && !history {
            return Err(invalid(format!("{path}.{flag}"), "needs history (history_size and history_ttl)"));
        }
    }
    if options.ack_timeout.is_zero() {
        return Err(invalid(format!("{path}.ack_timeout"), "must be greater than zero"));
    }
    if options.require_ack && !history {
        return Err(invalid(format!("{path}.require_ack"), "needs history (history_size and history_ttl)"));
    }
    if !PRIORITIES.contains(&options.default_priority.as_str()) {
        return Err(invalid(
            format!("{path}.default_priority"),
            format!("{:?} is not one of critical, high, normal, low", options.default_priority),
        ));
    }
    let batching = options.batch_max_size > 0 || !options.batch_max_delay.is_zero();
    if batching && (options.batch_max_size == 0 || options.batch_max_delay.is_zero()) {
        return Err(invalid(
            format!("{path}.batch_max_size"),
            "batching needs both batch_max_size and batch_max_delay greater than zero",
        ));
    }
    if options.conflate_key.is_empty() != options.conflate_window.is_zero() {
        return Err(invalid(
            format!("{path}.conflate_key"),
            "conflation needs both conflate_key (a tag name) and conflate_window greater than zero",
        ));
    }
    if !options.channel_regex.is_empty() {
        regex::Regex::new(&options.channel_regex)
            .map_err(|e| invalid(format!("{path}.channel_regex"), format!("not a valid regular expression: {e}")))?;
    }
    for (i, delta) in options.allowed_delta_types.iter().enumerate() {
        if !DELTA_TYPES.contains(&delta.as_str()) {
            return Err(invalid(
                format!("{path}.allowed_delta_types[{i}]"),
                format!("unknown delta type {delta:?} (known: {})", DELTA_TYPES.join(", ")),
            ));
        }
    }
    Ok(())
}

fn validate_engine(engine: &Engine) -> Result<(), ConfigError> {
    if !["memory", "redis"].contains(&engine.kind.as_str()) {
        return Err(invalid("engine.type", format!("{:?} is not memory or redis", engine.kind)));
    }
    if engine.kind != "redis" {
        return Ok(());
    }
    let redis = &engine.redis;
    if !redis.cluster_address.is_empty() {
        return Err(invalid(
            "engine.redis.cluster_address",
            "Redis Cluster is not supported yet; use engine.redis.address",
        ));
    }
    if !redis.sentinel_address.is_empty() {
        return Err(invalid(
            "engine.redis.sentinel_address",
            "Redis Sentinel is not supported yet; use engine.redis.address",
        ));
    }
    match redis.address.as_slice() {
        [] => return Err(invalid("engine.redis.address", "must name the Redis server")),
        [one] if one.trim().is_empty() => return Err(invalid("engine.redis.address", "must name the Redis server")),
        [_] => {}
        _ => {
            return Err(invalid(
                "engine.redis.address",
                "sharding over several Redis servers is not supported yet; give one address",
            ))
        }
    }
    if redis.prefix.is_empty() || redis.prefix.chars().any(char::is_whitespace) {
        return Err(invalid("engine.redis.prefix", "must be a non-empty name without whitespace"));
    }
    for (key, value) in [
        ("engine.redis.connect_timeout", redis.connect_timeout),
        ("engine.redis.io_timeout", redis.io_timeout),
        ("engine.redis.presence_ttl", redis.presence_ttl),
        ("engine.redis.node_ttl", redis.node_ttl),
    ] {
        if value.is_zero() {
            return Err(invalid(key, "must be greater than zero"));
        }
    }
    if redis.pubsub_shards == 0 || redis.pubsub_shards > 64 {
        return Err(invalid("engine.redis.pubsub_shards", "must be between 1 and 64"));
    }
    Ok(())
}

fn validate(config: &Config) -> Result<(), ConfigError> {
    let client = &config.client;
    if client.ping_interval.is_zero() {
        return Err(invalid("client.ping_interval", "must be greater than zero"));
    }
    if !client.pong_timeout.is_zero() && client.pong_timeout >= client.ping_interval {
        return Err(invalid("client.pong_timeout", "must be shorter than client.ping_interval (or 0 to disable)"));
    }
    if client.queue_max_size == 0 {
        return Err(invalid("client.queue_max_size", "must be greater than zero"));
    }
    if client.channel_limit == 0 {
        return Err(invalid("client.channel_limit", "must be greater than zero"));
    }
    if config.websocket.message_size_limit == 0 {
        return Err(invalid("websocket.message_size_limit", "must be greater than zero"));
    }
    if config.websocket.write_timeout.is_zero() {
        return Err(invalid("websocket.write_timeout", "must be greater than zero"));
    }
    if config.channel.max_length == 0 {
        return Err(invalid("channel.max_length", "must be greater than zero"));
    }
    if !["trace", "debug", "info", "warn", "error", "none"].contains(&config.log.level.as_str()) {
        return Err(invalid(
            "log.level",
            format!("{:?} is not one of trace, debug, info, warn, error, none", config.log.level),
        ));
    }
    if !["text", "json"].contains(&config.log.format.as_str()) {
        return Err(invalid("log.format", format!("{:?} is not text or json", config.log.format)));
    }
    if !["redb", "memory"].contains(&config.storage.engine.as_str()) {
        return Err(invalid("storage.engine", format!("{:?} is not redb or memory", config.storage.engine)));
    }
    if !["always", "interval"].contains(&config.storage.fsync.as_str()) {
        return Err(invalid("storage.fsync", format!("{:?} is not always or interval", config.storage.fsync)));
    }
    if config.storage.fsync == "interval" && config.storage.fsync_interval.is_zero() {
        return Err(invalid("storage.fsync_interval", "must be greater than zero with fsync = \"interval\""));
    }
    if config.storage.engine == "redb" && config.storage.data_dir.is_empty() {
        return Err(invalid("storage.data_dir", "must name a directory"));
    }
    validate_engine(&config.engine)?;
    if !config.delivery.expired_channel.is_empty() && config.delivery.expired_channel.chars().any(char::is_whitespace) {
        return Err(invalid("delivery.expired_channel", "a channel name has no whitespace"));
    }
    validate_namespace("channel.without_namespace", &config.channel.without_namespace)?;
    let name_rule =
        regex::Regex::new(r"^[-a-zA-Z0-9_.]{2,}$").map_err(|e| invalid("channel.namespaces", e.to_string()))?;
    for (i, namespace) in config.channel.namespaces.iter().enumerate() {
        let path = format!("channel.namespaces[{i}]");
        if !name_rule.is_match(&namespace.name) {
            return Err(invalid(
                format!("{path}.name"),
                format!("{:?} must be at least 2 characters of letters, digits, '-', '_' or '.'", namespace.name),
            ));
        }
        if config.channel.namespaces[..i].iter().any(|other| other.name == namespace.name) {
            return Err(invalid(format!("{path}.name"), format!("namespace {:?} is defined twice", namespace.name)));
        }
        validate_namespace(&path, &namespace.options)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
