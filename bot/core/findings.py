"""What a kernel build or the static stage found that is the change's own, said once for every forge.

A build says its count delta against the base and each warning the change introduced; a static job
counts its checks' errors and warnings per check and per patch. Forges show `diagnostics` inline (GitHub
check-run annotations), so only what a reviewer should act on goes there: new warnings on lines the change
wrote, every error, and static findings on changed lines. Pre-existing warnings are never annotated.
Everything a finding quotes (file names, compiler text, checkpatch's words) is the change's text: the
renderers fence or escape it (bot/core/render.py); this module only arranges it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.core.build_compare import BuildComparison, comparison_from_outputs, objects_of
from bot.core.render import fenced, inline_text

MAX_LISTED = 50  # new warnings or static findings listed in a report; the job's page has the rest
MAX_DIAGNOSTICS = 200  # inline annotations per job
MAX_MESSAGE = 4000
# checkpatch, diff-check, kernel-doc today (workers/spec.py); a tool added later (sparse) is reported alike.
_SOURCE = re.compile(r"[a-z][a-z0-9-]{0,39}")
_CHECKPATCH_TEST = re.compile(r"^static/checkpatch/(\d+)-(.*)$")


@dataclass(frozen=True)
class Findings:
    """A job's findings in labgate's words, before any forge's."""

    headline: str  # "1 new warning (base 12 → 13)", "checkpatch: 1 error, 2 warnings": the title's tail
    lines: tuple[str, ...] = ()  # plain, one finding a line: "drivers/a.c:23: unused variable 'z' [-Wunused-variable]"
    notes: tuple[str, ...] = ()  # "binary identical to base"
    # Inline annotations: {"path", "line", "level" (error|warning), "message", "title"}.
    diagnostics: tuple[dict[str, Any], ...] = ()
    more: int = 0  # findings not listed (past MAX_LISTED)
    errors: int = 0  # how many of them are errors

    def text(self) -> str:
        """The findings listed in plain text, for reports that show no annotations (a mail, a merge request
        note); they show the headline and notes in the job's title."""
        return "\n".join([*self.lines, *([f"... and {self.more} more"] if self.more else [])])

    def markdown(self) -> str:
        """The head of a job's markdown report: the count line, the notes, then every finding listed, fenced
        (a compiler's or checkpatch's text quotes the change)."""
        out = [f"**{inline_text(self.headline)}**", *(inline_text(note) for note in self.notes)]
        if self.lines:
            out.append(fenced("\n".join(self.lines)))
        if self.more:
            out.append(f"… and {self.more} more: see the log.")
        return "\n\n".join(out)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _on_lines(changed: Mapping[str, Sequence[Sequence[int]]], path: str, line: int) -> bool:
    return any(first <= line <= last for first, last in changed.get(path, ()))


def warning_line(item: Mapping[str, Any]) -> str:
    """`file:line: text [-Wflag]`, as a compiler says it, with `error: ` before an error's text."""
    level = "error: " if item.get("level") == "error" else ""
    flag = f" [{item['flag']}]" if item.get("flag") else ""
    return f"{item['file']}:{item['line']}: {level}{item['text']}{flag}"


def _compiler_annotation(item: Mapping[str, Any], new: bool) -> dict[str, Any]:
    flag = f" [{item['flag']}]" if item.get("flag") else ""
    title = f"new compiler warning{flag}" if new else f"compiler error{flag}"
    return {"path": item["file"], "line": item["line"], "level": item["level"],
            "message": (str(item["text"]) + flag)[:MAX_MESSAGE], "title": title}  # fmt: skip


def comparison_headline(comparison: BuildComparison) -> str:
    """The count delta: "1 new warning (base 12 → 13)", "no new warnings (base 12, change 12)", or why
    there is none; the change's errors first."""
    parts = [plural(len(comparison.errors), "error")] if comparison.errors else []
    if not comparison.base_known:
        parts.append("base build unknown: warnings not compared")
    elif comparison.new_warnings:
        new = plural(len(comparison.new_warnings), "new warning")
        parts.append(f"{new} (base {comparison.base_count} → {comparison.change_count})")
    else:
        parts.append(f"no new warnings (base {comparison.base_count}, change {comparison.change_count})")
    return "; ".join(parts)


