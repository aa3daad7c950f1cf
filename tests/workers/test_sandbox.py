"""The build sandbox: no network, read-only system, only named paths writable, caps enforced."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from workers.sandbox import SandboxOutcome, run_sandboxed


def _run(tmp_path: Path, script: str, timeout_s: float = 20, max_log: int = 1 << 20) -> tuple[SandboxOutcome, str]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    log = tmp_path / "log"
    outcome = run_sandboxed(["sh", "-c", script], cwd=work, writable=[work], env={"X": "1"},
                            timeout_s=timeout_s, log_path=log, max_log_bytes=max_log)  # fmt: skip
    return outcome, log.read_text()


def test_host_loopback_listener_is_unreachable(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED || echo REFUSED"
    outcome, log = _run(tmp_path, f"bash -c '{script}' 2>&1")
    time.sleep(0.2)
    listener.close()
    assert "REFUSED" in log and "CONNECTED" not in log
    assert accepted == []


def test_only_named_paths_are_writable(tmp_path: Path) -> None:
    outcome, log = _run(tmp_path, "touch ok && touch /usr/nope; touch /etc/nope; echo X=$X HOME=$HOME")
    assert (tmp_path / "work" / "ok").exists()
    assert log.count("Read-only file system") == 2
    assert "X=1 HOME=/tmp" in log


def test_timeout_kills_the_whole_sandbox(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, log = _run(tmp_path, "sleep 100 & sleep 100", timeout_s=1)
    assert outcome.timed_out and time.monotonic() - started < 10
    assert "killed after the 1 s cap" in log


def test_log_is_capped(tmp_path: Path) -> None:
    outcome, log = _run(tmp_path, "yes | head -c 100000", max_log=1000)
    assert outcome.log_truncated
    assert "log cut at 1000 bytes" in log and len(log) < 1200


def test_exit_status_is_reported(tmp_path: Path) -> None:
    outcome, _ = _run(tmp_path, "exit 3")
    assert outcome.exit_code == 3 and not outcome.timed_out
