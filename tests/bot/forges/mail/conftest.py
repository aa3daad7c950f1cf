"""A real SMTP server (aiosmtpd, in a thread, on 127.0.0.1) that records what it was given, a
throwaway TLS certificate for its STARTTLS, and a store to record "sent once" in."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot.store.db import Store, migrate

SMTP_USER, SMTP_PASSWORD = "labgate", "s3cret-for-tests"


@dataclass
class Received:
    """One mail as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    authenticated: bool

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    """Takes every mail (or answers DATA with `data_reply`) and keeps it."""

    received: list[Received] = field(default_factory=list)
    data_reply: str = "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        if not self.data_reply.startswith("250"):
            return self.data_reply
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                      session.ssl is not None, bool(session.authenticated)))  # fmt: skip
        return "250 OK"


class LocalController(Controller):
    """aiosmtpd's threaded controller on a port the kernel picks (it knows only fixed ports)."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass(frozen=True)
class TlsMaterial:
    server: ssl.SSLContext  # what the SMTP server offers on STARTTLS
    client: ssl.SSLContext  # trusts that certificate, and only it


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(), SMTP_PASSWORD.encode())  # fmt: skip
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A self-signed certificate for 127.0.0.1, made for this run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labgate test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    directory: Path = tmp_path_factory.mktemp("smtp-tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return TlsMaterial(server, client)


SmtpFactory = Callable[..., tuple[LocalController, RecordingHandler]]


@pytest.fixture
def smtp_server() -> Iterator[SmtpFactory]:
    """Start SMTP servers on 127.0.0.1 with aiosmtpd's options (tls_context, auth_required, ...)."""
    started: list[LocalController] = []

    def start(**options: Any) -> tuple[LocalController, RecordingHandler]:
        handler = RecordingHandler()
        if options.get("auth_required"):
            options.setdefault("authenticator", _authenticate)
        controller = LocalController(handler, hostname="127.0.0.1", port=0, server_hostname="mx.test",
                                     ready_timeout=10, **options)  # fmt: skip
        controller.start()
        started.append(controller)
        return controller, handler

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store at the newest migration, made once: each test copies it (migrating takes a second)."""
    path = tmp_path_factory.mktemp("store") / "labgate.sqlite3"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_sqlite: Path) -> Iterator[Store]:
    path = tmp_path / "labgate.sqlite3"
    shutil.copyfile(migrated_sqlite, path)
    store = Store(f"sqlite:///{path}")
    yield store
    store.engine.dispose()
