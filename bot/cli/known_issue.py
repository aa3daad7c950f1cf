"""`labgate known-issue add|expire|list|check`: the known-issue registry from the operator's shell."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from bot.core.known_issues import CONTROL_CHARACTERS, KnownIssueEntry
from bot.host.config import Config

if TYPE_CHECKING:
    from bot.host.stores import Runtime
    from bot.pipelines.known_issues import MatchedRun

EXIT_OK, EXIT_BAD_INPUT = 0, 2
SHOWN_MAX = 300  # characters of one recorded value (a test path, a crash title, evidence) printed
SCOPE_OPTIONS = {"tree": "--tree", "branch": "--branch", "arch": "--arch", "device_class": "--device-class",
                 "config": "--config"}  # fmt: skip
ARGUMENTS = {"issue_id": "ID", "test_glob": "--test", "log_regex": "--log", "crash_title": "--crash",
             "expires_on": "--expires", "link": "--link", "owner": "--owner", "scope": "scope",
             **{f"scope.{key}": option for key, option in SCOPE_OPTIONS.items()}}  # fmt: skip


def add_known_issue_parser(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    """`labgate known-issue` and its commands; returns those that take main's --config/-c (add has
    --config for its scope, and -c alone for labgate.yaml)."""
    known = sub.add_parser("known-issue", help="known issues: failures reported as one and not failing the check")
    commands = known.add_subparsers(dest="known_issue_command", required=True)
    add = commands.add_parser("add", help="add a known issue to the store (labgate.yaml's entries are read-only)")
    add.add_argument("issue_id", metavar="ID", help="a name people quote: letters, digits and ._:/-")
    add.add_argument("--test", required=True, metavar="GLOB", help="test path glob over <test job>/<test path>")
    add.add_argument("--log", default="", metavar="REGEX", help="searched in the failure's log lines")
    add.add_argument("--crash", default="", metavar="TITLE", help="the crash title, exactly")
    add.add_argument("--expires", required=True, metavar="YYYY-MM-DD", help="the last day it matches")
    add.add_argument("--link", default="", metavar="URL", help="where the issue is tracked")
    add.add_argument("--owner", default="", metavar="WHO", help="who is fixing it")
    for key, option in SCOPE_OPTIONS.items():
        what = "the build's plan name" if key == "config" else key.replace("_", " ")
        add.add_argument(option, dest=f"scope_{key}", default=None, metavar=key.upper(),
                         help=f"only failures with this {what}")  # fmt: skip
    add.add_argument("-c", dest="config", type=Path, default=_default_config_path(),
                     help="labgate.yaml (default: $LABGATE_CONFIG, else built-in defaults)")  # fmt: skip
    expire = commands.add_parser("expire", help="end a store entry now")
    expire.add_argument("issue_id", metavar="ID")
    listing = commands.add_parser("list", help="every entry, from labgate.yaml and the store, stale ones marked")
    listing.add_argument("--runs", type=int, default=None, metavar="N",
                         help="stale: matched nothing in its scope's last N runs (default triage.history)")  # fmt: skip
    check = commands.add_parser("check", help="the verdicts each entry was recorded on")
    check.add_argument("--without", metavar="ID", help="which recent runs would have failed without this entry")
    check.add_argument("--last", type=int, default=20, metavar="N", help="verdicts read per entry (default 20)")
    return [expire, listing, check]


def _default_config_path() -> Path | None:
    value = os.environ.get("LABGATE_CONFIG")
    return Path(value) if value else None


def run_known_issue(config: Config, args: argparse.Namespace) -> int:
    """Carry out one `labgate known-issue` command on this config's store."""
    from bot.host.stores import open_runtime  # the store's modules load only for the command that uses them
    from bot.pipelines.known_issues import KnownIssueInputError

    command = args.known_issue_command
    bad = _bad_numbers(args)
    if bad:
        return _refuse(command, bad)
    runtime = open_runtime(config)
    try:
        if command == "add":
            return _add(runtime, args)
        if command == "expire":
            return _expire(runtime, args.issue_id)
        if command == "list":
            return _list(runtime, args.runs if args.runs is not None else config.triage.history)
        if args.without is not None:
            return _check_without(runtime, args.without, args.last)
        return _check(runtime, args.last)
    except KnownIssueInputError as error:
        return _refuse(command, "; ".join(f"{ARGUMENTS.get(field, field)}: {why}" for field, why in error.problems))
    finally:
        runtime.store.engine.dispose()


def _bad_numbers(args: argparse.Namespace) -> str:
    for option, value in (("--runs", getattr(args, "runs", None)), ("--last", getattr(args, "last", None))):
        if value is not None and not 1 <= value <= 10_000:
            return f"{option} {value}: must be 1 to 10000"
    return ""


