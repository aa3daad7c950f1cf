"""Reports of a pipeline: the verdict line, what is new and broken first (one block a crash), then the rest."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bot.core.triage import Triage, group_by_crash

_ERROR_LINE = re.compile(r"(error|Error|ERROR|FAIL|fatal|\*\*\*|No rule|undefined reference|not ok)")


@dataclass(frozen=True)
class FailedTest:
    path: str
    diagnostics: str
    reason: str = ""


@dataclass(frozen=True)
class JobView:
    """What a report needs to know of one job, already read from the store."""

    id: int
    kind: str
    name: str
    state: str
    result: str | None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    duration_s: float | None = None
    failed_tests: tuple[FailedTest, ...] = ()
    test_counts: dict[str, int] = field(default_factory=dict)
    log_excerpt: str = ""
    caveats: tuple[str, ...] = ()  # e.g. "ran as root: not forge-proof"


def first_error_lines(log: str, limit: int = 12) -> str:
    """The first lines of a log that look like an error, else its last lines."""
    lines = log.splitlines()
    hits = [i for i, line in enumerate(lines) if _ERROR_LINE.search(line)]
    if not hits:
        return "\n".join(lines[-limit:])
    start = max(0, hits[0] - 2)
    return "\n".join(lines[start : start + limit])


def outcome_word(job: JobView) -> str:
    if job.state != "done":
        return job.state
    if job.error_code == "cancelled":
        return "cancelled"
    if job.error_code in ("user-error", "infra-error") or job.result is None:
        return "error"
    if job.error_code:
        return f"{job.result} ({job.error_code})"
    return job.result


def render_problems(jobs: Sequence[JobView], indent: str = "  ") -> str:
    """Failures and errors, in the order the jobs ran, each with its first lines."""
    out: list[str] = []
    for job in jobs:
        word = outcome_word(job)
        if word in ("pass", "skip", "waiting", "queued", "running", "pending"):
            continue
        out.append(f"{word.upper()}: {job.kind} {job.name}")
        if job.error_message:
            out.extend(indent + line for line in job.error_message.splitlines()[:20])
        for test in job.failed_tests:
            out.append(f"{indent}not ok {test.path}" + (f" ({test.reason})" if test.reason else ""))
            out.extend(indent * 2 + line for line in test.diagnostics.splitlines()[:8])
        if job.log_excerpt and not job.failed_tests:
            out.extend(indent + "| " + line for line in job.log_excerpt.splitlines())
    for job in jobs:
        out += [f"NOTE: {job.kind} {job.name}: {caveat}" for caveat in job.caveats]
    return "\n".join(out)


def render_counts(counts: dict[str, int]) -> str:
    order = ("pass", "fail", "skip", "incomplete")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


# What the text of a change (its logs, test names, reasons) must not be read as in a markdown report:
# in a line of text, every character that can open a link, an image, HTML, an entity, emphasis, a code
# span, math (GitLab) or a reference (`#12`), or end a table cell. An `_` between letters or digits can
# neither open nor close emphasis (CommonMark's flanking rules), so `x86_64` is left as it reads. At the
# start of a line, what opens a block (`- `, `+ `, `1. `, a setext `===`; `#`, `>`, `*`, `|` and
# backticks are escaped everywhere).
_ACTIVE_INLINE = re.compile(r"[\\`*\[\]()<>|~&#$]|(?<![^\W_])_|_(?![^\W_])")
_BLOCK_START = re.compile(r"^(\d{0,9})([-+=.)])")
_BACKTICKS = re.compile(r"`+")
_FENCE_INFO = re.compile(r"[\w+.-]*")
# CommonMark's line endings: a lone CR ends a line too, whatever str.split("\n") says.
_LINE_ENDING = re.compile(r"\r\n?")
_URL_BREAKERS = {ord(c): f"%{ord(c):02X}" for c in " ()<>\\\"'`\n\r\t"}


def fenced(text: str, info: str = "") -> str:
    """`text` as a fenced code block that no line of it can close. A closing fence must be at least as
    long as the opening one (CommonMark), so the fence is one backtick longer than the longest run of
    backticks anywhere in `text`: a log line of ``` (indented, with trailing spaces, after a lone CR)
    stays in the block. `info` is ours (a language name); one that could end the fence line is refused.
    Every line of the result may be indented alike to sit in a list item."""
    if not _FENCE_INFO.fullmatch(info):
        raise ValueError(f"not a fence info string: {info!r}")
    body = _LINE_ENDING.sub("\n", text).rstrip("\n")
    longest = max((len(run) for run in _BACKTICKS.findall(body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}" if body else f"{fence}{info}\n{fence}"


def inline_text(text: str) -> str:
    """`text` on one line, read by a markdown renderer as exactly that text: no link, image, HTML,
    emphasis or code span, no new table cell, no block (a heading, a list item) where a line starts.
    For what a change names (a test, a job, a reason) in a link's text, a table cell or a line."""
    line = _ACTIVE_INLINE.sub(r"\\\g<0>", " ".join(text.split()))
    return _BLOCK_START.sub(r"\1\\\2", line)


def inline_code(text: str) -> str:
    """`text` on one line as one code span that nothing in it closes: delimited by one backtick more than
    its longest run. Not for a table cell: GFM splits cells at a `|` even in a code span."""
    line = " ".join(text.split())
    longest = max((len(run) for run in _BACKTICKS.findall(line)), default=0)
    ticks = "`" * (longest + 1)
    # CommonMark strips one space from each end of a span, so a backtick at either end can be padded.
    return f"{ticks} {line} {ticks}" if line.startswith("`") or line.endswith("`") else f"{ticks}{line}{ticks}"


