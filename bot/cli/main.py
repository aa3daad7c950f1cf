"""The `labgate` command: config check, try, up, worker, web, cancel, retest, approve."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.cli.artifacts import add_artifacts_parser, run_artifacts
from bot.cli.known_issue import add_known_issue_parser, run_known_issue
from bot.cli.lab import add_lab_parser, run_lab
from bot.cli.reproduce import add_reproduce_parser
from bot.host.config import Config, load_config, render_config_json_schema
from workers.errors import ConfigError, LabgateError, UserError

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=_default_config_path(),
                        help="labgate.yaml (default: $LABGATE_CONFIG, else built-in defaults)")  # fmt: skip


def _default_config_path() -> Path | None:
    value = os.environ.get("LABGATE_CONFIG")
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labgate", description="Pre-merge CI for kernel-style trees.")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="check or describe a configuration file")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="report every error with its key path")
    check.add_argument("file", type=Path)
    config_sub.add_parser("schema", help="print the JSON Schema of labgate.yaml")

    try_ = sub.add_parser("try", help="test a change of a local or remote tree now")
    try_.add_argument("repo", help="path or URL of the git repository")
    source = try_.add_mutually_exclusive_group()
    source.add_argument("--patch", action="append", type=Path, default=[], help="mbox/patch to apply (repeatable)")
    source.add_argument("--ref", help="test this branch, tag or commit instead of patches")
    try_.add_argument("--base", default="HEAD", help="base ref the patches apply on (default HEAD)")
    try_.add_argument("--name", help="tree name (default: the repository's directory name)")
    try_.add_argument("--untrusted", action="store_true",
                      help="run it as an approved change of an untrusted submitter would run: the base's plan, "
                           "QEMU only, a throwaway copy of the warm build state")  # fmt: skip
    try_.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    _config_arg(try_)

    up = sub.add_parser("up", help="run the web app, the control worker and the job workers")
    _config_arg(up)

    worker = sub.add_parser("worker", help="run one Celery worker")
    worker.add_argument("--queues", "-Q", required=True, help="comma-separated queue names")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--name", default=None)
    _config_arg(worker)

    web = sub.add_parser("web", help="run only the web app")
    _config_arg(web)

    cancel = sub.add_parser("cancel", help="stop a running pipeline (recorded with who ran it)")
    cancel.add_argument("pipeline", type=int)
    cancel.add_argument("--why", default="", help="said in the pipeline's record and its report")
    _config_arg(cancel)
    retest = sub.add_parser("retest", help="re-run what did not pass in a finished pipeline")
    retest.add_argument("pipeline", type=int)
    retest.add_argument("--job", default=None, help="only this job (its name, or 'kind name')")
    _config_arg(retest)
    for steer in (cancel, retest):
        steer.add_argument("--series", action="store_true", help="the number is a Patchwork series id")
    approve = sub.add_parser("approve", help="let one version of a Patchwork series run (recorded as --as)")
    approve.add_argument("series", type=int, help="the Patchwork series id, as its `labgate` check names it")
    approve.add_argument("--version", type=int, required=True, help="the version you read (vN of the subject)")
    approve.add_argument("--hardware", action="store_true", help="also allow real boards")
    approve.add_argument("--as", dest="approver", required=True, help="who approves (kept with the approval)")
    _config_arg(approve)
    _config_arg(add_reproduce_parser(sub))
    for lab_command in [*add_lab_parser(sub), *add_artifacts_parser(sub), *add_known_issue_parser(sub)]:
        _config_arg(lab_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LABGATE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        if args.command == "config":
            return _config_command(args)
        config = load_config(args.config)
        if args.command == "try":
            from bot.cli.try_change import run_try

            return run_try(config, args)
        if args.command == "reproduce":
            from bot.cli.reproduce import run_reproduce

            return run_reproduce(config, args)
        if args.command == "up":
            from bot.cli.up import run_up

            return run_up(config, args.config)
        if args.command == "worker":
            return run_worker(args.queues.split(","), args.concurrency, args.name)
        if args.command == "web":
            from bot.cli.up import run_web

            return run_web(config, args.config)
        if args.command == "approve" or (args.command in ("cancel", "retest") and args.series):
            from bot.cli.series import run_series_command
            from bot.cli.steer import operator_name

            if args.command != "approve":
                args.series, args.who = args.pipeline, operator_name()
            return run_series_command(config, args)
        if args.command in ("cancel", "retest"):
            from bot.cli.steer import run_operator

            return run_operator(config, args)
        if args.command == "lab":
            return run_lab(config, args)
        if args.command == "artifacts":
            return run_artifacts(config, args)
        if args.command == "known-issue":
            return run_known_issue(config, args)
    except (ConfigError, UserError) as exc:
        print(f"labgate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except LabgateError as exc:
        print(f"labgate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_ERROR


def _config_command(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        sys.stdout.write(render_config_json_schema())
        return EXIT_OK
    try:
        config: Config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.file}: ok ({len(config.trees)} trees, {len(config.device_classes)} device classes)")
    return EXIT_OK


def run_worker(queues: list[str], concurrency: int, name: str | None) -> int:
    """One Celery worker; the broker and data dir come from the environment."""
    from workers.app import CONTROL_QUEUE, RESULTS_QUEUE, configure_from_env

    app = configure_from_env()
    if not app.conf.broker_url:
        raise ConfigError("LABGATE_BROKER_URL is not set; start workers through `labgate up` or set it")
    # Each worker knows only its own tasks. Job workers can write to the results queue alone,
    # so its worker registers only the two result tasks: anything else pushed there is
    # discarded as unregistered, never run (bot/result_tasks.py).
    if queues == [RESULTS_QUEUE]:
        modules = ["bot.result_tasks"]
    elif queues == [CONTROL_QUEUE]:
        modules = ["bot.tasks", "bot.submission_tasks"]
    elif not {CONTROL_QUEUE, RESULTS_QUEUE} & set(queues):
        modules = ["workers.tasks"]
    else:
        raise ConfigError(f"--queues {','.join(queues)}: {CONTROL_QUEUE} and {RESULTS_QUEUE} each need a worker "
                          "of their own, apart from each other and from the job queues (those run changes' "
                          "code)")  # fmt: skip
    app.conf.imports = modules
    for module in modules:
        importlib.import_module(module)

    node = name or f"labgate-{'+'.join(queues)}-{os.getpid()}@%h"
    app.worker_main([
        "worker", "--queues", ",".join(queues), "--concurrency", str(concurrency), "--hostname", node,
        "--loglevel", os.environ.get("LABGATE_WORKER_LOG_LEVEL", "INFO"),
        # No heartbeat: it is an event PUBLISH, which job workers' broker users may not send.
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--pool", "prefork",
    ])  # fmt: skip
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
