use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn error_of(text: &str, format: Format) -> String {
    load_str(text, format, no_env()).expect_err("must be rejected").to_string()
}

#[test]
fn defaults_are_centrifugo_defaults() {
    let config = load(None, no_env()).unwrap().config;
    assert_eq!(config.http_server.port, 8000);
    assert_eq!(config.client.ping_interval, Duration::from_secs(25));
    assert_eq!(config.client.pong_timeout, Duration::from_secs(8));
    assert_eq!(config.client.channel_limit, 128);
    assert!(!config.channel.without_namespace.allow_subscribe_for_client);
    assert_eq!(config, Config::default());
    let embedded = load_embedded(no_env()).unwrap().config;
    assert_eq!(embedded, embedded_defaults());
    let top = &embedded.channel.without_namespace;
    assert!(top.allow_subscribe_for_client && top.allow_history_for_subscriber && top.allow_presence_for_subscriber);
    assert!(top.presence && top.join_leave && top.allow_recovery && top.allow_positioning);
    assert!(!top.force_recovery && !top.allow_publish_for_client);
    assert_eq!((top.history_size, top.history_ttl), (100, Duration::from_secs(300)));
    assert!(embedded.validate().is_ok());
}

#[test]
fn environment_applies_to_the_embedded_defaults() {
    let env = vec![
        ("HERALD_HTTP_SERVER_PORT".to_owned(), "0".to_owned()),
        ("HERALD_CHANNEL_WITHOUT_NAMESPACE_HISTORY_SIZE".to_owned(), "7".to_owned()),
        ("HERALD_CHANNEL_WITHOUT_NAMESPACE_ALLOWED_DELTA_TYPES".to_owned(), "fossil".to_owned()),
        ("PATH".to_owned(), "/usr/bin".to_owned()),
    ];
    let loaded = load_embedded(env).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.http_server.port, 0);
    let top = &loaded.config.channel.without_namespace;
    assert_eq!(top.history_size, 7);
    assert_eq!(top.history_ttl, Duration::from_secs(300), "the rest of the embedded defaults stay");
    assert_eq!(top.allowed_delta_types, vec!["fossil"]);
    let bad = vec![("HERALD_CHANNEL_WITHOUT_NAMESPACE_HISTORY_TTL".to_owned(), "0".to_owned())];
    let error = load_embedded(bad).unwrap_err().to_string();
    assert!(error.contains("channel.without_namespace.history_ttl"), "{error}");
}

#[test]
fn the_three_formats() {
    let toml = "[client]\nping_interval = \"5s\"\npong_timeout = \"3s\"\n[http_api]\nkey = \"k\"\n";
    let yaml = "client:\n  ping_interval: 5s\n  pong_timeout: 3s\nhttp_api:\n  key: k\n";
    let json = r#"{"client": {"ping_interval": "5s", "pong_timeout": "3s"}, "http_api": {"key": "k"}}"#;
    for (text, format) in [(toml, Format::Toml), (yaml, Format::Yaml), (json, Format::Json)] {
        let config = load_str(text, format, no_env()).unwrap().config;
        assert_eq!(config.client.ping_interval, Duration::from_secs(5), "{format:?}");
        assert_eq!(config.client.pong_timeout, Duration::from_secs(3));
        assert_eq!(config.http_api.key, "k");
    }
}

#[test]
fn durations_in_every_spelling() {
    let config = load_str(
        r#"{"client": {"ping_interval": "1m30s", "pong_timeout": "300ms", "expired_close_delay": 7, "publish_backpressure_wait": "0s"}}"#,
        Format::Json,
        no_env(),
    )
    .unwrap()
    .config;
    assert_eq!(config.client.ping_interval, Duration::from_secs(90));
    assert_eq!(config.client.pong_timeout, Duration::from_millis(300));
    assert_eq!(config.client.expired_close_delay, Duration::from_secs(7));
    assert_eq!(config.client.publish_backpressure_wait, Duration::ZERO, "zero turns backpressure off");
}