def link(text: str, url: str) -> str:
    """A markdown link to one of our pages: `text` as text, `url` with what could end or split its
    destination percent-encoded."""
    return f"[{inline_text(text)}]({url.translate(_URL_BREAKERS)})"


def render_job_markdown(job: JobView, *, tests: Sequence[tuple[str, str]] = (), earlier_failure: str = "",
                        reproduce: str = "") -> str:  # fmt: skip
    """A job's report: what is broken first, with its first lines, then the table of tests."""
    out: list[str] = []
    if earlier_failure:
        out += ["**Earlier attempt:**", "", fenced(earlier_failure), ""]
    if job.error_message:
        out += [fenced(job.error_message[:4000]), ""]
    for test in job.failed_tests[:20]:
        out.append(f"**not ok {inline_code(test.path)}**" + (f" ({inline_text(test.reason)})" if test.reason else ""))
        if test.diagnostics:
            out += ["", fenced("\n".join(test.diagnostics.splitlines()[:12]))]
        out.append("")
    if job.log_excerpt and not job.failed_tests:
        out += ["First error lines of the log:", "", fenced(job.log_excerpt), ""]
    if reproduce:
        out += ["Reproduce locally:", "", fenced(reproduce), ""]
    if tests:
        out += ["| test | result |", "|---|---|"]
        # A test's name in a cell is text, not a code span: a `|` in it would split the cell even there.
        out += [f"| {inline_text(path)} | {inline_text(status)} |" for path, status in tests[:200]]
        if len(tests) > 200:
            out.append(f"| … | {len(tests) - 200} more |")
    return "\n".join(out).strip() or "No details."


# -- verdicts: what triage found, first line first ------------------------------------------------------

# The verdict line's words, in its order: what fails the check first, what passed last. `failed` is a test
# failure no triage judged (a staging push's, or one whose job has no verdicts), `broken` a job that failed
# without a failing test (a build, a boot): both fail the check, as every failure did before triage.
_VERDICT_WORDS: tuple[tuple[str, str, str], ...] = (
    ("new", "new failure", "new failures"),
    ("regression", "regression", "regressions"),
    ("failed", "failed", "failed"),
    ("broken", "failed job", "failed jobs"),
    ("pre-existing", "pre-existing failure", "pre-existing failures"),
    ("flaky", "flaky", "flaky"),
    ("known-issue", "known issue", "known issues"),
    ("unconfirmed", "unconfirmed", "unconfirmed"),
    ("incomplete", "incomplete", "incomplete"),
    ("fixed", "fixed", "fixed"),
    ("pass", "passed", "passed"),
)
VERDICTS = tuple(key for key, _, _ in _VERDICT_WORDS)
FAILING = frozenset({"new", "regression", "failed", "broken"})  # what fails the check
NEW = ("new", "regression")
MAX_ERROR_LINES = 20
MAX_LISTED = 50  # tests listed per section of the rest, or hit by one crash; the pipeline's page has them all
MAX_PROBLEMS = 20  # new problems shown in full in one report; the rest are counted
MAX_LINE = 500  # characters of an error line shown
_WEB_LINK = re.compile(r"https?://[^\s]+", re.ASCII)


