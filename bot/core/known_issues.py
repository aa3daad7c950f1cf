"""Known issues: which registry entry, if any, explains a failure (scope, test glob, log regex, crash title).

An entry's patterns are the operator's; the test path, the log and the crash title come from the DUT, so
from the change. The log regex therefore goes through bot/core/linear_match (no backtracking: `(a+)+$`
costs what `a+$` does), and one search reads a bounded part of the log: the first MAX_LOG_CHARS
characters of the failure's lines, fewer for a long pattern, so that it takes at most SEARCH_BUDGET
(instruction x character) steps. What is not read cannot match: a known issue hidden past the bound
leaves the failure reported, never the other way round (a line cut at the bound ends there, for `$`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Literal

from bot.core.linear_match import LinearPattern, PatternError, compile_regex

SCOPE_KEYS = ("tree", "branch", "arch", "device_class", "config")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")  # as the config's known_issues[].id
MAX_LOG_CHARS = 64 * 1024  # characters of the failure's lines one search reads at most
MAX_PROGRAM = 256  # instructions of a compiled log regex (linear_match's own cap is 2048)
SEARCH_BUDGET = 2_000_000  # instructions x characters one log search may step through (about a second)
MAX_TEST_PATH = 1000  # a longer test path matches no glob (the store keeps 500)
MAX_TEXT = 500  # characters of a glob, a crash title, a scope value, an owner
# C0/C1 controls (ANSI escapes), line separators and bidi overrides: refused in an entry, escaped when shown.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

Source = Literal["config", "store"]


@dataclass(frozen=True)
class FailureScope:
    """Where a failure happened: what an entry's scope is compared with."""

    tree: str = ""
    branch: str = ""
    arch: str = ""
    device_class: str = ""
    config: str = ""  # the build's plan name


@dataclass(frozen=True, kw_only=True)
class KnownIssueEntry:
    """One registry entry, from labgate.yaml (read-only) or from the store (`labgate known-issue add`)."""

    issue_id: str
    expires_on: date  # the last day it matches
    link: str = ""
    owner: str = ""
    scope: Mapping[str, str] = field(default_factory=dict)  # SCOPE_KEYS; a key left out matches anything
    test_glob: str = ""  # fnmatchcase over "<test job>/<test path>"
    log_regex: str = ""  # linear_match's subset, searched line by line
    crash_title: str = ""  # equal to the failure's, exactly
    source: Source = "store"
    expired_at: date | None = None  # ended early by `labgate known-issue expire`


@dataclass(frozen=True)
class SeenRun:
    """One run of a test as the store remembers it, for staleness: where, which test, and which entry
    explained it ("" none); `judged` false for a failure no entry was matched against (a base run)."""

    where: FailureScope
    test_path: str
    known_issue: str = ""
    judged: bool = True


def is_active(entry: KnownIssueEntry, today: date) -> bool:
    """Not expired: today is on or before its last day, and no one ended it early."""
    return entry.expired_at is None and today <= entry.expires_on


def has_matcher(entry: KnownIssueEntry) -> bool:
    """An entry with no test glob, log regex nor crash title explains nothing (it never matches)."""
    return bool(entry.test_glob or entry.log_regex or entry.crash_title)


def in_scope(entry: KnownIssueEntry, where: FailureScope) -> bool:
    """Every scope key the entry names equals the failure's; an unknown key matches nothing."""
    return all(key in SCOPE_KEYS and getattr(where, key) == value for key, value in entry.scope.items())


def test_matches(entry: KnownIssueEntry, test_path: str) -> bool:
    """The entry's glob (if any) matches the whole "<test job>/<test path>" (fnmatchcase: `*` crosses "/")."""
    if not entry.test_glob:
        return True
    return len(test_path) <= MAX_TEST_PATH and fnmatch.fnmatchcase(test_path, entry.test_glob)


