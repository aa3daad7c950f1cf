"""A pipeline's summary as one plain-text mail in the series' thread: addresses, headers, body.

Names, subjects and Message-Ids come from the mail a submitter sent: whatever they hold, they fill
one header each and never add another (control characters are dropped or refused, never passed on).
"""

from __future__ import annotations

import email.policy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from bot.core.mail_text import MailFailure, MailReport, one_line, render_report_mail, reply_subject
from bot.core.render import MAX_PROBLEMS, new_problems, problem_text, problem_title, rest_lines
from bot.reporting.sinks import PipelineSummary

# Header lines up to SMTP's hard limit: folding a long Message-Id in References would have the
# email package turn it into an encoded word, which no mail client threads by. 7-bit: a body with
# non-ASCII goes quoted-printable, so it arrives whole through servers without 8BITMIME.
POLICY = email.policy.SMTP.clone(max_line_length=998, cte_type="7bit")
# An addr-spec we send to: dot-atom local part, a host name. Anything else (quoted local parts,
# address literals, non-ASCII) is refused rather than guessed at.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_ADDR_SPEC = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$")
_MAILBOX = re.compile(r"^(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]*)>$", re.DOTALL)
# msg-id: printable ASCII without space or angle brackets, one @.
_MSG_ID = re.compile(r"^<?(?P<id>[!-;=?A-~]+@[!-;=?A-~]+)>?$")


@dataclass(frozen=True)
class MailThread:
    """Where a report mail goes in the conversation."""

    subject: str  # the cover letter's subject, or patch 1's when there is no cover; a push: our own
    message_id: str | None = None  # the cover letter's Message-Id, or patch 1's; None starts a thread

    def __post_init__(self) -> None:
        if self.message_id is not None:  # refused now, not at the end of the pipeline
            parse_message_id(self.message_id, "thread Message-Id")


def series_thread(cover: tuple[str, str] | None, first_patch: tuple[str, str]) -> MailThread:
    """The thread a series' report replies in: its cover letter's (subject, Message-Id), or patch 1's
    when the series has no cover letter."""
    subject, message_id = cover or first_patch
    return MailThread(subject, message_id)


@dataclass(frozen=True)
class MailRecipients:
    """Who reads a report mail: the submitter, and the list in Cc when the tree configures one."""

    to: tuple[Address, ...]
    cc: tuple[Address, ...] = ()

    @classmethod
    def parse(cls, to: Sequence[str], cc: Sequence[str] = ()) -> MailRecipients:
        """From mailbox strings (`Name <a@b.example>` or `a@b.example`); ValueError names a bad one."""
        return cls(tuple(parse_mailbox(v, "To") for v in to), tuple(parse_mailbox(v, "Cc") for v in cc))

    def envelope(self) -> list[str]:
        """Every address once, in order."""
        return list(dict.fromkeys(a.addr_spec.lower() for a in (*self.to, *self.cc)))


def parse_mailbox(value: str, role: str = "address") -> Address:
    """One mailbox: the name loses its control characters, the address must be a plain addr-spec."""
    match = _MAILBOX.match(value.strip())
    name, addr = (match["name"], match["addr"].strip()) if match else ("", value.strip())
    if not _ADDR_SPEC.match(addr):
        raise ValueError(f"{role}: {value!r} is not a mail address we send to (name@host.domain, ASCII)")
    name = one_line(name)
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return Address(display_name=name, addr_spec=addr)


def parse_message_id(value: str, role: str = "Message-Id") -> str:
    """`<id@host>` from a Message-Id with or without its brackets; ValueError when it is not one."""
    match = _MSG_ID.match(value.strip())
    if match is None:
        raise ValueError(f"{role}: {value!r} is not a Message-Id (<id@host>, printable ASCII)")
    return f"<{match['id']}>"


def report_message_id(pipeline_id: int, thread: MailThread, domain: str) -> str:
    """Our Message-Id for a pipeline's mail: the same on every attempt, so a mail sent again after a
    lost answer is one message to every client and list archive that de-duplicates by it."""
    if not _DOMAIN.match(domain):
        raise ValueError(f"Message-Id domain {domain!r} is not a host name")
    digest = hashlib.sha256(f"{pipeline_id}\0{thread.message_id or ''}".encode()).hexdigest()[:16]
    return f"<labgate.{pipeline_id}.{digest}@{domain}>"


def mail_report_of(summary: PipelineSummary) -> MailReport:
    """What the mail says, from the summary: its verdict line first; each new problem (one a crash, with the
    tests it hit, their evidence, its first error lines and its log), then each other job whose verdict is
    `fail` with its first error lines; the new warnings and static findings of each job not quoted so already
    (a passing build's new warning is news too; a failed job's findings with errors are its error lines);
    the commands that reproduce each new problem's job before the pipeline's own; the rest triage found
    (flaky, known issues, pre-existing, unconfirmed, fixed) ahead of the notes."""
    problems = new_problems(summary.verdicts)  # the mail shows the first 20 and counts the rest
    new = tuple(MailFailure(title=problem_title(problem), error_lines=problem_text(problem),
                            url=problem.failures[0].log_url) for problem in problems)  # fmt: skip
    shown = {view.job_id for problem in problems for view in problem.failures}
    broken = [job for job in summary.jobs if job.verdict == "fail" and job.job_id not in shown]
    failures = new + tuple(MailFailure(title=f"{job.label}: {job.title}", error_lines=job.error_lines,
                                       url=job.details_url) for job in broken)  # fmt: skip
    quoted = {job.job_id for job in broken if job.error_lines == job.findings}
    findings = tuple(MailFailure(title=f"{job.label}: {job.title}", error_lines=job.findings, url=job.details_url)
                     for job in summary.jobs if job.findings and job.job_id not in quoted)  # fmt: skip
    # The check's outcome in words ("labgate: pass"), last: the verdict line leads.
    outcome = [summary.headline] if summary.verdict_line and summary.headline else []
    commands = dict.fromkeys(problem.failures[0].reproduce for problem in problems[:MAX_PROBLEMS]
                             if problem.failures[0].reproduce)  # fmt: skip
    reproduce = "\n".join([*commands, *([summary.reproduce] if summary.reproduce else [])])
    return MailReport(verdict_line=summary.verdict_line or summary.headline, failures=failures, url=summary.url,
                      reproduce=reproduce, findings=findings,
                      notes=(*rest_lines(summary.verdicts), *summary.notes, *outcome))  # fmt: skip


def report_body(report: MailReport) -> str:
    """The mail's text: its first line the verdict line, whole (never wrapped: it is what a reader and a
    mail filter look for), then the report as render_report_mail lays it out."""
    rest = render_report_mail(replace(report, verdict_line="")).lstrip("\n")
    return f"{one_line(report.verdict_line)}\n\n{rest}"


def compose_report_mail(summary: PipelineSummary, *, sender: Address, recipients: MailRecipients,
                        thread: MailThread, message_id: str, date: datetime) -> EmailMessage:  # fmt: skip
    """The whole mail: one text/plain part, UTF-8, replying to the thread when there is one."""
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = recipients.to
    if recipients.cc:
        message["Cc"] = recipients.cc
    message["Subject"] = reply_subject(thread.subject) if thread.message_id else one_line(thread.subject)
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    if thread.message_id:
        parent = parse_message_id(thread.message_id, "thread Message-Id")
        message["In-Reply-To"] = parent
        message["References"] = parent
    # RFC 3834: mail made by a machine; vacation responders and list bots do not answer it.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(report_body(mail_report_of(summary)), subtype="plain", charset="utf-8")
    return message
