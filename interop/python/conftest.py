"""Starts the real herald binary for the `cent` interop tests."""
import json
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERALD = os.environ.get("HERALD_BIN", str(ROOT / "target" / "debug" / "herald"))
API_KEY = "cent-interop-key"
SECRET = "cent-interop-secret"


@pytest.fixture
def herald():
    config = {
        "client": {"token": {"hmac_secret_key": SECRET}},
        "http_api": {"key": API_KEY},
        "channel": {
            "without_namespace": {
                "presence": True,
                "history_size": 100,
                "history_ttl": "300s",
                "allow_subscribe_for_client": True,
                "allow_presence_for_subscriber": True,
                "allow_history_for_subscriber": True,
            }
        },
        "storage": {"engine": "memory"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        process = subprocess.Popen(
            [HERALD, "serve", "--config", str(path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        found = {}
        ready = threading.Event()

        def read_stdout():
            for line in process.stdout:
                match = re.search(r"listening on (http://\S+)", line)
                if match and not ready.is_set():
                    found["base"] = match.group(1)
                    ready.set()

        threading.Thread(target=read_stdout, daemon=True).start()
        if not ready.wait(15):
            process.kill()
            raise RuntimeError("herald did not start")
        try:
            yield found["base"]
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
