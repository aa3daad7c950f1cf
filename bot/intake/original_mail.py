"""The mail each patch's signatures are checked on: the archive's original, else Patchwork's rebuild, else as served.

Patchwork re-renders what it serves (bot/forges/mail/original.py says how), so a signature over the
mail as sent rarely holds on Patchwork's copy. Per patch, in this order:
1. the original from the tree's public-inbox archive (`mail.public_inbox_url`), by Message-Id;
2. the mail rebuilt from Patchwork's patch JSON (its stored headers, content and diff);
3. the mail as Patchwork serves it.
A candidate counts only when it carries the same diff from the same From: as the served mail git
applies (`carries_same_patch`): an archive, or a submitter who reused a maintainer's Message-Id,
cannot make a signature over another diff speak for this one. A candidate that is not the same patch
is dropped, never held against the sender: the next one is tried.

Gathered once per series, in step 2 of the series intake (never in the poller's transaction), and
kept: the mails in the artifact store, their digest under a once-key. Approving, superseding and a
restart then grade on the same mails, and nothing is fetched twice. An archive that fails is not
told from one that lacks the mail: either way the rebuild is kept for that patch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.exc import IntegrityError

from bot.forges.mail.original import Fetch, carries_same_patch, http_fetch, original_message, rebuild_from_patchwork
from bot.forges.patchwork.client import PatchworkError
from bot.host.stores import Runtime
from bot.store.once import once_done, record_once

log = logging.getLogger(__name__)

PatchJson = Callable[[int], Mapping[str, Any]]  # Patchwork's GET /api/patches/ID/
ARCHIVE_TIMEOUT_S = 20.0
FROM_ARCHIVE, FROM_PATCHWORK, AS_SERVED = "public-inbox", "patchwork", "served"


@dataclass(frozen=True)
class CheckedMail:
    """The mail one patch's signatures are checked on, and where it came from."""

    source: str  # FROM_ARCHIVE, FROM_PATCHWORK or AS_SERVED
    raw: bytes


def gather_checked_mails(served: Sequence[tuple[str | None, bytes]], patch_ids: Sequence[int], *,
                         public_inbox_url: str | None, patch_json: PatchJson,
                         fetch: Fetch | None = None) -> list[CheckedMail]:  # fmt: skip
    """One CheckedMail per served patch mail ((Message-Id, raw), in the series' order). `patch_ids` are
    Patchwork's, in the same order; a count that differs leaves the rebuild out (a mail then pairs with
    no JSON). A transient Patchwork error propagates: the intake comes back to the series later."""
    if public_inbox_url is not None and fetch is None:
        with httpx.Client(timeout=ARCHIVE_TIMEOUT_S, follow_redirects=False, headers={"User-Agent": "labgate"}) as c:
            return gather_checked_mails(served, patch_ids, public_inbox_url=public_inbox_url,
                                        patch_json=patch_json, fetch=http_fetch(c))  # fmt: skip
    paired = list(patch_ids) if len(patch_ids) == len(served) else [None] * len(served)
    return [_checked(message_id, raw, patch_id, public_inbox_url, patch_json, fetch)
            for (message_id, raw), patch_id in zip(served, paired, strict=True)]  # fmt: skip


def _checked(message_id: str | None, raw: bytes, patch_id: int | None, public_inbox_url: str | None,
             patch_json: PatchJson, fetch: Fetch | None) -> CheckedMail:  # fmt: skip
    if public_inbox_url is not None and fetch is not None and message_id:
        original = original_message(message_id, public_inbox_url=public_inbox_url, fetch=fetch)
        if original is not None and carries_same_patch(original, raw):
            return CheckedMail(FROM_ARCHIVE, original)
        if original is not None:
            log.warning("public-inbox's %s is not the patch Patchwork serves: not used", message_id[:200])
    if patch_id is not None:
        try:
            rebuilt = rebuild_from_patchwork(patch_json(patch_id), raw)
        except PatchworkError as error:
            if error.transient:
                raise
            log.warning("Patchwork patch %d: %s: its mail is checked as served", patch_id, error)
        else:
            if carries_same_patch(rebuilt, raw):
                return CheckedMail(FROM_PATCHWORK, rebuilt)
            log.warning("Patchwork patch %d rebuilt is not the patch served: checked as served", patch_id)
    return CheckedMail(AS_SERVED, raw)


def encode_checked_mails(mails: Sequence[CheckedMail]) -> bytes:
    return json.dumps([{"source": m.source, "mail": base64.b64encode(m.raw).decode()} for m in mails]).encode()


def decode_checked_mails(blob: bytes) -> list[CheckedMail]:
    """What encode_checked_mails wrote (our own store's bytes: a bad blob is a bug, and raises ValueError)."""
    items = json.loads(blob)
    if not isinstance(items, list):
        raise ValueError("checked mails: not a list")
    return [CheckedMail(str(item["source"]), base64.b64decode(item["mail"], validate=True)) for item in items]


def originals_key(server: str, series_id: int) -> str:
    """The once-table key under which a series' checked mails (their artifact digest) are kept."""
    return f"patchwork-originals:{hashlib.sha256(server.encode()).hexdigest()[:16]}:{int(series_id)}"


def kept_checked_mails(runtime: Runtime, key: str, gather: Callable[[], Sequence[CheckedMail]]) -> list[CheckedMail]:
    """The mails kept under `key`, else gathered now (outside any transaction) and kept. Two handlers
    gathering at once keep the first one's: the loser reads it back."""
    with runtime.store.session() as session:
        digest = once_done(session, key)
    if digest is None:
        gathered = gather()
        digest = runtime.artifacts.put_bytes(encode_checked_mails(gathered))
        try:
            with runtime.store.session() as session:
                record_once(session, key, digest)
        except IntegrityError:
            with runtime.store.session() as session:
                digest = once_done(session, key) or digest
    return decode_checked_mails(runtime.artifacts.get_bytes(digest))
