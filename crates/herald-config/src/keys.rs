//! The key list: supported keys with their documentation, Centrifugo keys Herald does not
//! support yet, and `HERALD_*` environment variables.

use crate::{embedded_defaults, Config, ConfigError};
use serde_json::{Map, Value};

/// One supported key, for `docs/configuration.md` and `herald check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Full key path, like `client.ping_interval`.
    pub key: &'static str,
    /// The value with `--config` (Centrifugo's default), as written in a file: `25s`, `128`,
    /// `""`, `[]`, `true`; `(table)` for a section.
    pub default: String,
    /// The value in the embedded defaults (`herald serve` without `--config`).
    pub embedded: String,
    /// One line on what the key does.
    pub meaning: &'static str,
}

/// Every supported key with its defaults. Namespace options are listed once, under
/// `channel.without_namespace`; they apply the same way inside each `channel.namespaces[]` entry.
pub fn all_keys() -> Vec<KeyDoc> {
    let default = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let embedded = serde_json::to_value(embedded_defaults()).unwrap_or(Value::Null);
    KEYS.iter()
        .map(|&(key, meaning)| KeyDoc {
            key,
            default: shown(lookup(&default, key)),
            embedded: shown(lookup(&embedded, key)),
            meaning,
        })
        .collect()
}

fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, part| node.get(part))
}

/// A value as the documentation shows it.
fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "(none)".to_owned(),
        Some(Value::Object(_)) => "(table)".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "\"\"".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

const fn doc(key: &'static str, meaning: &'static str) -> (&'static str, &'static str) {
    (key, meaning)
}