def comparison_findings(comparison: BuildComparison) -> Findings:
    """A change build's findings: its errors and new warnings, listed; annotated: every error and the new
    warnings on lines the change wrote."""
    listed = [*comparison.errors, *comparison.new_warnings]
    # A forge places an annotation on a line: an error of a whole file (line 0) is listed, not annotated.
    annotated = [_compiler_annotation(item, new=False) for item in comparison.errors if item["line"] > 0]
    annotated += [_compiler_annotation(item, new=True) for item in comparison.new_warnings if item["on_changed_line"]]
    return Findings(headline=comparison_headline(comparison),
                    lines=tuple(warning_line(item) for item in listed[:MAX_LISTED]),
                    notes=("binary identical to base",) if comparison.binary_identical else (),
                    diagnostics=tuple(annotated[:MAX_DIAGNOSTICS]),
                    more=max(0, len(listed) - MAX_LISTED), errors=len(comparison.errors))  # fmt: skip


def build_findings(outputs: Mapping[str, Any], *, base_build: bool = False) -> Findings | None:
    """A kernel build's findings from its outputs; None for a build without a warning ledger (a plan's
    command build, whose compiler lines are its `diagnostics`). `base_build`: the base's own build, which
    is compared with nothing and whose warnings are never the change's."""
    if "comparison" not in outputs and "warnings" not in outputs:
        return None
    ledger = outputs.get("warnings")
    count = sum(1 for item in ledger if isinstance(item, Mapping) and item.get("level") == "warning") if (
        isinstance(ledger, list)) else 0  # fmt: skip
    if base_build:
        return Findings(headline=f"base build: {plural(count, 'warning')}")
    if isinstance(outputs.get("comparison_error"), str):  # the control side could not read the ledgers
        return Findings(headline=f"warnings not compared: {outputs['comparison_error']}")
    stored = outputs.get("comparison")
    if stored is not None:
        try:
            return comparison_findings(comparison_from_outputs(stored))
        except ValueError as error:
            return Findings(headline=f"warnings not compared: the stored comparison is unreadable ({error})")
    # Not compared (yet): nothing can be called new, but the change's errors are always reported.
    errors = [item for item in ledger or () if isinstance(item, Mapping) and item.get("level") == "error"
              and isinstance(item.get("file"), str) and isinstance(item.get("line"), int)]  # fmt: skip
    return comparison_findings(BuildComparison(
        base_known=False, new_warnings=(), gone_warnings=0, base_count=0, change_count=count,
        errors=tuple({**item, "on_changed_line": False} for item in errors), binary_identical=False))  # fmt: skip


@dataclass(frozen=True)
class StaticTest:
    """One check run of a static job, as its TestResult says it."""

    path: str  # "static/checkpatch/1-fix-the-frobnicator", "static/diff-check"
    status: str


def checked_annotations(annotations: Any) -> list[dict[str, Any]]:
    """A static job's outputs["annotations"], each checked; ValueError naming the entry otherwise."""
    checked = []
    for at, item in objects_of("annotations", annotations):
        for key in ("file", "source", "check", "text", "commit"):
            if not isinstance(item.get(key, ""), str):
                raise ValueError(f"{at}.{key}: expected a string, got {type(item[key]).__name__}")
        line = item.get("line", 0)
        if not isinstance(line, int) or isinstance(line, bool) or line < 0:
            raise ValueError(f"{at}.line: expected a non-negative integer, got {line!r}")
        if item.get("level") not in ("error", "warning"):
            raise ValueError(f"{at}.level: expected error or warning, got {item.get('level')!r}")
        if not _SOURCE.fullmatch(str(item.get("source"))):
            raise ValueError(f"{at}.source: expected a tool's name (checkpatch, diff-check, kernel-doc, ...), "
                             f"got {item.get('source')!r}")  # fmt: skip
        checked.append({"file": item.get("file", ""), "line": line, "level": item["level"], "source": item["source"],
                        "check": item.get("check", ""), "text": item.get("text", ""),
                        "commit": item.get("commit", "")})  # fmt: skip
    return checked