def log_matches(entry: KnownIssueEntry, log: str | Sequence[str]) -> bool:
    """The entry's regex (if any) is found in one of the log's lines, within the bounded part read."""
    if not entry.log_regex:
        return True
    pattern = compiled_log_regex(entry.log_regex)
    if pattern is None:
        return False  # refused at add time; a config entry's bad regex explains nothing
    left = min(MAX_LOG_CHARS, SEARCH_BUDGET // len(pattern.program))
    for line in log[:left].split("\n") if isinstance(log, str) else log:  # a huge log is never split whole
        line = line[:left]
        if pattern.search(line):
            return True
        left -= len(line) + 1
        if left <= 0:
            return False
    return False


def matches(entry: KnownIssueEntry, *, where: FailureScope, test_path: str, log: str | Sequence[str],
            crash_title: str, today: date) -> bool:  # fmt: skip
    """The entry explains this failure: active, in scope, and every matcher it has agrees."""
    if not has_matcher(entry) or not is_active(entry, today) or not in_scope(entry, where):
        return False
    if entry.crash_title and entry.crash_title != crash_title:
        return False
    return test_matches(entry, test_path) and log_matches(entry, log)  # the log, the costly one, last


def first_match(entries: Iterable[KnownIssueEntry], *, where: FailureScope, test_path: str,
                log: str | Sequence[str], crash_title: str, today: date) -> KnownIssueEntry | None:  # fmt: skip
    """The first entry that explains the failure: config entries first, each source in its own order."""
    for entry in in_registry_order(entries):
        if matches(entry, where=where, test_path=test_path, log=log, crash_title=crash_title, today=today):
            return entry
    return None


def in_registry_order(entries: Iterable[KnownIssueEntry]) -> list[KnownIssueEntry]:
    """Config entries, then store entries, each keeping the order given (a stable sort)."""
    return sorted(entries, key=lambda entry: entry.source != "config")


def could_explain(entry: KnownIssueEntry, where: FailureScope, test_path: str) -> bool:
    """A run of this test there is one the entry is about (scope and test glob): its staleness counts it."""
    return in_scope(entry, where) and test_matches(entry, test_path)


def stale(entries: Iterable[KnownIssueEntry], runs: Sequence[SeenRun], n: int, *,
          today: date) -> list[KnownIssueEntry]:  # fmt: skip
    """Active entries that explained none of the newest `n` runs in their scope (`runs` newest first).

    A failure that was never matched against entries (a base run) says nothing either way and is
    passed over; an entry with fewer than `n` runs in its scope is not stale yet."""
    found = []
    for entry in entries:
        if not is_active(entry, today) or n <= 0:
            continue
        seen = [run for run in runs if run.judged and could_explain(entry, run.where, run.test_path)][:n]
        if len(seen) >= n and not any(run.known_issue == entry.issue_id for run in seen):
            found.append(entry)
    return found


@lru_cache(maxsize=256)
def compiled_log_regex(pattern: str) -> LinearPattern | None:
    """The compiled pattern, or None when regex_problem refuses it."""
    try:
        program = compile_regex(pattern)
    except PatternError:
        return None
    return program if len(program.program) <= MAX_PROGRAM else None


def regex_problem(pattern: str) -> str | None:
    """Why a log regex cannot be an entry's; None if it can."""
    try:
        program = compile_regex(pattern)
    except PatternError as error:
        return (f"{error}: labgate matches log regexes without backtracking (literals, ., classes, \\d\\w\\s, "
                "groups, (?:), |, * + ? {m,n}, ^ $)")  # fmt: skip
    if len(program.program) > MAX_PROGRAM:
        return f"compiles to {len(program.program)} instructions, over the cap of {MAX_PROGRAM} (fewer {{m,n}})"
    return None


def entry_problems(entry: KnownIssueEntry, *, today: date) -> list[tuple[str, str]]:
    """What keeps a new entry out of the registry, as (field, why) pairs; [] when nothing does."""
    problems: list[tuple[str, str]] = []
    if not ID_PATTERN.fullmatch(entry.issue_id):
        problems.append(("issue_id", "must be 1-100 of letters, digits and ._:/- starting with a letter or digit"))
    elif ".." in entry.issue_id or "//" in entry.issue_id or entry.issue_id.endswith("/"):
        problems.append(("issue_id", "must not hold '..', '//' or end in '/' (ids end up in links and names)"))
    unknown = sorted(set(entry.scope) - set(SCOPE_KEYS))
    if unknown:
        problems.append(("scope", f"unknown keys {', '.join(unknown)} (known: {', '.join(SCOPE_KEYS)})"))
    texts = {"link": entry.link, "owner": entry.owner, "test_glob": entry.test_glob,
             "crash_title": entry.crash_title, "log_regex": entry.log_regex,
             **{f"scope.{key}": value for key, value in entry.scope.items()}}  # fmt: skip
    for name, text in texts.items():
        if CONTROL_CHARACTERS.search(text):
            problems.append((name, "holds a control character"))
        elif len(text) > MAX_TEXT:
            problems.append((name, f"is {len(text)} characters, over the cap of {MAX_TEXT}"))
    for key, value in entry.scope.items():
        if not value:
            problems.append((f"scope.{key}", "is empty (leave the key out to match any)"))
    if entry.link and not entry.link.startswith(("https://", "http://")):
        problems.append(("link", "must be an http(s) URL (reports show it as a link)"))
    if not has_matcher(entry):
        problems.append(("test_glob", "an entry needs a test glob, a log regex or a crash title"))
    elif entry.test_glob and set(entry.test_glob) <= {"*"} and not (entry.log_regex or entry.crash_title):
        problems.append(("test_glob", "matches every test: add a log regex or a crash title to narrow it"))
    if entry.log_regex and (why := regex_problem(entry.log_regex)):
        problems.append(("log_regex", why))
    if entry.expires_on < today:
        problems.append(("expires_on", f"{entry.expires_on} is in the past (today is {today})"))
    return problems
