"""`labgate artifacts prune [--dry-run]`: the retention policy's prune, now, from the operator's shell."""

from __future__ import annotations

import argparse

from bot.host.config import Config


def add_artifacts_parser(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    """`labgate artifacts` and its command; returns the command's parsers (each takes --config)."""
    artifacts = sub.add_parser("artifacts", help="the artifact store: prune what the retention policy expired")
    artifacts_sub = artifacts.add_subparsers(dest="artifacts_command", required=True)
    prune = artifacts_sub.add_parser("prune", help="delete the blobs only expired pipelines name (config artifacts:)")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    return [prune]


def run_artifacts(config: Config, args: argparse.Namespace) -> int:
    """Prune the store of this config (the timer of `labgate up` does the same every prune_interval_s)."""
    from bot.host.stores import open_runtime  # the store's modules load only for the command that uses them
    from bot.pipelines.retention import prune_artifacts

    runtime = open_runtime(config)
    try:
        report = prune_artifacts(runtime, dry_run=args.dry_run)
    finally:
        runtime.store.engine.dispose()
    for line in report.lines():
        print(line)
    return 0
