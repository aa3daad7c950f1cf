"""Known-issue matching: scope, test glob, log regex, crash title, expiry, registry order, staleness, and the
attacks a DUT's log and test names can make on it (regex and glob blow-ups, huge logs)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import date, timedelta

import pytest

from bot.core.known_issues import (
    MAX_LOG_CHARS,
    MAX_PROGRAM,
    MAX_TEST_PATH,
    SEARCH_BUDGET,
    FailureScope,
    KnownIssueEntry,
    SeenRun,
    compiled_log_regex,
    entry_problems,
    first_match,
    matches,
    regex_problem,
    stale,
)

TODAY = date(2026, 12, 7)
WHERE = FailureScope(tree="net", branch="main", arch="x86_64", device_class="qemu-x86_64", config="x86_64")


def entry(issue_id: str = "KI-1", **fields: object) -> KnownIssueEntry:
    fields.setdefault("expires_on", TODAY + timedelta(days=30))
    return KnownIssueEntry(issue_id=issue_id, **fields)  # type: ignore[arg-type]


def hit(e: KnownIssueEntry, *, where: FailureScope = WHERE, test: str = "unit/math.mul", log: str | list[str] = "",
        crash: str = "", today: date = TODAY) -> bool:  # fmt: skip
    return matches(e, where=where, test_path=test, log=log, crash_title=crash, today=today)


def test_scope_keys_left_out_match_anything_and_named_ones_must_be_equal() -> None:
    assert hit(entry(test_glob="unit/*"))
    assert hit(entry(test_glob="unit/*", scope={"arch": "x86_64", "tree": "net"}))
    assert not hit(entry(test_glob="unit/*", scope={"arch": "arm64"}))
    assert not hit(entry(test_glob="unit/*", scope={"branch": "next"}))
    assert not hit(entry(test_glob="unit/*", scope={"config": "x86_64"}), where=FailureScope(config="arm64"))
    assert not hit(entry(test_glob="unit/*", scope={"device_class": "QEMU-x86_64"}))  # exact, case and all


def test_an_unknown_scope_key_matches_nothing() -> None:
    assert not hit(entry(test_glob="unit/*", scope={"lab": "x"}))


def test_the_glob_is_fnmatchcase_over_job_and_test_path() -> None:
    assert hit(entry(test_glob="unit/math.*"))
    assert hit(entry(test_glob="*/math.mul"))
    assert hit(entry(test_glob="*mul"))  # `*` crosses "/", as fnmatch's does
    assert hit(entry(test_glob="unit/math.mu?"))
    assert hit(entry(test_glob="unit/math.[lm]ul"))
    assert not hit(entry(test_glob="unit/math.[!m]ul"))
    assert not hit(entry(test_glob="Unit/math.mul"))  # case-sensitive
    assert not hit(entry(test_glob="math.mul"))  # the whole path, not a suffix
    assert not hit(entry(test_glob="unit/math"))


def test_the_log_regex_is_searched_line_by_line() -> None:
    e = entry(log_regex=r"^BUG: KASAN: use-after-free in \w+$")
    log = "booting\n[ 1.0] x\nBUG: KASAN: use-after-free in foo_bar\nend"
    assert hit(e, log=log)
    assert hit(e, log=log.split("\n"))
    assert not hit(e, log="xBUG: KASAN: use-after-free in foo_bar")  # ^ is a line's start
    assert not hit(e, log="BUG: KASAN: use-after-free in\nfoo_bar")  # no match across lines
    assert hit(entry(log_regex="timed out"), log=["a", "test timed out after 60 s"])
    assert not hit(entry(log_regex="timed out"), log="")


def test_the_crash_title_must_be_equal() -> None:
    e = entry(crash_title="WARNING in foo")
    assert hit(e, crash="WARNING in foo")
    assert not hit(e, crash="WARNING in foo2")
    assert not hit(e, crash="warning in foo")
    assert not hit(e, crash="")


def test_every_matcher_an_entry_has_must_agree() -> None:
    e = entry(test_glob="unit/*", log_regex="oops", crash_title="BUG in x")
    assert hit(e, log="an oops", crash="BUG in x")
    assert not hit(e, log="an oops", crash="BUG in y")
    assert not hit(e, log="fine", crash="BUG in x")
    assert not hit(e, test="boot/login", log="an oops", crash="BUG in x")


def test_an_entry_with_no_matcher_never_matches() -> None:
    assert not hit(entry())
    assert not hit(entry(scope={"tree": "net"}), log="anything", crash="anything")


def test_an_entry_matches_on_its_last_day_and_not_after() -> None:
    e = entry(test_glob="unit/*", expires_on=TODAY)
    assert hit(e, today=TODAY)
    assert not hit(e, today=TODAY + timedelta(days=1))
    assert not hit(entry(test_glob="unit/*", expired_at=TODAY - timedelta(days=3)))  # ended early


def test_first_match_tries_config_entries_first_then_the_store_in_order() -> None:
    store_a = entry("S-A", test_glob="unit/*", source="store")
    store_b = entry("S-B", test_glob="unit/*", source="store")
    config = entry("C-1", test_glob="unit/math.*", source="config")
    other = entry("C-0", test_glob="boot/*", source="config")
    kwargs = dict(where=WHERE, test_path="unit/math.mul", log="", crash_title="", today=TODAY)
    assert first_match([store_a, store_b, other, config], **kwargs) == config  # type: ignore[arg-type]
    assert first_match([store_b, store_a], **kwargs) == store_b  # type: ignore[arg-type]
    assert first_match([other], **kwargs) is None  # type: ignore[arg-type]
    expired = entry("C-2", test_glob="unit/*", source="config", expires_on=TODAY - timedelta(days=1))
    assert first_match([expired, store_a], **kwargs) == store_a  # type: ignore[arg-type]


def test_a_config_entry_whose_regex_labgate_refuses_explains_nothing() -> None:
    # labgate.yaml is not checked against the subset; such an entry leaves the failure reported.
    e = entry(log_regex=r"(a)\1", source="config")
    assert compiled_log_regex(e.log_regex) is None
    assert not hit(e, log="aa")


# --- attacks: the log and the test path are the change's ---


def test_attack_a_nested_quantifier_over_a_hostile_log_returns_at_once() -> None:
    """`(a+)+$` over "aaaa...!" is 2^n steps for a backtracking engine: Python's re hangs on it (shown
    below in a child process); labgate's search is linear and returns in well under a second."""
    pattern, log = r"(a+)+$", "a" * (MAX_LOG_CHARS - 2) + "!"
    started = time.monotonic()
    assert not hit(entry(log_regex=pattern), log=log)
    assert not hit(entry(log_regex=pattern), log=["a" * 600 + "!"] * 100)
    assert time.monotonic() - started < 3

    hangs = f"import re; re.search({pattern!r}, 'a' * 64 + '!')"
    with pytest.raises(subprocess.TimeoutExpired):  # what the guard is for
        subprocess.run([sys.executable, "-c", hangs], timeout=2)


