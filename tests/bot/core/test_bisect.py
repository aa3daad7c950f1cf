"""The bisection's steps, stopping rules, cap and wording (bot/core/bisect.py), with a simulated history."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from bot.core.bisect import (
    MAX_COMMITS,
    Decision,
    Step,
    author_address,
    culprit_wording,
    next_step,
    parse_commit_list,
    step_verdict,
    steps_as_json,
    steps_from_json,
)


def sha(n: int) -> str:
    return f"{n:040x}"


def history(length: int) -> list[str]:
    """The previous head (index 0) and `length` commits after it, the last the new head."""
    return [sha(0xA000 + i) for i in range(length + 1)]


def run_bisection(commits: list[str], outcome: Callable[[int, int], str], runs: int = 2,
                  max_steps: int = 8) -> tuple[Decision, list[Step]]:  # fmt: skip
    """Drive next_step as bot/pipelines/bisection.py does: the new head first, then what it asks for."""
    steps = [Step(commits[-1], tuple(outcome(len(commits) - 1, r) for r in range(runs)))]
    for _ in range(100):
        decision = next_step(commits, steps, max_steps)
        if decision.action != "test":
            return decision, steps
        index = commits.index(decision.sha)
        assert decision.sha not in [s.sha for s in steps], "a commit is never tested twice"
        steps.append(Step(decision.sha, tuple(outcome(index, r) for r in range(runs))))
    raise AssertionError("the bisection did not end")


@pytest.mark.parametrize("culprit", range(1, 9))
def test_finds_every_culprit_of_an_eight_commit_history(culprit: int) -> None:
    commits = history(8)
    decision, steps = run_bisection(commits, lambda i, _run: "fail" if i >= culprit else "pass")
    assert decision == Decision("revert", sha=commits[culprit])
    assert len(steps) <= 5  # the head, log2(8) midpoints, and the previous head when the culprit is first
    if culprit == 1:
        assert steps[-1].sha == commits[0]  # its parent was measured, not assumed


def test_every_culprit_of_a_long_history_within_the_cap() -> None:
    commits = history(100)
    for culprit in range(1, 101):

        def outcome(i: int, _run: int, culprit: int = culprit) -> str:
            return "fail" if i >= culprit else "pass"

        decision, steps = run_bisection(commits, outcome, max_steps=9)
        assert decision.action == "revert" and decision.sha == commits[culprit]
        assert len(steps) <= 9


def test_a_flaky_step_stops_the_bisection_and_says_where() -> None:
    commits = history(8)
    # Commit 4 fails one run in two: whatever it is called, a bisection through it would name a random commit.
    decision, steps = run_bisection(commits, lambda i, r: "fail" if i > 4 or (i == 4 and r == 0) else "pass")
    assert decision.action == "stop"
    assert f"flaky at {commits[4][:12]}" in decision.message and "1/2" in decision.message
    assert steps[-1].sha == commits[4]


def test_a_flaky_head_stops_at_the_first_step() -> None:
    commits = history(8)
    decision, steps = run_bisection(commits, lambda i, r: "fail" if r == 1 else "pass")
    assert decision.action == "stop" and "flaky" in decision.message and len(steps) == 1


def test_a_head_that_passes_every_run_is_not_reproduced() -> None:
    decision, _ = run_bisection(history(8), lambda i, r: "pass")
    assert decision.action == "stop" and "did not reproduce" in decision.message


def test_a_build_failure_or_board_fault_is_untestable_never_good_or_bad() -> None:
    commits = history(8)
    decision, _ = run_bisection(commits, lambda i, r: "incomplete" if i == 4 else ("fail" if i > 6 else "pass"))
    assert decision.action == "stop" and "could not be run" in decision.message
    assert step_verdict(()) == "untestable" and step_verdict(("fail", "")) == "untestable"
    assert step_verdict(("skip", "skip")) == "untestable"


def test_the_cap_stops_and_names_the_range_left() -> None:
    commits = history(64)
    decision, steps = run_bisection(commits, lambda i, r: "fail" if i >= 37 else "pass", max_steps=4)
    assert decision.action == "stop" and "cap of 4 steps" in decision.message
    assert len(steps) == 4
    assert "is one of the" in decision.message


def test_results_that_disagree_do_not_name_a_commit() -> None:
    commits = history(4)
    steps = [Step(commits[4], ("fail", "fail")), Step(commits[2], ("fail", "fail")), Step(commits[3], ("pass", "pass"))]
    decision = next_step(commits, steps, 8)
    assert decision.action == "stop" and "disagree" in decision.message


def test_a_step_at_a_commit_not_in_the_list_is_ignored() -> None:
    """A forged step (a pipeline of another commit) cannot move the bounds."""
    commits = history(4)
    steps = [Step(commits[4], ("fail", "fail")), Step(sha(0xBAD), ("pass", "pass"))]
    assert next_step(commits, steps, 8) == Decision("test", sha=commits[2])


def test_wording_with_its_confidence() -> None:
    commits = history(4)
    steps = [Step(commits[4], ("fail", "fail")), Step(commits[2], ("pass", "pass")), Step(commits[3], ("fail", "fail"))]
    text = culprit_wording(commits, steps, commits[3], ("pass", "pass"))
    assert text == (f"first bad commit {commits[3][:12]} (failed 2/2 there, passed 2/2 at its parent; "
                    "confirmed: its revert passes 2/2 on the new head)")  # fmt: skip
    assert "not confirmed: with it reverted the new head still fails 2/2" in culprit_wording(
        commits, steps, commits[3], ("fail", "fail"))  # fmt: skip
    assert "could not be tested" in culprit_wording(commits, steps, commits[3], ())
    assert "fails 1/2" in culprit_wording(commits, steps, commits[3], ("fail", "pass"))


def test_steps_round_trip_through_json() -> None:
    steps = [Step(sha(1), ("fail", "fail")), Step(sha(2), ("pass", "incomplete"))]
    raw = steps_as_json(steps)
    assert raw[0]["verdict"] == "bad" and raw[0]["fails"] == 2 and raw[1]["verdict"] == "untestable"
    revert = {"sha": sha(3), "statuses": ["pass"], "role": "revert"}
    running = {"sha": sha(4), "statuses": [], "role": "test", "verdict": "running"}
    assert steps_from_json([*raw, revert, running]) == steps


# The list is the checkout worker's word.

GOOD, BAD = sha(0xA000), sha(0xA003)
LISTED = [[sha(0xA001), "A <a@example.org>"], [sha(0xA002), "B <b@example.org>"], [BAD, "C <c@example.org>"]]


def test_a_commit_list_is_read_oldest_first_with_good_prepended() -> None:
    commits, authors = parse_commit_list(LISTED, GOOD, BAD)
    assert commits == (GOOD, sha(0xA001), sha(0xA002), BAD)
    assert authors[BAD] == "C <c@example.org>"


@pytest.mark.parametrize(("raw", "error"), [
    ({"a": 1}, "not a list"),
    ([], "empty"),
    ([["x" * 40, "a"], [BAD, "c"]], "no commit id"),
    ([["--output=/etc/passwd", "a"], [BAD, "c"]], "no commit id"),
    ([[sha(0xABC).upper(), "a"], [BAD, "c"]], "no commit id"),
    ([[sha(1), "a"], [sha(1), "a"], [BAD, "c"]], "repeats"),
    ([[GOOD, "a"], [BAD, "c"]], "repeats"),
    ([[BAD, "c"], [sha(1), "a"]], "not at the new head"),
    ([[sha(1)], [BAD, "c"]], "not [sha, author]"),
    ([[sha(1), 7], [BAD, "c"]], "not [sha, author]"),
])  # fmt: skip
def test_forged_commit_lists_are_refused_with_the_reason(raw: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_commit_list(raw, GOOD, BAD)


def test_a_huge_commit_list_is_refused() -> None:
    raw = [[sha(i + 1), "a"] for i in range(MAX_COMMITS)] + [[BAD, "c"]]
    with pytest.raises(ValueError, match="over the cap"):
        parse_commit_list(raw, GOOD, BAD)
    long_author = [[BAD, "x" * 100_000]]
    assert len(parse_commit_list(long_author, GOOD, BAD)[1][BAD]) == 200


@pytest.mark.parametrize("author", [
    "Eve <eve@example.org>\r\nBcc: victim@example.org",
    "Eve <eve@example.org>\nSubject: pwned",
    "Eve <eve@example.org\r\n>",
    "Eve <eve@example.org>, victim@example.org",
    "a@b.org <c@d.org>",
    "Eve <eve@example.org>; x@y.org",
    "Eve",
    "Eve <not an address>",
    "Eve <eve@exa\x00mple.org>",
    "",
])  # fmt: skip
def test_author_addresses_that_could_inject_headers_are_refused(author: str) -> None:
    assert author_address(author) is None


def test_a_plain_author_gives_its_address() -> None:
    assert author_address("Ada Lovelace <ada@example.org>") == "ada@example.org"
    assert author_address('"Lovelace, Ada" <ada@example.org>') is None  # a comma: refused, not guessed