@dataclass(frozen=True)
class TestVerdictView:
    """One test's verdict as a report shows it (bot/reporting/verdicts.py reads it from the store). Every
    text field but `evidence`, `cut_short`, the links and `reproduce` is the change's or its DUT's words."""

    __test__ = False  # not a pytest class

    job_id: int  # the change's own test job
    job: str  # its name: "qemu-x86_64 unit"
    test: str  # the test's path in it: "math.mul"
    device_class: str
    verdict: str  # one of VERDICTS (never failed/broken: those have no verdict row)
    evidence: str = ""  # "failed 4/4 with the change, 0/4 on base"
    crash_title: str = ""
    known_issue: str | None = None
    known_issue_link: str = ""
    cut_short: str = ""
    error_lines: str = ""  # the test's first error lines, at most MAX_ERROR_LINES
    log_url: str = ""
    reproduce: str = ""  # `labgate reproduce <job id> --server <url>`

    @property
    def name(self) -> str:
        return f"{self.job}/{self.test}"


@dataclass(frozen=True)
class Problem:
    """One new problem: the failures that share a crash title, listed once with every test it hit; or one
    failure without a crash title."""

    crash_title: str
    failures: tuple[TestVerdictView, ...]


def verdict_line(counts: Mapping[str, int]) -> str:
    """"2 new failures, 1 flaky, 1 known issue, 140 passed": each non-zero count in VERDICTS' order."""
    unknown = sorted(set(counts) - set(VERDICTS))
    if unknown:
        raise ValueError(f"verdict_line: unknown verdicts {unknown} (known: {', '.join(VERDICTS)})")
    said = [f"{counts[key]} {one if counts[key] == 1 else many}" for key, one, many in _VERDICT_WORDS
            if counts.get(key, 0) > 0]  # fmt: skip
    return ", ".join(said) or "no test results"


def new_problems(verdicts: Sequence[TestVerdictView]) -> list[Problem]:
    """The new failures and regressions as problems, in the order they were found: those with the same
    crash title are one (bot/core/triage.group_by_crash), each without a crash title one of its own."""
    new = [view for view in verdicts if view.verdict in NEW]
    waiting: dict[Triage, list[TestVerdictView]] = {}
    for view in new:
        waiting.setdefault(_as_triage(view), []).append(view)
    problems = []
    for title, group in group_by_crash([_as_triage(view) for view in new]):
        found = tuple(waiting[triage].pop(0) for triage in group if waiting.get(triage))
        problems += [Problem(title, found)] if found else []
    # A failure the grouping left out is still reported, on its own.
    return problems + [Problem(view.crash_title, (view,)) for views in waiting.values() for view in views]


def _as_triage(view: TestVerdictView) -> Triage:
    return Triage(path=view.name, device_class=view.device_class, verdict=view.verdict, evidence=view.evidence,
                  change_runs=0, change_fails=0, base_runs=0, base_fails=0, p_value=None,
                  known_issue=view.known_issue, crash_title=view.crash_title, cut_short=view.cut_short)  # fmt: skip


def _where_markdown(view: TestVerdictView) -> str:
    said = f"{inline_code(view.name)} on {inline_code(view.device_class)}"
    return said + (f": {inline_text(view.evidence)}" if view.evidence else "")


def problem_markdown(problem: Problem) -> str:
    """A new problem: what failed where, with its evidence and log; its crash title; the first error lines
    and the command that reproduces it (of its first failure). What the change wrote is text."""
    first = problem.failures[0]
    word = "regression" if all(view.verdict == "regression" for view in problem.failures) else "failure"
    hits = [_where_markdown(view) + (f" · {link('log', view.log_url)}" if view.log_url else "")
            for view in problem.failures]  # fmt: skip
    if problem.crash_title and len(hits) > 1:
        out = [f"**New crash:** {inline_code(problem.crash_title)}, hit {len(hits)} tests:", ""]
        out += [f"- {hit}" for hit in hits[:MAX_LISTED]]
        out += [f"- … and {len(hits) - MAX_LISTED} more", ""] if len(hits) > MAX_LISTED else [""]
    else:
        out = [f"**New {word}:** {hits[0]}", ""]
        out += [f"Crash: {inline_code(problem.crash_title)}", ""] if problem.crash_title else []
    if first.error_lines.strip():
        out += [fenced(_first_lines(first.error_lines)), ""]
    if first.reproduce:
        out += ["Reproduce locally:", "", fenced(first.reproduce), ""]
    return "\n".join(out).strip()


