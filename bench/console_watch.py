"""Benchmark: lab.console's watcher over 1 GB of real console text against `grep -c` for the same strings.

The corpus is the project's real consoles (tests/lab/data/consoles: our LKDTM kernel's boots
and crashes, syzbot's public reports; tests/lab/data/ktap: real KUnit and kselftest output)
repeated until it reaches the size asked, written once to a temporary file. Each console in
it is one boot, as the lab sees it: the watcher side reads the file and gives each console a
fresh ConsoleWatcher, fed in 64 KiB chunks of decoded text (the lab reads bytes), and asks it
for the crash. The grep side is one GNU grep process, `grep -c -E` with the watcher's own
search strings (lab.console.NEEDLES) as one extended regex, LC_ALL=C (grep's fastest mode).
Rounds alternate which side goes first; the file stays in the page cache for both. The
same is measured again over the consoles without a crash (`clean`): there the watcher only
scans, as it does on most of a real console; and over one long console (`long`: Debian's
clean boot log repeated into one stream, read and decoded in chunks as the lab reads it).

    .venv/bin/python bench/console_watch.py [--size-mb 1024] [--rounds 3] [--chunk-kb 64] [--long-mb 300] [--profile]

Last line: {"bench": "console_watch", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import codecs
import cProfile
import json
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.console import NEEDLES, ConsoleWatcher, first_crash  # noqa: E402

DATA = REPO / "tests" / "lab" / "data"
TARGETS = {"watch_over_grep": 3.0}


def real_consoles() -> list[bytes]:
    """Every real console the project keeps, as bytes (syzkaller's test files without their TITLE header)."""
    consoles = []
    for path in sorted((DATA / "consoles").iterdir()):
        if path.name == "README.md":
            continue
        text = path.read_bytes()
        if text.startswith(b"TITLE: "):
            text = text.partition(b"\n\n")[2]
        consoles.append(text if text.endswith(b"\n") else text + b"\n")
    for path in sorted((DATA / "ktap").iterdir()):
        if path.suffix in (".log", ".ktap"):
            consoles.append(path.read_bytes())
    return consoles


def write_corpus(path: Path, consoles: list[bytes], size: int, as_one: bool = False) -> list[int]:
    """Repeat the consoles into ``path`` up to ``size`` bytes; the console lengths, in file order (one: as_one)."""
    lengths: list[int] = []
    written = 0
    with open(path, "wb") as out:
        while written < size:
            for console in consoles:
                out.write(console)
                lengths.append(len(console))
                written += len(console)
                if written >= size:
                    break
    return [written] if as_one else lengths


def grep_pattern() -> str:
    return "|".join(re.sub(r"([][.*+?^$(){}|\\])", r"\\\1", needle) for needle in NEEDLES)


def run_grep(path: Path) -> tuple[float, int]:
    grep = shutil.which("grep")
    assert grep is not None
    started = time.perf_counter()
    done = subprocess.run([grep, "-c", "-E", grep_pattern(), str(path)], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {done.stderr}")
    return elapsed, int(done.stdout.strip() or 0)


def run_watcher(path: Path, lengths: list[int], chunk: int) -> tuple[float, Counter[str]]:
    """Each console read as the lab reads one: bytes in chunks, decoded as they come, fed to its own watcher."""
    crashes: Counter[str] = Counter()
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as source:
        for length in lengths:
            watcher = ConsoleWatcher()
            if length <= chunk:  # one read, one piece (most consoles of the corpus)
                watcher.feed(source.read(length).decode("utf-8", errors="replace"))
            else:  # a long console never sits whole in memory: a UTF-8 sequence may span two reads
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                for start in range(0, length, chunk):
                    watcher.feed(decoder.decode(source.read(min(chunk, length - start))))
                watcher.feed(decoder.decode(b"", final=True))
            crash = watcher.crash()
            crashes[crash.kind if crash else "none"] += 1
    return time.perf_counter() - started, crashes


def measure(consoles: list[bytes], size_mb: int, rounds: int, chunk: int, work: Path, label: str,
            profile: bool = False, as_one: bool = False) -> dict[str, object]:  # fmt: skip
    """Both sides over ``size_mb`` of these consoles, alternating which goes first; wall and CPU time."""
    corpus = work / f"{label}.txt"
    started = time.perf_counter()
    lengths = write_corpus(corpus, consoles, size_mb << 20, as_one)
    size = corpus.stat().st_size
    print(f"{label}: {size / 1e6:.0f} MB, {len(lengths)} consoles ({len(consoles)} distinct), "
          f"written in {time.perf_counter() - started:.1f} s", file=sys.stderr)  # fmt: skip
    run_grep(corpus)  # warm the page cache for both sides
    walls: dict[str, list[float]] = {"grep": [], "watch": []}
    cpus: dict[str, list[float]] = {"grep": [], "watch": []}
    matching_lines, crashes = 0, Counter[str]()
    for round_number in range(rounds):
        for side in ("grep", "watch") if round_number % 2 == 0 else ("watch", "grep"):
            if side == "grep":
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall, matching_lines = run_grep(corpus)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
            else:
                cpu_started = time.process_time()
                wall, crashes = run_watcher(corpus, lengths, chunk)
                cpu = time.process_time() - cpu_started
            walls[side].append(wall)
            cpus[side].append(cpu)
        print(f"{label} round {round_number + 1}: grep {walls['grep'][-1]:.2f} s, watcher {walls['watch'][-1]:.2f} s,"
              f" ratio {walls['watch'][-1] / walls['grep'][-1]:.2f}", file=sys.stderr)  # fmt: skip
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_watcher(corpus, lengths, chunk)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(12)
    corpus.unlink()
    ratios = [w / g for w, g in zip(walls["watch"], walls["grep"], strict=True)]
    cpu_ratios = [w / max(g, 1e-9) for w, g in zip(cpus["watch"], cpus["grep"], strict=True)]
    return {
        "corpus_mb": round(size / 1e6, 1),
        "consoles": len(lengths),
        "distinct_consoles": len(consoles),
        "grep_s": round(statistics.median(walls["grep"]), 3),
        "watch_s": round(statistics.median(walls["watch"]), 3),
        "grep_mb_per_s": round(size / 1e6 / statistics.median(walls["grep"]), 1),
        "watch_mb_per_s": round(size / 1e6 / statistics.median(walls["watch"]), 1),
        "watch_over_grep": round(statistics.median(ratios), 3),
        "watch_over_grep_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "watch_over_grep_cpu": round(statistics.median(cpus["watch"]) / max(statistics.median(cpus["grep"]), 1e-9), 3),
        "watch_over_grep_cpu_range": [round(min(cpu_ratios), 3), round(max(cpu_ratios), 3)],
        "grep_matching_lines": matching_lines,
        "crashes_by_kind": dict(sorted(crashes.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument(
        "--long-mb",
        type=int,
        default=None,
        help="one long clean console: Debian's boot log repeated (default: --size-mb, up to 300)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the corpus file goes (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="print where the watcher's time goes (one pass)")
    args = parser.parse_args(argv)

    consoles = real_consoles()
    clean = [console for console in consoles if first_crash(console.decode("utf-8", errors="replace")) is None]
    work = Path(tempfile.mkdtemp(prefix="console-watch-", dir=args.dir))
    try:
        mixed = measure(consoles, args.size_mb, args.rounds, args.chunk_kb << 10, work, "all", args.profile)
        only_clean = measure(clean, args.size_mb, args.rounds, args.chunk_kb << 10, work, "clean", args.profile)
        debian = [(DATA / "consoles" / "debian-clean.log").read_bytes()]  # a lab's console: boot chatter, no crash
        long_mb = min(args.size_mb, 300) if args.long_mb is None else args.long_mb
        long = measure(debian, long_mb, args.rounds, args.chunk_kb << 10, work, "long", as_one=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kept = ("corpus_mb", "consoles", "distinct_consoles", "grep_mb_per_s", "watch_mb_per_s", "watch_over_grep",
            "watch_over_grep_range", "watch_over_grep_cpu", "watch_over_grep_cpu_range")  # fmt: skip
    figures = {**mixed, "rounds": args.rounds, "chunk_kb": args.chunk_kb,
               "clean": {key: only_clean[key] for key in kept}, "long": {key: long[key] for key in kept},
               "grep_pattern": grep_pattern(), "python": sys.version.split()[0]}  # fmt: skip
    print(json.dumps({"bench": "console_watch", "figures": figures, "targets": TARGETS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
