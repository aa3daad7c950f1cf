"""examples/hello on arm64 end to end: `labgate try` with patches/arm64.patch on config/labgate.arm64.yaml.

The patch gives the plan an arm64 cross build and the same tests on the qemu-arm64 class; the x86_64
test keeps running beside it. What a user runs, as the example's README says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLES, make_git_repo
from tests.requirements import missing

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_hello_example_passes_on_arm64_through_labgate_try(tmp_path: Path) -> None:
    for tool in ("qemu-system-aarch64", "aarch64-linux-gnu-gcc", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            missing(f"{tool} is missing; scripts/setup.sh installs it")
    if os.geteuid() != 0:
        missing("labgate try's workers confine builds and QEMU as slot uids: run as root")
    config = yaml.safe_load((REPO / "config" / "labgate.arm64.yaml").read_text())
    config["data_dir"] = str(tmp_path / "data")
    (tmp_path / "labgate.yaml").write_text(yaml.safe_dump(config))
    hello = make_git_repo(EXAMPLES / "hello", tmp_path / "hello")
    argv = [sys.executable, "-m", "bot.cli", "try", str(hello), "--config", str(tmp_path / "labgate.yaml"),
            "--patch", str(EXAMPLES / "hello" / "patches" / "arm64.patch")]  # fmt: skip
    tried = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=900)
    out = " ".join(tried.stdout.split())
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "test qemu-arm64 unit-arm64: pass" in out and "test qemu-x86_64 unit: pass" in out
    assert "build arm64: pass" in out
