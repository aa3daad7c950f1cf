"""Only new warnings: a change's warning ledger against its base's, by identity, never by line number.

The diagnostics below are what gcc 12.2 (Debian 12.2.0-14) and clang 14.0.6 printed for small C files
compiled with -Wall -Wextra on this machine; a helper turns each line into a ledger entry as the build
worker's ledger does (workers/spec.py, "Build outputs")."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bot.core.build_compare import (
    BuildComparison,
    compare_builds,
    comparison_from_outputs,
    comparison_outputs,
    normalise_text,
    warning_identity,
)
from tests.requirements import missing

_DIAGNOSTIC = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<level>warning|error): (?P<text>.*?)"
                         r"(?: \[(?P<flag>-W[^\]]+)\])?$")  # fmt: skip

GCC_BASE = """\
drivers/a.c:10:15: warning: comparison of integer expressions of different signedness: ‘int’ and ‘unsigned int’ [-Wsign-compare]
drivers/a.c:15:18: warning: format ‘%s’ expects argument of type ‘char *’, but argument 2 has type ‘int’ [-Wformat=]
drivers/a.c:4:18: warning: unused parameter ‘unused’ [-Wunused-parameter]
drivers/a.c:3:12: warning: ‘helper’ defined but not used [-Wunused-function]
"""  # noqa: E501
CLANG_BASE = """\
drivers/a.c:15:17: warning: format specifies type 'char *' but the argument has type 'int' [-Wformat]
drivers/a.c:4:18: warning: unused parameter 'unused' [-Wunused-parameter]
drivers/a.c:10:8: warning: comparison of integers of different signs: 'int' and 'unsigned int' [-Wsign-compare]
drivers/a.c:16:9: warning: variable 'y' is uninitialized when used here [-Wuninitialized]
drivers/a.c:3:12: warning: unused function 'helper' [-Wunused-function]
"""
GCC_ERRORS = """\
lib/b.c:2:6: error: conflicting types for ‘x’; have ‘long int’
lib/c.c:1:134: error: call to ‘__compiletime_assert_1’ declared with attribute error: BUILD_BUG_ON failed: 1
"""
CHANGED = {"drivers/a.c": [[1, 3], [23, 23]]}


def shifted(text: str, by: int) -> str:
    """The diagnostics of the same file after an edit inserted `by` lines above all of them."""
    return re.sub(r"^([^:]+):(\d+):", lambda m: f"{m[1]}:{int(m[2]) + by}:", text, flags=re.MULTILINE)


# The change inserts three lines at the top of the file and a new unused variable at line 23.
GCC_CHANGE = shifted(GCC_BASE, 3) + "drivers/a.c:23:13: warning: unused variable ‘z’ [-Wunused-variable]\n"
CLANG_CHANGE = shifted(CLANG_BASE, 3) + "drivers/a.c:23:6: warning: unused variable 'z' [-Wunused-variable]\n"


def ledger(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        match = _DIAGNOSTIC.match(line)
        assert match, line
        entries.append({"file": match["file"], "line": int(match["line"]), "col": int(match["col"]),
                        "level": match["level"], "flag": match["flag"] or "", "text": match["text"]})  # fmt: skip
    return entries


def build(text: str, *, result: str = "pass", complete: bool = True, digest: str = "ab" * 32) -> dict[str, Any]:
    return {"result": result,
            "outputs": {"warnings": ledger(text), "warnings_complete": complete, "binary_digest": digest}}  # fmt: skip


@pytest.mark.parametrize(("base", "change"), [(GCC_BASE, GCC_CHANGE), (CLANG_BASE, CLANG_CHANGE)])
def test_shifted_warnings_are_not_new_and_the_added_one_is(base: str, change: str) -> None:
    comparison = compare_builds(build(change), build(base), CHANGED)
    assert comparison.base_known
    assert [(w["line"], w["flag"], w["on_changed_line"]) for w in comparison.new_warnings] == [
        (23, "-Wunused-variable", True)]  # fmt: skip
    assert "'z'" in comparison.new_warnings[0]["text"] or "‘z’" in comparison.new_warnings[0]["text"]
    assert comparison.gone_warnings == 0
    assert comparison.change_count == comparison.base_count + 1
    assert comparison.errors == ()


def test_a_removed_warning_is_gone_and_none_is_new() -> None:
    change = GCC_BASE.replace("drivers/a.c:3:12: warning: ‘helper’ defined but not used [-Wunused-function]\n", "")
    comparison = compare_builds(build(change), build(GCC_BASE), CHANGED)
    assert (comparison.new_warnings, comparison.gone_warnings) == ((), 1)
    assert (comparison.base_count, comparison.change_count) == (4, 3)


def test_gone_is_not_counted_when_the_change_ledger_is_incomplete() -> None:
    comparison = compare_builds(build("", complete=False), build(GCC_BASE), CHANGED)
    assert (comparison.new_warnings, comparison.gone_warnings, comparison.base_known) == ((), 0, True)


def test_identity_is_a_multiset_and_the_copy_on_a_changed_line_is_the_new_one() -> None:
    base = "drivers/a.c:30:13: warning: unused variable ‘z’ [-Wunused-variable]\n"
    change = base.replace(":30:", ":40:") + "drivers/a.c:2:13: warning: unused variable ‘z’ [-Wunused-variable]\n"
    comparison = compare_builds(build(change), build(base), CHANGED)
    assert [(w["line"], w["on_changed_line"]) for w in comparison.new_warnings] == [(2, True)]
    twice = compare_builds(build(change), build(""), CHANGED)
    assert len(twice.new_warnings) == 2


def test_identifiers_flags_and_files_tell_warnings_apart() -> None:
    base = "drivers/a.c:23:13: warning: unused variable ‘z’ [-Wunused-variable]\n"
    for change in (base.replace("‘z’", "‘zz’"), base.replace("drivers/a.c", "drivers/b.c"),
                   base.replace("[-Wunused-variable]", "[-Wunused-but-set-variable]")):  # fmt: skip
        assert len(compare_builds(build(change), build(base), {}).new_warnings) == 1


def test_normalising_drops_locations_quotes_and_spacing_but_keeps_identifiers() -> None:
    # gcc's fortify and inlining messages quote where things were declared; they move with any edit above.
    assert normalise_text("call to ‘__write_overflow’ declared at include/linux/fortify-string.h:90:6") == (
        normalise_text("call to '__write_overflow'  declared at include/linux/fortify-string.h:117:6"))  # fmt: skip
    assert normalise_text("macro ‘X’ at line 12") == normalise_text("macro 'X' at line 40")
    assert normalise_text("unused variable ‘z’") != normalise_text("unused variable ‘y’")
    # The same quoted type in a C locale and a UTF-8 one.
    assert normalise_text("unused variable 'unused_a'") == normalise_text("unused variable ‘unused_a’")
    # A version or a ratio that looks like nothing of a path is kept.
    assert "1040 bytes" in normalise_text("the frame size of 1040 bytes is larger than 1024 bytes")
    # BUILD_BUG_ON's helper is numbered by __COUNTER__, which an unrelated assertion earlier in the unit shifts.
    first, later = ledger(GCC_ERRORS)[1], ledger(GCC_ERRORS.replace("assert_1’", "assert_7’"))[1]
    assert warning_identity(first) == warning_identity(later)
    assert warning_identity({"file": "./lib/c.c", "flag": "", "text": first["text"]}) == warning_identity(first)


def test_errors_are_always_listed_even_without_a_base() -> None:
    change = build(GCC_CHANGE + GCC_ERRORS, result="fail", digest="")
    for base in (None, build(GCC_BASE, result="fail"), build(GCC_BASE, complete=False)):
        comparison = compare_builds(change, base, {"lib/b.c": [[2, 2]]})
        assert not comparison.base_known
        assert comparison.new_warnings == () and comparison.gone_warnings == 0 and comparison.base_count == 0
        assert [(e["file"], e["on_changed_line"]) for e in comparison.errors] == [("lib/b.c", True), ("lib/c.c", False)]
        assert comparison.change_count == 5 and not comparison.binary_identical
    # With a known base the change's errors are listed too, and never counted as warnings.
    known = compare_builds(change, build(GCC_BASE), {})
    assert len(known.errors) == 2 and len(known.new_warnings) == 1


def test_binary_identical_needs_both_builds_passed_and_equal_digests() -> None:
    assert compare_builds(build(GCC_BASE), build(GCC_BASE), {}).binary_identical
    assert not compare_builds(build(GCC_BASE, digest="cd" * 32), build(GCC_BASE), {}).binary_identical
    assert not compare_builds(build(GCC_BASE, result="fail"), build(GCC_BASE), {}).binary_identical
    assert not compare_builds(build(GCC_BASE), build(GCC_BASE, result="fail"), {}).binary_identical
    assert not compare_builds(build(GCC_BASE, digest=""), build(GCC_BASE, digest=""), {}).binary_identical
    assert not compare_builds(build(GCC_BASE), None, {}).binary_identical
    # Identical binaries with an incomplete base ledger: the boot may be skipped, the warnings still unknown.
    partial = compare_builds(build(GCC_BASE), build(GCC_BASE, complete=False), {})
    assert partial.binary_identical and not partial.base_known


def test_outputs_round_trip_through_json() -> None:
    comparison = compare_builds(build(GCC_CHANGE + GCC_ERRORS), build(GCC_BASE), CHANGED)
    stored = json.loads(json.dumps(comparison_outputs(comparison)))
    assert comparison_from_outputs(stored) == comparison
    assert isinstance(comparison_from_outputs(stored), BuildComparison)


@pytest.mark.parametrize(("ledger_entry", "message"), [
    ({"file": "a.c", "col": 1, "level": "warning", "flag": "", "text": "t"},
     "change.outputs.warnings[0]: missing line"),
    ({"file": "a.c", "line": "7", "col": 1, "level": "warning", "flag": "", "text": "t"},
     "change.outputs.warnings[0].line: expected a non-negative integer, got '7'"),
    ({"file": "a.c", "line": 7, "col": 1, "level": "note", "flag": "", "text": "t"},
     "change.outputs.warnings[0].level: expected one of warning, error, got 'note'"),
    ({"file": ["a.c"], "line": 7, "col": 1, "level": "warning", "flag": "", "text": "t"},
     "change.outputs.warnings[0].file: expected a string, got list"),
])  # fmt: skip
def test_a_malformed_ledger_says_which_entry(ledger_entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compare_builds({"result": "pass", "outputs": {"warnings": [ledger_entry]}}, None, {})


def test_a_malformed_stored_comparison_says_which_field() -> None:
    stored = comparison_outputs(compare_builds(build(GCC_CHANGE), build(GCC_BASE), CHANGED))
    with pytest.raises(ValueError, match=re.escape("comparison.gone_warnings: expected a non-negative integer")):
        comparison_from_outputs(stored | {"gone_warnings": -1})
    with pytest.raises(ValueError, match=re.escape("comparison.errors: expected a list, got NoneType")):
        comparison_from_outputs(stored | {"errors": None})
    del stored["new_warnings"][0]["on_changed_line"]
    with pytest.raises(ValueError, match=re.escape("comparison.new_warnings[0].on_changed_line")):
        comparison_from_outputs(stored)


BASE_SOURCE = """\
#include <stdio.h>
static int helper(int x) { return x; }
int f(int n, int unused)
{
\tunsigned int u = 3;
\tif (n < u)
\t\treturn 1;
\tprintf("%s\\n", n);
\treturn 0;
}
"""
# Three lines inserted above everything, and a new function whose variable is unused.
CHANGE_SOURCE = "/* one */\n/* two */\n/* three */\n" + BASE_SOURCE + "void g(void)\n{\n\tint fresh = 1;\n}\n"


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_real_compilers_output_yields_exactly_the_new_warning(compiler: str, tmp_path: Path) -> None:
    """Both sources compiled by this host's compiler, its stderr read as the build worker's ledger reads it."""
    if shutil.which(compiler) is None:
        missing(f"{compiler} is missing (its real diagnostics are compared); to install: apt-get install {compiler}")

    def compiled(source: str) -> dict[str, Any]:
        (tmp_path / "drivers").mkdir(exist_ok=True)
        (tmp_path / "drivers/a.c").write_text(source)
        run = subprocess.run([compiler, "-Wall", "-Wextra", "-O2", "-c", "drivers/a.c", "-o", "/dev/null"],
                             cwd=tmp_path, capture_output=True, text=True, check=True)  # fmt: skip
        lines = "".join(line + "\n" for line in run.stderr.splitlines() if _DIAGNOSTIC.match(line))
        assert lines.count("\n") >= 4, run.stderr  # sign-compare, format, unused parameter, unused function
        return {"result": "pass", "outputs": {"warnings": ledger(lines), "warnings_complete": True}}

    fresh_line = CHANGE_SOURCE.splitlines().index("\tint fresh = 1;") + 1
    comparison = compare_builds(compiled(CHANGE_SOURCE), compiled(BASE_SOURCE), {"drivers/a.c": [[1, 3],
                                [fresh_line - 2, fresh_line + 1]]})  # fmt: skip
    assert [(w["line"], w["flag"], w["on_changed_line"]) for w in comparison.new_warnings] == [
        (fresh_line, "-Wunused-variable", True)]  # fmt: skip
    assert "fresh" in comparison.new_warnings[0]["text"]
    assert comparison.gone_warnings == 0 and comparison.change_count == comparison.base_count + 1
