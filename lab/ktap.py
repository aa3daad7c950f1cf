"""KTAP v1 / kselftest TAP parser (pure): console text in, a tree of test results out."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "skip", "incomplete"]

# printk time, optionally with the CONFIG_PRINTK_CALLER field: "[   14.375004][    T1] ".
_TIMESTAMP = re.compile(r"\[\s*\d+\.\d+\](?:\[\s*[A-Z]?\d+\])? ?")
_VERSION = re.compile(r"K?TAP version \d+")
_SUBTEST = re.compile(r"#\s*Subtest:\s*(.*)")
# Numbers have at most 9 digits: a test's output may print a 5000-digit "test number", and
# int() of that raises. Patterns are written so that no two adjacent parts can match the same
# characters: otherwise a long line costs quadratic time (a hostile test prints one).
_PLAN = re.compile(r"1\.\.(\d{1,9})\s*(?:#\s*(.*))?")
# "-" right after the number is TAP's optional separator, not part of the name ("ok 1 -1" keeps it).
_RESULT = re.compile(r"(ok|not ok)\s+(\d{1,9})(?:\s+-(?=\s|$))?(?:\s([^#]*))?(?:#\s*(.*))?")
# Longer lines are kept as diagnostics (shortened), never parsed as KTAP.
MAX_LINE_CHARS = 4096
_BAIL_OUT = re.compile(r"Bail out!\s*(.*)")
# TIMEOUT and ERROR are listed by ktap.rst; they keep the ok / not ok outcome.
_DIRECTIVES = frozenset({"SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR"})


@dataclass(frozen=True)
class KtapResult:
    number: int
    name: str
    status: Status
    directive: str | None
    reason: str
    diagnostics: tuple[str, ...]
    subtests: tuple[KtapResult, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class KtapDocument:
    version: str | None
    plan: int | None
    results: tuple[KtapResult, ...]
    status: Status
    problems: tuple[str, ...]
    diagnostics: tuple[str, ...]


@dataclass
class _Block:
    """One open level of nesting: the top level, or a subtest whose result line is pending."""

    indent: int
    name: str = ""
    plan: int | None = None
    results: list[KtapResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # lines not yet claimed by a result

    def is_fresh(self) -> bool:
        return self.plan is None and not self.results and not self.name


def _status(ok: bool, directive: str | None) -> Status:
    if directive == "SKIP":
        return "skip"
    # TODO and XFAIL mark a failure the test's author already knows about. Counting it
    # as "fail" would block every change on a known breakage, and "skip" would hide
    # that the test ran; so it is a pass, and the directive stays for reports to show.
    if directive in ("TODO", "XFAIL"):
        return "pass"
    return "pass" if ok else "fail"


def _split_comment(comment: str | None) -> tuple[str | None, str]:
    words = (comment or "").split(maxsplit=1)
    keyword = words[0].upper().rstrip(":") if words else ""  # some tests print "# SKIP: why"
    if keyword in _DIRECTIVES:
        return keyword, words[1] if len(words) > 1 else ""
    return None, (comment or "").strip()


def _plan_problems(block: _Block) -> list[str]:
    if block.plan is None or block.plan == len(block.results):
        return []
    return [f"plan said 1..{block.plan} but {len(block.results)} results were seen"]


class _Parser:
    def __init__(self, indent: int) -> None:
        self.stack = [_Block(indent)]
        self.problems: list[str] = []
        self.incomplete = False
        self.done = False

    def feed(self, indent: int, text: str) -> None:
        if len(text) > MAX_LINE_CHARS:
            self.stack[-1].pending.append(f"{text[:200]}... ({len(text)} characters)")
        elif m := _BAIL_OUT.fullmatch(text):
            self.problems.append(f"bail out: {m.group(1)}" if m.group(1) else "bail out")
            self.incomplete = True
            self.finish("bail out")
        elif _VERSION.fullmatch(text):
            self._open(indent, "", text)
        elif m := _SUBTEST.fullmatch(text):
            self._open(indent, m.group(1).strip(), text)
        elif m := _PLAN.fullmatch(text):
            self._plan(indent, int(m.group(1)), m.group(2))
        elif m := _RESULT.fullmatch(text):
            self._result(indent, m)
        else:
            self.stack[-1].pending.append(text[1:].strip() if text.startswith("#") else text)

    def _open(self, indent: int, name: str, text: str) -> None:
        top = self.stack[-1]
        if indent == top.indent and top.is_fresh():
            top.name = name  # "KTAP version 1" then "# Subtest: x": one header
            return
        if indent <= self.stack[0].indent:
            if not name:
                self.problems.append(f"unexpected {text!r} inside the top-level test")
            top.pending.append(text.lstrip("#").strip())
            return
        while self.stack[-1].indent >= indent:
            self._truncate_top("no result line before the next subtest")
        self.stack.append(_Block(indent, name))

    def _plan(self, indent: int, count: int, comment: str | None) -> None:
        top = self.stack[-1]
        if indent > top.indent and not top.is_fresh():
            # TAP14 lets a subtest start with its indented plan and no header.
            self._open(indent, "", "")
            top = self.stack[-1]
        if top.plan is not None:
            top.pending.append(f"1..{count}")
            return
        top.plan = count
        if comment:
            top.pending.append(comment.strip())
        self._check_done()

    def _result(self, indent: int, m: re.Match[str]) -> None:
        if len(self.stack) == 1 and indent > self.stack[0].indent:
            # An indented result belongs to a subtest, even one with no header or plan
            # (TAP14 allows that); it must never count as a top-level result. (Deeper
            # levels stay lenient: kunit's own output nests a result too deep at times.)
            self.stack.append(_Block(indent))
        child: _Block | None = None
        while len(self.stack) > 1 and self.stack[-1].indent > indent:
            if len(self.stack) > 2 and self.stack[-2].indent > indent:
                self._truncate_top("no result line, a shallower result came first")
            else:
                child = self.stack.pop()
        block = self.stack[-1]
        number = int(m.group(2))
        directive, reason = _split_comment(m.group(4))
        problems = self._number_problems(block, number)
        diagnostics = list(block.pending)
        subtests: tuple[KtapResult, ...] = ()
        if child is not None:
            plan_problems = _plan_problems(child)
            self.incomplete = self.incomplete or bool(plan_problems)
            problems += plan_problems
            diagnostics += child.pending
            subtests = tuple(child.results)
        block.pending = []
        block.results.append(
            KtapResult(
                number=number,
                name=(m.group(3) or "").strip(),
                status=_status(m.group(1) == "ok", directive),
                directive=directive,
                reason=reason,
                diagnostics=tuple(diagnostics),
                subtests=subtests,
                problems=tuple(problems),
            )
        )
        self._check_done()

    def _number_problems(self, block: _Block, number: int) -> list[str]:
        expected = block.results[-1].number + 1 if block.results else 1
        return [] if number == expected else [f"test number {expected} expected, got {number}"]

    def _truncate_top(self, why: str) -> None:
        """Close the innermost subtest whose own result line never came."""
        block = self.stack.pop()
        parent = self.stack[-1]
        number = parent.results[-1].number + 1 if parent.results else 1
        parent.results.append(
            KtapResult(
                number=number,
                name=block.name,
                status="incomplete",
                directive=None,
                reason="",
                diagnostics=tuple(parent.pending + block.pending),
                subtests=tuple(block.results),
                problems=(f"result line missing: {why}", *_plan_problems(block)),
            )
        )
        parent.pending = []
        self.incomplete = True

    def _check_done(self) -> None:
        root = self.stack[0]
        if len(self.stack) == 1 and root.plan is not None and len(root.results) >= root.plan:
            self.done = True

    def finish(self, why: str) -> None:
        while len(self.stack) > 1:
            self._truncate_top(why)
        root = self.stack[0]
        missing = ["no plan line"] if root.plan is None else _plan_problems(root)
        self.problems += missing
        self.incomplete = self.incomplete or bool(missing)
        self.done = True


def _find_header(lines: list[str]) -> tuple[int, str, bool] | None:
    """Index of the first version line, its text, and whether it carries a printk time."""
    for i, line in enumerate(lines):
        stamp = _TIMESTAMP.match(line)
        text = line[stamp.end() :] if stamp else line
        if _VERSION.fullmatch(text.strip(_BLANKS)):
            return i, text, stamp is not None
    return None


# Only spaces and tabs indent. str.strip() would also eat \v, \f, \x1c-\x1f and \x85, which a
# test's output can carry to forge an unindented (top-level) line.
_BLANKS = " \t"


def _indent(text: str) -> int:
    return len(text[: len(text) - len(text.lstrip(_BLANKS))].expandtabs(8))


def split_lines(text: str) -> list[str]:
    """Lines split on \n only (never on the other characters str.splitlines() breaks at), CR dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _collect_problems(results: Iterable[KtapResult], prefix: str) -> list[str]:
    out: list[str] = []
    for r in results:
        path = f"{prefix}{r.name or r.number}"
        out += [f"{path}: {p}" for p in r.problems]
        out += _collect_problems(r.subtests, f"{path}.")
    return out


