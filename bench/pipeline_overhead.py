"""Benchmark: labgate's own overhead per pipeline on examples/hello.

Runs N pipelines (pass.patch) through real workers, a real Redis broker and the
store, and reports per pipeline: wall time from submission to the recorded
verdict, minus the time spent inside the build command and the boot (what the
tree and QEMU cost, not labgate). That inside time is the baseline: it is
measured by the workers in the same pipelines, so machine noise cancels out.

confinement_s is what the sandboxes add per job, outside the commands: the workers
record their set-up and teardown (slot, loop disk, cgroup, synthetic /etc, bwrap's
arguments, kill-all, unmount); to that the bench adds what starting a command
through bwrap + setpriv costs over starting it directly (measured here, same run,
the same argv the build uses around `true`), since that part falls inside the
command's own timing.

    .venv/bin/python bench/pipeline_overhead.py [--runs 10]

Last line: {"bench": "pipeline_overhead", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.host.bring_up import open_services, start_all_workers  # noqa: E402
from bot.host.config import Config  # noqa: E402
from bot.pipelines.lifecycle import Submission, submit  # noqa: E402
from bot.store.models import Pipeline  # noqa: E402

TARGETS = {"overhead_median_s": 0.5, "overhead_p95_s": 2.0, "confinement_s": 0.3}


def make_repo(dest: Path) -> Path:
    subprocess.run(["cp", "-a", f"{REPO / 'examples' / 'hello'}/.", str(dest)], check=True)
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "import"]):  # fmt: skip
        subprocess.run(argv, cwd=dest, check=True)
    return dest


def sandbox_start_cost(root: Path, rounds: int = 20) -> float:
    """Median extra seconds of starting `true` through the build sandbox over starting it directly."""
    import os

    from workers.sandbox import SandboxMounts, bwrap_argv, write_synthetic_etc

    work = root / "sandbox-probe"
    work.mkdir()
    uid = 64107 if os.geteuid() == 0 else None
    etc = write_synthetic_etc(root / "sandbox-etc", uid, "build")
    argv = bwrap_argv(["true"], cwd=work, mounts=SandboxMounts(writable=(work,), etc_dir=etc), env={"PATH": "/usr/bin"},
                      uid=uid, tmp_bytes=16 << 20, seccomp_fd=None)  # fmt: skip
    extra = []
    for _ in range(rounds):
        started = time.monotonic()
        subprocess.run(argv, check=True)
        sandboxed = time.monotonic() - started
        started = time.monotonic()
        subprocess.run(["true"], check=True)
        extra.append(sandboxed - (time.monotonic() - started))
    return statistics.median(extra)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp:
        root = Path(tmp)
        repo = make_repo(root / "hello")
        config = Config(data_dir=root / "data")
        services = open_services(config, None)
        try:
            start_all_workers(services)
            patch = (REPO / "examples" / "hello" / "patches" / "pass.patch").read_bytes()
            rows = []
            confinement: list[float] = []
            for run in range(args.runs + 1):  # run 0 warms caches (kernel, mirror) and is dropped
                submission = Submission(tree_name="hello", tree_url=str(repo), source="bench",
                                        external_id=f"run-{run}", base_ref="main",
                                        patches=(("pass.patch", patch),))  # fmt: skip
                started = time.monotonic()
                pipeline_id = submit(services.runtime, submission)
                while True:
                    with services.runtime.store.session() as session:
                        pipeline = session.get(Pipeline, pipeline_id)
                        assert pipeline is not None
                        if pipeline.state == "done":
                            inside = sum(j.command_s or 0.0 for j in pipeline.jobs)
                            sandboxed = [j for j in pipeline.jobs if j.kind in ("build", "test")]
                            confined = [float(j.outputs.get("confinement_s", 0.0)) for j in sandboxed]
                            result = pipeline.result
                            break
                    time.sleep(0.01)
                wall = time.monotonic() - started
                if result != "pass":
                    raise SystemExit(f"pipeline {pipeline_id} ended {result}, not pass")
                if run:
                    rows.append((wall, inside))
                    confinement += confined
                print(f"run {run}: wall {wall:.3f} s, inside commands {inside:.3f} s, "
                      f"overhead {wall - inside:.3f} s, confinement per job {confined}", flush=True)  # fmt: skip
            start_cost = sandbox_start_cost(root)
        finally:
            services.stop()
    overheads = [wall - inside for wall, inside in rows]
    figures = {
        "runs": len(rows),
        "overhead_median_s": round(statistics.median(overheads), 3),
        "overhead_p95_s": round(percentile(overheads, 0.95), 3),
        "wall_median_s": round(statistics.median(w for w, _ in rows), 3),
        "inside_commands_median_s": round(statistics.median(i for _, i in rows), 3),
        "overhead_share_of_wall": round(statistics.median(o / w for o, (w, _) in zip(overheads, rows, strict=True)), 3),
        "confinement_s": round(statistics.median(confinement) + start_cost, 3),
        "confinement_max_s": round(max(confinement) + start_cost, 3),
        "sandbox_start_s": round(start_cost, 4),
    }
    print(json.dumps({"bench": "pipeline_overhead", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
