"""Performance regressions: metrics tests report, compared between the change and its base.

Tests report a measurement as a KTAP diagnostic line `# metric: <name>=<value> <unit> [higher|lower is better]`
(lower is better when unsaid). A metric is a `regression` iff both hold:

- the one-sided exact Mann-Whitney U test of "worse with the change" gives p <= alpha (ties by mid-ranks, the
  exact permutation distribution of the pooled values; with 5 runs each the smallest p is 1/252 = 0.004), and
- the change's median moved the bad way by at least min_effect of the base's median (0.05: 5%).

Under "no worse with the change" (both sides drawn from one distribution) the test alone calls a regression
with probability at most alpha, so the rule does too: with 5 runs each and alpha 0.02, exactly 4 of the 252
rank splits give p <= alpha (p = 1/252, 2/252, and 4/252 for two), a level of 4/252 = 0.016.
That is per metric: a test reporting M noisy metrics has up to M times that chance that one of them is called.

Text people read: "sched.wakeup_ns +14% (p=0.004, 5 runs each)".
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

HIGHER, LOWER = "higher", "lower"
MAX_METRICS = 200  # kept per text: a test printing 100,000 metric lines costs a scan, not a store
MAX_LINE = 512  # longer lines are not metric lines: the pattern below stays cheap on anything it sees
EXACT_MAX_RUNS = 40  # pooled runs up to which the U test is exact; beyond, the normal approximation

_METRIC = re.compile(  # possessive quantifiers (++, *+): a part once read is never re-split, so no backtracking
    r"[ \t]*+(?:#[ \t]*+){1,8}+metric:[ \t]*+"
    r"(?P<name>[A-Za-z0-9_.:-]{1,100}+)[ \t]*+=[ \t]*+"
    r"(?P<value>[-+]?+(?:[0-9]{1,30}+(?:\.[0-9]{0,30}+)?+|\.[0-9]{1,30}+)(?:[eE][-+]?+[0-9]{1,3}+)?+)"
    r"(?:[ \t]++(?P<unit>[A-Za-z%/]{1,16}+))?"
    r"(?:[ \t]*+,?+[ \t]*+[\[(]?+(?P<better>higher|lower)[ \t]++is[ \t]++better[\])]?+)?+"
    r"[ \t]*+\r?+",
    re.ASCII,
)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str  # "" when unsaid
    better: str  # "higher" or "lower"


@dataclass(frozen=True)
class MetricComparison:
    name: str
    unit: str
    better: str
    change: tuple[float, ...]
    base: tuple[float, ...]
    change_pct: float | None  # the median's move, in percent of the base's; None when the base's median is 0
    p_value: float
    regression: bool
    text: str  # "sched.wakeup_ns +14% (p=0.004, 5 runs each)"


def parse_metrics(text: str) -> list[Metric]:
    """The metrics a test's output reports, first value of each name, at most MAX_METRICS; never raises."""
    found: dict[str, Metric] = {}
    start = 0
    while len(found) < MAX_METRICS and start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        if end - start <= MAX_LINE and "metric:" in text[start:end]:
            metric = _parse_line(text[start:end])
            if metric is not None and metric.name not in found:
                found[metric.name] = metric
        start = end + 1
    return list(found.values())


def _parse_line(line: str) -> Metric | None:
    m = _METRIC.fullmatch(line)
    if m is None:
        return None
    value = float(m["value"])
    if not math.isfinite(value):  # 9e999 overflows to inf: no measurement
        return None
    return Metric(m["name"], value, m["unit"] or "", m["better"] or LOWER)


def mann_whitney_one_sided(worse_candidate: Sequence[float], other: Sequence[float]) -> float:
    """P(U >= the observed U) if both samples come from one distribution, where U counts the pairs in which
    worse_candidate's value is the larger (a tie counts half): small p says worse_candidate tends larger.
    Exact (the permutation distribution of mid-rank sums) up to EXACT_MAX_RUNS pooled values."""
    x, y = [float(v) for v in worse_candidate], [float(v) for v in other]
    if not all(math.isfinite(v) for v in (*x, *y)):
        raise ValueError("mann_whitney_one_sided: a value is not a finite number")
    if not x or not y:
        return 1.0
    pooled = sorted(x + y)
    ranks2, ties = _doubled_midranks(pooled)
    observed = sum(ranks2[v] for v in x)
    if len(pooled) > EXACT_MAX_RUNS:
        return _normal_tail(observed, len(x), len(y), ties)
    counts = _rank_sum_counts(ties, len(x))
    total = math.comb(len(pooled), len(x))
    return sum(ways for s, ways in counts.items() if s >= observed) / total