def test_attack_a_pattern_whose_states_blow_up_is_held_to_the_search_budget() -> None:
    """`(a|b)*a(a|b){60}z` has 2^60 DFA states: every character of a random a/b log is a new set of
    states and costs the whole program. The budget reads fewer characters for such a pattern."""
    random.seed(0)
    log = "".join(random.choice("ab") for _ in range(MAX_LOG_CHARS))
    e = entry(log_regex="(?:a|b)*a(?:a|b){60}z")
    started = time.monotonic()
    assert not hit(e, log=log)
    assert not hit(e, log=list(log[i : i + 4096] for i in range(0, len(log), 4096)))
    assert time.monotonic() - started < 5
    program = compiled_log_regex(e.log_regex)
    assert program is not None
    read = SEARCH_BUDGET // len(program.program)  # 8,032 characters of this 249-instruction program
    assert read < MAX_LOG_CHARS // 4
    assert hit(e, log=log[: read - 62] + "a" + "b" * 60 + "z")
    assert not hit(e, log=log[:read] + "a" + "b" * 60 + "z")  # past what this pattern may read: reported


def test_only_the_first_64_kib_of_the_failure_lines_are_read() -> None:
    e = entry(log_regex="kernel BUG at mm/slub.c")
    filler = ["x" * 1023] * 63
    assert hit(e, log=[*filler, "kernel BUG at mm/slub.c:42"])
    assert not hit(e, log=[*filler, "y" * 1024, "kernel BUG at mm/slub.c:42"])  # past the bound: reported
    started = time.monotonic()
    assert not hit(e, log="z" * 50_000_000)  # a 50 MB log is cut before it is split or searched
    assert time.monotonic() - started < 2
    assert MAX_LOG_CHARS == 64 * 1024


def test_attack_a_glob_over_a_hostile_test_path_returns_at_once() -> None:
    started = time.monotonic()
    assert not hit(entry(test_glob="*a*a*a*a*a*a*a*a*a*a*b"), test="a" * MAX_TEST_PATH)
    assert time.monotonic() - started < 1
    assert not hit(entry(test_glob="unit/*"), test="unit/" + "a" * MAX_TEST_PATH)  # too long: matches no glob