const KEYS: &[(&str, &str)] = &[
    doc("http_server.address", "address to bind"),
    doc("http_server.port", "port to bind; 0 picks a free one"),
    doc("client.insecure", "development mode: anyone connects, subscribes, publishes, reads history and presence"),
    doc("client.token.hmac_secret_key", "secret for HS256/384/512 connection and subscription tokens"),
    doc("client.token.rsa_public_key", "PEM public key for RS256/384/512 tokens"),
    doc("client.token.ecdsa_public_key", "PEM public key for ES256/384 tokens"),
    doc("client.token.audience", "required `aud` claim, when set"),
    doc("client.token.issuer", "required `iss` claim, when set"),
    doc("client.allowed_origins", "browser origins allowed to connect (`*` wildcards); same-host origins always are"),
    doc("client.ping_interval", "how often the server pings each connection"),
    doc("client.pong_timeout", "how long after a ping the client must have answered (0 disables)"),
    doc("client.channel_limit", "subscriptions per connection"),
    doc("client.queue_max_size", "bytes queued for one connection before it is disconnected as slow (3008)"),
    doc(
        "client.publish_backpressure_wait",
        "longest a publish waits while a quarter of the connections (and at least 16) have a quarter of their queue limit queued; 0 turns it off",
    ),
    doc("client.connection_limit", "connections per node; 0 is unlimited"),
    doc("client.user_connection_limit", "connections per user per node; 0 is unlimited"),
    doc("client.expired_close_delay", "grace after a connection token expires before disconnecting with 3005"),
    doc("client.expired_sub_close_delay", "grace after a subscription token expires before disconnecting with 3006"),
    doc("client.history_max_publication_limit", "most publications one history call returns"),
    doc("client.recovery_max_publication_limit", "most publications a recovery returns; more means recovered: false"),
    doc("client.allow_anonymous_connect_without_token", "let clients without a token connect as anonymous"),
    doc("client.disallow_anonymous_connection_tokens", "refuse tokens with an empty `sub`"),
    doc("channel.max_length", "longest channel name in bytes"),
    doc("channel.without_namespace", "options of channels without a namespace (the keys below)"),
    doc("channel.namespaces", "list of namespaces: `name` plus the same options"),
    doc("channel.without_namespace.presence", "keep presence (who is subscribed)"),
    doc("channel.without_namespace.join_leave", "send join/leave pushes to subscribers that ask for them"),
    doc("channel.without_namespace.force_push_join_leave", "send join/leave pushes to every subscriber"),
    doc(
        "channel.without_namespace.history_size",
        "publications kept per channel for history and recovery; 0 disables history",
    ),
    doc("channel.without_namespace.history_ttl", "how long publications are kept"),
    doc(
        "channel.without_namespace.history_meta_ttl",
        "how long a stream's offset and epoch outlive its last publication; 0 keeps them",
    ),
    doc("channel.without_namespace.force_recovery", "make every subscription recoverable"),
    doc("channel.without_namespace.allow_recovery", "let clients ask for recovery"),
    doc("channel.without_namespace.force_positioning", "make every subscription positioned"),
    doc("channel.without_namespace.allow_positioning", "let clients ask for positioning"),
    doc(
        "channel.without_namespace.allow_subscribe_for_client",
        "authenticated clients may subscribe without a subscription token",
    ),
    doc("channel.without_namespace.allow_subscribe_for_anonymous", "anonymous clients may subscribe"),
    doc("channel.without_namespace.allow_publish_for_client", "clients may publish"),
    doc("channel.without_namespace.allow_publish_for_subscriber", "subscribers of the channel may publish"),
    doc(
        "channel.without_namespace.allow_publish_for_anonymous",
        "anonymous clients may publish (with one of the above)",
    ),
    doc("channel.without_namespace.allow_presence_for_client", "clients may read presence"),
    doc("channel.without_namespace.allow_presence_for_subscriber", "subscribers may read presence"),
    doc(
        "channel.without_namespace.allow_presence_for_anonymous",
        "anonymous clients may read presence (with one of the above)",
    ),
    doc("channel.without_namespace.allow_history_for_client", "clients may read history"),
    doc("channel.without_namespace.allow_history_for_subscriber", "subscribers may read history"),
    doc(
        "channel.without_namespace.allow_history_for_anonymous",
        "anonymous clients may read history (with one of the above)",
    ),
    doc(
        "channel.without_namespace.allow_user_limited_channels",
        "`name#user1,user2` channels are open to the listed users",
    ),
    doc("channel.without_namespace.channel_regex", "channel names (after `ns:`) must match this regular expression"),
    doc(
        "channel.without_namespace.allow_tags_filter",
        "let subscribers pass a tag filter (`tf`) and receive only the publications whose tags match",
    ),
    doc(
        "channel.without_namespace.allowed_delta_types",
        "delta types subscribers may ask for: `fossil`, `json-patch` (checked and accepted; Herald sends full publications)",
    ),
    doc("channel.without_namespace.require_ack", "Herald: live recipients must acknowledge every publication (`herald.ack`); unacknowledged ones are redelivered"),
    doc("channel.without_namespace.ack_timeout", "Herald: wait before the first redelivery; doubles with each retry, plus jitter"),
    doc("channel.without_namespace.ack_max_retries", "Herald: redeliveries before a delivery is recorded as expired"),
    doc(
        "channel.without_namespace.default_priority",
        "Herald: priority of publications that name none (critical, high, normal, low); slow clients shed low, then normal",
    ),
    doc(
        "channel.without_namespace.batch_max_size",
        "publications held per channel before they go out together in one frame (with batch_max_delay; 0 is off)",
    ),
    doc(
        "channel.without_namespace.batch_max_delay",
        "longest a publication is held for a batch (with batch_max_size; 0 is off)",
    ),
    doc(
        "channel.without_namespace.conflate_key",
        "Herald: tag naming what a publication updates; within conflate_window subscribers get only the latest per value",
    ),
    doc(
        "channel.without_namespace.conflate_window",
        "Herald: conflation window (with conflate_key); the first update goes out at once, the latest at the window's end",
    ),
    doc("http_api.key", "API key for /api (X-API-Key or Authorization: apikey)"),
    doc("http_api.insecure", "accept /api calls without a key (development)"),
    doc("log.level", "trace, debug, info, warn, error or none"),
    doc("log.format", "text or json (Herald's own key)"),
    doc("shutdown.timeout", "how long a graceful shutdown may take"),
    doc("websocket.message_size_limit", "largest frame a client may send, in bytes"),
    doc("websocket.write_timeout", "a write to a client that takes longer ends the connection"),
    doc("prometheus.enabled", "serve /metrics"),
    doc("health.enabled", "serve /health"),
    doc("storage.engine", "`redb` keeps history, positions and idempotency keys on disk across restarts; `memory` does not"),
    doc("storage.data_dir", "directory of the embedded store (`herald serve --data-dir`)"),
    doc("storage.fsync", "`always`: a publish is answered once durable; `interval`: flushed every fsync_interval (a crash may lose that window)"),
    doc("storage.fsync_interval", "flush period with fsync = interval"),
    doc("engine.type", "`memory`: one node (history per `storage.engine`); `redis`: nodes share streams, history, presence and cursors through Redis"),
    doc("engine.redis", "the Redis engine (the keys below)"),
    doc("engine.redis.address", "the Redis (or Valkey) server: `redis://host:port`, `host:port`, `rediss://` or `unix://`; one server"),
    doc("engine.redis.prefix", "start of every key and Pub/Sub channel, so clusters (and tests) can share a server"),
    doc("engine.redis.connect_timeout", "how long connecting to Redis may take"),
    doc("engine.redis.io_timeout", "how long one Redis command may take before it fails as unavailable"),
    doc("engine.redis.db", "Redis database number"),
    doc("engine.redis.user", "Redis ACL user"),
    doc("engine.redis.password", "Redis password"),
    doc("engine.redis.cluster_address", "Redis Cluster seeds: not supported yet, loading fails when set"),
    doc("engine.redis.sentinel_address", "Sentinel addresses: not supported yet, loading fails when set"),
    doc("engine.redis.sentinel_user", "Sentinel ACL user (for when Sentinel is supported)"),
    doc("engine.redis.sentinel_password", "Sentinel password (for when Sentinel is supported)"),
    doc("engine.redis.sentinel_master_name", "name of the master the Sentinels watch (for when Sentinel is supported)"),
    doc("engine.redis.sentinel_client_name", "Sentinel connection name (for when Sentinel is supported)"),
    doc("engine.redis.presence_ttl", "a presence entry expires this long after its node last refreshed it (every third of it): a dead node's members go"),
    doc("engine.redis.pubsub_shards", "Herald: Pub/Sub connections per node; each channel is hashed to one"),
    doc("engine.redis.node_ttl", "Herald: a node stays in `info` this long after its last heartbeat (sent every third of it)"),
    doc("delivery.expired_channel", "channel that receives an event for every expired acknowledged delivery; empty: none"),
];

