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
    let embedded = load_embedded(no_env()).unwrap().config;
    assert!(embedded.channel.without_namespace.allow_subscribe_for_client);
    assert_eq!(embedded.channel.without_namespace.history_size, 100);
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
        r#"{"client": {"ping_interval": "1m30s", "pong_timeout": "300ms", "expired_close_delay": 7}}"#,
        Format::Json,
        no_env(),
    )
    .unwrap()
    .config;
    assert_eq!(config.client.ping_interval, Duration::from_secs(90));
    assert_eq!(config.client.pong_timeout, Duration::from_millis(300));
    assert_eq!(config.client.expired_close_delay, Duration::from_secs(7));
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
    let warnings = loaded.warnings.join("\n");
    for key in
        ["admin", "engine", "client.subscribe_to_user_personal_channel", "channel.namespaces[0].subscribe_proxy_name"]
    {
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

#[test]
fn every_key_is_documented() {
    let docs = include_str!("../../../docs/configuration.md");
    let mut leaves = Vec::new();
    keys_of(&serde_json::to_value(Config::default()).unwrap(), String::new(), &mut leaves);
    for key in leaves {
        assert!(all_keys().iter().any(|k| k.key == key), "{key} missing from all_keys()");
        assert!(docs.contains(&format!("`{key}`")), "{key} missing from docs/configuration.md");
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
