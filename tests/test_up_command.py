"""`labgate up`: web, control and job workers under one supervisor; SIGTERM stops them all."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.processes import children_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "labgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nweb: {{host: 127.0.0.1, port: {port}}}\n")
    up = subprocess.Popen([sys.executable, "-m", "bot.cli", "up", "--config", str(config)], cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and up.poll() is None, "web did not come up"
                time.sleep(0.3)
        assert answer.json() == {"ok": True, "database": "ok"}
        children = children_of(up.pid)
        assert len(children) >= 6  # redis, four workers, web
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert "labgate up: web on" in output
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
