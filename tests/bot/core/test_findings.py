"""A job's findings before any forge's words (bot/core/findings.py): the edges the reporting tests do not
reach through the store."""

from __future__ import annotations

from typing import Any

from bot.core.build_compare import BuildComparison
from bot.core.findings import StaticTest, build_findings, comparison_findings, static_findings


def warning(line: int, text: str, *, level: str = "warning", changed: bool = True) -> dict[str, Any]:
    return {"file": "net/core/dev.c", "line": line, "col": 5, "level": level, "flag": "-Wunused-variable",
            "text": text, "on_changed_line": changed}  # fmt: skip


def finding(commit: str, line: int, *, level: str = "warning", source: str = "checkpatch") -> dict[str, Any]:
    return {"file": "net/core/dev.c", "line": line, "level": level, "source": source, "check": "LONG_LINE",
            "text": "line length of 104 exceeds 100 columns", "commit": commit}  # fmt: skip


def test_errors_lead_the_count_line_and_an_error_without_a_line_is_listed_not_annotated() -> None:
    comparison = BuildComparison(
        base_known=True, new_warnings=(warning(9, "unused variable 'a'"), warning(40, "unused variable 'b'",
                                                                                  changed=False)),
        gone_warnings=1, base_count=3, change_count=4,
        errors=(warning(12, "'c' undeclared", level="error", changed=False),
                warning(0, "no such file", level="error", changed=False)),
        binary_identical=False)  # fmt: skip
    found = comparison_findings(comparison)
    assert found.headline == "2 errors; 2 new warnings (base 3 → 4)"
    assert found.errors == 2 and len(found.lines) == 4
    # Errors always, wherever they are; new warnings only where the change wrote.
    assert [(d["line"], d["level"]) for d in found.diagnostics] == [(12, "error"), (9, "warning")]


def test_a_command_build_has_no_findings_and_a_base_build_only_counts() -> None:
    assert build_findings({"diagnostics": [], "artifacts": {}}) is None
    base = build_findings({"warnings": [warning(1, "x"), warning(2, "y", level="error")]}, base_build=True)
    assert base is not None and base.headline == "base build: 1 warning" and base.lines == ()
    said = build_findings({"warnings": [], "comparison_error": "change.outputs.warnings[0]: missing line"})
    assert said is not None and said.headline == "warnings not compared: change.outputs.warnings[0]: missing line"


def test_patches_are_named_by_number_only_when_every_patch_has_findings() -> None:
    tests = [StaticTest("static/checkpatch/1-net-add-a", "pass"), StaticTest("static/checkpatch/2-net-add-b", "pass"),
             StaticTest("static/diff-check", "pass")]  # fmt: skip
    both = static_findings({"annotations": [finding("a" * 40, 3), finding("b" * 40, 4)]}, tests, {})
    assert both.headline == ("checkpatch: 1 warning in patch 1/2 'net add a'; "
                             "checkpatch: 1 warning in patch 2/2 'net add b'")  # fmt: skip
    # Patch 1 found nothing: which patch a commit is cannot be told, so its sha names it.
    one = static_findings({"annotations": [finding("b" * 40, 4), finding("b" * 40, 5, level="error")]}, tests, {})
    assert one.headline == f"checkpatch: 1 error, 1 warning in commit {'b' * 12}"
    assert one.diagnostics == ()  # no changed lines given: nothing annotated


def test_static_findings_say_what_is_missing_or_unreadable() -> None:
    assert static_findings({"annotations": []}, [], {}).headline == "no findings"
    capped = static_findings({"annotations": [finding("", 3, source="diff-check")], "annotations_complete": False},
                             [], {"net/core/dev.c": [[3, 3]]})  # fmt: skip
    assert capped.notes == ("the checks found more than the worker reports",)
    assert [d["title"] for d in capped.diagnostics] == ["diff-check: LONG_LINE"]
    bad = static_findings({"annotations": [finding("", 3, source="**ok** [x](https://a)")]}, [], {})
    assert bad.headline.startswith("static findings unreadable: annotations[0].source: expected a tool's name")
    assert static_findings({"annotations": [finding("", 3, source="sparse")]}, [], {}).headline == "sparse: 1 warning"
    assert static_findings({"annotations": "x"}, [], {}).headline.endswith("annotations: expected a list, got str")