/// Centrifugo v6 sections and keys Herald does not support yet: loading removes them with a
/// warning, so a Centrifugo configuration works as is. A section (like `engine`) covers
/// everything inside it. Taken from Centrifugo v6's configuration types (`internal/config`,
/// `internal/configtypes`); a few v5 top-level names are kept so old files warn instead of failing.
pub(crate) const UNSUPPORTED: &[&str] = &[
    // Top-level sections.
    "broker",
    "presence_manager",
    "map_broker",
    "redis",
    "rpc",
    "proxies",
    "unified_proxy",
    "grpc_api",
    "consumers",
    "sse",
    "http_stream",
    "webtransport",
    "uni_sse",
    "uni_http_stream",
    "uni_websocket",
    "uni_grpc",
    "emulation",
    "admin",
    "swagger",
    "debug",
    "dev",
    "init",
    "opentelemetry",
    "graphite",
    "usage_stats",
    "node",
    "shared_poll",
    "pid_file",
    "enable_unreleased_features",
    // Centrifugo v5 top-level names.
    "tls",
    "tls_autocert",
    "tls_external",
    "http3",
    // engine.redis.
    "engine.redis.client_name",
    "engine.redis.force_resp2",
    "engine.redis.tls",
    "engine.redis.sentinel_tls",
    "engine.redis.history_use_lists",
    "engine.redis.presence_hash_field_ttl",
    "engine.redis.presence_user_mapping",
    // http_server.
    "http_server.internal_address",
    "http_server.internal_port",
    "http_server.tls",
    "http_server.tls_autocert",
    "http_server.tls_external",
    "http_server.internal_tls",
    "http_server.http3",
    "http_server.handler_prefix",
    // log.
    "log.file",
    // client.
    "client.proxy",
    "client.subscription_token",
    "client.token.jwks_public_endpoint",
    "client.token.audience_regex",
    "client.token.issuer_regex",
    "client.token.user_id_claim",
    "client.stale_close_delay",
    "client.presence_update_interval",
    "client.concurrency",
    "client.channel_position_check_delay",
    "client.channel_position_max_time_lag",
    "client.connection_rate_limit",
    "client.connect_include_server_time",
    "client.insecure_skip_token_signature_verify",
    "client.user_id_http_header",
    "client.subscribe_to_user_personal_channel",
    "client.connect_code_to_unidirectional_disconnect",
    // channel.
    "channel.proxy",
    "channel.history_meta_ttl",
    "channel.private_prefix",
    "channel.namespace_boundary",
    "channel.user_boundary",
    "channel.user_separator",
    "channel.publication_data_format",
    // http_api.
    "http_api.disabled",
    "http_api.handler_prefix",
    "http_api.error_mode",
    "http_api.external",
    // websocket.
    "websocket.disabled",
    "websocket.handler_prefix",
    "websocket.compression",
    "websocket.compression_min_size",
    "websocket.compression_level",
    "websocket.read_buffer_size",
    "websocket.use_write_buffer_pool",
    "websocket.write_buffer_size",
    // prometheus, health, shutdown.
    "prometheus.handler_prefix",
    "prometheus.instrument_http_handlers",
    "health.handler_prefix",
    "shutdown.termination_delay",
];

