"""What every forge scenario needs around its fake forge: git in the stand-in repository, labgate brought
up from a config file with real workers (and stopped), and waiting for what the forge was asked."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


@contextlib.contextmanager
def running_labgate(config_path: Path) -> Iterator[Services]:
    """labgate as `labgate up` runs it (web aside: the scenarios call its app directly), until the block ends."""
    services = open_services(load_config(config_path), config_path)
    try:
        start_all_workers(services)
        yield services
    finally:
        services.stop()


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 150, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)