def test_attack_control_characters_in_the_log_do_not_join_or_split_lines() -> None:
    e = entry(log_regex="^panic$")
    assert not hit(e, log="x\rpanic")  # only "\n" ends a line: a CR that overprints is part of the line
    assert not hit(e, log="x\x1cpanic")
    assert hit(e, log="x\npanic")


# --- what add refuses ---


def test_regexes_outside_the_linear_subset_are_refused_by_name() -> None:
    assert regex_problem(r"BUG: \w+ at [\w/.]+:\d+") is None
    assert "offset" in (regex_problem(r"(a)\1") or "")
    assert "lookaround" in (regex_problem(r"foo(?=bar)") or "")
    assert "unbalanced" in (regex_problem("a)") or "")
    assert f"cap of {MAX_PROGRAM}" in (regex_problem("(?:a{100}){1,3}") or "")


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"issue_id": "../../etc/passwd"}, "issue_id", "letters, digits"),
        ({"issue_id": "a/../../b"}, "issue_id", "'..'"),
        ({"issue_id": "a//b"}, "issue_id", "'//'"),
        ({"issue_id": "a\nb"}, "issue_id", "letters, digits"),
        ({"issue_id": "x" * 101}, "issue_id", "1-100"),
        ({"expires_on": TODAY - timedelta(days=1)}, "expires_on", "in the past"),
        ({"scope": {"lab": "x"}}, "scope", "unknown keys lab"),
        ({"scope": {"tree": ""}}, "scope.tree", "empty"),
        ({"scope": {"tree": "net\x1b[2J"}}, "scope.tree", "control character"),
        ({"test_glob": "", "log_regex": ""}, "test_glob", "needs a test glob"),
        ({"test_glob": "**"}, "test_glob", "matches every test"),
        ({"test_glob": "u" * 501}, "test_glob", "cap of 500"),
        ({"log_regex": "(a+"}, "log_regex", "never closes"),
        ({"link": "javascript:alert(1)"}, "link", "http(s) URL"),
        ({"owner": "eve\u202e"}, "owner", "control character"),
        ({"crash_title": "BUG\x00"}, "crash_title", "control character"),
    ],
)
def test_what_a_new_entry_may_not_be(fields: dict[str, object], field: str, why: str) -> None:
    base: dict[str, object] = {"issue_id": "KI-9", "test_glob": "unit/*", "expires_on": TODAY}
    problems = entry_problems(KnownIssueEntry(**{**base, **fields}), today=TODAY)  # type: ignore[arg-type]
    assert any(name == field and why in text for name, text in problems), problems


def test_a_good_entry_expiring_today_is_accepted() -> None:
    good = KnownIssueEntry(issue_id="bugzilla:1234/a.b-c", test_glob="*", log_regex="oops", expires_on=TODAY,
                           link="https://bugs.example.org/1234", scope={"arch": "arm64"})  # fmt: skip
    assert entry_problems(good, today=TODAY) == []


# --- staleness ---


def run(test: str = "unit/math.mul", known: str = "", *, judged: bool = True, where: FailureScope = WHERE) -> SeenRun:
    return SeenRun(where=where, test_path=test, known_issue=known, judged=judged)


def test_an_entry_that_explained_none_of_the_last_n_runs_in_its_scope_is_stale() -> None:
    e = entry(test_glob="unit/math.*", scope={"arch": "x86_64"})
    assert stale([e], [run()] * 3, 3, today=TODAY) == [e]
    assert stale([e], [run(), run(), run(known="KI-1")], 3, today=TODAY) == []
    assert stale([e], [run(), run(), run(), run(known="KI-1")], 3, today=TODAY) == [e]  # only the newest 3


def test_runs_outside_its_scope_or_unjudged_do_not_make_an_entry_stale() -> None:
    e = entry(test_glob="unit/math.*", scope={"arch": "x86_64"})
    arm = FailureScope(arch="arm64")
    runs = [run(), run(where=arm), run(where=arm), run("boot/login"), run(judged=False), run(judged=False)]
    assert stale([e], runs, 2, today=TODAY) == []  # one run of its own only: too few to say
    assert stale([e], [*runs, run()], 2, today=TODAY) == [e]


def test_an_expired_entry_is_not_called_stale() -> None:
    e = entry(test_glob="unit/*", expired_at=TODAY)
    assert stale([e], [run()] * 5, 3, today=TODAY) == []
