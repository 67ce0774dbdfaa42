//! The real `herald` binary: serve, publish, subscribe, token, check-config and shutdown.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::HERALD;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
    url: String,
    /// What the server printed on stdout before its listening line.
    banner: Vec<String>,
    /// Keeps the stdout reader alive so the server never blocks on a full pipe.
    _lines: mpsc::Receiver<String>,
    data_dir: std::path::PathBuf,
}

impl Server {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(HERALD);
        let data_dir = std::env::temp_dir().join(format!("herald-cli-data-{}-{}", std::process::id(), unique()));
        command.arg("serve").arg("--port").arg("0").arg("--data-dir").arg(&data_dir).args(args).stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let common::Listening { child, url, banner, lines } = common::spawn_listening(command, WAIT);
        Self { child, url, banner, _lines: lines, data_dir }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "herald did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The body of a plain HTTP/1.0 GET (the server closes the connection after answering).
fn http_get(base: &str, path: &str) -> String {
    use std::io::Write;
    let address = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Distinct per call within this process, so parallel tests never share a data directory.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Starts `herald subscribe` and returns once it reports its subscription.
fn subscriber(args: &[&str]) -> Child {
    let mut child = Command::new(HERALD)
        .arg("subscribe")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn subscribe");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("subscriber status line");
    assert!(line.contains("subscribed to"), "{line}");
    child
}

/// Everything a finished `herald subscribe` printed, after checking it succeeded.
fn output_of(mut child: Child) -> String {
    let mut output = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut output).expect("read");
    assert!(child.wait().expect("wait").success());
    output
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(HERALD);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("run herald");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[test]
fn help_everywhere() {
    for sub in [
        &["--help"][..],
        &["serve", "--help"],
        &["publish", "--help"],
        &["subscribe", "--help"],
        &["token", "--help"],
        &["check-config", "--help"],
    ] {
        let (ok, stdout, _) = run(sub, &[]);
        assert!(ok && stdout.contains("Usage"), "{sub:?}: {stdout}");
    }
}

#[test]
fn publish_and_subscribe_through_the_binary() {
    let env = [("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", "cli-secret"), ("HERALD_HTTP_API_KEY", "cli-key")];
    let mut server = Server::start(&[], &env);
    let (ok, token, err) = run(&["token", "--user", "42"], &env);
    assert!(ok, "{err}");
    let listening = subscriber(&["news", "--count", "2", "--url", &server.url, "--token", token.trim()]);
    for n in 1..=2 {
        let (ok, out, err) = run(&["publish", "news", &format!(r#"{{"n":{n}}}"#), "--url", &server.url], &env);
        assert!(ok, "publish failed: {out} {err}");
        assert!(out.contains("offset"), "{out}");
    }
    let output = output_of(listening);
    let lines: Vec<serde_json::Value> = output.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{output}");
    assert_eq!(lines[0]["data"], serde_json::json!({"n": 1}));
    assert_eq!(lines[1]["data"], serde_json::json!({"n": 2}));

    // Both publishes went through the durable store's commits, which /metrics counts.
    let metrics = http_get(&server.url, "/metrics");
    let commits: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("herald_store_commit_seconds_count{durable=\"yes\"} "))
        .unwrap_or_else(|| panic!("no durable commit count in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a count");
    assert!(commits >= 2, "{commits} durable commits for two publishes");

    // A wrong API key is refused with a clear message.
    let (ok, _, err) = run(&["publish", "news", "{}", "--url", &server.url, "--api-key", "wrong"], &[]);
    assert!(!ok && err.contains("101"), "{err}");
    assert!(server.terminate().success());
}

#[test]
fn serve_without_secrets_generates_and_prints_them() {
    let mut server = Server::start(&[], &[]);
    let banner = server.banner.join("\n");
    assert!(banner.contains("generated client.token.hmac_secret_key for this run: "), "{banner}");
    assert!(banner.contains("generated http_api.key for this run: "), "{banner}");
    // The printed key works.
    let key =
        banner.lines().find_map(|l| l.strip_prefix("herald: generated http_api.key for this run: ")).expect("key");
    let (ok, out, err) = run(&["publish", "news", "{}", "--url", &server.url, "--api-key", key.trim()], &[]);
    assert!(ok, "{out}{err}");
    assert!(server.terminate().success());
}

#[test]
fn dev_mode_allows_anonymous_subscribe() {
    let mut server = Server::start(&["--dev"], &[]);
    let listening = subscriber(&["open", "--count", "1", "--url", &server.url]);
    let (ok, out, err) = run(&["publish", "open", "[1,2,3]", "--url", &server.url], &[]);
    assert!(ok, "{out}{err}");
    let output = output_of(listening);
    assert!(output.contains("[1,2,3]"), "{output}");
    assert!(server.terminate().success());
}

#[test]
fn token_without_secret_is_an_error() {
    let (ok, _, err) = run(&["token", "--user", "1"], &[("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", "")]);
    assert!(!ok);
    assert!(err.contains("no HMAC secret"), "{err}");
}

#[test]
fn check_config_reports_bad_keys_with_their_path() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"client": {"token": {"hmac_secret_key": "s"}, "ping_interval": "5s", "pong_timeout": "3s"}}"#,
    )
    .unwrap();
    let (ok, out, err) = run(&["check-config", good.to_str().unwrap()], &[]);
    assert!(ok, "{out}{err}");
    let typo = dir.join("typo.json");
    std::fs::write(&typo, r#"{"client": {"pign_interval": "5s"}}"#).unwrap();
    let (ok, _, err) = run(&["check-config", typo.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("client.pign_interval"), "{err}");
    let bad_duration = dir.join("bad.toml");
    std::fs::write(&bad_duration, "[client]\nping_interval = \"25x\"\n").unwrap();
    let (ok, _, err) = run(&["check-config", bad_duration.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains("client.ping_interval"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
