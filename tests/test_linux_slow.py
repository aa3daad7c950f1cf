"""Real Linux: Debian's linux-source-6.1 as a git tree, a one-line patch through `labgate try`,
a sandboxed tinyconfig build, a boot through labgrid, KTAP read back from the DUT runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO_ROOT

LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")


@pytest.mark.slow
def test_linux_tinyconfig_patch_builds_boots_and_reports_ktap(tmp_path: Path) -> None:
    if not LINUX_SOURCE.exists():
        pytest.fail(f"{LINUX_SOURCE} is missing: scripts/setup.sh installs linux-source-6.1")
    tree = tmp_path / "linux"
    prepared = subprocess.run(
        ["sh", str(EXAMPLES / "linux" / "prepare-tree.sh"), str(tree)],
        capture_output=True, text=True, env={**os.environ, "LABGATE_PREPARE_GC": "0"},
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    config = tmp_path / "labgate.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\ncaps: {{max_build_s: 1500, max_job_s: 180}}\n")
    tried = subprocess.run(
        [sys.executable, "-m", "bot.cli", "try", str(tree), "--config", str(config),
         "--patch", str(EXAMPLES / "linux" / "patches" / "banner.patch"), "--timeout", "1800"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    output = tried.stdout + tried.stderr
    assert tried.returncode == 0, output
    assert "build tinyconfig" in output and "qemu-x86_64 boot" in output
    assert "2 pass" in output  # version and banner, read back as KTAP from the booted kernel
    # The console on record is the patched kernel's: its banner carries the patch's marker.
    logs = list((tmp_path / "data" / "artifacts").glob("*/*"))
    assert any(b"labgate-demo" in path.read_bytes() and b"KTAP version 1" in path.read_bytes() for path in logs)