def _counts(items: Sequence[Mapping[str, Any]]) -> str:
    errors = sum(1 for item in items if item["level"] == "error")
    warnings = len(items) - errors
    counted = [plural(errors, "error")] if errors else []
    return ", ".join(counted + ([plural(warnings, "warning")] if warnings else []))


def _patch_names(annotations: Sequence[Mapping[str, Any]], tests: Sequence[StaticTest]) -> dict[str, str]:
    """checkpatch's commits as "patch n/N 'subject'". The worker runs checkpatch patch by patch and writes
    one test per patch ("static/checkpatch/<n>-<subject slug>"), but an annotation names only its commit:
    the two meet only when every patch has findings (then the commits' order is the patches'). Otherwise a
    commit is named by its sha, which is never wrong."""
    patches = sorted((int(m[1]), m[2]) for t in tests if (m := _CHECKPATCH_TEST.match(t.path)))
    commits = list(dict.fromkeys(item["commit"] for item in annotations if item["source"] == "checkpatch"))
    if len(commits) == len(patches) and all(commits):
        return {commit: f"patch {n}/{len(patches)} '{slug.replace('-', ' ')}'"
                for commit, (n, slug) in zip(commits, patches, strict=True)}  # fmt: skip
    return {commit: f"commit {commit[:12]}" for commit in commits if commit}


def static_line(item: Mapping[str, Any]) -> str:
    """`file:line: level: text [source CHECK]`, or without a place for a finding about the whole patch."""
    where = f"{item['file']}:{item['line']}: " if item["file"] and item["line"] else (
        f"{item['file']}: " if item["file"] else "")  # fmt: skip
    check = f"{item['source']} {item['check']}" if item["check"] else item["source"]
    return f"{where}{item['level']}: {item['text']} [{check}]"


def static_findings(outputs: Mapping[str, Any], tests: Sequence[StaticTest],
                    changed: Mapping[str, Sequence[Sequence[int]]]) -> Findings:  # fmt: skip
    """A static job's findings from its outputs: counts per check (and per patch for checkpatch), every
    finding listed, and those on lines the change wrote annotated."""
    try:
        items = checked_annotations(outputs.get("annotations", []))
    except ValueError as error:
        return Findings(headline=f"static findings unreadable: {error}")
    if not items:
        return Findings(headline="no findings")
    names = _patch_names(items, tests)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for item in items:
        where = names.get(item["commit"], "") if item["source"] == "checkpatch" else ""
        groups.setdefault((item["source"], where), []).append(item)
    headline = "; ".join(f"{source}: {_counts(group)}" + (f" in {where}" if where else "")
                         for (source, where), group in groups.items())  # fmt: skip
    annotated = [{"path": item["file"], "line": item["line"], "level": item["level"],
                  "message": item["text"][:MAX_MESSAGE],
                  "title": f"{item['source']}: {item['check']}" if item["check"] else item["source"]}
                 for item in items if item["file"] and _on_lines(changed, item["file"], item["line"])]  # fmt: skip
    cut = ("the checks found more than the worker reports",) if outputs.get("annotations_complete") is False else ()
    return Findings(headline=headline, lines=tuple(static_line(item) for item in items[:MAX_LISTED]), notes=cut,
                    diagnostics=tuple(annotated[:MAX_DIAGNOSTICS]), more=max(0, len(items) - MAX_LISTED),
                    errors=sum(1 for item in items if item["level"] == "error"))  # fmt: skip
