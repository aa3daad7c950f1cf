"""Debian's linux-source-6.1 made into a git tree carrying the example plan, for slow tests on real Linux
(examples/linux/prepare-tree.sh; about a minute here). CI has no prepared tree lying around: each slow
test makes its own, or reads one a developer names read-only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")


def prepare_linux_tree(dest: Path) -> Path:
    """A fresh tree at dest (which must not exist); the test fails when the tarball is missing."""
    if not LINUX_SOURCE.exists():
        pytest.fail(f"{LINUX_SOURCE} is missing: scripts/setup.sh installs linux-source-6.1")
    prepared = subprocess.run(["sh", str(EXAMPLES / "linux" / "prepare-tree.sh"), str(dest)], capture_output=True,
                              text=True, env={**os.environ, "LABGATE_PREPARE_GC": "0"})  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    return dest


_SHARED: dict[str, Path] = {}


def shared_linux_tree(factory: pytest.TempPathFactory) -> Path:
    """One prepared tree per test process, for every slow test that only reads it (clones it, or hands it to
    `labgate try` as the repository): CI makes it once, not once per test module."""
    if "tree" not in _SHARED:
        _SHARED["tree"] = prepare_linux_tree(factory.mktemp("linux-tree") / "linux")
    return _SHARED["tree"]
