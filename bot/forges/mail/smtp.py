"""Sending a mail through the configured SMTP server, and which of its failures are worth a retry."""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from bot.core.links import is_loopback
from bot.host.config import Smtp
from bot.host.retrying import Verdict
from workers.errors import ConfigError


@dataclass(frozen=True)
class SmtpServer:
    """Where and how report mail is handed over."""

    host: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    tls_context: ssl.SSLContext | None = None  # None: the system's CAs, the host name checked
    local_hostname: str | None = None  # what EHLO says; None: this host's FQDN

    def __post_init__(self) -> None:
        if self.username is not None and not self.starttls and not is_loopback(self.host):
            raise ConfigError(f"smtp: AUTH to {self.host} without STARTTLS would send the password in clear")


def smtp_server_of(smtp: Smtp, tls_context: ssl.SSLContext | None = None) -> SmtpServer:
    """The configured server, its password read from its file (ConfigError names the key when it cannot be)."""
    return SmtpServer(host=smtp.host, port=smtp.port, starttls=smtp.starttls, username=smtp.username,
                      password=smtp.password(), timeout_s=smtp.timeout_s, tls_context=tls_context)  # fmt: skip


def send_mail(server: SmtpServer, message: EmailMessage, *, envelope_from: str,
              envelope_to: Sequence[str]) -> dict[str, tuple[int, bytes]]:  # fmt: skip
    """Hand `message` to the server; the recipients it refused (the others got it). Raises the
    smtplib or socket error otherwise (classify_error says whether to try again). STARTTLS, when
    configured, is required: a server that does not offer it gets nothing, not a plain-text session."""
    with smtplib.SMTP(server.host, server.port, timeout=server.timeout_s, local_hostname=server.local_hostname) as smtp:
        smtp.ehlo()
        if server.starttls:
            smtp.starttls(context=server.tls_context or ssl.create_default_context())
            smtp.ehlo()
        if server.username is not None:
            smtp.login(server.username, server.password or "")
        return smtp.send_message(message, from_addr=envelope_from, to_addrs=list(envelope_to))


def _code_verdict(code: int) -> Verdict:
    # RFC 5321: 4yz is "try again later" (greylisting, a full queue, 421 closing); 5yz will fail again.
    return Verdict(transient=400 <= code < 500)


def classify_error(exc: BaseException) -> Verdict | None:
    """A Verdict for the errors send_mail raises, None for any other (bot/host/retrying.py decides those)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _text in exc.recipients.values()]
        return Verdict(transient=bool(codes) and all(400 <= code < 500 for code in codes))
    if isinstance(exc, smtplib.SMTPResponseException):
        # Includes refused greetings, HELO, MAIL FROM, DATA and AUTH (535: wrong password, not later).
        return _code_verdict(exc.smtp_code)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Verdict(transient=True)
    if isinstance(exc, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        # The server offers no STARTTLS or AUTH, or its certificate is not the one we trust: config.
        return Verdict(transient=False)
    if isinstance(exc, smtplib.SMTPException):
        return Verdict(transient=False)
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | ssl.SSLError):
        # Refused, reset, timed out, a name that did not resolve, a handshake cut short: the server may be back.
        return Verdict(transient=True)
    return None
