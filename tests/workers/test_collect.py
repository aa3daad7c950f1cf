"""Artifact collection: patterns matched component by component, links and odd files refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.artifacts import ArtifactStore
from workers.collect import ArtifactCaps, collect_artifacts

CAPS = ArtifactCaps(max_file_bytes=1000, max_total_bytes=1500)


@pytest.fixture
def build(tmp_path: Path) -> Path:
    build = tmp_path / "build"
    (build / "tests" / "deep").mkdir(parents=True)
    (build / "tests" / "test_a").write_bytes(b"a" * 10)
    (build / "tests" / "test_b").write_bytes(b"b" * 10)
    (build / "tests" / "test_b").chmod(0o755)
    (build / "tests" / "deep" / "test_c").write_bytes(b"c")
    (build / "kernel.img").write_bytes(b"k" * 100)
    return build


def collect(build: Path, tmp_path: Path, *patterns: str, caps: ArtifactCaps = CAPS):  # type: ignore[no-untyped-def]
    return collect_artifacts(build, patterns, ArtifactStore(tmp_path / "store"), caps)


def test_globs_and_double_star_match_regular_files(build: Path, tmp_path: Path) -> None:
    got = collect(build, tmp_path, "tests/test_*", "**/test_c", "kernel.img")
    assert sorted(got.artifacts) == ["kernel.img", "tests/deep/test_c", "tests/test_a", "tests/test_b"]
    assert got.artifacts["tests/test_b"].mode == 0o755 and got.artifacts["tests/test_a"].mode == 0o644
    assert got.missing == [] and got.refused == []
    store = ArtifactStore(tmp_path / "store")
    assert store.get_bytes(got.artifacts["kernel.img"].digest) == b"k" * 100


def test_a_pattern_matching_nothing_is_missing(build: Path, tmp_path: Path) -> None:
    assert collect(build, tmp_path, "vmlinux").missing == ["vmlinux"]


def test_a_symlinked_file_is_refused_and_not_followed(build: Path, tmp_path: Path) -> None:
    (build / "tests" / "test_shadow").symlink_to("/etc/shadow")
    got = collect(build, tmp_path, "tests/test_*")
    assert "tests/test_shadow" not in got.artifacts
    assert got.refused == ["tests/test_shadow: is a symlink; links are never followed out of the build dir"]


def test_a_symlinked_directory_on_the_way_is_refused(build: Path, tmp_path: Path) -> None:
    (build / "root").symlink_to("/")
    got = collect(build, tmp_path, "root/etc/hostname", "**/hostname")
    assert got.artifacts == {}
    assert got.refused == ["root: is a symlink; links are never followed out of the build dir"]
    assert got.missing == ["**/hostname"]  # ** walks directories, never links


def test_fifos_and_devices_are_refused(build: Path, tmp_path: Path) -> None:
    os.mkfifo(build / "tests" / "test_fifo")
    got = collect(build, tmp_path, "tests/test_fifo")
    assert got.refused == ["tests/test_fifo: is not a regular file"]


def test_size_caps_per_file_and_per_job(build: Path, tmp_path: Path) -> None:
    (build / "big").write_bytes(b"x" * 1001)
    (build / "half1").write_bytes(b"x" * 800)
    (build / "half2").write_bytes(b"x" * 800)
    got = collect(build, tmp_path, "big", "half*")
    assert got.refused == ["big: 1001 bytes is over the per-file cap of 1000 bytes",
                           "half2: would bring the job's artifacts over their cap of 1500 bytes"]  # fmt: skip
    assert list(got.artifacts) == ["half1"]


@pytest.mark.parametrize("pattern", ["../x", "/etc/passwd", "a/../../b", ""])
def test_patterns_that_leave_the_build_dir_are_refused(build: Path, tmp_path: Path, pattern: str) -> None:
    got = collect(build, tmp_path, pattern)
    assert got.artifacts == {} and len(got.refused) == 1 and got.refused[0].startswith(f"pattern {pattern!r}")


def test_a_name_that_is_not_utf8_is_refused_and_the_refusal_can_be_reported(build: Path, tmp_path: Path) -> None:
    (build / "tests").joinpath(os.fsdecode(b"test_\xff")).write_bytes(b"x")
    got = collect(build, tmp_path, "tests/test_*")
    assert "tests/test_\ufffd: its name is not UTF-8" in got.refused
    assert all(name.isprintable() for name in got.artifacts)
    "; ".join(got.refused).encode("utf-8")  # what goes into the result message is plain UTF-8
