"""Which compiler warnings a change introduced: its build's warning ledger against its base build's.

A kernel build reports the ledger of its whole build dir (workers/spec.py, "Build outputs"): every
warning of every unit, recompiled or not. The change's ledger minus the base's, compared as multisets of
(file, flag, normalised text), is what the change added; line numbers never take part, because an edit
above a warning moves it without changing it. Maintainers read only new warnings: pre-existing ones are
noise that buries the one the patch added.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A source location quoted inside a message ("declared at x.c:12:3", "inlined from 'f' at lib/a.c:40:9"):
# it moves with unrelated edits, so it is not part of the warning's identity.
_LOCATION = re.compile(r"(?<![\w/.+-])[\w./+-]+\.(?:c|h|S|s|lds|rs|cpp|cc)(?::\d+){1,2}\b")
_LINE_WORD = re.compile(r"\bline \d+\b")
# BUILD_BUG_ON's helper is named after __COUNTER__ (include/linux/compiler_types.h), which shifts when any
# earlier assertion in the unit is added or removed: the number is not part of what the assertion says.
_COUNTER_NAME = re.compile(r"\b(__compiletime_assert)_\d+\b")
# gcc quotes with ‘’ in a UTF-8 locale and with '' in C: the same warning either way.
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPACE = re.compile(r"\s+")

_LEVELS = ("warning", "error")
_KEYS = ("file", "line", "col", "level", "flag", "text")


@dataclass(frozen=True)
class BuildComparison:
    base_known: bool  # the base build passed and reported a complete ledger
    new_warnings: tuple[dict[str, Any], ...]  # the change's warnings absent from the base, by identity
    gone_warnings: int  # how many base warnings the change no longer has
    base_count: int
    change_count: int
    errors: tuple[dict[str, Any], ...]  # the change's errors: always reported
    binary_identical: bool  # both builds passed and their binary_digest is equal


def normalise_text(text: str) -> str:
    """A diagnostic's text without what moves with unrelated edits; identifiers and types are kept."""
    text = text.translate(_QUOTES)
    text = _LOCATION.sub("<location>", text)
    text = _LINE_WORD.sub("line <n>", text)
    text = _COUNTER_NAME.sub(r"\1_<n>", text)
    return _SPACE.sub(" ", text).strip()


def warning_identity(warning: Mapping[str, Any]) -> tuple[str, str, str]:
    """What makes two diagnostics the same warning across builds: never its line or column."""
    return (_clean_path(str(warning["file"])), str(warning["flag"]), normalise_text(str(warning["text"])))


def _clean_path(path: str) -> str:
    return path[2:] if path.startswith("./") else path


def _on_lines(ranges: Sequence[Sequence[int]], line: int) -> bool:
    return any(first <= line <= last for first, last in ranges)


