"""Tests for lab.kernel: resolving, caching and overriding Debian's stock kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lab.kernel import KERNEL_ENV, LabSetupError, fetch_debian_kernel, parse_image_dependency

APT_CACHE_DEPENDS = """linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
"""


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No apt on PATH: any attempt to download shows up as a LabSetupError."""
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_parse_image_dependency_finds_the_versioned_package() -> None:
    assert parse_image_dependency(APT_CACHE_DEPENDS) == "linux-image-6.1.0-56-amd64"


def test_parse_image_dependency_explains_an_empty_answer() -> None:
    with pytest.raises(LabSetupError, match="apt-get update"):
        parse_image_dependency("linux-image-amd64\n")


def test_explicit_kernel_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    monkeypatch.setenv(KERNEL_ENV, str(kernel))
    assert fetch_debian_kernel(tmp_path / "cache") == kernel


def test_explicit_kernel_that_is_missing_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KERNEL_ENV, str(tmp_path / "missing"))
    with pytest.raises(LabSetupError, match=KERNEL_ENV):
        fetch_debian_kernel(tmp_path / "cache")


@pytest.mark.usefixtures("no_tools")
def test_cached_kernel_is_returned_without_apt(tmp_path: Path) -> None:
    boot = tmp_path / "cache" / "linux-image-6.1.0-56-amd64" / "root" / "boot"
    boot.mkdir(parents=True)
    (boot / "vmlinuz-6.1.0-56-amd64").write_bytes(b"kernel")
    (tmp_path / "cache" / "CURRENT").write_text("linux-image-6.1.0-56-amd64\n")

    assert fetch_debian_kernel(tmp_path / "cache") == boot / "vmlinuz-6.1.0-56-amd64"


@pytest.mark.usefixtures("no_tools")
def test_without_apt_the_error_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(LabSetupError, match=f"apt-cache.*{KERNEL_ENV}"):
        fetch_debian_kernel(tmp_path / "cache")


def test_real_fetch_is_cached(debian_kernel: Path) -> None:
    if os.environ.get(KERNEL_ENV):
        pytest.skip(f"the session kernel came from ${KERNEL_ENV}")
    assert debian_kernel.name.startswith("vmlinuz-")
    assert debian_kernel.stat().st_size > 1_000_000
    started = time.monotonic()
    assert fetch_debian_kernel(debian_kernel.parents[3]) == debian_kernel
    assert time.monotonic() - started < 0.05
