"""Tests for lab.ktap: ktap.rst examples, real KUnit/kselftest output, and broken output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lab.ktap import KtapDocument, KtapResult, flatten_results, parse_ktap

DATA = Path(__file__).parent / "data" / "ktap"


def load(name: str) -> KtapDocument:
    return parse_ktap((DATA / name).read_text())


def ktap(*lines: str) -> KtapDocument:
    return parse_ktap("\n".join(lines) + "\n")


def leaves(doc: KtapDocument) -> dict[str, str]:
    return {path: r.status for path, r in flatten_results(doc)}


def only(doc: KtapDocument) -> KtapResult:
    (result,) = doc.results
    return result


# --- ktap.rst -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "status", "directive", "reason"),
    [
        ("ok 1 test_case_name", "test_case_name", "pass", None, ""),
        ("not ok 1 test_case_name", "test_case_name", "fail", None, ""),
        (
            "ok 1 test # SKIP necessary dependency unavailable",
            "test",
            "skip",
            "SKIP",
            "necessary dependency unavailable",
        ),
        ("not ok 1 test # TIMEOUT 30 seconds", "test", "fail", "TIMEOUT", "30 seconds"),
        ("ok 1 check return code # rcode=0", "check return code", "pass", None, "rcode=0"),
    ],
)
def test_rst_result_line_examples(
    line: str, name: str, status: str, directive: str | None, reason: str
) -> None:
    doc = ktap("KTAP version 1", "1..1", line)
    r = only(doc)
    assert (r.number, r.name, r.status, r.directive, r.reason) == (
        1,
        name,
        status,
        directive,
        reason,
    )
    assert doc.problems == ()


def test_rst_two_nested_subtests() -> None:
    doc = load("ktap_rst_two_nested.ktap")
    assert (doc.version, doc.plan, doc.status, doc.problems) == ("KTAP version 1", 1, "fail", ())
    example = only(doc)
    assert (example.name, example.status) == ("example", "fail")
    assert example.diagnostics == ("example failed",)
    assert [(s.number, s.name, s.status) for s in example.subtests] == [
        (1, "test_1", "pass"),
        (2, "test_2", "fail"),
    ]
    assert leaves(doc) == {"example.test_1": "pass", "example.test_2": "fail"}


def test_rst_multiple_levels() -> None:
    doc = load("ktap_rst_multi_level.ktap")
    assert doc.status == "fail"
    assert doc.problems == ()
    assert leaves(doc) == {
        "example_test_1.test_3.test_1": "fail",
        "example_test_1.test_3.test_2": "pass",
        "example_test_1.test_4": "skip",
        "example_test_2": "pass",
    }
    test_4 = doc.results[0].subtests[1]
    assert (test_4.directive, test_4.reason) == ("SKIP", "")


def test_rst_example_output_hierarchy() -> None:
    doc = load("ktap_rst_example.ktap")
    main = only(doc)
    assert (main.name, main.status) == ("main_test", "fail")
    assert [(s.name, s.status) for s in main.subtests] == [
        ("example_test_1", "pass"),
        ("example_test_2", "pass"),
        ("example_test_3", "fail"),
    ]
    ex1, ex2, ex3 = main.subtests
    assert ex1.subtests[0].diagnostics == ("test_1: initializing test_1",)
    assert (ex2.subtests[0].status, ex2.subtests[0].reason) == ("skip", "test_1 skipped")
    assert ex3.subtests[1].diagnostics == ("test_2: FAIL",)
    assert (ex3.subtests[2].status, ex3.subtests[2].reason) == ("skip", "test_3 skipped")
    # Same leaf names under different parents do not collide.
    assert len(flatten_results(doc)) == 6
    assert "main_test.example_test_2.test_1" in leaves(doc)
    assert doc.problems == ()


# --- real KUnit output ------------------------------------------------------------------


def test_kunit_all_passed_nested_with_tabs_and_unindented_noise() -> None:
    doc = load("kunit_all_passed_nested.log")
    assert (doc.version, doc.plan, doc.status, doc.problems) == ("TAP version 14", 2, "pass", ())
    sysctl = doc.results[0]
    assert sysctl.diagnostics == ("kunit sysctl_test: all tests passed",)
    nested = sysctl.subtests[1]
    assert nested.name == "example"
    assert [s.name for s in nested.subtests] == ["example_simple_test", "example_mock_test"]
    # "init_suite" is unindented but printed inside the nested suite: it belongs there.
    assert nested.subtests[0].diagnostics == (
        "init_suite",
        "example_simple_test: initializing",
        "example_simple_test: example_simple_test passed",
    )
    assert len(flatten_results(doc)) == 7


def test_kunit_failure_without_top_level_plan() -> None:
    doc = load("kunit_failure.log")
    # Old KUnit printed no top-level plan, so truncation cannot be ruled out.
    assert doc.status == "incomplete"
    assert doc.problems == ("no plan line",)
    assert leaves(doc)["example.example_simple_test"] == "fail"
    assert leaves(doc)["example.example_mock_test"] == "pass"
    failed = doc.results[1].subtests[0]
    assert failed.diagnostics == (
        "init_suite",
        "example_simple_test: initializing",
        "example_simple_test: EXPECTATION FAILED at lib/kunit/example-test.c:30",
        "Expected 1 + 1 == 3, but",
        "1 + 1 == 2",
        "3 == 3",
        "example_simple_test: example_simple_test failed",
    )
    assert doc.results[1].diagnostics == ("kunit example: one or more tests failed",)


def test_kunit_skip() -> None:
    doc = load("kunit_skip_tests.log")
    assert doc.status == "pass"
    skipped = doc.results[1].subtests[1]
    assert (skipped.name, skipped.status, skipped.directive, skipped.reason) == (
        "example_skip_test",
        "skip",
        "SKIP",
        "this test should be skipped",
    )


def test_kunit_failure_nested_subtest_before_its_result_line() -> None:
    doc = load("kunit_failure_nested.log")
    assert doc.status == "fail"
    first, second = doc.results
    assert (first.name, first.subtests) == ("subtest 1", ())
    assert [(s.name, s.status) for s in second.subtests] == [("subsubtest 1", "fail")]
    assert leaves(doc) == {"subtest 1": "fail", "subtest 2.subsubtest 1": "fail"}


def test_kunit_missing_top_level_plan_is_incomplete() -> None:
    doc = load("kunit_missing_plan.log")
    assert (doc.plan, doc.status, doc.problems) == (None, "incomplete", ("no plan line",))
    # A subtest may omit its plan: its parent's result line bounds it.
    assert doc.results[0].problems == ()
    assert len(doc.results[0].subtests) == 8
    assert set(leaves(doc).values()) == {"pass"}


def test_kunit_kernel_panic_truncates_a_suite() -> None:
    doc = load("kunit_kernel_panic_interrupt.log")
    assert doc.status == "incomplete"
    assert [r.status for r in doc.results] == ["pass", "pass", "incomplete"]
    cut = doc.results[2]
    assert (cut.number, cut.name) == (3, "string-stream-test")
    assert [s.name for s in cut.subtests] == ["string_stream_test_empty_on_creation"]
    assert cut.problems == (
        "result line missing: output ended",
        "plan said 1..3 but 1 results were seen",
    )
    assert cut.diagnostics[0].startswith("Kernel panic - not syncing: VFS")
    assert cut.diagnostics[-1] == "6005fcec 601bc260 705c0000 3000000010"
    assert "string-stream-test: result line missing: output ended" in doc.problems


def test_kunit_printk_time_and_caller_prefixes_are_stripped() -> None:
    doc = load("kunit_multiple_prefixes.log")
    assert (doc.version, doc.plan, doc.status, doc.problems) == ("TAP version 14", 3, "pass", ())
    assert [r.name for r in doc.results] == [
        "kunit-resource-test",
        "kunit-try-catch-test",
        "string-stream-test",
    ]
    # The panic after the last planned result is not part of the document.
    assert doc.diagnostics == ()
    assert all(not r.diagnostics for _, r in flatten_results(doc))


def test_kunit_kernel_messages_inside_a_suite_become_diagnostics() -> None:
    doc = load("kunit_interrupted_tap_output.log")
    ok4 = doc.results[0].subtests[3]
    assert ok4.name == "kunit_resource_test_cleanup_resources"
    assert ok4.diagnostics[0] == "kAFS: Red Hat AFS client v0.1 registering."
    assert len(ok4.diagnostics) == 6
    assert len(flatten_results(doc)) == 10
    # No top-level plan: the trailing panic stays with the document.
    assert doc.diagnostics[0] == "List of all partitions:"


def test_kunit_ktap_header_followed_by_subtest_name() -> None:
    doc = load("kunit_parse_subtest_header.log")
    assert (doc.status, doc.problems) == ("pass", ())
    assert leaves(doc) == {"suite.test": "pass"}


def test_kunit_attributes_are_diagnostics_of_the_next_result() -> None:
    doc = load("kunit_parse_attributes.log")
    suite = only(doc)
    assert suite.diagnostics == ()
    assert suite.subtests[0].diagnostics == ("module: example", "test.speed: slow")


def test_kunit_no_tests_run_is_skip() -> None:
    doc = load("kunit_no_tests_run_with_header.log")
    assert (doc.plan, doc.results, doc.status, doc.problems) == (0, (), "skip", ())


def test_kunit_real_boot_log_ppc64() -> None:
    doc = load("kunit_boot_ppc64_next-20210817.log")
    assert (doc.version, doc.plan, doc.status, doc.problems) == ("TAP version 14", 11, "pass", ())
    assert len(doc.results) == 11
    assert len(flatten_results(doc)) == 69
    sysctl = doc.results[0]
    assert sysctl.diagnostics == (
        "sysctl_test: pass:10 fail:0 skip:0 total:10",
        "Totals: pass:10 fail:0 skip:0 total:10",
    )
    # Lines from another thread ([  T104]) still carry a printk time and are kept.
    log_test = doc.results[6].subtests[0]
    assert log_test.diagnostics == (
        "put this in log.",
        "this too.",
        "add to suite log.",
        "along with this.",
    )
    assert (
        doc.results[1]
        .subtests[0]
        .diagnostics[0]
        .startswith("inode_test_xtimestamp_decoding: ok 1 - 1901-12-13")
    )
    assert doc.diagnostics == ()


def test_kunit_real_failures_with_interleaved_kernel_messages() -> None:
    doc = load("kunit_executor_fail_2023.log")
    assert (doc.plan, doc.status, doc.problems) == (8, "fail", ())
    statuses = [r.status for r in doc.results]
    assert statuses == ["pass"] * 4 + ["fail"] * 4
    attr = doc.results[4]
    assert attr.name == "parse_filter_attr_test"
    assert attr.diagnostics == (
        "kunit executor: filter operation not found: speed>slow, module!=example",
        "parse_filter_attr_test: ASSERTION FAILED at lib/kunit/executor_test.c:126",
        "Expected err == 0, but",
        "err == -22 (0xffffffffffffffea)",
        "failed to parse filter '(efault)'",
    )
    assert doc.results[0].diagnostics == ("module: kunit",)


# --- real kselftest output --------------------------------------------------------------


def test_kselftest_membarrier_nested_output_is_diagnostics() -> None:
    doc = load("kselftest_membarrier.log")
    assert (doc.version, doc.status, doc.problems) == ("TAP version 13", "pass", ())
    first = doc.results[0]
    assert first.name == "selftests: membarrier: membarrier_test_single_thread"
    assert first.subtests == ()
    assert first.diagnostics[:3] == (
        "selftests: membarrier: membarrier_test_single_thread",
        "TAP version 13",
        "1..2",
    )


def test_kselftest_memfd_with_make_noise_around() -> None:
    doc = load("kselftest_memfd.log")
    assert (doc.plan, doc.status, doc.problems) == (3, "pass", ())
    assert list(leaves(doc)) == [
        "selftests: memfd: memfd_test",
        "selftests: memfd: run_fuse_test.sh",
        "selftests: memfd: run_hugetlbfs_test.sh",
    ]
    assert doc.results[2].diagnostics[-1] == "Aborted (core dumped)"
    assert doc.diagnostics == ()  # "make[3]: Leaving directory" comes after the plan is done


def test_kselftest_packetdrill() -> None:
    doc = load("kselftest_packetdrill.log")
    assert (doc.plan, doc.status) == (2, "pass")
    assert doc.results[1].diagnostics[-1] == (
        "# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0"
    )


def test_kselftest_runner_timeout() -> None:
    doc = load("kselftest_watchdog_timeout.log")
    r = only(doc)
    assert (r.status, r.directive, r.reason) == ("fail", "TIMEOUT", "45 seconds")
    assert r.diagnostics[-1] == ".............................................#"
    assert doc.status == "fail"


def test_kselftest_ping_runner_and_direct_xfail() -> None:
    assert load("kselftest_ping_runner.log").status == "pass"
    doc = load("ktap_ping_xfail.log")
    assert doc.status == "pass"
    v6 = doc.results[1]
    assert (v6.status, v6.directive, v6.reason) == ("pass", "XFAIL", "")
    assert doc.diagnostics == ()  # "# Totals" follows the last planned result


# --- directives ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status", "directive", "reason"),
    [
        ("ok 1 t # SKIP no device", "skip", "SKIP", "no device"),
        ("not ok 1 t # SKIP no device", "skip", "SKIP", "no device"),
        ("ok 1 t # skip lower case", "skip", "SKIP", "lower case"),
        ("ok 1 t # SKIP: with colon", "skip", "SKIP", "with colon"),
        ("not ok 1 t # TODO not written yet", "pass", "TODO", "not written yet"),
        ("ok 1 t # TODO not written yet", "pass", "TODO", "not written yet"),
        ("not ok 1 t # XFAIL known broken", "pass", "XFAIL", "known broken"),
        ("ok 1 t # XFAIL", "pass", "XFAIL", ""),
        ("not ok 1 t # ERROR setup failed", "fail", "ERROR", "setup failed"),
        ("not ok 1 t # exit=1", "fail", None, "exit=1"),
        ("not ok 1 t # SKIPPED is not a directive", "fail", None, "SKIPPED is not a directive"),
        ("ok 1 t #", "pass", None, ""),
    ],
)
def test_directives(line: str, status: str, directive: str | None, reason: str) -> None:
    r = only(ktap("KTAP version 1", "1..1", line))
    assert (r.name, r.status, r.directive, r.reason) == ("t", status, directive, reason)


@pytest.mark.parametrize(
    ("line", "number", "name"),
    [
        ("ok 1 - name with dash", 1, "name with dash"),
        ("ok 1 -1 is negative", 1, "-1 is negative"),
        ("ok 1", 1, ""),
        ("ok 1 - ", 1, ""),
        ("not ok 1   spaced   name  ", 1, "spaced   name"),
    ],
)
def test_result_names(line: str, number: int, name: str) -> None:
    r = only(ktap("KTAP version 1", "1..1", line))
    assert (r.number, r.name) == (number, name)


def test_not_results() -> None:
    doc = ktap("KTAP version 1", "1..1", "okay 1 x", "ok x", "not ok", "ok 1 y")
    assert only(doc).diagnostics == ("okay 1 x", "ok x", "not ok")


def test_all_skipped_and_skip_plan() -> None:
    assert ktap("KTAP version 1", "1..2", "ok 1 a # SKIP", "ok 2 b # SKIP").status == "skip"
    assert ktap("KTAP version 1", "1..2", "ok 1 a # SKIP", "ok 2 b").status == "pass"
    doc = ktap("TAP version 13", "1..0 # SKIP no hardware", "ok 1 ignored")
    assert (doc.plan, doc.results, doc.status) == (0, (), "skip")
    assert doc.diagnostics == ("SKIP no hardware",)


def test_xfail_child_does_not_fail_the_document() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..1",
        "    KTAP version 1",
        "    1..1",
        "    not ok 1 known # XFAIL bug 123",
        "ok 1 suite",
    )
    assert doc.status == "pass"


def test_failing_child_under_ok_parent_still_fails_the_document() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..1",
        "    KTAP version 1",
        "    1..1",
        "    not ok 1 broken",
        "ok 1 suite",
    )
    assert (only(doc).status, doc.status) == ("pass", "fail")


# --- nesting ---------------------------------------------------------------------------------


THREE_LEVELS = [
    "KTAP version 1",
    "1..2",
    "    KTAP version 1",
    "    # Subtest: math",
    "    1..2",
    "        KTAP version 1",
    "        # Subtest: add",
    "        1..2",
    "        # add_small: checking 1+1",
    "        ok 1 add_small",
    "        ok 2 add_big",
    "    ok 1 add",
    "    ok 2 sub",
    "ok 1 math",
    "ok 2 lone",
]


def test_three_levels_with_four_space_indentation() -> None:
    doc = parse_ktap("\n".join(THREE_LEVELS))
    assert (doc.status, doc.problems) == ("pass", ())
    assert leaves(doc) == {
        "math.add.add_small": "pass",
        "math.add.add_big": "pass",
        "math.sub": "pass",
        "lone": "pass",
    }
    add_small = doc.results[0].subtests[0].subtests[0]
    assert add_small.diagnostics == ("add_small: checking 1+1",)


def test_tap14_subtest_lines_without_version() -> None:
    doc = ktap(
        "TAP version 14",
        "1..1",
        "    # Subtest: suite",
        "    1..2",
        "    ok 1 - a",
        "        # Subtest: b",
        "        1..1",
        "        ok 1 - b1",
        "    ok 2 - b",
        "ok 1 - suite",
    )
    assert (doc.status, doc.problems) == ("pass", ())
    assert leaves(doc) == {"suite.a": "pass", "suite.b.b1": "pass"}


def test_tap14_subtest_starting_with_an_indented_plan() -> None:
    doc = ktap("TAP version 14", "1..2", "ok 1 a", "    1..1", "    ok 1 c", "ok 2 b")
    assert leaves(doc) == {"a": "pass", "b.c": "pass"}
    assert doc.problems == ()


def test_diagnostics_between_child_results_and_parent_result_go_to_parent() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..1",
        "# before the subtest",
        "  KTAP version 1",
        "  1..1",
        "  # for the child",
        "  ok 1 child",
        "  # after the child",
        "# just before the parent",
        "ok 1 parent",
    )
    parent = only(doc)
    assert parent.diagnostics == (
        "before the subtest",
        "after the child",
        "just before the parent",
    )
    assert parent.subtests[0].diagnostics == ("for the child",)


# --- truncation, plans and numbering ---------------------------------------------------------


def test_truncated_inside_three_levels() -> None:
    doc = parse_ktap("\n".join(THREE_LEVELS[:10]) + "\n[  5.0] Oops: 0000 [#1] SMP\n")
    assert doc.status == "incomplete"
    math = only(doc)
    assert (math.number, math.name, math.status) == (1, "math", "incomplete")
    add = only_sub(math)
    assert (add.name, add.status) == ("add", "incomplete")
    assert add.problems == (
        "result line missing: output ended",
        "plan said 1..2 but 1 results were seen",
    )
    assert add.diagnostics == ("[  5.0] Oops: 0000 [#1] SMP",)
    assert leaves(doc) == {"math.add.add_small": "pass"}
    assert doc.problems == (
        "plan said 1..2 but 1 results were seen",
        "math: result line missing: output ended",
        "math: plan said 1..2 but 1 results were seen",
        "math.add: result line missing: output ended",
        "math.add: plan said 1..2 but 1 results were seen",
    )


def only_sub(result: KtapResult) -> KtapResult:
    (sub,) = result.subtests
    return sub


def test_parent_result_skipping_a_level_closes_the_inner_subtest() -> None:
    doc = parse_ktap("\n".join(THREE_LEVELS[:10] + ["ok 1 math", "ok 2 lone"]))
    math = doc.results[0]
    assert math.status == "pass"
    assert [(s.name, s.status) for s in math.subtests] == [("add", "incomplete")]
    assert math.problems == ("plan said 1..2 but 1 results were seen",)
    assert doc.status == "incomplete"


def test_sibling_subtest_header_closes_an_unfinished_one() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..2",
        "  KTAP version 1",
        "  # Subtest: first",
        "  1..1",
        "  ok 1 a",
        "  KTAP version 1",
        "  # Subtest: second",
        "  1..1",
        "  ok 1 b",
        "ok 2 second",
    )
    assert [(r.number, r.name, r.status) for r in doc.results] == [
        (1, "first", "incomplete"),
        (2, "second", "pass"),
    ]
    assert doc.status == "incomplete"


def test_document_ending_before_the_plan_is_complete() -> None:
    doc = ktap("KTAP version 1", "1..5", "ok 1 a", "ok 2 b", "ok 3 c", "# still running")
    assert doc.status == "incomplete"
    assert doc.problems == ("plan said 1..5 but 3 results were seen",)
    assert doc.diagnostics == ("still running",)


def test_nested_plan_count_wrong() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..1",
        "  KTAP version 1",
        "  1..1",
        "  ok 1 a",
        "  ok 2 b",
        "ok 1 suite",
    )
    assert only(doc).problems == ("plan said 1..1 but 2 results were seen",)
    assert doc.status == "incomplete"
    assert doc.problems == ("suite: plan said 1..1 but 2 results were seen",)


def test_results_after_the_plan_is_complete_are_ignored() -> None:
    doc = ktap("KTAP version 1", "1..1", "ok 1 a", "not ok 2 b", "garbage")
    assert (len(doc.results), doc.status, doc.diagnostics) == (1, "pass", ())


def test_trailing_plan() -> None:
    doc = ktap("TAP version 13", "ok 1 a", "ok 2 b", "1..2", "not ok 3 late")
    assert (doc.plan, doc.status, doc.problems) == (2, "pass", ())


def test_test_numbers_out_of_order() -> None:
    doc = ktap("KTAP version 1", "1..4", "ok 1 a", "ok 2 b", "ok 4 c", "ok 3 d")
    assert [r.problems for r in doc.results] == [
        (),
        (),
        ("test number 3 expected, got 4",),
        ("test number 5 expected, got 3",),
    ]
    assert doc.status == "pass"  # all four planned results were seen
    assert "c: test number 3 expected, got 4" in doc.problems


def test_bail_out() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..2",
        "  KTAP version 1",
        "  1..2",
        "  ok 1 a",
        "  Bail out! no memory",
        "  ok 2 b",
        "ok 1 suite",
    )
    assert doc.status == "incomplete"
    assert doc.problems[:2] == ("bail out: no memory", "plan said 1..2 but 1 results were seen")
    suite = only(doc)
    assert (suite.status, suite.problems[0]) == ("incomplete", "result line missing: bail out")
    assert [s.name for s in suite.subtests] == ["a"]


def test_bail_out_without_reason() -> None:
    doc = ktap("TAP version 13", "1..1", "Bail out!")
    assert doc.problems[0] == "bail out"
    assert doc.status == "incomplete"


# --- headers, noise, line endings ------------------------------------------------------------


def test_no_header() -> None:
    doc = parse_ktap("ok 1 a\nnot ok 2 b\n")
    assert doc == KtapDocument(
        version=None,
        plan=None,
        results=(),
        status="incomplete",
        problems=("no KTAP version line found",),
        diagnostics=(),
    )
    assert parse_ktap("").status == "incomplete"


def test_header_only() -> None:
    doc = ktap("KTAP version 1")
    assert (doc.status, doc.problems) == ("incomplete", ("no plan line",))


def test_crlf_line_endings() -> None:
    text = "\r\n".join(THREE_LEVELS) + "\r\n"
    assert parse_ktap(text) == parse_ktap("\n".join(THREE_LEVELS))
    assert parse_ktap(text).results[0].name == "math"


def test_console_noise_before_header() -> None:
    text = (
        "SeaBIOS (version 1.16.2)\n"
        "[    0.000000] Linux version 6.1.0\n"
        "ok 7 this is not ours\n"
        "KTAP version 1\n1..1\nok 1 a\n"
    )
    doc = parse_ktap(text)
    assert (doc.status, doc.problems, leaves(doc)) == ("pass", (), {"a": "pass"})


def test_timestamps_stripped_when_the_header_has_one() -> None:
    text = "\n".join(f"[ {i:4}.123456] {line}" for i, line in enumerate(THREE_LEVELS))
    doc = parse_ktap(text)
    assert doc == parse_ktap("\n".join(THREE_LEVELS))


def test_unstamped_lines_in_a_stamped_log_are_only_diagnostics() -> None:
    doc = parse_ktap(
        "[    1.000000] KTAP version 1\n"
        "[    1.000001] 1..1\n"
        "ok 1 userspace echo\n"
        "[    1.000002] ok 1 kernel\n"
    )
    assert only(doc).name == "kernel"
    assert only(doc).diagnostics == ("ok 1 userspace echo",)


def test_stamped_lines_in_an_unstamped_log_are_only_diagnostics() -> None:
    doc = ktap("KTAP version 1", "1..1", "[   12.5] ok 1 printk", "ok 1 real")
    assert (only(doc).name, only(doc).diagnostics) == ("real", ("[   12.5] ok 1 printk",))


def test_labgate_end_marker_is_a_diagnostic() -> None:
    doc = ktap("KTAP version 1", "1..2", "ok 1 a", "# labgate: end")
    assert doc.diagnostics == ("labgate: end",)
    assert doc.status == "incomplete"


def test_unexpected_top_level_version_line() -> None:
    doc = ktap("KTAP version 1", "1..2", "ok 1 a", "KTAP version 1", "ok 2 b")
    assert doc.problems == ("unexpected 'KTAP version 1' inside the top-level test",)
    assert doc.results[1].diagnostics == ("KTAP version 1",)
    assert doc.status == "pass"


def test_repeated_header_before_the_plan_is_accepted() -> None:
    doc = ktap("TAP version 13", "KTAP version 1", "1..1", "ok 1 a")
    assert (doc.version, doc.status, doc.problems) == ("TAP version 13", "pass", ())


# --- API shape -------------------------------------------------------------------------------


def test_results_are_frozen() -> None:
    r = only(ktap("KTAP version 1", "1..1", "ok 1 a"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.name = "b"  # type: ignore[misc]


def test_flatten_keeps_parents_without_subtests_and_numbers_nameless_tests() -> None:
    doc = ktap(
        "KTAP version 1",
        "1..2",
        "ok 1 plain",
        "  KTAP version 1",
        "  1..2",
        "  ok 1",
        "  not ok 2 named",
        "not ok 2",
    )
    assert [(path, r.status) for path, r in flatten_results(doc)] == [
        ("plain", "pass"),
        ("2.1", "pass"),
        ("2.named", "fail"),
    ]


# --- forgery: what a test's own output must never do to the document -----------------------


def test_lines_split_on_newline_only_so_vertical_tabs_cannot_start_a_top_level_line() -> None:
    forged = "    \vok 1 math\vok 2 strings\fok 3 x\x1c\x85\u2028ok 4 y\n"
    text = f"KTAP version 1\n1..2\n{forged}not ok 1 math\nok 2 strings\n"
    doc = parse_ktap(text)
    assert doc.status == "fail"
    assert [r.name for r in doc.results] == ["math", "strings"]


def test_an_indented_result_before_any_top_level_one_is_never_top_level() -> None:
    doc = parse_ktap("KTAP version 1\n1..1\n    ok 1 math\n    ok 2 more\nnot ok 1 math\n")
    assert doc.status == "fail" and len(doc.results) == 1
    assert [s.name for s in doc.results[0].subtests] == ["math", "more"]


def test_a_second_top_level_document_makes_it_incomplete() -> None:
    doc = parse_ktap("KTAP version 1\n1..1\nok 1 a\nreboot: Power down\nKTAP version 1\n1..1\nok 1 a\n")
    assert doc.status == "incomplete"
    assert "a second top-level KTAP document follows the first" in doc.problems
    assert parse_ktap("KTAP version 1\n1..1\nok 1 a\nreboot: Power down\n").status == "pass"


def test_a_megabyte_line_and_a_5000_digit_number_parse_at_once_and_never_count() -> None:
    import time

    started = time.monotonic()
    doc = parse_ktap("KTAP version 1\n1..1\n    ok 1 a" + " " * (1 << 20) + "b\n    ok " + "9" * 5000
                     + " warmup\nnot ok 1 math\n")  # fmt: skip
    assert time.monotonic() - started < 1.0
    assert doc.status == "fail" and [r.name for r in doc.results] == ["math"]
