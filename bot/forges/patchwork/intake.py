"""Patchwork series in: each series-completed event becomes a change, each full delegation an approval.

Two steps, so that no forge call or task is made inside the poller's transaction:
1. The poller's handlers (`record_series`, `record_delegation`) only write to the store, in the
   transaction that marks the event seen: the series' record (patches, thread, mbox digest) and a
   delivery row `accepted` for the event.
2. `handle_pending` then carries out every accepted delivery through bot/intake (state, decision,
   actions) and marks it handled. Each side effect is keyed by the event (bot/store/once.py), so a
   crash between a check POST and the mark, or a second poll after a restart, repeats nothing.

One change per Patchwork series. Patchwork gives each version of a series its own series id, so a
change is one version; the versions of one series are linked by core.series.version_identity and
a new one supersedes the old (cancel, `warning` "superseded by vN <url>") only when its sender's
identity grade is at least the old one's. Reading mail (decoding, signatures) is not Patchwork's:
the caller passes a SeriesReader (bot/intake/mailing_list.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.decide import Action, AwaitApproval, RecordApproval, StartPipeline
from bot.core.prerequisites import Prerequisites, Recorded, resolve_prerequisites
from bot.core.series import IdentityGrade, Series, supersedes
from bot.core.trust import Approval, Tier, tier_for
from bot.forges.patchwork.client import PatchworkClient, PatchworkError, classify_error
from bot.forges.patchwork.desk import (
    APPROVAL_CONTEXT,
    PREREQUISITES_CONTEXT,
    SOURCE,
    SeriesDesk,
    SeriesRecord,
    load_series,
    project_series,
    save_series,
    series_from_json,
)
from bot.forges.patchwork.poller import PatchworkEvent
from bot.host.config import PatchworkProject, Tree
from bot.host.retrying import is_transient
from bot.host.stores import Runtime
from bot.intake.actions import carry_out
from bot.intake.desk import ChangeContext, external_id
from bot.intake.state import change_state, find_change
from bot.pipelines.lifecycle import change_for, mark_delivery
from bot.pipelines.steering import cancel_pipelines
from bot.store.models import Change, Delivery, Pipeline, Revision, utcnow
from bot.store.once import OnceKeys, once_done, record_once
from bot.store.pending import insert_later
from workers.errors import UserError

log = logging.getLogger(__name__)

SERIES_EVENT, DELEGATION_EVENT = "series-completed", "patch-delegated"
# How many of a project's newest recorded series prerequisites are looked for in (each is read).
MAX_PREREQUISITE_CANDIDATES = 200


@dataclass(frozen=True)
class SenderTrust:
    """What the series' sender is allowed, from what their mail proves (bot/intake/mailing_list.py grades it)."""

    grade: IdentityGrade
    trusted: bool  # runs without approval
    tier_cap: Tier | None  # unapproved, at most this tier (an unverified maintainer claim); None: no cap
    plan_from: str  # "head" (the series' own plan) only for a verified identity
    reason: str


@dataclass(frozen=True)
class ReadSeries:
    series: Series
    # Each patch's mail, in order, for git am (never the cover letter); its prerequisites' first once resolved.
    patches: tuple[tuple[str, bytes], ...]
    sender: str  # the From: address
    trust: SenderTrust
    prerequisites: Prerequisites = Prerequisites()  # what its b4 prerequisite trailers resolved to


def least_trusted(trusts: Sequence[tuple[str, SenderTrust]]) -> SenderTrust:
    """What a run that applies several senders' patches is allowed: what the least-granted of them is
    (a prerequisite is code its sender wrote). `trusts` are (whose, trust), the series' own first."""
    rank = [(t.trusted, t.tier_cap is None, t.plan_from == "head", t.grade) for _, t in trusts]
    weakest = rank.index(min(rank))
    whose, trust = trusts[weakest]
    return trust if weakest == 0 else replace(trust, reason=f"{whose}: {trust.reason}")


