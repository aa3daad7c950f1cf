"""`labgate cancel|retest PIPELINE`: the operator's verbs, as the forge commands, recorded with who ran them."""

from __future__ import annotations

import argparse
import getpass
import os

from bot.host.bring_up import open_services
from bot.host.config import Config
from bot.pipelines.steering import cancel_pipelines, retest_failed
from bot.store.models import Pipeline
from workers.errors import UserError


def operator_name() -> str:
    """Who is at the keyboard (through sudo: the user who ran sudo)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def run_operator(config: Config, args: argparse.Namespace) -> int:
    """Cancel a running pipeline, or re-run what did not pass in a finished one."""
    services = open_services(config, args.config)
    try:
        if any(child.name == "redis-server" for child in services.supervisor.children):
            raise UserError(f"no labgate is running on {services.runtime.data_dir}: nothing would carry the "
                            "request out (start `labgate up`)")  # fmt: skip
        runtime = services.runtime
        with runtime.store.session() as session:
            pipeline = session.get(Pipeline, args.pipeline)
            if pipeline is None:
                raise UserError(f"no pipeline {args.pipeline}")
            state = pipeline.state
        who = operator_name()
        if args.command == "cancel":
            if state == "done":
                raise UserError(f"pipeline {args.pipeline} has finished; nothing to cancel")
            reason = f"cancelled by {who} (labgate cancel)" + (f": {args.why}" if args.why else "")
            cancel_pipelines(runtime, [args.pipeline], reason)
            print(f"pipeline {args.pipeline}: {reason}")
            return 0
        if state != "done":
            raise UserError(f"pipeline {args.pipeline} is still {state}; retest it once it has finished")
        new = retest_failed(runtime, args.pipeline, args.job, requested_by=f"{who} (labgate retest)")
        if new is None:
            raise UserError(f"pipeline {args.pipeline} has nothing to re-run")
        print(f"pipeline {new}: re-runs {args.job or 'what did not pass'} of pipeline {args.pipeline}, for {who}")
        return 0
    finally:
        services.stop()
