"""What every forge scenario needs around its fake forge: git in the stand-in repository, labgate brought
up from a config file with real workers (and stopped), and waiting for what the forge was asked."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Dev", "-c", "user.email=dev@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


def push_change_head(origin: Path, ref: str, patch: Path | None, *, on: str) -> str:
    """A change's head in the stand-in repository under `ref` (a forge's refs/pull/N/head,
    refs/merge-requests/N/head): `patch` applied on `on`, or an empty commit; its SHA."""
    git(origin, "checkout", "-q", "--detach", on)
    if patch is not None:
        git(origin, "am", "-q", str(patch))
    else:
        git(origin, "commit", "-q", "--allow-empty", "-m", f"empty {uuid.uuid4().hex[:6]}")
    sha = git(origin, "rev-parse", "HEAD")
    git(origin, "update-ref", ref, sha)
    git(origin, "checkout", "-q", "main")
    return sha


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
