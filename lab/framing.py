"""The DUT runner's framing, checked strictly: results count only when every top-level line is the runner's.

The runner's port carries one document of a fixed shape (lab/dut/labgate-run):
the version line, the plan, then for each command its output indented by four spaces and
one result line naming it, and finally the end marker. Commands cannot write to that
port, so any other top-level line (a second document, a result out of order or under
another name, text after the end) was not written by the runner: a kernel or a root
command forging results, or a runner bug. Either way nothing passes on such a document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lab.ktap import split_lines

RUNNER_END = "# labgate: end"
ROOT_ONLY_NOTE = "# labgate: note: no DUT user"
_NOTE = re.compile(r"# labgate: note: .*")
_OUTPUT_PREFIX = "    "
_RESULT = re.compile(
    r"(?P<ok>ok|not ok) (?P<number>[1-9][0-9]{0,8}) (?P<name>\S+)"
    r"(?: # (?P<skip>SKIP)| # exit status [0-9]{1,3}(?: \(timed out after [0-9]{1,9} s\))?)?"
)
_KUNIT_NAME = re.compile(r"kunit-[A-Za-z0-9_.-]+")
MAX_PROBLEMS = 5


def ran_as_root_only(text: str) -> bool:
    """Whether the runner found no DUT user to drop to (a kernel without CONFIG_MULTIUSER)."""
    return any(line.startswith(ROOT_ONLY_NOTE) for line in split_lines(text))


@dataclass(frozen=True)
class RunnerDocument:
    """The runner's own lines: their problems, and its verdict on each command (pass, fail, skip)."""

    problems: list[str]
    results: list[tuple[str, str]]


def check_runner_framing(text: str, command_names: Sequence[str], *, kunit: bool = False) -> list[str]:
    """Problems with the runner document's framing (empty when it is exactly the runner's)."""
    return read_runner_document(text, command_names, kunit=kunit).problems


def read_runner_document(text: str, command_names: Sequence[str], *, kunit: bool = False) -> RunnerDocument:
    """The runner's top-level lines, checked one by one; commands' own (indented) output is skipped."""
    lines = split_lines(text)
    while lines and not lines[-1]:
        lines.pop()
    problems: list[str] = []

    def problem(number: int, why: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(f"runner line {number}: {why}")

    results: list[tuple[str, str]] = []
    if not lines or lines[0] != "KTAP version 1":
        return RunnerDocument(["the runner's document does not start with 'KTAP version 1'"], results)
    plan = re.fullmatch(r"1\.\.([0-9]{1,9})", lines[1]) if len(lines) > 1 else None
    if plan is None:
        return RunnerDocument(["the runner's document has no plan on its second line"], results)
    planned = int(plan.group(1))
    if planned != len(command_names) and not (kunit and planned > len(command_names)):
        problems.append(f"the plan says 1..{planned} but {len(command_names)} commands were given")
    seen = 0
    ended_at: int | None = None
    for number, line in enumerate(lines[2:], start=3):
        if ended_at is not None:
            problem(number, f"text after the end marker: {line[:80]!r}")
            continue
        if line.startswith(_OUTPUT_PREFIX):
            continue  # a command's own output, nested below its result
        if line == RUNNER_END:
            ended_at = number
            continue
        if _NOTE.fullmatch(line):
            continue  # the runner's own remarks (e.g. that commands ran as root)
        result = _RESULT.fullmatch(line)
        if result is None:
            problem(number, f"not the runner's framing: {line[:80]!r}")
            continue
        seen += 1
        name = result["name"]
        results.append((name, "skip" if result["skip"] else "pass" if result["ok"] == "ok" else "fail"))
        if int(result["number"]) != seen:
            problem(number, f"result number {result['number']} where {seen} was due")
        elif seen <= len(command_names) and name != command_names[seen - 1]:
            problem(number, f"result for {name!r} where {command_names[seen - 1]!r} was due")
        elif seen > len(command_names) and not (kunit and _KUNIT_NAME.fullmatch(name)):
            problem(number, f"result {seen} ({name!r}) beyond the {len(command_names)} commands")
    if ended_at is None:
        problems.append("the runner's end marker never came")
    elif seen != planned:
        problems.append(f"the plan said 1..{planned} but the runner reported {seen} results")
    return RunnerDocument(problems, results)
