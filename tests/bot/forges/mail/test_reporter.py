"""The mail summary sink against a real SMTP server: headers, threading, wrapping, recipients,
STARTTLS and AUTH, and one mail per pipeline whatever retries."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.core.mail_text import WIDTH
from bot.forges.mail.message import MailRecipients, MailThread, parse_mailbox, parse_message_id, series_thread
from bot.forges.mail.reporter import MailSummarySink, classify_error, mail_sink_for, summary_mail_key
from bot.forges.mail.smtp import SmtpServer, smtp_server_of
from bot.host.config import parse_config
from bot.reporting.sinks import JobReport, PipelineSummary, PipelineSummarySink
from bot.store.db import Store
from bot.store.models import Delivery
from bot.store.once import ONCE_SOURCE, once_done, record_once
from tests.bot.forges.mail.conftest import SMTP_PASSWORD, SMTP_USER, LocalController, SmtpFactory, TlsMaterial
from workers.errors import ConfigError

COVER_ID = "<20260301120000.4242-0-jane@example.org>"
COVER_SUBJECT = "[PATCH net-next v2 0/3] net: e1000e: frobnicate less"
SENDER = "labgate CI <ci@lab.example.net>"
ERROR = (
    "drivers/net/ethernet/intel/e1000e/netdev.c:4242:17: error: implicit declaration of function "
    "'e1000e_frobnicate'; did you mean 'e1000e_fribble'? [-Werror=implicit-function-declaration]"
)
REPRODUCE = (
    "labgate try https://git.kernel.org/pub/scm/linux/kernel/git/netdev/net-next.git "
    "--patch https://patchwork.kernel.org/series/912345/mbox/"
)
NON_ASCII_ERROR = "drivers/iommu/amd/init.c:17: error: ‘struct amd_iommu’ has no member named ‘grüße’ " + "x" * 80
PIPELINE_URL = "https://ci.lab.example.net/pipelines/42?sig=" + "0f1e2d3c" * 10


def _summary(pipeline_id: int = 42, **changes: object) -> PipelineSummary:
    build = JobReport(job_id=7, pipeline_id=pipeline_id, kind="build", name="x86_64", label="labgate / build x86_64",
                      stage="done", verdict="fail", title="fail: 1 error", summary="(markdown)",
                      details_url="https://ci.lab.example.net/jobs/7",
                      error_lines=ERROR + "\n  4242 | frob();")  # fmt: skip
    test = replace(build, job_id=8, kind="test", name="qemu-x86_64 unit", label="labgate / test qemu-x86_64 unit",
                   verdict="pass", title="pass (12 pass)", error_lines="")  # fmt: skip
    summary = PipelineSummary(
        pipeline_id=pipeline_id, done=True, verdict="fail",
        headline="labgate: fail: 1 new failure (build x86_64)", text="(plain)", markdown="(markdown)",
        url=PIPELINE_URL, jobs=(build, test), reproduce=REPRODUCE,
        notes=("The base branch net-next/main at 0123abcd built cleanly with the same configuration, so this "
               "failure is new with this series and is not a known issue of the tree.",),
    )  # fmt: skip
    return replace(summary, **changes)  # type: ignore[arg-type]


def _transient(exc: BaseException) -> bool:
    verdict = classify_error(exc)
    assert verdict is not None, f"classify_error does not know {exc!r}"
    return verdict.transient


def _server(controller: LocalController, **changes: object) -> SmtpServer:
    server = SmtpServer(host="127.0.0.1", port=controller.port, starttls=False, timeout_s=10,
                        local_hostname="labgate.test")  # fmt: skip
    return replace(server, **changes)  # type: ignore[arg-type]


def _sink(store: Store, server: SmtpServer, *, to: tuple[str, ...] = ("Jane Doe <jane@example.org>",),
          cc: tuple[str, ...] = ("netdev@vger.example.org",),
          thread: MailThread | None = None) -> MailSummarySink:  # fmt: skip
    return MailSummarySink(store, server, sender=SENDER, thread=thread or MailThread(COVER_SUBJECT, COVER_ID),
                           recipients=MailRecipients.parse(to, cc))  # fmt: skip


def test_one_plain_text_mail_in_the_series_thread(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    before = datetime.now(UTC).replace(microsecond=0)
    sink: PipelineSummarySink = _sink(store, _server(controller))  # the reporting seam's protocol
    assert sink.forge == "mail" and sink.edits_in_place is False
    sink.publish(_summary())
    [mail] = handler.received
    message = mail.message
    assert mail.mail_from == "ci@lab.example.net"
    assert mail.rcpt_tos == ["jane@example.org", "netdev@vger.example.org"]
    assert message["From"] == SENDER
    assert message["To"] == "Jane Doe <jane@example.org>"
    assert message["Cc"] == "netdev@vger.example.org"
    assert message["Subject"] == "Re: " + COVER_SUBJECT
    assert message["In-Reply-To"] == COVER_ID and message["References"] == COVER_ID
    assert message["Message-ID"].startswith("<labgate.42.") and message["Message-ID"].endswith("@lab.example.net>")
    assert message["Auto-Submitted"] == "auto-generated"
    assert before - timedelta(seconds=1) <= parsedate_to_datetime(message["Date"]) <= datetime.now(UTC)
    assert "Bcc" not in message
    # No HTML: one part, text/plain, UTF-8.
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "utf-8"


def test_the_body_keeps_error_lines_urls_and_commands_whole_and_wraps_prose_at_72(
    smtp_server: SmtpFactory, store: Store
) -> None:
    controller, handler = smtp_server()
    _sink(store, _server(controller)).publish(_summary())
    body = handler.received[0].message.get_content().replace("\r\n", "\n")  # CRLF on the wire
    lines = body.split("\n")
    assert lines[0] == "labgate: fail: 1 new failure (build x86_64)"
    verbatim = {"    " + ERROR, "      4242 | frob();", "    " + PIPELINE_URL, "    " + REPRODUCE}
    assert verbatim <= set(lines)
    assert all(len(line) <= WIDTH for line in lines if line not in verbatim)
    assert "labgate / build x86_64: fail: 1 error" in body
    assert "https://ci.lab.example.net/jobs/7" in body
    assert "qemu-x86_64 unit" not in body  # it passed: not a new failure
    assert "failure is new with this series" in " ".join(body.split())


def test_a_retry_or_a_second_call_sends_nothing_more(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    server = _server(controller)
    _sink(store, server).publish(_summary(done=False))  # not done: a once-only sink waits for the end
    assert handler.received == []
    _sink(store, server).publish(_summary())
    _sink(store, server).publish(_summary())  # the same task again, in another process: a new sink
    _sink(store, server).publish(_summary(verdict="pass"))
    assert len(handler.received) == 1
    with store.session() as session:
        assert (once_done(session, summary_mail_key(42)) or "").startswith("sent <labgate.42.")
    _sink(store, server).publish(_summary(pipeline_id=43))  # another pipeline (v3, a retest) is another mail
    assert len(handler.received) == 2


def test_a_failed_send_is_retried_and_then_sent_once(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    handler.data_reply = "451 4.3.0 queue full, try later"
    sink = _sink(store, _server(controller))
    with pytest.raises(smtplib.SMTPDataError) as raised:
        sink.publish(_summary())
    assert _transient(raised.value) is True
    handler.data_reply = "250 OK"
    sink.publish(_summary())
    sink.publish(_summary())
    assert len(handler.received) == 1


def test_concurrent_attempts_send_one_mail(smtp_server: SmtpFactory, postgres_url: str) -> None:
    from bot.store.db import migrate

    migrate(postgres_url)
    store = Store(postgres_url)
    controller, handler = smtp_server()
    server = _server(controller)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def attempt() -> None:
        start.wait()
        try:
            _sink(store, server).publish(_summary())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    store.engine.dispose()
    assert errors == []
    assert len(handler.received) == 1


def test_a_claim_left_by_a_dead_process_is_taken_over_a_fresh_one_is_not(
    smtp_server: SmtpFactory, store: Store
) -> None:
    controller, handler = smtp_server()
    key = summary_mail_key(42)
    with store.session() as session:
        record_once(session, key, "sending 0000")  # another worker is sending right now
    _sink(store, _server(controller)).publish(_summary())
    assert handler.received == []
    with store.session() as session:  # ... and died doing it, twenty minutes ago
        session.execute(update(Delivery).where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id == key)
                        .values(received_at=datetime.now(UTC) - timedelta(minutes=20)))  # fmt: skip
    _sink(store, _server(controller)).publish(_summary())
    _sink(store, _server(controller)).publish(_summary())
    assert len(handler.received) == 1


def test_our_error_mails_nobody(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    _sink(store, _server(controller)).publish(_summary(our_error=True, verdict="neutral"))
    _sink(store, _server(controller)).publish(_summary(our_error=True, verdict="neutral"))
    assert handler.received == []
    with store.session() as session:
        assert once_done(session, summary_mail_key(42)) == "not sent: our infrastructure failed"


def test_without_a_list_there_is_no_cc(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    _sink(store, _server(controller), cc=()).publish(_summary())
    [mail] = handler.received
    assert mail.rcpt_tos == ["jane@example.org"] and "Cc" not in mail.message


def test_threading_on_patch_1_without_a_cover_letter() -> None:
    patch1 = ("[PATCH bpf] bpf: fix a leak", "<20260301.1-1-jane@example.org>")
    assert series_thread(None, patch1) == MailThread(*patch1)
    assert series_thread((COVER_SUBJECT, COVER_ID), patch1) == MailThread(COVER_SUBJECT, COVER_ID)


def test_a_staging_push_starts_its_own_thread(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    thread = MailThread("labgate: net-next/main moved to 0123abcd: 1 new failure")
    _sink(store, _server(controller), to=("netdev@vger.example.org",), cc=(), thread=thread).publish(_summary())
    message = handler.received[0].message
    assert message["Subject"] == thread.subject
    assert "In-Reply-To" not in message and "References" not in message


def test_header_injection_through_name_and_subject_adds_no_header(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    evil_name = '"Eve\r\nBcc: victim@example.com\r\nX-Injected: 1" <eve@example.org>'
    evil_subject = "[PATCH] x\r\nBcc: victim@example.com\nX-Injected: 1\x00\x1b[2J"
    _sink(store, _server(controller), to=(evil_name,), cc=(),
          thread=MailThread(evil_subject, COVER_ID)).publish(_summary())  # fmt: skip
    [mail] = handler.received
    assert mail.rcpt_tos == ["eve@example.org"]
    message = mail.message
    assert "Bcc" not in message and "X-Injected" not in message
    assert b"\r\nBcc:" not in mail.raw and b"\r\nX-Injected" not in mail.raw
    assert message["Subject"] == "Re: [PATCH] x Bcc: victim@example.com X-Injected: 1 [2J"
    assert message["To"].addresses[0].addr_spec == "eve@example.org"
    assert "\n" not in message["To"].addresses[0].display_name


def test_an_address_with_line_breaks_or_two_addresses_is_refused() -> None:
    for bad in ("eve@example.org\r\nBcc: victim@example.com", "<eve@example.org>, <victim@example.com>",
                "eve@example.org victim@example.com", "Eve <eve@[127.0.0.1]>", "jörg@example.org", ""):  # fmt: skip
        with pytest.raises(ValueError, match="is not a mail address"):
            parse_mailbox(bad, "To")
    for bad_id in ("<a@b>\r\nBcc: victim@example.com", "<a b@c>", "no-at-sign", "<a@b@c>"):
        with pytest.raises(ValueError, match="is not a Message-Id"):
            parse_message_id(bad_id)
        with pytest.raises(ValueError, match="thread Message-Id"):
            MailThread("[PATCH] x", bad_id)


def test_non_ascii_names_are_encoded(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()
    _sink(store, _server(controller), to=("Jörg Rödel <joro@example.org>",), cc=(),
          thread=MailThread("[PATCH] iommu: grüße aus Köln", COVER_ID)).publish(
        _summary(notes=("Jörg's tree",), jobs=(replace(_summary().jobs[0], error_lines=NON_ASCII_ERROR),)))  # fmt: skip
    [mail] = handler.received
    assert mail.raw.isascii()  # RFC 2047 words in headers, quoted-printable in the body
    assert b"=?utf-8?" in mail.raw
    assert mail.message["To"].addresses[0].display_name == "Jörg Rödel"
    assert mail.message["Subject"] == "Re: [PATCH] iommu: grüße aus Köln"
    assert mail.message["Content-Transfer-Encoding"] == "quoted-printable"
    assert "    " + NON_ASCII_ERROR in mail.message.get_content().replace("\r\n", "\n").split("\n")


def test_starttls_and_auth(smtp_server: SmtpFactory, store: Store, tls: TlsMaterial) -> None:
    controller, handler = smtp_server(tls_context=tls.server, require_starttls=True, auth_required=True)
    server = _server(controller, starttls=True, tls_context=tls.client, username=SMTP_USER, password=SMTP_PASSWORD)
    _sink(store, server).publish(_summary())
    [mail] = handler.received
    assert mail.tls and mail.authenticated


def test_a_wrong_password_is_not_retried(smtp_server: SmtpFactory, store: Store, tls: TlsMaterial) -> None:
    controller, handler = smtp_server(tls_context=tls.server, require_starttls=True, auth_required=True)
    server = _server(controller, starttls=True, tls_context=tls.client, username=SMTP_USER, password="wrong")
    with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
        _sink(store, server).publish(_summary())
    assert _transient(raised.value) is False
    assert handler.received == []
    with store.session() as session:  # the claim was dropped: a later call (fixed password) may send
        assert once_done(session, summary_mail_key(42)) is None


def test_starttls_configured_never_falls_back_to_plain_text(smtp_server: SmtpFactory, store: Store) -> None:
    controller, handler = smtp_server()  # offers no STARTTLS
    with pytest.raises(smtplib.SMTPNotSupportedError) as raised:
        _sink(store, _server(controller, starttls=True)).publish(_summary())
    assert _transient(raised.value) is False
    assert handler.received == []


def test_a_certificate_we_do_not_trust_is_refused(smtp_server: SmtpFactory, store: Store, tls: TlsMaterial) -> None:
    controller, handler = smtp_server(tls_context=tls.server, require_starttls=True)
    with pytest.raises(ssl.SSLCertVerificationError) as raised:
        _sink(store, _server(controller, starttls=True, tls_context=ssl.create_default_context())).publish(_summary())
    assert _transient(raised.value) is False
    assert handler.received == []


def test_auth_without_tls_to_a_remote_server_is_refused() -> None:
    with pytest.raises(ConfigError, match="in clear"):
        SmtpServer(host="smtp.example.org", starttls=False, username="u", password="p")
    SmtpServer(host="127.0.0.1", starttls=False, username="u", password="p")  # a local relay may


def test_errors_are_classified_for_retry(smtp_server: SmtpFactory, store: Store) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError) as refused:
        _sink(store, SmtpServer(host="127.0.0.1", port=closed_port, starttls=False, timeout_s=5,
                                local_hostname="labgate.test")).publish(_summary())  # fmt: skip
    assert _transient(refused.value) is True
    controller, handler = smtp_server()
    handler.data_reply = "554 5.6.0 message refused"
    with pytest.raises(smtplib.SMTPDataError) as permanent:
        _sink(store, _server(controller)).publish(_summary())
    assert _transient(permanent.value) is False
    assert _transient(smtplib.SMTPRecipientsRefused({"a@b.example": (450, b"greylisted")})) is True
    assert _transient(smtplib.SMTPRecipientsRefused({"a@b.example": (550, b"no such user")})) is False
    assert _transient(smtplib.SMTPServerDisconnected("gone")) is True
    assert classify_error(KeyError("not ours")) is None


def test_the_smtp_section_of_the_config(smtp_server: SmtpFactory, store: Store, tls: TlsMaterial,
                                        tmp_path: Path) -> None:  # fmt: skip
    controller, handler = smtp_server(tls_context=tls.server, require_starttls=True, auth_required=True)
    (tmp_path / "smtp-password").write_text(SMTP_PASSWORD + "\n")
    config = parse_config(f"""