def objects_of(where: str, value: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """A worker's list of objects, each with where it is ("annotations[3]"); ValueError when it is not one."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}[{index}]: expected an object, got {type(item).__name__}")
    return [(f"{where}[{index}]", item) for index, item in enumerate(value)]


def _checked_ledger(where: str, ledger: Any) -> list[dict[str, Any]]:
    """A list of diagnostics, each entry checked: a worker's output is input, and bad input says where."""
    checked = []
    for at, item in objects_of(where, ledger):
        missing = [key for key in _KEYS if key not in item]
        if missing:
            raise ValueError(f"{at}: missing {', '.join(missing)}")
        for key in ("line", "col"):
            if not isinstance(item[key], int) or isinstance(item[key], bool) or item[key] < 0:
                raise ValueError(f"{at}.{key}: expected a non-negative integer, got {item[key]!r}")
        for key in ("file", "flag", "text"):
            if not isinstance(item[key], str):
                raise ValueError(f"{at}.{key}: expected a string, got {type(item[key]).__name__}")
        if item["level"] not in _LEVELS:
            raise ValueError(f"{at}.level: expected one of {', '.join(_LEVELS)}, got {item['level']!r}")
        checked.append({key: item[key] for key in _KEYS} | {"file": _clean_path(item["file"])})
    return checked


def _outputs(where: str, build: Mapping[str, Any]) -> Mapping[str, Any]:
    outputs = build.get("outputs") or {}
    if not isinstance(outputs, Mapping):
        raise ValueError(f"{where}.outputs: expected an object, got {type(outputs).__name__}")
    return outputs


def _passed(build: Mapping[str, Any]) -> bool:
    return build.get("result") == "pass"


def compare_builds(change: Mapping[str, Any], base: Mapping[str, Any] | None,
                   changed_lines: Mapping[str, Sequence[Sequence[int]]]) -> BuildComparison:  # fmt: skip
    """The change's build against its base's. Each build is {"result": the job's result ("pass", "fail",
    ...) or None, "outputs": its JobResult.outputs}; changed_lines is the checkout's {file: [[first, last]]}.

    With no base, or a base that failed or reported an incomplete ledger, nothing can be called new:
    base_known is False and only the change's errors are listed. gone_warnings is counted only when the
    change's ledger is complete too (a build that stopped early has not lost the warnings it never reached).
    Raises ValueError naming the entry when a ledger is malformed."""
    change_outputs = _outputs("change", change)
    change_ledger = _checked_ledger("change.outputs.warnings", change_outputs.get("warnings", []))

    def located(item: dict[str, Any]) -> dict[str, Any]:
        return item | {"on_changed_line": _on_lines(changed_lines.get(item["file"], ()), item["line"])}

    errors = tuple(located(item) for item in change_ledger if item["level"] == "error")
    change_warnings = [located(item) for item in change_ledger if item["level"] == "warning"]
    base_outputs = _outputs("base", base) if base is not None else {}
    base_known = base is not None and _passed(base) and base_outputs.get("warnings_complete") is True
    digest = change_outputs.get("binary_digest")
    binary_identical = (base is not None and _passed(change) and _passed(base) and isinstance(digest, str)
                        and bool(digest) and digest == base_outputs.get("binary_digest"))  # fmt: skip
    if not base_known:
        return BuildComparison(base_known=False, new_warnings=(), gone_warnings=0, base_count=0,
                               change_count=len(change_warnings), errors=errors,
                               binary_identical=binary_identical)  # fmt: skip
    base_ledger = _checked_ledger("base.outputs.warnings", base_outputs.get("warnings", []))
    base_warnings = [item for item in base_ledger if item["level"] == "warning"]
    base_counts = Counter(warning_identity(item) for item in base_warnings)
    by_identity: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for item in change_warnings:
        by_identity[warning_identity(item)].append(item)
    new: list[dict[str, Any]] = []
    for identity, items in by_identity.items():
        extra = len(items) - base_counts[identity]
        if extra > 0:
            # Which copies are new is a guess; the ones on lines the change wrote are the likely ones.
            items.sort(key=lambda item: (not item["on_changed_line"], item["line"], item["col"]))
            new.extend(items[:extra])
    new.sort(key=lambda item: (item["file"], item["line"], item["col"]))
    change_counts = Counter({identity: len(items) for identity, items in by_identity.items()})
    complete = change_outputs.get("warnings_complete") is True
    gone = sum((base_counts - change_counts).values()) if complete else 0
    return BuildComparison(base_known=True, new_warnings=tuple(new), gone_warnings=gone,
                           base_count=len(base_warnings), change_count=len(change_warnings), errors=errors,
                           binary_identical=binary_identical)  # fmt: skip


def comparison_outputs(comparison: BuildComparison) -> dict[str, Any]:
    """The comparison as JSON, stored with the change build's outputs under "comparison"."""
    return {"base_known": comparison.base_known, "new_warnings": [dict(w) for w in comparison.new_warnings],
            "gone_warnings": comparison.gone_warnings, "base_count": comparison.base_count,
            "change_count": comparison.change_count, "errors": [dict(e) for e in comparison.errors],
            "binary_identical": comparison.binary_identical}  # fmt: skip


def _diagnostics_from(where: str, items: Any) -> tuple[dict[str, Any], ...]:
    checked = _checked_ledger(where, items)
    located = []
    for index, (item, raw) in enumerate(zip(checked, items, strict=True)):
        flag = raw.get("on_changed_line")
        if not isinstance(flag, bool):
            raise ValueError(f"{where}[{index}].on_changed_line: expected true or false, got {flag!r}")
        located.append(item | {"on_changed_line": flag})
    return tuple(located)


def comparison_from_outputs(data: Mapping[str, Any]) -> BuildComparison:
    """The comparison stored by comparison_outputs; ValueError naming the field when it is not one."""
    if not isinstance(data, Mapping):
        raise ValueError(f"comparison: expected an object, got {type(data).__name__}")
    for key in ("base_known", "binary_identical"):
        if not isinstance(data.get(key), bool):
            raise ValueError(f"comparison.{key}: expected true or false, got {data.get(key)!r}")
    for key in ("gone_warnings", "base_count", "change_count"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"comparison.{key}: expected a non-negative integer, got {value!r}")
    return BuildComparison(base_known=data["base_known"],
                           new_warnings=_diagnostics_from("comparison.new_warnings", data.get("new_warnings")),
                           gone_warnings=data["gone_warnings"], base_count=data["base_count"],
                           change_count=data["change_count"],
                           errors=_diagnostics_from("comparison.errors", data.get("errors")),
                           binary_identical=data["binary_identical"])  # fmt: skip
