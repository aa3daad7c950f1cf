"""A change's kernel build against its base build: the comparison stored with the build's outputs, and
whether its tests can be skipped because what they would boot is what the base boots."""

from __future__ import annotations

import posixpath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.core.build_compare import compare_builds, comparison_outputs
from bot.core.plans import PLAN_PATH
from bot.core.progress import binary_identical_reason, is_base_build
from bot.store.models import Job, Pipeline


def compare_with_base(session: Session, pipeline: Pipeline, build: Job) -> str | None:
    """Store build.outputs["comparison"] for a change's kernel build; the message its tests are skipped
    with when its binaries equal the base build's and the change touches nothing of the plan's directory
    (the test commands and files live there: a change to them changes the test, not the kernel)."""
    if build.spec.get("role") != "change" or not build.spec.get("kernel"):
        return None
    base = session.get(Job, build.depends_on_id) if build.depends_on_id is not None else None
    if base is not None and not is_base_build(base.kind, base.spec):
        base = None  # the change is the base itself: nothing to compare with
    checkout = session.scalars(select(Job).where(Job.pipeline_id == pipeline.id, Job.kind == "checkout")).first()
    outputs = checkout.outputs if checkout is not None else {}
    try:
        comparison = compare_builds({"result": build.result, "outputs": build.outputs},
                                    {"result": base.result, "outputs": base.outputs} if base is not None else None,
                                    _line_ranges(outputs.get("changed_lines")))  # fmt: skip
    except (ValueError, TypeError) as exc:  # a worker's ledger that is not one: said, and nothing skipped
        build.outputs = {**build.outputs, "comparison_error": str(exc)[:500]}
        return None
    build.outputs = {**build.outputs, "comparison": comparison_outputs(comparison)}
    plan_dir = posixpath.dirname(str((checkout.spec if checkout is not None else {}).get("plan_path") or PLAN_PATH))
    changed = outputs.get("changed_files")
    if not comparison.binary_identical or not isinstance(changed, list) or _touches(changed, plan_dir):
        return None
    return binary_identical_reason(build.name)


def _touches(changed_files: list[Any], directory: str) -> bool:
    # No directory (a plan at the tree's root): any change may be to what the tests run.
    return not directory or any(str(f) == directory or str(f).startswith(directory + "/") for f in changed_files)


def _line_ranges(raw: object) -> dict[str, list[list[int]]]:
    """The checkout's {file: [[first, last]]} (a worker's word): entries of any other shape are dropped,
    they only place warnings on changed lines."""
    if not isinstance(raw, dict):
        return {}
    ranges: dict[str, list[list[int]]] = {}
    for name, spans in raw.items():
        if isinstance(name, str) and isinstance(spans, list):
            ranges[name] = [[span[0], span[1]] for span in spans if isinstance(span, list) and len(span) == 2
                            and all(isinstance(n, int) and not isinstance(n, bool) for n in span)]  # fmt: skip
    return ranges