def _first_lines(text: str) -> str:
    """The first MAX_ERROR_LINES lines, each cut at MAX_LINE: a DUT may print megabytes on one line."""
    lines = _LINE_ENDING.sub("\n", text).split("\n")[:MAX_ERROR_LINES]
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [...]" for line in lines)


# The rest, after the new problems: heading, and what a reader should know of why it does not count.
_REST: tuple[tuple[str, str], ...] = (
    ("pre-existing", "Pre-existing failures (they fail on the base too)"),
    ("flaky", "Flaky (their base history is mixed, or re-runs did not confirm the failure)"),
    ("known-issue", "Known issues"),
    ("unconfirmed", "Unconfirmed (re-runs were cut short)"),
    ("fixed", "Fixed (they failed on the base)"),
)


def _known_issue_markdown(view: TestVerdictView) -> str:
    issue = view.known_issue or "?"
    shown = link(issue, view.known_issue_link) if _WEB_LINK.fullmatch(view.known_issue_link) else inline_text(issue)
    return f"known issue {shown}"


def rest_markdown(verdicts: Sequence[TestVerdictView]) -> str:
    """Flaky tests, known issues with their ids and links, pre-existing failures, unconfirmed ones and
    fixes: listed, never counted against the change."""
    out: list[str] = []
    for verdict, heading in _REST:
        listed = [view for view in verdicts if view.verdict == verdict]
        if not listed:
            continue
        out += [f"**{heading}:**", ""]
        for view in listed[:MAX_LISTED]:
            item = _where_markdown(view)
            if view.known_issue:
                item += f" ({_known_issue_markdown(view)})"
            if view.cut_short:
                item += f" ({inline_text(view.cut_short)})"
            out.append(f"- {item}")
        if len(listed) > MAX_LISTED:
            out.append(f"- … and {len(listed) - MAX_LISTED} more")
        out.append("")
    return "\n".join(out).strip()


def verdicts_markdown(verdicts: Sequence[TestVerdictView]) -> str:
    """Each new problem's block, then the rest; empty when there are no verdicts."""
    problems = new_problems(verdicts)
    blocks = [problem_markdown(problem) for problem in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        blocks.append(f"… and {len(problems) - MAX_PROBLEMS} more new problems: see the pipeline's page.")
    rest = rest_markdown(verdicts)
    return "\n\n".join([*blocks, *([rest] if rest else [])])


def _where_text(view: TestVerdictView) -> str:
    return f"{view.name} on {view.device_class}" + (f" ({view.evidence})" if view.evidence else "")


def problem_title(problem: Problem) -> str:
    """A new problem on one line of plain text (a mail's heading of it)."""
    word = "regression" if all(view.verdict == "regression" for view in problem.failures) else "failure"
    if problem.crash_title and len(problem.failures) > 1:
        hits = [_where_text(view) for view in problem.failures[:MAX_LISTED]]
        more = [f"and {len(problem.failures) - MAX_LISTED} more"] if len(problem.failures) > MAX_LISTED else []
        return f"New crash '{problem.crash_title}', hit {len(problem.failures)} tests: {'; '.join(hits + more)}"
    return f"New {word}: {_where_text(problem.failures[0])}"


def problem_text(problem: Problem) -> str:
    """A new problem's crash title and first error lines, plain and verbatim."""
    first = problem.failures[0]
    crash = [f"crash: {problem.crash_title}"] if problem.crash_title else []
    return "\n".join([*crash, *([_first_lines(first.error_lines)] if first.error_lines.strip() else [])])


def rest_lines(verdicts: Sequence[TestVerdictView]) -> list[str]:
    """The rest in plain text: one line a section, each test on it."""
    out = []
    for verdict, heading in _REST:
        listed = [view for view in verdicts if view.verdict == verdict]
        if not listed:
            continue
        items = []
        for view in listed[:MAX_LISTED]:
            issue = f"known issue {view.known_issue}" + (f" {view.known_issue_link}" if view.known_issue_link else "")
            notes = [issue] if view.known_issue else []
            notes += [view.cut_short] if view.cut_short else []
            items.append(_where_text(view) + (f" [{'; '.join(notes)}]" if notes else ""))
        more = [f"and {len(listed) - MAX_LISTED} more"] if len(listed) > MAX_LISTED else []
        out.append(f"{heading}: " + "; ".join(items + more) + ".")
    return out
