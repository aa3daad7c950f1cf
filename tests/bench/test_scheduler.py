"""bench/scheduler.py at a tiny size: it enqueues, drains through the scheduler and ends with the JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_queue_drains_fairly_and_ends_with_the_json_line(redis_db_url: str) -> None:
    # A Redis database of the test's own: a bench run by hand on the default one (15) is left alone.
    argv = [sys.executable, str(REPO / "bench" / "scheduler.py"), "--jobs", "400", "--classes", "4", "--storm", "100",
            "--consumers", "2", "--result-path-sample", "20", "--redis-db", redis_db_url.rsplit("/", 1)[1]]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == "scheduler"
    assert set(last["targets"]) == {"dispatch_jobs_per_s", "redis_mb", "lone_tree_wait_jobs"}
    figures = last["figures"]
    assert (figures["jobs"], figures["classes"], figures["storm"]) == (400, 4, 100)
    # Only the windows are messages: 4 classes of capacity 4 (the default margin is 0).
    assert figures["redis_messages_after_enqueue"] == 4 * 4
    assert figures["lone_tree_wait_jobs"] <= 4
    for name in ("enqueue_jobs_per_s", "dispatch_jobs_per_s", "result_path_jobs_per_s", "redis_mb"):
        assert figures[name] > 0, name
