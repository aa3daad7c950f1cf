"""Plain-text reports of a pipeline: what is broken first, then the table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

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
