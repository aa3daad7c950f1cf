"""Bisection of a staging push's new failure: the commit list, the next commit to test, when to stop, the wording.

The commits are the first-parent history from the previous head (good) to the new head (bad), oldest first,
both ends included: `commits[0]` is good, `commits[-1]` is bad. The list is the checkout worker's word
(`parse_commit_list` checks its shape and caps its length); the culprit is confirmed on the new head by
reverting it there, which no forged list can make pass.

Each step runs the failing test `runs` times at one commit: it is `bad` if every run failed, `good` if every run
passed. Anything else stops the bisection: a mix of passes and failures is `flaky` there (a bisection through a
flaky test would name a random commit), a run that neither passed nor failed (the build broke, the board
failed, the test is gone) is `untestable`. The first step is always the new head (it confirms the failure and
brings the list); then the midpoint of the last good and the first bad commit, until they are neighbours; then
the culprit's parent when that is the previous head and no step has run there; then its revert on the new head.
At most `max_steps` steps (the revert is not one of them): past the cap it stops and names the range left.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
MAX_COMMITS = 1024  # a list longer than this is refused: 8 steps of a bisection cover 256 commits
MAX_AUTHOR_CHARS = 200
_NAMED = re.compile(r"[^<>@\"]*<([^<>]*)>\s*")
_MAILBOX = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Step:
    """The runs of the test at one commit; statuses are pass, fail, skip, incomplete, or "" (no such result)."""

    sha: str
    statuses: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """What to do next: `test` a commit, `revert` the culprit on the new head, or `stop` (why in message)."""

    action: str  # test, revert, stop
    sha: str = ""
    message: str = ""


def step_verdict(statuses: Sequence[str]) -> str:
    """bad (failed every run), good (passed every run), flaky (both), untestable (a run did neither, or none)."""
    if not statuses or any(s not in ("pass", "fail") for s in statuses):
        return "untestable"
    if all(s == "fail" for s in statuses):
        return "bad"
    if all(s == "pass" for s in statuses):
        return "good"
    return "flaky"


def counts(statuses: Sequence[str]) -> str:
    """How many runs failed, as "2/2"."""
    return f"{sum(s == 'fail' for s in statuses)}/{len(statuses)}"


def passes(statuses: Sequence[str]) -> str:
    """How many runs passed, as "2/2"."""
    return f"{sum(s == 'pass' for s in statuses)}/{len(statuses)}"


CommitList = tuple[tuple[str, ...], dict[str, str]]


def parse_commit_list(raw: object, good: str, bad: str, cap: int = MAX_COMMITS) -> CommitList:
    """The worker's list of first-parent commits after `good` up to `bad` (oldest first, entries [sha, author])
    as (commits with good prepended, author by sha). ValueError says what is wrong with it."""
    if not isinstance(raw, list):
        raise ValueError("the checkout's commit list is not a list")
    if not raw:
        raise ValueError("the checkout's commit list is empty: the new head adds no commit to the previous one")
    if len(raw) > cap:
        raise ValueError(f"the checkout listed {len(raw)} commits, over the cap of {cap}")
    shas: list[str] = []
    authors: dict[str, str] = {}
    for number, entry in enumerate(raw, 1):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
            raise ValueError(f"commit list entry {number} is not [sha, author]")
        sha, author = entry
        if not SHA.fullmatch(sha):
            raise ValueError(f"commit list entry {number} is no commit id: {sha[:80]!r}")
        if sha in authors or sha == good:
            raise ValueError(f"commit list entry {number} repeats {sha[:12]}")
        shas.append(sha)
        authors[sha] = author[:MAX_AUTHOR_CHARS]
    if shas[-1] != bad:
        raise ValueError(f"the commit list ends at {shas[-1][:12]}, not at the new head {bad[:12]}")
    return (good, *shas), authors


def _verdicts(commits: Sequence[str], steps: Sequence[Step]) -> dict[int, tuple[str, Step]]:
    index = {sha: i for i, sha in enumerate(commits)}
    return {index[step.sha]: (step_verdict(step.statuses), step) for step in steps if step.sha in index}


def next_step(commits: Sequence[str], steps: Sequence[Step], max_steps: int) -> Decision:
    """The next thing to do, given the steps so far (the first of them at the new head)."""
    found = _verdicts(commits, steps)
    for i in sorted(found):
        verdict, step = found[i]
        if verdict == "flaky":
            return Decision("stop", message=f"the test is flaky at {step.sha[:12]}: it failed {counts(step.statuses)} "
                                            "runs there, so no commit can be named")  # fmt: skip
        if verdict == "untestable":
            seen = ", ".join(s or "no result" for s in step.statuses) or "no run"
            return Decision("stop", message=f"the test could not be run at {step.sha[:12]} ({seen})")
    last = len(commits) - 1
    if found.get(last, ("", None))[0] == "good":
        runs = found[last][1]
        assert runs is not None
        return Decision("stop", message=f"the failure did not reproduce: the new head {commits[last][:12]} passed "
                                        f"{passes(runs.statuses)} runs")  # fmt: skip
    lo = max((i for i, (v, _) in found.items() if v == "good"), default=0)
    hi = min((i for i, (v, _) in found.items() if v == "bad"), default=last)
    if hi <= lo:
        return Decision("stop", message=f"the results disagree: {commits[hi][:12]} failed but the later "
                                        f"{commits[lo][:12]} passed; the failure does not bisect")  # fmt: skip
    if hi - lo > 1:
        if len(steps) >= max_steps:
            left = f"one of the {hi - lo} after {commits[lo][:12]} up to {commits[hi][:12]}"
            return Decision("stop", message=f"stopped at the cap of {max_steps} steps: the first bad commit is {left}")
        return Decision("test", sha=commits[(lo + hi) // 2])
    if lo == 0 and 0 not in found and len(steps) < max_steps:
        return Decision("test", sha=commits[0])  # the culprit's parent is the previous head: measure it too
    return Decision("revert", sha=commits[hi])


def culprit_wording(commits: Sequence[str], steps: Sequence[Step], culprit: str, revert: Sequence[str]) -> str:
    """The finding with its confidence: "first bad commit abc (failed 2/2 there, passed 2/2 at its parent;
    confirmed: its revert passes 2/2 on the new head)"."""
    found = {step.sha: step for step in steps}
    there = found.get(culprit)
    parent = commits[commits.index(culprit) - 1] if culprit in commits[1:] else ""
    at_parent = found.get(parent)
    evidence = [f"failed {counts(there.statuses)} there" if there is not None else "failed at the new head"]
    evidence.append(f"passed {passes(at_parent.statuses)} at its parent" if at_parent is not None
                    else "its parent is the previous head, which passed in its own pipeline")  # fmt: skip
    verdict = step_verdict(revert)
    if verdict == "good":
        confirmed = f"confirmed: its revert passes {passes(revert)} on the new head"
    elif verdict == "bad":
        confirmed = f"not confirmed: with it reverted the new head still fails {counts(revert)}"
    elif verdict == "flaky":
        confirmed = f"not confirmed: with it reverted the new head fails {counts(revert)}"
    else:
        confirmed = "not confirmed: its revert could not be tested on the new head"
    return f"first bad commit {culprit[:12]} ({', '.join(evidence)}; {confirmed})"


