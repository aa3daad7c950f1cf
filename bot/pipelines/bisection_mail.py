"""A bisection's report mail: to the tree's staging-push report address, Cc the culprit's author, sent once.

Sent by a control-queue task once the transaction that ended the bisection has committed, when the tree mails
reports (`mail.report` and `smtp:`). The author is the commit's, as the checkout worker listed it: untrusted
text, used only when it is one plain address (bot/core/bisect.py author_address), else left out and said in
the body. Whatever a test path or a worker's message holds, each header is one line (parse_mailbox, one_line).
"Once" is a record in the store written after the send: a task that dies between the two sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from bot.core.bisect import author_address
from bot.core.mail_text import one_line
from bot.forges.mail.message import MailRecipients, parse_mailbox
from bot.forges.mail.smtp import SmtpServer, send_mail, smtp_server_of
from bot.host.stores import Runtime, runtime_from_env
from bot.pipelines import bisection as bisections  # which imports this module: its names are read at call time
from bot.store.models import Bisection
from bot.store.once import OnceKeys, once_done, record_once
from workers.app import app

log = logging.getLogger(__name__)
BISECTION_MAIL_TASK = "bot.bisection_mail"  # sent by bot/pipelines/bisection.py, on the control queue
Send = Callable[[SmtpServer, EmailMessage], object]


def mail_key(bisection_id: int) -> str:
    return OnceKeys("mail", f"bisection:{bisection_id}").key("report")


def compose(bisection: Bisection, *, sender: str, to: Sequence[str], author: str) -> EmailMessage:
    """The report: the finding first, then how it was found; the author in Cc when theirs is a plain address."""
    address = author_address(author) if bisection.culprit_sha else None
    recipients = MailRecipients.parse(to, [address] if address else [])
    message = EmailMessage()
    message["From"] = parse_mailbox(sender, "From")
    message["To"] = recipients.to
    if recipients.cc:
        message["Cc"] = recipients.cc
    found = f"first bad commit {bisection.culprit_sha[:12]}" if bisection.culprit_sha else "no first bad commit"
    message["Subject"] = one_line(f"labgate: bisection of {bisection.test_path} on {bisection.branch}: {found}")[:200]
    message["Date"] = formatdate(localtime=False)
    message["Message-Id"] = make_msgid("labgate.bisection", parse_mailbox(sender, "From").domain)
    steps = [f"  {s['sha'][:12]} {s.get('role', 'test')}: {s.get('verdict', '')} ({', '.join(s.get('statuses') or [])})"
             for s in bisection.steps]  # fmt: skip
    lines = [bisections.report_line(bisection), "", f"tree {bisection.tree}, branch {bisection.branch}, device class "
             f"{bisection.device_class}; previous head {bisection.good_sha}, new head {bisection.bad_sha}", "",
             "Steps:", *steps]  # fmt: skip
    if bisection.culprit_sha and address is None:
        lines += ["", "The commit's author is not mailed: the commit does not give one plain mail address."]
    message.set_content("\n".join(lines) + "\n")
    return message


def send_report(runtime: Runtime, bisection_id: int, send: Send | None = None) -> str:
    """Mail the ended bisection's report once; what was done."""
    tree_config = None
    with runtime.store.session() as session:
        bisection = session.get(Bisection, bisection_id)
        if bisection is None or bisection.state not in ("done", "failed"):
            return "no ended bisection: nothing to mail"
        if once_done(session, mail_key(bisection_id)) is not None:
            return "mailed already"
        tree_config = runtime.config.tree(bisection.tree)
        smtp = runtime.config.smtp
        if tree_config is None or not tree_config.mail.report or smtp is None or not tree_config.mail.push_to:
            return "the tree mails no reports"
        author = bisections.commit_authors(session, bisection).get(bisection.culprit_sha or "", "")
        message = compose(bisection, sender=smtp.sender, to=tree_config.mail.push_to, author=author)
    server = smtp_server_of(smtp)
    (send or _send)(server, message)
    with runtime.store.session() as session:
        record_once(session, mail_key(bisection_id), "sent")
    return "mailed"


def _send(server: SmtpServer, message: EmailMessage) -> object:
    to = [a.addr_spec for header in ("To", "Cc") for a in (message[header].addresses if message[header] else ())]
    return send_mail(server, message, envelope_from=message["From"].addresses[0].addr_spec, envelope_to=to)


@app.task(name=BISECTION_MAIL_TASK)
def bisection_mail_task(bisection_id: int) -> None:
    """Registered wherever bot/pipelines/lifecycle.py is imported (the control worker included)."""
    log.info("bisection %d: %s", bisection_id, send_report(runtime_from_env(), bisection_id))