/// Per-namespace Centrifugo options (in `channel.without_namespace` and each
/// `channel.namespaces[]` entry) Herald does not support yet.
pub(crate) const UNSUPPORTED_NAMESPACE: &[&str] = &[
    "force_recovery_mode",
    "auto_cache_recovery",
    "delta_publish",
    "publication_data_format",
    "subscription_type",
    "map",
    "shared_poll",
    "map_clients_presence_channel_prefix",
    "map_users_presence_channel_prefix",
    "subscribe_proxy_enabled",
    "subscribe_proxy_name",
    "publish_proxy_enabled",
    "publish_proxy_name",
    "sub_refresh_proxy_enabled",
    "sub_refresh_proxy_name",
    "subscribe_stream_proxy_enabled",
    "subscribe_stream_proxy_name",
    "subscribe_stream_proxy_bidirectional",
    "subscribe_stream_bidirectional",
    "keep_latest_publication",
    "allow_channel_compaction",
    "batch_flush_latest",
    "shared_position_sync",
];

fn is_namespace_options(path: &str) -> bool {
    path == "channel.without_namespace" || (path.starts_with("channel.namespaces[") && path.ends_with(']'))
}

/// Removes the unsupported keys from `value` (found at `path`), warning about each.
pub fn strip_unsupported(value: &mut Value, path: &str, warnings: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let namespace = is_namespace_options(path);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                let unsupported = UNSUPPORTED.contains(&child.as_str())
                    || (namespace && UNSUPPORTED_NAMESPACE.contains(&key.as_str()));
                if unsupported {
                    map.remove(&key);
                    warnings.push(format!("key `{child}` is a Centrifugo option Herald does not support yet; ignored"));
                } else if let Some(inner) = map.get_mut(&key) {
                    strip_unsupported(inner, &child, warnings);
                }
            }
        }
        Value::Array(items) if path == "channel.namespaces" => {
            for (i, item) in items.iter_mut().enumerate() {
                strip_unsupported(item, &format!("{path}[{i}]"), warnings);
            }
        }
        _ => {}
    }
}