# (record, its served mbox, tree) -> the series read and graded. Called in step 2 only, outside any
# transaction: it may fetch (the mails signatures are checked on). ValueError: no series to test.
SeriesReader = Callable[[SeriesRecord, bytes, Tree], ReadSeries]
# A served mbox -> its series and each patch's mail as served, in order: no signature, no look-up. What
# the recorded series a prerequisite may be are read with (only those applied are graded, by the reader).
MboxParser = Callable[[bytes], tuple[Series, list[bytes]]]


def event_delivery_id(server: str, event_id: int) -> str:
    return f"event:{hashlib.sha256(server.encode()).hexdigest()[:16]}:{int(event_id)}"


def base_of(series: Series, project: PatchworkProject, tree: Tree) -> str:
    """The base-commit: trailer, else the first subject tag the project maps to a branch, else the
    tree's first branch. A trailer naming a commit that is not on one of the tree's branches fails the
    checkout (base_branches_of), "could not determine base", with no fall-back: testing on another base
    would report on code nobody sent."""
    if series.trailers.base_commit:
        return series.trailers.base_commit
    first = series.first
    for tag in first.subject.tags if first else ():
        if tag in project.tag_branches:
            return project.tag_branches[tag]
    return tree.branches[0]


def base_branches_of(series: Series, tree: Tree) -> tuple[str, ...]:
    """The branches a trailer's base-commit must be on (checked where git runs: the checkout job);
    none to check when the base is a branch name."""
    return tuple(tree.branches) if series.trailers.base_commit else ()


