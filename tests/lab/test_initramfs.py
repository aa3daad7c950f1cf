"""Tests for lab.initramfs: the cpio newc image read back entry by entry."""

from __future__ import annotations

import gzip
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import initramfs
from lab.errors import LabSetupError
from lab.initramfs import DUT_DIR, Command, StoredFile, build_initramfs, render_commands

BUSYBOX = Path("/bin/busybox")
pytestmark = pytest.mark.needs("busybox", "the image's base holds the host's static busybox")


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    uid: int
    gid: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes


def parse_newc(raw: bytes) -> list[CpioEntry]:
    """Every entry of a sequence of newc archives (as the kernel reads them)."""
    entries: list[CpioEntry] = []
    pos = 0
    while pos < len(raw):
        if raw[pos] == 0:  # zero padding between archives
            pos += 1
            continue
        assert raw[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(raw[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        _ino, mode, uid, gid, _nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, _ = fields
        name_at = pos + 110
        name = raw[name_at : name_at + namesize - 1].decode()
        assert raw[name_at + namesize - 1] == 0
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        data = raw[data_at : data_at + size]
        pos = data_at + size + (-size % 4)
        if name != "TRAILER!!!":
            entries.append(CpioEntry(name, mode, uid, gid, mtime, (rmaj, rmin), data))
    return entries


def read_image(path: Path) -> dict[str, CpioEntry]:
    entries = parse_newc(gzip.decompress(path.read_bytes()))
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "an entry appears twice"
    return {e.name: e for e in entries}


def test_base_image_has_busybox_device_nodes_init_and_runner(tmp_path: Path) -> None:
    image = read_image(build_initramfs(tmp_path / "i.cpio.gz", {}))

    console = image["dev/console"]
    assert stat.S_ISCHR(console.mode) and console.rdev == (5, 1)
    assert stat.S_IMODE(console.mode) == 0o600
    null = image["dev/null"]
    assert stat.S_ISCHR(null.mode) and null.rdev == (1, 3)
    assert image["bin/busybox"].data == BUSYBOX.read_bytes()
    assert image["init"].data == (DUT_DIR / "init").read_bytes()
    assert image["usr/bin/labgate-run"].data == (DUT_DIR / "labgate-run").read_bytes()
    for name in ("bin/busybox", "init", "usr/bin/labgate-run"):
        assert stat.S_ISREG(image[name].mode) and stat.S_IMODE(image[name].mode) == 0o755
    for name in ("proc", "sys", "dev", "tmp", "usr/bin", "labgate/artifacts"):
        assert stat.S_ISDIR(image[name].mode), name
    assert all(e.mtime == 0 and e.uid == 0 and e.gid == 0 for e in image.values())


def test_artifacts_keep_exec_bits_and_symlinks_stay_links(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "sub").mkdir(parents=True)
    (build / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (build / "run.sh").chmod(0o700)
    (build / "data.txt").write_text("data\n")
    (build / "data.txt").chmod(0o600)
    (build / "sub" / "inner").write_bytes(b"x")
    os.symlink("/etc/hostname", build / "sub" / "link")

    image = read_image(
        build_initramfs(
            tmp_path / "i.cpio.gz",
            {
                "/labgate/artifacts/run.sh": build / "run.sh",
                "/labgate/artifacts/data.txt": build / "data.txt",
                "/labgate/artifacts/deep/tree": build / "sub",
                "/labgate/artifacts/blob": b"bytes",
            },
        )
    )

    assert stat.S_IMODE(image["labgate/artifacts/run.sh"].mode) == 0o755
    assert image["labgate/artifacts/run.sh"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(image["labgate/artifacts/data.txt"].mode) == 0o644
    assert stat.S_ISDIR(image["labgate/artifacts/deep"].mode)
    assert stat.S_ISDIR(image["labgate/artifacts/deep/tree"].mode)
    assert image["labgate/artifacts/deep/tree/inner"].data == b"x"
    link = image["labgate/artifacts/deep/tree/link"]
    assert stat.S_ISLNK(link.mode) and link.data == b"/etc/hostname"
    assert image["labgate/artifacts/blob"].data == b"bytes"


def test_entries_come_parents_first_in_sorted_order(tmp_path: Path) -> None:
    files = {"/labgate/artifacts/b/x": b"1", "/labgate/artifacts/a-b": b"2", "/z/y": b"3"}
    raw = gzip.decompress(build_initramfs(tmp_path / "i.cpio.gz", files).read_bytes())
    names = [e.name for e in parse_newc(raw)]
    seen: set[str] = set()
    for name in names:
        parent = os.path.dirname(name)
        assert not parent or parent in seen, f"{name} comes before its directory"
        seen.add(name)
    run_part = names[names.index("labgate/artifacts/a-b") :]
    assert run_part == sorted(run_part, key=lambda n: n.split("/"))


def test_output_is_deterministic(tmp_path: Path) -> None:
    artifact = tmp_path / "tool"
    artifact.write_bytes(b"\x7fELF...")
    files = {"/labgate/artifacts/tool": artifact}
    commands = [Command("one", "./tool"), Command("two", "exit 4", timeout_s=5)]

    first = build_initramfs(tmp_path / "a.cpio.gz", files, commands=commands).read_bytes()
    initramfs._base_archive.cache_clear()
    os.utime(artifact, (1, 1))
    second = build_initramfs(tmp_path / "b.cpio.gz", files, commands=commands).read_bytes()

    assert first == second
    assert first[3] == 0, "gzip header must carry no file name"


def test_commands_become_an_index_and_one_file_each(tmp_path: Path) -> None:
    commands = [Command("math", "./test_math"), Command("multi line", "a\nb", timeout_s=30, root=True)]
    image = read_image(build_initramfs(tmp_path / "i.cpio.gz", {}, commands=commands))

    assert image["labgate/commands"].data == b"math\t0\tdut\nmulti line\t30\troot\n"
    assert image["labgate/run/1"].data == b"./test_math"
    assert image["labgate/run/2"].data == b"a\nb"
    assert render_commands([]) == {"/labgate/commands": b""}


def test_the_base_image_knows_the_dut_user_and_keeps_artifacts_read_only(tmp_path: Path) -> None:
    artifact = tmp_path / "test_x"
    artifact.write_bytes(b"#!/bin/sh\n")
    stored = StoredFile(artifact, executable=True)
    image = read_image(build_initramfs(tmp_path / "i.cpio.gz", {"/labgate/artifacts/tests/test_x": stored}))
    assert b"\ndut:x:1000:1000:" in image["etc/passwd"].data
    entry = image["labgate/artifacts/tests/test_x"]
    assert entry.mode & 0o777 == 0o755 and (entry.uid, entry.gid) == (0, 0)  # the DUT user may run, not write
    assert image["labgate/artifacts/tests"].mode & 0o777 == 0o755 and image["run"].mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "files",
    [
        {"labgate/artifacts/relative": b""},
        {"/labgate/../etc/passwd": b""},
        {"/init": b"replaced"},
        {"/": b""},
    ],
)
def test_bad_image_paths_are_refused(tmp_path: Path, files: dict[str, bytes]) -> None:
    with pytest.raises(ValueError):
        build_initramfs(tmp_path / "i.cpio.gz", files)


@pytest.mark.parametrize("name", ["", "has\ttab", "has\nnewline", "has # hash"])
def test_bad_command_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        render_commands([Command(name, "true")])


def test_missing_busybox_says_which_file(tmp_path: Path) -> None:
    with pytest.raises(LabSetupError, match="nope"):
        build_initramfs(tmp_path / "i.cpio.gz", {}, busybox=tmp_path / "nope")


def test_dynamic_busybox_is_refused(tmp_path: Path) -> None:
    dynamic = Path(sys.executable).resolve()  # any dynamically linked ELF will do
    with pytest.raises(LabSetupError, match="busybox-static"):
        build_initramfs(tmp_path / "i.cpio.gz", {}, busybox=dynamic)
