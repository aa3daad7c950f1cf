"""The stand-in lab for tests: a real labgrid coordinator and exporter, two stand-in boards, a staging sshd."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.initramfs import Command, build_initramfs
from tests.requirements import missing, need
from workers.standin.lab import StandinLab, start_standin_lab

ENVIRONMENT = Path(__file__).resolve().parents[2] / "lab" / "envs" / "board.yaml.j2"


def need_standin() -> None:
    need("root", "the stand-in board's QEMU runs as a sandbox uid and its sshd serves a dedicated user")
    need("sandbox-users", "the stand-in board's QEMU takes a qemu slot's uid")
    need("qemu", "the stand-in board is a QEMU")
    need("busybox", "the DUT image is a busybox initramfs")
    if not Path("/usr/sbin/sshd").exists() or shutil.which("rsync") is None:
        missing("image staging needs sshd and rsync: apt-get install openssh-server rsync")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinLab]:
    """Two boards (places standin-0 and standin-1, tags board=standin-x86) behind one coordinator."""
    need_standin()
    lab = start_standin_lab(tmp_path_factory.mktemp("standin"), boards=2)
    saved = os.environ.get("LABGATE_LAB_SSH_CONFIG")
    os.environ.update(lab.worker_env())  # the lab worker's staging key, as its service environment gives it
    try:
        yield lab
    finally:
        if saved is None:
            os.environ.pop("LABGATE_LAB_SSH_CONFIG", None)
        else:
            os.environ["LABGATE_LAB_SSH_CONFIG"] = saved
        lab.stop()


def ktap_initramfs(path: Path, command: str = "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 a'") -> Path:
    return build_initramfs(path, {}, commands=[Command("ktap", command)])
