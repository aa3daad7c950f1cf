"""`labgate known-issue add|expire|list|check` through the real command line (main) on SQLite and PostgreSQL:
exit codes, messages naming the argument, config entries read-only, and what a DUT wrote shown escaped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.cli.known_issue import shown
from bot.cli.main import main
from bot.host.config import load_config
from bot.host.stores import open_runtime
from bot.pipelines.known_issues import today_utc
from bot.store import models

TODAY = today_utc()
HOSTILE_TEST = "unit/\x1b[2J\x1b]0;pwned\x07math\u202egnp.exe\rok"
HOSTILE_CRASH = "BUG: \x1b[31mfake\x1b[0m\nlabgate: all passed"


@dataclass
class Cli:
    path: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        """Run `labgate known-issue ARGV -c CONFIG`: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = main(["known-issue", *argv, "-c", str(self.path)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def add(self, issue_id: str = "KI-1", *extra: str, expires: str = "") -> tuple[int, str, str]:
        expires = expires or str(TODAY + timedelta(days=9))
        return self("add", issue_id, "--test", "unit/math.*", "--expires", expires, *extra)

    def stored(self) -> int:
        runtime = open_runtime(load_config(self.path))
        try:
            with runtime.store.session() as session:
                return session.scalar(select(func.count()).select_from(models.KnownIssue)) or 0
        finally:
            runtime.store.engine.dispose()

    def verdict(self, test: str, *, known: str | None, crash: str = "", change: tuple[int, int] = (4, 4),
                base: tuple[int, int] = (4, 0)) -> None:  # fmt: skip
        runtime = open_runtime(load_config(self.path))
        try:
            with runtime.store.session() as session:
                change_row = models.Change(tree=models.Tree(name=f"net-{test!r}", url="u"), source="github",
                                           external_id="1")  # fmt: skip
                pipeline = models.Pipeline(revision=models.Revision(change=change_row, base_ref="main"))
                job = models.Job(pipeline=pipeline, kind="test", name="unit", queue="q", state="done")
                session.add(job)
                session.flush()
                session.add(models.TestVerdict(
                    pipeline_id=pipeline.id, job_id=job.id, test_path=test, device_class="qemu-x86_64",
                    verdict="known-issue" if known else "flaky", evidence=f"known issue {known}", crash_title=crash,
                    change_runs=change[0], change_fails=change[1], base_runs=base[0], base_fails=base[1],
                    known_issue=known, created_at=datetime.now(UTC)))  # fmt: skip
        finally:
            runtime.store.engine.dispose()


@pytest.fixture
def cli(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    config = {
        "data_dir": str(tmp_path / "data"),
        "database_url": database_url,
        "known_issues": [{"id": "CFG-1", "test": "unit/slow.*", "expires": str(TODAY + timedelta(days=30)),
                          "owner": "ops", "link": "https://bugs.example.org/1", "scope": {"arch": "x86_64"}}],
    }  # fmt: skip
    path = tmp_path / "labgate.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    yield Cli(path, capsys)


def test_add_then_list_shows_both_sources_marked(cli: Cli) -> None:
    code, out, _ = cli.add("KI-1", "--log", r"BUG: \w+", "--arch", "arm64", "--config", "arm64", "--owner", "me",
                           "--link", "https://bugs.example.org/2")  # fmt: skip
    assert code == 0
    assert "known issue KI-1 added to the store: arch=arm64; config=arm64; test unit/math.*; log BUG: \\w+" in out
    code, out, _ = cli("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("CFG-1 [config] active, last day ")
    assert "owner ops; https://bugs.example.org/1" in lines[0]
    assert lines[1] == "  arch=x86_64; test unit/slow.*"
    assert lines[2].startswith("KI-1 [store] active")
    assert cli.stored() == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["add", "KI-2", "--test", "unit/*", "--expires", "2026-13-01"], "--expires '2026-13-01': not a date"),
        (["add", "KI-2", "--test", "unit/*", "--expires", str(TODAY - timedelta(days=1))], "--expires: "),
        (["add", "KI-2", "--test", "unit/*", "--expires", str(TODAY), "--log", "(a)\\1"], "--log: "),
        (["add", "../../etc/passwd", "--test", "u/*", "--expires", str(TODAY)], "ID: must be 1-100 of letters"),
        (["add", "a/../../b", "--test", "u/*", "--expires", str(TODAY)], "ID: must not hold '..'"),
        (["add", "KI-2", "--test", "*", "--expires", str(TODAY)], "--test: matches every test"),
        (["add", "KI-2", "--test", "u/*", "--expires", str(TODAY), "--device-class", "q\x1b[2J"], "--device-class: "),
        (["add", "KI-2", "--test", "u/*", "--expires", str(TODAY), "--link", "javascript:x"], "--link: must be"),
        (["add", "KI-2", "--test", "u/*", "--expires", str(TODAY), "--config", "labgate.yaml"], "labgate.yaml is -c"),
        (["add", "cfg-1", "--test", "u/*", "--expires", str(TODAY)], "ID: 'cfg-1' is in labgate.yaml as 'CFG-1'"),
        (["expire", "CFG-1"], "ID: 'CFG-1' is kept in config: edit labgate.yaml"),
        (["expire", "KI-404"], "ID: no known issue 'KI-404' in the store"),
        (["check", "--without", "KI-404"], "ID: no known issue 'KI-404'"),
        (["list", "--runs", "0"], "--runs 0: must be 1 to 10000"),
    ],
)
def test_bad_input_exits_2_naming_the_argument(cli: Cli, argv: list[str], says: str) -> None:
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert says in err
    assert err.startswith(f"labgate known-issue {argv[0]}: ")
    assert "\x1b" not in err
    assert cli.stored() == 0


def test_a_missing_required_argument_is_argparses_exit_2(cli: Cli) -> None:
    with pytest.raises(SystemExit) as raised:
        cli("add", "KI-1", "--expires", str(TODAY))
    assert raised.value.code == 2
    assert "--test" in cli.capsys.readouterr().err


def test_expiry_today_is_accepted_and_expire_ends_it(cli: Cli) -> None:
    assert cli.add("KI-1", expires=str(TODAY))[0] == 0
    code, out, _ = cli("expire", "KI-1")
    assert (code, out) == (0, "known issue KI-1 expired: it matches nothing from now on\n")
    assert f"KI-1 [store] expired early on {TODAY}" in cli("list")[1]
    assert cli.add("KI-1")[0] == 2  # never reused


def test_list_marks_a_stale_entry(cli: Cli) -> None:
    for n in range(3):
        cli.verdict(f"unit/slow.t{n}", known=None, change=(4, 1))
    _, out, _ = cli("list", "--runs", "3")
    assert "CFG-1 [config] active" in out
    assert "  stale: matched nothing in the last 3 runs" in out
    assert "stale" not in cli("list", "--runs", "4")[1]


def test_attack_hostile_test_names_and_crash_titles_are_shown_escaped(cli: Cli) -> None:
    assert cli.add("KI-1")[0] == 0
    cli.verdict(HOSTILE_TEST, known="KI-1", crash=HOSTILE_CRASH)
    for argv in (["check"], ["check", "--without", "KI-1"]):
        code, out, _ = cli(*argv)
        assert code == 0
        assert not any(char in out for char in "\x1b\x07\r\u202e"), out
        assert "unit/\\x1b[2J\\x1b]0;pwned\\x07math\\u202egnp.exe\\rok" in out
        assert "BUG: \\x1b[31mfake\\x1b[0m\\nlabgate: all passed" in out
        assert "\nlabgate: all passed" not in out  # a forged line of our own output


def test_attack_a_config_entry_with_terminal_escapes_is_listed_escaped(cli: Cli) -> None:
    config = json.loads(cli.path.read_text())
    config["known_issues"].append({"id": "CFG-2", "test": "unit/\x1b[2J*", "owner": "ops\x1b]0;x\x07",
                                   "crash": "\u202eBUG", "expires": str(TODAY)})  # fmt: skip
    cli.path.write_text(json.dumps(config))
    code, out, _ = cli("list")
    assert code == 0
    assert not any(char in out for char in "\x1b\x07\u202e"), out
    assert "CFG-2 [config] active, last day " in out and "owner ops\\x1b]0;x\\x07" in out
    assert "test unit/\\x1b[2J*; crash \\u202eBUG" in out


def test_check_without_lists_what_would_have_failed(cli: Cli) -> None:
    assert cli.add("KI-1")[0] == 0
    cli.verdict("unit/math.mul", known="KI-1")
    cli.verdict("unit/math.div", known="KI-1", change=(1, 1), base=(0, 0))
    cli.verdict("unit/math.sub", known="KI-1", base=(4, 4))
    code, out, _ = cli("check", "--without", "KI-1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "without KI-1, of its 3 most recent verdicts:"
    assert lines[1] == "  would fail the check (new): 1"
    assert "unit/math.mul on qemu-x86_64" in lines[2] and lines[2].endswith(": failed 4/4 with the change, 0/4 on base")
    assert lines[3] == "  would be candidates, decided by re-runs: 1"
    assert "unit/math.div" in lines[4] and "(3 more runs with the change, 4 on base)" in lines[4]
    assert lines[5] == "  would not fail the check: 1 (1 pre-existing)"
    code, out, _ = cli("check")
    assert "KI-1 [store]: 3 recent verdicts" in out and "CFG-1 [config]: 0 recent verdicts" in out


def test_shown_cuts_a_huge_value() -> None:
    assert len(shown("x" * 100_000)) == 300
    assert shown("a\tb\u2028c") == "a\\tb\\u2028c"
