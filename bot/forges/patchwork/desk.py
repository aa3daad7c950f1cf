"""A Patchwork series as intake reaches it (bot/intake/desk.py's ForgeDesk), in Patchwork's words.

Mail has no comment channel and Patchwork no accounts labgate can look up, so the desk's look-ups
answer "nobody" and what intake says goes where a maintainer reads it: a check on every patch of the
series, context `labgate` (Patchwork shows the newest check of each context).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.events import Actor
from bot.forges.patchwork.client import PatchworkClient
from bot.intake.desk import Head
from bot.store.models import Delivery
from bot.store.once import ONCE_SOURCE, once_done, once_row
from bot.store.pending import insert_later

log = logging.getLogger(__name__)

SOURCE = "patchwork"
APPROVAL_CONTEXT = "labgate"  # the check that says "waiting", "approved", "superseded", "not tested"
PREREQUISITES_CONTEXT = "labgate-prerequisites"  # the check that says which prerequisites are applied first
MAX_DESCRIPTION = 500


@dataclass(frozen=True)
class SeriesRecord:
    """One Patchwork series (one version) as labgate received it: enough to report on it later."""

    server: str
    project: str
    series_id: int
    version: int
    name: str
    web_url: str
    patch_ids: tuple[int, ...]
    thread: tuple[str, str]  # (subject, Message-Id) of the cover letter, else of patch 1
    mbox_digest: str  # the served mbox in the artifact store

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "patch_ids": list(self.patch_ids), "thread": list(self.thread)})

    @classmethod
    def from_json(cls, text: str) -> SeriesRecord:
        raw = json.loads(text)
        return cls(**{**raw, "patch_ids": tuple(raw["patch_ids"]), "thread": tuple(raw["thread"])})


def series_key(server: str, series_id: int) -> str:
    """The once-table key under which a series' record is kept (bot/store/once.py's table)."""
    return f"patchwork-series:{hashlib.sha256(server.encode()).hexdigest()[:16]}:{int(series_id)}"


def save_series(session: Session, record: SeriesRecord) -> None:
    """Keep the record (inserted at the end of the caller's transaction, bot/store/pending.py: no look-up
    first); a series seen again keeps its first record."""
    key = series_key(record.server, record.series_id)
    insert_later(session, Delivery, once_row(key, record.to_json()))


def load_series(session: Session, server: str, series_id: int) -> SeriesRecord | None:
    found = once_done(session, series_key(server, series_id))
    return SeriesRecord.from_json(found) if found else None


def project_series(session: Session, server: str, project: str, limit: int) -> list[SeriesRecord]:
    """The newest `limit` series recorded from one project of a server, newest first: where a series'
    prerequisites are looked for (never in another project, whose tree is another)."""
    prefix = series_key(server, 0).rsplit(":", 1)[0] + ":"
    details = session.scalars(
        select(Delivery.detail)
        .where(Delivery.source == ONCE_SOURCE, Delivery.delivery_id.startswith(prefix, autoescape=True),
               Delivery.detail.contains(f'"project": {json.dumps(project)}', autoescape=True))
        .order_by(Delivery.id.desc()).limit(limit)
    ).all()  # fmt: skip
    records = [SeriesRecord.from_json(detail) for detail in details if detail]
    return [record for record in records if record.server == server and record.project == project]


def series_from_json(server: str, project: str, series: dict[str, Any], mbox_digest: str) -> SeriesRecord:
    """The record of GET /api/series/ID/'s answer (patches in the order Patchwork numbered them)."""
    patches = [p for p in series.get("patches") or [] if isinstance(p, dict) and isinstance(p.get("id"), int)]
    cover = series.get("cover_letter") if isinstance(series.get("cover_letter"), dict) else None
    speaker = cover or (patches[0] if patches else {})
    return SeriesRecord(server=server, project=project, series_id=int(series["id"]),
                        version=int(series.get("version") or 1), name=str(series.get("name") or "")[:500],
                        web_url=str(series.get("web_url") or ""), patch_ids=tuple(int(p["id"]) for p in patches),
                        thread=(str(speaker.get("name") or ""), str(speaker.get("msgid") or "")),
                        mbox_digest=mbox_digest)  # fmt: skip


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_DESCRIPTION else line[: MAX_DESCRIPTION - 1] + "…"


def approve_command(record: SeriesRecord) -> str:
    """What a maintainer runs to let this version of the series run."""
    return f"labgate approve {record.series_id} --version {record.version}"


class SeriesDesk:
    """One version of a series. `author` is the From: address (a claim: intake grades it)."""

    source = SOURCE

    def __init__(self, client: PatchworkClient, record: SeriesRecord, author: str, base_ref: str,
                 patches: Sequence[tuple[str, bytes]], base_branches: Sequence[str] = ()) -> None:  # fmt: skip
        """`base_branches`: base_ref is a commit (a base-commit: trailer) that the checkout must find on one
        of these branches of the tree; empty when base_ref is a branch itself."""
        self.client, self.record, self.author = client, record, author
        self.base_ref, self.patches, self.base_branches = base_ref, tuple(patches), tuple(base_branches)

    def permission(self, login: str) -> str | None:
        return None  # Patchwork has no permission a mail sender could be looked up by

    def teams_of(self, login: str, teams: Sequence[str]) -> frozenset[str]:
        return frozenset()

    def current_head(self) -> Head:
        return Head(self.head_key, Actor(self.author), self.base_ref, self.record.name, False)

    @property
    def head_key(self) -> str:
        """What approvals bind to: this version's exact patches (a new version, or a re-sent series
        with other bytes, needs a new approval)."""
        digest = hashlib.sha256(f"{self.record.server}\0{self.record.series_id}\0{self.record.version}".encode())
        for name, data in self.patches:
            digest.update(b"\0" + name.encode() + b"\0" + data)
        return digest.hexdigest()[:40]

    def revision(self, head_sha: str) -> dict[str, Any]:
        # The patches onto the base (ChangeContext carries base_ref); the head commit is what git am makes.
        return {"patches": self.patches, "base_branches": self.base_branches}

    def reply(self, text: str) -> None:
        self.say("warning", text)

    def show_waiting(self, head_sha: str, text: str) -> None:
        # decide's text speaks of /ok-to-test; on a list the maintainer's verb is the CLI's.
        self.say("pending", f"waiting for approval: {approve_command(self.record)}")

    def show_approved(self, head_sha: str, text: str) -> None:
        self.say("success", text)

    def say(self, state: str, text: str, context: str = APPROVAL_CONTEXT) -> None:
        """A check (by default `labgate`) on every patch of the series."""
        for patch_id in self.record.patch_ids:
            self.client.post_check(patch_id, state=state, context=context, description=one_line(text),
                                   target_url=self.record.web_url[:200] or None)  # fmt: skip
