"""Production's DKIM key look-up (bot/forges/mail/dns_keys.py) against a small DNS server on 127.0.0.1 that
dnspython answers for: keys, no key, a silent server, oversized and ambiguous answers, and the cache. Never
real DNS."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from bot.forges.mail.dns_keys import DkimDnsError, DnsKeyResolver
from bot.forges.mail.identity import Grade, Keyring, verify_identity
from bot.host.config import Tree
from bot.intake.mailing_list import dkim_resolver, no_dns
from tests.bot.forges.mail.test_identity import DkimDomain, patch_mail

NAME = "sel._domainkey.kernel.example.org"


class FakeDns:
    """A UDP name server on 127.0.0.1: name -> TXT strings (or "servfail"; missing: NXDOMAIN; `silent`:
    no answer at all). It records every name asked."""

    def __init__(self) -> None:
        self.zone: dict[str, list[list[bytes]] | str] = {}
        self.ttl, self.silent = 300, False
        self.asked: list[str] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.socket.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text().rstrip(".")
            self.asked.append(name)
            if self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            found = self.zone.get(name)
            if found == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
            elif found is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                rrset = dns.rrset.RRset(query.question[0].name, dns.rdataclass.IN, dns.rdatatype.TXT)
                for strings in found:
                    text = " ".join('"' + s.decode().replace('"', '\\"') + '"' for s in strings)
                    rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text), self.ttl)
                response.answer.append(rrset)
            self.socket.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    server = FakeDns()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server: FakeDns, clock: Clock | None = None, **options: float) -> DnsKeyResolver:
    return DnsKeyResolver(nameservers=["127.0.0.1"], port=server.port, clock=clock or Clock(), **options)  # type: ignore[arg-type]


def test_a_published_key_verifies_dkim_and_is_kept_for_its_ttl(fake_dns: FakeDns) -> None:
    domain = DkimDomain("kernel.example.org")
    # A long key comes in several strings of at most 255 bytes: they are one record.
    fake_dns.zone[NAME] = [[domain.record[:20], domain.record[20:]], [b"google-site-verification=abc"]]
    clock = Clock()
    look_up = resolver(fake_dns, clock)
    result = verify_identity(domain.sign(patch_mail()), keyring=Keyring.empty(), resolve_dkim_key=look_up)
    assert result.grade is Grade.VERIFIED, result.reason
    assert look_up(NAME + ".") == domain.record and look_up(NAME.upper()) == domain.record
    assert fake_dns.asked == [NAME]  # asked once, by its absolute name: no search domain appended
    clock.now += 301
    assert look_up(NAME) == domain.record and fake_dns.asked == [NAME, NAME]


def test_no_key_is_none_and_kept_for_the_negative_ttl(fake_dns: FakeDns) -> None:
    clock = Clock()
    look_up = resolver(fake_dns, clock, negative_ttl_s=60)
    fake_dns.zone["other._domainkey.kernel.example.org"] = [[b"not a key"]]
    assert look_up(NAME) is None and look_up(NAME) is None
    assert look_up("other._domainkey.kernel.example.org") is None
    assert fake_dns.asked == [NAME, "other._domainkey.kernel.example.org"]
    clock.now += 61
    assert look_up(NAME) is None and len(fake_dns.asked) == 3


def test_a_silent_or_failing_server_raises_in_bounded_time_and_the_mail_reads_unverifiable(fake_dns: FakeDns) -> None:
    fake_dns.silent = True
    look_up = resolver(fake_dns, timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(DkimDnsError, match="no answer within 1 s"):
        look_up(NAME)
    assert time.monotonic() - start < 5
    domain = DkimDomain("kernel.example.org")
    result = verify_identity(domain.sign(patch_mail()), keyring=Keyring.empty(), resolve_dkim_key=look_up)
    assert result.grade is Grade.UNVERIFIABLE and "could not be looked up" in result.reason
    fake_dns.silent = False
    fake_dns.zone[NAME] = "servfail"
    with pytest.raises(DkimDnsError):
        look_up(NAME)
    fake_dns.zone[NAME] = [[domain.record]]
    assert look_up(NAME) == domain.record  # failures are not kept


def test_attack_oversized_or_two_key_records_are_refused(fake_dns: FakeDns) -> None:
    fake_dns.zone[NAME] = [[b"v=DKIM1; p=" + b"A" * 200, b"A" * 100]]
    with pytest.raises(DkimDnsError, match="over the cap of 200"):
        resolver(fake_dns, max_bytes=200)(NAME)
    fake_dns.zone[NAME] = [[b"v=DKIM1; k=ed25519; p=AAAA"], [b"p=BBBB"]]
    with pytest.raises(DkimDnsError, match="2 DKIM key records"):
        resolver(fake_dns)(NAME)


def test_the_tree_chooses_the_look_up(tmp_path: Path) -> None:
    def tree(**mail: str) -> Tree:
        return Tree.model_validate({"name": "t", "url": "https://git.example.org/t.git", "mail": mail})

    assert dkim_resolver(tree(dkim_dns="none")) is no_dns
    system = dkim_resolver(tree())
    assert isinstance(system, DnsKeyResolver) and dkim_resolver(tree(dkim_dns="system")) is system  # one per process
