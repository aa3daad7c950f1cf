"""Shared fixtures for lab tests: the Debian kernel (fetched once) and process checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.kernel import LabSetupError, fetch_debian_kernel
from tests.requirements import missing, need

KERNEL_CACHE = Path(os.environ.get("LABGATE_TEST_CACHE", "~/.cache/labgate-test")) / "kernel"


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """Debian's stock x86_64 kernel, downloaded once into ~/.cache/labgate-test/kernel."""
    need("qemu", "the lab tests boot a kernel on it")
    try:
        return fetch_debian_kernel(KERNEL_CACHE.expanduser())
    except LabSetupError as exc:  # the message says what is missing and how to get it
        missing(f"no kernel to boot: {exc}")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line contains ``text``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != b"Z":
            found.append((int(entry.name), cmdline))
    return found