def _doubled_midranks(pooled: list[float]) -> tuple[dict[float, int], tuple[int, ...]]:
    """Twice the mid-rank of each distinct value of a sorted sample (integers), and the tie groups' sizes."""
    ranks: dict[float, int] = {}
    ties: list[int] = []
    i = 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j] == pooled[i]:
            j += 1
        ranks[pooled[i]] = (i + 1) + j  # ranks i+1..j: twice their mean
        ties.append(j - i)
        i = j
    return ranks, tuple(ties)


@functools.lru_cache(maxsize=64)
def _rank_sum_counts(ties: tuple[int, ...], n: int) -> dict[int, int]:
    """Ways to choose n of the pooled values by the sum of their doubled mid-ranks: dynamic programming
    over the tie groups (ties[g] values share group g's rank), choosing c of a group in comb(t, c) ways."""
    table: list[dict[int, int]] = [{0: 1}] + [{} for _ in range(n)]
    below = 0
    for t in ties:
        rank2 = 2 * below + t + 1
        for chosen in range(n, 0, -1):  # downwards: each group is used once
            row = table[chosen]
            for c in range(1, min(t, chosen) + 1):
                for s, ways in table[chosen - c].items():
                    key = s + c * rank2
                    row[key] = row.get(key, 0) + ways * math.comb(t, c)
        below += t
    return table[n]


def _normal_tail(observed2: int, n: int, m: int, ties: tuple[int, ...]) -> float:
    """The normal approximation of the rank-sum tail with the tie correction and a continuity correction."""
    big = n + m
    mean2 = n * (big + 1)
    var = n * m / 12 * ((big + 1) - sum(t**3 - t for t in ties) / (big * (big - 1)))
    if var <= 0:
        return 1.0
    z = (observed2 / 2 - mean2 / 2 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare_metric(
    name: str,
    unit: str,
    better: str,
    change: Sequence[float],
    base: Sequence[float],
    *,
    alpha: float,
    min_effect: float,
) -> MetricComparison:
    """Whether a metric is worse with the change: a regression iff the U test gives p <= alpha and the median
    moved the bad way by at least min_effect (a fraction of the base's median)."""
    if better not in (HIGHER, LOWER):
        raise ValueError(f"compare_metric: {name}: better is {better!r}, not 'higher' or 'lower'")
    change_t, base_t = tuple(float(v) for v in change), tuple(float(v) for v in base)
    if not all(math.isfinite(v) for v in (*change_t, *base_t)):
        raise ValueError(f"compare_metric: {name}: a value is not a finite number")
    sign = 1.0 if better == LOWER else -1.0  # the way "worse" goes
    p = mann_whitney_one_sided([sign * v for v in change_t], [sign * v for v in base_t])
    if not change_t or not base_t:
        text = f"{name}: no runs to compare ({len(change_t)} with the change, {len(base_t)} on base)"
        return MetricComparison(name, unit, better, change_t, base_t, None, p, False, text)
    before, after = _median(base_t), _median(change_t)
    pct = (after - before) / abs(before) * 100 if before else None
    pct = pct if pct is not None and math.isfinite(pct) else None  # 1e300 against 1e-300: say the values
    worse_by = sign * (after - before)
    effect = worse_by / abs(before) if before else (math.inf if worse_by > 0 else 0.0)
    regression = p <= alpha and worse_by > 0 and effect >= min_effect
    return MetricComparison(name, unit, better, change_t, base_t, pct, p, regression,
                            _text(name, unit, before, after, pct, p, len(change_t), len(base_t)))  # fmt: skip


def _median(values: tuple[float, ...]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else ordered[mid - 1] / 2 + ordered[mid] / 2  # no overflow at 1e308


def _text(name: str, unit: str, before: float, after: float, pct: float | None, p: float, n: int, m: int) -> str:
    if pct is None:
        moved = f"{before:g} -> {after:g}{(' ' + unit) if unit else ''}"
    else:
        moved = f"{pct:+.0f}%" if abs(pct) >= 10 else f"{pct:+.1f}%"
    runs = f"{n} runs each" if n == m else f"{n} runs with the change, {m} on base"
    return f"{name} {moved} (p={p:.2g}, {runs})"
