"""`labgate approve|cancel|retest SERIES-ID`: a maintainer's verbs for a Patchwork series (mail has no
comment channel), recorded with who gave them."""

from __future__ import annotations

import argparse

from sqlalchemy import select

from bot.forges.patchwork.desk import SOURCE
from bot.host.bring_up import open_services
from bot.host.config import Config
from bot.host.stores import Runtime
from bot.intake.mailing_list import patchwork_client, series_intake
from bot.pipelines.steering import cancel_pipelines, retest_failed
from bot.store.models import Change, Pipeline, Revision
from bot.store.once import OnceKeys
from workers.errors import UserError


def approve_series(runtime: Runtime, series_id: int, version: int, approver: str, *,
                   hardware: bool = False) -> list[str]:  # fmt: skip
    """Approve exactly version `version` of Patchwork series `series_id` and start it. Run again, it
    does nothing more (the approval and the start are keyed by series, version, approver and tier)."""
    with patchwork_client(runtime) as client:
        intake = series_intake(runtime, client)
        record = intake.record(series_id)
        if record.version != version:
            raise UserError(f"series {series_id} is version {record.version}, not {version}: nothing approved "
                            "(approve the version you read)")  # fmt: skip
        once = OnceKeys(SOURCE, f"approve:{series_id}:v{version}:{approver}:{hardware}")
        return intake.approve(record, approver, hardware, once)


def series_pipelines(runtime: Runtime, series_id: int) -> list[tuple[int, str]]:
    """(pipeline id, state) of the series' pipelines, newest first."""
    with runtime.store.session() as session:
        rows = session.execute(
            select(Pipeline.id, Pipeline.state).join(Revision).join(Change)
            .where(Change.source == SOURCE, Change.number == series_id).order_by(Pipeline.id.desc())
        ).all()  # fmt: skip
    return [(int(pid), str(state)) for pid, state in rows]


def run_series_command(config: Config, args: argparse.Namespace) -> int:
    services = open_services(config, args.config)
    started_a_broker = any(child.name == "redis-server" for child in services.supervisor.children)
    try:
        runtime = services.runtime
        if started_a_broker:  # then no worker listens to it: a started pipeline would sit queued
            raise UserError(f"no labgate is running on {runtime.data_dir}: start `labgate up` first")
        who = args.approver if args.command == "approve" else args.who
        if args.command == "approve":
            for line in approve_series(runtime, args.series, args.version, who, hardware=args.hardware):
                print(f"series {args.series} v{args.version}: {line}")
            return 0
        pipelines = series_pipelines(runtime, args.series)
        if not pipelines:
            raise UserError(f"series {args.series} has no pipeline")
        if args.command == "cancel":
            running = [pid for pid, state in pipelines if state != "done"]
            if not running:
                raise UserError(f"series {args.series}: nothing is running")
            cancel_pipelines(runtime, running, f"cancelled by {who} (labgate cancel --series)")
            print(f"series {args.series}: cancelled {running}")
            return 0
        last = next((pid for pid, state in pipelines if state == "done"), None)
        new = retest_failed(runtime, last, None, requested_by=f"{who} (labgate retest --series)") if last else None
        if new is None:
            raise UserError(f"series {args.series} has nothing to re-run")
        print(f"series {args.series}: pipeline {new} re-runs what did not pass in pipeline {last}")
        return 0
    finally:
        services.stop()
