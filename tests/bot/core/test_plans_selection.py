"""Tests chosen by what changed: path globs, MAINTAINERS areas (F:/X:/N:), documentation-only changes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bot.core.maintainers import MAX_MAINTAINERS_BYTES
from bot.core.plans import (
    PlanError,
    documentation_only,
    documentation_only_note,
    explain_selection,
    parse_plan,
    select_tests,
)

REPO = Path(__file__).resolve().parents[3]
LINUX_MAINTAINERS = Path("/work/linux-tree/MAINTAINERS")


def plan_with(tests: str, extra: str = "") -> str:
    return f"version: 1\nbuilds:\n  - name: b\n    command: make\n    artifacts: [x]\n{extra}tests:\n{tests}"


def entry(name: str, selection: str = "") -> str:
    return (f"  - name: {name}\n    build: b\n    device: {{arch: x86_64}}\n"
            f"    commands: [{{name: c, run: 'true'}}]\n{selection}")  # fmt: skip


PLAN = parse_plan(plan_with(
    entry("always")
    + entry("c-files", "    paths: ['drivers/**/*.c', Makefile]\n")
    + entry("net", "    areas: [NETWORKING]\n")
    + entry("both", "    paths: [lib/]\n    areas: [PRINTK]\n")
), "plan.yaml")  # fmt: skip
MAINTAINERS = """\
List of maintainers (prose, no section)

	F: this/line/is/prose

NETWORKING
M:	Net Maintainer <net@example.org>
S:	Maintained
F:	net/
F:	drivers/net/*
F:	include/net/*.h
X:	net/ipv6/
X:	net/core/skip.c

PRINTK
M:	Printk Maintainer <printk@example.org>
F:	include/linux/printk.h
F:	kernel/printk/

TEGRA
N:	[^a-z]tegra
"""


def names(changed: list[str], maintainers: str | None = MAINTAINERS) -> list[str]:
    return [test.name for test in select_tests(PLAN, changed, maintainers)]


@pytest.mark.parametrize(("changed", "expected"), [
    (["README"], ["always"]),  # a test with neither paths nor areas runs for every change
    (["drivers/gpu/x.c"], ["always", "c-files"]),
    (["drivers/gpu/x.h"], ["always"]),
    (["Makefile"], ["always", "c-files"]),
    (["arch/x86/Makefile"], ["always"]),  # a plain name is the tree's root file, not any file so named
    (["net/core/dev.c"], ["always", "net"]),  # F: net/ is everything below
    (["net/ipv6/route.c"], ["always"]),  # X: shuts the section out
    (["net/core/skip.c"], ["always"]),
    (["net/ipv6/route.c", "net/core/dev.c"], ["always", "net"]),  # one file in the area is enough
    (["drivers/net/veth.c"], ["always", "c-files", "net"]),  # paths OR areas
    (["drivers/net/phy/phy.c"], ["always", "c-files"]),  # F: drivers/net/* is not below
    (["include/net/sock.h"], ["always", "net"]),
    (["include/net/sub/x.h"], ["always"]),
    (["kernel/printk/printk.c"], ["always", "both"]),
    (["include/linux/printk.h"], ["always", "both"]),
    (["lib/string.c"], ["always", "both"]),
    ([], ["always"]),
])  # fmt: skip
def test_selection_by_paths_and_areas(changed: list[str], expected: list[str]) -> None:
    assert names(changed) == expected


def test_the_reasons_say_which_file_and_which_pattern() -> None:
    reasons = {s.test.name: (s.selected, s.reason, s.noteworthy)
               for s in explain_selection(PLAN, ["drivers/net/veth.c"], MAINTAINERS)}  # fmt: skip
    assert reasons == {
        "always": (True, "test always runs for every change", False),
        "c-files": (True, "test c-files selected: the change touches drivers/net/veth.c (drivers/**/*.c)", False),
        "net": (True, "test net selected: the change touches drivers/net/veth.c (MAINTAINERS NETWORKING)", False),
        "both": (False, "test both not selected: the change touches none of lib/, MAINTAINERS PRINTK", True),
    }


