"""The mail summary sink: one report mail per pipeline, sent once, when the pipeline is done.

"Once" is recorded in the store (bot/store/once.py) around the send, with a claim first: a retry,
a second call or a second worker finds the claim or the record and sends nothing. The claim is
dropped when the send fails, so a retry sends; a claim left by a process that died mid-send is
taken over after `stale_after_s` and the mail is sent again, with the same Message-Id (a duplicate
then shows as one message wherever mail is de-duplicated by it, which beats a report never sent).
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from bot.forges.mail.message import MailRecipients, MailThread, compose_report_mail, parse_mailbox, report_message_id
from bot.forges.mail.smtp import SmtpServer, classify_error, send_mail, smtp_server_of
from bot.host.config import Smtp, TreeMail
from bot.reporting.sinks import PipelineSummary
from bot.store.db import Store
from bot.store.models import Delivery, utcnow
from bot.store.once import ONCE_SOURCE, OnceKeys, record_once

__all__ = ["MailSummarySink", "classify_error", "mail_sink_for", "summary_mail_key"]

log = logging.getLogger(__name__)
SENDING = "sending "  # a claim's detail: "sending <attempt>"; a done one: "sent ..." or "not sent: ..."


def summary_mail_key(pipeline_id: int) -> str:
    """The once-key of a pipeline's report mail."""
    return OnceKeys("mail", f"pipeline:{pipeline_id}").key("summary-mail")


class MailSummarySink:
    """A PipelineSummarySink that mails the final summary into the series' thread, once."""

    forge = "mail"
    edits_in_place = False

    def __init__(self, store: Store, server: SmtpServer, *, sender: str, thread: MailThread,
                 recipients: MailRecipients, message_id_domain: str | None = None, stale_after_s: float = 900.0,
                 now: Callable[[], datetime] = utcnow) -> None:  # fmt: skip
        self._store = store
        self._server = server
        self._sender = parse_mailbox(sender, "From")
        self._thread = thread
        self._recipients = recipients
        self._domain = message_id_domain or self._sender.domain
        self._stale = timedelta(seconds=stale_after_s)
        self._now = now

    def publish(self, summary: PipelineSummary) -> None:
        """Mail the summary if the pipeline is done and it was not mailed yet; nobody is mailed
        about our own failures."""
        if not summary.done:
            return  # a once-only sink shows only the final summary
        key = summary_mail_key(summary.pipeline_id)
        claim = self._claim(key)
        if claim is None:
            log.info("mail for pipeline %s: already sent or being sent", summary.pipeline_id)
            return
        try:
            outcome = self._deliver(summary)
        except BaseException:
            try:
                self._settle(key, claim, None)
            except Exception:  # the store is away too: the claim goes stale and is taken over later
                log.exception("mail for pipeline %s: could not drop the claim", summary.pipeline_id)
            raise
        self._settle(key, claim, outcome)

    def _deliver(self, summary: PipelineSummary) -> str:
        if summary.our_error:
            return "not sent: our infrastructure failed"
        envelope = self._recipients.envelope()
        if not envelope:
            return "not sent: no recipients"
        message_id = report_message_id(summary.pipeline_id, self._thread, self._domain)
        message = compose_report_mail(summary, sender=self._sender, recipients=self._recipients, thread=self._thread,
                                      message_id=message_id, date=self._now())  # fmt: skip
        refused = send_mail(self._server, message, envelope_from=self._sender.addr_spec, envelope_to=envelope)
        if refused:
            log.warning("mail for pipeline %s: refused for %s", summary.pipeline_id,
                        ", ".join(f"{addr} ({code})" for addr, (code, _text) in refused.items()))  # fmt: skip
        log.info("mail for pipeline %s sent as %s", summary.pipeline_id, message_id)
        return f"sent {message_id} to {len(envelope) - len(refused)} of {len(envelope)}"

    def _claim(self, key: str) -> str | None:
        """This attempt's claim on sending, or None when another attempt holds one or the mail is done."""
        claim = f"{SENDING}{uuid.uuid4().hex}"
        now = self._now()
        try:
            with self._store.session() as session:
                held = session.scalar(select(Delivery.detail).where(Delivery.source == ONCE_SOURCE,
                                                                    Delivery.delivery_id == key))  # fmt: skip
                if held is None:
                    record_once(session, key, claim)
                    return claim
                if not held.startswith(SENDING):
                    return None
                # Compared in SQL: SQLite gives back naive datetimes, PostgreSQL aware ones.
                taken = session.execute(
                    update(Delivery)
                    .where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key, Delivery.detail == held,
                           Delivery.received_at < now - self._stale)
                    .values(detail=claim, received_at=now)
                )  # fmt: skip
                return claim if taken.rowcount == 1 else None  # type: ignore[attr-defined]
        except IntegrityError:
            return None  # another attempt recorded its claim first

    def _settle(self, key: str, claim: str, outcome: str | None) -> None:
        """Record the outcome under our claim, or drop the claim (outcome None) so a retry sends."""
        mine = (Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key, Delivery.detail == claim)
        with self._store.session() as session:
            if outcome is None:
                session.execute(delete(Delivery).where(*mine))
            else:
                session.execute(update(Delivery).where(*mine).values(detail=outcome))


def mail_sink_for(store: Store, smtp: Smtp | None, mail: TreeMail, *, thread: MailThread, submitter: str | None,
                  tls_context: ssl.SSLContext | None = None) -> MailSummarySink | None:  # fmt: skip
    """A tree's report mail sink, or None when the tree mails no reports. A series' report goes to
    its submitter, Cc the tree's list; a staging push's (no submitter) to the tree's push_to.
    `tls_context`: a private CA's, else the system's CAs are trusted."""
    if not mail.report or smtp is None:
        return None
    recipients = MailRecipients.parse([submitter], mail.cc) if submitter else MailRecipients.parse(mail.push_to)
    return MailSummarySink(store, smtp_server_of(smtp, tls_context), sender=smtp.sender, thread=thread,
                           recipients=recipients, message_id_domain=smtp.message_id_domain)  # fmt: skip