#[test]
fn unknown_keys_fail_with_their_path() {
    let error = error_of(r#"{"client": {"pign_interval": "5s"}}"#, Format::Json);
    assert!(error.contains("client.pign_interval"), "{error}");
    assert!(error.contains("did you mean `ping_interval`"), "{error}");
    let error = error_of(
        r#"{"channel": {"namespaces": [{"name": "ok"}, {"name": "chat", "histroy_size": 10}]}}"#,
        Format::Json,
    );
    assert!(error.contains("channel.namespaces[1].histroy_size"), "{error}");
    let error = error_of("typo = 1\n", Format::Toml);
    assert!(error.contains("typo"), "{error}");
}

#[test]
fn bad_values_fail_with_their_path_and_reason() {
    let error = error_of("[client]\nping_interval = \"25x\"\n", Format::Toml);
    assert!(error.contains("client.ping_interval") && error.contains("invalid duration"), "{error}");
    let error = error_of(r#"{"http_server": {"port": "eighty"}}"#, Format::Json);
    assert!(error.contains("http_server.port"), "{error}");
    let error = error_of(r#"{"client": {"ping_interval": "5s", "pong_timeout": "10s"}}"#, Format::Json);
    assert!(error.contains("client.pong_timeout"), "{error}");
    let error = error_of(r#"{"channel": {"namespaces": [{"name": "a b"}]}}"#, Format::Json);
    assert!(error.contains("channel.namespaces[0].name"), "{error}");
    let error = error_of(r#"{"channel": {"namespaces": [{"name": "dup"}, {"name": "dup"}]}}"#, Format::Json);
    assert!(error.contains("defined twice"), "{error}");
    let error = error_of(r#"{"channel": {"without_namespace": {"history_size": 10}}}"#, Format::Json);
    assert!(error.contains("channel.without_namespace.history_ttl"), "{error}");
    let error = error_of(r#"{"channel": {"without_namespace": {"channel_regex": "("}}}"#, Format::Json);
    assert!(error.contains("channel_regex"), "{error}");
    let error = error_of(r#"{"channel": {"without_namespace": {"allowed_delta_types": ["zip"]}}}"#, Format::Json);
    assert!(error.contains("allowed_delta_types[0]"), "{error}");
    let error = error_of(r#"{"log": {"level": "loud"}}"#, Format::Json);
    assert!(error.contains("log.level"), "{error}");
}

#[test]
fn a_centrifugo_v6_config_loads_with_warnings() {
    let text = r#"{
      "client": {
        "token": {"hmac_secret_key": "secret"},
        "allowed_origins": ["http://localhost:3000"],
        "subscribe_to_user_personal_channel": {"enabled": true}
      },
      "http_api": {"key": "api-key"},
      "admin": {"enabled": true, "password": "p", "secret": "s"},
      "engine": {"type": "redis", "redis": {"address": "redis://localhost:6379"}},
      "channel": {
        "without_namespace": {"presence": true},
        "namespaces": [
          {"name": "chat", "presence": true, "join_leave": true, "force_push_join_leave": true,
           "history_size": 10, "history_ttl": "300s", "force_recovery": true,
           "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true,
           "subscribe_proxy_name": "p"}
        ]
      }
    }"#;
    let loaded = load_str(text, Format::Json, no_env()).unwrap();
    let chat = loaded.config.namespace_options("chat").unwrap();
    assert_eq!(chat.history_size, 10);
    assert!(chat.force_recovery);
    assert_eq!(loaded.config.client.token.hmac_secret_key, "secret");
    assert_eq!(loaded.config.engine.kind, "redis");
    assert_eq!(loaded.config.engine.redis.address, vec!["redis://localhost:6379"]);
    let warnings = loaded.warnings.join("\n");
    assert!(!warnings.contains("`engine"), "engine.type and engine.redis.address are supported: {warnings}");
    for key in ["admin", "client.subscribe_to_user_personal_channel", "channel.namespaces[0].subscribe_proxy_name"] {
        assert!(warnings.contains(&format!("`{key}`")), "no warning for {key}: {warnings}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        ("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY".to_owned(), "from-env".to_owned()),
        ("HERALD_HTTP_SERVER_PORT".to_owned(), "9001".to_owned()),
        ("HERALD_CLIENT_INSECURE".to_owned(), "true".to_owned()),
        ("HERALD_CLIENT_PING_INTERVAL".to_owned(), "5s".to_owned()),
        ("HERALD_CLIENT_PONG_TIMEOUT".to_owned(), "2s".to_owned()),
        ("HERALD_CLIENT_ALLOWED_ORIGINS".to_owned(), "http://a, http://b".to_owned()),
        ("HERALD_CHANNEL_NAMESPACES".to_owned(), r#"[{"name": "env", "presence": true}]"#.to_owned()),
        ("HERALD_NOT_A_KEY".to_owned(), "1".to_owned()),
        ("HERALD_REQUIRE_SERVICES".to_owned(), "1".to_owned()),
    ];
    let loaded = load_str("[client.token]\nhmac_secret_key = \"from-file\"\n", Format::Toml, env).unwrap();
    let config = loaded.config;
    assert_eq!(config.client.token.hmac_secret_key, "from-env");
    assert_eq!(config.http_server.port, 9001);
    assert!(config.client.insecure);
    assert_eq!(config.client.ping_interval, Duration::from_secs(5));
    assert_eq!(config.client.allowed_origins, vec!["http://a", "http://b"]);
    assert!(config.namespace_options("env").unwrap().presence);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("HERALD_NOT_A_KEY"));

    let bad = vec![("HERALD_HTTP_SERVER_PORT".to_owned(), "abc".to_owned())];
    let error = load(None, bad).unwrap_err().to_string();
    assert!(error.contains("http_server.port") && error.contains("HERALD_HTTP_SERVER_PORT"), "{error}");
}

#[test]
fn files_by_extension() {
    let dir = std::env::temp_dir().join(format!("herald-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.yaml");
    std::fs::write(&file, "http_server:\n  port: 8123\n").unwrap();
    assert_eq!(load(Some(&file), no_env()).unwrap().config.http_server.port, 8123);
    let file = dir.join("c.ini");
    std::fs::write(&file, "x").unwrap();
    assert!(load(Some(&file), no_env()).unwrap_err().to_string().contains("extension"));
    assert!(load(Some(&dir.join("missing.toml")), no_env()).unwrap_err().to_string().contains("no such file"));
    let _ = std::fs::remove_dir_all(&dir);
}

const DOCS: &str = include_str!("../../../docs/configuration.md");

/// The cells of the table row documenting `key`.
fn doc_row(key: &str) -> Option<Vec<String>> {
    let start = format!("| `{key}` |");
    let line = DOCS.lines().find(|line| line.starts_with(&start))?;
    Some(line.trim_matches('|').split(" | ").map(|cell| cell.trim().to_owned()).collect())
}

#[test]
fn every_key_is_documented_with_its_defaults() {
    let mut leaves = Vec::new();
    keys_of(&serde_json::to_value(Config::default()).unwrap(), String::new(), &mut leaves);
    let keys = all_keys();
    for key in &leaves {
        assert!(keys.iter().any(|k| k.key == key), "{key} missing from all_keys()");
    }
    for doc in &keys {
        let row = doc_row(doc.key).unwrap_or_else(|| panic!("{} has no row in docs/configuration.md", doc.key));
        assert_eq!(row.len(), 4, "row of {}: {row:?}", doc.key);
        let shown = |value: &str| if value.starts_with('(') { value.to_owned() } else { format!("`{value}`") };
        assert_eq!(row[1], shown(&doc.default), "default of {} in docs/configuration.md", doc.key);
        let embedded = if doc.embedded == doc.default { String::new() } else { shown(&doc.embedded) };
        if doc.default != "(table)" {
            assert_eq!(row[2], embedded, "embedded default of {} in docs/configuration.md", doc.key);
        }
    }
    assert!(keys.iter().any(|k| k.key == "client.ping_interval" && k.default == "25s"));
    assert!(keys.iter().any(|k| k.key == "channel.without_namespace.history_size" && k.embedded == "100"));
}

#[test]
fn every_ignored_centrifugo_key_is_documented() {
    let section = DOCS.split("## Centrifugo keys ignored with a warning").nth(1).expect("the section exists");
    for key in keys::UNSUPPORTED.iter().chain(keys::UNSUPPORTED_NAMESPACE) {
        assert!(section.contains(&format!("`{key}`")), "{key} missing from the ignored keys in the docs");
    }
}

fn keys_of(value: &Value, path: String, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match child {
                Value::Object(inner) if !inner.is_empty() => keys_of(child, child_path, out),
                _ => out.push(child_path),
            }
        }
    }
}

#[test]
fn namespace_errors_name_the_key_inside_the_namespace() {
    let cases = [
        (
            r#"[{"name": "ok"}, {"name": "ab", "history_size": "ten"}]"#,
            "channel.namespaces[1].history_size",
            "invalid type",
        ),
        (
            r#"[{"name": "ab", "history_size": 1, "history_ttl": "5x"}]"#,
            "channel.namespaces[0].history_ttl",
            "invalid duration",
        ),
        (r#"[{"name": "ab", "presence": 1}]"#, "channel.namespaces[0].presence", "boolean"),
        (r#"[{"presence": true}]"#, "channel.namespaces[0].name", "missing"),
        (r#"[{"name": 5}]"#, "channel.namespaces[0].name", "string"),
        (r#"["chat"]"#, "channel.namespaces[0]", "name"),
        (r#"[{"name": "ab", "presense": true}]"#, "channel.namespaces[0].presense", "did you mean `presence`"),
    ];
    for (namespaces, key, reason) in cases {
        let text = format!(r#"{{"channel": {{"namespaces": {namespaces}}}}}"#);
        let error = error_of(&text, Format::Json);
        assert!(error.starts_with(&format!("{key}: ")) && error.contains(reason), "{namespaces}: {error}");
    }
}

#[test]
fn recovery_and_positioning_need_history() {
    for flag in ["force_recovery", "allow_recovery", "force_positioning", "allow_positioning"] {
        let text = format!(r#"{{"channel": {{"namespaces": [{{"name": "ab", "{flag}": true}}]}}}}"#);
        let error = error_of(&text, Format::Json);
        assert!(error.contains(&format!("channel.namespaces[0].{flag}")) && error.contains("history"), "{error}");
        let text = format!(
            r#"{{"channel": {{"namespaces": [{{"name": "ab", "{flag}": true, "history_size": 5, "history_ttl": "1m"}}]}}}}"#
        );
        assert!(load_str(&text, Format::Json, no_env()).is_ok(), "{flag} with history");
    }
}

#[test]
fn history_meta_ttl_outlives_history_ttl() {
    let text =
        r#"{"channel": {"without_namespace": {"history_size": 5, "history_ttl": "10m", "history_meta_ttl": "5m"}}}"#;
    assert!(error_of(text, Format::Json).contains("channel.without_namespace.history_meta_ttl"));
    let text =
        r#"{"channel": {"without_namespace": {"history_size": 5, "history_ttl": "10m", "history_meta_ttl": "720h"}}}"#;
    let config = load_str(text, Format::Json, no_env()).unwrap().config;
    assert_eq!(config.channel.without_namespace.history_meta_ttl, Duration::from_secs(720 * 3600));
}

#[test]
fn validate_catches_changes_made_after_loading() {
    let mut config = embedded_defaults();
    assert!(config.validate().is_ok());
    config.log.level = "loud".into();
    assert!(config.validate().unwrap_err().to_string().starts_with("log.level: "));
    let mut config = Config::default();
    config.client.pong_timeout = Duration::ZERO;
    assert!(config.validate().is_ok(), "a pong timeout of 0 disables the pong check");
    config.client.ping_interval = Duration::ZERO;
    assert!(config.validate().unwrap_err().to_string().starts_with("client.ping_interval: "));
    let mut config = Config::default();
    config.http_server.port = 0;
    assert!(config.validate().is_ok(), "port 0 picks a free port");
}

#[test]
fn durations_serialize_as_strings_that_load_back() {
    let text = r#"{"client": {"ping_interval": "1m30s", "pong_timeout": "300ms"}, "shutdown": {"timeout": 0}}"#;
    let config = load_str(text, Format::Json, no_env()).unwrap().config;
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(value["client"]["ping_interval"], "1m30s");
    assert_eq!(value["client"]["pong_timeout"], "300ms");
    assert_eq!(value["shutdown"]["timeout"], "0s");
    let again = load_str(&value.to_string(), Format::Json, no_env()).unwrap().config;
    assert_eq!(again, config);
}

#[test]
fn centrifugo_yaml_and_toml_configs_load_with_warnings() {
    let yaml = r#"
http_server:
  port: 8000
  internal_port: "9000"
log:
  level: debug
client:
  token:
    hmac_secret_key: secret
    jwks_public_endpoint: https://example.com/jwks
  allowed_origins: ["https://*.example.com"]
  ping_interval: 25s
  pong_timeout: 8s
engine:
  type: redis
  redis:
    address: redis://localhost:6379
    presence_user_mapping: true
channel:
  history_meta_ttl: 720h
  without_namespace:
    allow_subscribe_for_client: true
    force_recovery_mode: cache
  namespaces:
    - name: news
      history_size: 10
      history_ttl: 300s
      allow_recovery: true
      allowed_delta_types: ["fossil"]
      delta_publish: true
prometheus:
  enabled: true
  instrument_http_handlers: true
"#;
    let loaded = load_str(yaml, Format::Yaml, no_env()).unwrap();
    assert_eq!(loaded.config.client.allowed_origins, vec!["https://*.example.com"]);
    assert_eq!(loaded.config.log.level, "debug");
    assert!(loaded.config.namespace_options("news").unwrap().allow_recovery);
    let warnings = loaded.warnings.join("\n");
    for key in [
        "http_server.internal_port",
        "client.token.jwks_public_endpoint",
        "engine.redis.presence_user_mapping",
        "channel.history_meta_ttl",
        "channel.without_namespace.force_recovery_mode",
        "channel.namespaces[0].delta_publish",
        "prometheus.instrument_http_handlers",
    ] {
        assert!(warnings.contains(&format!("`{key}`")), "no warning for {key}: {warnings}");
    }
    assert_eq!(loaded.warnings.len(), 7, "{warnings}");

    let toml = r#"
[client.token]
hmac_secret_key = "secret"

[http_api]
key = "api-key"

[[consumers]]
name = "outbox"
type = "postgresql"

[[channel.namespaces]]
name = "chat"
presence = true
subscribe_proxy_enabled = true
"#;
    let loaded = load_str(toml, Format::Toml, no_env()).unwrap();
    assert_eq!(loaded.config.http_api.key, "api-key");
    assert!(loaded.config.namespace_options("chat").unwrap().presence);
    assert!(loaded.config.namespace_options("nope").is_none());
    assert!(std::ptr::eq(loaded.config.namespace_options("").unwrap(), &loaded.config.channel.without_namespace));
    let warnings = loaded.warnings.join("\n");
    assert!(warnings.contains("`consumers`") && warnings.contains("`channel.namespaces[0].subscribe_proxy_enabled`"));
}

#[test]
fn the_documented_example_loads() {
    let example = DOCS.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a TOML example");
    let loaded = load_str(example, Format::Toml, no_env()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let orders = loaded.config.namespace_options("orders").expect("the example's second namespace");
    assert!(orders.require_ack && orders.allow_recovery);
    assert_eq!(loaded.config.log.format, "json");
}

#[test]
fn the_redis_engine_keys_load_and_are_checked() {
    let env = vec![
        ("HERALD_ENGINE_TYPE".to_owned(), "redis".to_owned()),
        ("HERALD_ENGINE_REDIS_ADDRESS".to_owned(), "127.0.0.1:6390".to_owned()),
        ("HERALD_ENGINE_REDIS_PREFIX".to_owned(), "test-1".to_owned()),
        ("HERALD_ENGINE_REDIS_PRESENCE_TTL".to_owned(), "2s".to_owned()),
    ];
    let config = load(None, env).unwrap().config;
    assert_eq!(config.engine.kind, "redis");
    assert_eq!(config.engine.redis.address, vec!["127.0.0.1:6390"]);
    assert_eq!(config.engine.redis.prefix, "test-1");
    assert_eq!(config.engine.redis.presence_ttl, Duration::from_secs(2));

    let listed =
        load_str(r#"{"engine": {"type": "redis", "redis": {"address": ["redis://a:1"]}}}"#, Format::Json, no_env());
    assert_eq!(listed.unwrap().config.engine.redis.address, vec!["redis://a:1"]);
    for (text, key) in [
        (r#"{"engine": {"type": "etcd"}}"#, "engine.type"),
        (
            r#"{"engine": {"type": "redis", "redis": {"address": ["redis://a:1", "redis://b:1"]}}}"#,
            "engine.redis.address",
        ),
        (
            r#"{"engine": {"type": "redis", "redis": {"cluster_address": ["redis://a:1"]}}}"#,
            "engine.redis.cluster_address",
        ),
        (
            r#"{"engine": {"type": "redis", "redis": {"sentinel_address": "redis://a:1"}}}"#,
            "engine.redis.sentinel_address",
        ),
        (r#"{"engine": {"type": "redis", "redis": {"prefix": ""}}}"#, "engine.redis.prefix"),
        (r#"{"engine": {"type": "redis", "redis": {"presence_ttl": "0s"}}}"#, "engine.redis.presence_ttl"),
        (r#"{"engine": {"type": "redis", "redis": {"pubsub_shards": 0}}}"#, "engine.redis.pubsub_shards"),
        (r#"{"engine": {"redis": {"adress": "x"}}}"#, "engine.redis.adress"),
    ] {
        let error = error_of(text, Format::Json);
        assert!(error.contains(key), "{text}: {error}");
    }
}
