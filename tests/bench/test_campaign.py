"""bench/campaign.py, seed 0 (CI's; the bench runs seeds 0-4): 22 changes with known truth through the control
plane, and no false `new`, no missed regression, every new failure's report with its reproduce command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 15 s: 22 pipelines and their re-runs through the real control plane
def test_seed_0_has_no_false_new_no_missed_regression_and_every_report_reproduces(redis_db_url: str) -> None:
    argv = [sys.executable, str(REPO / "bench" / "campaign.py"), "--seeds", "0",
            "--redis-db", redis_db_url.rsplit("/", 1)[1]]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["bench"] == "campaign" and last["figures"]["seeds"] == [0]
    figures = last["figures"]["per_seed"]["0"]
    assert figures["changes"] >= 20
    assert (figures["missed_regressions"], figures["false_new"], figures["reports_without_reproducer"]) == (0, 0, 0)
    table = "\n".join(lines)
    # Each kind of truth was seen for what it is (the subject test's verdict, bench/campaign.py).
    seen = (("regression", "new"), ("crash", "new"), ("slowdown", "regression"), ("flaky", "flaky"),
            ("known", "known-issue"), ("fix", "fixed"), ("noise", "pass"), ("board", "error"))
    for kind, verdict in seen:
        assert any(line.split()[:2] == [kind, verdict] for line in lines if line.startswith("  ")), (kind, table)
