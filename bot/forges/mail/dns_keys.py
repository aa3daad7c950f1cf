"""DKIM keys from DNS for production: a ResolveDkimKey over dnspython, bounded in time and size, cached.

dkimpy's own look-up (dkim.dnsplug.get_txt_dnspython) is what this replaces rather than wraps: it
appends the host's search domains to the name (`search=True`: a key for `sel._domainkey.example.org`
could come from `sel._domainkey.example.org.corp.internal`), keeps no cache (every patch of a series
would ask again), and takes whatever TXT record comes first, of any size. Here:
- the name is absolute (no search list), TXT only, one overall `timeout_s` per look-up;
- the record is the one TXT answer that reads as a DKIM key (`v=DKIM1`, or `p=` without `v=`, as
  RFC 6376 3.6.1 allows); two such answers are ambiguous and give none; an answer over `max_bytes`
  is refused (a failure: the mail reads unverifiable, never "invalid");
- answers are kept for their TTL, at most `max_ttl_s`; "no such key" (NXDOMAIN, no TXT) for
  `negative_ttl_s`; failures (timeouts, SERVFAIL) are not kept, and raise for the caller to say so;
- `nameservers` (with `port`) replaces the host's resolv.conf, which is read otherwise; tests point
  it at a server on 127.0.0.1 and never query real DNS.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

MAX_TXT_BYTES = 8 * 1024  # a 4096-bit RSA key is ~800 bytes of base64; 8 KiB leaves room for notes
MAX_ENTRIES = 4096


class DkimDnsError(Exception):
    """The key could not be looked up (timeout, server failure, an answer too large or ambiguous)."""


class DnsKeyResolver:
    """`resolver("sel._domainkey.example.org")` -> the key's TXT record, None when there is none."""

    def __init__(self, *, nameservers: Sequence[str] | None = None, port: int = 53, timeout_s: float = 5.0,
                 max_bytes: int = MAX_TXT_BYTES, max_ttl_s: float = 3600.0, negative_ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._nameservers, self._port = (list(nameservers) if nameservers else None), port
        self.timeout_s, self.max_bytes = timeout_s, max_bytes
        self.max_ttl_s, self.negative_ttl_s, self._clock = max_ttl_s, negative_ttl_s, clock
        self._resolver: dns.resolver.Resolver | None = None
        self._cache: OrderedDict[str, tuple[float, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> bytes | None:
        key = name.lower().rstrip(".")
        now = self._clock()
        with self._lock:
            kept = self._cache.get(key)
            if kept is not None and kept[0] > now:
                self._cache.move_to_end(key)
                return kept[1]
        record, ttl = self._look_up(key)
        with self._lock:
            self._cache[key] = (now + ttl, record)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
        return record

    def _look_up(self, name: str) -> tuple[bytes | None, float]:
        try:
            answer = self._dns().resolve(dns.name.from_text(name), dns.rdatatype.TXT, search=False,
                                         raise_on_no_answer=False, lifetime=self.timeout_s)  # fmt: skip
        except dns.resolver.NXDOMAIN:
            return None, self.negative_ttl_s
        except dns.exception.Timeout as error:
            raise DkimDnsError(f"no answer within {self.timeout_s:g} s") from error
        except dns.resolver.NoNameservers as error:
            raise DkimDnsError("every name server failed (SERVFAIL or refused)") from error
        except dns.exception.DNSException as error:
            raise DkimDnsError(f"{type(error).__name__}: {error}") from error
        if answer.rrset is None:
            return None, self.negative_ttl_s
        records = []
        for rdata in answer.rrset:
            joined = b"".join(rdata.strings)
            if len(joined) > self.max_bytes:
                raise DkimDnsError(f"a TXT record of {len(joined)} bytes at {name}, over the cap of {self.max_bytes}")
            if _is_key(joined):
                records.append(joined)
        if len(records) > 1:
            raise DkimDnsError(f"{len(records)} DKIM key records at {name}: which one signed cannot be told")
        ttl = min(float(answer.rrset.ttl), self.max_ttl_s)
        return (records[0] if records else None), (ttl if records else self.negative_ttl_s)

    def _dns(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            # Made on first use: a process that checks no DKIM signature never reads resolv.conf.
            resolver = dns.resolver.Resolver(configure=self._nameservers is None)
            if self._nameservers is not None:
                resolver.nameservers, resolver.port = self._nameservers, self._port
            resolver.cache = None  # ours keeps what it keeps, with our caps
            self._resolver = resolver
        return self._resolver


def _is_key(record: bytes) -> bool:
    tags = {part.split(b"=", 1)[0].strip() for part in record.split(b";") if b"=" in part}
    first = record.lstrip().split(b";", 1)[0].replace(b" ", b"").replace(b"\t", b"")
    return first == b"v=DKIM1" or (b"p" in tags and b"v" not in tags)
