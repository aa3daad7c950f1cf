"""Real Linux 6.1 tinyconfig through the warm build path (bench/rebuild.py's builds on a tree made from
Debian's linux-source tarball): a cold base build, a one-file patch built warm, the same commit again,
and a comment-only edit built untrusted on a copy, whose binary is the base build's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO_ROOT

LINUX_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")


@pytest.mark.slow
@pytest.mark.needs("root", "the worker runs as root: slot uids, loop disks, binds")
def test_linux_one_file_patch_rebuilds_warm_and_a_comment_only_edit_keeps_the_binary(tmp_path: Path) -> None:
    if not LINUX_SOURCE.exists():
        pytest.fail(f"{LINUX_SOURCE} is missing: scripts/setup.sh installs linux-source-6.1")
    tree = tmp_path / "linux"
    prepared = subprocess.run(["sh", str(EXAMPLES / "linux" / "prepare-tree.sh"), str(tree)], capture_output=True,
                              text=True, env={**os.environ, "LABGATE_PREPARE_GC": "0"})  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    bench = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "rebuild.py"), "--tree", str(tree),
                            "--work", str(tmp_path / "work")], capture_output=True, text=True)  # fmt: skip
    print(bench.stdout)  # the figures, for whoever reads the run: timing is not asserted
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    figures = json.loads(bench.stdout.strip().split("\n")[-1])["figures"]
    assert figures["cold_units"] > 300  # tinyconfig compiles about a thousand units
    # printk.o, and what wraps the changed vmlinux into the bzImage (piggy.o, misc.o, header.o).
    for recompiled in (figures["warm_recompiled"], figures["copy_recompiled"]):
        assert "kernel/printk/printk.o" in recompiled
        assert all(path == "kernel/printk/printk.o" or path.startswith("arch/x86/boot/") for path in recompiled)
    assert figures["comment_only_digest_equal"] is True
    assert figures["noop_recompiled"] == [], "running the config steps again must not rebuild anything"
