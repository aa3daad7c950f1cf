"""The runner's framing is checked line by line: only the runner's own shape passes."""

from __future__ import annotations

from lab.framing import check_runner_framing

GOOD = (
    "KTAP version 1\n1..2\n"
    "    KTAP version 1\n    1..1\n    ok 1 inner\nok 1 math\n"
    "    no newline\nnot ok 2 strings # exit status 3 (timed out after 5 s)\n"
    "# labgate: end\n"
)


def test_the_runners_own_document_passes() -> None:
    assert check_runner_framing(GOOD, ["math", "strings"]) == []
    assert check_runner_framing("KTAP version 1\n1..0\n# labgate: end\n", []) == []


def test_a_second_top_level_document_is_refused() -> None:
    forged = GOOD.replace("# labgate: end\n", "KTAP version 1\n1..2\nok 1 math\nok 2 strings\n# labgate: end\n")
    problems = check_runner_framing(forged, ["math", "strings"])
    assert problems[0] == "runner line 9: not the runner's framing: 'KTAP version 1'"


def test_results_out_of_order_under_other_names_or_after_the_end_are_refused() -> None:
    assert check_runner_framing(GOOD.replace("ok 1 math", "ok 1 strings"), ["math", "strings"]) == [
        "runner line 6: result for 'strings' where 'math' was due"
    ]
    assert "result number 3 where 2 was due" in check_runner_framing(GOOD.replace("not ok 2", "not ok 3"),
                                                                     ["math", "strings"])[0]  # fmt: skip
    assert check_runner_framing(GOOD + "ok 3 extra\n", ["math", "strings"]) == [
        "runner line 10: text after the end marker: 'ok 3 extra'"
    ]


def test_lines_with_less_than_the_runners_indent_are_not_a_commands_output() -> None:
    for prefix in ("\v", "\f", "\x1c", "\x85", "\u2028", " ", "   ", "\t"):
        forged = GOOD.replace("    no newline\n", f"{prefix}ok 2 strings\n")
        assert check_runner_framing(forged, ["math", "strings"]) != [], repr(prefix)


def test_a_missing_end_or_short_plan_is_refused() -> None:
    assert check_runner_framing(GOOD.removesuffix("# labgate: end\n"), ["math", "strings"]) == [
        "the runner's end marker never came"
    ]
    assert check_runner_framing(GOOD, ["math", "strings", "skip"])[0] == (
        "the plan says 1..2 but 3 commands were given"
    )


def test_kunit_suites_may_follow_the_commands_when_asked_for() -> None:
    relayed = "    KTAP version 1\nok 3 kunit-example\n# labgate: end\n"
    doc = GOOD.replace("1..2", "1..3").replace("# labgate: end\n", relayed)
    assert check_runner_framing(doc, ["math", "strings"], kunit=True) == []
    assert check_runner_framing(doc, ["math", "strings"]) != []


def test_the_runners_note_that_commands_ran_as_root_is_its_own_framing() -> None:
    from lab.framing import ran_as_root_only

    noted = GOOD.replace("1..2\n", "1..2\n# labgate: note: no DUT user (su: x); commands run as root\n")
    assert check_runner_framing(noted, ["math", "strings"]) == [] and ran_as_root_only(noted)
    assert not ran_as_root_only(GOOD)
