"""Fixtures: the real herald binary on an ephemeral port, a `cent.Client` for it, and a raw
WebSocket client speaking the Centrifugo JSON protocol (to have connections to act on)."""
import base64
import hashlib
import hmac
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cent import Client
from websockets.sync.client import connect as ws_connect

REPO = Path(__file__).resolve().parents[2]
HERALD_BIN = os.environ.get("HERALD_BIN", str(REPO / "target" / "debug" / "herald"))
SECRET = "python-interop-secret"
API_KEY = "python-interop-key"

CONFIG = {
    "client": {
        "token": {"hmac_secret_key": SECRET},
        "ping_interval": "1s",
        "pong_timeout": "800ms",
        "allowed_origins": ["*"],
    },
    "http_api": {"key": API_KEY},
    "channel": {
        "without_namespace": {
            "presence": True,
            "join_leave": True,
            "history_size": 100,
            "history_ttl": "300s",
            "allow_recovery": True,
            "force_recovery": True,
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
            "allow_presence_for_subscriber": True,
            "allow_history_for_subscriber": True,
        },
        "namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "60s", "allow_subscribe_for_client": True}],
    },
}


class Herald:
    """A running `herald serve` process."""

    def __init__(self, tmp: Path):
        config = tmp / "config.json"
        config.write_text(json.dumps(CONFIG))
        self.stderr_path = tmp / "stderr.log"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [HERALD_BIN, "serve", "--config", str(config), "--port", "0", "--data-dir", str(tmp / "data")],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        lines: "queue.Queue[str]" = queue.Queue()

        def pump():
            for line in self.process.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 15
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                stderr = self.stderr()
                self.stop()
                raise RuntimeError(f"herald did not report listening: stdout={seen!r} stderr={stderr!r}")
            try:
                line = lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            seen.append(line)
            match = re.search(r"herald: listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        self.http = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.http}/api"
        self.ws_url = f"ws://127.0.0.1:{self.port}/connection/websocket"

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._stderr.close()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256(claims: dict, secret: str = SECRET) -> str:
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


def connection_token(user: str, **claims) -> str:
    return hs256({"sub": user, "exp": int(time.time()) + 3600, **claims})


class RawClient:
    """A minimal Centrifugo protocol v2 JSON client over a WebSocket (for the API to act on)."""

    def __init__(self, url: str, token: str):
        self.ws = ws_connect(url, open_timeout=5, close_timeout=2)
        self._id = 0
        self.pushes: list = []
        reply = self.command("connect", {"token": token, "name": "pytest"})
        assert "connect" in reply, reply
        self.client_id = reply["connect"]["client"]

    def _frames(self, timeout: float):
        """Yields decoded messages until `timeout` seconds pass; answers pings."""
        end = time.monotonic() + timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no expected message in time")
            frame = self.ws.recv(timeout=remaining)
            for line in frame.split("\n"):
                if not line.strip():
                    continue
                message = json.loads(line)
                if message == {}:
                    self.ws.send("{}")  # pong
                    continue
                yield message

    def command(self, method: str, body: dict, timeout: float = 5) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, method: body}))
        for message in self._frames(timeout):
            if message.get("id") == self._id:
                return message
            self.pushes.append(message.get("push", message))

    def push(self, pred, timeout: float = 5) -> dict:
        for index, push in enumerate(self.pushes):
            if pred(push):
                return self.pushes.pop(index)
        for message in self._frames(timeout):
            push = message.get("push", message)
            if pred(push):
                return push
            self.pushes.append(push)

    def wait_closed(self, timeout: float = 5):
        """Reads until the server closes; returns (code, reason)."""
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self._frames(timeout):
                self.pushes.append(message)
        except ConnectionClosed as closed:
            return closed.rcvd.code, closed.rcvd.reason

    def close(self):
        self.ws.close()


@pytest.fixture
def herald():
    tmp = Path(tempfile.mkdtemp(prefix="herald-pytest-"))
    server = Herald(tmp)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def cent_client(herald):
    return Client(herald.api_url, API_KEY, timeout=5)


@pytest.fixture
def raw_clients(herald):
    opened = []

    def open_client(user: str, **claims) -> RawClient:
        client = RawClient(herald.ws_url, connection_token(user, **claims))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        try:
            client.close()
        except Exception:
            pass