def _has_status(results: Iterable[KtapResult], status: Status) -> bool:
    return any(r.status == status or _has_status(r.subtests, status) for r in results)


def parse_ktap(text: str) -> KtapDocument:
    """Parse KTAP / TAP 13 / TAP 14 output, skipping console noise before the version line.

    When the version line carries a printk time ("[    1.234] "), only lines with one are
    read as KTAP (the time stripped); lines without are kept as diagnostics only.
    `problems` lists document-level problems, then each result's as "path: problem".
    """
    lines = split_lines(text)
    header = _find_header(lines)
    if header is None:
        return KtapDocument(
            version=None,
            plan=None,
            results=(),
            status="incomplete",
            problems=("no KTAP version line found",),
            diagnostics=(),
        )
    start, version, stamped = header
    parser = _Parser(_indent(version))
    for line in lines[start + 1 :]:
        stamp = _TIMESTAMP.match(line)
        if stamped and stamp:
            line = line[stamp.end() :]
        elif stamped or stamp:
            if line.strip(_BLANKS) and not parser.done:
                parser.stack[-1].pending.append(line.strip(_BLANKS))
            continue
        text = line.strip(_BLANKS)
        if parser.done:
            # Console noise may follow a complete document, but never a second document: a
            # forged one placed first would otherwise decide the result.
            if text and _indent(line) <= parser.stack[0].indent and _VERSION.fullmatch(text):
                parser.problems.append("a second top-level KTAP document follows the first")
                parser.incomplete = True
                break
            continue
        if text:
            parser.feed(_indent(line), text)
    if not parser.done:
        parser.finish("output ended")
    root = parser.stack[0]
    results = tuple(root.results)
    if parser.incomplete:
        status: Status = "incomplete"
    elif _has_status(results, "fail"):
        status = "fail"
    elif root.plan == 0 or (results and all(r.status == "skip" for r in results)):
        status = "skip"
    else:
        status = "pass"
    return KtapDocument(
        version=version.strip(),
        plan=root.plan,
        results=results,
        status=status,
        problems=tuple(parser.problems + _collect_problems(results, "")),
        diagnostics=tuple(root.pending),
    )


def flatten_results(doc: KtapDocument) -> list[tuple[str, KtapResult]]:
    """Leaf results with their dotted path ("suite.case"); a nameless test uses its number."""
    out: list[tuple[str, KtapResult]] = []

    def walk(results: Iterable[KtapResult], prefix: str) -> None:
        for r in results:
            path = f"{prefix}{r.name or r.number}"
            if r.subtests:
                walk(r.subtests, f"{path}.")
            else:
                out.append((path, r))

    walk(doc.results, "")
    return out