UNREAD = "no MAINTAINERS was read at the base (none, or over the size cap)"


def test_areas_cannot_be_checked_without_maintainers_so_the_test_runs() -> None:
    assert names(["README"], None) == ["always", "net", "both"]
    notes = [s.reason for s in explain_selection(PLAN, ["README"], None) if s.noteworthy]
    assert notes == [
        "test c-files not selected: the change touches none of drivers/**/*.c, Makefile",
        f"test net selected: its areas (NETWORKING) cannot be checked: {UNREAD}",
        f"test both selected: its areas (PRINTK) cannot be checked: {UNREAD}",
    ]


def test_an_oversized_maintainers_is_not_read_and_the_test_runs() -> None:
    huge = "X\nF:\ta/\n" * (MAX_MAINTAINERS_BYTES // 8 + 1)
    selection = {s.test.name: s for s in explain_selection(PLAN, ["README"], huge)}
    assert selection["net"].selected and "MAINTAINERS cannot be read" in selection["net"].reason
    assert "over the" in selection["net"].reason


def test_an_area_maintainers_does_not_have_runs_the_test_and_says_so() -> None:
    plan = parse_plan(plan_with(entry("gone", "    areas: [NO SUCH AREA, PRINTK]\n")))
    [selection] = explain_selection(plan, ["README"], MAINTAINERS)
    assert selection.selected and selection.noteworthy
    assert selection.reason == ("test gone selected: MAINTAINERS has no section named NO SUCH AREA to check "
                                "its areas against")  # fmt: skip
    [selection] = explain_selection(plan, ["kernel/printk/x.c"], MAINTAINERS)
    assert selection.reason == "test gone selected: the change touches kernel/printk/x.c (MAINTAINERS PRINTK)"


def test_an_area_of_n_regexes_covers_what_get_maintainer_would() -> None:
    plan = parse_plan(plan_with(entry("tegra", "    areas: [TEGRA]\n")))
    assert [t.name for t in select_tests(plan, ["drivers/gpu/host1x/tegra.c"], MAINTAINERS)] == ["tegra"]
    assert select_tests(plan, ["drivers/gpu/integrator.c"], MAINTAINERS) == []


@pytest.mark.skipif(not LINUX_MAINTAINERS.exists(), reason="needs the Linux 6.1 tree at /work/linux-tree")
def test_areas_against_the_kernels_own_maintainers() -> None:
    text = LINUX_MAINTAINERS.read_text()
    plan = parse_plan(plan_with(entry("printk", "    areas: [PRINTK]\n")
                                + entry("ipv6", "    areas: ['NETWORKING [IPv4/IPv6]']\n")))  # fmt: skip
    assert [t.name for t in select_tests(plan, ["kernel/printk/printk.c"], text)] == ["printk"]
    assert [t.name for t in select_tests(plan, ["net/ipv6/route.c"], text)] == ["ipv6"]
    assert select_tests(plan, ["mm/slub.c"], text) == []


@pytest.mark.parametrize(("selection", "error"), [
    ("    paths: [/etc/]\n", "plan.yaml:11: tests.0.paths.0: glob '/etc/' is absolute: globs are relative"),
    ("    paths: [ok/, ../up]\n", "plan.yaml:11: tests.0.paths.1: glob '../up' has a '..' component"),
    ("    areas: ['']\n", "plan.yaml:11: tests.0.areas.0: String should have at least 1 character"),
    ("    areas: [\"PRINTK\\nF: /\"]\n", "plan.yaml:11: tests.0.areas.0: String should match pattern"),
    ("    areas: PRINTK\n", "plan.yaml:11: tests.0.areas: Input should be a valid tuple"),
])  # fmt: skip
def test_bad_selection_entries_name_line_and_key(selection: str, error: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(plan_with(entry("t", selection)), "plan.yaml")
    assert error in str(info.value)


def test_documentation_only_by_default_globs() -> None:
    plan = parse_plan(plan_with(entry("t")))
    assert plan.documentation == ("Documentation/**",)
    assert documentation_only(plan, ["Documentation/a.rst", "Documentation/core-api/b.rst"])
    assert not documentation_only(plan, ["Documentation/a.rst", "kernel/printk/printk.c"])
    assert not documentation_only(plan, ["Documentation"])  # a file so named is not below the directory
    assert not documentation_only(plan, [])  # no files changed is no proof of anything
    assert documentation_only_note(plan, ["Documentation/a.rst"]) == (
        "documentation-only change: only the static checks ran (every changed file matches Documentation/**)"
    )
    assert documentation_only_note(plan, ["README"]) is None


def test_documentation_globs_of_the_plan() -> None:
    plan = parse_plan(plan_with(entry("t"), 'documentation: ["Documentation/**", "**/*.md", README]\n'))
    assert documentation_only(plan, ["README", "docs/x.md"])
    assert documentation_only_note(plan, ["README", "docs/x.md"]) == (
        "documentation-only change: only the static checks ran (every changed file matches **/*.md or README)"
    )
    assert not documentation_only(plan, ["README", "src/x.c"])
    off = parse_plan(plan_with(entry("t"), "documentation: []\n"))
    assert not documentation_only(off, ["Documentation/a.rst"])
    with pytest.raises(PlanError, match=r"plan.yaml:6: documentation.0: glob '/Documentation/' is absolute"):
        parse_plan(plan_with(entry("t"), "documentation: [/Documentation/]\n"), "plan.yaml")


def test_static_checks_take_sparse() -> None:
    plan = parse_plan(plan_with(entry("t"), "static: {sparse: true}\n"))
    assert plan.static is not None and plan.static.sparse
    assert parse_plan(plan_with(entry("t"), "static: {}\n")).static.sparse is False  # type: ignore[union-attr]


def test_the_plan_reference_parses() -> None:
    """The commented plan of tests-intree/PLAN.md is a valid plan."""
    text = (REPO / "tests-intree" / "PLAN.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    plan = parse_plan(block.group(1), "PLAN.md")
    assert plan.static is not None and plan.tests[0].paths == ()


def test_a_plan_of_too_many_selectors_is_refused() -> None:
    # Each glob is matched against each changed file in the control plane: their number is bounded.
    many = entry("t", "    paths: [" + ", ".join(f"d{i}/" for i in range(600)) + "]\n")
    many += entry("u", "    areas: [" + ", ".join(f"A{i}" for i in range(400)) + "]\n")
    with pytest.raises(PlanError, match=r"^plan.yaml:6: tests: the plan has 1001 paths, areas and documentation "
                                        r"globs, over the cap of 1000$"):  # fmt: skip
        parse_plan(plan_with(many), "plan.yaml")
    parse_plan(plan_with(many.replace(", A399]", "]")), "plan.yaml")


def test_selection_of_a_large_change_stays_quick() -> None:
    plan = parse_plan(plan_with("".join(entry(f"t{i}", f"    paths: ['drivers/x{i}/**/*.c', '**/k{i}*.h']\n")
                                        for i in range(20))))  # fmt: skip
    changed = [f"arch/x86/sub{i}/file{i}.c" for i in range(2000)]
    start = time.monotonic()
    assert select_tests(plan, changed) == []
    assert time.monotonic() - start < 30


def test_an_area_with_a_pattern_left_out_runs_the_test_and_says_so() -> None:
    # An F: line over the pattern cap is left out of the section: it might have covered the change.
    text = MAINTAINERS + f"\nODD\nF:\tkernel/odd/\nF:\t{'x*' * 200}\n"
    plan = parse_plan(plan_with(entry("odd", "    areas: [ODD]\n")))
    [selection] = explain_selection(plan, ["README"], text)
    assert selection.selected and selection.noteworthy
    assert selection.reason == ("test odd selected: MAINTAINERS ODD has patterns labgate cannot read, so what it "
                                "covers cannot be told")  # fmt: skip
    [selection] = explain_selection(plan, ["kernel/odd/a.c"], text)  # what it can read still selects
    assert selection.reason == "test odd selected: the change touches kernel/odd/a.c (MAINTAINERS ODD)"
