"""A test that lacks a host tool or the third-party fixtures skips here and fails under CI=true, saying what and how."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest
from tests.requirements import HOST, HostRequirement, need
from tests.shared_fixtures import SHARED_FIXTURES_ENV, shared_fixture, shared_fixture_names

REPO_ROOT = Path(__file__).resolve().parents[1]
ABSENT = HostRequirement("frobnicator", lambda: False, "apt-get install frobnicator")
# The modules that read ../shared/fixtures, and so the ones a clone without it must still collect and pass.
CONFORMANCE = ["tests/bot/forges/github/test_sansio_conformance.py", "tests/workers/test_patchcheck.py"]


@pytest.fixture
def absent_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HOST, "frobnicator", ABSENT)


@pytest.mark.usefixtures("absent_tool")
@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_a_missing_tool_skips_outside_ci_and_says_what_why_and_how(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as info:
        need("frobnicator", "it frobs")
    assert str(info.value) == "frobnicator is missing (it frobs); to install: apt-get install frobnicator"


@pytest.mark.usefixtures("absent_tool")
@pytest.mark.parametrize("ci", ["true", "TRUE", "1", "yes"])
def test_under_ci_a_missing_tool_fails(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as info:
        need("frobnicator", "it frobs")
    assert str(info.value) == "CI=true: frobnicator is missing (it frobs); to install: apt-get install frobnicator"


def test_a_present_tool_lets_the_test_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HOST, "frobnicator", HostRequirement("frobnicator", lambda: True, "-"))
    monkeypatch.setenv("CI", "true")
    need("frobnicator", "it frobs")


def test_an_unknown_requirement_is_a_typo_not_a_skip() -> None:
    with pytest.raises(KeyError, match="unknown host requirement 'qemu-system'; known: busybox, qemu, root"):
        need("qemu-system", "x")


def test_every_requirement_says_how_to_install_it() -> None:
    for requirement in HOST.values():
        assert requirement.what and ("apt-get install" in requirement.install or "setup.sh" in requirement.install
                                     or "as root" in requirement.install)  # fmt: skip


@pytest.mark.usefixtures("absent_tool")
def test_the_needs_marker_is_checked_when_the_test_runs(request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("CI", "true")
    request.node.add_marker(pytest.mark.needs("frobnicator", "it frobs"))
    with pytest.raises(pytest.fail.Exception, match="CI=true: frobnicator is missing"):
        conftest.pytest_runtest_setup(request.node)


def test_missing_shared_fixtures_skip_naming_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SHARED_FIXTURES_ENV, str(tmp_path / "nowhere"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"../shared/fixtures missing at {tmp_path}/nowhere/github/openapi"):
        shared_fixture("github/openapi")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as info:
        shared_fixture("github/openapi")
    assert str(info.value).startswith(f"CI=true: ../shared/fixtures missing at {tmp_path}/nowhere/github/openapi")
    assert shared_fixture_names("github/octokit-webhooks", "*/*.json") == ["(no github/octokit-webhooks fixtures)"]


def test_present_shared_fixtures_are_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "github" / "octokit-webhooks" / "ping").mkdir(parents=True)
    (tmp_path / "github" / "octokit-webhooks" / "ping" / "payload.json").write_text("{}")
    monkeypatch.setenv(SHARED_FIXTURES_ENV, str(tmp_path))
    monkeypatch.setenv("CI", "true")
    assert shared_fixture("github/octokit-webhooks") == tmp_path / "github" / "octokit-webhooks"
    assert shared_fixture_names("github/octokit-webhooks", "*/*.json") == ["ping/payload.json"]


def _pytest(*args: str, ci: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, SHARED_FIXTURES_ENV: str(tmp_path / "no-shared"), "CI": "true" if ci else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_without_shared_fixtures_the_whole_suite_collects(tmp_path: Path) -> None:
    """Nothing reads ../shared/fixtures at import: a clone elsewhere collects every module."""
    done = _pytest("--collect-only", "tests", ci=True, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert " tests collected" in done.stdout.splitlines()[-1] and "error" not in done.stdout.splitlines()[-1]


def test_without_shared_fixtures_the_conformance_modules_collect_and_skip(tmp_path: Path) -> None:
    """What a clone elsewhere sees: every test collected, the conformance ones skipped with the path."""
    done = _pytest(*CONFORMANCE, ci=False, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all(f"../shared/fixtures missing at {tmp_path}/no-shared/" in line for line in skips), skips
    assert " passed" in done.stdout.splitlines()[-1] and " failed" not in done.stdout.splitlines()[-1]


def test_without_shared_fixtures_ci_fails_naming_the_path(tmp_path: Path) -> None:
    done = _pytest(*CONFORMANCE, ci=True, tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"CI=true: ../shared/fixtures missing at {tmp_path}/no-shared/github/octokit-webhooks" in done.stdout
    assert f"CI=true: ../shared/fixtures missing at {tmp_path}/no-shared/mbox/b4/" in done.stdout
    assert "skipped" not in done.stdout.splitlines()[-1]
