"""bench/console_watch.py at a tiny size: both sides run over the same real consoles; the last line has the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_corpus_runs_both_sides_and_ends_with_the_json_line(tmp_path: Path) -> None:
    argv = [sys.executable, str(REPO / "bench" / "console_watch.py"), "--size-mb", "1", "--rounds", "2",
            "--dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == "console_watch"
    assert last["targets"] == {"watch_over_grep": 3.0}
    figures = last["figures"]
    assert figures["rounds"] == 2 and figures["corpus_mb"] >= 1.0
    assert figures["grep_matching_lines"] > 0
    # Every kind of crash the corpus holds is found in it, and most consoles have none.
    kinds = figures["crashes_by_kind"]
    assert {"panic", "oops", "bug", "warning", "kasan", "ubsan", "rcu-stall", "soft-lockup"} <= set(kinds)
    assert kinds["none"] > 0
    for name in ("grep_s", "watch_s", "grep_mb_per_s", "watch_mb_per_s", "watch_over_grep"):
        assert isinstance(figures[name], float) and figures[name] > 0, name
    low, high = figures["watch_over_grep_range"]
    assert low <= figures["watch_over_grep"] <= high
    assert list(tmp_path.iterdir()) == []  # the corpus file is removed
