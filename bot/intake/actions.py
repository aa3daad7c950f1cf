"""core.decide's actions carried out: cancel, record an approval, start, wait, re-run, reply.

Each is done at most once per delivery (bot/store/once.py): a retried or redelivered event repeats
nothing its first attempt did."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.core.decide import (
    Action,
    AwaitApproval,
    CancelPipelines,
    RecordApproval,
    Reply,
    Retest,
    StartPipeline,
)
from bot.host.stores import Runtime
from bot.intake.desk import ChangeContext, ForgeDesk
from bot.intake.state import find_change
from bot.pipelines.lifecycle import change_for, submit
from bot.pipelines.steering import cancel_pipelines, retest_failed
from bot.store.models import Approval, Change, Pipeline, Revision
from bot.store.once import OnceKeys, once_done, record_once


def carry_out(runtime: Runtime, desk: ForgeDesk, context: ChangeContext, actions: list[Action],
              once: OnceKeys | None = None) -> list[str]:  # fmt: skip
    """Do each action in order; one line per action, for the log and the delivery's record."""
    done: list[str] = []

    def key(kind: str, *parts: str) -> str | None:
        return once.key(kind, *parts) if once is not None else None

    for action in actions:
        if isinstance(action, CancelPipelines):
            cancel_pipelines(runtime, action.pipeline_ids, action.reason)
            done.append(f"cancelled {list(action.pipeline_ids)}: {action.reason}")
        elif isinstance(action, RecordApproval):
            _record_approval(runtime, context, action)
            done.append(f"approval of {action.approval.sha[:12]} by {action.approval.approver}")
        elif isinstance(action, StartPipeline):
            if not context.author_trusted:
                text = f"Approved for `{action.head_sha[:12]}` by {_approvers(runtime, context, action.head_sha)}."
                show = partial(desk.show_approved, action.head_sha, text)
                _write_once(runtime, key("approved", action.head_sha), show)
            pipeline_id = submit(
                runtime,
                context.submission(**desk.revision(action.head_sha), plan_from=action.plan_from, tier=action.tier),
                once_key=key("start", action.head_sha),
            )  # fmt: skip
            done.append(f"pipeline {pipeline_id} for {action.head_sha[:12]} ({action.reason}, tier {action.tier})")
        elif isinstance(action, AwaitApproval):
            show = partial(desk.show_waiting, action.head_sha, action.text)
            _write_once(runtime, key("await", action.head_sha), show)
            done.append(f"waiting for approval of {action.head_sha[:12]}")
        elif isinstance(action, Retest):
            done.append(_retest(runtime, context, action, once))
        elif isinstance(action, Reply):
            _write_once(runtime, key("reply", action.text), partial(desk.reply, action.text))
            done.append("replied")
        else:
            done.append(f"ignored: {action.reason}")
    return done


def _retest(runtime: Runtime, context: ChangeContext, action: Retest, once: OnceKeys | None) -> str:
    with runtime.store.session() as session:
        last = session.scalar(
            select(Pipeline.id).join(Revision).join(Change)
            .where(Change.source == context.source, Change.external_id == context.external_id,
                   Revision.head_sha == action.head_sha, Pipeline.state == "done",
                   Pipeline.id.not_in(_started_by(runtime, once)))
            .order_by(Pipeline.id.desc())
        )  # fmt: skip
    if last is None:
        return "nothing to re-run"
    retest_key = once.key("start", "retest", action.head_sha, action.job_name or "") if once else None
    new = retest_failed(runtime, last, action.job_name, action.requested_by, once_key=retest_key)
    return f"re-run of pipeline {last} as {new}" if new else "nothing to re-run"


def _record_approval(runtime: Runtime, context: ChangeContext, action: RecordApproval) -> None:
    """Once: a retried /ok-to-test finds its approval already there."""
    wanted = action.approval
    with runtime.store.session() as session:
        change = change_for(session, context.submission())
        if any((a.sha, a.approver, a.hardware) == (wanted.sha, wanted.approver, wanted.hardware)
               for a in change.approvals):  # fmt: skip
            return
        session.add(Approval(change=change, sha=wanted.sha, approver=wanted.approver, hardware=wanted.hardware))


def _write_once(runtime: Runtime, key: str | None, write: Callable[[], object]) -> None:
    """A forge write a retry must not repeat, recorded once it succeeded. It is repeated only if the task
    dies between the forge's answer and this record (forges take no idempotency key)."""
    if key is not None:
        with runtime.store.session() as session:
            if once_done(session, key) is not None:
                return
    write()
    if key is not None:
        with contextlib.suppress(IntegrityError), runtime.store.session() as session:
            record_once(session, key)


def _started_by(runtime: Runtime, once: OnceKeys | None) -> list[int]:
    """Pipelines this delivery already started (a retry must not re-run its own re-run)."""
    if once is None:
        return []
    with runtime.store.session() as session:
        return [int(p) for p in once.outcomes(session, "start")]


def _approvers(runtime: Runtime, context: ChangeContext, sha: str) -> str:
    with runtime.store.session() as session:
        change = find_change(session, context.source, context.external_id)
        names = sorted({f"@{a.approver}" for a in (change.approvals if change else []) if a.sha == sha})
    return ", ".join(names) or "a maintainer"