def _refuse(command: str, message: str) -> int:
    print(f"labgate known-issue {command}: {shown(message, limit=2000)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _add(runtime: Runtime, args: argparse.Namespace) -> int:
    from bot.cli.steer import operator_name
    from bot.pipelines.known_issues import add

    try:
        expires = date.fromisoformat(args.expires)
    except ValueError:
        return _refuse("add", f"--expires {args.expires!r}: not a date (YYYY-MM-DD)")
    if args.scope_config and (args.scope_config.endswith((".yaml", ".yml")) or "/" in args.scope_config):
        return _refuse("add", f"--config {args.scope_config!r}: names the build config the entry is scoped to "
                              "(the plan's build name, e.g. x86_64); labgate.yaml is -c")  # fmt: skip
    scope = {key: getattr(args, f"scope_{key}") for key in SCOPE_OPTIONS if getattr(args, f"scope_{key}") is not None}
    entry = KnownIssueEntry(issue_id=args.issue_id, link=args.link, owner=args.owner, scope=scope, test_glob=args.test,
                            log_regex=args.log, crash_title=args.crash, expires_on=expires)  # fmt: skip
    added = add(runtime, entry, created_by=operator_name())
    print(f"known issue {shown(added.issue_id)} added to the store: {_matcher(added)}; last day {added.expires_on}")
    return EXIT_OK


def _expire(runtime: Runtime, issue_id: str) -> int:
    from bot.pipelines.known_issues import expire, today_utc

    ended = expire(runtime, issue_id)
    if ended.expired_at is not None and ended.expired_at < today_utc():
        print(f"known issue {shown(ended.issue_id)} had already expired on {ended.expired_at}")
    else:
        print(f"known issue {shown(ended.issue_id)} expired: it matches nothing from now on")
    return EXIT_OK


def _list(runtime: Runtime, runs: int) -> int:
    from bot.pipelines.known_issues import listing

    items = listing(runtime, n=runs)
    if not items:
        print("no known issues (labgate.yaml known_issues: or `labgate known-issue add`)")
    for item in items:
        entry = item.entry
        people = "; ".join(part for part in (f"owner {shown(entry.owner)}" if entry.owner else "",
                                             shown(entry.link)) if part)  # fmt: skip
        print(f"{shown(entry.issue_id)} [{entry.source}] {item.state}, last day {entry.expires_on}"
              + (f"; {people}" if people else ""))  # fmt: skip
        print(f"  {_matcher(entry)}")
        if item.stale:
            print(f"  stale: matched nothing in the last {runs} runs")
        if item.problem:
            print(f"  never matches: {item.problem}")
    return EXIT_OK


def _check(runtime: Runtime, last: int) -> int:
    from bot.pipelines.known_issues import check

    for entry, runs in check(runtime, limit=last):
        print(f"{shown(entry.issue_id)} [{entry.source}]: {len(runs)} recent verdict{'s' * (len(runs) != 1)}")
        for run in runs:
            print(f"  {_run_line(run)}: {run.verdict}")
    return EXIT_OK


def _check_without(runtime: Runtime, issue_id: str, last: int) -> int:
    from bot.pipelines.known_issues import check_without

    found = check_without(runtime, issue_id, limit=last)
    new = [item for item in found if item.triage.verdict == "new"]
    undecided = [item for item in found if item.triage.verdict != "new" and item.wanted != (0, 0)]
    others = [item for item in found if item.triage.verdict != "new" and item.wanted == (0, 0)]
    print(f"without {shown(issue_id)}, of its {len(found)} most recent verdicts:")
    print(f"  would fail the check (new): {len(new)}")
    for item in new:
        print(f"    {_run_line(item.run)}: {shown(item.triage.evidence)}")
    print(f"  would be candidates, decided by re-runs: {len(undecided)}")
    for item in undecided:
        change, base = item.wanted
        print(f"    {_run_line(item.run)}: {shown(item.triage.evidence)} ({change} more runs with the change, "
              f"{base} on base)")  # fmt: skip
    verdicts = sorted({item.triage.verdict for item in others})
    tally = ", ".join(f"{sum(item.triage.verdict == v for item in others)} {v}" for v in verdicts)
    print(f"  would not fail the check: {len(others)}" + (f" ({tally})" if tally else ""))
    return EXIT_OK


def _run_line(run: MatchedRun) -> str:
    crash = f", crash {shown(run.crash_title)}" if run.crash_title else ""
    return (f"pipeline {run.pipeline_id} job {run.job_id} {shown(run.test_path)} on {shown(run.device_class)} "
            f"({run.created_at:%Y-%m-%d %H:%M}{crash})")  # fmt: skip


def _matcher(entry: KnownIssueEntry) -> str:
    parts = [f"{key}={shown(value)}" for key, value in entry.scope.items()] or ["any scope"]
    for name, value in (("test", entry.test_glob), ("log", entry.log_regex), ("crash", entry.crash_title)):
        if value:
            parts.append(f"{name} {shown(value)}")
    return "; ".join(parts)


def shown(text: str, *, limit: int = SHOWN_MAX) -> str:
    """`text` safe for a terminal: control and bidi characters as escapes (\\x1b), cut to `limit`: whatever a
    DUT wrote (a test name, a crash title) must not drive the operator's terminal."""
    escaped = CONTROL_CHARACTERS.sub(lambda m: m[0].encode("unicode_escape").decode(), text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"
