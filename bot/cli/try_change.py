"""`labgate try`: submit a change through the control path, watch it, print the results."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bot.core.progress import exit_code_for
from bot.core.render import outcome_word, render_counts, render_problems
from bot.host.bring_up import open_services, start_missing_workers
from bot.host.config import Config, redact_url
from bot.host.stores import Runtime
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.page_links import pipeline_page_url, tree_is_private
from bot.reporting.pipeline_views import PipelineView, pipeline_view
from workers.errors import UserError
from workers.spec import url_credentials_reason

POLL_S = 0.2


def read_submission(args: argparse.Namespace, max_patch_bytes: int) -> Submission:
    """Check the repository and patches the user named; UserError says which is wrong."""
    repo = args.repo
    reason = url_credentials_reason(repo)
    if reason:
        raise UserError(f"{redact_url(repo)}: the repository URL {reason}")
    if "://" not in repo:
        path = Path(repo).expanduser().resolve()
        if not path.exists():
            raise UserError(f"{repo}: no such directory")
        probe = subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise UserError(f"{repo}: not a git repository ({probe.stderr.strip()})")
        repo = str(path)
    patches = []
    for patch in args.patch:
        try:
            size = patch.stat().st_size
            if size > max_patch_bytes:  # refused before it is even read, let alone stored
                raise UserError(f"{patch}: {size} bytes is over the {max_patch_bytes} byte patch cap")
            patches.append((patch.name, patch.read_bytes()))
        except OSError as exc:
            raise UserError(f"{patch}: cannot read patch: {exc.strerror}") from exc
    name = args.name or Path(repo.rstrip("/")).name.removesuffix(".git")
    return Submission(
        tree_name=name, tree_url=repo, source="try", external_id=uuid.uuid4().hex,
        base_ref=args.base, ref=args.ref, patches=tuple(patches),
        title=", ".join(p.name for p in args.patch) or (args.ref or args.base), submitter="local",
        **_as_untrusted(getattr(args, "untrusted", False)),
    )  # fmt: skip


def _as_untrusted(untrusted: bool) -> dict[str, Any]:
    """What an approved change of a stranger gets: the base's plan, QEMU classes only, no warm writes."""
    return {"plan_from": "base", "author_trusted": False, "tier": "qemu"} if untrusted else {}


def progress_table(view: PipelineView) -> Table:
    table = Table(title=f"pipeline {view.id} on {view.tree} ({view.base_ref})", expand=False)
    for column in ("job", "state", "result", "time"):
        table.add_column(column)
    for job in view.jobs:
        seconds = f"{job.duration_s:.1f}s" if job.duration_s is not None else ""
        result = outcome_word(job) if job.state == "done" else ""
        counts = render_counts(job.test_counts)
        table.add_row(f"{job.kind} {job.name}", job.state, result + (f" [{counts}]" if counts else ""), seconds)
    return table


def watch(runtime: Runtime, pipeline_id: int, timeout_s: float, console: Console) -> PipelineView:
    deadline = time.monotonic() + timeout_s
    if console.is_terminal:
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                view = pipeline_view(runtime, pipeline_id, with_logs=False)
                live.update(progress_table(view))
                if view.state == "done" or time.monotonic() > deadline:
                    break
                time.sleep(POLL_S)
    else:
        seen: dict[int, str] = {}
        while True:
            view = pipeline_view(runtime, pipeline_id, with_logs=False)
            for job in view.jobs:
                word = outcome_word(job)
                if seen.get(job.id) != word:
                    seen[job.id] = word
                    print(f"  {job.kind} {job.name}: {word}", flush=True)
            if view.state == "done" or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
    return pipeline_view(runtime, pipeline_id)


def run_try(config: Config, args: argparse.Namespace) -> int:
    submission = read_submission(args, config.caps.max_patch_bytes)
    return run_submission(config, args.config, submission, args.timeout)


def run_submission(config: Config, config_path: Path | None, submission: Submission, timeout_s: float) -> int:
    """Run a submission on this machine's workers (private ones started if none serve the queues), watch
    it and print its result table; `labgate try` and `labgate reproduce`. The exit code of its result."""
    console = Console()
    services = open_services(config, config_path)
    try:
        started = start_missing_workers(services)
        if started:
            console.print(f"started private workers: {', '.join(started)}")
        pipeline_id = submit(services.runtime, submission, delivery_id=f"{submission.source}-{submission.external_id}")
        console.print(f"pipeline {pipeline_id}: {submission.tree_name} "
                      f"{submission.title} on {submission.base_ref}")  # fmt: skip
        view = watch(services.runtime, pipeline_id, timeout_s, console)
    finally:
        services.stop()
    if view.state != "done":
        print(f"labgate: pipeline {pipeline_id} did not finish within {timeout_s:.0f} s", file=sys.stderr)
        return 2
    console.print(progress_table(view))
    problems = render_problems(view.jobs)
    if problems:
        console.print(problems, markup=False, highlight=False)
    for found in view.findings:  # new warnings against the base build, static findings: the change's words
        console.print("\n".join(found.lines()), markup=False, highlight=False)
    for line in (*view.notes, *([view.message] if view.message and view.result == "incomplete" else [])):
        console.print(f"NOTE: {line}", markup=False, highlight=False)
    base = f"{view.base_ref}@{view.base_sha[:12]}" if view.base_sha else view.base_ref
    head = view.head_sha[:12] if view.head_sha else "-"
    console.print(f"result: {view.result} (head {head} on {base})", markup=False)
    details = pipeline_page_url(config, config.resolved_data_dir(), view.id, view.tree)
    served = "served by `labgate up`"
    if tree_is_private(config, view.tree):
        days = config.web.link_lifetime_days
        served += f"; private tree: this signed link opens pipeline {view.id} only, for {days} days"
    # Never wrapped: a link broken over two lines cannot be clicked or copied.
    console.print(f"details: {details} ({served})", markup=False, highlight=False, soft_wrap=True)
    return exit_code_for(view.result)
