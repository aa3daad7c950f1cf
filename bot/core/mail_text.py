"""Plain-text report mail: prose wrapped at 72 columns; error lines, URLs and commands kept verbatim."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from bot.core.render import JobView

WIDTH = 72
ERROR_LINES = 12  # first error lines quoted per failure: enough to recognise it, the link has the rest
MAX_FINDING_LINES = 30  # a job's new warnings or static findings quoted in a mail; the link has the rest
MAX_FAILURES = 20
MAX_LINE = 500  # a log line longer than this is cut (never wrapped): a build can print megabytes on one line
VERBATIM_INDENT = "    "

# What a log or a submitter's text may carry that must not reach a reader's terminal or mail client as is:
# C0/C1 controls (ANSI escapes, CR that overprints a line), the characters str.splitlines would take for
# line breaks, and the bidi overrides that make text read differently from what it is ("Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A line that is not prose: indented (code, a quoted log), quoted (`>`), a table or shell line.
_VERBATIM_LINE = re.compile(r"^(\s|>|\||\$ |#)")


@dataclass(frozen=True)
class MailFailure:
    """One new failure as a mail shows it."""

    title: str  # "labgate / test qemu-x86_64 unit: fail: math.mul"
    error_lines: str = ""  # the first error lines, verbatim
    url: str = ""  # the job's page


@dataclass(frozen=True)
class MailReport:
    """What a report mail says, in the order it says it."""

    verdict_line: str  # "labgate: fail: 1 new failure (qemu-x86_64 unit: math.mul)"
    failures: tuple[MailFailure, ...] = ()
    # Jobs with new warnings or static findings (bot/core/findings.py), each with them listed verbatim.
    findings: tuple[MailFailure, ...] = ()
    url: str = ""  # the pipeline's page
    reproduce: str = ""  # commands a maintainer can paste, one a line
    notes: tuple[str, ...] = ()


def printable(text: str) -> str:
    """`text` with every control character except tab and newline shown as U+FFFD."""
    return _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", text.replace("\r\n", "\n"))


def wrap_prose(text: str, width: int = WIDTH) -> str:
    """Reflow the prose of `text` to `width` columns. Lines that are not prose (indented, quoted,
    tables, shell lines) are kept as they are; a word is never broken, so a URL or a test name
    longer than a line sits alone on its own line, whole."""
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if prose:
            out.extend(textwrap.wrap(" ".join(prose), width, break_long_words=False, break_on_hyphens=False))
            prose.clear()

    for line in printable(text).split("\n"):
        if not line.strip():
            flush()
            out.append("")
        elif _VERBATIM_LINE.match(line):
            flush()
            out.append(_cut(line.rstrip()))
        else:
            prose.append(line.strip())
    flush()
    return "\n".join(out)


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [...]"


def verbatim(text: str, indent: str = VERBATIM_INDENT, limit: int | None = None) -> list[str]:
    """`text`'s lines indented, never wrapped (only cut past MAX_LINE), at most `limit` of them."""
    lines = printable(text).rstrip("\n").split("\n")
    kept = lines if limit is None else lines[:limit]
    out = [(indent + _cut(line.rstrip())).rstrip() for line in kept]
    if limit is not None and len(lines) > limit:
        out.append(f"{indent}[... {len(lines) - limit} more lines]")
    return out


def error_lines_of(job: JobView, limit: int = ERROR_LINES) -> str:
    """A job's first error lines in plain text: our or the build's error message, else the failed
    tests with their diagnostics, else the log's first error lines."""
    lines: list[str] = []
    if job.error_message:
        lines += job.error_message.split("\n")
    for test in job.failed_tests:
        lines.append(f"not ok {test.path}" + (f" ({test.reason})" if test.reason else ""))
        lines += ["  " + line for line in test.diagnostics.split("\n") if line.strip()]
    if not lines and job.log_excerpt:
        lines = job.log_excerpt.split("\n")
    return "\n".join(lines[:limit])


def render_report_mail(report: MailReport, width: int = WIDTH) -> str:
    """The mail's body: the verdict line, each new failure with its first error lines and its link, each
    job's new warnings and static findings, the pipeline's link, how to reproduce, then notes."""
    out: list[str] = [wrap_prose(report.verdict_line, width), ""]
    if report.failures:
        out += [wrap_prose("New failures:", width), ""]
    for failure in report.failures[:MAX_FAILURES]:
        out.append(wrap_prose(failure.title, width))
        if failure.error_lines.strip():
            out += ["", *verbatim(failure.error_lines, limit=ERROR_LINES)]
        if failure.url:
            out += ["", *verbatim(failure.url)]
        out.append("")
    if len(report.failures) > MAX_FAILURES:
        out += [wrap_prose(f"... and {len(report.failures) - MAX_FAILURES} more failures: see the results.", width),
                ""]  # fmt: skip
    if report.findings:
        out += [wrap_prose("New warnings and check findings:", width), ""]
    for found in report.findings[:MAX_FAILURES]:
        out += [wrap_prose(found.title, width), "", *verbatim(found.error_lines, limit=MAX_FINDING_LINES)]
        out += ["", *verbatim(found.url), ""] if found.url else [""]
    if report.url:
        out += ["Results:", "", *verbatim(report.url), ""]
    if report.reproduce.strip():
        out += ["To reproduce locally:", "", *verbatim(report.reproduce), ""]
    for note in report.notes:
        out += [wrap_prose(note, width), ""]
    out += ["-- ", wrap_prose("labgate, automated pre-merge CI. This mail was sent by a machine.", width)]
    return "\n".join(out) + "\n"


def one_line(text: str) -> str:
    """`text` as one header-safe line: control characters and line breaks become single spaces."""
    return " ".join(_UNPRINTABLE.sub(" ", text).split())


def reply_subject(subject: str) -> str:
    """`Re: subject` on one line, without a second `Re:`, without control characters."""
    line = one_line(subject)
    return line if re.match(r"(?i)re:", line) else f"Re: {line}"