def author_address(author: str) -> str | None:
    """The mail address of a commit's author ("Name <a@b>", the worker's word: untrusted text), or None when it
    is not one plain address: a line break, a control character, a second address or a header would otherwise
    ride into the mail's headers."""
    if not author or len(author) > MAX_AUTHOR_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in author):
        return None
    if "," in author or ";" in author:
        return None
    named = _NAMED.fullmatch(author)  # "Name <address>": the name holds no address of its own
    address = named.group(1) if named else author.strip()
    return address if _MAILBOX.fullmatch(address) else None


def steps_as_json(steps: Sequence[Step]) -> list[dict[str, object]]:
    """The Bisection row's steps (bot/store/models.py): each commit's runs, failures and verdict."""
    return [{"sha": s.sha, "statuses": list(s.statuses), "runs": len(s.statuses),
             "fails": sum(x == "fail" for x in s.statuses), "verdict": step_verdict(s.statuses)}
            for s in steps]  # fmt: skip


def steps_from_json(raw: Sequence[Mapping[str, object]]) -> list[Step]:
    """The ended test steps of a Bisection row (its revert, and a step still running, left out)."""
    return [Step(str(item["sha"]), tuple(str(s) for s in item["statuses"]))  # type: ignore[attr-defined]
            for item in raw if item.get("role", "test") == "test" and item.get("verdict") != "running"]  # fmt: skip