smtp:
  host: 127.0.0.1
  port: {controller.port}
  username: {SMTP_USER}
  password_file: {tmp_path / "smtp-password"}
  sender: "{SENDER}"
trees:
  - name: netdev/net-next
    url: https://git.kernel.org/pub/scm/linux/kernel/git/netdev/net-next.git
    mail: {{report: true, cc: [netdev@vger.example.org], push_to: [maintainer@example.org]}}
""")
    assert config.smtp is not None
    smtp = config.smtp
    server = smtp_server_of(smtp)
    assert server.password == SMTP_PASSWORD and server.starttls and server.port == controller.port
    series = mail_sink_for(store, smtp, config.trees[0].mail, thread=MailThread(COVER_SUBJECT, COVER_ID),
                           submitter="Jane Doe <jane@example.org>", tls_context=tls.client)  # fmt: skip
    push = mail_sink_for(store, smtp, config.trees[0].mail, thread=MailThread("labgate: net-next/main"),
                         submitter=None, tls_context=tls.client)  # fmt: skip
    assert series is not None and push is not None
    series.publish(_summary(pipeline_id=1))
    push.publish(_summary(pipeline_id=2))
    assert [(m.rcpt_tos, m.tls, m.authenticated) for m in handler.received] == [
        (["jane@example.org", "netdev@vger.example.org"], True, True),
        (["maintainer@example.org"], True, True),
    ]
    off = parse_config("trees: [{name: t, url: https://git.example.org/t.git}]").trees[0].mail
    assert mail_sink_for(store, smtp, off, thread=MailThread("x"), submitter="jane@example.org") is None


def test_mail_is_off_by_default_and_a_password_never_sits_in_the_yaml() -> None:
    tree = "trees: [{name: t, url: https://git.example.org/t.git}]"
    assert parse_config(tree).trees[0].mail.report is False
    with pytest.raises(ConfigError, match=r"trees.0.mail.report \(t\): mail reports need an smtp: section"):
        parse_config("trees: [{name: t, url: https://git.example.org/t.git, mail: {report: true}}]")
    with pytest.raises(ConfigError, match="smtp.password"):
        parse_config("smtp: {host: mx.example.org, sender: ci@example.org, username: u, password: hunter2}")
    with pytest.raises(ConfigError, match="username and password_file go together"):
        parse_config("smtp: {host: mx.example.org, sender: ci@example.org, username: u}")