/// Variables that share the prefix but are not configuration.
const NOT_CONFIG: &[&str] = &["HERALD_REQUIRE_SERVICES", "HERALD_TOKEN"];

fn leaves(value: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                leaves(child, child_path, out);
            }
        }
        _ => out.push((path, value.clone())),
    }
}

/// The scalar (and list) keys that environment variables can set, with a sample value of their type.
fn env_keys() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Ok(tree) = serde_json::to_value(Config::default()) {
        leaves(&tree, String::new(), &mut out);
    }
    out
}

fn env_name(path: &str) -> String {
    format!("HERALD_{}", path.to_ascii_uppercase().replace('.', "_"))
}

fn parse_env(key: &str, name: &str, sample: &Value, raw: &str) -> Result<Value, ConfigError> {
    let bad = |reason: String| ConfigError::Invalid { key: format!("{key} (from {name})"), reason };
    match sample {
        Value::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" | "" => Ok(Value::Bool(false)),
            other => Err(bad(format!("{other:?} is not a boolean"))),
        },
        Value::Number(_) => raw
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| bad(format!("{raw:?} is not a non-negative integer"))),
        Value::Array(_) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                serde_json::from_str(trimmed).map_err(|e| bad(format!("not a JSON list: {e}")))
            } else {
                Ok(Value::Array(
                    trimmed
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.into()))
                        .collect(),
                ))
            }
        }
        _ => Ok(Value::String(raw.to_owned())),
    }
}

fn set(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    for part in path.split('.') {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map.entry(part.to_owned()).or_insert(Value::Null);
    }
    *node = value;
}

/// Applies `HERALD_*` variables to the configuration tree.
pub fn apply_env(
    tree: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let keys = env_keys();
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with("HERALD_")).collect();
    vars.sort();
    for (name, raw) in vars {
        if NOT_CONFIG.contains(&name.as_str()) {
            continue;
        }
        match keys.iter().find(|(path, _)| env_name(path) == name) {
            Some((path, sample)) => {
                let value = parse_env(path, &name, sample, &raw)?;
                set(tree, path, value);
            }
            None => warnings.push(format!("environment variable {name} names no configuration key; ignored")),
        }
    }
    Ok(())
}

/// Makes serde's messages name the full key and say what to do.
pub fn explain(path: &str, reason: &str) -> (String, String) {
    let Some(rest) = reason.strip_prefix("unknown field `") else {
        return (path.to_owned(), reason.to_owned());
    };
    let field = rest.split('`').next().unwrap_or_default();
    // With flattened namespace options the path stops at the namespace; name the key itself.
    let (parent, full) = if path.ends_with(&format!(".{field}")) || path == field {
        (path.rsplit_once('.').map_or("", |(parent, _)| parent).to_owned(), path.to_owned())
    } else {
        (path.to_owned(), if path.is_empty() || path == "." { field.to_owned() } else { format!("{path}.{field}") })
    };
    let documented_parent =
        if parent.starts_with("channel.namespaces[") { "channel.without_namespace".to_owned() } else { parent };
    let suggestion = KEYS
        .iter()
        .filter_map(|(key, _)| key.rsplit_once('.').filter(|(p, _)| *p == documented_parent).map(|(_, last)| last))
        .chain(
            documented_parent
                .is_empty()
                .then_some([
                    "http_server",
                    "client",
                    "channel",
                    "http_api",
                    "log",
                    "shutdown",
                    "websocket",
                    "prometheus",
                    "health",
                    "storage",
                    "delivery",
                    "engine",
                ])
                .into_iter()
                .flatten(),
        )
        .filter(|known| edit_distance(known, field) <= 2)
        .min_by_key(|known| edit_distance(known, field));
    let reason = match suggestion {
        Some(s) => format!("unknown key (did you mean `{s}`?)"),
        None => "unknown key".to_owned(),
    };
    (full, reason)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
