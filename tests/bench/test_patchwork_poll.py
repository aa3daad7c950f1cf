"""bench/patchwork_poll.py at a tiny size: it runs both sides end to end and its last line has the figures' shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_backlog_drains_on_both_sides_and_ends_with_the_json_line() -> None:
    argv = [sys.executable, str(REPO / "bench" / "patchwork_poll.py"), "--events", "200", "--pages", "4",
            "--rounds", "2", "--store", "sqlite"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == "patchwork_poll"
    assert set(last["targets"]) == {"poll_overhead_ratio", "rss_mb"}
    figures = last["figures"]
    assert (figures["events"], figures["pages"], figures["rounds"], figures["store"]) == (200, 4, 2, "sqlite")
    # 150 series (series and mbox each) and 50 delegations (the patch each), 4 pages, 2 newest-event probes.
    assert figures["requests"] == 150 * 2 + 50 + 4 + 2
    for name in ("baseline_s", "real_s", "poll_overhead_ratio", "rss_mb", "baseline_rss_mb"):
        assert isinstance(figures[name], float) and figures[name] > 0, name
    low, high = figures["poll_overhead_ratio_range"]
    assert low <= figures["poll_overhead_ratio"] <= high