class SeriesIntake:
    """Series and delegations of one Patchwork server, into bot/intake."""

    def __init__(self, runtime: Runtime, client: PatchworkClient, read: SeriesReader, parse: MboxParser) -> None:
        """`read` reads and grades a series; `parse` only reads the recorded series a prerequisite may be."""
        self.runtime, self.client, self.read, self.parse = runtime, client, read, parse
        self.server = client.url

    # ---- step 1: in the poller's transaction ---------------------------------------------------------------

    def record_series(self, session: Session, event: PatchworkEvent, series: dict[str, Any], mbox: bytes) -> None:
        # Stored already, and synced, when the poller staged it (stage_series); else stored now.
        digest = self.runtime.artifacts.put_bytes(mbox)  # content-addressed: a repeat stores nothing new
        record = series_from_json(self.server, event.project, series, digest)
        save_series(session, record)
        self._accept(session, event, json.dumps({"series": record.series_id}))

    def stage_series(self, mboxes: Sequence[bytes]) -> None:
        """On the poller's fetching thread, before the transaction that will reference them: the batch's
        mboxes stored and on disk (one sync pass for all). A transaction that then rolls back, or a crash
        before its commit, leaves a blob nothing references: the same event fetched again has the same
        bytes, so the same digest, and finds it; otherwise it is one mbox that takes room and nothing else."""
        self.runtime.artifacts.put_durable(mboxes)

    def record_delegation(self, session: Session, event: PatchworkEvent, patch: dict[str, Any],
                          delegate: dict[str, Any] | None) -> None:  # fmt: skip
        listed = patch.get("series") or []
        series_ids = [s["id"] for s in listed if isinstance(s, dict) and isinstance(s.get("id"), int)]
        by = event.actor.get("username") if isinstance(event.actor, dict) else None
        info = {"patch": patch["id"], "series": series_ids, "by": by,
                "delegate": delegate.get("username") if delegate else None}  # fmt: skip
        self._accept(session, event, json.dumps(info))

    def _accept(self, session: Session, event: PatchworkEvent, detail: str) -> None:
        # Inserted at the end of the poller's batch (bot/store/pending.py), a repeat left as it is: one
        # statement for the batch instead of a look-up and an insert per event.
        row = {"source": SOURCE, "delivery_id": event_delivery_id(self.server, event.id), "event": event.category,
               "detail": detail}  # fmt: skip
        insert_later(session, Delivery, row)

    # ---- step 2: after the poll ----------------------------------------------------------------------------

    def handle_pending(self) -> list[str]:
        """Carry out every accepted event, oldest first; one line per event."""
        with self.runtime.store.session() as session:
            pending = session.execute(
                select(Delivery.delivery_id, Delivery.event, Delivery.detail)
                .where(Delivery.source == SOURCE, Delivery.status == "accepted").order_by(Delivery.id)
            ).all()  # fmt: skip
        done: list[str] = []
        for delivery_id, category, detail in pending:
            if not delivery_id.startswith(f"event:{event_delivery_id(self.server, 0).split(':')[1]}:"):
                continue  # another server's event
            try:
                info = json.loads(detail)
                lines = self._handle(delivery_id, category, info)
            except PatchworkError as exc:
                if exc.transient:
                    raise  # left accepted: the retry, or the next poll, comes back to it
                lines = [f"not handled: {exc}"]
            except (UserError, ValueError) as exc:
                lines = [f"not handled: {exc}"]
            except Exception as exc:
                if is_transient(exc, (classify_error,)):
                    raise  # the store or the broker: left accepted, the retry comes back to it
                # A bug of ours, or a series our parsers choke on: ended with the error, so that one
                # poisoned event cannot hold up every series sent after it (each poll would stop on it).
                log.exception("patchwork %s: not handled", delivery_id)
                lines = [f"not handled: labgate failed on it ({type(exc).__name__}); see its log"]
            mark_delivery(self.runtime, SOURCE, delivery_id, "handled", "\n".join(lines))
            log.info("patchwork %s: %s", delivery_id, "; ".join(lines))
            done.append(f"{delivery_id}: {'; '.join(lines)}")
        return done

    def _handle(self, delivery_id: str, category: str, info: dict[str, Any]) -> list[str]:
        once = OnceKeys(SOURCE, delivery_id)
        if category == SERIES_EVENT:
            return self.on_series(self.record(int(info["series"])), once)
        if info.get("delegate") is None:
            return [f"patch {info.get('patch')} undelegated: nothing approved"]
        done: list[str] = []
        for series_id in info.get("series") or []:
            record = self.find_record(int(series_id))
            if record is not None:
                done += self.on_delegation(record, once)
        return done or [f"patch {info.get('patch')}: no series labgate tests"]

    def find_record(self, series_id: int) -> SeriesRecord | None:
        with self.runtime.store.session() as session:
            return load_series(session, self.server, series_id)

    def record(self, series_id: int) -> SeriesRecord:
        record = self.find_record(series_id)
        if record is None:
            raise UserError(f"Patchwork series {series_id} of {self.server}: labgate has not heard of it")
        return record

    # ---- one series ----------------------------------------------------------------------------------------

    def open(self, record: SeriesRecord) -> tuple[Tree, ReadSeries, SeriesDesk, ChangeContext]:
        """The series' tree, its mails read, its desk and its change."""
        config = self.runtime.config
        project = next((p for p in config.patchwork.projects if p.project == record.project), None) \
            if config.patchwork else None  # fmt: skip
        tree = config.tree(project.tree) if project is not None else None
        if project is None or tree is None:
            raise UserError(f"project {record.project!r} is not configured with a tree")
        read = self.with_prerequisites(record, tree, self.read_record(record, tree))
        base = base_of(read.series, project, tree)
        desk = SeriesDesk(self.client, record, read.sender, base, read.patches, base_branches_of(read.series, tree))
        context = ChangeContext(tree, SOURCE, record.project, record.series_id, None, base, record.name[:500],
                                read.sender, read.trust.trusted)  # fmt: skip
        return tree, read, desk, context

    def read_record(self, record: SeriesRecord, tree: Tree) -> ReadSeries:
        return self.read(record, self.runtime.artifacts.get_bytes(record.mbox_digest), tree)

    def with_prerequisites(self, record: SeriesRecord, tree: Tree, read: ReadSeries) -> ReadSeries:
        """The series with the prerequisites its trailers name, looked for among the series recorded from
        its own project (bot/core/prerequisites.py): their patches first, their senders weighed too."""
        trailers = read.series.trailers
        if not (trailers.prerequisite_change_ids or trailers.prerequisite_patch_ids):
            return read
        with self.runtime.store.session() as session:
            others = project_series(session, record.server, record.project, MAX_PREREQUISITE_CANDIDATES + 1)
        others = [other for other in others if other.series_id != record.series_id][:MAX_PREREQUISITE_CANDIDATES]
        candidates = [self._candidate(other) for other in others]
        found = resolve_prerequisites(trailers, candidates)
        if found.missing:
            return replace(read, prerequisites=found)
        senders = [(f"prerequisite {candidates[i].label}", self.read_record(others[i], tree).trust)
                   for i in found.used]  # fmt: skip
        trust = least_trusted([("the series", read.trust), *senders])
        return replace(read, patches=found.patches + read.patches, trust=trust, prerequisites=found)

    def _candidate(self, record: SeriesRecord) -> Recorded:
        """A recorded series as a prerequisite may be taken from (one that holds no series provides nothing)."""
        series, raws = self.parse(self.runtime.artifacts.get_bytes(record.mbox_digest))
        # An mbox's separator takes the last mail's final newline; git am calls a diff without it corrupt.
        patches = tuple((f"{i:04d}.patch", raw if raw.endswith(b"\n") else raw + b"\n")
                        for i, raw in enumerate(raws, 1))  # fmt: skip
        return Recorded(f"series {record.series_id} v{record.version}", series, patches)

    def on_series(self, record: SeriesRecord, once: OnceKeys) -> list[str]:
        tree, read, desk, context = self.open(record)
        problems = _refusal(read)
        if problems:
            self._say_once(desk, once, "warning", f"not tested: {problems}")
            return [f"series {record.series_id} not tested: {problems}"]
        self._say_prerequisites(desk, read, once)
        head = desk.head_key
        with self.runtime.store.session() as session:
            change = change_for(session, context.submission())
            if change.head_sha != head:
                change.head_sha, change.head_seen_at = head, utcnow()
            state = change_state(session, change, read.sender, read.trust.trusted, head, once=once)
        done = self._supersede(tree, record, read, once)
        tier = tier_for(read.trust.trusted, head, state.approvals, tree.trust)
        if read.trust.trusted and read.trust.tier_cap is not None and not state.approvals:
            tier = read.trust.tier_cap
        actions: list[Action] = [AwaitApproval(head, "")]
        if tier != "none":
            plan_from = read.trust.plan_from if read.trust.trusted else "base"
            actions = [StartPipeline(head, tier, plan_from, f"series v{record.version} ({read.trust.reason})")]
        return done + carry_out(self.runtime, desk, context, actions, once)

    def on_delegation(self, record: SeriesRecord, once: OnceKeys) -> list[str]:
        """Every patch of the series delegated (only a project's maintainers may delegate, and only to
        one of them: Patchwork checks both): that version is approved, by its delegates."""
        delegates = []
        for patch_id in record.patch_ids:
            delegate = self.client.patch(patch_id).get("delegate")
            if not isinstance(delegate, dict) or not delegate.get("username"):
                return [f"series {record.series_id}: patch {patch_id} is not delegated yet"]
            delegates.append(str(delegate["username"]))
        return self.approve(record, ", ".join(sorted(set(delegates))) + " (Patchwork delegation)", False, once)

    def approve(self, record: SeriesRecord, approver: str, hardware: bool, once: OnceKeys) -> list[str]:
        """Record the approval of exactly this version and start it."""
        tree, read, desk, context = self.open(record)
        if _refusal(read):
            return [f"series {record.series_id} is not testable: nothing approved"]
        # Its prerequisites may have come after the series (refused then): approving runs it with them.
        self._say_prerequisites(desk, read, once)
        context = ChangeContext(context.tree, SOURCE, context.repo, context.number, None, context.base_ref,
                                context.title, context.author, False)  # fmt: skip
        head = desk.head_key
        with self.runtime.store.session() as session:
            change = change_for(session, context.submission())
            if change.state == "closed":
                return [f"series {record.series_id} was superseded: nothing approved"]
            change.head_sha = head
            state = change_state(session, change, read.sender, False, head, once=once)
        if state.active_pipelines:
            return [f"series {record.series_id} is running already (pipelines {list(state.active_pipelines)})"]
        approval = Approval(head, approver, hardware)
        tier = tier_for(False, head, (*state.approvals, approval), tree.trust)
        actions: list[Action] = [RecordApproval(approval), StartPipeline(head, tier, "base", f"approved by {approver}")]
        return carry_out(self.runtime, desk, context, actions, once)

    def _supersede(self, tree: Tree, record: SeriesRecord, read: ReadSeries, once: OnceKeys) -> list[str]:
        """Older versions of the same series, from senders proven no better, are cancelled and say so."""
        done: list[str] = []
        with self.runtime.store.session() as session:
            others = session.scalars(
                select(Change.number).where(Change.source == SOURCE, Change.state == "open",
                                            Change.tree.has(name=tree.name), Change.number != record.series_id)
            ).all()  # fmt: skip
        for number in others:
            old = self.find_record(int(number)) if number is not None else None
            if old is None or old.server != self.server or old.project != record.project:
                continue
            _, old_read, old_desk, _ = self.open(old)
            if not supersedes(read.series, old_read.series, read.trust.grade, old_read.trust.grade):
                continue
            reason = f"superseded by v{record.version} {record.web_url}".strip()
            with self.runtime.store.session() as session:
                change = find_change(session, SOURCE, external_id(old.project, old.series_id))
                active = session.scalars(
                    select(Pipeline.id).join(Revision)
                    .where(Revision.change_id == change.id, Pipeline.state != "done")
                ).all() if change is not None else []  # fmt: skip
                if change is not None:
                    change.state = "closed"
            cancel_pipelines(self.runtime, list(active), reason)
            self._say_once(old_desk, once, "warning", reason)
            done.append(f"series {old.series_id} (v{old.version}) {reason}; cancelled {list(active)}")
        return done

    def _say_prerequisites(self, desk: SeriesDesk, read: ReadSeries, once: OnceKeys) -> None:
        if read.prerequisites.applied:
            applied = "; ".join(read.prerequisites.applied)
            self._say_once(desk, once, "success", f"applied first: {applied}", PREREQUISITES_CONTEXT)

    def _say_once(self, desk: SeriesDesk, once: OnceKeys, state: str, text: str,
                  context: str = APPROVAL_CONTEXT) -> None:  # fmt: skip
        # The `labgate` context's keys as they were before other contexts: a restart's poll repeats nothing.
        other_context = [context] if context != APPROVAL_CONTEXT else []
        key = once.key("say", str(desk.record.series_id), state, text, *other_context)
        with self.runtime.store.session() as session:
            if once_done(session, key) is not None:
                return
        desk.say(state, text, context)
        with self.runtime.store.session() as session:
            record_once(session, key)


def _refusal(read: ReadSeries) -> str:
    """Why a series is not tested as it stands (a patch missing or doubled, versions that disagree,
    prerequisites labgate has not recorded: tested without them, it would be judged on another base)."""
    series = read.series
    if series.is_complete and read.prerequisites.missing:
        return f"prerequisites not found on Patchwork: {read.prerequisites.missing_text()}"
    if series.is_complete:
        return ""
    if series.missing:
        return f"patches {', '.join(map(str, series.missing))} of {series.total} are missing"
    return "; ".join(series.problems[:3]) or "the mails do not make one complete series"
