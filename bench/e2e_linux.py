"""Benchmark: a one-line Linux 6.1 patch from `labgate try` to verdict, cold and then warm.

The tree is Debian's linux-source-6.1 as a git tree (examples/linux/prepare-tree.sh, not timed).
Each run is `labgate try` as a user types it, with its own workers, against one data dir:

- cold: a fresh data dir: the mirror is cloned, the static stage runs, the base is built from
  nothing (tinyconfig, gcc), the change builds warm on it, and the kernel boots under QEMU (KTAP);
- warm: a second trusted change on the same base (examples/linux/patches/warning.patch): the base
  build is shared, the change builds incrementally in the warm build dir;
- warm_untrusted: the same second change as an untrusted submitter's (`--untrusted`): its build runs
  on a throwaway copy of the warm build dir and reads the shared ccache read-only.

Where the warm seconds go is read from the store: each job's start and end as the workers
reported them, the build's own split (prepare, make, collect), and what is left (overhead:
starting the workers, queues, the store, reporting).

    .venv/bin/python bench/e2e_linux.py [--work DIR]

Last line: {"bench": "e2e_linux", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.host.config import Config  # noqa: E402
from bot.host.stores import open_runtime  # noqa: E402
from bot.store.models import Job, Pipeline  # noqa: E402

TARGETS = {"cold_s": 240.0, "warm_s": 20.0, "warm_untrusted_s": 30.0}
PATCHES = REPO / "examples" / "linux" / "patches"


def prepare_tree(work: Path) -> Path:
    tree = work / "linux"
    if not (tree / ".git").exists():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["sh", str(REPO / "examples" / "linux" / "prepare-tree.sh"), str(tree)], check=True,
                       env={**os.environ, "LABGATE_PREPARE_GC": "0"})  # fmt: skip
    return tree


def run_try(tree: Path, config: Path, patch: Path, *, untrusted: bool = False) -> tuple[float, int, str]:
    argv = [sys.executable, "-m", "bot.cli", "try", str(tree), "--config", str(config), "--patch", str(patch),
            "--timeout", "1800"]  # fmt: skip
    if untrusted:
        argv.append("--untrusted")
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    pipelines = [int(word) for line in output.splitlines() if line.strip().startswith("pipeline ")
                 for word in line.split()[1:2] if word.isdigit()]  # fmt: skip
    if not pipelines:
        raise SystemExit(f"labgate try printed no pipeline id (exit {done.returncode}):\n{output[-3000:]}")
    return wall, pipelines[0], output


def job_seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None or job.reused_from_id is not None:
        return 0.0
    return (job.finished_at - job.started_at).total_seconds()


def breakdown(config: Config, pipeline_id: int, wall_s: float) -> dict[str, Any]:
    """Seconds per stage on the critical path: checkout, then the builds (the static stage runs beside
    them), then the boots; overhead is the rest of the wall time."""
    runtime = open_runtime(config)
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        jobs = list(pipeline.jobs)
        checkout = sum(job_seconds(j) for j in jobs if j.kind == "checkout")
        static = sum(job_seconds(j) for j in jobs if j.kind == "static")
        builds = sum(job_seconds(j) for j in jobs if j.kind == "build")
        boots = max((job_seconds(j) for j in jobs if j.kind == "test"), default=0.0)
        change = [j for j in jobs if j.kind == "build" and not j.name.startswith("base ")]
        warm = dict(change[0].outputs.get("warm") or {}) if change else {}
        result = pipeline.result
    path = checkout + max(static, builds) + boots
    return {"result": result, "checkout_s": round(checkout, 2), "static_s": round(static, 2),
            "build_s": round(builds, 2), "boot_s": round(boots, 2), "overhead_s": round(wall_s - path, 2),
            "change_build": warm}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/labgate-bench-e2e-linux"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tree = prepare_tree(args.work)
    data = args.work / "data"
    shutil.rmtree(data, ignore_errors=True)  # cold means cold: no mirror, no warm state, no ccache
    config_path = args.work / "labgate.yaml"
    config_path.write_text(f"data_dir: {data}\ncaps: {{max_build_s: 1500, max_job_s: 180}}\n")
    config = Config(data_dir=data)
    figures: dict[str, Any] = {}
    runs = (("cold", PATCHES / "banner.patch", False), ("warm", PATCHES / "warning.patch", False),
            ("warm_untrusted", PATCHES / "warning.patch", True))  # fmt: skip
    for label, patch, untrusted in runs:
        wall, pipeline_id, output = run_try(tree, config_path, patch, untrusted=untrusted)
        split = breakdown(config, pipeline_id, wall)
        print(f"{label}: {wall:.1f} s, pipeline {pipeline_id}: {json.dumps(split)}", flush=True)
        if split["result"] not in ("pass", "fail"):
            print(output[-3000:], flush=True)
        figures[f"{label}_s"] = round(wall, 1)
        figures[f"{label}_split"] = split
    print(json.dumps({"bench": "e2e_linux", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
