"""Benchmark: boot to verdict through labgate's lab layer, and on the stand-in board, against raw QEMU.

Same Debian kernel, same initramfs (the DUT runner and one KTAP command), same run, alternating:

- raw: `qemu-system-x86_64` started directly (no labgrid, no confinement) with the console on a
  file and the runner's port on stdout, timed from spawn to the runner's end marker, then killed;
- labgate: workers/testjob.run_test_job on local QEMU (slot, cgroup, image built from the job's
  spec, bwrap + setpriv, labgrid's QEMUDriver, both ports read, KTAP judged);
- board: workers/testjob.run_board_job on the stand-in lab (reserve + lock through a real
  labgrid coordinator, power off, stage over ssh, power on through the simplerest PDU, both
  UARTs through SerialDriver, power off, cancel + unlock).

Each figure is the median wall time of a kind; the ratios are medians over raw's median.

    .venv/bin/python bench/boot_overhead.py [--rounds 5]

Last line: {"bench": "boot_overhead", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.initramfs import Command, build_initramfs  # noqa: E402
from lab.kernel import fetch_debian_kernel  # noqa: E402
from lab.runner import END_MARKER, TCG_CODE_BUFFER_MIB  # noqa: E402
from workers.artifacts import ArtifactStore  # noqa: E402
from workers.spec import JobSpec, LabgridTarget, QemuSpec, TestCommand, TestSpec  # noqa: E402
from workers.standin.lab import start_standin_lab  # noqa: E402
from workers.testjob import run_board_job, run_test_job  # noqa: E402

TARGETS = {"labgate_over_raw": 1.2, "board_over_raw": 1.5}
KTAP = "echo 'KTAP version 1'; echo 1..1; echo 'ok 1 boots'"
ENVIRONMENT = REPO / "lab" / "envs" / "board.yaml.j2"


def raw_boot(kernel: Path, initramfs: Path, work: Path, timeout_s: float = 300) -> float:
    """Spawn to end marker with QEMU started directly, as the lab's QEMU runs it (TCG, q35, 512M)."""
    argv = ["qemu-system-x86_64", "-machine", "q35", "-cpu", "qemu64", "-m", "512M",
            "-accel", f"tcg,tb-size={TCG_CODE_BUFFER_MIB}",
            "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none", "-kernel", str(kernel),
            "-initrd", str(initramfs), "-append", "console=ttyS0 panic=-1",
            "-serial", f"file:{work / 'raw-console.log'}", "-serial", "stdio"]  # fmt: skip
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert qemu.stdout is not None
    seen = b""
    try:
        while END_MARKER.encode() not in seen:
            line = qemu.stdout.readline()
            if not line or time.monotonic() - started > timeout_s:
                raise RuntimeError(f"raw boot ended without the end marker: {seen[-500:]!r}")
            seen += line
        return time.monotonic() - started
    finally:
        qemu.kill()
        qemu.wait()


def job_spec(job_id: int, labgrid: LabgridTarget | None) -> JobSpec:
    return JobSpec(
        job_id=job_id, pipeline_id=1, kind="test", tree_name="bench", tree_url="https://example.org/bench.git",
        max_log_bytes=1 << 20,
        test=TestSpec(name="boot", device_class="board" if labgrid else "qemu", qemu=QemuSpec(), kernel="debian",
                      commands=(TestCommand(name="ktap", run=KTAP),), artifacts={}, timeout_s=300, labgrid=labgrid),
    )  # fmt: skip


def timed_job(spec: JobSpec, work_root: Path, store: ArtifactStore) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    result = (run_board_job if spec.test and spec.test.labgrid else run_test_job)(spec, 1, work_root, store)
    took = time.monotonic() - started
    if result.result != "pass":
        raise RuntimeError(f"job {spec.job_id}: {result.result} {result.error_code} {result.error_message}")
    return took, dict(result.outputs)


def bench(rounds: int) -> dict[str, object]:
    cache = Path(os.environ.get("LABGATE_CACHE_DIR", "~/.cache/labgate")).expanduser()
    kernel = fetch_debian_kernel(cache / "kernel")  # the one run_test_job boots for kernel: debian
    with tempfile.TemporaryDirectory(prefix="labgate-bench-boot-") as tmp:
        root = Path(tmp)
        initramfs = build_initramfs(root / "initramfs.cpio.gz", {}, commands=[Command("ktap", KTAP)])
        store = ArtifactStore(root / "artifacts")
        lab = start_standin_lab(root / "standin", boards=1)
        os.environ.update(lab.worker_env())
        board = LabgridTarget(coordinator=lab.coordinator, place_tags=lab.tags, environment=ENVIRONMENT.read_text())
        times: dict[str, list[float]] = {"raw": [], "labgate": [], "board": []}
        board_setup: list[float] = []
        try:
            kinds = list(times)
            for index in range(rounds + 1):  # round 0 warms caches and the staging ssh; dropped
                order = kinds[index % 3 :] + kinds[: index % 3]
                for kind in order:
                    if kind == "raw":
                        took = raw_boot(kernel, initramfs, root)
                    else:
                        spec = job_spec(100 + index * 3 + kinds.index(kind), board if kind == "board" else None)
                        took, outputs = timed_job(spec, root / "w", store)
                        if kind == "board":
                            board_setup.append(float(outputs["setup_s"]))  # type: ignore[arg-type]
                    if index:
                        times[kind].append(took)
                    print(f"round {index} {kind}: {took:.2f} s", flush=True)
        finally:
            lab.stop()
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {
        "rounds": rounds,
        "raw_median_s": round(medians["raw"], 3),
        "labgate_median_s": round(medians["labgate"], 3),
        "board_median_s": round(medians["board"], 3),
        "labgate_over_raw": round(medians["labgate"] / medians["raw"], 3),
        "board_over_raw": round(medians["board"] / medians["raw"], 3),
        "board_setup_median_s": round(statistics.median(board_setup[1:] or board_setup), 3),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = bench(args.rounds)
    print(json.dumps({"bench": "boot_overhead", "figures": figures, "targets": TARGETS}), flush=True)


if __name__ == "__main__":
    main()
